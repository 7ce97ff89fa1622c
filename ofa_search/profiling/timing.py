"""Robust, adaptive latency measurement.

A *sample* is the mean per-call time of ``number`` back-to-back calls; ``number`` is chosen
once (after warm-up) so that one sample lasts at least ``min_sample_ms``, which keeps timer
resolution and per-sample overhead out of very fast calls. Samples are taken until the
distribution-free confidence interval of their median lies within ``rel_tolerance`` of the
median, or until ``max_runs`` samples or ``time_cap_s`` seconds, whichever comes first.

Statistics are outlier-robust (median, inter-quartile range, order-statistic confidence
interval); the mean is reported for reference only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from ofa_search.errors import FileFormatError

Clock = Callable[[], float]
"""A monotonic clock in seconds, such as :func:`time.perf_counter`."""


class Sampler(Protocol):
    """Takes ``repeat`` samples of ``number`` calls each; returns per-call seconds each."""

    def __call__(self, number: int, repeat: int) -> Sequence[float]: ...


@dataclass(frozen=True, kw_only=True)
class TimingConfig:
    """How hard to try for a stable median. Validated on construction.

    Attributes:
        warmup: untimed calls before measuring (caches, lazy initialisation, JIT).
        min_runs: samples always taken, whatever the time cap.
        max_runs: samples at most.
        rel_tolerance: stop once the median's confidence interval is within this fraction
            of the median on both sides.
        time_cap_s: stop after this many seconds of sampling (once ``min_runs`` are in).
        min_sample_ms: a sample lasts at least this long; faster calls are batched.
        confidence: coverage of the median's confidence interval.
    """

    warmup: int = 5
    min_runs: int = 10
    max_runs: int = 1000
    rel_tolerance: float = 0.02
    time_cap_s: float = 5.0
    min_sample_ms: float = 0.2
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup=}")
        if self.min_runs < 1:
            raise ValueError(f"min_runs must be >= 1, got {self.min_runs=}")
        if self.max_runs < self.min_runs:
            raise ValueError(
                f"max_runs must be >= min_runs, got {self.max_runs=}, {self.min_runs=}"
            )
        if not self.rel_tolerance > 0:
            raise ValueError(f"rel_tolerance must be > 0, got {self.rel_tolerance=}")
        if not self.time_cap_s > 0:
            raise ValueError(f"time_cap_s must be > 0, got {self.time_cap_s=}")
        if not self.min_sample_ms >= 0:
            raise ValueError(f"min_sample_ms must be >= 0, got {self.min_sample_ms=}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence=}")


_DEFAULT = TimingConfig()
_MAX_NUMBER = 1 << 20
_STATS_FIELDS = ("median_ms", "iqr_ms", "mean_ms", "min_ms", "count", "ci_halfwidth_ms",
                 "converged")


@dataclass(frozen=True, kw_only=True)
class TimingStats:
    """Summary of one measurement, per call, in milliseconds.

    ``ci_halfwidth_ms`` is the larger distance from the median to an end of its confidence
    interval (``inf`` when too few samples bound one); ``converged`` tells whether that
    interval met the requested tolerance before a cap stopped the loop.
    """

    median_ms: float
    iqr_ms: float
    mean_ms: float
    min_ms: float
    count: int
    ci_halfwidth_ms: float
    converged: bool

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (an unbounded interval becomes ``None``)."""
        data = asdict(self)
        if math.isinf(self.ci_halfwidth_ms):
            data["ci_halfwidth_ms"] = None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TimingStats:
        """Inverse of :meth:`to_dict`; raises :class:`FileFormatError` on a malformed dict."""
        if not isinstance(data, Mapping):
            raise FileFormatError(f"timing stats must be an object, got {type(data).__name__}")
        keys = set(data)
        if keys != set(_STATS_FIELDS):
            raise FileFormatError(
                "timing stats keys differ from the expected ones: missing "
                f"{sorted(set(_STATS_FIELDS) - keys)}, unknown {sorted(keys - set(_STATS_FIELDS))}"
            )
        try:
            halfwidth = data["ci_halfwidth_ms"]
            return cls(
                median_ms=float(data["median_ms"]), iqr_ms=float(data["iqr_ms"]),
                mean_ms=float(data["mean_ms"]), min_ms=float(data["min_ms"]),
                count=_as_int(data["count"]),
                ci_halfwidth_ms=math.inf if halfwidth is None else float(halfwidth),
                converged=_as_bool(data["converged"]),
            )
        except (TypeError, ValueError) as exc:
            raise FileFormatError(f"malformed timing stats: {exc}") from exc


def _as_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _as_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {value!r}")
    return value


def median_ci_ranks(n: int, confidence: float = 0.95) -> tuple[int, int] | None:
    """0-based ranks ``(lo, hi)`` of the sorted samples that bound the median's interval.

    The classic distribution-free interval: ``[x_(j), x_(n-j+1)]`` with the largest ``j``
    such that ``P(Binomial(n, 1/2) <= j - 1) <= (1 - confidence) / 2``. ``None`` when even
    the sample extremes do not reach the coverage (``n < 6`` at 95 %).
    """
    alpha_half = (1.0 - confidence) / 2.0
    log_half_n = n * math.log(0.5)
    cdf = 0.0
    j = 0
    for k in range(n // 2 + 1):
        cdf += math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                        + log_half_n)
        if cdf > alpha_half:
            break
        j = k + 1
    if j == 0:
        return None
    return j - 1, n - j


