"""Precision benchmark: kernels, Fashion-MNIST models at fp32 / int8 / binary, and the
Pareto fronts of fp32-only vs any precision.

    python scripts/bench_precision.py [--kernels] [--models] [--fronts]
        [--workspace W] [--device ID] [--fp32-checkpoint C] [--n-eval 2000]
        [--threads 1] [--out results/bench_precision.json]

``--kernels``: the binary conv (TVM and NumPy) and int8 ORT vs ONNX Runtime fp32 on the
same shapes (:mod:`ofa_search.binary.benchmark`, :mod:`ofa_search.quant.benchmark`).
``--models``: three archs of the workspace's mixed-precision supernet as fp32 ONNX, int8
QAT and PTQ QDQ ONNX and a binary package (:mod:`ofa_search.precision.benchmark`).
``--fronts``: each precision mode's front on ``--device`` (built if missing), the
any-precision front (their Pareto union) and a plot ``precision_fronts.png`` beside the
JSON; also what the device's table says of int8 and binary units against their fp32
twins, and the table's prediction for each artefact of ``--models`` (from this file) next
to its measured latency. Sections not asked for are kept from an earlier run of the same
output file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ofa_search.arch import Arch
from ofa_search.atomic import atomic_write_json
from ofa_search.profiling.lut import now_iso
from ofa_search.workspace import Workspace


def kernels(threads: int) -> dict[str, Any]:
    from ofa_search.binary.benchmark import dispatch_notes, format_rows, kernel_rows
    from ofa_search.quant.benchmark import cpu_int8_support
    from ofa_search.quant.benchmark import format_rows as format_int8
    from ofa_search.quant.benchmark import kernel_rows as int8_rows

    binary, int8 = kernel_rows(threads), int8_rows(threads)
    print(format_rows(binary))
    print()
    print(format_int8(int8))
    return {"binary": binary, "int8": int8, "dispatch": dispatch_notes(threads),
            "cpu_int8": cpu_int8_support()}


def models(ws: Workspace, fp32_checkpoint: str, n_eval: int, threads: int) -> list[dict]:
    from ofa_search.data import load_dataset
    from ofa_search.precision.benchmark import model_rows
    from ofa_search.train import load_supernet

    _, meta = load_supernet(ws.checkpoint)
    space = meta["space"]
    mid = Arch.parse("r28_w1.0_k5e4-k5e4-k5e4_k5e4-k5e4-k5e4_k5e4-k5e4-k5e4_k5e4-k5e4-k5e4",
                     space)
    archs = [Arch.smallest(space).replace(resolution=28), mid,
             Arch.largest(space).replace(resolution=28)]
    data = load_dataset(meta["config"]["dataset"], in_channels=1, resolution=28)
    rows = model_rows(ws.checkpoint, fp32_checkpoint, archs, data, n_eval=n_eval,
                      threads=threads, log=print)
    print(f"\n{'arch':<12} {'variant':<9} {'torch %':>8} {'artefact %':>10} {'KiB':>7} "
          f"{'ms':>7} {'x fp32':>7}")
    for r in rows:
        speed = r["speedup_vs_fp32"]
        print(f"{r['arch'][:12]:<12} {r['variant']:<9} {100 * r['torch_test_accuracy']:>8.2f} "
              f"{100 * r['artefact_accuracy']:>10.2f} {r['size_bytes'] / 1024:>7.0f} "
              f"{r['latency_ms']:>7.3f} {'' if speed is None else f'{speed:.2f}':>7}")
    return rows


def fronts(ws: Workspace, device: str, plot: Path) -> dict[str, Any]:
    from ofa_search.search import QueryEngine, build_front

    engine = QueryEngine(ws)
    out: dict[str, Any] = {}
    for mode in engine.modes(device):
        front = engine.front(device, mode)
        if front is None:
            front, _ = build_front(ws, device, mode, n_trials=3000)
        out[mode] = [{"arch": p.arch.to_string(), "latency_ms": p.predicted_latency_ms,
                      "accuracy": p.predicted_accuracy} for p in front.points]
    union = sorted((p for pts in out.values() for p in pts), key=lambda p: p["latency_ms"])
    best = -1.0
    out["any"] = []
    for p in union:
        if p["accuracy"] > best:
            out["any"].append(p)
            best = p["accuracy"]
    _plot(out, plot, device)
    for mode, pts in out.items():
        print(f"{mode:<7} {len(pts):>4} points, {pts[0]['latency_ms']:.3f}–"
              f"{pts[-1]['latency_ms']:.3f} ms, accuracy {100 * pts[0]['accuracy']:.2f}–"
              f"{100 * pts[-1]['accuracy']:.2f} %")
    return out


def unit_costs(ws: Workspace, device: str) -> dict[str, Any]:
    """Each low-precision unit's median latency over its fp32 twin's, summarised."""
    import numpy as np

    from ofa_search.profiling.lut import find_table

    table = find_table(device, workspace=ws.root)
    fp32 = {k.rsplit(":", 1)[0]: e["median_ms"] for k, e in table.entries.items()
            if k.endswith(":fp32")}
    out: dict[str, Any] = {}
    for precision in ("int8", "binary"):
        ratios = np.array([e["median_ms"] / fp32[k.rsplit(":", 1)[0]]
                           for k, e in table.entries.items() if k.endswith(f":{precision}")])
        if ratios.size:
            out[precision] = {"units": int(ratios.size), "median": float(np.median(ratios)),
                              "p10": float(np.percentile(ratios, 10)),
                              "p90": float(np.percentile(ratios, 90)),
                              "share_faster": float((ratios < 1).mean())}
            print(f"{precision} units vs fp32: median {out[precision]['median']:.2f}x, "
                  f"p10–p90 {out[precision]['p10']:.2f}–{out[precision]['p90']:.2f}x, "
                  f"{100 * out[precision]['share_faster']:.0f} % faster")
    return out


def predicted_vs_measured(rows: list[dict], ws: Workspace, device: str) -> list[dict]:
    """The table's prediction for each model row's artefact next to its measured latency."""
    from ofa_search.profiling.lut import find_table

    table = find_table(device, workspace=ws.root)
    precision = {"fp32": "fp32", "int8-qat": "int8", "int8-ptq": "int8", "binary": "binary"}
    out = []
    for r in rows:
        arch = Arch.parse(r["arch"], table.space)
        arch = arch.replace(precisions=(precision[r["variant"]],) * len(arch.depths))
        predicted = table.predict(arch)
        error = 100 * (r["latency_ms"] - predicted) / predicted
        out.append({"arch": r["arch"], "variant": r["variant"], "predicted_ms": predicted,
                    "measured_ms": r["latency_ms"], "error_pct": error})
        print(f"{r['arch'][:14]:<14} {r['variant']:<9} predicted {predicted:.3f} ms, "
              f"measured {r['latency_ms']:.3f} ms ({error:+.0f} %)")
    return out


def _plot(points: dict[str, list[dict]], path: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ofa_search.demo.plot import save_png

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    styles = {"fp32": ("0.3", "-"), "int8": ("tab:blue", ":"), "binary": ("tab:red", ":"),
              "any": ("tab:green", "-")}
    for mode, pts in points.items():
        color, line = styles.get(mode, ("0.5", "-"))
        ax.step([p["latency_ms"] for p in pts], [100 * p["accuracy"] for p in pts],
                where="post", color=color, linestyle=line, label=mode,
                linewidth=2 if mode in ("fp32", "any") else 1)
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel("predicted accuracy (%)")
    ax.set_title(f"Pareto fronts on {device}: fp32 only vs any precision")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    save_png(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kernels", action="store_true")
    parser.add_argument("--models", action="store_true")
    parser.add_argument("--fronts", action="store_true")
    parser.add_argument("--workspace", type=Path, default=Path("ofa-workspace"))
    parser.add_argument("--device", default="cpu-ort-1t-mp28")
    parser.add_argument("--fp32-checkpoint", default=None,
                        help="the fp32 supernet the workspace's was fine-tuned from (PTQ)")
    parser.add_argument("--n-eval", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("results/bench_precision.json"))
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {}
    if args.out.exists():
        report = json.loads(args.out.read_text())
    report["date"] = now_iso()
    report["command"] = "python scripts/bench_precision.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    ws = Workspace(args.workspace)
    if args.kernels:
        report["kernels"] = kernels(args.threads)
    if args.models:
        if args.fp32_checkpoint is None:
            parser.error("--models needs --fp32-checkpoint")
        report["models"] = models(ws, args.fp32_checkpoint, args.n_eval, args.threads)
    if args.fronts:
        report["fronts"] = fronts(ws, args.device, args.out.with_name("precision_fronts.png"))
        report["unit_costs"] = unit_costs(ws, args.device)
        if "models" in report:
            report["latency_check"] = predicted_vs_measured(report["models"], ws, args.device)
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
