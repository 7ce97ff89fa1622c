"""Binary conv kernels (TVM, NumPy) against ONNX Runtime's fp32 ``Conv`` on the same shapes.

Each row times, at batch 1 and ``threads`` threads, with the project's adaptive timing
(:func:`ofa_search.profiling.timing.time_sampler`, medians in ms):

* ``ort_fp32_ms`` — one fp32 ``Conv`` node (no bias, 'same' padding) in ONNX Runtime;
* ``tvm_binary_ms`` — the TVM binary conv on packed signs (int32 out; zero padding);
* ``tvm_pack_ms`` — binarising and packing the fp32 NCHW input with TVM;
* ``tvm_pack_and_binary_ms`` — both in sequence (fp32 in, integer dot products out);
* ``numpy_binary_ms`` — the NumPy reference on packed signs.

Speed-ups are ``ort_fp32_ms`` over each. All calls are timed as Python sees them (ORT's
``session.run``, the TVM function call), so per-call overheads count on both sides.
:func:`dispatch_notes` records what ran: CPU flags, the TVM target and whether its kernel
uses ``vpopcntq`` on zmm registers, and which kernels ONNX Runtime's optimised graph uses.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ofa_search.binary._tvm import host_target, set_threads, tvm_available
from ofa_search.binary.kernels import binary_conv2d, conv_geometry
from ofa_search.binary.packing import pack_activations, pack_weights
from ofa_search.binary.tvm_kernels import ConvSpec, TvmBinaryConv2d, compiled_source
from ofa_search.binary.tvm_packing import TvmPacker
from ofa_search.ort_options import exact_int8
from ofa_search.profiling.host import FLAGS_OF_INTEREST, cpu_flags, package_versions, read_cpuinfo
from ofa_search.profiling.lut import now_iso
from ofa_search.profiling.timing import (
    TimingConfig,
    TimingStats,
    callable_sampler,
    time_sampler,
)


@dataclass(frozen=True)
class KernelShape:
    """One conv workload: ``in_channels → out_channels``, ``kernel × kernel``, at
    ``size × size`` (stride 1, 'same' padding, batch 1)."""

    name: str
    in_channels: int
    out_channels: int
    kernel: int
    size: int

    @property
    def macs(self) -> int:
        return self.in_channels * self.out_channels * self.kernel**2 * self.size**2


SHAPES: tuple[KernelShape, ...] = (
    KernelShape("3x3 256->256 @14x14", 256, 256, 3, 14),
    KernelShape("3x3 256->256 @28x28", 256, 256, 3, 28),
    KernelShape("1x1 512->512 @14x14", 512, 512, 1, 14),
)
FAST_TIMING = TimingConfig(warmup=5, min_runs=15, max_runs=400, rel_tolerance=0.02,
                           time_cap_s=4.0)
SLOW_TIMING = TimingConfig(warmup=1, min_runs=5, max_runs=20, rel_tolerance=0.05,
                           time_cap_s=2.0, min_sample_ms=0.0)


def conv_model(shape: KernelShape, weight: np.ndarray) -> bytes:
    """A one-node ONNX model: fp32 ``Conv`` of ``weight`` with 'same' padding."""
    pad = shape.kernel // 2
    dims = [1, shape.in_channels, shape.size, shape.size]
    out = [1, shape.out_channels, shape.size, shape.size]
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[pad] * 4,
                            kernel_shape=[shape.kernel] * 2)
    graph = helper.make_graph(
        [node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)],
        [numpy_helper.from_array(weight.astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return bytes(model.SerializeToString())


def _ort_options(threads: int) -> Any:
    import onnxruntime as ort  # deferred: ONNX Runtime is a heavy import

    options = exact_int8(ort.SessionOptions())
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def _session(model: bytes, options: Any) -> Any:
    import onnxruntime as ort  # deferred: ONNX Runtime is a heavy import

    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _time(fn: Callable[[], object], config: TimingConfig) -> float:
    """Median ms of ``fn()``, measured adaptively."""
    stats: TimingStats = time_sampler(callable_sampler(fn), config)
    return round(stats.median_ms, 5)


def kernel_row(shape: KernelShape, threads: int = 1, *, seed: int = 0,
               timing: TimingConfig = FAST_TIMING,
               numpy_timing: TimingConfig = SLOW_TIMING) -> dict[str, Any]:
    """Timings and speed-ups of one workload (see the module docstring)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, shape.in_channels, shape.size, shape.size)).astype(np.float32)
    weight = rng.standard_normal((shape.out_channels, shape.in_channels, shape.kernel,
                                  shape.kernel)).astype(np.float32)
    session = _session(conv_model(shape, weight), _ort_options(threads))
    feeds = {"x": x}
    ort_ms = _time(lambda: session.run(None, feeds), timing)
    x_words, w_words = pack_activations(x), pack_weights(weight)
    reference = binary_conv2d(x_words, w_words, shape.in_channels)
    row: dict[str, Any] = {
        "shape": shape.name, "in_channels": shape.in_channels,
        "out_channels": shape.out_channels, "kernel": shape.kernel, "size": shape.size,
        "batch": 1, "threads": threads, "macs": shape.macs, "ort_fp32_ms": ort_ms,
    }
    numpy_ms = _time(lambda: binary_conv2d(x_words, w_words, shape.in_channels),
                     numpy_timing)
    row.update(numpy_binary_ms=numpy_ms, speedup_numpy=round(ort_ms / numpy_ms, 3))
    if not tvm_available():
        row.update(tvm_binary_ms=None, tvm_pack_ms=None, tvm_pack_and_binary_ms=None,
                   speedup_tvm=None, speedup_tvm_with_pack=None, tvm_exact=None)
        return row

    set_threads(threads)
    conv = TvmBinaryConv2d(w_words, shape.in_channels, parallel=threads > 1)
    packer = TvmPacker((1, shape.in_channels, shape.size, shape.size))
    exact = bool(np.array_equal(conv(packer(x)), reference))
    tvm_ms = _time(lambda: conv(x_words), timing)
    pack_ms = _time(lambda: packer(x), timing)
    both_ms = _time(lambda: conv(packer(x)), timing)
    row.update(tvm_binary_ms=tvm_ms, tvm_pack_ms=pack_ms, tvm_pack_and_binary_ms=both_ms,
               speedup_tvm=round(ort_ms / tvm_ms, 3),
               speedup_tvm_with_pack=round(ort_ms / both_ms, 3), tvm_exact=exact)
    return row


