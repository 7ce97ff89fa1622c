"""The accuracy-dataset builder on a tiny trained digits supernet: stratified sampling,
resumability, torn lines, refusal of foreign checkpoints and settings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ofa_search.errors import FileFormatError
from ofa_search.space import get_space
from ofa_search.train import (
    TrainConfig,
    load_checkpoint,
    save_checkpoint,
    supernet_evaluator,
    train,
)
from ofa_search.units import count_macs
from ofa_search.workspace import Workspace
from predictors.accuracy_data import (
    AccuracyDataset,
    EvalSettings,
    dataset_archs,
    read_accuracy_dataset,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SPACE = "mbv3_small28"
FAST = EvalSettings(max_eval_images=40, calib_batches=1, batch_size=32)


def build_accuracy_dataset(*args: Any, **options: Any) -> AccuracyDataset:
    """The library's, scoring subnets with the trainer's evaluator."""
    from predictors.accuracy_data import build_accuracy_dataset as build

    return build(*args, evaluator_for=supernet_evaluator, **options)


def tiny_checkpoint(out_dir: Path) -> Path:
    """A digits supernet trained for two steps (enough for distinct subnet accuracies)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(TrainConfig(space=SPACE, dataset="digits", strategy="spos", epochs=1,
                                 steps_per_epoch=2, batch_size=32, out_dir=str(out_dir),
                                 quiet=True))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("acc") / "supernet")


def test_dataset_archs_are_stratified_distinct_and_prefix_stable() -> None:
    spec = get_space(SPACE)
    archs = dataset_archs(SPACE, 200, seed=3)
    assert len(set(archs)) == 200
    assert archs[:37] == dataset_archs(SPACE, 37, seed=3)
    assert archs != dataset_archs(SPACE, 200, seed=4)
    assert [a.resolution for a in archs[:10]] == [spec.resolutions[i % 5] for i in range(10)]
    # size modes cycle uniform, small, uniform, large: small-biased archs are smaller
    macs = np.array([count_macs(a.replace(resolution=28)) for a in archs])
    small, large = macs[1::4], macs[3::4]
    assert np.median(small) < 0.75 * np.median(large)
    assert macs.min() < np.percentile(macs, 10) < np.percentile(macs, 90) < macs.max()


def test_build_is_resumable_and_cached_beside_the_checkpoint(checkpoint: Path) -> None:
    path = Workspace.accuracy_dataset_for(checkpoint)
    assert path.parent == checkpoint.parent
    first = build_accuracy_dataset(checkpoint, 3, settings=FAST, show_progress=False)
    assert first.n_evaluated == 3 and len(first) == 3 and first.path == path
    second = build_accuracy_dataset(checkpoint, 5, settings=FAST, show_progress=False)
    assert second.n_evaluated == 2 and len(second) == 5
    assert second.records[:3] == first.records
    again = build_accuracy_dataset(checkpoint, 5, settings=FAST, show_progress=False)
    assert again.n_evaluated == 0 and again.records == second.records
    archs = second.archs()
    assert [a.to_string() for a in archs] == [a.to_string() for a in dataset_archs(SPACE, 5)]
    acc = second.accuracies()
    assert acc.shape == (5,) and np.all((acc >= 0) & (acc <= 1))
    # accuracies are multiples of 1/40 (the capped val set)
    np.testing.assert_allclose(acc * 40, np.round(acc * 40), atol=1e-9)
    assert [r.macs for r in second.records] == [count_macs(a) for a in archs]
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    assert header["format"] == "ofa-search-accuracy-dataset" and header["space"] == SPACE
    assert header["checkpoint"]["epoch"] == 1 and len(header["checkpoint"]["sha256"]) == 64
    assert header["eval"]["max_eval_images"] == 40 and len(lines) == 6


def test_torn_last_line_is_dropped_with_a_warning(checkpoint: Path, tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    build_accuracy_dataset(checkpoint, 2, settings=FAST, path=path, show_progress=False)
    with open(path, "a") as handle:
        handle.write('{"arch": "r16_w1.0_k3')  # a crash mid-write
    with pytest.warns(RuntimeWarning, match="torn last line"):
        data = read_accuracy_dataset(path)
    assert len(data) == 2 and data.torn
    assert not path.read_text().endswith("\n")  # reading never writes
    with pytest.warns(RuntimeWarning, match="torn last line"):
        more = build_accuracy_dataset(checkpoint, 3, settings=FAST, path=path,
                                      show_progress=False)
    assert more.n_evaluated == 1 and len(more) == 3
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 4 and rows[3]["arch"] == more.records[2].arch
    assert not read_accuracy_dataset(path).torn


def test_malformed_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"format": "something-else"}\n')
    with pytest.raises(FileFormatError, match="not an accuracy dataset"):
        read_accuracy_dataset(path)
    header = {"format": "ofa-search-accuracy-dataset", "format_version": 1, "space": SPACE}
    path.write_text(json.dumps(header) + '\n{"arch": 3}\n{"arch": "x"}\n')
    with pytest.raises(FileFormatError, match=r"data.jsonl:2: malformed record"):
        read_accuracy_dataset(path)
    path.write_text(json.dumps(dict(header, format_version=99)) + "\n")
    with pytest.raises(FileFormatError, match="format_version 99"):
        read_accuracy_dataset(path)


def test_foreign_checkpoint_or_settings_are_refused(checkpoint: Path, tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    build_accuracy_dataset(checkpoint, 2, settings=FAST, path=path, show_progress=False)
    other = tmp_path / "other" / "checkpoint.pt"
    state = load_checkpoint(checkpoint)
    state["epoch"] = 7
    save_checkpoint(other, {k: v for k, v in state.items()
                            if k not in ("format", "format_version")})
    with pytest.raises(FileFormatError, match="another checkpoint"):
        build_accuracy_dataset(other, 3, settings=FAST, path=path, show_progress=False)
    slower = EvalSettings(max_eval_images=80, calib_batches=1, batch_size=32)
    with pytest.raises(FileFormatError, match="evaluation settings"):
        build_accuracy_dataset(checkpoint, 3, settings=slower, path=path, show_progress=False)
    copy = tmp_path / "copy" / "checkpoint.pt"  # identical bytes elsewhere: same identity
    copy.parent.mkdir()
    shutil.copy(checkpoint, copy)
    assert build_accuracy_dataset(copy, 2, settings=FAST, path=path,
                                  show_progress=False).n_evaluated == 0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_eval_images"):
        EvalSettings(max_eval_images=0)
    with pytest.raises(FileFormatError, match="does not exist"):
        build_accuracy_dataset("no/such/checkpoint.pt", 2, show_progress=False)
