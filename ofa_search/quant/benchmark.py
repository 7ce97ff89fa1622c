"""ONNX Runtime int8 vs fp32 kernels on the same shapes, at a fixed thread count.

:func:`kernel_rows` times, for each case, the fp32 model and the int8 model built by the
export path (:mod:`ofa_search.quant.units`: seeded init, calibrated ranges, QDQ), with ORT's
CPU provider at ``ORT_ENABLE_ALL``; and records which kernels ORT dispatched (node types of
its optimised graphs) and the CPU's int8 dot-product support (``/proc/cpuinfo`` flags:
``avx512_vnni``/``avx_vnni`` make ORT's u8s8 GEMM use VPDPBUSD). Cases: single convs
(+BN, no activation) 3×3 256→256 at 14² and 28², 1×1 512→512 at 14², and the largest int8
MBConv block of each stage of ``mbv3_small28_mp`` (28 px input image).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import onnx
import torch

from ofa_search.arch import Arch
from ofa_search.nn.static import ConvBNAct, build_unit, init_weights
from ofa_search.onnx_export import INPUT_NAME, export_onnx
from ofa_search.ort_options import exact_int8
from ofa_search.profiling.host import cpu_flags, read_cpuinfo
from ofa_search.profiling.timing import TimingStats, time_callable
from ofa_search.quant.graph import ort_kernel_counts
from ofa_search.quant.units import seeded_input, seeded_int8_onnx
from ofa_search.units import MBConvUnit, arch_units

INT8_FLAGS = ("avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
"""CPU flags that decide ORT's int8 GEMM kernel on x86."""


@dataclass(frozen=True)
class KernelCase:
    """One shape to compare: ``build(int8)`` returns the model and its input shape."""

    name: str
    build: Callable[[bool], tuple[onnx.ModelProto, tuple[int, ...]]]
    macs: int


def conv_case(cin: int, cout: int, kernel: int, size: int) -> KernelCase:
    """A ``kernel``×``kernel`` conv (+BN) ``cin``→``cout`` on a ``size``² input, batch 1."""
    shape = (1, cin, size, size)

    def build(int8: bool) -> tuple[onnx.ModelProto, tuple[int, ...]]:
        module = ConvBNAct(cin, cout, kernel, int8=int8)
        if int8:
            return seeded_int8_onnx(module, shape), shape
        init_weights(module, torch.Generator().manual_seed(0))
        return export_onnx(module, shape), shape

    return KernelCase(f"conv{kernel}x{kernel} {cin}->{cout} @{size}x{size}", build,
                      cin * cout * kernel * kernel * size * size)


def mbconv_case(unit: MBConvUnit) -> KernelCase:
    """The static MBConv block of ``unit`` (its precision is replaced per side)."""
    shape = (1, unit.in_channels, unit.in_size, unit.in_size)

    def build(int8: bool) -> tuple[onnx.ModelProto, tuple[int, ...]]:
        spec = dataclasses.replace(unit, precision="int8" if int8 else "fp32")
        module = build_unit(spec)
        if int8:
            return seeded_int8_onnx(module, shape), shape
        init_weights(module, torch.Generator().manual_seed(0))
        return export_onnx(module, shape), shape

    return KernelCase(f"mbconv {unit.key.rsplit(':', 1)[0]}", build, unit.macs())


def largest_int8_block(space: str = "mbv3_small28_mp", stage: int = 2,
                       resolution: int = 28) -> MBConvUnit:
    """The MBConv unit of stage ``stage`` (0-based) with the most MACs in the largest arch
    of ``space`` at ``resolution``, as an int8 unit."""
    arch = Arch.largest(space).replace(resolution=resolution)
    arch = arch.replace(precisions=("int8",) * len(arch.depths))
    first = 2 + sum(arch.depths[:stage])  # stem and first block come first
    blocks = [u for u in arch_units(arch)[first:first + arch.depths[stage]]
              if isinstance(u, MBConvUnit)]
    return max(blocks, key=lambda u: u.macs())


def default_cases() -> list[KernelCase]:
    """The shapes of the int8 kernel comparison: the three convs, then the largest int8
    block of each stage of ``mbv3_small28_mp`` at 28 px (stage 2 is the one asked for;
    the others show how the block's size decides the outcome)."""
    convs = [conv_case(256, 256, 3, 14), conv_case(256, 256, 3, 28),
             conv_case(512, 512, 1, 14)]
    return convs + [mbconv_case(largest_int8_block(stage=s)) for s in (2, 0, 1, 3)]


def cpu_int8_support() -> dict[str, bool]:
    """Which of :data:`INT8_FLAGS` this CPU reports."""
    flags = cpu_flags(read_cpuinfo())
    return {flag: flag in flags for flag in INT8_FLAGS}


def time_model(model: onnx.ModelProto, shape: tuple[int, ...], threads: int = 1,
               time_cap_s: float = 2.0) -> TimingStats:
    """Per-run latency of ``model`` on ORT's CPU provider (``ORT_ENABLE_ALL``,
    ``threads`` intra-op threads, sequential), seeded standard-normal input."""
    import onnxruntime as ort  # deferred: ONNX Runtime is a heavy import

    options = exact_int8(ort.SessionOptions())
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feeds = {INPUT_NAME: seeded_input(shape)}
    return time_callable(lambda: session.run(None, feeds), warmup=10, min_runs=50,
                         time_cap_s=time_cap_s)


def kernel_rows(threads: int = 1, cases: list[KernelCase] | None = None,
                time_cap_s: float = 2.0) -> list[dict[str, Any]]:
    """One row per case: fp32 and int8 median/IQR (ms), speed-up (fp32 / int8), MACs, the
    optimised graphs' kernel counts, and the CPU's int8 flags."""
    support = cpu_int8_support()
    rows: list[dict[str, Any]] = []
    for case in default_cases() if cases is None else cases:
        row: dict[str, Any] = {"case": case.name, "macs": case.macs, "threads": threads}
        for label, int8 in (("fp32", False), ("int8", True)):
            model, shape = case.build(int8)
            stats = time_model(model, shape, threads, time_cap_s)
            row[f"{label}_median_ms"] = stats.median_ms
            row[f"{label}_iqr_ms"] = stats.iqr_ms
            row[f"{label}_runs"] = stats.count
            row[f"{label}_kernels"] = ort_kernel_counts(model, threads).to_dict()
        row["speedup"] = row["fp32_median_ms"] / row["int8_median_ms"]
        row["int8_gmacs_per_s"] = case.macs / row["int8_median_ms"] / 1e6
        row["fp32_gmacs_per_s"] = case.macs / row["fp32_median_ms"] / 1e6
        row["cpu_int8_flags"] = support
        rows.append(row)
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of :func:`kernel_rows`."""
    lines = [f"{'case':<48} {'fp32 ms':>9} {'int8 ms':>9} {'speed-up':>8}  int8 kernels"]
    for row in rows:
        ops = row["int8_kernels"]
        lines.append(f"{row['case']:<48} {row['fp32_median_ms']:9.3f} "
                     f"{row['int8_median_ms']:9.3f} {row['speedup']:7.2f}×  "
                     f"QLinearConv {ops['int8_convs']}, fp32 Conv {ops['fp32_convs']}")
    return "\n".join(lines)


__all__ = ["KernelCase", "conv_case", "cpu_int8_support", "default_cases", "format_rows",
           "kernel_rows", "largest_int8_block", "mbconv_case", "time_model"]