def summarize(samples_ms: Sequence[float], *, rel_tolerance: float = _DEFAULT.rel_tolerance,
              confidence: float = _DEFAULT.confidence) -> TimingStats:
    """Robust statistics of per-call samples in milliseconds (at least one sample)."""
    if len(samples_ms) == 0:
        raise ValueError("summarize needs at least one sample")
    values = np.sort(np.asarray(samples_ms, dtype=np.float64))
    median = float(np.median(values))
    q1, q3 = np.percentile(values, [25.0, 75.0])
    ranks = median_ci_ranks(len(values), confidence)
    if ranks is None:
        halfwidth = math.inf
    else:
        halfwidth = max(median - float(values[ranks[0]]), float(values[ranks[1]]) - median)
    return TimingStats(
        median_ms=median, iqr_ms=float(q3 - q1), mean_ms=float(values.mean()),
        min_ms=float(values[0]), count=len(values), ci_halfwidth_ms=halfwidth,
        converged=halfwidth <= rel_tolerance * median,
    )


def time_sampler(sampler: Sampler, config: TimingConfig = _DEFAULT, *,
                 clock: Clock = time.perf_counter) -> TimingStats:
    """Adaptive measurement through ``sampler`` (which does the timing itself).

    Warms up, picks the batch size ``number`` (doubling until one sample lasts
    ``min_sample_ms``), then asks for samples in growing chunks, checking convergence after
    each chunk. ``clock`` only enforces ``time_cap_s``.
    """
    if config.warmup:
        sampler(1, config.warmup)
    number = 1
    min_sample_s = config.min_sample_ms / 1e3
    while number < _MAX_NUMBER:
        per_call = float(sampler(number, 1)[0])
        if per_call * number >= min_sample_s:
            break
        number *= 2
    samples: list[float] = []
    start = clock()
    while True:
        chunk = max(config.min_runs - len(samples), len(samples) // 4, 1)
        chunk = min(chunk, config.max_runs - len(samples))
        samples.extend(float(s) * 1e3 for s in sampler(number, chunk))
        stats = summarize(samples, rel_tolerance=config.rel_tolerance,
                          confidence=config.confidence)
        if (stats.converged or len(samples) >= config.max_runs
                or clock() - start >= config.time_cap_s):
            return stats


def callable_sampler(fn: Callable[[], object], clock: Clock = time.perf_counter) -> Sampler:
    """A :class:`Sampler` that times ``fn()`` with ``clock``."""

    def sample(number: int, repeat: int) -> list[float]:
        out = []
        for _ in range(repeat):
            begin = clock()
            for _ in range(number):
                fn()
            out.append((clock() - begin) / number)
        return out

    return sample


def time_callable(
    fn: Callable[[], object], *, warmup: int = _DEFAULT.warmup,
    min_runs: int = _DEFAULT.min_runs, max_runs: int = _DEFAULT.max_runs,
    rel_tolerance: float = _DEFAULT.rel_tolerance, time_cap_s: float = _DEFAULT.time_cap_s,
    min_sample_ms: float = _DEFAULT.min_sample_ms, confidence: float = _DEFAULT.confidence,
    clock: Clock = time.perf_counter,
) -> TimingStats:
    """Time ``fn()`` adaptively (see :func:`time_sampler` and :class:`TimingConfig`).

    ``clock`` may be replaced by a fake clock in tests; it is both the stopwatch and the
    time cap's clock.
    """
    config = TimingConfig(warmup=warmup, min_runs=min_runs, max_runs=max_runs,
                          rel_tolerance=rel_tolerance, time_cap_s=time_cap_s,
                          min_sample_ms=min_sample_ms, confidence=confidence)
    return time_sampler(callable_sampler(fn, clock), config, clock=clock)


def combine_rounds(rounds: Sequence[TimingStats]) -> TimingStats:
    """One summary of several measurements of the same model taken at different times.

    The median is the median of the rounds' medians, so a round spoilt by a burst of
    load elsewhere on the host (which only ever slows a model down) is outvoted by the
    others; ``ci_halfwidth_ms`` is the largest distance from it to a round's median (the
    run-to-run spread), and the result is converged only when every round was and that
    spread is within each round's own interval. IQR and mean are the rounds' medians and
    means; ``min_ms`` is the fastest sample of all and ``count`` the samples of all.
    """
    if not rounds:
        raise ValueError("combine_rounds needs at least one round")
    if len(rounds) == 1:
        return rounds[0]
    medians = np.array([r.median_ms for r in rounds])
    median = float(np.median(medians))
    spread = float(np.max(np.abs(medians - median)))
    widest = max(r.ci_halfwidth_ms for r in rounds)
    return TimingStats(
        median_ms=median, iqr_ms=float(np.median([r.iqr_ms for r in rounds])),
        mean_ms=float(np.mean([r.mean_ms for r in rounds])),
        min_ms=min(r.min_ms for r in rounds), count=sum(r.count for r in rounds),
        ci_halfwidth_ms=max(spread, widest),
        converged=all(r.converged for r in rounds) and spread <= widest,
    )
