"""The workspace folder: where every product of a user's runs lives (see the design).

One object names every path, so the CLI, the service, the search and the demo agree::

    W/supernet/checkpoint.pt            trained supernet (``ofa-search train``, the demo)
    W/supernet/accuracy_dataset.jsonl   (arch, val accuracy) pairs, next to the checkpoint
    W/predictors/accuracy.json          fitted accuracy predictor
    W/predictors/<device>-latency.json  fitted learned latency predictor of a device
    W/predictors/<device>-latency-measurements.json   its end-to-end measurements (resumable)
    W/predictors/<device>-latency-calibration.json    conformal scores of its latency bounds
    W/predictors/<device>-latency-scale.json          a stored speed ratio (check-device)
    W/predictors/quality.json           held-out quality of the fitted predictors
    W/hw_profiles/<device>.json         tables profiled by the user
    W/studies.log                       Optuna journal storage (searches, fronts' studies)
    W/fronts/<device>__<precision>.json precomputed Pareto fronts
    W/exports/<id>/                     artefacts with their model cards
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "OFA_SEARCH_WORKSPACE"
DEFAULT_DIR = "ofa-workspace"


def default_workspace_dir() -> Path:
    """``$OFA_SEARCH_WORKSPACE`` or ``./ofa-workspace``."""
    return Path(os.environ.get(ENV_VAR, DEFAULT_DIR))


@dataclass(frozen=True)
class Workspace:
    """Paths inside one workspace folder (nothing is created until a writer needs it)."""

    root: Path

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        object.__setattr__(self, "root", Path(root) if root is not None
                           else default_workspace_dir())

    @property
    def supernet_dir(self) -> Path:
        return self.root / "supernet"

    @property
    def checkpoint(self) -> Path:
        return self.supernet_dir / "checkpoint.pt"

    @staticmethod
    def accuracy_dataset_for(checkpoint: str | os.PathLike[str]) -> Path:
        """The accuracy-dataset cache of a checkpoint: beside it."""
        return Path(checkpoint).parent / "accuracy_dataset.jsonl"

    @property
    def predictors_dir(self) -> Path:
        return self.root / "predictors"

    @property
    def accuracy_predictor(self) -> Path:
        return self.predictors_dir / "accuracy.json"

    def latency_predictor(self, device: str) -> Path:
        return self.predictors_dir / f"{_safe(device)}-latency.json"

    @property
    def hw_profiles_dir(self) -> Path:
        return self.root / "hw_profiles"

    @property
    def studies_journal(self) -> Path:
        """Default Optuna storage of the workspace: a journal file (measured faster than
        SQLite for our batched trial writes; see the README)."""
        return self.root / "studies.log"

    @property
    def fronts_dir(self) -> Path:
        return self.root / "fronts"

    def front(self, device: str, precision: str = "fp32") -> Path:
        return self.fronts_dir / f"{_safe(device)}__{_safe(precision)}.json"

    @property
    def exports_dir(self) -> Path:
        return self.root / "exports"


def _safe(name: str) -> str:
    """Refuse names that would leave their folder (device ids come from users)."""
    if not name or "/" in name or "\\" in name or name in {".", ".."} or "\0" in name:
        raise ValueError(f"invalid name {name!r} (no path separators allowed)")
    return name
