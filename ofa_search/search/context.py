"""Everything a search on one device needs, loaded once: the device's table and latency
predictor, the encoding it can price, and (lazily) the workspace's accuracy predictor."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ofa_search.errors import OfaSearchError, UnsupportedPrecisionError
from ofa_search.profiling.lut import find_table
from ofa_search.search.encoding import ArchEncoding, mode_precisions
from ofa_search.search.evaluator import AccuracyModel, CachedEvaluator, LatencyModel
from ofa_search.workspace import Workspace

DEFAULT_PRECISION = "fp32"


def file_identity(path: Path) -> str:
    """``sha256:<first 16 hex digits>`` of a file's bytes."""
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def state_identity(model: Any) -> str:
    """Identity of a predictor: a hash of its saved state when it has one."""
    state = getattr(model, "state", None)
    if callable(state):
        text = json.dumps(state(), sort_keys=True, default=str)
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]
    return type(model).__name__


def load_workspace_accuracy(workspace: Workspace) -> AccuracyModel:
    """The fitted accuracy predictor of ``workspace``; a clear error when there is none."""
    path = workspace.accuracy_predictor
    if not path.is_file():
        raise OfaSearchError(f"no accuracy predictor at {path}; run `ofa-search fit-predictors "
                             f"--workspace {workspace.root}` first")
    from predictors.accuracy import load_accuracy_predictor

    model: AccuracyModel = load_accuracy_predictor(path)
    return model


@dataclass
class DeviceContext:
    """One (device, precision) of a workspace, ready to search.

    Attributes:
        latency_name: ``"lut"`` or ``"learned"`` (or the name of an injected model).
        accuracy_name, accuracy_identity: what the accuracy side is and which one (a hash
            of the workspace's predictor file); ``accuracy_identity`` is ``None`` until a
            predictor exists.
        checkpoint: identity of the workspace's supernet checkpoint (path, size, mtime),
            or ``None`` without one.
    """

    workspace: Workspace
    device: str
    precision: str
    space: str
    encoding: ArchEncoding
    latency: LatencyModel
    latency_name: str
    latency_identity: str
    accuracy_name: str
    accuracy_identity: str | None
    checkpoint: dict[str, Any] | None
    _accuracy_loader: Callable[[], AccuracyModel] = field(repr=False)
    _accuracy: AccuracyModel | None = field(default=None, repr=False)

    def accuracy(self) -> AccuracyModel:
        """The accuracy model, loaded on first use; checks that it prices this space."""
        if self._accuracy is None:
            model = self._accuracy_loader()
            space = getattr(model, "space", None)
            if isinstance(space, str) and space != self.space:
                raise OfaSearchError(f"the accuracy predictor is for space {space!r} but device "
                                     f"{self.device!r}'s table prices space {self.space!r}")
            self._check_scope(model)
            self._accuracy = model
        return self._accuracy

    def _check_scope(self, model: AccuracyModel) -> None:
        """A predictor that prices only some widths or resolutions (an imported
        once-for-all one) must cover what this device's table lets the search pick."""
        width = getattr(model, "width_mult", None)
        widths = self.encoding.width_mults
        if isinstance(width, float) and widths != (width,):
            raise OfaSearchError(
                f"the accuracy predictor describes width-{width} subnets but device "
                f"{self.device!r}'s table prices width {', '.join(map(str, widths))}; import "
                f"a predictor for that width (`ofa-search import ofa-predictor FILE --width "
                f"{widths[0]}`)")
        known = getattr(model, "known_resolutions", None)
        if callable(known):
            missing = sorted(set(self.encoding.resolutions) - set(known()))
            if missing:
                raise OfaSearchError(
                    f"the accuracy predictor cannot price resolutions {missing} of device "
                    f"{self.device!r}'s table (it knows {list(known())})")

    def evaluator(self) -> CachedEvaluator:
        """A fresh cached evaluator over this context's predictors."""
        return CachedEvaluator(self.accuracy(), self.latency)

    def identity(self) -> dict[str, Any]:
        """What a front or study was computed with (to detect stale ones)."""
        return {"space": self.space, "device": self.device, "precision": self.precision,
                "latency_predictor": self.latency_name,
                "latency_identity": self.latency_identity,
                "accuracy_predictor": self.accuracy_name,
                "accuracy_identity": self.accuracy_identity, "checkpoint": self.checkpoint}


def load_context(workspace: Workspace, device: str, precision: str | None = None, *,
                 accuracy: AccuracyModel | None = None, accuracy_name: str | None = None,
                 latency_kind: str | None = None) -> DeviceContext:
    """Load the device's table and latency predictor and build its encoding.

    ``accuracy`` injects an accuracy model (benchmarks, tests); without it the workspace's
    predictor is loaded on first use. Raises ``UnknownDeviceError`` (listing the known
    devices) and :class:`OfaSearchError` for an unsupported precision.
    """
    from predictors.loading import load_latency_predictor

    precision = precision or DEFAULT_PRECISION
    table = find_table(device, workspace=workspace.root)
    latency, latency_name = load_latency_predictor(workspace, device, latency_kind)
    encoding = ArchEncoding.for_table(table.space, resolutions=table.resolutions,
                                      width_mult=table.width_mult, precision=precision)
    missing = [p for p in mode_precisions(precision) if p not in table.precisions]
    if missing:
        raise UnsupportedPrecisionError(
            f"device {device!r} has no {', '.join(missing)} units in its latency table "
            f"(it prices {', '.join(table.precisions)}); profile them with "
            f"`ofa-search profile --precision …`")
    if accuracy is not None:
        acc_name = accuracy_name or type(accuracy).__name__
        acc_identity: str | None = acc_name

        def loader() -> AccuracyModel:
            return accuracy
    else:
        path = workspace.accuracy_predictor
        acc_name = "workspace"
        acc_identity = file_identity(path) if path.is_file() else None

        def loader() -> AccuracyModel:
            return load_workspace_accuracy(workspace)
    ckpt = workspace.checkpoint
    checkpoint = None
    if ckpt.is_file():
        stat = ckpt.stat()
        checkpoint = {"path": str(ckpt), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return DeviceContext(workspace=workspace, device=device, precision=precision,
                         space=table.space, encoding=encoding, latency=latency,
                         latency_name=latency_name, latency_identity=state_identity(latency),
                         accuracy_name=acc_name, accuracy_identity=acc_identity,
                         checkpoint=checkpoint, _accuracy_loader=loader)
