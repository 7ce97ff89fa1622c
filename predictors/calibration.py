"""Calibrated upper bounds on latency: split-conformal on end-to-end measurements.

The conformity score of a measured arch is its log-ratio ``log(measured / predicted)``.
Given ``n`` such scores of archs the predictor did not learn from, the conformal quantile
``q(P)`` (the ``⌈(n+1)·P⌉``-th smallest score) makes ``predicted · exp(q(P))`` an upper
bound that a new arch's measured latency stays under with probability at least ``P``
(exchangeable archs; Vovk et al., *Algorithmic Learning in a Random World*, 2005). The
quantile comes from `crepes <https://github.com/henrikbostrom/crepes>`_'
``ConformalPredictiveSystem`` (one-sided percentiles of a conformal predictive
distribution, which is what an upper bound is; MAPIE's regressors give two-sided
intervals).

The scores of the learned predictor are *out-of-fold*: each measured arch is scored by a
model fitted on the other folds (K-fold, then the saved model is fitted on all of them, as
in cross-conformal prediction); the table's own predictor learns nothing, so its scores
are plain residuals. Scores are kept per precision mode (a Mondrian split: an int8 model's
errors are not an fp32 model's).

A query's answer is not a random arch: it is the most accurate arch a search found under
the budget, and a search favours archs whose latency the predictor underestimates (the
winner's curse). Scores of random archs then cover random archs but not answers. So a
predictor can also carry *answer scores*: end-to-end measurements of archs that a search
selected (members of the device's Pareto front, :func:`ofa_search.search.calibrate`),
which answers are exchangeable with. Queries use them where they exist, the random-arch
scores otherwise; ``latency --confidence`` on a given arch uses the random-arch ones.

The bound multiplies the point estimate by one factor per (predictor, mode, confidence),
so it keeps the order of the point estimates: a front sorted by predicted latency is
sorted by bound too, and a query by bound is a query by point under
``budget / factor`` (see :meth:`IntervalModel.factor`).

File ``W/predictors/<device>-latency-calibration.json``::

    {"format": "ofa-search-latency-calibration", "format_version": 1, "device",
     "fingerprint", "created", "predictors": {"learned": {"identity", "method",
     "scores": {"fp32": [...]}, "answer_method": "...", "answer_scores": {"fp32": [...]}},
     "lut": {...}}}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ofa_search.atomic import atomic_write_json
from ofa_search.errors import FileFormatError, OfaSearchError
from ofa_search.profiling.lut import LatencyTable, now_iso
from ofa_search.versioning import read_format_json
from ofa_search.workspace import Workspace

CALIBRATION_FORMAT = "ofa-search-latency-calibration"
CALIBRATION_VERSION = 1
DEFAULT_CONFIDENCE = 0.9
"""Confidence of the upper bound a query must fit when none is asked for."""
FOLDS = 5
"""Folds of the out-of-fold scores of a learned predictor."""


class CalibrationError(OfaSearchError, ValueError):
    """No usable calibration for a device, predictor, precision mode or confidence."""


def check_confidence(confidence: float) -> float:
    """``confidence`` as a float in (0, 1), or a :class:`CalibrationError`."""
    if isinstance(confidence, bool) or not isinstance(confidence, int | float) or not (
            math.isfinite(confidence) and 0.0 < confidence < 1.0):
        raise CalibrationError(f"confidence must be a number strictly between 0 and 1, got "
                               f"{confidence!r}")
    return float(confidence)


def conformal_quantile(scores: Sequence[float] | np.ndarray, confidence: float) -> float:
    """The split-conformal ``confidence`` quantile of ``scores`` (``inf`` when there are
    too few scores for that confidence: fewer than ``confidence / (1 - confidence)``)."""
    from crepes import ConformalPredictiveSystem  # imports pandas: deferred to first use

    check_confidence(confidence)
    values = np.asarray(scores, dtype=float)
    if values.size < min_scores(confidence):
        return math.inf
    cps = ConformalPredictiveSystem().fit(values)
    return float(np.asarray(cps.predict(np.zeros(1), higher_percentiles=[100 * confidence]))
                 .ravel()[0])


def min_scores(confidence: float) -> int:
    """Fewest scores that give a finite ``confidence`` bound."""
    return math.ceil(confidence / (1.0 - confidence) - 1e-9)


@dataclass(frozen=True)
class IntervalModel:
    """The conformity scores of one latency predictor of one device, by precision mode."""

    device: str
    predictor: str
    identity: str
    method: str
    scores: dict[str, tuple[float, ...]]
    answer_scores: dict[str, tuple[float, ...]] = field(default_factory=dict)
    answer_method: str | None = None
    _factors: dict[tuple[str, float, bool], float] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def factor(self, mode: str, confidence: float, *, answers: bool = False) -> float:
        """``exp(q)``: the bound is ``point · factor``. ``answers=True`` scores an answer
        of a search: by the answer scores of ``mode`` when there are enough of them for
        ``confidence``, otherwise by the random-arch ones. A :class:`CalibrationError`
        when this mode was not measured or too few of its archs were."""
        key = (mode, confidence, answers)
        if key not in self._factors:  # a query asks for the same few factors again and again
            self._factors[key] = self._factor(mode, confidence, answers)
        return self._factors[key]

    def _factor(self, mode: str, confidence: float, answers: bool) -> float:
        confidence = check_confidence(confidence)
        selected = self.answer_scores.get(mode, ()) if answers else ()
        if len(selected) >= min_scores(confidence):
            return math.exp(conformal_quantile(selected, confidence))
        scores = self.scores.get(mode, ())
        if not scores:
            raise CalibrationError(
                f"device {self.device!r} has no calibration data for {mode} subnets (its "
                f"measurements cover {', '.join(sorted(self.scores)) or 'nothing'})")
        q = conformal_quantile(scores, confidence)
        if not math.isfinite(q):
            raise CalibrationError(
                f"{len(scores)} calibration measurements of device {self.device!r} cannot "
                f"bound latency at confidence {confidence:g}: it needs at least "
                f"{min_scores(confidence)}; measure more with `ofa-search fit-predictors "
                f"--device {self.device} --n-latency N`")
        return math.exp(q)

    def coverage(self, mode: str, confidence: float, predicted: Sequence[float],
                 measured: Sequence[float]) -> float:
        """Share of ``measured`` at or under the bound of ``predicted``."""
        bound = np.asarray(predicted, dtype=float) * self.factor(mode, confidence)
        return float(np.mean(np.asarray(measured, dtype=float) <= bound))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"identity": self.identity, "method": self.method,
                               "scores": {m: list(v) for m, v in self.scores.items()}}
        if self.answer_scores:
            out["answer_method"] = self.answer_method
            out["answer_scores"] = {m: list(v) for m, v in self.answer_scores.items()}
        return out


def log_scores(predicted: Sequence[float] | np.ndarray, measured: Sequence[float] | np.ndarray
               ) -> np.ndarray:
    """Conformity scores ``log(measured / predicted)``."""
    p = np.asarray(predicted, dtype=float)
    m = np.asarray(measured, dtype=float)
    if p.shape != m.shape or np.any(p <= 0) or np.any(m <= 0):
        raise ValueError("predicted and measured latencies must be positive and equally long")
    return np.log(m / p)


def out_of_fold_predictions(make: Any, archs: Sequence[Any], measured: np.ndarray, *,
                            folds: int = FOLDS, seed: int = 0) -> np.ndarray:
    """Each arch predicted by ``make()`` fitted on the folds it is not in (scikit-learn's
    ``KFold``, shuffled with ``seed``)."""
    from sklearn.model_selection import KFold  # deferred: scikit-learn is a heavy import

    n = len(archs)
    out = np.empty(n)
    for train, test in KFold(min(folds, n), shuffle=True, random_state=seed).split(
            np.arange(n)):
        model = make().fit([archs[i] for i in train], measured[train])
        out[test] = model.predict([archs[i] for i in test])
    return out


def calibration_path(workspace: Workspace, device: str) -> Path:
    """``W/predictors/<device>-latency-calibration.json``."""
    return workspace.latency_predictor(device).with_name(f"{device}-latency-calibration.json")


def save_calibration(workspace: Workspace, table: LatencyTable,
                     models: Sequence[IntervalModel]) -> Path:
    """Write the device's interval models (one per predictor name) atomically."""
    return atomic_write_json(calibration_path(workspace, table.device_id), {
        "format": CALIBRATION_FORMAT, "format_version": CALIBRATION_VERSION,
        "device": table.device_id, "fingerprint": table.fingerprint, "created": now_iso(),
        "predictors": {m.predictor: m.to_dict() for m in models}})


