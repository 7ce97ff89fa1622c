"""ONNX Runtime latency backend: one ``InferenceSession`` per loaded model.

On a GPU provider (CUDA, TensorRT) the inputs and outputs are bound on the device once per
loaded model (ONNX Runtime's IO binding), so a timed run is the graph on the device, without
the host-to-device copies of its inputs or the copies of its outputs back; each timed run
still ends when the device has finished (``run_with_iobinding`` synchronises the bound
outputs), as the PyTorch backend's CUDA timings do.
"""

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


# OrtValue device types of the providers whose inputs and outputs are bound on the device
_BINDING_DEVICES = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda"}


def binding_device(provider: str) -> str | None:
    """Where the IO binding of ``provider`` puts inputs and outputs (``None``: no binding,
    plain ``session.run`` on host arrays, as for the CPU provider)."""
    return _BINDING_DEVICES.get(provider)


class _OrtModel(LoadedModel):
    def __init__(self, session: Any, timing: TimingConfig, ort: Any,
                 device: str | None) -> None:
        self._session = session
        self._timing = timing
        self._ort = ort
        self._device = device
        self._bound_inputs: list[Any] = []
        self.input_names = tuple(i.name for i in session.get_inputs())

    def _binding(self, feeds: dict[str, np.ndarray]) -> Any:
        """The session's IO binding with ``feeds`` copied to the device once and the
        outputs left there (device 0, the provider's default)."""
        binding = self._session.io_binding()
        # kept with the model: an OrtValue on "cpu" wraps its numpy array without a copy
        self._bound_inputs = [self._ort.OrtValue.ortvalue_from_numpy(value, self._device, 0)
                              for value in feeds.values()]
        for name, value in zip(feeds, self._bound_inputs, strict=True):
            binding.bind_ortvalue_input(name, value)
        for output in self._session.get_outputs():
            binding.bind_output(output.name, self._device, 0)
        return binding

    def run(self, inputs: Inputs) -> list[np.ndarray]:
        feeds = check_inputs(self.input_names, inputs)
        if self._device is None:
            return [np.asarray(out) for out in self._session.run(None, feeds)]
        binding = self._binding(feeds)
        self._session.run_with_iobinding(binding)
        return [np.asarray(out) for out in binding.copy_outputs_to_cpu()]

    def measure(self, inputs: Inputs) -> TimingStats:
        feeds = check_inputs(self.input_names, inputs)
        session = self._session
        if self._device is None:
            def infer() -> object:
                return session.run(None, feeds)
        else:
            binding = self._binding(feeds)

            def infer() -> object:
                return session.run_with_iobinding(binding)

        return time_sampler(callable_sampler(infer), self._timing)

    def close(self) -> None:
        self._session = None
        self._bound_inputs = []


class OnnxRuntimeBackend(LatencyBackend):
    """ONNX Runtime with the profile's execution provider, threads and optimisation level.

    Sessions use ``intra_op_num_threads=profile.intra_op_threads``, one inter-op thread and
    sequential execution. Raises :class:`BackendUnavailableError` when ``onnxruntime`` is
    not installed or the execution provider is not available (listing those that are).
    Timings include the Python ``InferenceSession.run`` (or ``run_with_iobinding``) call,
    as an application sees it.

    Args:
        io_binding: bind inputs and outputs on the provider's device (module docstring);
            ``None`` (default): for the GPU providers only. ``True`` on the CPU provider
            binds host memory (how the binding path is tested without a GPU).
    """

    name = "onnxruntime"

    def __init__(self, profile: DeviceProfile, *, timing: TimingConfig | None = None,
                 io_binding: bool | None = None) -> None:
        super().__init__(profile, timing=timing)
        device = binding_device(profile.execution_provider)
        if io_binding is not None:
            device = (device or "cpu") if io_binding else None
        self.io_binding_device = device
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
        return _OrtModel(session, self.timing, self._ort, self.io_binding_device)
