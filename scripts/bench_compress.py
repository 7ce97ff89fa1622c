"""Search vs pruning vs early exits at equal latency, measured on one device.

    python scripts/bench_compress.py --workspace W --device D [--data fashion-mnist]
        [--budgets 5] [--steps 300] [--exit-steps 300] [--iterations 3] [--exits 0,1,2]
        [--exit-head-width 64] [--exit-label-weight 0]
        [--rounds 5] [--quick] [--resume] [--out results/bench_compress_<data>.json]

``W`` holds a supernet trained on ``--data`` (``W/supernet/checkpoint.pt``), the device's
1-thread ONNX Runtime table, its predictors and its front (``ofa-search demo`` makes one on
digits: ``--data digits --quick`` is the few-minute run on it). For each of ``--budgets``
latency budgets spread geometrically over the device's front:

(a) the searched subnet (``ofa-search query``), extracted, BN recalibrated, then fine-tuned
    for ``--steps`` steps by distillation from the largest subnet at its resolution;
(b) the largest subnet at the same resolution, channel-pruned (L2) to the latency measured
    for (a) — the ratio found by measurement — one-shot and iterative (``--iterations``),
    each fine-tuned for the same ``--steps`` steps from the same teacher;
(c) early exits after stages ``--exits`` (heads distilled for ``--exit-steps`` steps, backbone
    frozen) on any of the searched subnets, thresholds chosen on the validation split for
    the best accuracy at an expected latency (segments measured) of at most (a)'s.

Each searched subnet also gets exits with thresholds for at most 0.5 points of validation
accuracy loss: the issue's target is >= 30 % lower expected latency than the subnet alone
at <= 0.5 points of test accuracy loss. Accuracies are on the test split. Every latency in
the table is measured at the end in two interleaved passes (every model once per round,
``--rounds`` rounds; the second pass against the first is the noise floor); (c)'s is the
expected latency of its segments run in turn. A table is printed, the JSON written
atomically (default ``results/bench_compress_<data>.json``) with a plot beside it
(``--plot-only FILE.json`` redraws the plot of a recorded run). Work files go to
``W/bench_compress_<data>/`` (removed first unless ``--resume``).
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from ofa_search.arch import Arch
from ofa_search.atomic import atomic_write_bytes, atomic_write_json
from ofa_search.compress import exits, prune, ratio_for_latency, resolve_target
from ofa_search.compress.exits import ExitsResult
from ofa_search.compress.latency import Model, measure_models
from ofa_search.compress.prune import PruneResult
from ofa_search.data import load_dataset
from ofa_search.nn import build_static
from ofa_search.onnx_export import INPUT_NAME
from ofa_search.profiling.host import host_info
from ofa_search.profiling.lut import now_iso
from ofa_search.train import load_checkpoint
from ofa_search.workspace import Workspace

FULL = {"budgets": 5, "steps": 300, "exit_steps": 300, "iterations": 3, "rounds": 5,
        "calib_batches": 16, "batch_size": 64}
QUICK = {"budgets": 5, "steps": 12, "exit_steps": 30, "iterations": 2, "rounds": 2,
         "calib_batches": 4, "batch_size": 32}
TARGET_DROP_POINTS = 0.5
TARGET_REDUCTION = 0.30


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workspace", type=Path, default=Path("ofa-workspace"))
    ap.add_argument("--device", default="local-cpu-ort-1t")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--quick", action="store_true", help="a few-minute run (see QUICK)")
    for name in FULL:
        ap.add_argument(f"--{name.replace('_', '-')}", type=int, default=None)
    ap.add_argument("--exits", default="0,1,2", help="stages to put exits after")
    ap.add_argument("--exit-head-width", type=int, default=64)
    ap.add_argument("--exit-label-weight", type=float, default=0.0,
                    help="weight of the label loss beside distillation (0: distillation only)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="keep and resume the work folder")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--plot-only", type=Path, default=None, metavar="JSON",
                    help="redraw the plot (and print the table) of a recorded run, and stop")
    args = ap.parse_args(argv)
    if args.plot_only is not None:
        import json

        recorded: dict[str, Any] = json.loads(args.plot_only.read_text(encoding="utf-8"))
        _plot(recorded, args.plot_only.with_suffix(".png"))
        _print(recorded)
        return recorded
    settings = {k: getattr(args, k) if getattr(args, k) is not None else v
                for k, v in (QUICK if args.quick else FULL).items()}
    stages = tuple(int(s) for s in args.exits.split(","))
    torch.set_num_threads(1)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ws = Workspace(args.workspace)
    trained_on = (load_checkpoint(ws.checkpoint).get("config") or {}).get("dataset")
    if trained_on != args.data:
        sys.exit(f"the supernet of {ws.root} was trained on {trained_on!r}, not {args.data!r}:"
                 f" pass --data {trained_on} or a workspace with a {args.data} supernet")
    target = resolve_target(args.device, ws.root)
    data = load_dataset(args.data, data_dir=args.data_dir, in_channels=1)
    work = ws.root / f"bench_compress_{args.data}"
    if work.exists() and not args.resume:
        shutil.rmtree(work)
    started = time.perf_counter()
    archs, budgets = _searched(ws, args.device, settings["budgets"])
    common = {"device": args.device, "workspace": ws.root, "data": data, "seed": args.seed,
              "calib_batches": settings["calib_batches"], "batch_size": settings["batch_size"],
              "rounds": settings["rounds"], "quiet": True}

    def run_prune(name: str, arch: Arch, **options: Any) -> PruneResult:
        out = work / name
        print(f"[{time.perf_counter() - started:7.1f} s] {name}: {arch.to_string()}",
              flush=True)
        return prune(ws.checkpoint, arch, out, resume=(out / "state.pt").is_file(),
                     finetune_steps=settings["steps"], **common, **options)

    cells: list[dict[str, Any]] = []
    self_exits: list[ExitsResult] = []
    for i, arch in enumerate(archs):
        a = run_prune(f"a{i}", arch, ratio=0.0, teacher="largest")
        assert a.latency is not None
        budget_ms = float(a.latency["measured_ms"])
        largest = Arch.largest(arch.space, arch.width_mult).replace(resolution=arch.resolution)
        # latency depends on the widths only: the ratio is found on a randomly initialised
        # copy, once for both schedules
        fit = ratio_for_latency(build_static(largest, torch.Generator().manual_seed(0)),
                                budget_ms, target, rounds=settings["rounds"])
        b1 = run_prune(f"b{i}_oneshot", largest, ratio=fit.ratio)
        b2 = run_prune(f"b{i}_iterative", largest, ratio=fit.ratio, schedule="iterative",
                       iterations=settings["iterations"])
        out = work / f"e{i}"
        print(f"[{time.perf_counter() - started:7.1f} s] e{i}: exits after {list(stages)}",
              flush=True)
        e = exits(ws.checkpoint, arch, out, resume=(out / "state.pt").is_file(),
                  after_stages=stages, steps=settings["exit_steps"],
                  head_width=args.exit_head_width, label_weight=args.exit_label_weight,
                  max_accuracy_drop=TARGET_DROP_POINTS, basis="measured", **common)
        self_exits.append(e)
        cells.append({"query_budget_ms": budgets[i], "arch": arch, "a": a, "b_oneshot": b1,
                      "b_iterative": b2, "budget_ms": budget_ms, "fit": fit})
    for cell in cells:  # (c): the best cascade over every searched subnet's exits
        cell["c"] = _best_exits(self_exits, cell["budget_ms"])

    print(f"[{time.perf_counter() - started:7.1f} s] final measurement: 2 interleaved passes",
          flush=True)
    models = _models(cells, self_exits)
    passes = [dict(zip(models, (s.median_ms for s in measure_models(
        target, list(models.values()), rounds=settings["rounds"])), strict=True))
        for _ in range(2)]
    report = _report(args, settings, target, cells, self_exits, passes,
                     time.perf_counter() - started)
    out_path = args.out or Path("results") / f"bench_compress_{args.data}.json"
    atomic_write_json(out_path, report)
    _plot(report, out_path.with_suffix(".png"))
    _print(report)
    print(f"wrote {out_path} and {out_path.with_suffix('.png')}")
    return report


def _searched(ws: Workspace, device: str, n: int) -> tuple[list[Arch], list[float]]:
    """The query answers for ``n`` budgets spread geometrically over the device's front."""
    from ofa_search.search import QueryEngine

    engine = QueryEngine(ws)
    low = engine.min_latency_ms(device)
    front = engine.front(device)
    if front is None:
        sys.exit(f"no front for {device!r} in {ws.root}: run `ofa-search search --front` first")
    budgets = [float(b) for b in np.geomspace(low * 1.05, front.latencies[-1], n)]
    return [engine.query(device, b).arch for b in budgets], budgets