def kernel_rows(threads: int = 1, *, shapes: tuple[KernelShape, ...] = SHAPES,
                seed: int = 0) -> list[dict[str, Any]]:
    """One row per workload of ``shapes`` (default: 3×3 256→256 at 14² and 28², 1×1
    512→512 at 14²); see :func:`kernel_row`."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads=}")
    return [kernel_row(shape, threads, seed=seed) for shape in shapes]


def ort_graph_note(shape: KernelShape, threads: int = 1) -> dict[str, Any]:
    """What ONNX Runtime runs for ``shape``: its optimised graph's nodes and per-node
    kernel times (from its profiler)."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((shape.out_channels, shape.in_channels, shape.kernel,
                                  shape.kernel)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="ofa-ort-note-") as scratch:
        options = _ort_options(threads)
        options.optimized_model_filepath = str(Path(scratch) / "optimized.onnx")
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "profile")
        session = _session(conv_model(shape, weight), options)
        x = rng.standard_normal((1, shape.in_channels, shape.size, shape.size))
        for _ in range(3):
            session.run(None, {"x": x.astype(np.float32)})
        trace = json.loads(Path(session.end_profiling()).read_text(encoding="utf-8"))
        optimized = onnx.load(options.optimized_model_filepath)
    nodes = [f"{n.domain or 'ai.onnx'}:{n.op_type}" for n in optimized.graph.node]
    kernels: dict[str, list[float]] = {}
    for event in trace:
        if event.get("cat") == "Node" and str(event.get("name", "")).endswith("_kernel_time"):
            key = f"{event['args'].get('op_name')} ({event['args'].get('provider')})"
            kernels.setdefault(key, []).append(float(event["dur"]) / 1e3)
    return {"shape": shape.name, "optimized_graph": nodes,
            "node_kernel_ms_median": {k: round(float(np.median(v)), 4)
                                      for k, v in kernels.items()}}


