"""Latency backends behind one interface, chosen by ``DeviceProfile.backend``.

Backend modules are imported on demand, so a missing optional package (``onnxruntime``,
``apache-tvm``) only matters to profiles that use it; ``torch`` runs the ONNX graph with
PyTorch on the CPU or a CUDA GPU.
"""

from __future__ import annotations

import importlib

from ofa_search.profiling.backends.base import (
    BackendUnavailableError,
    Inputs,
    LatencyBackend,
    LoadedModel,
    ModelLike,
    load_onnx,
)
from ofa_search.profiling.device import DeviceProfile
from ofa_search.profiling.timing import TimingConfig

_REGISTRY: dict[str, tuple[str, str]] = {
    "onnxruntime": ("ofa_search.profiling.backends.onnxruntime_backend", "OnnxRuntimeBackend"),
    "tvm": ("ofa_search.profiling.backends.tvm_backend", "TvmBackend"),
    "torch": ("ofa_search.profiling.backends.torch_backend", "TorchBackend"),
}

__all__ = [
    "BackendUnavailableError",
    "Inputs",
    "LatencyBackend",
    "LoadedModel",
    "ModelLike",
    "backend_class",
    "get_backend",
    "load_onnx",
]


def backend_class(name: str) -> type[LatencyBackend]:
    """The backend class registered as ``name`` (a ``DeviceProfile.backend`` value)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown latency backend {name!r}; known: {sorted(_REGISTRY)}")
    module, attr = _REGISTRY[name]
    cls: type[LatencyBackend] = getattr(importlib.import_module(module), attr)
    return cls


def get_backend(profile: DeviceProfile, *, timing: TimingConfig | None = None) -> LatencyBackend:
    """A ready backend for ``profile`` (raises :class:`BackendUnavailableError` if it can't)."""
    return backend_class(profile.backend)(profile, timing=timing)
