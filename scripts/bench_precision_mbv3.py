"""ofa_mbv3 end to end: fp32 vs int8 (PTQ) vs binary of the same subnets, side by side.

    python scripts/bench_precision_mbv3.py [OUT] [--subnets 20] [--binary-subnets N]
        [--resolutions 160 224] [--rounds 7] [--runs 5] [--threads 1]
        [--variants fp32 int8 binary] [--seed 0] [--breakdown-subnets 2]

``--subnets`` random subnets of ``ofa_mbv3_mp`` (width 1.0, seeded), each at every
``--resolutions``, as three artefacts of the same arch: every stage fp32 (fp32 ONNX),
every stage int8 (ONNX Runtime PTQ, QDQ ONNX) and every stage binary (binary 1×1 convs, a
binary package run by :class:`ofa_search.binary.runtime.BinaryPackage`). Weights: an
untrained supernet with a fixed torch seed (latency does not depend on trained values);
int8 calibration on seeded standard-normal images.

Timing (batch 1, ``--threads``): interleaved rounds; in each round every model of the
(subnet, resolution) runs once in a rotating order, one untimed call then ``--runs``
timed calls, whose median is the round's value; a model's latency is the median over
rounds. The fp32 model also runs as a second, separate ONNX Runtime session (``fp32'``):
the ratio between the two is the noise floor.

Breakdown (``--breakdown-subnets`` subnets at 224 px, or the largest resolution asked
for): ONNX Runtime profiles of fp32 and int8 grouped by category (depthwise convs, 1×1
convs, 1×1 convs on 1×1 maps (SE and head) and other convs, each by precision; layout
conversions; (de)quantisation; the rest), by conv kind (kernel, stride) and by op type,
with the executor's overhead (run time minus node time); for the binary package,
each step timed from outside (ORT segments, fused TVM blocks, TVM 1×1 layers, adds) and
the Python loop's share, and each fused block stage by stage (the block compiled up to
each stage, :func:`ofa_search.binary.tvm_block.stage_program`). Also the cost of one
``session.run`` call on a trivial model.

Prints tables and writes ``OUT`` (default ``results/bench_precision_mbv3.json``)
atomically, with the host (CPU model, int8 / popcount flags, package versions).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _record import sanitized_command
from _timing import Runner, interleaved

SPACE = "ofa_mbv3_mp"
# binary-no-shortcut: the binary variant of a supernet trained with --binary-ablation
# shortcut (binary convs without their real-valued shortcut): what the shortcuts cost
VARIANTS = ("fp32", "int8", "binary", "binary-no-shortcut")
DEFAULT_VARIANTS = VARIANTS[:3]
TARGETS = {"int8": 2.0, "binary": 2.5}  # end-to-end speed-up over fp32, 224 px, 1 thread
TARGET_RESOLUTION = 224
CPU_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_vpopcntdq",
             "amx_int8")
LAYOUT_OPS = frozenset({"ReorderInput", "ReorderOutput", "Transpose"})
QUANT_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
CONV_OPS = frozenset({"Conv", "FusedConv", "QLinearConv", "ConvInteger", "NhwcFusedConv"})


def affinity() -> list[int] | None:
    """This thread's cores. TVM's thread-pool configuration (every BinaryPackage.run) pinned
    the calling thread to one core until ofa_search.binary._tvm.set_threads restored it;
    each row records the affinity after its binary run (a check of that fix)."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


# -- command line and host ---------------------------------------------------------------

def host_record() -> dict[str, Any]:
    from ofa_search.ort_options import int8_needs_exact_kernels
    from ofa_search.profiling.host import cpu_flags, host_info, read_cpuinfo

    flags = cpu_flags(read_cpuinfo())
    info = host_info()
    info["int8_popcount_flags"] = {flag: flag in flags for flag in CPU_FLAGS}
    # ONNX Runtime's exact u8×u8 kernels (session.x64quantprecision): only without VNNI
    info["ort_exact_int8_kernels"] = int8_needs_exact_kernels()
    return info


# -- models --------------------------------------------------------------------------------

