"""Shared by the latency benchmarks (``bench_precision_mbv3.py``,
``bench_int8_depthwise.py``, ``bench_head_int8.py``): models timed side by side in
interleaved rounds."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

Runner = Callable[[], object]
"""One call of a model on its prepared input."""
K = TypeVar("K", bound=Hashable)


def interleaved(models: dict[K, Runner], rounds: int, runs: int,
                warmup: int = 2) -> dict[K, dict[str, Any]]:
    """Per model: median over ``rounds`` of the per-round median of ``runs`` timed calls;
    round ``r`` visits the models in the order rotated by ``r``."""
    names = list(models)
    for name in names:
        for _ in range(warmup):
            models[name]()
    per_round: dict[K, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            run = models[name]
            run()  # untimed: the previous model evicted this one's caches
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
            per_round[name].append(1e3 * statistics.median(times))
    out: dict[K, dict[str, Any]] = {}
    for name, values in per_round.items():
        median = statistics.median(values)
        out[name] = {"median_ms": median, "min_round_ms": min(values),
                     "max_round_ms": max(values),
                     "round_spread": (max(values) - min(values)) / median,
                     "rounds_ms": values}
    return out