def _best_exits(candidates: Sequence[ExitsResult], budget_ms: float) -> dict[str, Any]:
    """The exits (over all candidates) with the best validation accuracy at an expected
    measured latency <= ``budget_ms``; the fastest cascade when none fits."""
    best: tuple[float, float, int, Any] | None = None
    for j, e in enumerate(candidates):
        assert e.trained is not None
        stats, met = e.trained.choose(target_ms=budget_ms, basis="measured")
        key = (float(met), stats.accuracy if met else -stats.expected_ms)
        if best is None or key > best[:2]:
            best = (*key, j, stats)
    assert best is not None
    met, _, j, stats = best
    trained = candidates[j].trained
    assert trained is not None
    return {"candidate": j, "met_on_val": bool(met), "thresholds": list(stats.thresholds),
            "val_accuracy": stats.accuracy, "report": trained.report(stats.thresholds)}


def _onnx(path: Path | None) -> Model:
    assert path is not None
    model = onnx.load(str(path))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal(dims).astype(np.float32)
    return model, {INPUT_NAME: x}


def _models(cells: list[dict[str, Any]], self_exits: list[ExitsResult]) -> dict[str, Model]:
    """Every model timed in the final passes, by name."""
    models: dict[str, Model] = {}
    for i, cell in enumerate(cells):
        for key in ("a", "b_oneshot", "b_iterative"):
            models[f"{key}{i}"] = _onnx(cell[key].artefact)
    for j, e in enumerate(self_exits):
        for k, segment in enumerate(e.segments):
            models[f"e{j}_segment{k}"] = _onnx(segment)
    return models


