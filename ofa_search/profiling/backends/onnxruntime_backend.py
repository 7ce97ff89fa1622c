"""ONNX Runtime latency backend: one ``InferenceSession`` per loaded model."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from ofa_search.ort_options import exact_int8
from ofa_search.profiling.backends.base import (
    BackendUnavailableError,
    Inputs,
    LatencyBackend,
    LoadedModel,
    check_inputs,
    import_backend_package,
)
from ofa_search.profiling.device import DeviceProfile
from ofa_search.profiling.timing import TimingConfig, TimingStats, callable_sampler, time_sampler

_LEVELS = {
    "all": "ORT_ENABLE_ALL",
    "extended": "ORT_ENABLE_EXTENDED",
    "basic": "ORT_ENABLE_BASIC",
    "disabled": "ORT_DISABLE_ALL",
}


class _OrtModel(LoadedModel):
    def __init__(self, session: Any, timing: TimingConfig) -> None:
        self._session = session
        self._timing = timing
        self.input_names = tuple(i.name for i in session.get_inputs())

    def run(self, inputs: Inputs) -> list[np.ndarray]:
        feeds = check_inputs(self.input_names, inputs)
        return [np.asarray(out) for out in self._session.run(None, feeds)]

    def measure(self, inputs: Inputs) -> TimingStats:
        feeds = check_inputs(self.input_names, inputs)
        session = self._session

        def infer() -> object:
            return session.run(None, feeds)

        return time_sampler(callable_sampler(infer), self._timing)

    def close(self) -> None:
        self._session = None


class OnnxRuntimeBackend(LatencyBackend):
    """ONNX Runtime with the profile's execution provider, threads and optimisation level.

    Sessions use ``intra_op_num_threads=profile.intra_op_threads``, one inter-op thread and
    sequential execution. Raises :class:`BackendUnavailableError` when ``onnxruntime`` is
    not installed or the execution provider is not available (listing those that are).
    Timings include the Python ``InferenceSession.run`` call, as an application sees it.
    """

    name = "onnxruntime"

    def __init__(self, profile: DeviceProfile, *, timing: TimingConfig | None = None) -> None:
        super().__init__(profile, timing=timing)
        self._ort = import_backend_package("onnxruntime", backend=self.name, pip="onnxruntime")
        available = list(self._ort.get_available_providers())
        if profile.execution_provider not in available:
            raise BackendUnavailableError(
                f"execution provider {profile.execution_provider!r} of profile {profile.id!r} "
                f"is not available in this onnxruntime; available: {', '.join(available)}"
            )

    def versions(self) -> dict[str, str]:
        return {"onnxruntime": str(self._ort.__version__)}

    def session_options(self) -> Any:
        """The ``SessionOptions`` every session of this backend uses."""
        ort = self._ort
        options = exact_int8(ort.SessionOptions())
        options.intra_op_num_threads = self.profile.intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        level = _LEVELS[self.profile.graph_optimization_level]
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        return options

    def _load(self, model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> LoadedModel:
        session = self._ort.InferenceSession(
            model.SerializeToString(), sess_options=self.session_options(),
            providers=[self.profile.execution_provider],
        )
        return _OrtModel(session, self.timing)
