"""Everything a search on one device needs, loaded once: the device's table and latency
predictor, the encoding it can price, and (lazily) the workspace's accuracy predictor."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ofa_search.errors import OfaSearchError, UnsupportedPrecisionError
from ofa_search.profiling.drift import LatencyScale, answer_modes, load_scale, scale_path
from ofa_search.profiling.lut import LatencyTable, find_table
from ofa_search.search.encoding import ArchEncoding, mode_precisions
from ofa_search.search.evaluator import AccuracyModel, CachedEvaluator, LatencyModel
from ofa_search.workspace import Workspace
from predictors.calibration import (
    DEFAULT_CONFIDENCE,
    CalibrationError,
    IntervalModel,
    check_confidence,
    load_interval_model,
)
from predictors.loading import load_accuracy_predictor, load_latency_predictor

DEFAULT_PRECISION = "fp32"


def file_identity(path: Path) -> str:
    """``sha256:<first 16 hex digits>`` of a file's bytes."""
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def state_identity(model: Any) -> str:
    """Identity of a predictor: its own (:meth:`predictors.base.Predictor.identity`), else
    a hash of its saved state when it has one."""
    identity = getattr(model, "identity", None)
    if callable(identity):
        return str(identity())
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
    table: LatencyTable | None = field(default=None, repr=False)
    intervals: IntervalModel | None = field(default=None, repr=False)
    _scale: tuple[int | None, LatencyScale | None] = field(default=(None, None), repr=False)

    def scale(self, modes: Sequence[str] | None = None) -> float:
        """The device's stored speed scale (``ofa-search check-device --rescale``; 1.0
        without one), reread when its file changes: the largest ratio of ``modes`` (drift
        modes, :func:`~ofa_search.profiling.lut.overhead_mode`; by default every mode an
        answer of this context can have), so that no answer is underpriced."""
        if self.table is None:
            return 1.0
        path = scale_path(self.workspace, self.device)
        try:
            mtime: int | None = path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime != self._scale[0]:
            stored = load_scale(self.workspace, self.table) if mtime is not None else None
            self._scale = (mtime, stored)
        stored = self._scale[1]
        if stored is None:
            return 1.0
        return stored.for_modes(answer_modes(mode_precisions(self.precision))
                                if modes is None else modes)

    def bound_factor(self, confidence: float | None) -> tuple[float | None, float, list[str]]:
        """``(confidence, factor, warnings)``: the upper bound of a prediction is
        ``point · factor`` at that confidence (the largest factor over the precision modes
        an answer of this context can have), never under 1: where the calibration finds
        that answers measure faster than predicted, the bound stays at the point estimate
        rather than spend that margin, so an answer's point estimate fits its budget too.
        ``confidence=None`` asks for
        :data:`~predictors.calibration.DEFAULT_CONFIDENCE` where the device is calibrated
        and otherwise answers by the point estimate (``(None, 1.0, [why])``); an explicit
        confidence without calibration is a :class:`CalibrationError`."""
        explicit = confidence is not None
        level = check_confidence(confidence) if confidence is not None else DEFAULT_CONFIDENCE
        # an answer's own mode (fp32 ONNX, int8 QDQ or binary package) is one of the
        # precisions its search mode allows per stage
        modes = mode_precisions(self.precision)
        try:
            if self.intervals is None:
                raise CalibrationError(self._uncalibrated())
            factor = max(self.answer_factor(mode, level) for mode in modes)
        except CalibrationError as exc:
            if explicit:
                raise
            return None, 1.0, [f"{exc}; this answer fits the budget by its point estimate "
                               "only"]
        return level, factor, []

    def answer_factor(self, arch_mode: str, confidence: float) -> float:
        """The bound's factor for an answer of precision mode ``arch_mode`` (by the answer
        scores where the device has them), at least 1 (see :meth:`bound_factor`)."""
        assert self.intervals is not None
        return max(1.0, self.intervals.factor(arch_mode, confidence, answers=True))

    def _uncalibrated(self) -> str:
        if self.table is not None and self.table.profile() is None:
            return (f"device {self.device!r} is an imported table: it cannot be measured from "
                    "this host, so its latency has no calibrated bound")
        return (f"device {self.device!r} has no calibration data for its {self.latency_name} "
                f"latency predictor; measure it with `ofa-search fit-predictors --device "
                f"{self.device} --skip-accuracy`")

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
    latency_identity = state_identity(latency)
    intervals = load_interval_model(workspace, table, latency_name, latency_identity)
    return DeviceContext(workspace=workspace, device=device, precision=precision,
                         space=table.space, encoding=encoding, latency=latency,
                         latency_name=latency_name, latency_identity=latency_identity,
                         accuracy_name=acc_name, accuracy_identity=acc_identity,
                         checkpoint=checkpoint, _accuracy_loader=loader, table=table,
                         intervals=intervals)
