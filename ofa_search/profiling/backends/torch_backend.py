"""PyTorch latency backend: the exported ONNX graph run by torch ops, on the CPU or a GPU.

The model is the same ONNX graph the other backends run, executed by
:class:`~ofa_search.profiling.backends.onnx_torch.OnnxModule` (weights as buffers on the
profile's ``torch_device``, floating tensors in its ``torch_dtype``), always under
``torch.inference_mode()``.

* **CPU**: eager calls with ``torch.set_num_threads(profile.threads)`` (the previous count
  is restored afterwards), timed with :func:`time.perf_counter` by the adaptive loop of
  :func:`~ofa_search.profiling.timing.time_sampler`.
* **CUDA**: with ``cuda_graphs``, the forward is warmed up on a side stream and captured
  once into a ``torch.cuda.CUDAGraph`` reading static input buffers, when the model is
  loaded (never timed); measuring then times graph replays, otherwise eager calls. Either
  way the samples come from CUDA events (:func:`cuda_event_sampler`): each sample starts on
  an idle stream, so it is the latency of ``number`` back-to-back inferences as the GPU
  sees it, launch gaps included, host synchronisation excluded.

``run`` goes through the same path (graph replay or eager call, same buffers and dtype)
and returns float32 NumPy arrays.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import onnx
import torch

from ofa_search.profiling.backends.base import (
    BackendUnavailableError,
    Inputs,
    LatencyBackend,
    LoadedModel,
    check_inputs,
)
from ofa_search.profiling.backends.onnx_torch import DTYPES, OnnxModule
from ofa_search.profiling.device import DeviceProfile
from ofa_search.profiling.timing import (
    Sampler,
    TimingConfig,
    TimingStats,
    callable_sampler,
    time_sampler,
)

GRAPH_WARMUP = 3
"""Eager calls on a side stream before a CUDA graph is captured (cuDNN/cuBLAS set-up)."""

CUDA_MAX_PREPARED = 16
"""Models a CUDA profile holds prepared at once: each keeps its weights, static buffers
and (with CUDA graphs) a private memory pool on the GPU."""


def resolve_device(spec: str, profile_id: str = "") -> torch.device:
    """``spec`` (``cpu``, ``cuda``, ``cuda:N``) as a usable ``torch.device`` (``cuda`` →
    ``cuda:0``); a GPU that this torch cannot use is a :class:`BackendUnavailableError`."""
    device = torch.device(spec)
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise BackendUnavailableError(f"torch_device {spec!r} is not supported (cpu, cuda, "
                                      "cuda:N)")
    of = f" of profile {profile_id!r}" if profile_id else ""
    if not torch.cuda.is_available():
        built = f"with CUDA {torch.version.cuda}" if torch.version.cuda else "without CUDA"
        raise BackendUnavailableError(
            f"torch_device {spec!r}{of} is not usable: torch {torch.__version__} (built "
            f"{built}) sees no CUDA GPU here; use torch_device 'cpu' or run on a GPU host")
    index = 0 if device.index is None else device.index
    count = torch.cuda.device_count()
    if index >= count:
        raise BackendUnavailableError(f"torch_device {spec!r}{of} is not usable: this host "
                                      f"has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}")
    return torch.device("cuda", index)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` for the block; the previous count after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cuda_event_sampler(fn: Callable[[], object], device: torch.device) -> Sampler:
    """A :class:`~ofa_search.profiling.timing.Sampler` that times ``fn()`` on ``device``'s
    current stream with CUDA events.

    Each sample waits for the stream to go idle, records a start event, enqueues ``number``
    calls, records an end event and waits for it; the events' elapsed milliseconds (GPU
    clock) divided by ``number`` are returned as per-call seconds, as every sampler does.
    """

    def sample(number: int, repeat: int) -> list[float]:
        stream = torch.cuda.current_stream(device)
        out: list[float] = []
        for _ in range(repeat):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            stream.synchronize()
            start.record(stream)
            for _ in range(number):
                fn()
            end.record(stream)
            end.synchronize()
            out.append(start.elapsed_time(end) / 1e3 / number)
        return out

    return sample


def _to_numpy(value: torch.Tensor) -> np.ndarray:
    if value.is_floating_point():
        value = value.float()
    return np.array(value.cpu().numpy(), copy=True)


class _TorchModel(LoadedModel):
    """An :class:`OnnxModule` with static input buffers (and maybe a captured CUDA graph)."""

    def __init__(self, module: OnnxModule, device: torch.device, inputs: dict[str, np.ndarray],
                 *, threads: int, graphs: bool, timing: TimingConfig) -> None:
        self._module: OnnxModule | None = module
        self._device = device
        self._threads = threads
        self._timing = timing
        self.input_names = module.input_names
        self._shapes = {name: tuple(array.shape) for name, array in inputs.items()}
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_outputs: tuple[torch.Tensor, ...] = ()
        with self._context():
            # inputs live in the module's dtype on the device: the cast is not timed
            self._static = [module.cast_input(torch.from_numpy(array).to(device))
                            for array in inputs.values()]
            if graphs:
                self._capture(module)

    @property
    def is_cuda(self) -> bool:
        return self._device.type == "cuda"

    @contextlib.contextmanager
    def _context(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode())
            if self.is_cuda:
                stack.enter_context(torch.cuda.device(self._device))
            else:
                stack.enter_context(torch_threads(self._threads))
            yield

    def _capture(self, module: OnnxModule) -> None:
        current = torch.cuda.current_stream(self._device)
        side = torch.cuda.Stream(self._device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(GRAPH_WARMUP):
                module(*self._static)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = module(*self._static)
        torch.cuda.synchronize(self._device)
        self._graph, self._graph_outputs = graph, outputs

    def _forward(self) -> tuple[torch.Tensor, ...]:
        if self._graph is not None:
            self._graph.replay()
            return self._graph_outputs
        if self._module is None:
            raise RuntimeError("this torch model was closed")
        return self._module(*self._static)

    def _feed(self, inputs: Inputs) -> None:
        if self._module is None:
            raise RuntimeError("this torch model was closed")
        arrays = check_inputs(self.input_names, inputs)
        for (name, array), static in zip(arrays.items(), self._static, strict=True):
            if tuple(array.shape) != self._shapes[name]:
                raise ValueError(f"input {name!r} has shape {tuple(array.shape)}; this model "
                                 f"was prepared for {self._shapes[name]}")
            static.copy_(torch.from_numpy(array))

    def run(self, inputs: Inputs) -> list[np.ndarray]:
        with self._context():
            self._feed(inputs)
            return [_to_numpy(out) for out in self._forward()]

    def measure(self, inputs: Inputs) -> TimingStats:
        with self._context():
            self._feed(inputs)
            forward = self._forward
            sampler = (cuda_event_sampler(forward, self._device) if self.is_cuda
                       else callable_sampler(forward))
            return time_sampler(sampler, self._timing)

    def close(self) -> None:
        graph, self._graph, self._graph_outputs = self._graph, None, ()
        self._module, self._static = None, []
        if graph is not None:
            graph.reset()  # its private memory pool goes back to the caching allocator


class TorchBackend(LatencyBackend):
    """PyTorch on ``profile.torch_device`` in ``profile.torch_dtype`` (see module docstring).

    Raises :class:`BackendUnavailableError` when the device cannot be used here (``cuda``
    without a usable GPU, an index past the last GPU, bf16 on a GPU without it), and, when
    a model is loaded, for an ONNX op that :mod:`~ofa_search.profiling.backends.onnx_torch`
    does not run (int8 QDQ and binary graphs among them).
    """

    name = "torch"

    def __init__(self, profile: DeviceProfile, *, timing: TimingConfig | None = None) -> None:
        super().__init__(profile, timing=timing)
        self._device = resolve_device(profile.torch_device, profile.id)
        self._dtype = DTYPES[profile.torch_dtype]
        if self._device.type == "cuda" and self._dtype == torch.bfloat16:
            with torch.cuda.device(self._device):
                if not torch.cuda.is_bf16_supported():
                    raise BackendUnavailableError(
                        f"{torch.cuda.get_device_name(self._device)} "
                        f"({self._device}) has no bf16 support; use torch_dtype fp16 or fp32")

    @property
    def device(self) -> torch.device:
        """The resolved device (``cuda`` becomes ``cuda:0``)."""
        return self._device

    def versions(self) -> dict[str, str]:
        versions = {"torch": str(torch.__version__)}
        if self._device.type == "cuda":
            versions["cuda"] = str(torch.version.cuda)
            versions["cudnn"] = str(torch.backends.cudnn.version())
            versions["device"] = torch.cuda.get_device_name(self._device)
        return versions

    @property
    def max_prepared(self) -> int | None:
        return CUDA_MAX_PREPARED if self._device.type == "cuda" else None

    def _load(self, model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> LoadedModel:
        module = OnnxModule(model, device=self._device, dtype=self._dtype).eval()
        return _TorchModel(module, self._device, inputs, threads=self.profile.threads,
                           graphs=self.profile.cuda_graphs, timing=self.timing)
