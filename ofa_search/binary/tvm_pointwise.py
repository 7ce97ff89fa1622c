"""A whole binary 1×1 conv block as one TVM function, NCHW float32 in and out.

Three TE stages for :class:`~ofa_search.binary.layer.PackedPointwise`, all with pixels
(``p`` = ``h·W + w``, padded to the vector width) innermost, as NCHW has them:

1. ``packed[n, k, p]``: the sign bits of ``u_c·x[n, c, p] + v_c`` for the channels
   ``c`` of word ``k`` (the folded input BN; bit meaning and pad bits as in
   :mod:`ofa_search.binary.packing`), vectorised over pixels;
2. ``acc[n, o, p] = Σ_k popcount(packed[n, k, p] ^ W[o, k])``: the XNOR–popcount GEMM,
   output channels in register tiles of up to 8, pixels in ``uint64`` vector lanes;
3. ``y[n, o, p] = act(a_o · (C − 2·acc) + b_o + x[n, o mod C, p])``: folded BN, cyclic
   shortcut (left out for a layer without one) and activation, computed at the GEMM tile
   while it is in registers.

So a binary layer costs one call from Python, with no NumPy passes in between.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from ofa_search.binary._tvm import (
    compile_for_host,
    import_tvm,
    pixel_lanes,
    round_up,
    row_tile,
    shared_buffer,
)
from ofa_search.binary.layer import PackedPointwise
from ofa_search.binary.packing import WORD_BITS, num_words


@dataclass(frozen=True)
class PointwiseSpec:
    """What a compiled binary pointwise function is specialised on (the cache key)."""

    batch: int
    pixels: int
    in_channels: int
    out_channels: int
    act: str | None
    parallel: bool = False
    shortcut: bool = True

    @property
    def words(self) -> int:
        return num_words(self.in_channels)

    @property
    def lanes(self) -> int:
        return pixel_lanes(self.pixels)

    @property
    def padded_pixels(self) -> int:
        return round_up(self.pixels, self.lanes)


def _activation(v: Any, act: str | None) -> Any:
    from tvm import tirx  # deferred: TVM is a heavy optional import (the tvm extra)

    if act == "relu":
        return tirx.max(v, tirx.const(0.0, "float32"))
    if act == "hswish":
        six = tirx.const(6.0, "float32")
        clipped = tirx.min(tirx.max(v + tirx.const(3.0, "float32"),
                                    tirx.const(0.0, "float32")), six)
        return v * clipped / six
    return v


def _define(spec: PointwiseSpec) -> list[Any]:
    from tvm import te, tirx  # deferred: TVM is a heavy optional import (the tvm extra)

    n, pix, c, out, words = (spec.batch, spec.padded_pixels, spec.in_channels,
                             spec.out_channels, spec.words)
    x = te.placeholder((n, c, pix), "float32", name="x")
    in_scale = te.placeholder((c,), "float32", name="input_scale")
    in_shift = te.placeholder((c,), "float32", name="input_shift")
    weights = te.placeholder((out, words), "uint64", name="weights")
    scale = te.placeholder((out,), "float32", name="scale")
    bias = te.placeholder((out,), "float32", name="bias")
    bit = te.reduce_axis((0, min(WORD_BITS, c)), name="bit")

    def sign_bit(b: Any, k: Any, p: Any) -> Any:
        channel = k * WORD_BITS + bit
        real = tirx.min(channel, c - 1)  # clamped: pad bits read a real channel
        value = x[b, real, p] * in_scale[real] + in_shift[real]
        one = tirx.const(1, "uint64") << bit.astype("uint64")
        return tirx.Select(tirx.all(channel < c, value < tirx.const(0.0, "float32")), one,
                           tirx.const(0, "uint64"))

    packed = te.compute((n, words, pix), lambda b, k, p: te.sum(sign_bit(b, k, p), axis=bit),
                        name="packed")
    k = te.reduce_axis((0, words), name="k")
    acc = te.compute((n, out, pix), lambda b, o, p: te.sum(
        tirx.popcount(packed[b, k, p] ^ weights[o, k]).astype("int64"), axis=k), name="acc")

    def affine(b: Any, o: Any, p: Any) -> Any:
        value = scale[o] * (c - 2 * acc[b, o, p]).astype("float32") + bias[o]
        return value + x[b, tirx.floormod(o, c), p] if spec.shortcut else value

    y = te.compute((n, out, pix), lambda b, o, p: _activation(affine(b, o, p), spec.act),
                   name="y")
    return [x, in_scale, in_shift, weights, scale, bias, y]


def _schedule(spec: PointwiseSpec, tensors: list[Any]) -> Any:
    tvm = import_tvm()
    from tvm import te  # deferred: TVM is a heavy optional import (the tvm extra)

    sch = tvm.s_tir.Schedule(te.create_prim_func(tensors))
    lanes = spec.lanes
    packed = sch.get_sblock("packed")
    b, k, p, bit = sch.get_loops(packed)
    po, pi = sch.split(p, [None, lanes])
    sch.reorder(b, k, po, bit, pi)
    if spec.parallel:
        sch.parallel(sch.fuse(b, k, po))
    sch.vectorize(pi)
    sch.decompose_reduction(packed, bit)
    acc = sch.get_sblock("acc")
    b, o, p, kk = sch.get_loops(acc)
    oo, oi = sch.split(o, [None, row_tile(spec.out_channels)])
    po, pi = sch.split(p, [None, lanes])
    sch.reorder(b, oo, po, kk, oi, pi)
    if spec.parallel:
        sch.parallel(sch.fuse(b, oo))
    sch.vectorize(pi)
    y = sch.get_sblock("y")
    sch.reverse_compute_at(y, po)
    sch.vectorize(sch.get_loops(y)[-1])
    sch.decompose_reduction(acc, kk)
    return sch.mod


_Call = tuple[Any, np.ndarray, np.ndarray, list[Any]]
"""A compiled function, its aligned input and output buffers, and all its arguments."""


@functools.cache
def _compiled(spec: PointwiseSpec) -> Any:
    import_tvm()
    return compile_for_host(_schedule(spec, _define(spec)))


class TvmPointwise:
    """:class:`PackedPointwise` compiled with TVM: :meth:`__call__` maps float32
    ``[N, C, H, W]`` to ``[N, O, H, W]`` like :meth:`PackedPointwise.run`.

    ``parallel``: split the work over TVM's thread pool (see
    :func:`ofa_search.binary._tvm.set_threads`); with one thread, serial code is faster.
    Compiled per input shape (cached across layers of equal shape); not thread-safe (the
    argument buffers of each shape are reused between calls).
    """

    def __init__(self, layer: PackedPointwise, *, parallel: bool = False) -> None:
        tvm = import_tvm()
        self.layer = layer
        self.parallel = parallel
        weights = layer.weights.reshape(layer.out_channels, -1)
        device = tvm.cpu()
        self._constants = [tvm.runtime.tensor(np.ascontiguousarray(a), device)
                           for a in (layer.input_scale, layer.input_shift, weights,
                                     layer.scale, layer.bias)]
        self._calls: dict[tuple[int, ...], _Call] = {}

    def spec(self, shape: tuple[int, ...]) -> PointwiseSpec:
        """The compile-time spec for inputs of ``shape`` ``[N, C, H, W]``."""
        n, _, h, w = shape
        return PointwiseSpec(int(n), int(h * w), self.layer.in_channels,
                             self.layer.out_channels, self.layer.act, self.parallel,
                             self.layer.shortcut)

    def _call_for(self, shape: tuple[int, ...]) -> _Call:
        call = self._calls.get(shape)
        if call is None:
            spec = self.spec(shape)
            x, x_tensor = shared_buffer((spec.batch, spec.in_channels, spec.padded_pixels),
                                        "float32")
            x[...] = 0.0  # the pad pixels stay zero
            y, y_tensor = shared_buffer((spec.batch, spec.out_channels, spec.padded_pixels),
                                        "float32")
            call = (_compiled(spec), x, y, [x_tensor, *self._constants, y_tensor])
            self._calls[shape] = call
        return call

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = self.layer.check_input(x)
        n, c, h, w = x.shape
        func, x_buf, y_buf, args = self._call_for(x.shape)
        x_buf[..., :h * w] = x.reshape(n, c, h * w)
        func(*args)
        out = np.empty((n, y_buf.shape[1], h, w), dtype=np.float32)  # the caller's copy
        out.reshape(n, -1, h * w)[...] = y_buf[..., :h * w]
        return out
