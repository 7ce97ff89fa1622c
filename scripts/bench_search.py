"""Benchmark the search engines of one device (logic in ``ofa_search.search.benchmark``).

    python scripts/bench_search.py --workspace W --device cpu-ort-1t
        [--objective predictor|macs-proxy] [--trials 2000] [--seeds 0,1,2]
        [--oracle-n 100000] [--engines evolution,nsga2,random] [--measure]
        [--latency-predictor lut|learned] [--record-trials] [--out FILE.json]

``--objective predictor`` (default) optimises the workspace's fitted accuracy predictor.
``--objective macs-proxy`` stands in for it when none is fitted yet: "accuracy" =
0.6 + 0.1·ln(MACs/1e6) + 0.002·resolution — a test objective, not a prediction of any
network; the output says which objective was used. ``--measure`` exports the archs found
at each budget and measures their latency on the device's backend and their test accuracy
on the workspace's supernet (needs a measurable device and a checkpoint).
``--record-trials`` runs every search as a stored search does, keeping its Optuna trials
(the evolution engine asks and tells its sampler's trials instead of drafting arrays).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from ofa_search.arch import Arch
from ofa_search.atomic import atomic_write_json
from ofa_search.profiling.lut import now_iso
from ofa_search.search import load_context
from ofa_search.search.benchmark import (
    compare_engines,
    measure_found,
    percentile_budgets,
    random_oracle,
    time_queries,
    time_storages,
)
from ofa_search.units import count_macs
from ofa_search.workspace import Workspace

MACS_PROXY_FORMULA = "0.6 + 0.1*ln(MACs/1e6) + 0.002*resolution (test objective)"


class MacsProxy:
    """The stand-in objective of ``--objective macs-proxy`` (see the module docstring)."""

    def __init__(self, space: str) -> None:
        self.space = space

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        return np.array([0.6 + 0.1 * np.log(count_macs(a) / 1e6) + 0.002 * a.resolution
                         for a in archs])

    def predict_std(self, archs: Sequence[Arch]) -> np.ndarray:
        return np.full(len(archs), 0.01)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", type=Path, default=None)
    parser.add_argument("--device", required=True)
    parser.add_argument("--objective", choices=("predictor", "macs-proxy"), default="predictor")
    parser.add_argument("--latency-predictor", choices=("lut", "learned"), default=None)
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--engines", default="evolution,nsga2,random")
    parser.add_argument("--oracle-n", type=int, default=100_000)
    parser.add_argument("--measure", action="store_true")
    parser.add_argument("--record-trials", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ws = Workspace(args.workspace)
    ws.root.mkdir(parents=True, exist_ok=True)
    table_space = load_context(ws, args.device, latency_kind=args.latency_predictor).space
    accuracy = MacsProxy(table_space) if args.objective == "macs-proxy" else None
    ctx = load_context(ws, args.device, accuracy=accuracy,
                       accuracy_name="macs-proxy" if accuracy else None,
                       latency_kind=args.latency_predictor)
    objective = MACS_PROXY_FORMULA if accuracy else f"accuracy predictor {ws.accuracy_predictor}"
    print(f"objective: {objective}")
    print(f"device {ctx.device} ({ctx.latency_name} latency predictor), space {ctx.space}")
    seeds = [int(s) for s in args.seeds.split(",")]
    engines = args.engines.split(",")
    budgets = percentile_budgets(ctx)
    print(f"budgets (10th..90th percentile): {[round(b, 4) for b in budgets]} ms")
    print(f"oracle: best of {args.oracle_n} random archs per budget ...", flush=True)
    oracle = random_oracle(ctx, budgets, n=args.oracle_n)
    runs = compare_engines(ctx, budgets, oracle, engines=engines, n_trials=args.trials,
                           seeds=seeds, record_trials=args.record_trials)
    rows: list[dict[str, Any]] = []
    print(f"\n{'budget':>8} {'oracle':>7} " + " ".join(
        f"{e + ' (gap,s)':>24}" for e in engines))
    for budget in budgets:
        best = oracle[budget]
        cells = []
        row: dict[str, Any] = {"budget_ms": budget,
                               "oracle_accuracy": best.accuracy if best else None}
        for engine in engines:
            mine = [r for r in runs if r.budget_ms == budget and r.engine == engine]
            accs = [r.predicted_accuracy for r in mine if r.predicted_accuracy is not None]
            gap = 100 * (np.mean(accs) - best.accuracy) if accs and best else float("nan")
            wall = float(np.mean([r.wall_s for r in mine]))
            cells.append(f"{100 * np.mean(accs):8.2f} ({gap:+.2f},{wall:.2f})")
            row[engine] = {"mean_accuracy": float(np.mean(accs)) if accs else None,
                           "gap_points": gap, "wall_s": wall,
                           "predictor_calls": float(np.mean([r.predictor_calls for r in mine])),
                           "trials_to_0_1pt": [r.first_within_0_1pt for r in mine]}
        rows.append(row)
        print(f"{budget:8.4f} {100 * best.accuracy:7.2f} " + " ".join(f"{c:>24}" for c in cells))
    print("\nmean gap to oracle (points), wall s, trials to within 0.1 pt:")
    summary: dict[str, Any] = {}
    for engine in engines:
        gaps = [row[engine]["gap_points"] for row in rows]
        walls = [row[engine]["wall_s"] for row in rows]
        hits = [t for row in rows for t in row[engine]["trials_to_0_1pt"]]
        reached = [t for t in hits if t is not None]
        summary[engine] = {"mean_gap_points": float(np.mean(gaps)),
                           "worst_gap_points": float(np.min(gaps)),
                           "mean_wall_s": float(np.mean(walls)),
                           "reached_0_1pt": f"{len(reached)}/{len(hits)}",
                           "median_trials_to_0_1pt": float(np.median(reached)) if reached
                           else None}
        print(f"  {engine:<10} mean {summary[engine]['mean_gap_points']:+.3f}  worst "
              f"{summary[engine]['worst_gap_points']:+.3f}  {summary[engine]['mean_wall_s']:.2f}"
              f" s  reached {summary[engine]['reached_0_1pt']}, median trials "
              f"{summary[engine]['median_trials_to_0_1pt']}")
    timing = time_queries(ctx, budgets)
    print(f"\ncold query: max {timing['cold_query_max_s']:.2f} s; front of "
          f"{timing['front_points']} points built in {timing['front_build_s']:.1f} s; query "
          f"from front {timing['front_lookup_mean_ms']:.4f} ms mean, "
          f"{timing['front_lookup_max_ms']:.4f} ms max")
    storage = time_storages(ctx, str(ws.root))
    print(f"storing trials: SQLite {storage['sqlite_ms_per_trial']:.1f} ms/trial, journal "
          f"file {storage['journal_ms_per_trial']:.1f} ms/trial (batched per generation)")
    measured = None
    if args.measure:
        chosen = [r for r in runs if r.engine == engines[0] and r.seed == seeds[0] and r.arch]
        measured = measure_found(ctx, [Arch.parse(str(r.arch), ctx.space) for r in chosen])
        print(f"\nfound by {engines[0]} (seed {seeds[0]}), measured on {ctx.device}:")
        for run, item in zip(chosen, measured, strict=True):
            item.update(budget_ms=run.budget_ms, predicted_ms=run.predicted_latency_ms,
                        predicted_accuracy=run.predicted_accuracy)
            print(f"  budget {run.budget_ms:.4f} ms: predicted {run.predicted_latency_ms:.4f} ms"
                  f", measured {item['measured_ms']:.4f} ms; predicted acc "
                  f"{run.predicted_accuracy:.4f}, test acc {item['test_accuracy']:.4f}  "
                  f"{item['arch']}")
    result = {"created": now_iso(),
              "command": " ".join(["scripts/bench_search.py", *(argv or sys.argv[1:])]),
              "objective": objective, "device": ctx.device,
              "space": ctx.space, "latency_predictor": ctx.latency_name,
              "trials": args.trials, "seeds": seeds, "oracle_n": args.oracle_n,
              "record_trials": args.record_trials,
              "budgets": budgets, "rows": rows, "summary": summary, "timing": timing,
              "storage": storage, "runs": [r.__dict__ for r in runs], "measured": measured}
    out = args.out or ws.root / f"bench_search_{ctx.device}.json"
    atomic_write_json(out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