def _expected(shares: Sequence[float], segment_ms: Sequence[float]) -> float:
    """Σ share_k × (segments 0..k); the last share leaves after every segment."""
    cum = np.cumsum(segment_ms)
    costs = [*cum[:len(shares) - 1], cum[-1]]
    return float(np.dot(shares, costs))


def _report(args: argparse.Namespace, settings: dict[str, int], target: Any,
            cells: list[dict[str, Any]], self_exits: list[ExitsResult],
            passes: list[dict[str, float]], wall_s: float) -> dict[str, Any]:
    def measured(name: str) -> list[float]:
        return [p[name] for p in passes]

    def segments(j: int) -> list[list[float]]:
        n = len(self_exits[j].segments)
        return [[p[f"e{j}_segment{k}"] for k in range(n)] for p in passes]

    rows = []
    for i, cell in enumerate(cells):
        a, b1, b2, c = cell["a"], cell["b_oneshot"], cell["b_iterative"], cell["c"]
        row: dict[str, Any] = {
            "query_budget_ms": cell["query_budget_ms"], "budget_ms": cell["budget_ms"],
            "a": {"arch": cell["arch"].to_string(), "accuracy_extracted": a.accuracy_before,
                  "accuracy": a.accuracy, "measured_ms": measured(f"a{i}"),
                  "table_ms": a.latency["unpruned_table_ms"]}}
        fit = cell["fit"]
        row["ratio_fit"] = fit.to_dict()
        for key, b in (("b_oneshot", b1), ("b_iterative", b2)):
            row[key] = {"ratio": b.ratio, "feasible": fit.feasible, "fit_ms": fit.measured_ms,
                        "accuracy_unpruned": b.accuracy_before, "accuracy": b.accuracy,
                        "measured_ms": measured(f"{key}{i}"), "macs": b.macs,
                        "widths": {str(k): v for k, v in (b.widths or {}).items()}}
        rep = c["report"]
        row["c"] = {"base": cells[c["candidate"]]["arch"].to_string(),
                    "base_budget_index": c["candidate"], "thresholds": c["thresholds"],
                    "met_on_val": c["met_on_val"], "val_accuracy": c["val_accuracy"],
                    "accuracy": rep["accuracy"], "accuracy_without_exits":
                    rep["accuracy_without_exits"], "shares": rep["shares"],
                    "expected_table_ms": rep["expected_table_ms"],
                    "measured_ms": [_expected(rep["shares"], s)
                                    for s in segments(c["candidate"])]}
        rows.append(row)
    targets = []
    for j, e in enumerate(self_exits):
        rep = e.report or {}
        exp = [_expected(rep["shares"], s) for s in segments(j)]
        alone = measured(f"a{j}")
        reductions = [1 - x / y for x, y in zip(exp, alone, strict=True)]
        targets.append({
            "arch": cells[j]["arch"].to_string(), "thresholds": rep["thresholds"],
            "accuracy_without_exits": rep["accuracy_without_exits"],
            "accuracy": rep["accuracy"], "accuracy_loss_points": rep["accuracy_loss_points"],
            "shares": rep["shares"], "exit_accuracy": rep["exit_accuracy"],
            "expected_measured_ms": exp, "subnet_measured_ms": alone,
            "reduction_measured": reductions, "reduction_table": rep["reduction_table"],
            "expected_table_ms": rep["expected_table_ms"], "full_table_ms": rep["full_table_ms"],
            "target_met_measured": bool(rep["accuracy_loss_points"] <= TARGET_DROP_POINTS
                                        and min(reductions) >= TARGET_REDUCTION),
            "target_met_table": bool(rep["accuracy_loss_points"] <= TARGET_DROP_POINTS
                                     and (rep["reduction_table"] or 0) >= TARGET_REDUCTION)})
    ratios = np.array([passes[1][k] / passes[0][k] for k in passes[0]])
    return {
        "benchmark": "bench_compress", "created": now_iso(), "host": host_info(),
        # the workspace by its folder name (no machine path in the record)
        "command": "python scripts/bench_compress.py " + " ".join(
            args.workspace.name if a == str(args.workspace) else a for a in sys.argv[1:]),
        "device": target.device, "target": target.to_dict(), "data": args.data,
        "settings": {**settings, "exits_after_stages": args.exits, "seed": args.seed,
                     "exit_head_width": args.exit_head_width,
                     "exit_label_weight": args.exit_label_weight, "quick": args.quick},
        "noise_floor": {"models": int(ratios.size),
                        "within_5pct": float(np.mean(np.abs(ratios - 1) <= 0.05)),
                        "within_10pct": float(np.mean(np.abs(ratios - 1) <= 0.10)),
                        "median_abs_change": float(np.median(np.abs(ratios - 1)))},
        "rows": rows, "exit_targets": targets, "wall_s": wall_s}


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values))


