"""A whole binary MBConv block as ONE TVM function, NCHW float32 in and out.

The block (see :mod:`ofa_search.binary.block`): binary expand → depthwise k×k (+ BN + act)
→ optional squeeze-excite → binary project [+ identity residual]. One call from Python
instead of three kernels and an add: at these sizes (a few thousand values) the per-call
overhead, not the arithmetic, is what a block costs. Stages, all in one TensorIR function:

1. ``pack1[n, k, p]``: sign bits of the expand's thresholded input (``u·x + v``), words
   over input channels, vectorised over pixels (NCHW input); ``xt``: the input NHWC, for
   the expand's cyclic shortcut;
2. ``acc1[n, p, m]``: XNOR–popcount GEMM, vectorised over mid channels (``vpopcntq``),
   computed one pixel at a time where that pixel is expanded, so its accumulators never
   leave registers; ``e[n, hp, wp, m] = act(a·(C − 2·acc1) + b + xt[n, p, m mod C])``,
   NHWC with the depthwise conv's zero border (one scalar condition per pixel), vectorised
   over ``m mod C`` where ``C`` divides ``M`` (contiguous shortcut reads);
3. ``dws``/``d``: the depthwise conv (BN folded) and ``act``, a row of up to 7 output pixels
   × one channel vector accumulated in registers, so the stride costs nothing;
4. squeeze-excite (when present): channel means, two small GEMVs (each streaming its
   weights row by row), hard sigmoid; the gate is applied where the gated values are read;
5. ``pack2[n, p, k]``: the project's sign words per pixel, a reduction over contiguous NHWC
   channels (LLVM vectorises it), whole words apart from the last, partial one
   (``pack2_tail``), so no read needs a bound check; ``t[n, o, p]``: the first
   ``min(O, M)`` gated channels in NCHW, all the project's cyclic shortcut reads;
6. ``acc2``/``y``: the project GEMM vectorised over pixels, with folded BN, the cyclic
   shortcut and the block's residual, written NCHW.

A conv packed without its cyclic shortcut (``PackedPointwise.shortcut``) leaves its term
out: no ``xt`` for the expand, no ``t`` for the project.

:func:`stage_program` compiles the block up to each stage, to time what each adds.

Intermediate tensors live in the function's workspace. Pixel axes of the NCHW buffers are
padded to whole vectors (16 or 8 lanes); the depthwise conv computes whole extra output
rows over the zero padding so that the NCHW copy reads whole vectors; pad pixels are
never copied out. Channel vectors are as wide as the largest divisor up to 16 (no tail).
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
from ofa_search.binary.block import BlockPlan
from ofa_search.binary.packing import WORD_BITS, num_words


def _lanes(channels: int, limit: int = 16) -> int:
    """The largest divisor of ``channels`` up to ``limit`` (vector lanes without a tail)."""
    return row_tile(channels, limit)


@dataclass(frozen=True)
class BlockSpec:
    """What a compiled block is specialised on (the cache key)."""

    batch: int
    in_channels: int
    height: int
    width: int
    mid_channels: int
    out_channels: int
    kernel: int
    stride: int
    expand_act: str
    dw_act: str
    se_channels: int
    residual: bool
    expand_shortcut: bool = True
    project_shortcut: bool = True

    @property
    def out_height(self) -> int:
        return -(-self.height // self.stride)

    @property
    def out_width(self) -> int:
        return -(-self.width // self.stride)

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @property
    def out_pixels(self) -> int:
        return self.out_height * self.out_width

    @property
    def in_lanes(self) -> int:
        return pixel_lanes(self.pixels)

    @property
    def out_lanes(self) -> int:
        return pixel_lanes(self.out_pixels)

    @property
    def padded_pixels(self) -> int:
        return round_up(self.pixels, self.in_lanes)

    @property
    def padded_out_pixels(self) -> int:
        return round_up(self.out_pixels, self.out_lanes)

    @property
    def dw_rows(self) -> int:
        """Output rows the depthwise conv computes: enough to cover the padded pixels (the
        extra rows read zero padding and are never copied out)."""
        return -(-self.padded_out_pixels // self.out_width)


def _activation(v: Any, act: str | None) -> Any:
    """relu, or hswish as ``v·clip(v + 3, 0, 6)·(1/6)`` (a multiply: a vector divide costs
    as much as the rest of the epilogue)."""
    from tvm import tirx  # deferred: TVM is a heavy optional import (the tvm extra)

    f = "float32"
    if act == "relu":
        return tirx.max(v, tirx.const(0.0, f))
    if act == "hswish":
        clipped = tirx.min(tirx.max(v + tirx.const(3.0, f), tirx.const(0.0, f)),
                           tirx.const(6.0, f))
        return v * clipped * tirx.const(1.0 / 6.0, f)
    return v


def _hsigmoid(v: Any) -> Any:
    from tvm import tirx  # deferred: TVM is a heavy optional import (the tvm extra)

    f = "float32"
    return tirx.min(tirx.max(v * tirx.const(1.0 / 6.0, f) + tirx.const(0.5, f),
                             tirx.const(0.0, f)), tirx.const(1.0, f))


def _pack(name: str, source: Any, scale: Any, shift: Any, n: int, channels: int,
          pixels: int) -> Any:
    """Sign words ``[n, words, pixels]`` of ``scale·source[n, c, p] + shift`` (NCHW)."""
    from tvm import te, tirx  # deferred: TVM is a heavy optional import (the tvm extra)

    bit = te.reduce_axis((0, min(WORD_BITS, channels)), name=f"{name}_bit")

    def sign_bit(b: Any, k: Any, p: Any) -> Any:
        channel = k * WORD_BITS + bit
        real = tirx.min(channel, channels - 1)  # clamped: pad bits read a real channel
        value = source[b, real, p] * scale[real] + shift[real]
        one = tirx.const(1, "uint64") << bit.astype("uint64")
        return tirx.Select(tirx.all(channel < channels, value < tirx.const(0.0, "float32")),
                           one, tirx.const(0, "uint64"))

    return te.compute((n, num_words(channels), pixels),
                      lambda b, k, p: te.sum(sign_bit(b, k, p), axis=bit), name=name)


def _define(spec: BlockSpec) -> list[Any]:
    from tvm import te, tirx  # deferred: TVM is a heavy optional import (the tvm extra)

    f = "float32"
    n, c, mid, out = spec.batch, spec.in_channels, spec.mid_channels, spec.out_channels
    w_in, k, s, pad = spec.width, spec.kernel, spec.stride, spec.kernel // 2
    wo_n = spec.out_width
    x = te.placeholder((n, c, spec.padded_pixels), f, name="x")
    u1 = te.placeholder((c,), f, name="u1")
    v1 = te.placeholder((c,), f, name="v1")
    w1 = te.placeholder((num_words(c), mid), "uint64", name="w1")  # [words, M]
    a1 = te.placeholder((mid,), f, name="a1")
    b1 = te.placeholder((mid,), f, name="b1")
    wdw = te.placeholder((k, k, mid), f, name="wdw")
    bdw = te.placeholder((mid,), f, name="bdw")
    u2 = te.placeholder((mid,), f, name="u2")
    v2 = te.placeholder((mid,), f, name="v2")
    w2 = te.placeholder((out, num_words(mid)), "uint64", name="w2")
    a2 = te.placeholder((out,), f, name="a2")
    b2 = te.placeholder((out,), f, name="b2")
    inputs = [x, u1, v1, w1, a1, b1, wdw, bdw]

    pack1 = _pack("pack1", x, u1, v1, n, c, spec.padded_pixels)
    # the input NHWC: the expand's cyclic shortcut reads channels m mod C of one pixel,
    # which in NCHW would be a gather over C cache lines per vector
    xt = (te.compute((n, spec.pixels, c), lambda b, p, ch: x[b, ch, p], name="xt")
          if spec.expand_shortcut else None)
    kw1 = te.reduce_axis((0, num_words(c)), name="kw1")
    acc1 = te.compute((n, spec.pixels, mid), lambda b, p, m: te.sum(
        tirx.popcount(pack1[b, kw1, p] ^ w1[kw1, m]).astype("int32"), axis=kw1), name="acc1")
    hp_n, wp_n = max(spec.height + 2 * pad, (spec.dw_rows - 1) * s + k), w_in + 2 * pad

    def expanded(b: Any, hp: Any, wp: Any, m: Any) -> Any:
        h, w = hp - pad, wp - pad
        inside = tirx.all(h >= 0, h < spec.height, w >= 0, w < w_in)
        p = h * w_in + w
        value = a1[m] * (c - 2 * acc1[b, p, m]).astype(f) + b1[m]
        if xt is not None:
            value = value + xt[b, p, tirx.floormod(m, c)]
        value = _activation(value, spec.expand_act)
        return tirx.if_then_else(inside, value, tirx.const(0.0, f))

    e = te.compute((n, hp_n, wp_n, mid), expanded, name="e")  # zero-padded, NHWC
    ri = te.reduce_axis((0, k), name="ri")
    rj = te.reduce_axis((0, k), name="rj")
    # output pixels flattened (p = ho·Wo + wo); the schedule splits them back
    rows = spec.dw_rows * wo_n
    dws = te.compute((n, rows, mid), lambda b, p, m: te.sum(
        e[b, tirx.floordiv(p, wo_n) * s + ri, tirx.floormod(p, wo_n) * s + rj, m]
        * wdw[ri, rj, m], axis=[ri, rj]), name="dws")
    d = te.compute((n, rows, mid),
                   lambda b, p, m: _activation(dws[b, p, m] + bdw[m], spec.dw_act), name="d")
    opix = spec.padded_out_pixels

    if spec.se_channels:
        q_n = spec.se_channels
        wr = te.placeholder((mid, q_n), f, name="se_reduce")  # [M, Q]
        br = te.placeholder((q_n,), f, name="se_reduce_bias")
        we = te.placeholder((q_n, mid), f, name="se_expand")  # [Q, M]
        be = te.placeholder((mid,), f, name="se_expand_bias")
        inputs += [wr, br, we, be]
        rp = te.reduce_axis((0, spec.out_pixels), name="rp")
        total = te.compute((n, mid), lambda b, m: te.sum(d[b, rp, m], axis=rp),
                           name="se_sum")
        rm = te.reduce_axis((0, mid), name="rm")
        inv = 1.0 / spec.out_pixels
        red = te.compute((n, q_n), lambda b, q: te.sum(
            total[b, rm] * tirx.const(inv, f) * wr[rm, q], axis=rm), name="se_red")
        rq = te.reduce_axis((0, q_n), name="rq")
        gate_sum = te.compute((n, mid), lambda b, m: te.sum(
            tirx.max(red[b, rq] + br[rq], tirx.const(0.0, f)) * we[rq, m], axis=rq),
            name="se_gate_sum")
        gate = te.compute((n, mid), lambda b, m: _hsigmoid(gate_sum[b, m] + be[m]),
                          name="se_gate")

        def gated(b: Any, m: Any, p: Any) -> Any:
            return d[b, p, m] * gate[b, m]
    else:
        def gated(b: Any, m: Any, p: Any) -> Any:
            return d[b, p, m]

    # the project's shortcut reads channels o mod M < min(O, M) only: just those go NCHW
    t = (te.compute((n, min(out, mid), opix), gated, name="t") if spec.project_shortcut
         else None)
    inputs += [u2, v2, w2, a2, b2]
    full, tail = divmod(mid, WORD_BITS)

    def sign_bits(name: str, bits: int) -> tuple[Any, Any]:
        """A reduce axis of ``bits`` bits and ``sign_bit(b, p, channel)``, that bit of a
        word: every channel read exists, so the reads are contiguous with no bound check
        (a clamped index for a partial last word made the whole reduction several times
        slower)."""
        bit = te.reduce_axis((0, bits), name=f"{name}_bit")

        def sign_bit(b: Any, p: Any, channel: Any) -> Any:
            value = gated(b, channel, p) * u2[channel] + v2[channel]
            one = tirx.const(1, "uint64") << bit.astype("uint64")
            return tirx.Select(value < tirx.const(0.0, f), one, tirx.const(0, "uint64"))

        return bit, sign_bit

    # packed per pixel from the NHWC output (a reduction over contiguous channels): the
    # whole words, then the last, partial one (its missing bits 0, as the weights expect)
    count: list[Any] = []
    if full:
        bit2, sign_bit2 = sign_bits("pack2", WORD_BITS)
        pack2 = te.compute((n, opix, full), lambda b, p, kw: te.sum(
            sign_bit2(b, p, kw * WORD_BITS + bit2), axis=bit2), name="pack2")
        kw2 = te.reduce_axis((0, full), name="kw2")
        acc2 = te.compute((n, out, opix), lambda b, o, p: te.sum(
            tirx.popcount(pack2[b, p, kw2] ^ w2[o, kw2]).astype("int32"), axis=kw2),
            name="acc2")
        count.append(lambda b, o, p: acc2[b, o, p])
    if tail:
        bitt, sign_bitt = sign_bits("pack2_tail", tail)
        pack2_tail = te.compute((n, opix), lambda b, p: te.sum(
            sign_bitt(b, p, full * WORD_BITS + bitt), axis=bitt), name="pack2_tail")
        count.append(lambda b, o, p: tirx.popcount(pack2_tail[b, p] ^ w2[o, full])
                     .astype("int32"))

    def project(b: Any, o: Any, p: Any) -> Any:
        ones = count[0](b, o, p) if len(count) == 1 else count[0](b, o, p) + count[1](b, o, p)
        value = a2[o] * (mid - 2 * ones).astype(f) + b2[o]
        if t is not None:
            value = value + t[b, tirx.floormod(o, mid), p]
        return value + x[b, o, p] if spec.residual else value

    y = te.compute((n, out, opix), project, name="y")
    return [*inputs, y]


def _schedule(spec: BlockSpec, tensors: list[Any]) -> Any:
    tvm = import_tvm()
    from tvm import te  # deferred: TVM is a heavy optional import (the tvm extra)

    sch = tvm.s_tir.Schedule(te.create_prim_func(tensors))
    mid_lanes = _lanes(spec.mid_channels)
    present = _ops(tensors[-1])  # a prefix of the block (stage_program) has fewer ops

    def pack(name: str, lanes: int) -> None:
        block = sch.get_sblock(name)
        b, k, p, bit = sch.get_loops(block)
        po, pi = sch.split(p, [None, lanes])
        sch.reorder(b, k, po, bit, pi)
        sch.vectorize(pi)
        sch.decompose_reduction(block, bit)

    # 1-2: expand
    pack("pack1", spec.in_lanes)
    if "e" not in present:
        return sch.mod
    # the expand GEMM of one pixel is computed where the pixel is expanded, so its int32
    # accumulators stay in registers instead of an [HW, M] buffer written and read back
    e = sch.get_sblock("e")
    acc1 = sch.get_sblock("acc1")
    sch.compute_at(acc1, sch.get_loops(e)[2])
    loops = sch.get_loops(acc1)[3:]  # (m) or (m, kw): compute_at drops loops of extent 1
    if len(loops) == 2:
        sch.reorder(loops[1], loops[0])
    sch.vectorize(sch.split(loops[0], [None, mid_lanes])[-1])
    sch.decompose_reduction(acc1, sch.get_loops(acc1)[3])
    m = sch.get_loops(e)[3]
    if spec.expand_shortcut and spec.mid_channels % spec.in_channels == 0:
        # m = r·C + ch: the shortcut's channel m mod C is ch, so vectors over ch read the
        # NHWC input contiguously (vectors over m would gather across the wrap at C)
        _, ch = sch.split(m, [None, spec.in_channels])
        sch.vectorize(sch.split(ch, [None, _lanes(spec.in_channels)])[-1])
    else:
        sch.vectorize(sch.split(m, [None, mid_lanes])[-1])
    if "d" not in present:
        return sch.mod
    # 3: depthwise, up to 7 output pixels of a row × one channel vector in registers
    dws = sch.get_sblock("dws")
    b, p, m, ri, rj = sch.get_loops(dws)
    ho, wo = sch.split(p, [None, spec.out_width])
    mo, mi = sch.split(m, [None, mid_lanes])
    wo_o, wo_i = sch.split(wo, [None, row_tile(spec.out_width, 7)])
    sch.reorder(b, ho, mo, wo_o, ri, rj, wo_i, mi)
    sch.vectorize(mi)
    sch.unroll(wo_i)
    d = sch.get_sblock("d")
    sch.reverse_compute_at(d, wo_o)
    sch.vectorize(sch.get_loops(d)[-1])
    sch.decompose_reduction(dws, ri)
    # 4: squeeze-excite
    if "se_gate" in present:
        _vectorize_reduction(sch, "se_sum", mid_lanes)
        _vectorize_reduction(sch, "se_red", _lanes(spec.se_channels))
        _vectorize_reduction(sch, "se_gate_sum", mid_lanes)
        gate = sch.get_sblock("se_gate")
        sch.vectorize(sch.split(sch.get_loops(gate)[-1], [None, mid_lanes])[-1])
    if "t" in present:  # 5: NCHW gated copy (for the project's shortcut)
        t = sch.get_sblock("t")
        b, m, p = sch.get_loops(t)
        sch.vectorize(sch.split(p, [None, spec.out_lanes])[-1])
    if "y" not in present:
        return sch.mod
    # 6: project
    full, tail = divmod(spec.mid_channels, WORD_BITS)
    for name in ("pack2",) * bool(full) + ("pack2_tail",) * bool(tail):
        pack2 = sch.get_sblock(name)
        sch.decompose_reduction(pack2, sch.get_loops(pack2)[-1])
    # y reads t (a block outside the GEMM's loops): compute the GEMM tile under y instead
    y = sch.get_sblock("y")
    b, o, p = sch.get_loops(y)
    oo, oi = sch.split(o, [None, row_tile(spec.out_channels)])
    po, pi = sch.split(p, [None, spec.out_lanes])
    sch.reorder(b, oo, po, oi, pi)
    sch.vectorize(pi)
    if full:
        acc2 = sch.get_sblock("acc2")
        sch.compute_at(acc2, po)
        # compute_at leaves out loops of extent 1: name the ones that are there
        extents = {"oi": row_tile(spec.out_channels), "pi": spec.out_lanes, "kk": full}
        names = [name for name, extent in extents.items() if extent > 1]
        loops = dict(zip(names, sch.get_loops(acc2)[3:], strict=True))
        if "kk" in loops:
            sch.reorder(*[loops[name] for name in ("kk", "oi", "pi") if name in loops])
        sch.vectorize(loops["pi"])
        sch.decompose_reduction(acc2, loops.get("kk", loops.get("oi", loops["pi"])))
    return sch.mod


def _ops(tensor: Any) -> dict[str, Any]:
    """The tensors ``tensor`` is computed from, itself included, by op name (each visited
    once)."""
    found: dict[str, Any] = {}
    pending = [tensor]
    while pending:
        t = pending.pop()
        if t.op.name not in found:
            found[t.op.name] = t
            pending.extend(getattr(t.op, "input_tensors", ()))
    return found


#: stages of a fused block, in order, and the tensor each ends at (:func:`stage_program`)
STAGES = {"expand": "e", "depthwise": "d", "squeeze_excite": "se_gate", "nchw": "t",
          "project": "y"}


def stage_program(spec: BlockSpec, stage: str) -> tuple[Any, list[tuple[tuple[int, ...], str]]]:
    """The fused block of ``spec`` computed only up to ``stage`` (a key of
    :data:`STAGES`), compiled as the block is, and its arguments' shapes and dtypes (the
    inputs it reads, then its output). Timing the stages in order tells what each adds
    (``block_stages`` in ``scripts/bench_precision_mbv3.py``).

    Raises ``ValueError`` for an unknown stage or one the block does not have
    (``squeeze_excite`` without SE, ``nchw`` without the project's shortcut)."""
    import_tvm()
    tensors = _define(spec)
    name = STAGES.get(stage)
    if name is None:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    out = _ops(tensors[-1]).get(name)
    if out is None:
        why = "se_channels=0" if stage == "squeeze_excite" else "no project shortcut"
        raise ValueError(f"this block has no {stage} stage ({why})")
    reads = _ops(out)
    chosen = [*(t for t in tensors[:-1] if t.op.name in reads), out]
    shapes = [(tuple(int(d) for d in t.shape), str(t.dtype)) for t in chosen]
    return compile_for_host(_schedule(spec, chosen)), shapes


def _vectorize_reduction(sch: Any, name: str, lanes: int) -> None:
    """Block ``name`` with loops (batch, channel, reduction), reading its operand
    ``[reduction, channel]`` row by row: the reduction loop goes outside the channel loop,
    so the operand streams contiguously while the channel accumulators stay in L1 (the
    other order reads one vector per row, a stride of a whole row between reads), and
    ``lanes`` channels are vectorized."""
    block = sch.get_sblock(name)
    b, channel, reduce = sch.get_loops(block)
    outer, inner = sch.split(channel, [None, lanes])
    sch.reorder(b, reduce, outer, inner)
    sch.vectorize(inner)
    sch.decompose_reduction(block, reduce)


@functools.cache
def _compiled(spec: BlockSpec) -> Any:
    import_tvm()
    return compile_for_host(_schedule(spec, _define(spec)))


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


_Call = tuple[Any, np.ndarray, np.ndarray, list[Any]]


class TvmBlock:
    """A fused binary MBConv block (:class:`~ofa_search.binary.block.BlockPlan`) compiled
    with TVM: :meth:`__call__` maps float32 ``[N, C, H, W]`` to ``[N, O, H/s, W/s]``.

    Compiled per input shape (cached across blocks of equal shape, serial code: one
    thread); not thread-safe (argument buffers are reused between calls).
    """

    def __init__(self, plan: BlockPlan) -> None:
        tvm = import_tvm()
        self.plan = plan
        ex, dw, pr = plan.expand, plan.depthwise, plan.project
        if dw.act is None or ex.act is None:
            raise ValueError("a fused block needs the expand and depthwise activations")
        arrays = [ex.input_scale, ex.input_shift,
                  ex.weights.reshape(ex.out_channels, -1).T, ex.scale, ex.bias,
                  dw.weight.transpose(1, 2, 0), dw.bias]
        if dw.se_reduce is not None:
            arrays += [_f32(dw.se_reduce.T), _f32(dw.se_reduce_bias),  # type: ignore[arg-type]
                       _f32(dw.se_expand.T), _f32(dw.se_expand_bias)]  # type: ignore[union-attr, arg-type]
        arrays += [pr.input_scale, pr.input_shift, pr.weights.reshape(pr.out_channels, -1),
                   pr.scale, pr.bias]
        device = tvm.cpu()
        self._constants = [tvm.runtime.tensor(np.ascontiguousarray(a), device) for a in arrays]
        self._calls: dict[tuple[int, ...], _Call] = {}

    def spec(self, shape: tuple[int, ...]) -> BlockSpec:
        n, _, h, w = shape
        p = self.plan
        return BlockSpec(int(n), p.expand.in_channels, int(h), int(w), p.expand.out_channels,
                         p.project.out_channels, p.depthwise.kernel, p.depthwise.stride,
                         str(p.expand.act), p.depthwise.act, p.depthwise.se_channels,
                         p.residual, p.expand.shortcut, p.project.shortcut)

    def _call_for(self, shape: tuple[int, ...]) -> _Call:
        call = self._calls.get(shape)
        if call is None:
            spec = self.spec(shape)
            x, x_tensor = shared_buffer((spec.batch, spec.in_channels, spec.padded_pixels),
                                        "float32")
            x[...] = 0.0  # the pad pixels stay zero
            y, y_tensor = shared_buffer(
                (spec.batch, spec.out_channels, spec.padded_out_pixels), "float32")
            call = (_compiled(spec), x, y, [x_tensor, *self._constants, y_tensor])
            self._calls[shape] = call
        return call

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = self.plan.expand.check_input(x)
        n, c, h, w = x.shape
        func, x_buf, y_buf, args = self._call_for(x.shape)
        x_buf[..., :h * w] = x.reshape(n, c, h * w)
        func(*args)
        s = self.plan.depthwise.stride
        ho, wo = -(-h // s), -(-w // s)
        out = np.empty((n, y_buf.shape[1], ho, wo), dtype=np.float32)  # the caller's copy
        out.reshape(n, -1, ho * wo)[...] = y_buf[..., :ho * wo]
        return out
