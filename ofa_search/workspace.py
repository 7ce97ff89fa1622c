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

from ofa_search.atomic import unwritable_reason
from ofa_search.errors import OfaSearchError

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


class InvalidNameError(OfaSearchError, ValueError):
    """A device id or other name that cannot be a file name inside its folder."""


class WorkspaceError(OfaSearchError, ValueError):
    """A workspace path that is not a usable folder."""


def _safe(name: str) -> str:
    """Refuse names that would leave their folder (device ids come from users)."""
    if not name or "/" in name or "\\" in name or name in {".", ".."} or "\0" in name:
        raise InvalidNameError(f"invalid name {name!r} (no path separators allowed)")
    return name


def check_device_id(device: str, option: str = "--device") -> str:
    """Refuse (:class:`InvalidNameError`, naming ``option``) a device id that cannot name a
    file of the workspace: empty, ``.``/``..``, or holding a path separator or a NUL."""
    try:
        return _safe(device)
    except InvalidNameError:
        raise InvalidNameError(f"{option} {device!r} is not a device id (no path separators, "
                               "'.' or '..'; e.g. cpu-ort-1t)") from None


def explicit_workspace(given_on_command_line: bool) -> bool:
    """Whether the user chose the workspace: on the command line or in
    ``$OFA_SEARCH_WORKSPACE`` (not the implicit ``./ofa-workspace``)."""
    return given_on_command_line or bool(os.environ.get(ENV_VAR))


def check_workspace(path: str | os.PathLike[str], *, must_exist: bool = True,
                    writable: bool = False) -> Path:
    """Refuse (:class:`WorkspaceError`, one line naming the path) a workspace that is a
    file, lies under a file, does not exist (with ``must_exist``), or (with ``writable``)
    cannot be created or written. Creates nothing; returns the path."""
    root = Path(path)
    try:
        exists, is_dir = root.exists(), root.is_dir()
    except OSError as exc:
        raise WorkspaceError(f"workspace {root} cannot be used "
                             f"({exc.strerror or type(exc).__name__})") from None
    if exists and not is_dir:
        raise WorkspaceError(f"workspace {root} is a file, not a folder")
    if not exists and must_exist:
        raise WorkspaceError(f"workspace {root} does not exist (create it, or give "
                             "--workspace the folder of your runs)")
    reason = unwritable_reason(root)
    if reason is not None and (writable or "writable" not in reason):
        raise WorkspaceError(f"workspace {root} {reason}")
    return root