def _met(cell: dict[str, Any]) -> bool:
    """Whether a cell met its latency target (pruning: a feasible ratio; exits: a cascade
    under the budget on the validation split; (a) always)."""
    return bool(cell.get("feasible", cell.get("met_on_val", True)))


def _print(report: dict[str, Any]) -> None:
    print(f"\n{report['device']}, {report['data']} test accuracy (%) @ measured ms "
          f"(mean of 2 passes); budget = (a)'s measured latency")
    head = ["budget ms", "(a) searched", "(a) extracted", "(b) one-shot", "(b) iterative",
            "(c) exits"]
    print(" | ".join(f"{h:>18}" for h in head))
    for row in report["rows"]:
        cells = [f"{row['budget_ms']:.4f}",
                 f"{100 * row['a']['accuracy']:.2f} @ {_mean(row['a']['measured_ms']):.4f}",
                 f"{100 * row['a']['accuracy_extracted']:.2f}"]
        for key in ("b_oneshot", "b_iterative"):
            b = row[key]
            flag = "" if b["feasible"] else "!"
            cells.append(f"{100 * b['accuracy']:.2f} @ {_mean(b['measured_ms']):.4f}{flag}")
        c = row["c"]
        cells.append(f"{100 * c['accuracy']:.2f} @ {_mean(c['measured_ms']):.4f}"
                     f"{'' if c['met_on_val'] else '!'}")
        print(" | ".join(f"{x:>18}" for x in cells))
    print("! = the latency target was out of reach (pruning at the largest ratio tried; "
          "exits: the fastest cascade)")
    print(f"\nexits at <= {TARGET_DROP_POINTS} points validation loss (target: >= "
          f"{TARGET_REDUCTION:.0%} lower expected latency, <= {TARGET_DROP_POINTS} points "
          "test loss)")
    print(f"{'subnet':<60} {'loss pts':>8} {'red. meas':>9} {'red. table':>10} {'met':>5}")
    for t in report["exit_targets"]:
        table = "n/a" if t["reduction_table"] is None else f"{t['reduction_table']:.1%}"
        print(f"{t['arch']:<60} {t['accuracy_loss_points']:>8.2f} "
              f"{_mean(t['reduction_measured']):>9.1%} {table:>10} "
              f"{'yes' if t['target_met_measured'] else 'no':>5}")
    noise = report["noise_floor"]
    print(f"\nnoise floor: {noise['within_5pct']:.0%} of {noise['models']} models within ±5 % "
          f"between passes, {noise['within_10pct']:.0%} within ±10 %; wall "
          f"{report['wall_s']:.0f} s")


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot's import
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.8, 4.4), dpi=120)
    rows = report["rows"]
    series = [("(a) searched, fine-tuned", "a", "tab:blue", "o"),
              ("(b) pruned largest, one-shot", "b_oneshot", "tab:red", "s"),
              ("(b) pruned largest, iterative", "b_iterative", "tab:orange", "D"),
              ("(c) searched + early exits", "c", "tab:green", "^")]
    for label, key, color, marker in series:
        for hit in (True, False):
            cells = [r[key] for r in rows if _met(r[key]) == hit]
            if cells:
                ax.scatter([_mean(c["measured_ms"]) for c in cells],
                           [100 * c["accuracy"] for c in cells], marker=marker, s=40,
                           color=color if hit else "none", edgecolors=color,
                           label=label if hit else f"{label} (target out of reach)")
    for r in rows:  # each budget: (a)'s measured latency
        ax.axvline(_mean(r["a"]["measured_ms"]), color="0.85", linewidth=0.8, zorder=0)
    ax.set_xlabel(f"measured latency on {report['device']} (ms; (c): expected)")
    ax.set_ylabel(f"{report['data']} test accuracy (%)")
    ax.set_title("search vs pruning vs early exits at equal latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


if __name__ == "__main__":
    main()
