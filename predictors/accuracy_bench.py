"""Accuracy-predictor benchmark: held-out quality versus the number of training archs.

One fixed held-out set (a seeded split of the dataset); for each training size ``n`` (only
those the rest of the dataset can supply, plus "all of it"), every candidate is fitted on
the first ``n`` archs of the (seeded) training pool and scored on the held-out set: RMSE
in accuracy points, Kendall τ, Spearman ρ, mean predicted std, fit time, and the time to
predict mean and std of 1,000 archs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from predictors.accuracy_data import AccuracyDataset, dataset_archs
from predictors.accuracy_fit import heldout_split, make_candidate, score_accuracy

BENCH_SIZES = (250, 500, 1000, 2000)


def _predict_ms_per_1000(pred: Any, space: str, seed: int) -> float:
    archs = dataset_archs(space, 1000, seed=seed + 99)
    pred.predict(archs[:10])  # warm caches
    started = time.perf_counter()
    pred.predict(archs)
    pred.predict_std(archs)
    return (time.perf_counter() - started) * 1e3


def run_accuracy_bench(data: AccuracyDataset, *, sizes: Sequence[int] = BENCH_SIZES,
                       candidates: Sequence[str] = ("mlp", "ensemble", "gp"),
                       heldout_fraction: float = 0.2, max_heldout: int = 500, seed: int = 0,
                       options: Mapping[str, Mapping[str, Any]] | None = None,
                       log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Run the benchmark on ``data``; returns ``{"rows": [...], ...}`` (JSON-ready)."""
    n = len(data)
    fraction = min(heldout_fraction, max_heldout / n) if n else heldout_fraction
    pool, held = heldout_split(n, fraction, seed)
    pool = np.random.default_rng(seed + 1).permutation(pool)
    archs, y = data.archs(), data.accuracies()
    test_a, test_y = [archs[i] for i in held], y[held]
    use = [s for s in sizes if s <= len(pool)]
    if len(pool) not in use and (not use or len(pool) > use[-1]):
        use.append(len(pool))
    rows: list[dict[str, Any]] = []
    for size in use:
        idx = pool[:size]
        for name in candidates:
            started = time.perf_counter()
            pred = make_candidate(name, data.space, seed, (options or {}).get(name))
            pred.fit([archs[i] for i in idx], y[idx])
            fit_s = time.perf_counter() - started
            scores = score_accuracy(pred, test_a, test_y)
            row = {"n_train": int(size), "candidate": name, "rmse_points": scores["rmse"],
                   "kendall_tau": scores["kendall_tau"], "spearman_rho": scores["spearman_rho"],
                   "mean_std_points": scores["mean_std_points"],
                   "max_abs_err_points": scores["max_abs_err_points"], "fit_s": fit_s,
                   "predict_ms_per_1000": _predict_ms_per_1000(pred, data.space, seed)}
            rows.append(row)
            if log is not None:
                log(format_row(row))
    return {"dataset": str(data.path), "n_archs": n, "n_heldout": len(held),
            "heldout_accuracy_std_points": float(np.std(test_y) * 100),
            "heldout_accuracy_range": [float(test_y.min()), float(test_y.max())],
            "checkpoint": data.header.get("checkpoint"), "eval": data.header.get("eval"),
            "rows": rows}


HEADER = (f"{'n_train':>7} {'candidate':<9} {'RMSE pts':>9} {'tau':>6} {'rho':>6} "
          f"{'std pts':>8} {'fit s':>7} {'ms/1k':>7}")


def format_row(row: Mapping[str, Any]) -> str:
    return (f"{row['n_train']:>7} {row['candidate']:<9} {row['rmse_points']:>9.3f} "
            f"{row['kendall_tau']:>6.3f} {row['spearman_rho']:>6.3f} "
            f"{row['mean_std_points']:>8.3f} {row['fit_s']:>7.1f} "
            f"{row['predict_ms_per_1000']:>7.1f}")


def format_bench(result: Mapping[str, Any]) -> str:
    """The benchmark as a plain-text table."""
    lines = [f"{result['n_archs']} archs, {result['n_heldout']} held out (accuracy std "
             f"{result['heldout_accuracy_std_points']:.2f} points)", HEADER]
    lines += [format_row(r) for r in result["rows"]]
    return "\n".join(lines)
