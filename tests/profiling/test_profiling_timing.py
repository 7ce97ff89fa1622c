from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from scipy import stats

from ofa_search.errors import FileFormatError
from ofa_search.profiling import TimingConfig, TimingStats, time_callable
from ofa_search.profiling.timing import median_ci_ranks, summarize


class FakeClock:
    """A clock that only moves when the timed function says so (no sleeping, no noise)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls = 0

    def __call__(self) -> float:
        return self.now

    def function(self, durations_ms: Iterator[float]) -> Callable[[], None]:
        def fn() -> None:
            self.calls += 1
            self.now += next(durations_ms) / 1e3

        return fn


def constant(ms: float) -> Iterator[float]:
    while True:
        yield ms


def noisy(ms: float, rel_sd: float, outlier_rate: float, seed: int) -> Iterator[float]:
    rng = np.random.default_rng(seed)
    while True:
        yield 10 * ms if rng.random() < outlier_rate else ms * (1 + rel_sd * rng.normal())


def test_constant_calls_converge_at_min_runs() -> None:
    clock = FakeClock()
    result = time_callable(clock.function(constant(1.0)), warmup=3, min_runs=10, clock=clock)
    assert result.median_ms == pytest.approx(1.0) and result.min_ms == pytest.approx(1.0)
    assert result.iqr_ms == pytest.approx(0.0, abs=1e-9) and result.converged
    assert result.count == 10 and result.ci_halfwidth_ms == pytest.approx(0.0, abs=1e-9)
    assert clock.calls == 3 + 1 + 10  # warm-up, one calibration sample, min_runs


def test_fast_calls_are_batched_and_reported_per_call() -> None:
    clock = FakeClock()
    result = time_callable(clock.function(constant(0.01)), warmup=0, min_runs=10,
                           min_sample_ms=0.2, clock=clock)
    assert result.median_ms == pytest.approx(0.01)
    assert clock.calls >= 10 * 20  # every sample batches >= 0.2 ms / 0.01 ms calls


def test_outliers_do_not_move_the_median() -> None:
    clock = FakeClock()
    result = time_callable(clock.function(noisy(1.0, 0.01, 0.05, seed=0)), min_runs=20,
                           rel_tolerance=0.01, clock=clock)
    assert result.converged
    assert result.median_ms == pytest.approx(1.0, rel=0.01)
    assert result.mean_ms > result.median_ms  # the 10x outliers pull only the mean
    assert 0 < result.iqr_ms < 0.05


def test_unconvergeable_noise_stops_at_max_runs() -> None:
    clock = FakeClock()
    rng = np.random.default_rng(1)
    durations = iter(lambda: float(rng.lognormal(0.0, 1.0)), None)
    result = time_callable(clock.function(durations), min_runs=10, max_runs=30,
                           rel_tolerance=0.001, time_cap_s=1e9, clock=clock)
    assert result.count == 30 and not result.converged


def test_time_cap_stops_slow_noisy_calls() -> None:
    clock = FakeClock()
    result = time_callable(clock.function(noisy(100.0, 0.3, 0.0, seed=2)), warmup=1,
                           min_runs=5, max_runs=1000, rel_tolerance=0.001, time_cap_s=2.0,
                           clock=clock)
    assert 5 <= result.count <= 25 and not result.converged
    assert clock.now < 4.0


def test_real_clock_busy_loop() -> None:
    result = time_callable(lambda: sum(range(2000)), warmup=2, min_runs=8, time_cap_s=0.5)
    assert math.isfinite(result.median_ms) and result.median_ms > 0
    assert result.count >= 8 and result.iqr_ms >= 0 and result.min_ms <= result.median_ms


def test_median_ci_ranks_match_the_binomial_distribution() -> None:
    assert median_ci_ranks(5) is None
    assert median_ci_ranks(6) == (0, 5)
    assert median_ci_ranks(100) == (39, 60)
    for n in range(6, 300):
        ranks = median_ci_ranks(n)
        assert ranks is not None
        lo, hi = ranks
        assert hi == n - 1 - lo
        assert 1 - 2 * stats.binom.cdf(lo, n, 0.5) >= 0.95  # coverage of [x_(lo), x_(hi)]
        assert 1 - 2 * stats.binom.cdf(lo + 1, n, 0.5) < 0.95  # and it is the tightest


def test_summarize_needs_samples() -> None:
    with pytest.raises(ValueError, match="at least one sample"):
        summarize([])
    few = summarize([1.0, 2.0, 3.0])
    assert math.isinf(few.ci_halfwidth_ms) and not few.converged


@pytest.mark.parametrize("result", [
    TimingStats(median_ms=1.0, iqr_ms=0.1, mean_ms=1.1, min_ms=0.9, count=12,
                ci_halfwidth_ms=0.01, converged=True),
    summarize([1.0, 2.0]),
])
def test_timing_stats_round_trip(result: TimingStats) -> None:
    assert TimingStats.from_dict(result.to_dict()) == result


@pytest.mark.parametrize(("change", "message"), [
    ({"count": "12"}, "expected an integer"),
    ({"converged": 1}, "expected true or false"),
    ({"median_ms": "fast"}, "malformed timing stats"),
    ({"extra": 1}, "unknown ['extra']"),
])
def test_timing_stats_from_dict_rejects_malformed(change: dict[str, Any], message: str) -> None:
    data = summarize([1.0] * 8).to_dict() | change
    with pytest.raises(FileFormatError, match=re.escape(message)):
        TimingStats.from_dict(data)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"warmup": -1}, "warmup must be >= 0"),
    ({"min_runs": 0}, "min_runs must be >= 1"),
    ({"min_runs": 10, "max_runs": 5}, "max_runs must be >= min_runs"),
    ({"rel_tolerance": 0.0}, "rel_tolerance must be > 0"),
    ({"time_cap_s": 0}, "time_cap_s must be > 0"),
    ({"min_sample_ms": -1.0}, "min_sample_ms must be >= 0"),
    ({"confidence": 1.0}, "confidence must be in (0, 1)"),
])
def test_timing_config_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        TimingConfig(**kwargs)