def ort_options(threads: int, *, profile_dir: Path | None = None,
                optimized_path: Path | None = None) -> Any:
    """The session options of the project's runtimes (exact int8, sequential, ENABLE_ALL)."""
    import onnxruntime as ort

    from ofa_search.ort_options import exact_int8

    options = exact_int8(ort.SessionOptions())
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_dir is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_dir / "profile")
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
        options.log_severity_level = 3  # the NCHWc serialisation warning
    return options


def ort_session(model: bytes, threads: int, **kwargs: Any) -> Any:
    """A session with the project's options."""
    import onnxruntime as ort

    return ort.InferenceSession(model, ort_options(threads, **kwargs),
                                providers=["CPUExecutionProvider"])


def ort_runner(session: Any, x: np.ndarray) -> Runner:
    feeds = {session.get_inputs()[0].name: x}
    return lambda: session.run(None, feeds)


def _bind(run: Callable[[np.ndarray], object], x: np.ndarray) -> Runner:
    return lambda: run(x)


def seeded_images(n: int, resolution: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, resolution, resolution)).astype(np.float32)


# -- timing --------------------------------------------------------------------------------

def call_overhead_us(threads: int, calls: int = 2000) -> float:
    """Median µs of one ``session.run`` on a one-node model (Identity on 16 floats)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 1, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    run = ort_runner(ort_session(model.SerializeToString(), threads),
                     np.zeros((1, 16, 1, 1), np.float32))
    for _ in range(100):
        run()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times)


# -- ONNX Runtime profile breakdown ---------------------------------------------------------

def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def node_kind(node: Any, inits: dict[str, tuple[int, ...]],
              output_shape: Sequence[int] | None) -> tuple[str, str]:
    """(category, fine kind) of an optimized-graph node; see the module docstring."""
    op = node.op_type
    if op in CONV_OPS:
        precision = "int8" if op in ("QLinearConv", "ConvInteger") else "fp32"
        attrs = _attrs(node)
        group = int(attrs.get("group", 1))
        kernel = list(attrs.get("kernel_shape") or [])
        if not kernel:
            weight = inits.get(node.input[3 if op == "QLinearConv" else 1], ())
            kernel = list(weight[2:])
        k = "x".join(map(str, kernel)) or "?"
        if group > 1:
            return f"conv dw {precision}", f"{precision} dw {k} s{_stride(attrs)}"
        spatial = list(output_shape[1:3] if attrs.get("channels_last") else
                       output_shape[2:]) if output_shape else []
        if kernel == [1, 1] and spatial and all(int(d) == 1 for d in spatial):
            return f"conv 1x1@1x1 {precision}", f"{precision} 1x1@1x1 (SE, head)"
        if kernel == [1, 1]:
            return f"conv 1x1 {precision}", f"{precision} 1x1"
        return f"conv other {precision}", f"{precision} {k} s{_stride(attrs)}"
    if op in LAYOUT_OPS:
        return "layout", op
    if op in QUANT_OPS:
        return "(de)quantize", op
    if op in ("Gemm", "MatMul", "GlobalAveragePool", "Flatten"):
        return "head / pooling", op
    return "elementwise / other", op


def _stride(attrs: dict[str, Any]) -> int:
    strides = attrs.get("strides") or [1]
    return int(strides[0])


def ort_profile(model: bytes, x: np.ndarray, threads: int, runs: int,
                warmup: int = 3) -> dict[str, Any]:
    """One profiled session of ``model``: per-inference ms by category, conv kind and op
    type (means over ``runs`` profiled runs after ``warmup``), the executor's overhead and
    the slowest nodes. Profiling adds some time per node: compare categories, not totals
    with the timed rows."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        optimized = folder / "optimized.onnx"
        session = ort_session(model, threads, profile_dir=folder, optimized_path=optimized)
        run = ort_runner(session, x)
        for _ in range(warmup + runs):
            run()
        events = json.loads(Path(session.end_profiling()).read_text())
        graph = onnx.load(str(optimized), load_external_data=False).graph
    inits = {i.name: tuple(int(d) for d in i.dims) for i in graph.initializer}
    nodes = {n.name: n for n in graph.node}
    model_runs = sorted((e for e in events if e.get("cat") == "Session"
                         and e.get("name") == "model_run"), key=lambda e: e["ts"])[warmup:]
    start = model_runs[0]["ts"]
    n = len(model_runs)
    by_category: dict[str, float] = defaultdict(float)
    by_kind: dict[str, float] = defaultdict(float)
    by_op: dict[str, float] = defaultdict(float)
    count_kind: dict[str, int] = defaultdict(int)
    per_node: dict[str, float] = defaultdict(float)
    shapes: dict[str, Any] = {}
    unknown = 0
    suffix = "_kernel_time"
    for e in events:
        if e.get("cat") != "Node" or e["ts"] < start or not e["name"].endswith(suffix):
            continue
        name = e["name"][:-len(suffix)]
        node = nodes.get(name)
        args = e.get("args", {})
        out_shapes = [next(iter(s.values())) for s in args.get("output_type_shape", [])]
        if node is None:
            unknown += 1
            category, kind = "elementwise / other", str(args.get("op_name", "?"))
        else:
            category, kind = node_kind(node, inits, out_shapes[0] if out_shapes else None)
        ms = e["dur"] / 1e3 / n
        by_category[category] += ms
        by_kind[kind] += ms
        by_op[str(args.get("op_name", "?"))] += ms
        per_node[name] += ms
        if name not in shapes:
            count_kind[kind] += 1
            shapes[name] = {"kind": kind, "op": args.get("op_name"),
                            "input": [next(iter(s.values()))
                                      for s in args.get("input_type_shape", [])[:1]],
                            "output": out_shapes[:1]}
    run_ms = statistics.median(e["dur"] / 1e3 for e in model_runs)
    node_ms = sum(by_category.values())
    top = sorted(per_node.items(), key=lambda kv: -kv[1])[:10]
    ops = [n.op_type for n in graph.node]
    return {
        "profiled_runs": n, "run_ms": run_ms, "node_ms": node_ms,
        "executor_overhead_ms": run_ms - node_ms, "nodes": len(graph.node),
        "by_category_ms": dict(sorted(by_category.items(), key=lambda kv: -kv[1])),
        "by_kind_ms": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
        "by_kind_count": dict(count_kind),
        "by_op_ms": dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
        "graph_counts": {"layout": sum(op in LAYOUT_OPS for op in ops),
                         "quant": sum(op in QUANT_OPS for op in ops),
                         "fp32_conv": sum(op in ("Conv", "FusedConv", "NhwcFusedConv")
                                          for op in ops),
                         "int8_conv": sum(op in ("QLinearConv", "ConvInteger")
                                          for op in ops)},
        "top_nodes": [{"node": name, "ms": ms, **shapes.get(name, {})} for name, ms in top],
        "unmatched_nodes": unknown,
    }