def load_interval_model(workspace: Workspace, table: LatencyTable, predictor: str,
                        identity: str) -> IntervalModel | None:
    """The interval model of ``predictor`` (``"learned"``/``"lut"``) for ``table``'s device,
    or ``None`` when the device was never calibrated, or calibrated for another predictor
    or table (refitting a predictor recalibrates it)."""
    path = calibration_path(workspace, table.device_id)
    if not path.is_file():
        return None
    data = read_format_json(path, fmt=CALIBRATION_FORMAT, version=CALIBRATION_VERSION,
                            what="latency calibration")
    if data.get("fingerprint") != table.fingerprint:
        return None
    entry = (data.get("predictors") or {}).get(predictor)
    if not isinstance(entry, dict) or entry.get("identity") != identity:
        return None
    scores = _read_scores(path, entry["scores"] if "scores" in entry else None)
    answers = _read_scores(path, entry.get("answer_scores") or {})
    method = entry.get("answer_method")
    return IntervalModel(table.device_id, predictor, identity, str(entry.get("method")),
                         scores, answers, None if method is None else str(method))


def _read_scores(path: Path, raw: Any) -> dict[str, tuple[float, ...]]:
    try:
        scores = {str(m): tuple(float(v) for v in values) for m, values in raw.items()}
    except (TypeError, ValueError, AttributeError) as exc:
        raise FileFormatError(f"{path.name}: malformed calibration scores: {exc}") from exc
    if not all(math.isfinite(v) for values in scores.values() for v in values):
        raise FileFormatError(f"{path.name}: calibration scores must be finite")
    return scores


def save_answer_scores(workspace: Workspace, table: LatencyTable, model: IntervalModel,
                       mode: str, scores: Sequence[float], method: str) -> IntervalModel:
    """Store ``scores`` of searched answers of precision ``mode`` beside ``model``'s
    random-arch scores (replacing that mode's earlier answer scores); returns the updated
    model. The device's other predictors' entries are kept."""
    updated = replace(model, answer_scores={**model.answer_scores,
                                            mode: tuple(float(v) for v in scores)},
                      answer_method=method)
    path = calibration_path(workspace, table.device_id)
    data = read_format_json(path, fmt=CALIBRATION_FORMAT, version=CALIBRATION_VERSION,
                            what="latency calibration")
    entries = data.get("predictors")
    if not isinstance(entries, dict):
        entries = {}
    models = [m for name, entry in entries.items() if name != model.predictor
              and isinstance(entry, dict) and (m := load_interval_model(
                  workspace, table, name, str(entry.get("identity")))) is not None]
    save_calibration(workspace, table, [*models, updated])
    return updated
