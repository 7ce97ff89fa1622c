"""Fit and compare accuracy predictors on an accuracy dataset, honestly: every number is
measured on archs the predictor did not see.

:func:`heldout_split` is the one deterministic train/held-out split;
:func:`select_accuracy_predictor` fits each candidate on the train part, scores it on the
held-out part (RMSE in accuracy points, Kendall τ, ...), picks the best by τ (rounded to
0.01) and then RMSE, and refits the winner on all data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ofa_search import metrics
from ofa_search.arch import Arch
from predictors.accuracy import (
    AccuracyPredictor,
    EnsembleAccuracyPredictor,
    MlpAccuracyPredictor,
)
from predictors.accuracy_gp import GpAccuracyPredictor

CANDIDATES: dict[str, Callable[..., AccuracyPredictor]] = {
    "mlp": MlpAccuracyPredictor, "ensemble": EnsembleAccuracyPredictor,
    "gp": GpAccuracyPredictor}
DEFAULT_CANDIDATES = ("mlp", "ensemble")
"""Fitted by ``fit-predictors``; the GP predicts big batches too slowly for the search
(O(n_train²) per arch for its std), so it is compared in the benchmark only."""


def heldout_split(n: int, fraction: float = 0.2, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, heldout_idx)`` of ``n`` items: a seeded permutation, at least two
    held out and two to train on."""
    if n < 4:
        raise ValueError(f"need at least 4 samples to split off a held-out set, got {n}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction=}")
    n_out = min(max(2, round(fraction * n)), n - 2)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_out:]), np.sort(order[:n_out])


def make_candidate(name: str, space: str, seed: int = 0,
                   options: Mapping[str, Any] | None = None) -> AccuracyPredictor:
    """A fresh predictor of candidate ``name`` (see :data:`CANDIDATES`)."""
    if name not in CANDIDATES:
        raise ValueError(f"unknown accuracy predictor {name!r}; choose from {sorted(CANDIDATES)}")
    return CANDIDATES[name](space, seed=seed, **dict(options or {}))


def score_accuracy(pred: AccuracyPredictor, archs: Sequence[Arch], accuracy: np.ndarray
                   ) -> dict[str, float]:
    """:func:`ofa_search.metrics.report` in accuracy points (``rmse`` is in points), plus
    ``mean_std_points`` (the predictor's own uncertainty) and ``max_abs_err_points``."""
    p = pred.predict(archs) * 100.0
    t = np.asarray(accuracy, dtype=float) * 100.0
    out = metrics.report(p, t)
    out["mean_std_points"] = float(np.mean(pred.predict_std(archs)) * 100.0)
    out["max_abs_err_points"] = float(np.max(np.abs(p - t)))
    return out


def select_accuracy_predictor(archs: Sequence[Arch], accuracy: np.ndarray, *, space: str,
                              candidates: Sequence[str] = DEFAULT_CANDIDATES,
                              holdout: float = 0.2, seed: int = 0,
                              options: Mapping[str, Mapping[str, Any]] | None = None,
                              log: Any = None) -> tuple[AccuracyPredictor, dict[str, Any]]:
    """Fit every candidate on the train part, score on the held-out part, refit the best
    on everything. Returns ``(predictor, report)``."""
    y = np.asarray(accuracy, dtype=float)
    train, test = heldout_split(len(archs), holdout, seed)
    tr_a, te_a = [archs[i] for i in train], [archs[i] for i in test]
    scores: dict[str, dict[str, float]] = {}
    for name in candidates:
        started = time.perf_counter()
        pred = make_candidate(name, space, seed, (options or {}).get(name))
        pred.fit(tr_a, y[train])
        scores[name] = score_accuracy(pred, te_a, y[test])
        scores[name]["fit_s"] = time.perf_counter() - started
        if log is not None:
            log(f"accuracy predictor {name}: held-out RMSE {scores[name]['rmse']:.3f} points, "
                f"tau {scores[name]['kendall_tau']:.3f}")

    def key(name: str) -> tuple[float, float]:
        tau = scores[name]["kendall_tau"]
        return (-round(tau, 2) if np.isfinite(tau) else 0.0, scores[name]["rmse"])

    best = min(candidates, key=key)
    final = make_candidate(best, space, seed, (options or {}).get(best))
    final.fit(archs, y)
    report = {"n_archs": len(archs), "n_train": len(train), "n_heldout": len(test),
              "candidates": scores, "chosen": best,
              "note": "scores of models fitted on the train part; the saved one is refitted "
                      "on all archs"}
    return final, report