# -- binary package breakdown ---------------------------------------------------------------

def _segment_label(model: bytes) -> str:
    import onnx

    graph = onnx.load_from_string(model).graph
    dw = other = 0
    for node in graph.node:
        if node.op_type == "Conv":
            if int(_attrs(node).get("group", 1)) > 1:
                dw += 1
            else:
                other += 1
    parts = [f"{dw} dw"] if dw else []
    if other:
        parts.append(f"{other} conv")
    if any(n.op_type == "Gemm" for n in graph.node):
        parts.append("head")
    return "ort segment (" + (", ".join(parts) or "no conv") + ")"


def binary_steps(package: Any, x: np.ndarray, runs: int, warmup: int = 3) -> dict[str, Any]:
    """Each step of ``package.run`` timed from outside (median over ``runs``), replaying
    :meth:`BinaryPackage.run`'s loop on the package's own sessions and TVM functions; the
    end-to-end median of ``package.run`` itself (timed alternately with the replay) and the
    loop's own time (median over runs of the replay's wall time minus its steps' times).
    ``steps_ms`` and the per-category values are sums of per-step medians (robust to a
    noisy host; the end-to-end median is not, so the parts need not add up to it)."""
    from ofa_search.binary.program import INPUT, AddStep, BinaryStep

    # the runtime's own objects (private: this replays BinaryPackage.run step by step)
    sessions = package._sessions
    input_names = package._input_names
    layers = package._layers
    blocks = package._blocks
    program = package.program
    steps = program.steps
    labels: dict[int, tuple[str, str]] = {}
    specs: dict[int, Any] = {}  # each fused block's compiled shape (for block_stages)
    times: dict[int, list[float]] = defaultdict(list)
    glue: list[float] = []
    e2e: list[float] = []
    for it in range(warmup + runs):
        begin = time.perf_counter()
        values: dict[str, np.ndarray] = {INPUT: np.ascontiguousarray(x, dtype=np.float32)}
        index = 0
        step_sum = 0.0
        while index < len(steps):
            step = steps[index]
            fused = blocks.get(index)
            start = time.perf_counter()
            if fused is not None:
                plan, block = fused
                specs[index] = block.spec(values[plan.input].shape)
                values[plan.output] = block(values[plan.input])
                category = "tvm fused block (1x1 + dw + 1x1)"
                label = (f"fused block {plan.expand.in_channels}->{plan.expand.out_channels}"
                         f"->{plan.project.out_channels} k{plan.depthwise.kernel}"
                         f" s{plan.depthwise.stride}")
                key, index = index, plan.last_step + 1
            else:
                key = index
                index += 1
                if isinstance(step, AddStep):
                    out = values[step.left] + values[step.right]
                    category = label = "add (numpy)"
                elif isinstance(step, BinaryStep):
                    out = layers[step.layer](values[step.input])
                    category = "tvm binary 1x1 (unfused)"
                    label = f"binary 1x1 layer {step.layer}"
                else:
                    (out,) = sessions[step.segment].run(
                        None, {input_names[step.segment]: values[step.input]})
                    category = "ort segments"
                    label = (labels[key][1] if key in labels
                             else _segment_label(program.segments[step.segment]))
                values[step.output] = out
            elapsed = 1e3 * (time.perf_counter() - start)
            labels[key] = (category, label)
            step_sum += elapsed
            if it >= warmup:
                times[key].append(elapsed)
        wall = 1e3 * (time.perf_counter() - begin)
        start = time.perf_counter()  # the runtime itself, alternating with the replay
        package.run(x)
        if it >= warmup:
            e2e.append(1e3 * (time.perf_counter() - start))
            glue.append(wall - step_sum)
    per_step: list[dict[str, Any]] = [
        {"step": key, "category": labels[key][0], "label": labels[key][1],
         "ms": statistics.median(values)} for key, values in sorted(times.items())]
    by_category: dict[str, float] = defaultdict(float)
    for row in per_step:
        by_category[row["category"]] += row["ms"]
    total = float(sum(row["ms"] for row in per_step))
    return {"run_ms": statistics.median(e2e), "steps_ms": total,
            "python_loop_ms": statistics.median(glue),
            "backend": package.backend, "fused_blocks": package.fused_blocks,
            "steps": len(steps), "executed_steps": len(per_step),
            "ort_segments": len(program.segments), "binary_layers": len(program.layers),
            "by_category_ms": dict(sorted(by_category.items(), key=lambda kv: -kv[1])),
            "per_step": per_step,
            "block_stages": block_stages([(labels[key][1], spec)
                                          for key, spec in sorted(specs.items())], runs)}


