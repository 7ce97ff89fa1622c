"""The search benchmark (``scripts/bench_search.py`` is its command line).

At budgets at the 10th…90th percentiles of a device's predicted latency over random archs,
each engine runs at the same number of trials (one predictor call each; repeats are
cached); its best arch is compared with the "oracle" — the best of many random feasible
archs, priced in batches — and with random search. Also timed: a cold query (a search)
and a query from a front. Optionally the found archs are measured: latency on the
device's backend (exported to ONNX) and test accuracy of the supernet's subnet.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ofa_search.arch import Arch
from ofa_search.profiling.backends import get_backend
from ofa_search.profiling.lut import find_table
from ofa_search.profiling.measure import FAST_TIMING, measure_archs
from ofa_search.search.context import DeviceContext
from ofa_search.search.engines import ENGINES, best_feasible, run_search
from ofa_search.search.evaluator import CachedEvaluator
from ofa_search.search.front import build_front_for
from ofa_search.search.query import QueryEngine
from ofa_search.search.storage import open_storage, open_study, persist_trials

PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


@dataclass(frozen=True)
class EngineRun:
    """One engine at one budget and seed."""

    budget_ms: float
    engine: str
    seed: int
    arch: str | None
    predicted_accuracy: float | None
    predicted_latency_ms: float | None
    trials: int
    predictor_calls: int
    wall_s: float
    first_within_0_1pt: int | None
    """Trials until the running best came within 0.1 points of the oracle (None: never)."""


def percentile_budgets(ctx: DeviceContext, n: int = 2000, seed: int = 0,
                       percentiles: Sequence[int] = PERCENTILES) -> list[float]:
    """Latency budgets at ``percentiles`` of the predicted latency of ``n`` random archs."""
    rng = np.random.default_rng(seed)
    lat = np.asarray(ctx.latency.predict([ctx.encoding.sample(rng) for _ in range(n)]))
    return [float(v) for v in np.percentile(lat, percentiles)]


def random_oracle(ctx: DeviceContext, budgets: Sequence[float], n: int = 100_000,
                  seed: int = 12345, batch: int = 5000,
                  progress: Callable[[int], None] | None = None) -> dict[float, Any]:
    """Best predicted accuracy among ``n`` random archs under each budget (batched)."""
    rng = np.random.default_rng(seed)
    evaluator = CachedEvaluator(ctx.accuracy(), ctx.latency)
    best: dict[float, Any] = {b: None for b in budgets}
    for start in range(0, n, batch):
        evs = evaluator.evaluate([ctx.encoding.sample(rng)
                                  for _ in range(min(batch, n - start))])
        for b in budgets:
            cand = best_feasible(evs, b)
            if cand is not None and (best[b] is None or cand.accuracy > best[b].accuracy):
                best[b] = cand
        evaluator.cache.clear()
        if progress is not None:
            progress(min(batch, n - start))
    return best


def compare_engines(ctx: DeviceContext, budgets: Sequence[float], oracle: dict[float, Any], *,
                    engines: Sequence[str] = ENGINES, n_trials: int = 2000,
                    seeds: Sequence[int] = (0,), record_trials: bool = False,
                    progress: Callable[[int], None] | None = None) -> list[EngineRun]:
    """Every engine at every budget and seed, ``n_trials`` trials each — throw-away
    searches, or with ``record_trials`` searches that keep their Optuna trials as a
    stored search does (the evolution engine then asks and tells its sampler's trials
    instead of drafting arrays: the same archs, at Optuna's cost per trial)."""
    runs = []
    for budget in budgets:
        target = oracle[budget].accuracy - 0.001 if oracle.get(budget) is not None else None
        for engine in engines:
            for seed in seeds:
                result = run_search(ctx.encoding, ctx.evaluator(), budget_ms=budget,
                                    engine=engine, n_trials=n_trials, seed=seed,
                                    record_trials=record_trials)
                first = None
                if target is not None:
                    for i, ev in enumerate(result.evaluations):
                        if ev.latency_ms <= budget and ev.accuracy >= target:
                            first = i + 1
                            break
                best = result.best
                runs.append(EngineRun(
                    budget, engine, seed, best.arch.to_string() if best else None,
                    best.accuracy if best else None, best.latency_ms if best else None,
                    result.n_trials, result.predictor_calls, result.wall_s, first))
                if progress is not None:
                    progress(1)
    return runs


def time_queries(ctx: DeviceContext, budgets: Sequence[float], *, front_trials: int = 3000,
                 seed: int = 0, repeats: int = 50) -> dict[str, Any]:
    """Wall time of cold queries (no front) and of queries from a freshly built front
    (built in memory, not written to the workspace)."""
    engine = QueryEngine(ctx.workspace, accuracy=ctx.accuracy(),
                         accuracy_name=ctx.accuracy_name, latency_kind=ctx.latency_name)
    engine._contexts[(ctx.device, ctx.precision)] = ctx
    cold = []
    for budget in budgets:
        start = time.perf_counter()
        engine._cold_search(ctx, budget)
        cold.append(time.perf_counter() - start)
    start = time.perf_counter()
    front, _ = build_front_for(ctx, n_trials=front_trials, seed=seed, store=False,
                               write=False)
    front_s = time.perf_counter() - start
    lookups = []
    for _ in range(repeats):
        for budget in budgets:
            start = time.perf_counter()
            front.best_under(budget)
            lookups.append(time.perf_counter() - start)
    return {"cold_query_s": cold, "cold_query_max_s": max(cold),
            "front_build_s": front_s, "front_points": len(front.points),
            "front_lookup_mean_ms": 1000 * float(np.mean(lookups)),
            "front_lookup_max_ms": 1000 * float(np.max(lookups))}


def measure_found(ctx: DeviceContext, archs: Sequence[Arch], *, data: str | None = None,
                  data_dir: str | None = None) -> list[dict[str, Any]]:
    """Measured latency (the device's backend, exported ONNX, in interleaved rounds) and
    test accuracy (the workspace's supernet, BN recalibrated) of ``archs``."""
    # deferred: the trainer and the dataset loaders (Pillow) only for this measurement
    from ofa_search.data import load_dataset
    from ofa_search.train import evaluate_arch, load_supernet

    table = find_table(ctx.device, workspace=ctx.workspace.root)
    profile = table.measurable_profile()
    net, meta = load_supernet(ctx.workspace.checkpoint)
    name = data or meta["config"]["dataset"]
    with get_backend(profile, timing=FAST_TIMING) as backend:
        latencies = measure_archs(backend, archs, profile.batch_size, profile)
    out = []
    for arch, latency in zip(archs, latencies, strict=True):
        dataset = load_dataset(name, data_dir=data_dir, in_channels=net.space.in_channels,
                               resolution=arch.resolution)
        out.append({"arch": arch.to_string(), "measured_ms": latency.median_ms,
                    "test_accuracy": evaluate_arch(net, arch, dataset, split="test")})
    return out


def time_storages(ctx: DeviceContext, folder: str, n_trials: int = 200) -> dict[str, Any]:
    """Seconds per trial to append a finished in-memory search to SQLite and to a journal
    file in ``folder`` (one :func:`~ofa_search.search.storage.persist_trials` call per
    generation of 100, as :func:`~ofa_search.search.jobs.stored_search` does)."""
    result = run_search(ctx.encoding, ctx.evaluator(), budget_ms=None, engine="nsga2",
                        n_trials=n_trials, seed=0)
    out: dict[str, Any] = {"trials": n_trials}
    for label, target in (("sqlite", f"sqlite:///{Path(folder) / 'bench_studies.db'}"),
                          ("journal", str(Path(folder) / "bench_studies.log"))):
        study = open_study(open_storage(target), f"bench-{time.time_ns()}",
                           ["maximize", "minimize"])
        start = time.perf_counter()
        for i in range(0, n_trials, 100):
            persist_trials(study, result.new_trials[i:i + 100])
        out[f"{label}_ms_per_trial"] = 1000 * (time.perf_counter() - start) / n_trials
    return out
