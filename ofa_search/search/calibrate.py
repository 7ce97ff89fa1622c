"""Calibrate a device's latency bounds on the answers a search gives: measure members of
its Pareto front end to end and store their conformity scores as *answer scores*.

Why: a query returns the most accurate arch that a search found under the budget, and a
search favours archs whose latency the predictor underestimates. Scores of random archs
(``fit-predictors``) cover random archs, not answers: on ``ofa_mbv3`` a bound covering 99 %
of random subnets held for 87-92 % of answers (``docs/latency-bounds.md``). Front members
are what answers are drawn from, so the conformal guarantee holds for answers when the
scores come from them.

The members are spread evenly along the front, measured ``chunk`` at a time beside the
table's reference subnets, and divided by the *median* host speed of the session (as
``fit-predictors`` scores its bounds), so the bound keeps the host's wander between chunks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import ofa_search.binary  # registers how binary units are timed
import ofa_search.quant  # noqa: F401 (registers how int8 units are timed)
from ofa_search.errors import OfaSearchError
from ofa_search.profiling.backends import get_backend
from ofa_search.profiling.drift import measure_with_references
from ofa_search.profiling.lut import precision_mode
from ofa_search.profiling.measure import FAST_TIMING
from ofa_search.search.evaluator import AccuracyModel
from ofa_search.search.query import QueryEngine
from ofa_search.workspace import Workspace
from predictors.calibration import (
    DEFAULT_CONFIDENCE,
    CalibrationError,
    log_scores,
    min_scores,
    save_answer_scores,
)

DEFAULT_ANSWERS = 40
"""Front members measured by default (0.9 needs 9 scores per mode, 0.95 needs 19)."""


@dataclass(frozen=True)
class AnswerCalibration:
    """What :func:`calibrate_answers` measured and stored."""

    device: str
    precision: str
    latency_predictor: str
    n_front: int
    n_measured: int
    host_speed: tuple[float, float, float]
    """min, median, max of the chunks' speed ratios to the table."""
    factors: dict[str, dict[str, float | None]]
    """per mode: the bound's factor at :data:`DEFAULT_CONFIDENCE` by the random-arch scores
    (``"random"``) and by the new answer scores (``"answers"``); ``None`` when too few."""

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "precision": self.precision,
                "latency_predictor": self.latency_predictor, "n_front": self.n_front,
                "n_measured": self.n_measured, "host_speed": list(self.host_speed),
                "confidence": DEFAULT_CONFIDENCE, "factors": self.factors}


def spread(n_points: int, n: int) -> list[int]:
    """Up to ``n`` distinct indices spread evenly over ``range(n_points)``, both ends
    included."""
    if n_points <= 0 or n <= 0:
        return []
    return sorted({int(i) for i in np.rint(np.linspace(0, n_points - 1, min(n, n_points)))})


def calibrate_answers(workspace: Workspace | str | os.PathLike[str], device: str,
                      precision: str | None = None, *, n: int = DEFAULT_ANSWERS,
                      accuracy: AccuracyModel | None = None, accuracy_name: str | None = None,
                      latency_kind: str | None = None, chunk: int = 20,
                      log: Callable[[str], None] | None = None) -> AnswerCalibration:
    """Measure up to ``n`` members of ``device``'s saved front (built by ``ofa-search
    search``) and store their scores as the answer scores of the front's latency predictor.

    One-line errors: ``n`` below 1, an imported table (not measurable here), a device
    without random-arch calibration (``fit-predictors`` first) or without a front."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise OfaSearchError(f"the number of answers to measure must be a positive integer, "
                             f"got {n!r}")
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    engine = QueryEngine(ws, accuracy=accuracy, accuracy_name=accuracy_name,
                         latency_kind=latency_kind)
    ctx = engine.context(device, precision)
    table = ctx.table
    assert table is not None
    profile = table.measurable_profile()
    if ctx.intervals is None:
        raise CalibrationError(
            f"device {device!r} has no calibration of its {ctx.latency_name} latency "
            f"predictor; run `ofa-search fit-predictors --device {device} --skip-accuracy` "
            "first")
    front = engine.front(device, precision)
    if front is None:
        raise OfaSearchError(
            f"device {device!r} has no saved front for precision {ctx.precision!r} that "
            f"matches its predictors; build it with `ofa-search search --device {device} "
            f"--precision {ctx.precision}` first")
    points = [front.points[i] for i in spread(len(front.points), n)]
    archs = [p.arch for p in points]
    if log is not None:
        log(f"{device}: measuring {len(archs)} of {len(front.points)} front members")
    with get_backend(profile, timing=FAST_TIMING) as backend:
        timed = measure_with_references(table, backend, archs, chunk=chunk)
    raw = np.array([ms for ms, _ in timed])
    speeds = np.array([ratio for _, ratio in timed])
    scores = log_scores([p.predicted_latency_ms for p in points],
                        raw / float(np.median(speeds)))
    by_mode: dict[str, list[float]] = {}
    for arch, score in zip(archs, scores, strict=True):
        by_mode.setdefault(precision_mode(arch), []).append(float(score))
    model = ctx.intervals
    factors: dict[str, dict[str, float | None]] = {}
    method = (f"split-conformal, log-ratio scores of {len(archs)} members of the "
              f"{ctx.precision} front (accuracy: {ctx.accuracy_name}), median host speed")
    for mode, values in sorted(by_mode.items()):
        model = save_answer_scores(ws, table, model, mode, values, method)
        factors[mode] = {"random": _factor(model, mode, answers=False),
                         "answers": _factor(model, mode, answers=True)}
    return AnswerCalibration(device, ctx.precision, ctx.latency_name, len(front.points),
                             len(archs), (float(speeds.min()), float(np.median(speeds)),
                                          float(speeds.max())), factors)


def _factor(model: Any, mode: str, *, answers: bool) -> float | None:
    if answers and len(model.answer_scores.get(mode, ())) < min_scores(DEFAULT_CONFIDENCE):
        return None  # factor() would fall back to the random-arch scores
    try:
        return float(model.factor(mode, DEFAULT_CONFIDENCE, answers=answers))
    except CalibrationError:
        return None