def block_stages(blocks: list[tuple[str, Any]], runs: int,
                 rounds: int = 5) -> list[dict[str, Any]]:
    """What each stage of each fused block costs: the block compiled up to each stage in
    turn (:func:`ofa_search.binary.tvm_block.stage_program`: expand = bit packing, expand
    GEMM, BN, shortcut and activation into the zero-bordered NHWC tensor; depthwise;
    squeeze-excite; nchw = the gated channels the project's shortcut reads, copied to NCHW;
    project = bit packing, project GEMM, BN, shortcuts), each prefix timed on seeded random
    arguments (``runs`` calls per round, prefixes interleaved over ``rounds``, median of the
    rounds' means); a stage's cost is its prefix minus the one before."""
    from ofa_search.binary._tvm import import_tvm
    from ofa_search.binary.tvm_block import STAGES, stage_program

    tvm = import_tvm()
    rng = np.random.default_rng(0)
    out = []
    for label, spec in blocks:
        stages = [st for st in STAGES if st != "squeeze_excite" or spec.se_channels]
        calls = {}
        for stage in stages:
            func, shapes = stage_program(spec, stage)
            args = [tvm.runtime.tensor(
                rng.integers(0, 2**63, size=shape, dtype=np.uint64) if dtype == "uint64"
                else (0.5 * rng.standard_normal(shape)).astype(dtype), tvm.cpu())
                for shape, dtype in shapes]
            calls[stage] = (func, args)
        samples: dict[str, list[float]] = defaultdict(list)
        for r in range(rounds + 1):  # the first round warms up
            for stage in stages:
                func, args = calls[stage]
                start = time.perf_counter()
                for _ in range(runs):
                    func(*args)
                if r:
                    samples[stage].append(1e3 * (time.perf_counter() - start) / runs)
        cumulative = {st: statistics.median(samples[st]) for st in stages}
        previous = 0.0
        stage_ms = {}
        for st in stages:
            stage_ms[st] = cumulative[st] - previous
            previous = cumulative[st]
        out.append({"label": label, "spec": dataclasses.asdict(spec), "stage_ms": stage_ms,
                    "block_ms": cumulative["project"]})
    return out


