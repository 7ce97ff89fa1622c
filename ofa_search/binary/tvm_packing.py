"""Sign packing in TVM: NCHW float32 activations → ``[N, H, W, words]`` ``uint64``.

The same result as :func:`ofa_search.binary.packing.pack_activations` (bit meaning and
pad bits documented there), without NumPy's transpose and ``packbits`` passes: each word
ORs the 64 sign bits of its channels, with the pixels of an image row in vector lanes.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ofa_search.binary._tvm import compile_for_host, import_tvm, row_tile, shared_buffer
from ofa_search.binary.packing import WORD_BITS, num_words


def _define(shape: tuple[int, int, int, int]) -> list[Any]:
    from tvm import te, tirx  # deferred: TVM is a heavy optional import (the tvm extra)

    n, c, h, w = shape
    words = num_words(c)
    x = te.placeholder(shape, "float32", name="x")
    bit = te.reduce_axis((0, min(WORD_BITS, c)), name="bit")

    def sign_bit(b: Any, i: Any, j: Any, k: Any) -> Any:
        channel = k * WORD_BITS + bit
        value = x[b, tirx.min(channel, c - 1), i, j]  # clamped: pad bits read a real channel
        one = tirx.const(1, "uint64") << bit.astype("uint64")
        return tirx.Select(tirx.all(channel < c, value < tirx.const(0.0, "float32")), one,
                           tirx.const(0, "uint64"))

    packed = te.compute((n, h, w, words), lambda b, i, j, k: te.sum(
        sign_bit(b, i, j, k), axis=bit), name="packed")
    return [x, packed]


@functools.cache
def _compiled(shape: tuple[int, int, int, int]) -> Any:
    tvm = import_tvm()
    from tvm import te  # deferred: TVM is a heavy optional import (the tvm extra)

    sch = tvm.s_tir.Schedule(te.create_prim_func(_define(shape)))
    block = sch.get_sblock("packed")
    b, i, j, k, bit = sch.get_loops(block)
    jo, ji = sch.split(j, [None, row_tile(shape[3], 16)])
    sch.reorder(b, i, jo, k, bit, ji)
    sch.vectorize(ji)
    sch.decompose_reduction(block, bit)
    return compile_for_host(sch.mod)


class TvmPacker:
    """Packs NCHW float32 batches of one shape; :meth:`__call__` returns a new array.

    Not thread-safe: the input buffer is reused between calls.
    """

    def __init__(self, shape: tuple[int, int, int, int]) -> None:
        if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape):
            raise ValueError(f"shape must be four positive integers [N, C, H, W], got {shape}")
        n, c, h, w = shape
        self.shape = shape
        self._func = _compiled(shape)
        self._x, x_tensor = shared_buffer(shape, "float32")
        self._out_shape = (n, h, w, num_words(c))
        self._args = [x_tensor]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.shape != self.shape:
            raise ValueError(f"this packer takes {self.shape}, got {x.shape}")
        np.copyto(self._x, x, casting="same_kind")
        out, out_tensor = shared_buffer(self._out_shape, "uint64")  # fresh: the caller owns it
        self._func(*self._args, out_tensor)
        return out


def tvm_pack_activations(x: np.ndarray) -> np.ndarray:
    """One-off :class:`TvmPacker` call (the compiled function is cached per shape)."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"activations must be [N, C, H, W], got shape {x.shape}")
    return TvmPacker(tuple(int(d) for d in x.shape))(x)  # type: ignore[arg-type]
