"""The precision benchmark's model table on untrained supernets (structure and sanity of
every variant's artefact; the numbers themselves are the benchmark's business)."""

from __future__ import annotations

from pathlib import Path

import pytest
from supernet_helpers import save_untrained_checkpoint

from ofa_search.arch import Arch
from ofa_search.data import load_dataset
from ofa_search.precision.benchmark import VARIANTS, model_rows

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_model_rows_cover_every_variant_with_consistent_numbers(tmp_path: Path) -> None:
    mp = save_untrained_checkpoint("mbv3_small28_mp", tmp_path / "mp.pt")
    fp32 = save_untrained_checkpoint("mbv3_small28", tmp_path / "fp32.pt", seed=5)
    arch = Arch.smallest("mbv3_small28_mp")
    data = load_dataset("digits", in_channels=1, resolution=arch.resolution)
    rows = model_rows(mp, fp32, [arch], data, n_eval=60)
    assert [r["variant"] for r in rows] == list(VARIANTS)
    by = {r["variant"]: r for r in rows}
    for row in rows:
        assert 0.0 <= row["artefact_accuracy"] <= 1.0 and row["artefact_samples"] == 60
        assert row["latency_ms"] > 0 and row["size_bytes"] > 0
    assert by["fp32"]["speedup_vs_fp32"] == pytest.approx(1.0)
    # the fp32 ONNX runs the same network as PyTorch: same accuracy up to the sample
    assert abs(by["fp32"]["artefact_accuracy"] - by["fp32"]["torch_test_accuracy"]) < 0.2
    # binary weights pack 32 to a word: the package is smaller than the fp32 model
    assert by["binary"]["size_bytes"] < by["fp32"]["size_bytes"]
    assert by["int8-qat"]["size_bytes"] < by["fp32"]["size_bytes"]