# -- one (subnet, resolution) ---------------------------------------------------------------

def measure(supernet: Any, arch: Any, variants: Sequence[str], args: argparse.Namespace,
            breakdown: bool) -> dict[str, Any]:
    """Build the artefacts of ``arch`` (one per variant), time them side by side and, with
    ``breakdown``, profile them."""
    from ofa_search.binary.package import write_binary_package
    from ofa_search.binary.runtime import BinaryPackage
    from ofa_search.nn.extract import extract
    from ofa_search.onnx_export import export_onnx
    from ofa_search.quant.ptq import export_int8_ptq

    n_stages = arch.search_space.num_stages
    res = arch.resolution
    x = seeded_images(1, res, args.seed + 1)
    row: dict[str, Any] = {"arch": arch.to_string(), "resolution": res, "build_s": {}}
    models: dict[str, Runner] = {}
    onnx_bytes: dict[str, bytes] = {}
    package = None
    with tempfile.TemporaryDirectory() as tmp:
        for variant in variants:
            start = time.perf_counter()
            precision = "binary" if variant.startswith("binary") else variant
            supernet.set_binary_ablation({"shortcut"} if variant == "binary-no-shortcut"
                                         else ())
            net = extract(supernet, arch.replace(precisions=(precision,) * n_stages)).eval()
            supernet.set_binary_ablation(())
            if variant == "binary-no-shortcut":
                path = write_binary_package(net, Path(tmp) / "no_shortcut.ofab")
                models[variant] = _bind(BinaryPackage.load(path, threads=args.threads).run, x)
                models[variant]()  # compiles the TVM functions of shapes not seen before
            elif variant == "binary":
                path = write_binary_package(net, Path(tmp) / "model.ofab")
                row["binary_package_bytes"] = path.stat().st_size
                written = time.perf_counter()
                package = BinaryPackage.load(path, threads=args.threads)
                loaded = time.perf_counter()
                package.run(x)  # compiles the TVM functions of shapes not seen before
                row["binary_build_detail_s"] = {
                    "extract_and_write": written - start, "load": loaded - written,
                    "first_run_compile": time.perf_counter() - loaded}
                row["affinity_after_binary_run"] = affinity()
                models["binary"] = _bind(package.run, x)
                row["binary_backend"] = package.backend
                row["binary_fused_blocks"] = package.fused_blocks
                row["binary_ort_segments"] = len(package.program.segments)
                row["binary_layers"] = len(package.program.layers)
            else:
                if variant == "fp32":
                    model = export_onnx(net, net.input_shape(1))
                else:
                    calib = [seeded_images(args.calib_images, res, args.seed + 2)]
                    model = export_int8_ptq(net, calib, threads=args.threads)
                onnx_bytes[variant] = model.SerializeToString()
                models[variant] = ort_runner(ort_session(onnx_bytes[variant], args.threads), x)
                if variant == "fp32":  # a second session of the same model: the noise floor
                    models["fp32'"] = ort_runner(ort_session(onnx_bytes[variant],
                                                             args.threads), x)
            row["build_s"][variant] = time.perf_counter() - start
        timing = interleaved(models, args.rounds, args.runs)
        row["timing"] = timing
        ms = {name: t["median_ms"] for name, t in timing.items()}
        row["ms"] = ms
        if "fp32" in ms:
            row["speedup"] = {v: ms["fp32"] / ms[v] for v in VARIANTS[1:] if v in ms}
            row["noise_ratio"] = ms["fp32"] / ms["fp32'"]
        if breakdown:
            row["breakdown"] = {variant: ort_profile(onnx_bytes[variant], x, args.threads,
                                                     args.profile_runs)
                                for variant in onnx_bytes}
            if package is not None:
                row["breakdown"]["binary"] = binary_steps(package, x, args.profile_runs)
    return row


