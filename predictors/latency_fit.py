"""End-to-end latency measurements of a device (resumable), the learned latency
predictor fitted on them, and the calibration of both latency predictors' upper bounds.

Measurements are cached in ``W/predictors/<device>-latency-measurements.json``, written
atomically after every batch; the archs are a seeded, prefix-stable sample, so a larger
``n`` measures only the missing ones. A cache measured under another device fingerprint
is refused.

Every batch of measurements is interleaved with a few of the table's reference subnets
(:func:`ofa_search.profiling.drift.measure_with_references`), and the host's speed ratio of
that batch is recorded beside each arch. Predictors are fitted on measurements divided by
it, i.e. on the table's time base, so that a burst of load during one batch does not
enter the point estimate, and the drift check's ratio is the one scale to apply later.
Their calibration scores are taken on measurements divided by the *median* ratio of all
batches instead: an answer is used on a host whose speed wanders around the one drift
check that scaled it, and the bound must cover that wander (wide on a noisy host, tight on
a quiet one).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ofa_search import metrics
from ofa_search.arch import Arch
from ofa_search.atomic import atomic_write_json
from ofa_search.errors import FileFormatError
from ofa_search.profiling.lut import LatencyTable, precision_mode
from ofa_search.workspace import Workspace
from predictors.accuracy_data import progress_bar
from predictors.accuracy_fit import heldout_split
from predictors.base import Predictor
from predictors.calibration import (
    DEFAULT_CONFIDENCE,
    FOLDS,
    CalibrationError,
    IntervalModel,
    log_scores,
    out_of_fold_predictions,
    save_calibration,
)
from predictors.latency import LearnedLatencyPredictor, LutLatencyPredictor

MEASUREMENTS_FORMAT = "ofa-search-latency-measurements"
MEASUREMENTS_VERSION = 2
"""Version 2 adds ``ratio`` (version-1 files are read with ratio 1)."""
SAMPLE_SEED = 2_000_003
"""Seed of the measured archs (the table's overhead and validation archs use others)."""


def measurements_path(workspace: Workspace, device: str) -> Path:
    """``W/predictors/<device>-latency-measurements.json``."""
    return workspace.latency_predictor(device).with_name(f"{device}-latency-measurements.json")


def _read(path: Path, table: LatencyTable) -> tuple[dict[str, float], dict[str, float]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FileFormatError(f"{path}: cannot read latency measurements: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != MEASUREMENTS_FORMAT:
        raise FileFormatError(f"{path} is not a latency-measurements file")
    if data.get("format_version") not in (1, MEASUREMENTS_VERSION):
        raise FileFormatError(f"{path}: unknown format_version {data.get('format_version')!r}")
    if data.get("fingerprint") != table.fingerprint or data.get("device") != table.device_id:
        raise FileFormatError(
            f"{path} was measured on {data.get('device')!r} (fingerprint "
            f"{data.get('fingerprint')!r}), not on {table.device_id!r} (fingerprint "
            f"{table.fingerprint!r}); delete it to measure again")
    try:
        measured = {str(k): float(v) for k, v in data["measured_ms"].items()}
        ratio = {str(k): float(v) for k, v in (data.get("ratio") or {}).items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FileFormatError(f"{path}: malformed latency measurements: {exc}") from exc
    return measured, ratio


@dataclass(frozen=True)
class Measurements:
    """End-to-end latencies of ``archs`` on the table's time base: ``ms`` divided by the
    host's speed ratio of each arch's own batch (for fitting), ``session_ms`` by the median
    ratio of all batches (for calibration: it keeps the host's wander between batches)."""

    archs: list[Arch]
    ms: np.ndarray
    session_ms: np.ndarray
    n_new: int


def collect_measurements(workspace: Workspace, table: LatencyTable, n: int, *,
                         batch: int = 20, show_progress: bool = True,
                         log: Callable[[str], None] | None = None) -> Measurements:
    """The first ``n`` sampled archs and their end-to-end latencies, measuring only those
    the cache lacks, ``batch`` at a time beside the table's reference subnets."""
    # deferred: profiling's measurement code loads onnx and tqdm
    from ofa_search.profiling.backends import get_backend
    from ofa_search.profiling.builder import sample_archs
    from ofa_search.profiling.drift import measure_with_references
    from ofa_search.profiling.measure import FAST_TIMING

    profile = table.measurable_profile()
    path = measurements_path(workspace, table.device_id)
    measured, ratio = _read(path, table) if path.exists() else ({}, {})
    archs = sample_archs(table.space, n, SAMPLE_SEED, table.width_mult, table.resolutions)
    todo = [a for a in archs if a.to_string() not in measured]
    if log is not None:
        log(f"{table.device_id}: {n - len(todo)} measurements cached, {len(todo)} to measure")

    def save() -> None:
        atomic_write_json(path, {"format": MEASUREMENTS_FORMAT,
                                 "format_version": MEASUREMENTS_VERSION,
                                 "device": table.device_id, "fingerprint": table.fingerprint,
                                 "space": table.space, "measured_ms": measured,
                                 "ratio": ratio})

    if todo:
        with get_backend(profile, timing=FAST_TIMING) as backend, \
                progress_bar(show_progress) as progress:
            task = progress.add_task(f"measuring on {table.device_id}", total=len(todo))

            def done(chunk: list[tuple[Arch, float, float]]) -> None:
                for arch, ms, speed in chunk:
                    measured[arch.to_string()] = ms
                    ratio[arch.to_string()] = speed
                progress.advance(task, len(chunk))
                save()

            try:
                measure_with_references(table, backend, todo, chunk=batch, on_chunk=done)
            finally:
                save()
        if log is not None:
            seen = [ratio[a.to_string()] for a in todo]
            log(f"{table.device_id}: this host ran at {min(seen):.3f}-{max(seen):.3f}x "
                "the table's speed (reference subnets timed with every chunk); the predictor "
                "is fitted on each chunk's speed, its bound on the median speed")
    raw = np.array([measured[a.to_string()] for a in archs])
    speeds = np.array([ratio.get(a.to_string(), 1.0) for a in archs])
    return Measurements(archs, raw / speeds, raw / float(np.median(speeds)), len(todo))


def fit_latency_predictor(workspace: Workspace, table: LatencyTable, n: int, *,
                          holdout: float = 0.2, seed: int = 0, show_progress: bool = True,
                          log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure (resumably), score learned and table predictors on a held-out part (point
    quality and the coverage of their :data:`~predictors.calibration.DEFAULT_CONFIDENCE`
    bounds, calibrated on the train part), refit the learned one on all measurements, save
    it to ``workspace.latency_predictor`` and both predictors' calibration beside it."""
    if n < 5:
        raise ValueError(f"n_latency must be >= 5 (train and held-out parts), got {n}")
    data = collect_measurements(workspace, table, n, show_progress=show_progress, log=log)
    archs, ms, scored = data.archs, data.ms, data.session_ms
    train, test = heldout_split(len(archs), holdout, seed)
    tr_a, te_a = [archs[i] for i in train], [archs[i] for i in test]
    learned = LearnedLatencyPredictor(table, "ridge", seed=seed).fit(tr_a, ms[train])
    lut = LutLatencyPredictor(table)
    report: dict[str, Any] = {
        "n_measurements": len(archs), "n_measured_now": data.n_new, "n_train": len(train),
        "n_heldout": len(test),
        "learned": metrics.report(learned.predict(te_a), ms[test]),
        "lut": metrics.report(lut.predict(te_a), ms[test])}
    # the bounds' held-out coverage: calibrated on the train part only
    for name, model in (("learned", learned), ("lut", lut)):
        intervals = calibrate(table, name, model, tr_a, ms[train], scored[train], seed=seed)
        report[name]["coverage"] = _coverage(intervals, model, te_a, scored[test])
    final = LearnedLatencyPredictor(table, "ridge", seed=seed).fit(archs, ms)
    report["path"] = str(final.save(workspace.latency_predictor(table.device_id)))
    models = [calibrate(table, "learned", final, archs, ms, scored, seed=seed),
              calibrate(table, "lut", lut, archs, ms, scored, seed=seed)]
    report["calibration_path"] = str(save_calibration(workspace, table, models))
    return report


def calibrate(table: LatencyTable, name: str, model: Predictor, archs: list[Arch],
              ms: np.ndarray, scored: np.ndarray | None = None, *, seed: int = 0
              ) -> IntervalModel:
    """The interval model of ``model`` (fitted on ``archs`` and ``ms`` when it learns: its
    scores are then out-of-fold), scored against ``scored`` (default ``ms``)."""
    if isinstance(model, LearnedLatencyPredictor):
        learned = model
        predicted = out_of_fold_predictions(
            lambda: LearnedLatencyPredictor(table, learned.model, n_members=learned.n_members,
                                            alpha=learned.alpha, seed=learned.seed),
            archs, ms, seed=seed)
        method = f"cross-conformal, {FOLDS}-fold out-of-fold log-ratio scores"
    else:
        predicted = model.predict(archs)
        method = "split-conformal, log-ratio scores"
    scores = log_scores(predicted, ms if scored is None else scored)
    by_mode: dict[str, list[float]] = {}
    for arch, score in zip(archs, scores, strict=True):
        by_mode.setdefault(precision_mode(arch), []).append(float(score))
    return IntervalModel(table.device_id, name, model.identity(), method,
                         {m: tuple(v) for m, v in by_mode.items()})


def _coverage(intervals: IntervalModel, model: Predictor, archs: list[Arch], ms: np.ndarray
              ) -> dict[str, Any]:
    """Held-out coverage of the default-confidence bound (``None`` with too few scores)."""
    out: dict[str, Any] = {"confidence": DEFAULT_CONFIDENCE, "share_under_bound": None,
                           "factor": None}
    try:
        factor = intervals.factor("fp32", DEFAULT_CONFIDENCE)
    except CalibrationError:
        return out
    bound = model.predict(archs) * factor
    out.update(share_under_bound=float(np.mean(ms <= bound)), factor=factor)
    return out
