"""Binary convolution in Apache TVM (TE → TensorIR schedule → LLVM for this host).

The same arithmetic as :func:`ofa_search.binary.kernels.binary_conv2d` (its docstring has
the maths and the padding modes), with the same packed operands:

* 1×1, stride 1: a GEMM over packed words, ``out[m, o] = K − 2·Σ_k popcount(X[m, k] ^
  Wt[k, o])`` with ``m`` running over the ``N·H·W`` pixels;
* k×k: a direct convolution over ``(r, s, word)`` on an input padded in TE (the border
  packed as ±1; zero padding subtracts the exact per-position correction inside the kernel).

Schedule: rows (pixels) in register tiles of up to 8, output channels in vector lanes
(16 or 8 ``uint64``), the reduction around the tile, the outer loop parallel on request;
``decompose_reduction`` after ``vectorize`` (TOOLCHAIN.md). Accumulating in 64 bits and
narrowing once per tile is faster than 32-bit accumulators (no per-step narrowing). Each
step is ``vpxorq``+``vpopcntq``+``vpaddq`` per 8 words, which bounds the kernel near
5 words (320 binary MACs) per cycle with two 512-bit ports. Compiled for
:func:`ofa_search.profiling.device.default_llvm_target` (the host's ``mcpu``), so on
AVX-512 VPOPCNTDQ machines the inner loop runs on zmm registers.

Kernel weights are ``[k, k, words, O']`` (output channels innermost, ``O'`` padded to the
lane width); :class:`TvmBinaryConv2d` converts the packed ``[O, k, k, words]`` once.
Compiled functions are cached per shape in this process.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from ofa_search.binary._tvm import (
    compile_for_host,
    import_tvm,
    lanes_for,
    row_tile,
    shared_buffer,
)
from ofa_search.binary.kernels import (
    ConvGeometry,
    Padding,
    check_conv_operands,
    conv_geometry,
    zero_padding_correction,
)
from ofa_search.binary.packing import num_words, sign_word


@dataclass(frozen=True)
class ConvSpec:
    """Everything a compiled binary conv is specialised on (the cache key)."""

    batch: int
    geometry: ConvGeometry
    channels: int
    out_padded: int
    pad_value: int
    parallel: bool = False

    @property
    def words(self) -> int:
        return num_words(self.channels)

    @property
    def lanes(self) -> int:
        return lanes_for(self.out_padded)

    @property
    def is_gemm(self) -> bool:
        geo = self.geometry
        return geo.kernel == 1 and geo.stride == 1 and geo.pad == 0

    @property
    def zero_corrected(self) -> bool:
        return self.pad_value == 0 and self.geometry.pad > 0


def _define(spec: ConvSpec) -> tuple[list[Any], str, str]:
    """TE tensors ``[inputs..., output]`` and the names of the reduction and output blocks."""
    from tvm import te, tirx  # deferred: TVM is a heavy optional import (the tvm extra)

    geo, words, out = spec.geometry, spec.words, spec.out_padded
    k = geo.kernel
    total = spec.channels * k * k
    weights = te.placeholder((k, k, words, out), "uint64", name="weights")
    if spec.is_gemm:
        rows = spec.batch * geo.in_h * geo.in_w
        x = te.placeholder((rows, words), "uint64", name="x")
        c = te.reduce_axis((0, words), name="c")
        acc = te.compute((rows, out), lambda m, o: te.sum(
            tirx.popcount(x[m, c] ^ weights[0, 0, c, o]).astype("int64"), axis=c), name="acc")
        result = te.compute((rows, out), lambda m, o: (total - 2 * acc[m, o]).astype("int32"),
                            name="result")
        return [x, weights, result], "acc", "result"
    n, h, w = spec.batch, geo.in_h, geo.in_w
    x = te.placeholder((n, h, w, words), "uint64", name="x")
    fill = te.placeholder((words,), "uint64", name="fill")
    p = geo.pad
    xp = te.compute(
        (n, h + 2 * p, w + 2 * p, words),
        lambda b, y, z, q: tirx.if_then_else(
            tirx.all(y >= p, y < h + p, z >= p, z < w + p), x[b, y - p, z - p, q], fill[q]),
        name="padded")
    r, s, c = (te.reduce_axis((0, k), name="r"), te.reduce_axis((0, k), name="s"),
               te.reduce_axis((0, words), name="c"))
    st = geo.stride
    shape = (n, geo.out_h, geo.out_w, out)
    acc = te.compute(shape, lambda b, i, j, o: te.sum(
        tirx.popcount(xp[b, i * st + r, j * st + s, c] ^ weights[r, s, c, o]).astype("int64"),
        axis=[r, s, c]), name="acc")
    inputs = [x, weights, fill]
    if spec.zero_corrected:
        corr = te.placeholder((geo.out_h, geo.out_w, out), "int32", name="correction")
        inputs.append(corr)
        result = te.compute(shape, lambda b, i, j, o: (total - 2 * acc[b, i, j, o]).astype(
            "int32") - corr[i, j, o], name="result")
    else:
        result = te.compute(shape, lambda b, i, j, o: (total - 2 * acc[b, i, j, o]).astype(
            "int32"), name="result")
    return [*inputs, result], "acc", "result"


def _schedule(spec: ConvSpec, tensors: list[Any], acc_name: str, out_name: str) -> Any:
    tvm = import_tvm()
    from tvm import te  # deferred: TVM is a heavy optional import (the tvm extra)

    sch = tvm.s_tir.Schedule(te.create_prim_func(tensors))
    acc = sch.get_sblock(acc_name)
    lanes = spec.lanes
    if spec.is_gemm:
        m, o, c = sch.get_loops(acc)
        rows = spec.batch * spec.geometry.in_h * spec.geometry.in_w
        mo, mi = sch.split(m, [None, row_tile(rows)])
        oo, oi = sch.split(o, [None, lanes])
        sch.reorder(mo, oo, c, mi, oi)
        outer, first_reduce = mo, c
    else:
        b, i, j, o, r, s, c = sch.get_loops(acc)
        bi = sch.fuse(b, i)
        jo, ji = sch.split(j, [None, row_tile(spec.geometry.out_w)])
        oo, oi = sch.split(o, [None, lanes])
        sch.reorder(bi, jo, oo, r, s, c, ji, oi)
        outer, first_reduce = bi, r
        if spec.parallel:
            sch.parallel(sch.get_loops(sch.get_sblock("padded"))[0])
    if spec.parallel:
        sch.parallel(outer)
    sch.vectorize(oi)
    result = sch.get_sblock(out_name)
    sch.reverse_compute_at(result, oo)
    sch.vectorize(sch.get_loops(result)[-1])
    sch.decompose_reduction(acc, first_reduce)
    return sch.mod


@functools.cache
def _compiled(spec: ConvSpec) -> Any:
    import_tvm()
    tensors, acc_name, out_name = _define(spec)
    return compile_for_host(_schedule(spec, tensors, acc_name, out_name))


def compiled_source(spec: ConvSpec) -> str:
    """The assembly of the compiled kernel for ``spec`` (to check which instructions it uses)."""
    return str(_compiled(spec).mod.inspect_source("asm"))


class TvmBinaryConv2d:
    """One binary conv layer prepared for TVM: weights converted once, compiled per input
    shape (:meth:`__call__` takes ``[N, H, W, words]`` and returns int32 ``[N, Ho, Wo, O]``,
    equal to :func:`ofa_search.binary.kernels.binary_conv2d`).

    ``parallel``: split the outer loop over TVM's thread pool (with one thread, serial code
    is faster). Not thread-safe: the argument buffers of each input shape are reused.
    """

    def __init__(self, w_words: np.ndarray, channels: int, *, stride: int = 1,
                 padding: Padding = "same", pad_value: int = 0,
                 parallel: bool = False) -> None:
        tvm = import_tvm()
        w_words = np.asarray(w_words)
        words = num_words(channels)
        check_conv_operands(np.zeros((1, 1, 1, words), np.uint64), w_words, channels,
                            pad_value)
        self.channels, self.stride, self.padding, self.pad_value = (
            channels, stride, padding, pad_value)
        self.parallel = parallel
        self.out_channels, self.kernel = int(w_words.shape[0]), int(w_words.shape[1])
        conv_geometry(self.kernel, self.kernel, self.kernel, stride, padding)  # validate
        lanes = lanes_for(self.out_channels)
        self.out_padded = -(-self.out_channels // lanes) * lanes
        layout = np.zeros((self.kernel, self.kernel, words, self.out_padded), dtype=np.uint64)
        layout[..., :self.out_channels] = w_words.transpose(1, 2, 3, 0)
        self._w_words = w_words
        self._device = tvm.cpu()
        self._weights = tvm.runtime.tensor(layout, self._device)
        fill = sign_word(channels, -1) if pad_value == -1 else np.zeros(words, np.uint64)
        self._fill = tvm.runtime.tensor(fill, self._device)
        self._calls: dict[tuple[int, ...], _Call] = {}

    def spec(self, shape: tuple[int, ...]) -> ConvSpec:
        """The compile-time spec for packed inputs of ``shape`` ``[N, H, W, words]``."""
        n, h, w, _ = shape
        geo = conv_geometry(h, w, self.kernel, self.stride, self.padding)
        return ConvSpec(int(n), geo, self.channels, self.out_padded, self.pad_value,
                        self.parallel)

    def _call_for(self, shape: tuple[int, ...]) -> _Call:
        call = self._calls.get(shape)
        if call is None:
            call = _Call(self, self.spec(shape))
            self._calls[shape] = call
        return call

    def __call__(self, x_words: np.ndarray) -> np.ndarray:
        x_words = np.asarray(x_words)
        check_conv_operands(x_words, self._w_words, self.channels, self.pad_value)
        return self._call_for(tuple(int(d) for d in x_words.shape))(x_words)


class _Call:
    """A compiled kernel with its argument buffers, for one input shape of one layer."""

    def __init__(self, layer: TvmBinaryConv2d, spec: ConvSpec) -> None:
        tvm = import_tvm()
        self.spec, self.func = spec, _compiled(spec)
        geo, n = spec.geometry, spec.batch
        rows = n * geo.in_h * geo.in_w
        self.x, x_tensor = shared_buffer(
            (rows, spec.words) if spec.is_gemm else (n, geo.in_h, geo.in_w, spec.words),
            "uint64")
        self.padded_shape = (n, geo.out_h, geo.out_w, layer.out_padded)
        self.kernel_shape = (rows, layer.out_padded) if spec.is_gemm else self.padded_shape
        args: list[Any] = [x_tensor, layer._weights]
        if not spec.is_gemm:
            args.append(layer._fill)
        if spec.zero_corrected:
            corr = np.zeros((geo.out_h, geo.out_w, layer.out_padded), np.int32)
            corr[..., :layer.out_channels] = zero_padding_correction(
                layer._w_words, layer.channels, geo)
            args.append(tvm.runtime.tensor(corr, tvm.cpu()))
        self.args = args
        self.out_channels = layer.out_channels

    def __call__(self, x_words: np.ndarray) -> np.ndarray:
        np.copyto(self.x, x_words.reshape(self.x.shape))
        # a fresh output each call (no copy afterwards): the caller owns the result
        out, out_tensor = shared_buffer(self.kernel_shape, "int32")
        self.func(*self.args, out_tensor)
        out = out.reshape(self.padded_shape)
        if out.shape[-1] == self.out_channels:
            return out
        return np.ascontiguousarray(out[..., :self.out_channels])


def tvm_binary_conv2d(x_words: np.ndarray, w_words: np.ndarray, channels: int, *,
                      stride: int = 1, padding: Padding = "same", pad_value: int = 0,
                      parallel: bool = False) -> np.ndarray:
    """One-off TVM binary conv (same contract as
    :func:`ofa_search.binary.kernels.binary_conv2d`); compiled kernels are cached."""
    layer = TvmBinaryConv2d(w_words, channels, stride=stride, padding=padding,
                            pad_value=pad_value, parallel=parallel)
    return layer(x_words)
