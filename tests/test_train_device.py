"""Training placement and precision (issue 21): the device and autocast options, and
checkpoints every N steps that a run killed mid-epoch resumes from bit for bit. CUDA
itself is covered by tests/test_cuda.py, which skips without a GPU."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from ofa_search.train import TrainConfig, TrainingError, load_checkpoint, run_training
from ofa_search.train import loop as train_loop
from ofa_search.train.loop import resolve_device

TINY = TrainConfig(space="mbv3_small28", dataset="digits", batch_size=32, resolutions=(16,),
                   epochs=2, steps_per_epoch=4, lr=0.05, quiet=True, seed=5, n_random=1,
                   device="cpu")
TIMING_FIELDS = ("seconds", "img_s", "resumed_at_step")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Killed(Exception):
    """Stands for the process dying right after a checkpoint write."""


def _kill_after_saves(monkeypatch: pytest.MonkeyPatch, saves: int) -> list[dict[str, Any]]:
    """Make the training loop die after its ``saves``-th checkpoint write; returns the
    states written so far."""
    written: list[dict[str, Any]] = []
    real = train_loop.save_checkpoint

    def save_then_die(path: Any, state: dict[str, Any]) -> Path:
        result = real(path, state)
        written.append(state)
        if len(written) == saves:
            raise _Killed
        return result

    monkeypatch.setattr(train_loop, "save_checkpoint", save_then_die)
    return written


def _rows(path: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in rows]


@pytest.mark.parametrize(("strategy", "every", "saves"), [
    ("sandwich", 3, 1),  # killed at step 3 of 4 in epoch 1 (in-place distillation)
    ("ps", 3, 3),        # 3rd write: step 6, mid-epoch 2 with the frozen teacher
])
def test_mid_epoch_resume_is_bit_for_bit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         strategy: str, every: int, saves: int) -> None:
    config = dataclasses.replace(TINY, strategy=strategy, checkpoint_every=every,
                                 epochs=1 if strategy == "ps" else 2,
                                 stop_after_epochs=3 if strategy == "ps" else None)
    straight = run_training(dataclasses.replace(config, out_dir=str(tmp_path / "a")))
    written = _kill_after_saves(monkeypatch, saves)
    with pytest.raises(_Killed):
        run_training(dataclasses.replace(config, out_dir=str(tmp_path / "b")))
    monkeypatch.undo()
    killed_at = written[-1]
    assert killed_at["epoch_step"] > 0, "the kill must fall inside an epoch"
    ckpt = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert (ckpt["step"], ckpt["epoch_step"]) == (killed_at["step"], killed_at["epoch_step"])
    resumed = run_training(dataclasses.replace(config, out_dir=str(tmp_path / "b"),
                                               resume=True))
    assert (resumed.epoch, resumed.step) == (straight.epoch, straight.step)
    a, b = straight.supernet.state_dict(), resumed.supernet.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows_a = _rows(tmp_path / "a" / "metrics.jsonl")
    rows_b = _rows(tmp_path / "b" / "metrics.jsonl")
    # each step is listed once; the resumed epoch's summary averages only its own steps
    steps = [r for r in rows_a if "event" not in r]
    assert steps == [r for r in rows_b if "event" not in r]
    ends = [r for r in rows_b if r.get("event") == "epoch_end"]
    assert [r["step"] for r in ends] == [r["step"] for r in rows_a
                                          if r.get("event") == "epoch_end"]


def test_step_checkpoints_are_written_and_end_at_the_epoch(tmp_path: Path) -> None:
    config = dataclasses.replace(TINY, strategy="spos", checkpoint_every=2, epochs=1,
                                 out_dir=str(tmp_path))
    result = run_training(config)
    ckpt = load_checkpoint(result.checkpoint)
    assert (ckpt["epoch"], ckpt["step"], ckpt["epoch_step"]) == (1, 4, 0)
    assert ckpt["finished"] and ckpt["scaler"] is None
    assert ckpt["config"]["checkpoint_every"] == 2 and ckpt["config"]["device"] == "cpu"


def test_bf16_autocast_trains_on_the_cpu(tmp_path: Path) -> None:
    result = run_training(dataclasses.replace(TINY, strategy="sandwich", amp="bf16", epochs=1,
                                              out_dir=str(tmp_path)))
    rows = _rows(tmp_path / "metrics.jsonl")
    losses = [r["loss"] for r in rows if "event" not in r]
    assert len(losses) == 4 and all(0 < loss < 10 for loss in losses)
    weights = result.supernet.state_dict()
    assert all(v.dtype in (torch.float32, torch.int64) for v in weights.values())
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_device_and_amp_options_are_checked(tmp_path: Path) -> None:
    for bad, message in (({"device": "gpu"}, "device must be auto, cpu, cuda or cuda:N"),
                         ({"device": "cuda:x"}, "device must be"),
                         ({"amp": "fp8"}, "amp must be one of off, bf16, fp16"),
                         ({"checkpoint_every": 0}, "checkpoint_every must be >= 1")):
        with pytest.raises(TrainingError, match=message):
            dataclasses.replace(TINY, **bad)
    with pytest.raises(TrainingError, match="amp 'fp16' needs a CUDA device"):
        run_training(dataclasses.replace(TINY, amp="fp16", out_dir=str(tmp_path / "x")))
    assert not (tmp_path / "x" / "checkpoint.pt").exists()
    assert resolve_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        assert resolve_device("auto", 0) == torch.device("cuda", 0)
        with pytest.raises(TrainingError, match="does not exist"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    else:
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(TrainingError, match="needs a CUDA GPU"):
            run_training(dataclasses.replace(TINY, device="cuda", out_dir=str(tmp_path / "y")))