def _ort_library_note() -> dict[str, Any]:
    import onnxruntime as ort  # deferred: ONNX Runtime is a heavy import

    folder = Path(ort.__file__).parent / "capi"
    libraries = sorted(folder.glob("libonnxruntime.so*")) or sorted(folder.glob("*.dll"))
    note: dict[str, Any] = {"version": ort.__version__, "library": None}
    if libraries:
        data = libraries[0].read_bytes()
        note.update(library=libraries[0].name,
                    references_blas=any(s in data for s in (b"cblas_sgemm", b"openblas",
                                                            b"mkl_", b"sgemm_")),
                    contains_mlas=b"mlas" in data.lower())
    return note


def dispatch_notes(threads: int = 1, shapes: tuple[KernelShape, ...] = SHAPES
                   ) -> dict[str, Any]:
    """Which kernels ran: CPU, TVM target and instructions, ONNX Runtime's kernels."""
    info = read_cpuinfo()
    flags = cpu_flags(info)
    notes: dict[str, Any] = {
        "cpu": info.get("model name"),
        "cpu_flags": {flag: flag in flags for flag in FLAGS_OF_INTEREST},
        "cores_visible": os.cpu_count(),
        "onnxruntime": _ort_library_note(),
        "onnxruntime_graphs": [ort_graph_note(shape, threads) for shape in shapes],
        "onnxruntime_explanation": (
            "ONNX Runtime's CPU provider runs Conv with its own MLAS library, not a BLAS: "
            "with ORT_ENABLE_ALL the graph optimiser rewrites Conv into the "
            "com.microsoft.nchwc domain (ReorderInput → NCHWc Conv → ReorderOutput), "
            "whose MLAS kernels are chosen at run time from CPUID (AVX-512F kernels on "
            "AVX-512 machines)."),
    }
    if tvm_available():
        import tvm  # deferred: TVM is a heavy optional import (the tvm extra)

        spec = ConvSpec(1, conv_geometry(14, 14, 3), 256, 256, 0)
        asm = compiled_source(spec)
        notes["tvm"] = {"version": tvm.__version__, "target": str(host_target()),
                        "kernel_uses_vpopcntq_zmm": "vpopcntq\t%zmm" in asm,
                        "threads": set_threads(threads)}
    else:
        notes["tvm"] = None
    return notes


def run_benchmark(threads: int = 1, shapes: tuple[KernelShape, ...] = SHAPES
                  ) -> dict[str, Any]:
    """Rows of :func:`kernel_rows` and :func:`dispatch_notes`, with the package versions."""
    rows = kernel_rows(threads, shapes=shapes)
    return {"created": now_iso(), "threads": threads, "batch": 1, "rows": rows,
            "notes": dispatch_notes(threads, shapes), "versions": package_versions()}


_COLUMNS = (("shape", "shape", "{}"), ("ort_fp32_ms", "ort_fp32_ms", "{:.4f}"),
            ("tvm_binary_ms", "tvm_binary_ms", "{:.4f}"), ("x_tvm", "speedup_tvm", "{:.1f}"),
            ("tvm_pack+bin_ms", "tvm_pack_and_binary_ms", "{:.4f}"),
            ("x_tvm+pack", "speedup_tvm_with_pack", "{:.1f}"),
            ("numpy_bin_ms", "numpy_binary_ms", "{:.3f}"), ("x_numpy", "speedup_numpy", "{:.2f}"))


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of benchmark rows (medians in ms, speed-ups over ORT fp32)."""
    table = [[title for title, _, _ in _COLUMNS]]
    for row in rows:
        table.append(["-" if row.get(key) is None else fmt.format(row[key])
                      for _, key, fmt in _COLUMNS])
    widths = [max(len(line[i]) for line in table) for i in range(len(_COLUMNS))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True))
                     for line in table)
