"""Interleaved measurement rounds: combining rounds, their order in time, real ORT timing."""

from __future__ import annotations

import pytest

from ofa_search.arch import Arch
from ofa_search.profiling import DeviceProfile, TimingConfig, TimingStats
from ofa_search.profiling.backends import get_backend
from ofa_search.profiling.measure import (
    Prepared,
    default_chunk,
    measure_archs,
    measure_many,
    measure_many_rounds,
    measure_rounds,
)
from ofa_search.profiling.timing import combine_rounds

FAST = TimingConfig(warmup=1, min_runs=3, max_runs=10, time_cap_s=0.05, min_sample_ms=0.0)


def _stats(median: float, *, halfwidth: float = 0.01, converged: bool = True,
           count: int = 10) -> TimingStats:
    return TimingStats(median_ms=median, iqr_ms=median / 10, mean_ms=median * 1.1,
                       min_ms=median * 0.9, count=count, ci_halfwidth_ms=halfwidth,
                       converged=converged)


def test_a_spoilt_round_is_outvoted() -> None:
    combined = combine_rounds([_stats(1.00), _stats(1.60), _stats(1.01)])
    assert combined.median_ms == pytest.approx(1.01)
    assert combined.count == 30
    assert combined.min_ms == pytest.approx(0.9)
    assert combined.mean_ms == pytest.approx((1.1 + 1.76 + 1.111) / 3)
    assert combined.ci_halfwidth_ms == pytest.approx(0.59)  # the spoilt round's distance
    assert not combined.converged  # the rounds disagree beyond their own intervals


def test_agreeing_rounds_converge_and_one_round_is_itself() -> None:
    combined = combine_rounds([_stats(1.000), _stats(1.005), _stats(0.998)])
    assert combined.converged and combined.median_ms == pytest.approx(1.0)
    assert combined.ci_halfwidth_ms == pytest.approx(0.01)
    one = _stats(2.0, converged=False)
    assert combine_rounds([one]) is one
    with pytest.raises(ValueError, match="at least one round"):
        combine_rounds([])


def test_rounds_interleave_models_and_chunks_close_them() -> None:
    log: list[str] = []

    def prepare(name: str) -> Prepared:
        log.append(f"open {name}")

        def measure() -> TimingStats:
            log.append(name)
            return _stats(float(ord(name[0]) - ord("a") + 1))

        return Prepared(measure, lambda: log.append(f"close {name}"))

    seen: list[tuple[str, float]] = []
    out = measure_many(["a", "b", "c"], prepare, rounds=2, chunk=2,
                       on_result=lambda item, s: seen.append((item, s.median_ms)))
    assert log == ["open a", "open b", "a", "b", "a", "b", "close a", "close b",
                   "open c", "c", "c", "close c"]
    assert seen == [("a", 1.0), ("b", 2.0), ("c", 3.0)]
    assert [s.count for s in out] == [20, 20, 20]
    log.clear()
    rounds = measure_many_rounds(["b", "a"], prepare, rounds=3)  # each item's rounds, kept
    assert log == ["open b", "open a", "b", "a", "b", "a", "b", "a", "close b", "close a"]
    assert [[s.median_ms for s in r] for r in rounds] == [[2.0] * 3, [1.0] * 3]


def test_prepared_models_are_closed_when_a_measurement_fails() -> None:
    closed: list[int] = []

    def broken() -> TimingStats:
        raise RuntimeError("device lost")

    prepared = [Prepared(lambda: _stats(1.0), lambda: closed.append(0)),
                Prepared(broken, lambda: closed.append(1))]
    with pytest.raises(RuntimeError, match="device lost"):
        measure_many([0, 1], lambda i: prepared[i], rounds=2)
    assert sorted(closed) == [0, 1]
    with pytest.raises(ValueError, match="rounds must be a positive integer"):
        measure_rounds(prepared, 0)


def test_real_archs_in_rounds_on_onnxruntime() -> None:
    pytest.importorskip("onnxruntime")
    archs = [Arch.sample("mbv3_small28", seed, resolution=16) for seed in (1, 2)]
    with get_backend(DeviceProfile.local_onnxruntime(1), timing=FAST) as backend:
        assert default_chunk(backend) == 25
        stats = measure_archs(backend, archs, rounds=3)
    assert len(stats) == 2
    for s in stats:
        assert 0 < s.min_ms <= s.median_ms < 100 and s.count >= 9
