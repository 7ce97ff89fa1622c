"""Validation with reference subnets in every round: the host's speed per round is
divided out, and measure_many_rounds times the references beside every chunk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from table_helpers import write_synthetic_table

from ofa_search.arch import Arch
from ofa_search.errors import OfaSearchError
from ofa_search.profiling.measure import measure_many_rounds
from ofa_search.profiling.timing import TimingConfig, TimingStats
from ofa_search.profiling.validate import host_ratios, normalised, validate_modes
from ofa_search.workspace import Workspace

MP = "mbv3_small28_mp"


def _stats(median: float) -> TimingStats:
    return TimingStats(median_ms=median, iqr_ms=0.0, mean_ms=median, min_ms=median,
                       count=1, ci_halfwidth_ms=0.0, converged=True)


def test_a_round_twice_as_slow_is_divided_out() -> None:
    """Two references (1 and 2 ms in the table) run at table speed in round 1 and at half
    speed in round 2 (the third reference's 3× is outvoted by the median)."""
    refs = [[_stats(1.0), _stats(2.0)], [_stats(2.0), _stats(4.0)], [_stats(3.0), _stats(6.0)]]
    ratios = host_ratios(refs, [1.0, 2.0, 1.0])
    assert list(ratios) == [1.0, 2.0]
    assert normalised([_stats(1.5), _stats(3.0)], ratios) == [1.5, 1.5]


class _Model:
    """A prepared model of our own protocol whose time is its item's value."""

    def __init__(self, value: float, closed: list[float]) -> None:
        self.value, self.closed = value, closed

    def measure(self) -> TimingStats:
        return _stats(self.value)

    def close(self) -> None:
        self.closed.append(self.value)


def test_references_are_timed_beside_every_chunk() -> None:
    closed: list[float] = []
    chunks: list[tuple[list[float], int, list[list[float]]]] = []

    def on_chunk(group: list[float], samples: list[list[TimingStats]],
                 beside: list[list[TimingStats]]) -> None:
        chunks.append((list(group), len(samples), [[s.median_ms for s in b] for b in beside]))

    out = measure_many_rounds([1.0, 2.0, 3.0], lambda v: _Model(v, closed), rounds=2, chunk=3,
                              beside=[10.0, 20.0], on_chunk=on_chunk)
    assert [[s.median_ms for s in rounds] for rounds in out] == [[1.0, 1.0], [2.0, 2.0],
                                                                [3.0, 3.0]]
    # a chunk of 3 holds the 2 references and one item
    assert chunks == [([v], 1, [[10.0, 10.0], [20.0, 20.0]]) for v in (1.0, 2.0, 3.0)]
    assert sorted(closed) == sorted([1.0, 2.0, 3.0] + [10.0, 20.0] * 3)
    plain: list[list[float]] = []
    measure_many_rounds([1.0, 2.0, 3.0], lambda v: _Model(v, closed), rounds=1, chunk=2,
                        on_chunk=lambda g, s, b: plain.append(list(g)))
    assert plain == [[1.0, 2.0], [3.0]]


def test_validation_with_references_keeps_raw_and_normalised_times(tmp_path: Path) -> None:
    """Real ONNX Runtime timing of a synthetic table whose two reference subnets are
    recorded at 1 ms: every row is its raw rounds divided by the host ratio of its round."""
    ws = Workspace(tmp_path / "ws")
    table = write_synthetic_table(ws, "ref-test", MP, ("fp32",), resolutions=(16,))
    archs = [Arch.sample(MP, seed, resolution=16).replace(precisions=("fp32",) * 4)
             for seed in (3, 4)]
    table.meta["reference"] = {"archs": [a.to_string() for a in archs],
                               "measured_ms": [1.0, 1.0]}
    fast = TimingConfig(warmup=1, min_runs=3, max_runs=10, time_cap_s=0.05)
    (report,) = validate_modes(table, ("fp32",), n=3, timing=fast, rounds=2, references=2)
    assert report.references == 2
    assert report.noise_mape is not None and report.noise_mape_raw is not None
    assert any("reference subnets" in line for line in report.summary_lines())
    for row in report.rows:
        ratio = np.array(row["host_ratio"])
        assert ratio.shape == (2,) and (ratio > 0).all()
        # two rounds: the medians are means, and each half is one round
        assert row["measured_first_ms"] == pytest.approx(row["measured_raw_first_ms"] / ratio[0])
        assert row["measured_last_ms"] == pytest.approx(row["measured_raw_last_ms"] / ratio[1])
        assert row["measured_ms"] == pytest.approx(
            (row["measured_first_ms"] + row["measured_last_ms"]) / 2)
        assert row["measured_raw_ms"] > 0
    (plain,) = validate_modes(table, ("fp32",), n=1, timing=fast, rounds=2)
    assert plain.references == 0 and plain.noise_mape_raw is None
    assert "host_ratio" not in plain.rows[0]
    with pytest.raises(OfaSearchError, match="fewer than the 3"):
        validate_modes(table, ("fp32",), n=1, references=3)
    with pytest.raises(OfaSearchError, match="whole number"):
        validate_modes(table, ("fp32",), n=1, references=-1)
    del table.meta["reference"]
    with pytest.raises(OfaSearchError, match="no reference subnets"):
        validate_modes(table, ("fp32",), n=1, references=2)