# -- tables ---------------------------------------------------------------------------------

def _f(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def print_rows(rows: list[dict[str, Any]]) -> None:
    twin = "fp32'"
    print(f"\n{'#':>3} {'res':>4} {'fp32 ms':>8} {twin + ' ms':>8} {'int8 ms':>8} "
          f"{'bin ms':>8} {'int8 x':>7} {'bin x':>6} {'noise':>6}  arch")
    for r in rows:
        ms, sp = r["ms"], r.get("speedup", {})
        noise = r.get("noise_ratio")
        print(f"{r['subnet']:>3} {r['resolution']:>4} {_f(ms.get('fp32')):>8} "
              f"{_f(ms.get(twin)):>8} {_f(ms.get('int8')):>8} "
              f"{_f(ms.get('binary')):>8} {_f(sp.get('int8')):>7} {_f(sp.get('binary')):>6} "
              f"{_f(None if noise is None else abs(noise - 1), '.1%'):>6}  {r['arch']}")


def summarize(rows: list[dict[str, Any]], resolutions: Sequence[int]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for res in resolutions:
        at = [r for r in rows if r["resolution"] == res]
        entry: dict[str, Any] = {"subnets": len(at)}
        for variant in VARIANTS[1:]:
            speeds = [r["speedup"][variant] for r in at if variant in r.get("speedup", {})]
            if speeds:
                entry[variant] = {"n": len(speeds), "median_speedup": statistics.median(speeds),
                                  "min_speedup": min(speeds), "max_speedup": max(speeds)}
                if res == TARGET_RESOLUTION and variant in TARGETS:
                    entry[variant]["target"] = TARGETS[variant]
                    entry[variant]["meets_target"] = (statistics.median(speeds)
                                                      >= TARGETS[variant])
        noise = [abs(r["noise_ratio"] - 1) for r in at if "noise_ratio" in r]
        if noise:
            entry["noise_floor"] = {"median_abs_ratio_minus_1": statistics.median(noise),
                                    "max_abs_ratio_minus_1": max(noise)}
        summary[str(res)] = entry
    return summary


def print_summary(summary: dict[str, Any], threads: int) -> None:
    print(f"\nsummary ({threads} thread(s)): speed-up over fp32, median [min, max]")
    for res, entry in summary.items():
        parts = []
        for variant in VARIANTS[1:]:
            s = entry.get(variant)
            if s:
                target = (f", target {s['target']:.1f}x "
                          f"{'met' if s['meets_target'] else 'NOT met'}") if "target" in s else ""
                parts.append(f"{variant} {s['median_speedup']:.2f}x "
                             f"[{s['min_speedup']:.2f}, {s['max_speedup']:.2f}] "
                             f"(n={s['n']}{target})")
        noise = entry.get("noise_floor")
        if noise:
            parts.append(f"noise floor {noise['median_abs_ratio_minus_1']:.1%}")
        print(f"  {res} px: " + "; ".join(parts))


def print_breakdown(row: dict[str, Any]) -> None:
    b = row["breakdown"]
    print(f"\nbreakdown: subnet {row['subnet']} at {row['resolution']} px ({row['arch']})")
    ort_variants = [v for v in ("fp32", "int8") if v in b]
    if ort_variants:
        cats = list(dict.fromkeys(c for v in ort_variants for c in b[v]["by_category_ms"]))
        print(f"  {'ORT profile, ms/inference':<32}" + "".join(f"{v:>9}" for v in ort_variants))
        for cat in cats:
            print(f"  {cat:<32}" + "".join(f"{_f(b[v]['by_category_ms'].get(cat), '.3f'):>9}"
                                           for v in ort_variants))
        for key, label in (("node_ms", "sum of nodes"), ("executor_overhead_ms",
                                                         "executor overhead"),
                           ("run_ms", "model_run (profiled)")):
            print(f"  {label:<32}" + "".join(f"{b[v][key]:>9.3f}" for v in ort_variants))
        print(f"  {'graph: layout / Q-DQ nodes':<32}" + "".join(
            f"{b[v]['graph_counts']['layout']:>5}/{b[v]['graph_counts']['quant']:<3}"
            for v in ort_variants))
        for v in ort_variants:
            other = [(op, ms) for op, ms in b[v]["by_op_ms"].items() if op not in CONV_OPS]
            print(f"  {v} non-conv ops: " + ", ".join(f"{op} {ms:.3f}" for op, ms in other[:6]))
        kinds = list(dict.fromkeys(k for v in ort_variants for k in b[v]["by_kind_ms"]
                                   if " dw " in k or "1x1" in k))
        print("  conv kinds (ms, count):")
        for kind in sorted(kinds):
            print(f"    {kind:<28}" + "".join(
                f"{_f(b[v]['by_kind_ms'].get(kind), '.3f'):>9} "
                f"({b[v]['by_kind_count'].get(kind, 0):>2})" for v in ort_variants))
    if "binary" in b:
        bb = b["binary"]
        print(f"  binary package ({bb['backend']}, {bb['fused_blocks']} fused blocks, "
              f"{bb['ort_segments']} ORT segments, {bb['binary_layers']} binary layers), "
              "steps timed from outside:")
        for cat, ms in bb["by_category_ms"].items():
            print(f"    {cat:<34}{ms:>9.3f}")
        print(f"    {'sum of steps':<34}{bb['steps_ms']:>9.3f}")
        print(f"    {'python loop / glue':<34}{bb['python_loop_ms']:>9.3f}")
        print(f"    {'end to end (package.run)':<34}{bb['run_ms']:>9.3f}")
        slow = sorted(bb["per_step"], key=lambda st: -st["ms"])[:3]
        print("    slowest steps: " + "; ".join(f"{st['label']} {st['ms']:.3f}" for st in slow))
        if bb.get("block_stages"):
            names = ("expand", "depthwise", "squeeze_excite", "nchw", "project")
            print("  fused blocks stage by stage (ms; each stage = its prefix minus the one "
                  "before; 112/56/28/14/7 = input side):")
            print(f"    {'block':<34}" + "".join(f"{n[:9]:>10}" for n in names)
                  + f"{'block':>9}")
            for blk in bb["block_stages"]:
                side = blk["spec"]["height"]
                print(f"    {blk['label'] + f' @{side}':<34}" + "".join(
                    f"{_f(blk['stage_ms'].get(n), '.3f'):>10}" for n in names)
                    + f"{blk['block_ms']:>9.3f}")


# -- main -----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", type=Path,
                        default=Path("results/bench_precision_mbv3.json"))
    parser.add_argument("--subnets", type=int, default=20)
    parser.add_argument("--binary-subnets", type=int, default=None,
                        help="binary packages for the first N subnets only (default: all)")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[160, 224])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument("--runs", type=int, default=5, help="timed calls per model and round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS,
                        default=list(DEFAULT_VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calib-images", type=int, default=8,
                        help="standard-normal images for int8 PTQ calibration")
    parser.add_argument("--breakdown-subnets", type=int, default=2,
                        help="subnets profiled (at 224 px, or the largest resolution)")
    parser.add_argument("--profile-runs", type=int, default=20)
    args = parser.parse_args(argv)
    if min(args.subnets, args.rounds, args.runs, args.threads, args.calib_images) < 1:
        parser.error("--subnets, --rounds, --runs, --threads, --calib-images must be >= 1")
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))  # before TVM starts its pool
    import torch

    from ofa_search.arch import Arch
    from ofa_search.atomic import atomic_write_json
    from ofa_search.binary._tvm import tvm_available
    from ofa_search.nn import Supernet
    from ofa_search.profiling.lut import now_iso
    from ofa_search.space import get_space

    start_affinity = affinity()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    supernet = Supernet(get_space(SPACE), 1.0).eval()
    rng = np.random.default_rng(args.seed)
    fp32 = ("fp32",) * get_space(SPACE).num_stages  # the arch's name; each variant sets its own
    archs = [Arch.sample(SPACE, rng, width_mult=1.0).replace(precisions=fp32)
             for _ in range(args.subnets)]
    binary_subnets = args.subnets if args.binary_subnets is None else args.binary_subnets
    breakdown_res = (TARGET_RESOLUTION if TARGET_RESOLUTION in args.resolutions
                     else max(args.resolutions))
    backend = "tvm" if tvm_available() else "numpy"
    notes = [
        "weights: untrained Supernet(ofa_mbv3_mp, 1.0) with torch.manual_seed(seed); "
        "latency does not depend on trained values",
        f"int8: ONNX Runtime PTQ (QDQ), calibrated on {args.calib_images} seeded "
        "standard-normal images",
        "binary: every stage binary (1x1 convs binary; depthwise, SE, stem and head fp32)",
        "CPU affinity: each row records the affinity after its binary run "
        "(affinity_after_binary_run; TVM's thread-pool setup no longer pins the caller)",
        f"binary backend: {backend}" + ("" if backend == "tvm" else
                                        " (NumPy fallback: NOT a fair speed number)"),
    ]
    if binary_subnets < args.subnets and "binary" in args.variants:
        notes.append(f"binary packages for the first {binary_subnets} of {args.subnets} "
                     "subnets only")
    for note in notes:
        print(note)
    overhead = call_overhead_us(args.threads)
    print(f"ORT session.run on a one-node model: {overhead:.1f} us per call")
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for i, base in enumerate(archs):
        variants = [v for v in args.variants if not v.startswith("binary") or i < binary_subnets]
        for res in args.resolutions:
            arch = base.replace(resolution=res)
            t0 = time.perf_counter()
            row = measure(supernet, arch, variants, args,
                          breakdown=res == breakdown_res and i < args.breakdown_subnets)
            row["subnet"] = i
            row["wall_s"] = time.perf_counter() - t0
            rows.append(row)
            sp = row.get("speedup", {})
            print(f"[{i + 1}/{args.subnets} {res} px] "
                  + " ".join(f"{k} {v:.2f} ms" for k, v in row["ms"].items())
                  + "".join(f", {k} {v:.2f}x" for k, v in sp.items())
                  + "; build " + " ".join(f"{k} {v:.1f} s" for k, v in row["build_s"].items())
                  + f"; {row['wall_s']:.1f} s", flush=True)
    print_rows(rows)
    summary = summarize(rows, args.resolutions)
    print_summary(summary, args.threads)
    for row in rows:
        if "breakdown" in row:
            print_breakdown(row)
    report = {
        "benchmark": "precision_mbv3", "created": now_iso(),
        "command": sanitized_command("bench_precision_mbv3.py",
                                     sys.argv[1:] if argv is None else argv),
        "space": SPACE, "width_mult": 1.0, "batch": 1, "threads": args.threads,
        "seed": args.seed, "rounds": args.rounds, "runs_per_round": args.runs,
        "resolutions": args.resolutions, "variants": args.variants,
        "subnets": args.subnets, "binary_subnets": min(binary_subnets, args.subnets),
        "targets": {"resolution": TARGET_RESOLUTION, "threads": 1,
                    "speedup_over_fp32": TARGETS},
        "notes": notes, "binary_backend": backend, "host": host_record(),
        "start_affinity": start_affinity,
        "ort_call_overhead_us": overhead, "wall_s": time.perf_counter() - started,
        "summary": summary, "rows": rows,
    }
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
