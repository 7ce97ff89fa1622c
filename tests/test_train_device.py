"""Training placement and precision (issue 21): the device and autocast options, and
checkpoints every N steps that a run killed mid-epoch resumes from bit for bit. CUDA
itself is covered by tests/test_cuda.py, which skips without a GPU."""

from __future__ import annotations

import dataclasses
import itertools
import json
import threading
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


@pytest.mark.parametrize(("strategy", "every", "saves", "optimizer"), [
    ("sandwich", 3, 1, "sgd"),  # killed at step 3 of 4 in epoch 1 (in-place distillation)
    ("ps", 3, 3, "sgd"),        # 3rd write: step 6, mid-epoch 2 with the frozen teacher
    ("sandwich", 3, 1, "adamw"),  # Adam's moments and step counts are checkpointed too
])
def test_mid_epoch_resume_is_bit_for_bit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         strategy: str, every: int, saves: int,
                                         optimizer: str) -> None:
    config = dataclasses.replace(TINY, strategy=strategy, checkpoint_every=every,
                                 optimizer=optimizer,
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
    moments = {key for state in ckpt["optimizer"]["state"].values() for key in state}
    assert moments == ({"exp_avg", "exp_avg_sq", "step"} if optimizer == "adamw"
                       else {"momentum_buffer"})
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


def test_cudnn_benchmark_is_recorded_and_the_cpu_leaves_the_flag(tmp_path: Path) -> None:
    before = torch.backends.cudnn.benchmark
    run_training(dataclasses.replace(TINY, epochs=1, steps_per_epoch=1, cudnn_benchmark=False,
                                     out_dir=str(tmp_path)))
    assert torch.backends.cudnn.benchmark is before
    assert load_checkpoint(tmp_path / "checkpoint.pt")["config"]["cudnn_benchmark"] is False
    assert TINY.cudnn_benchmark  # on by default, as once-for-all trains


# -- BigNAS's recipe (issue 21) ----------------------------------------------------------
def test_exp_constant_schedule_decays_to_its_floor_and_holds() -> None:
    from ofa_search.train import scheduled_lr
    from ofa_search.train.loop import EXP_DECAY_SPAN, EXP_FLOOR
    from ofa_search.train.strategies import Segment

    segments = [Segment(epochs=2, lr=0.4)]
    lrs = [scheduled_lr(s, segments, 10, 0, "exp_constant") for s in range(20)]
    assert lrs[0] == pytest.approx(0.4)
    assert all(a > b for a, b in itertools.pairwise(lrs[:16]))  # decaying
    end = int(EXP_DECAY_SPAN * 20)
    assert lrs[end] == pytest.approx(0.4 * EXP_FLOOR)
    assert all(lr == pytest.approx(0.4 * EXP_FLOOR) for lr in lrs[end:])
    warm = [scheduled_lr(s, segments, 10, 1, "exp_constant") for s in range(10)]
    assert warm == pytest.approx([0.04 * (s + 1) for s in range(10)])
    assert scheduled_lr(20, segments, 10, 0, "exp_constant") == 0.0
    assert [scheduled_lr(s, segments, 10, 1) for s in range(20)] == [
        scheduled_lr(s, segments, 10, 1, "cosine") for s in range(20)]


def test_zero_gamma_makes_residual_blocks_start_as_the_identity() -> None:
    from ofa_search.nn import Supernet

    net = Supernet("mbv3_small28", generator=torch.Generator().manual_seed(0))
    assert net.zero_residual_gammas() > 0
    net.eval()
    x = torch.randn(2, net.block(0, 1).in_channels, 8, 8)
    block = net.block(0, 1)
    assert block.residual
    assert torch.equal(block(x, 3, 3, "fp32"), x)
    first = next(b for b in net.elastic_blocks() if not b.residual)
    assert first.project_bn.weight.abs().sum() > 0  # blocks without a shortcut keep γ


def test_dropout_only_in_the_largest_subnet(tmp_path: Path) -> None:
    from ofa_search.nn import Supernet
    from ofa_search.train import Autocast, SupernetStep, make_strategy, param_groups

    config = dataclasses.replace(TINY, regularize_largest_only=True, n_random=2)
    strategy = make_strategy("sandwich", config.space, None, seed=0, resolutions=(16,),
                             n_random=2)
    net = Supernet(config.space, strategy.width_mult, generator=torch.Generator())
    assert net.space.dropout > 0
    rates: list[float] = []
    net.head.dropout.register_forward_pre_hook(lambda m, _: rates.append(m.p))
    step = SupernetStep(net, config, strategy.largest, Autocast("off", torch.device("cpu")))
    optimizer = torch.optim.SGD(param_groups(net, 0.0), lr=0.01)
    x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    step(strategy.step(), x, y, optimizer, net.parameters())
    assert rates == [net.space.dropout, 0.0, 0.0, 0.0]
    assert net.head.dropout.p == net.space.dropout  # restored after the step


def test_bignas_recipe_options_and_errors() -> None:
    from ofa_search.nn import Supernet
    from ofa_search.train import BIGNAS_EMA_DECAY, param_groups, with_recipe

    bignas = with_recipe(TINY, "bignas")
    assert (bignas.lr_schedule, bignas.zero_gamma, bignas.regularize_largest_only,
            bignas.ema_decay) == ("exp_constant", True, True, BIGNAS_EMA_DECAY)
    assert with_recipe(dataclasses.replace(TINY, ema_decay=0.99), "bignas").ema_decay == 0.99
    assert with_recipe(TINY, "ofa") == TINY
    with pytest.raises(TrainingError, match="recipe must be one of ofa, bignas"):
        with_recipe(TINY, "efficientnet")
    with pytest.raises(TrainingError, match="recipe 'bignas' needs strategy 'sandwich'"):
        with_recipe(dataclasses.replace(TINY, strategy="spos"), "bignas")
    with pytest.raises(TrainingError, match="regularize_largest_only needs strategy"):
        dataclasses.replace(TINY, strategy="spos", regularize_largest_only=True)
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(TrainingError, match="ema_decay must be in"):
            dataclasses.replace(TINY, ema_decay=bad)
    with pytest.raises(TrainingError, match="lr_schedule must be one of cosine, exp_constant"):
        dataclasses.replace(TINY, lr_schedule="step")
    with pytest.raises(TrainingError, match="optimizer must be one of sgd, adamw, got 'lamb'"):
        dataclasses.replace(TINY, optimizer="lamb")
    net = Supernet("mbv3_small28", generator=torch.Generator())
    default, everything = param_groups(net, 0.1), param_groups(net, 0.1, True)
    assert len(default[1]["params"]) > 0 and len(everything[1]["params"]) == 0
    assert len(everything[0]["params"]) == len(list(net.parameters()))


def test_ema_decay_warms_up_then_holds() -> None:
    from ofa_search.train.loop import ema_decay_at

    assert ema_decay_at(0.9998, 0) == pytest.approx(0.1)
    assert ema_decay_at(0.9998, 390) == pytest.approx(391 / 400)
    assert ema_decay_at(0.9998, 10**6) == 0.9998
    assert ema_decay_at(0.5, 20) == 0.5


def test_ema_weights_are_checkpointed_served_and_resumed(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    from ofa_search.train import load_supernet, with_recipe

    config = dataclasses.replace(with_recipe(TINY, "bignas"), checkpoint_every=3,
                                 ema_decay=0.5)
    straight = run_training(dataclasses.replace(config, out_dir=str(tmp_path / "a")))
    ckpt = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    assert ckpt["ema"] is not None and int(ckpt["ema"]["n_averaged"]) == 8
    served, meta = load_supernet(tmp_path / "a" / "checkpoint.pt")
    assert meta["weights"] == "ema"
    ema_w, raw_w = served.state_dict()["head.classifier.weight"], ckpt["model"][
        "head.classifier.weight"]
    assert not torch.equal(ema_w, raw_w)
    assert torch.equal(straight.supernet.state_dict()["head.classifier.weight"], ema_w)
    _kill_after_saves(monkeypatch, 1)  # killed at step 3, mid-epoch 1
    with pytest.raises(_Killed):
        run_training(dataclasses.replace(config, out_dir=str(tmp_path / "b")))
    monkeypatch.undo()
    resumed = run_training(dataclasses.replace(config, out_dir=str(tmp_path / "b"),
                                               resume=True))
    a, b = straight.supernet.state_dict(), resumed.supernet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- streamed training data ----------------------------------------------------------------
def test_streamed_imagenet_folder_trains_and_resumes_mid_epoch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ImageNet-layout folder is read by the streaming loader (worker processes); a run
    killed mid-epoch resumes bit for bit, skipping the batches it trained on."""
    from test_data_stream import write_imagenet

    root = write_imagenet(tmp_path / "imagenet", train=4, val=1)
    config = TrainConfig(space="ofa_mbv3", width_mult=1.0, dataset="imagenet",
                         data_dir=str(root), batch_size=2, resolutions=(128,), epochs=2,
                         steps_per_epoch=3, n_random=0, quiet=True, device="cpu",
                         checkpoint_every=2, num_workers=2, seed=1)
    straight = run_training(dataclasses.replace(config, out_dir=str(tmp_path / "a")))
    ckpt = load_checkpoint(straight.checkpoint)
    assert ckpt["dataset"]["streamed"] and ckpt["dataset"]["sizes"]["train"] > 0
    _kill_after_saves(monkeypatch, 1)  # step 2 of 3 in epoch 1
    with pytest.raises(_Killed):
        run_training(dataclasses.replace(config, out_dir=str(tmp_path / "b"), num_workers=0))
    monkeypatch.undo()
    resumed = run_training(dataclasses.replace(config, out_dir=str(tmp_path / "b"),
                                               resume=True))
    a, b = straight.supernet.state_dict(), resumed.supernet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(TrainingError, match="augment must stay on"):
        dataclasses.replace(config, augment=False)
    with pytest.raises(TrainingError, match="is RGB; space 'mbv3_small28' takes 1-channel"):
        run_training(dataclasses.replace(TINY, dataset="imagenet", data_dir=str(root),
                                         out_dir=str(tmp_path / "c")))


def test_a_thread_drawing_from_the_default_generator_does_not_change_a_run(
        tmp_path: Path) -> None:
    # dropout draws from a generator of its own: a thread that draws from PyTorch's
    # default one meanwhile (a service's export builds modules) left the suite's resume
    # test with different weights
    config = dataclasses.replace(TINY, epochs=1)
    alone = run_training(dataclasses.replace(config, out_dir=str(tmp_path / "a")))
    stop, draws = threading.Event(), [0]

    def draw() -> None:
        while not stop.is_set():
            torch.rand(8)
            draws[0] += 1

    other = threading.Thread(target=draw, daemon=True)
    other.start()
    try:
        beside = run_training(dataclasses.replace(config, out_dir=str(tmp_path / "b")))
    finally:
        stop.set()
        other.join()
    assert draws[0] > 0
    a, b = alone.supernet.state_dict(), beside.supernet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)



def test_seeded_dropout_gives_nn_dropouts_mask_for_the_same_state() -> None:
    from ofa_search.nn.static import SeededDropout

    x = torch.randn(16, 32, generator=torch.Generator().manual_seed(0))
    seeded = SeededDropout(0.3)
    seeded.generator = torch.Generator().manual_seed(11)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        expected = torch.nn.Dropout(0.3)(x)
    assert torch.equal(seeded(x), expected)  # records made before it still reproduce
    assert not torch.equal(seeded(x), expected)  # its generator moved on
    assert torch.equal(seeded.eval()(x), x)
