"""Pick and load the latency predictor of a device: the learned one when fitted, else the
table sum.

Lookup order for the learned predictor: the workspace's ``predictors/<device>-latency.json``
(written by ``ofa-search fit-predictors``), then the repository's shipped
``hw_profiles/predictors/<device>-latency-ridge.json``.
"""

from __future__ import annotations

from pathlib import Path

from ofa_search.profiling.lut import REPO_TABLE_DIR, find_table
from ofa_search.workspace import Workspace
from predictors.base import Predictor
from predictors.latency import LearnedLatencyPredictor, LutLatencyPredictor

LATENCY_KINDS = ("lut", "learned")
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
            from ofa_search.errors import OfaSearchError

            raise OfaSearchError(f"no learned latency predictor for device {device!r}; run "
                                 f"`ofa-search fit-predictors --device {device}` first")
    return LutLatencyPredictor(table), "lut"
