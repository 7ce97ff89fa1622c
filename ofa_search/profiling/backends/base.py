"""The latency backend interface: run an ONNX model on one device and time it.

Contract for implementations (see :class:`LatencyBackend`):

* ``run(model, inputs)`` returns the model's outputs, in the ONNX graph's output order, as
  NumPy arrays, computed exactly as ``measure`` times them.
* ``measure(model, inputs)`` returns per-inference :class:`TimingStats` in milliseconds,
  after warm-up, measured under the backend's :class:`DeviceProfile`.
* Compilation and session set-up happen in :meth:`LatencyBackend.load` and are never
  timed; the most recently loaded model is cached, so ``run`` then ``measure`` of the same
  model and input signature prepare it once.
* A backend object is not thread-safe: use one per thread. ``close()`` releases what it
  holds (sessions, remote connections); backends are context managers.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from types import ModuleType, TracebackType
from typing import ClassVar, Self

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from ofa_search.errors import FileFormatError, OfaSearchError
from ofa_search.profiling.device import DeviceProfile
from ofa_search.profiling.timing import TimingConfig, TimingStats

ModelLike = onnx.ModelProto | bytes | str | os.PathLike[str]
"""An ONNX model: a ``ModelProto``, its serialised bytes, or a path to a ``.onnx`` file."""

Inputs = Mapping[str, np.ndarray]
"""Model inputs by ONNX graph input name."""


class BackendUnavailableError(OfaSearchError, RuntimeError):
    """A backend (or one of its providers or devices) cannot be used on this installation."""


def import_backend_package(module: str, *, backend: str, pip: str) -> ModuleType:
    """Import ``module`` or raise :class:`BackendUnavailableError` naming the pip package."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the {backend!r} latency backend needs the Python package {module!r}, which "
            f"cannot be imported ({exc}); install it with: pip install {pip}"
        ) from exc


def load_onnx(model: ModelLike) -> onnx.ModelProto:
    """``model`` as a ``ModelProto``; a corrupt file or blob raises :class:`FileFormatError`."""
    if isinstance(model, onnx.ModelProto):
        return model
    try:
        if isinstance(model, bytes):
            return onnx.load_model_from_string(model)
        return onnx.load(os.fspath(model))
    except DecodeError as exc:
        where = "bytes" if isinstance(model, bytes) else repr(os.fspath(model))
        raise FileFormatError(f"not an ONNX model: {where} ({exc})") from exc


def graph_input_names(model: onnx.ModelProto) -> tuple[str, ...]:
    """Graph inputs that are not initializers, in graph order."""
    initializers = {init.name for init in model.graph.initializer}
    return tuple(i.name for i in model.graph.input if i.name not in initializers)


def check_inputs(expected: Sequence[str], inputs: Inputs) -> dict[str, np.ndarray]:
    """``inputs`` as contiguous arrays in ``expected`` order; a name mismatch is a ValueError."""
    missing = [name for name in expected if name not in inputs]
    unknown = sorted(set(inputs) - set(expected))
    if missing or unknown:
        raise ValueError(f"model inputs are {list(expected)}; missing {missing}, "
                         f"unknown {unknown}")
    return {name: np.ascontiguousarray(inputs[name]) for name in expected}


def signature(model: onnx.ModelProto, inputs: Inputs) -> str:
    """A digest of the model bytes and the input names, shapes and dtypes (the cache key)."""
    digest = hashlib.sha256(model.SerializeToString(deterministic=True))
    for name in sorted(inputs):
        array = np.asarray(inputs[name])
        digest.update(f"|{name}:{array.shape}:{array.dtype.str}".encode())
    return digest.hexdigest()


class LoadedModel(ABC):
    """A model prepared (compiled, session created) for one input signature."""

    input_names: tuple[str, ...]

    @abstractmethod
    def run(self, inputs: Inputs) -> list[np.ndarray]:
        """One inference; outputs in graph order."""

    @abstractmethod
    def measure(self, inputs: Inputs) -> TimingStats:
        """Adaptive timing of inference with these inputs."""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release sessions or remote handles."""


class LatencyBackend(ABC):
    """Runs and times ONNX models under one :class:`DeviceProfile` (see module docstring).

    Subclasses set :attr:`name` (the profile's ``backend`` value) and implement
    :meth:`versions` and :meth:`_load`.
    """

    name: ClassVar[str]

    def __init__(self, profile: DeviceProfile, *, timing: TimingConfig | None = None) -> None:
        if profile.backend != self.name:
            raise ValueError(f"{type(self).__name__} needs a profile with backend="
                             f"{self.name!r}, got {profile.backend!r} (profile {profile.id!r})")
        self.profile = profile
        self.timing = timing or TimingConfig()
        self._cached: tuple[str, LoadedModel] | None = None

    @abstractmethod
    def versions(self) -> dict[str, str]:
        """Versions of the packages (and compilers) that shape this backend's timings."""

    @abstractmethod
    def _load(self, model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> LoadedModel:
        """Prepare ``model`` for inputs shaped like ``inputs`` (already name-checked)."""

    def load(self, onnx_model: ModelLike, inputs: Inputs) -> LoadedModel:
        """Prepare a model once for the shapes and dtypes of ``inputs`` (cached: last one)."""
        model = load_onnx(onnx_model)
        checked = check_inputs(graph_input_names(model), inputs)
        key = signature(model, checked)
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        self._release()
        loaded = self._load(model, checked)
        self._cached = (key, loaded)
        return loaded

    def prepare(self, onnx_model: ModelLike, inputs: Inputs) -> LoadedModel:
        """Like :meth:`load`, but not cached: the caller owns the model and closes it.
        Several models can be prepared at once (to time them in interleaved rounds), up to
        :attr:`max_prepared` when that is set."""
        model = load_onnx(onnx_model)
        return self._load(model, check_inputs(graph_input_names(model), inputs))

    @property
    def max_prepared(self) -> int | None:
        """How many prepared models this backend can hold at once (None: no limit)."""
        return None

    def run(self, onnx_model: ModelLike, inputs: Inputs) -> list[np.ndarray]:
        """One inference of ``onnx_model`` on ``inputs``; outputs in graph order."""
        return self.load(onnx_model, inputs).run(inputs)

    def measure(self, onnx_model: ModelLike, inputs: Inputs) -> TimingStats:
        """Per-inference latency of ``onnx_model`` on ``inputs`` (set-up is not timed)."""
        return self.load(onnx_model, inputs).measure(inputs)

    def _release(self) -> None:
        if self._cached is not None:
            cached, self._cached = self._cached[1], None
            cached.close()

    def close(self) -> None:
        """Release the cached model and anything it holds."""
        self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

