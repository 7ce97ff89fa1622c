"""What a killed or mistaken training run leaves, and how the next run treats it (issue 20):
metrics rows past the checkpoint, stale temporary files, resume without a checkpoint, an
output folder that is a file, an unknown strategy."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ofa_search.atomic import host_tag
from ofa_search.train import TrainConfig, TrainingError, run_training

TINY = TrainConfig(space="mbv3_small28", dataset="digits", batch_size=32, resolutions=(16,),
                   epochs=2, steps_per_epoch=2, lr=0.05, quiet=True, seed=3, strategy="spos")
TIMING_FIELDS = ("seconds", "img_s")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rows(path: Path) -> list[dict]:
    """The metrics rows without their timing fields."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in rows]


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Metrics rows of the uninterrupted run."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("straight")
        run_training(dataclasses.replace(TINY, out_dir=str(out)))
    finally:
        torch.set_num_threads(threads)
    return _rows(out / "metrics.jsonl")


def test_resume_drops_metrics_rows_past_the_checkpoint(tmp_path: Path,
                                                       straight: list[dict]) -> None:
    """Killed after appending epoch 2's rows but before its checkpoint: the resumed run
    trains epoch 2 again and lists it once (a torn last line goes too)."""
    run_training(dataclasses.replace(TINY, out_dir=str(tmp_path), stop_after_epochs=1))
    metrics = tmp_path / "metrics.jsonl"
    first = _rows(metrics)
    assert first == straight[:len(first)] and len(first) < len(straight)
    with metrics.open("a") as handle:  # the state a kill in that window leaves
        for row in straight[len(first):]:
            handle.write(json.dumps({**row, "loss": 123.0}) + "\n")
        handle.write('{"epoch": 1, "step": 9, "lr": 0.0')  # torn by the kill
    run_training(dataclasses.replace(TINY, out_dir=str(tmp_path), resume=True))
    assert _rows(metrics) == straight


def test_fresh_run_drops_metrics_of_a_run_without_checkpoint(tmp_path: Path,
                                                             straight: list[dict]) -> None:
    """Killed in its first epoch after the metrics append: no checkpoint, so the next run
    starts afresh, and the orphan rows are not kept in front of its own."""
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "step": 1}) + "\n")
    run_training(dataclasses.replace(TINY, out_dir=str(tmp_path)))
    assert _rows(tmp_path / "metrics.jsonl") == straight


def test_resume_removes_stale_temporary_files(tmp_path: Path) -> None:
    """A finished run resumed writes nothing; its start still clears what killed writers
    left (every atomic write also clears its own target's)."""
    run_training(dataclasses.replace(TINY, out_dir=str(tmp_path)))
    stale = tmp_path / f".checkpoint.pt.{dead_pid()}-{host_tag()}.abcd1234.tmp"
    stale.write_bytes(b"half a checkpoint")
    live = tmp_path / f".checkpoint.pt.{os.getpid()}-{host_tag()}.abcd1234.tmp"
    live.write_bytes(b"a write in progress")  # this process is alive: not stale
    run_training(dataclasses.replace(TINY, out_dir=str(tmp_path), resume=True))
    assert not stale.exists() and live.exists()


@pytest.mark.parametrize(("contents", "message"), [
    ({}, "is empty"),
    ({"metrics.jsonl": '{"epoch": 0, "step": 1}\n'}, "has no checkpoint.pt"),
])
def test_resume_without_a_checkpoint_is_refused(tmp_path: Path, contents: dict[str, str],
                                                message: str) -> None:
    for name, text in contents.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(TrainingError, match=f"cannot resume: output folder .* {message}") as err:
        run_training(dataclasses.replace(TINY, out_dir=str(tmp_path), resume=True))
    assert str(tmp_path) in str(err.value)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == contents  # untouched


@pytest.mark.parametrize("under", [False, True])
def test_output_folder_that_is_a_file_is_refused(tmp_path: Path, under: bool) -> None:
    blocker = tmp_path / "run"
    blocker.write_text("keep me")
    out = blocker / "sub" if under else blocker
    expected = "lies under .*, which is a file" if under else "is a file, not a folder"
    with pytest.raises(TrainingError, match=f"output folder .*{expected}"):
        run_training(dataclasses.replace(TINY, out_dir=str(out)))
    assert blocker.read_text() == "keep me"


def test_unknown_strategy_message() -> None:
    with pytest.raises(TrainingError) as err:
        TrainConfig(strategy="nope")
    message = str(err.value)
    assert message.endswith("got 'nope'") and "self." not in message
