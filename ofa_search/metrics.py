"""Prediction-quality metrics shared by every predictor report.

All functions take two equally long 1-D arrays, ``pred`` and ``true``; relative errors are
taken against ``true``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.stats import kendalltau, spearmanr

ArrayLike = Sequence[float] | np.ndarray


def _pair(pred: ArrayLike, true: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=float).ravel()
    t = np.asarray(true, dtype=float).ravel()
    if p.shape != t.shape:
        raise ValueError(f"pred and true differ in length: {p.size} vs {t.size}")
    if p.size == 0:
        raise ValueError("empty arrays")
    return p, t


def rmse(pred: ArrayLike, true: ArrayLike) -> float:
    """Root mean squared error."""
    p, t = _pair(pred, true)
    return float(np.sqrt(np.mean((p - t) ** 2)))


def mape(pred: ArrayLike, true: ArrayLike) -> float:
    """Mean absolute percentage error, as a fraction (0.1 = 10 %)."""
    p, t = _pair(pred, true)
    return float(np.mean(np.abs(p - t) / np.abs(t)))


def within(pred: ArrayLike, true: ArrayLike, pct: float) -> float:
    """Share (0..1) of predictions within ``pct`` percent of the truth (``pct=10`` → ±10 %)."""
    p, t = _pair(pred, true)
    return float(np.mean(np.abs(p - t) <= pct / 100.0 * np.abs(t) + 1e-12))


def kendall_tau(pred: ArrayLike, true: ArrayLike) -> float:
    """Kendall's τ-b rank correlation (NaN for fewer than two points)."""
    p, t = _pair(pred, true)
    if p.size < 2:
        return math.nan
    return float(kendalltau(p, t).statistic)


def spearman_rho(pred: ArrayLike, true: ArrayLike) -> float:
    """Spearman's rank correlation (NaN for fewer than two points)."""
    p, t = _pair(pred, true)
    if p.size < 2:
        return math.nan
    return float(spearmanr(p, t).statistic)


def report(pred: ArrayLike, true: ArrayLike) -> dict[str, float]:
    """Every metric at once: ``rmse, mape, within_5pct, within_10pct, kendall_tau,
    spearman_rho`` and ``n``."""
    p, _ = _pair(pred, true)
    return {"n": float(p.size), "rmse": rmse(pred, true), "mape": mape(pred, true),
            "within_5pct": within(pred, true, 5), "within_10pct": within(pred, true, 10),
            "kendall_tau": kendall_tau(pred, true), "spearman_rho": spearman_rho(pred, true)}
