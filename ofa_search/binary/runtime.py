"""Run a binary package: ONNX Runtime for the full-precision segments, packed XNOR–popcount
kernels for the binary layers (TVM when it is installed, else NumPy).

With TVM at one thread, each whole binary MBConv block (expand, depthwise [+ SE], project
[+ residual]) runs as one fused TVM function (:mod:`ofa_search.binary.tvm_block`), built at
load time from the stored steps; blocks that do not match the pattern run step by step.

>>> package = BinaryPackage.load("model.ofab")          # doctest: +SKIP
>>> logits = package.run(x)  # x: float32 [N, C, H, W]  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ofa_search.binary._tvm import TvmUnavailableError, set_threads, tvm_available
from ofa_search.binary.archive import program_from_bytes
from ofa_search.binary.block import BlockPlan, find_blocks
from ofa_search.binary.layer import PackedPointwise
from ofa_search.binary.program import INPUT, OUTPUT, AddStep, BinaryProgram, BinaryStep
from ofa_search.errors import FileFormatError
from ofa_search.ort_options import exact_int8

Backend = Literal["auto", "tvm", "numpy"]
BACKENDS: tuple[str, ...] = ("auto", "tvm", "numpy")
Layer = Callable[[np.ndarray], np.ndarray]


def resolve_backend(backend: str) -> str:
    """``auto`` → ``tvm`` where TVM is available, else ``numpy``; ``tvm`` without TVM raises
    :class:`~ofa_search.binary._tvm.TvmUnavailableError`."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return "tvm" if tvm_available() else "numpy"
    if backend == "tvm" and not tvm_available():
        raise TvmUnavailableError("backend='tvm' but TVM is not available; use 'numpy' or "
                                  "'auto'")
    return backend


def _session(model: bytes, threads: int, index: int) -> Any:
    import onnxruntime as ort  # deferred: ONNX Runtime is a heavy import

    options = exact_int8(ort.SessionOptions())
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise FileFormatError(f"ONNX segment {index} cannot be loaded: {exc}") from None


def _binary_layer(layer: PackedPointwise, backend: str, threads: int) -> Layer:
    if backend == "tvm":
        # deferred: the TVM kernels (~15 ms at CLI start) only when TVM runs the package
        from ofa_search.binary.tvm_pointwise import TvmPointwise

        return TvmPointwise(layer, parallel=threads > 1)
    return layer.run


def _fused_block(plan: BlockPlan) -> Layer:
    # deferred: the TVM kernels (~15 ms at CLI start) only when TVM runs the package
    from ofa_search.binary.tvm_block import TvmBlock

    return TvmBlock(plan)


class BinaryPackage:
    """A loaded binary package, ready to run (see the module docstring).

    Args:
        program: what to run.
        backend: for the binary layers: ``tvm``, ``numpy`` or ``auto``.
        threads: intra-op threads of ONNX Runtime and of TVM's pool.
        fuse: run whole binary blocks as one fused TVM function (serial code); default:
            with the ``tvm`` backend at one thread. Ignored with ``numpy``.

    Not thread-safe: use one object per thread.
    """

    def __init__(self, program: BinaryProgram, *, backend: Backend = "auto",
                 threads: int = 1, fuse: bool | None = None) -> None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads=}")
        self.program = program
        self.threads = threads
        self.backend = resolve_backend(backend)
        self._sessions = [_session(m, threads, i) for i, m in enumerate(program.segments)]
        self._input_names = [s.get_inputs()[0].name for s in self._sessions]
        self._layers = [_binary_layer(layer, self.backend, threads) for layer in program.layers]
        if fuse is None:
            fuse = threads == 1
        plans = find_blocks(program) if fuse and self.backend == "tvm" else []
        self._blocks = {plan.first_step: (plan, _fused_block(plan)) for plan in plans}

    @property
    def fused_blocks(self) -> int:
        """How many binary blocks run as one fused function."""
        return len(self._blocks)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, backend: Backend = "auto",
             threads: int = 1, fuse: bool | None = None) -> BinaryPackage:
        """Read a package file (raises :class:`FileFormatError` on a bad one)."""
        file = Path(path)
        return cls(program_from_bytes(file.read_bytes(), str(file)), backend=backend,
                   threads=threads, fuse=fuse)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's shape ``(C, H, W)``."""
        return self.program.input_shape

    @property
    def arch(self) -> str | None:
        return self.program.arch

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits (the network's output) for float32 ``x`` of shape ``[N, C, H, W]``."""
        x = np.asarray(x)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"input must be [N, {', '.join(map(str, self.input_shape))}], "
                             f"got {x.shape}")
        self._set_threads()
        values: dict[str, np.ndarray] = {INPUT: np.ascontiguousarray(x, dtype=np.float32)}
        for first, last in self.pieces():
            values[self.program.steps[last].output] = self._run_piece(first, values)
        return values[OUTPUT]

    def pieces(self) -> list[tuple[int, int]]:
        """The ``(first, last)`` step indices of each call :meth:`run` makes, in order: a
        fused block (several steps) or a single step."""
        pieces, index = [], 0
        while index < len(self.program.steps):
            fused = self._blocks.get(index)
            last = fused[0].last_step if fused is not None else index
            pieces.append((index, last))
            index = last + 1
        return pieces

    def fused_plan(self, first: int) -> BlockPlan | None:
        """The fused block that the piece starting at step ``first`` runs, if it is one."""
        fused = self._blocks.get(first)
        return None if fused is None else fused[0]

    def run_piece(self, first: int, values: Mapping[str, np.ndarray]) -> np.ndarray:
        """The output of the piece (see :meth:`pieces`) that starts at step ``first``,
        reading its inputs by name from ``values`` (float32 arrays)."""
        self._set_threads()
        return self._run_piece(first, values)

    def _set_threads(self) -> None:
        if self.backend == "tvm" and self.program.layers:
            set_threads(self.threads)

    def _run_piece(self, first: int, values: Mapping[str, np.ndarray]) -> np.ndarray:
        fused = self._blocks.get(first)
        if fused is not None:
            plan, block = fused
            return block(values[plan.input])
        step = self.program.steps[first]
        if isinstance(step, AddStep):
            return values[step.left] + values[step.right]
        if isinstance(step, BinaryStep):
            return self._layers[step.layer](values[step.input])
        session = self._sessions[step.segment]
        (out,) = session.run(None, {self._input_names[step.segment]: values[step.input]})
        return out

    def storage(self) -> dict[str, int | float]:
        """Bytes of the binary weights as stored (one bit each) and as fp32, and their ratio."""
        bits = self.program.binary_weight_bits()
        packed = sum(-(-layer.out_channels * layer.in_channels // 8)
                     for layer in self.program.layers)
        fp32 = 4 * bits
        return {"binary_weights": bits, "packed_bytes": packed, "fp32_bytes": fp32,
                "ratio": fp32 / packed if packed else float("nan")}
