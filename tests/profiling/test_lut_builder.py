"""Building a small real table with ONNX Runtime: resume, fingerprint guard, validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ofa_search.arch import Arch
from ofa_search.metrics import report as metrics
from ofa_search.profiling import DeviceProfile, TimingConfig, TimingStats
from ofa_search.profiling.backends import get_backend
from ofa_search.profiling.builder import (
    ProfileMismatchError,
    build_table,
    enumerate_units,
    sample_archs,
)
from ofa_search.profiling.lut import LatencyTable
from ofa_search.profiling.validate import validate_table
from ofa_search.units import arch_units

pytest.importorskip("onnxruntime")

SPACE = "mbv3_small28"
FAST = TimingConfig(warmup=1, min_runs=3, max_runs=10, time_cap_s=0.05, min_sample_ms=0.0)


class CountingBackend:
    """Wraps a real backend and counts ``measure`` calls."""

    def __init__(self, profile: DeviceProfile) -> None:
        self.inner = get_backend(profile, timing=FAST)
        self.calls = 0

    def measure(self, onnx_model: Any, inputs: Any) -> TimingStats:
        self.calls += 1
        return self.inner.measure(onnx_model, inputs)

    def versions(self) -> dict[str, str]:
        return self.inner.versions()

    def close(self) -> None:
        self.inner.close()


@pytest.fixture(scope="module")
def profile() -> DeviceProfile:
    return DeviceProfile.local_onnxruntime(1, id="test-ort-1t")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory,
          profile: DeviceProfile) -> tuple[Path, LatencyTable, list[int]]:
    """A table for 16 px, built in two runs: interrupted after 5 units, then resumed."""
    path = tmp_path_factory.mktemp("lut") / "test-ort-1t.json"
    backend = CountingBackend(profile)
    seen: list[str] = []
    partial = build_table(SPACE, profile, [16], path, backend=backend, progress=False,
                          limit=5, overhead_archs=2, rounds=1, chunk=3,
                          on_unit=lambda u, s: seen.append(u.key))
    first_calls = backend.calls
    assert not partial.complete and len(partial.entries) == 5
    assert not LatencyTable.load(path).complete
    table = build_table(SPACE, profile, [16], path, backend=backend, progress=False,
                        overhead_archs=2, rounds=1, on_unit=lambda u, s: seen.append(u.key))
    assert len(seen) == len(set(seen)), "a unit was measured twice"
    backend.close()
    return path, table, [first_calls, backend.calls]


def test_resume_measures_each_unit_once(built: tuple[Path, LatencyTable, list[int]]) -> None:
    path, table, calls = built
    n_units = len(enumerate_units(SPACE, 1.0, [16]))
    assert calls[0] == 5
    assert calls[1] == n_units + 2  # every unit once, plus two whole subnets for the overhead
    assert table.complete and len(table.entries) == n_units
    loaded = LatencyTable.load(path)
    assert loaded.complete and loaded.to_dict() == table.to_dict()
    assert loaded.fingerprint == DeviceProfile.local_onnxruntime(1).fingerprint()
    assert loaded.versions["onnxruntime"] and loaded.host


def test_rounds_measure_each_unit_that_many_times(tmp_path: Path,
                                                  profile: DeviceProfile) -> None:
    backend = CountingBackend(profile)
    table = build_table(SPACE, profile, [16], tmp_path / "t.json", backend=backend,
                        progress=False, limit=4, overhead_archs=0, rounds=3, chunk=2)
    backend.close()
    assert backend.calls == 12 and len(table.entries) == 4
    assert table.meta["rounds"] == 3
    assert all(entry["count"] >= 3 * FAST.min_runs for entry in table.entries.values())


def test_predict_by_hand(built: tuple[Path, LatencyTable, list[int]]) -> None:
    _, table, _ = built
    arch = Arch.sample(SPACE, 7, resolution=16)
    expected = sum(table.entries[u.key]["median_ms"] for u in arch_units(arch))
    assert table.predict(arch) == pytest.approx(expected + table.overhead_ms)
    gaps = table.meta["overhead"]["gaps_ms"]
    assert len(gaps) == 2 and min(gaps) <= table.overhead_ms <= max(gaps)


def test_other_fingerprint_is_refused(built: tuple[Path, LatencyTable, list[int]]) -> None:
    path, _, _ = built
    other = DeviceProfile.local_onnxruntime(2, id="test-ort-1t")
    with pytest.raises(ProfileMismatchError, match="fingerprint"):
        build_table(SPACE, other, [16], path, timing=FAST, progress=False)


def test_validate_small(built: tuple[Path, LatencyTable, list[int]],
                        tmp_path: Path) -> None:
    _, table, _ = built
    report = validate_table(table, n=2, timing=FAST)
    assert report.n == 2 and len(report.rows) == 2
    assert report.rmse_ms >= 0 and 0 <= report.within_10pct <= 1
    assert [row["arch"] for row in report.rows] == [
        arch.to_string() for arch in sample_archs(table.space, 2, report.seed,
                                                  table.width_mult, table.resolutions)]
    for row in report.rows:
        assert row["measured_ms"] > 0 and row["predicted_ms"] > 0
        assert row["load_1min"] is None or row["load_1min"] >= 0
    saved = report.save(tmp_path)
    assert saved.name == "latency_validation_test-ort-1t.json"


def test_metrics_by_hand() -> None:
    import numpy as np

    m = metrics(np.array([1.0, 2.15, 2.9]), np.array([1.0, 2.0, 3.0]))
    assert m["rmse"] == pytest.approx(((0.0225 + 0.01) / 3) ** 0.5)
    assert m["within_5pct"] == pytest.approx(2 / 3) and m["within_10pct"] == 1.0
    assert m["kendall_tau"] == pytest.approx(1.0)
