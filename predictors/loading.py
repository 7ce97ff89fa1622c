"""Load predictors: the accuracy predictor of a file (any kind), and the latency predictor
of a device (the learned one when fitted, else the table sum).

Lookup order for the learned predictor: the workspace's ``predictors/<device>-latency.json``
(written by ``ofa-search fit-predictors``), then the repository's shipped
``hw_profiles/predictors/<device>-latency-ridge.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ofa_search.errors import FileFormatError, OfaSearchError
from ofa_search.profiling.lut import REPO_TABLE_DIR, find_table
from ofa_search.space import get_space
from ofa_search.workspace import Workspace
from predictors.accuracy import (
    AccuracyPredictor,
    EnsembleAccuracyPredictor,
    MlpAccuracyPredictor,
)
from predictors.accuracy_gp import GpAccuracyPredictor
from predictors.accuracy_ofa import OfaAccuracyPredictor
from predictors.base import LATENCY_KINDS, Predictor
from predictors.latency import LearnedLatencyPredictor, LutLatencyPredictor

REPO_PREDICTOR_DIR = REPO_TABLE_DIR / "predictors"


def learned_latency_paths(workspace: Workspace, device: str) -> list[Path]:
    """Candidate files of a device's learned latency predictor, in lookup order."""
    return [workspace.latency_predictor(device),
            REPO_PREDICTOR_DIR / f"{device}-latency-ridge.json"]


def load_latency_predictor(workspace: Workspace, device: str, kind: str | None = None
                           ) -> tuple[Predictor, str]:
    """The latency predictor of ``device`` and its name (``"lut"`` or ``"learned"``).

    ``kind=None`` takes the learned predictor when one is fitted, else the table sum.
    Raises :class:`~ofa_search.errors.UnknownDeviceError` for a device without a table,
    ``ValueError`` for an unknown kind, and :class:`~ofa_search.errors.OfaSearchError`
    when ``kind="learned"`` but none is fitted.
    """
    if kind is not None and kind not in LATENCY_KINDS:
        raise ValueError(f"unknown latency predictor {kind!r}; choose one of {LATENCY_KINDS}")
    table = find_table(device, workspace=workspace.root)  # unknown device: clear error
    if kind in (None, "learned"):
        for path in learned_latency_paths(workspace, device):
            if path.is_file():
                return LearnedLatencyPredictor.load(path), "learned"
        if kind == "learned":
            raise OfaSearchError(f"no learned latency predictor for device {device!r}; run "
                                 f"`ofa-search fit-predictors --device {device}` first")
    return LutLatencyPredictor(table), "lut"


def accuracy_predictor_classes() -> dict[str, type[AccuracyPredictor]]:
    """Every accuracy predictor class by its file ``kind``."""
    classes: list[type[AccuracyPredictor]] = [MlpAccuracyPredictor, EnsembleAccuracyPredictor,
                                               GpAccuracyPredictor, OfaAccuracyPredictor]
    return {c.kind: c for c in classes}


def load_accuracy_predictor(path: str | os.PathLike[str], space: str | None = None
                            ) -> AccuracyPredictor:
    """Load any accuracy predictor file (dispatch on its ``kind``).

    Raises :class:`FileFormatError` for an unreadable file, an unknown kind or version, a
    malformed state, or (when ``space`` is given) a predictor fitted on another space.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FileFormatError(f"{path}: cannot read predictor file: {exc}") from exc
    kind = data.get("kind") if isinstance(data, dict) else None
    classes = accuracy_predictor_classes()
    if kind not in classes:
        raise FileFormatError(f"{path}: holds a {kind!r} predictor, not an accuracy "
                              f"predictor (known: {sorted(classes)})")
    pred = classes[kind].load(path)
    if not isinstance(pred, AccuracyPredictor):  # pragma: no cover - classes are ours
        raise FileFormatError(f"{path}: not an accuracy predictor")
    if space is not None and pred.space != get_space(space).name:
        raise FileFormatError(f"{path}: accuracy predictor was fitted on space "
                              f"{pred.space!r}, not {get_space(space).name!r}")
    return pred
