"""Would an int8 depthwise conv pay? A VNNI kernel against the fp32 one of the fused blocks.

    python scripts/bench_int8_depthwise.py [OUT_JSON] [--rounds 9] [--runs 300]

The depthwise convs of ``ofa_mbv3`` stay fp32 in the binary packages (inside the fused TVM
blocks) and run slower in int8 than in fp32 under ONNX Runtime, so both low-precision
targets need them faster (docs/benchmarks/precision-mbv3.md). This times, at one thread,
on the depthwise shapes of a 224-px ``ofa_mbv3`` subnet:

- ``fp32``: the fused blocks' fp32 depthwise schedule (NHWC, a row of up to 7 output
  pixels × 16 channels accumulated in registers), zero-padded input given;
- ``fp32'``: a second compiled copy of it, timed in the same rounds: the noise floor;
- ``int8``: u8 activations × s8 weights with int32 sums, four taps of a kernel row per
  ``vpdpbusd`` (AVX-512 VNNI; each 32-bit lane holds one channel's four taps, so the input
  is given as *quads*: ``xq[h, w, c, j] = x[h, w + j, c]``), dequantised to fp32 like
  ``fp32``'s output;
- ``int8+quads``: the same with the quads built from the u8 NHWC input inside the call
  (what a producer that cannot write them directly would pay);
- ``ort-fp32``: ONNX Runtime's fp32 depthwise conv as a one-node NCHW model (its layout
  reorders and ``session.run`` included: a reference, not a like-for-like kernel).

Every int8 kernel is first checked against NumPy (its integer sums exactly). Interleaved
rounds (``_timing.interleaved``, as ``bench_precision_mbv3.py`` times): in each round, in a
rotated order, every variant of every shape runs once untimed, then ``--runs`` timed
calls whose median is that round's value; a variant's time is the median over rounds.
Prints a table and writes the JSON atomically (default
``results/bench_int8_depthwise.json``). Needs TVM (the ``tvm`` extra) and a CPU with
``avx512_vnni``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
from _timing import Runner, interleaved

from ofa_search.atomic import atomic_write_json
from ofa_search.profiling.host import host_info
from ofa_search.profiling.lut import now_iso
from ofa_search.quant.benchmark import cpu_int8_support

#: (height, width, channels, kernel, stride) of the depthwise convs of a 224-px subnet
SHAPES = [(112, 112, 48, 3, 2), (56, 56, 144, 3, 1), (56, 56, 144, 7, 1),
          (28, 28, 160, 7, 2), (28, 28, 240, 5, 1), (14, 14, 672, 7, 1)]
VARIANTS = ("fp32", "fp32'", "int8", "int8+quads", "ort-fp32")
LANES = 16  # channels per vector (int32 or fp32 lanes of a 512-bit register)
INTRIN = "ofa_bench_dw_quad_vnni"


def _register_intrinsic() -> None:
    """``C[i] += Σ_j A[i, j]·B[i, j]`` over 16 channels × 4 taps as one ``vpdpbusd``
    (the accumulators in registers: ``local`` scope)."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    if TensorIntrin.get(INTRIN, allow_missing=True) is not None:
        return

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((16, 4), "uint8", offset_factor=1),
             b: T.Buffer((16, 4), "int8", offset_factor=1),
             c: T.Buffer((16,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(c[0:16], a[0:16, 0:4], b[0:16, 0:4])
            T.writes(c[0:16])
            for i in T.serial(0, 16):
                for j in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vj = T.axis.remap("SR", [i, j])
                        c[vi] = c[vi] + T.cast(a[vi, vj], "int32") * T.cast(b[vi, vj], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((16, 4), "uint8", offset_factor=1),
             b: T.Buffer((16, 4), "int8", offset_factor=1),
             c: T.Buffer((16,), "int32", offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(c[0:16], a[0:16, 0:4], b[0:16, 0:4])
            T.writes(c[0:16])
            c[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                c.vload([0], dtype="int32x16"), a.vload([0, 0], dtype="uint8x64"),
                b.vload([0, 0], dtype="int8x64"), dtype="int32x16")

    TensorIntrin.register(INTRIN, desc, impl)


def _out_size(n: int, k: int, s: int) -> int:
    return (n + 2 * (k // 2) - k) // s + 1


def fp32_kernel(shape: tuple[int, ...], seed: int) -> tuple[Any, list[np.ndarray]]:
    """The fp32 depthwise conv (bias added) and seeded arguments (output last)."""
    from tvm import te

    from ofa_search.binary._tvm import compile_for_host, import_tvm, row_tile

    tvm = import_tvm()
    h, w, c, k, s = shape
    ho, wo, pad = _out_size(h, k, s), _out_size(w, k, s), k // 2
    e = te.placeholder((h + 2 * pad, w + 2 * pad, c), "float32", name="e")
    wt = te.placeholder((k, k, c), "float32", name="w")
    bias = te.placeholder((c,), "float32", name="bias")
    ri, rj = te.reduce_axis((0, k), name="ri"), te.reduce_axis((0, k), name="rj")
    acc = te.compute((ho, wo, c), lambda y, x, ch: te.sum(
        e[y * s + ri, x * s + rj, ch] * wt[ri, rj, ch], axis=[ri, rj]), name="acc")
    out = te.compute((ho, wo, c), lambda y, x, ch: acc[y, x, ch] + bias[ch], name="out")
    sch = tvm.s_tir.Schedule(te.create_prim_func([e, wt, bias, out]))
    block = sch.get_sblock("acc")
    y, x, ch, ri_, rj_ = sch.get_loops(block)
    co, ci = sch.split(ch, [None, LANES])
    xo, xi = sch.split(x, [None, row_tile(wo, 7)])
    sch.reorder(y, co, xo, ri_, rj_, xi, ci)
    sch.vectorize(ci)
    sch.unroll(xi)
    out_block = sch.get_sblock("out")
    sch.reverse_compute_at(out_block, xo)
    sch.vectorize(sch.get_loops(out_block)[-1])
    sch.decompose_reduction(block, ri_)
    rng = np.random.default_rng(seed)
    args = [rng.standard_normal((h + 2 * pad, w + 2 * pad, c), dtype=np.float32),
            rng.standard_normal((k, k, c), dtype=np.float32),
            rng.standard_normal(c, dtype=np.float32), np.zeros((ho, wo, c), np.float32)]
    return compile_for_host(sch.mod), args


def int8_kernel(shape: tuple[int, ...], seed: int, *, build_quads: bool
                ) -> tuple[Any, list[np.ndarray]]:
    """The int8 depthwise conv on quads (``build_quads``: from the u8 NHWC input, built in
    the call), ``(Σ xq·wq − corr)·scale + bias`` in fp32, and seeded arguments."""
    from tvm import te

    from ofa_search.binary._tvm import compile_for_host, import_tvm, row_tile

    tvm = import_tvm()
    _register_intrinsic()
    h, w, c, k, s = shape
    ho, wo, pad = _out_size(h, k, s), _out_size(w, k, s), k // 2
    quads, blocks = (k + 3) // 4, c // LANES  # a row's taps in quads (the last zero-filled)
    hp, wq = h + 2 * pad, (wo - 1) * s + 4 * quads
    if build_quads:
        x = te.placeholder((hp, wq + 3, c), "uint8", name="x")
        xq = te.compute((hp, wq, blocks, LANES, 4),
                        lambda r, q, cb, i, j: x[r, q + j, cb * LANES + i], name="xq")
        first = x
    else:
        xq = te.placeholder((hp, wq, blocks, LANES, 4), "uint8", name="xq")
        first = xq
    wt = te.placeholder((k, quads, blocks, LANES, 4), "int8", name="wq")
    corr = te.placeholder((c,), "int32", name="corr")  # input zero point × Σ weights
    scale = te.placeholder((c,), "float32", name="scale")
    bias = te.placeholder((c,), "float32", name="bias")
    ky, kq = te.reduce_axis((0, k), name="ky"), te.reduce_axis((0, quads), name="kq")
    j = te.reduce_axis((0, 4), name="j")
    acc = te.compute((ho, wo, blocks, LANES), lambda y, x_, cb, i: te.sum(
        xq[y * s + ky, x_ * s + 4 * kq, cb, i, j].astype("int32")
        * wt[ky, kq, cb, i, j].astype("int32"), axis=[ky, kq, j]), name="acc")
    out = te.compute((ho, wo, c), lambda y, x_, ch: (
        acc[y, x_, ch // LANES, ch % LANES] - corr[ch]).astype("float32") * scale[ch]
        + bias[ch], name="out")
    sch = tvm.s_tir.Schedule(te.create_prim_func([first, wt, corr, scale, bias, out]))
    block = sch.get_sblock("acc")
    y, x_, cb, i, ky_, kq_, j_ = sch.get_loops(block)
    xo, xi = sch.split(x_, [None, row_tile(wo, 7)])
    sch.reorder(y, cb, xo, ky_, kq_, xi, i, j_)
    sch.unroll(xi)
    cached = sch.cache_write(block, 0, "local")  # a row of accumulators in registers
    sch.reverse_compute_at(cached, xo)
    sch.vectorize(sch.get_loops(cached)[-1])
    out_block = sch.get_sblock("out")
    sch.reverse_compute_at(out_block, xo)
    sch.vectorize(sch.split(sch.get_loops(out_block)[-1], [None, LANES])[-1])
    init = sch.decompose_reduction(block, ky_)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(i, INTRIN)
    if build_quads:  # 16 contiguous channels per tap offset (fusing i, j gathers)
        r, q, cb_, i_, j_ = sch.get_loops(sch.get_sblock("xq"))
        sch.reorder(r, q, cb_, j_, i_)
        sch.vectorize(i_)
    rng = np.random.default_rng(seed)
    x_shape = (hp, wq + 3, c) if build_quads else (hp, wq, blocks, LANES, 4)
    args = [rng.integers(0, 256, x_shape, dtype=np.uint8),
            rng.integers(-128, 128, (k, quads, blocks, LANES, 4), dtype=np.int8),
            rng.integers(-1000, 1000, c, dtype=np.int32),
            rng.uniform(0.5, 1.5, c).astype(np.float32),
            rng.standard_normal(c, dtype=np.float32), np.zeros((ho, wo, c), np.float32)]
    return compile_for_host(sch.mod), args


def int8_reference(shape: tuple[int, ...], args: list[np.ndarray]) -> np.ndarray:
    """What :func:`int8_kernel` with ``build_quads`` computes, in NumPy: the sums exactly
    (int64), the epilogue ``(sum − corr)·scale + bias`` in float64."""
    h, w, c, k, s = shape
    ho, wo = _out_size(h, k, s), _out_size(w, k, s)
    x, wq, corr = (a.astype(np.int64) for a in args[:3])
    taps = np.zeros((k, 4 * wq.shape[1], c), np.int64)  # [ky, kx, c], zero-filled taps
    for kq in range(wq.shape[1]):
        for j in range(4):
            taps[:, 4 * kq + j, :] = wq[:, kq, :, :, j].reshape(k, c)
    acc = np.zeros((ho, wo, c), np.int64)
    for ky in range(k):
        for kx in range(taps.shape[1]):
            acc += x[ky:ky + (ho - 1) * s + 1:s, kx:kx + (wo - 1) * s + 1:s, :] * taps[ky, kx]
    return (acc - corr) * args[3].astype(np.float64) + args[4].astype(np.float64)


def check_int8(shape: tuple[int, ...], seed: int = 0) -> str | None:
    """``None`` when :func:`int8_kernel` (quads built in the call) is right on ``shape``:
    its integer sums exact (checked with scale 1 and bias 0, where every sum is an exact
    float32), its epilogue within float32 rounding; else what is wrong."""
    kernel = int8_kernel(shape, seed, build_quads=True)
    got = run_kernel(kernel)
    if not np.allclose(got, int8_reference(shape, kernel[1]), rtol=1e-6, atol=1e-3):
        return f"the int8 kernel's output is wrong on {shape}"
    kernel[1][3][:], kernel[1][4][:] = 1.0, 0.0
    if not np.array_equal(run_kernel(kernel), int8_reference(shape, kernel[1])):
        return f"the int8 kernel's integer sums are wrong on {shape}"
    return None


def ort_call(shape: tuple[int, ...], seed: int) -> Runner:
    """One fp32 depthwise Conv node, NCHW, in ONNX Runtime at one thread."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    h, w, c, k, s = shape
    rng = np.random.default_rng(seed)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=c, kernel_shape=[k, k],
                            strides=[s, s], pads=[k // 2] * 4)
    graph = helper.make_graph(
        [node], "depthwise",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, w])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(rng.standard_normal((c, 1, k, k), dtype=np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal(c, dtype=np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feeds = {"x": rng.standard_normal((1, c, h, w), dtype=np.float32)}
    return lambda: session.run(None, feeds)


def _bind(kernel: tuple[Any, list[np.ndarray]]) -> tuple[Runner, Any]:
    """A call of the kernel on its arguments copied to TVM tensors once, and the output
    tensor it writes."""
    from ofa_search.binary._tvm import import_tvm

    func, args = kernel
    tensors = [import_tvm().runtime.tensor(a) for a in args]
    return lambda: func(*tensors), tensors[-1]


def run_kernel(kernel: tuple[Any, list[np.ndarray]]) -> np.ndarray:
    """The kernel's output on its arguments."""
    call, out = _bind(kernel)
    call()
    return out.numpy()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", default="results/bench_int8_depthwise.json")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--runs", type=int, default=300, help="timed calls per round")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.runs < 1:
        parser.error("--rounds and --runs must be at least 1")
    if not cpu_int8_support().get("avx512_vnni"):
        print("error: this CPU has no avx512_vnni, which the int8 kernel needs",
              file=sys.stderr)
        return 2
    from ofa_search.binary._tvm import import_tvm, set_threads

    import_tvm()
    set_threads(1)
    calls: dict[tuple[tuple[int, ...], str], Runner] = {}
    for n, shape in enumerate(SHAPES):
        problem = check_int8(shape, n)
        if problem is not None:
            print(f"error: {problem}", file=sys.stderr)
            return 1
        calls[shape, "fp32"] = _bind(fp32_kernel(shape, n))[0]
        calls[shape, "fp32'"] = _bind(fp32_kernel(shape, n))[0]
        calls[shape, "int8"] = _bind(int8_kernel(shape, n, build_quads=False))[0]
        calls[shape, "int8+quads"] = _bind(int8_kernel(shape, n, build_quads=True))[0]
        calls[shape, "ort-fp32"] = ort_call(shape, n)
    print(f"int8 kernels exact on {len(SHAPES)} shapes; timing {args.rounds} rounds")
    timed = interleaved(calls, args.rounds, args.runs)
    rows = []
    for shape in SHAPES:
        ms = {v: float(timed[shape, v]["median_ms"]) for v in VARIANTS}
        rows.append({"shape": dict(zip(("height", "width", "channels", "kernel", "stride"),
                                       shape, strict=True)),
                     "ms": ms, "rounds_ms": {v: timed[shape, v]["rounds_ms"] for v in VARIANTS},
                     "int8_speedup": ms["fp32"] / ms["int8"],
                     "int8_quads_speedup": ms["fp32"] / ms["int8+quads"],
                     "noise": abs(ms["fp32"] / ms["fp32'"] - 1.0)})
    header = "h×w×c k/s".ljust(18) + "".join(v.rjust(11) for v in VARIANTS)
    print(header + "   int8 ×  +quads ×  noise")
    for row in rows:
        sh = row["shape"]
        label = f"{sh['height']}×{sh['width']}×{sh['channels']} {sh['kernel']}/{sh['stride']}"
        print(label.ljust(18) + "".join(f"{row['ms'][v]:11.3f}" for v in VARIANTS)
              + f"  {row['int8_speedup']:6.2f}  {row['int8_quads_speedup']:7.2f}"
              + f"  {row['noise']:5.1%}")
    total = {v: sum(row["ms"][v] for row in rows) for v in VARIANTS}
    print("sum".ljust(18) + "".join(f"{total[v]:11.3f}" for v in VARIANTS)
          + f"  {total['fp32'] / total['int8']:6.2f}  {total['fp32'] / total['int8+quads']:7.2f}")
    out = Path(args.out)
    atomic_write_json(out, {"created": now_iso(), "threads": 1, "rounds": args.rounds,
                            "runs": args.runs, "host": host_info(),
                            "cpu_int8_flags": cpu_int8_support(), "rows": rows,
                            "sum_ms": total})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
