"""TVM plumbing shared by the binary kernels: import, host target, threads, buffers.

TVM is optional: :func:`tvm_available` says whether it can be used, and everything else
raises :class:`TvmUnavailableError` (naming the pip packages) when it cannot.
"""

from __future__ import annotations

import functools
import importlib
import math
from typing import Any

import numpy as np

from ofa_search.cpuinfo import configure_tvm_pool
from ofa_search.errors import OfaSearchError
from ofa_search.profiling.device import default_llvm_target

_PIP = "'ofa-search[tvm]'"  # the extra (ofa_search/extras.py)
_ALIGNMENT = 64  # bytes; TVM refuses to wrap less aligned memory


class TvmUnavailableError(OfaSearchError, RuntimeError):
    """TVM cannot be imported (or lacks its LLVM backend) in this installation."""


@functools.cache
def tvm_available() -> bool:
    """Whether ``tvm`` with TE and the LLVM backend can be imported here."""
    try:
        tvm = importlib.import_module("tvm")
        importlib.import_module("tvm.te")
        return bool(tvm.runtime.enabled("llvm"))
    except Exception:
        return False


def import_tvm() -> Any:
    """The ``tvm`` module, or :class:`TvmUnavailableError`."""
    if not tvm_available():
        raise TvmUnavailableError(f"TVM is not available; install it with: pip install {_PIP} "
                                  "(or use the NumPy kernels)")
    return importlib.import_module("tvm")


@functools.cache
def host_target() -> Any:
    """This host's TVM target (``llvm`` with its ``mcpu``), the profiling backends' choice."""
    return import_tvm().target.Target(default_llvm_target(1))


def compile_for_host(mod: Any) -> Any:
    """``tvm.compile`` of a scheduled TensorIR module for :func:`host_target`."""
    return import_tvm().compile(mod, target=host_target())


def set_threads(threads: int) -> int:
    """Ask TVM's thread pool for ``threads`` threads; returns how many it runs.

    The pool's maximum is ``TVM_NUM_THREADS`` when the pool first starts in a process.
    TVM pins the calling thread to a core while it configures the pool; the caller's CPU
    affinity is restored afterwards, or every thread pool created later by this thread
    (ONNX Runtime's, PyTorch's) would inherit the single core.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads=}")
    configure, count = _pool_functions()
    configure_tvm_pool(configure, threads)
    return int(count())


@functools.cache
def _pool_functions() -> tuple[Any, Any]:
    tvm = import_tvm()
    return (tvm.get_global_func("runtime.config_threadpool"),
            tvm.get_global_func("runtime.NumThreads"))


def shared_buffer(shape: tuple[int, ...], dtype: str) -> tuple[np.ndarray, Any]:
    """A 64-byte aligned NumPy array and a TVM tensor on the same memory (no copies).

    Keep the NumPy array alive as long as the tensor is used.
    """
    item = np.dtype(dtype)
    size = math.prod(shape) * item.itemsize
    raw = np.empty(size + _ALIGNMENT, dtype=np.uint8)
    offset = (-raw.__array_interface__["data"][0]) % _ALIGNMENT
    array = raw[offset:offset + size].view(item).reshape(shape)
    return array, _from_dlpack()(array)


@functools.cache
def _from_dlpack() -> Any:
    return import_tvm().runtime.from_dlpack


def row_tile(rows: int, limit: int = 8) -> int:
    """The largest divisor of ``rows`` up to ``limit`` (a register tile of output rows)."""
    return next(t for t in range(min(limit, rows), 0, -1) if rows % t == 0)


def pixel_lanes(pixels: int) -> int:
    """Pixels per vector: 16 ``uint64`` (two zmm registers), 8 for small images."""
    return 16 if pixels >= 128 else 8


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple``."""
    return -(-n // multiple) * multiple


def lanes_for(channels: int) -> int:
    """Vector lanes (``uint64``) over output channels: 16 when they divide, else 8."""
    return 16 if channels % 16 == 0 else 8
