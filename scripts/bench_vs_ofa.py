"""Query like once-for-all, faster: our query against once-for-all's tutorial evolution.

    python scripts/bench_vs_ofa.py [--budgets 15,20,25,30,35] [--ofa-seeds 0,1,2]
        [--predictor-seed 0] [--front-trials 3000] [--front-budgets 24]
        [--budget-trials 32000] [--budget-restarts 8] [--out results/bench_vs_ofa.json]

Both sides use the same accuracy predictor — once-for-all's tutorial ``AccuracyPredictor``
built by its own code with seeded random weights (nothing is downloaded), imported into
ours — and the same latency table: once-for-all's Samsung Note10 table as shipped
(``note10-tflite``, width 1.2, 160–224 px), given to once-for-all's ``EvolutionFinder`` as
its efficiency predictor. once-for-all runs its tutorial settings (population 100, 500
generations, mutate prob 0.1, parent ratio 0.25, mutation ratio 0.5), once per seed. Ours
answers each budget cold (no front: the query's own search, 4 runs of 4,000 trials) and
from a front built once (NSGA-II plus constrained searches on a geometric grid of budgets
that is not the benchmark's; its build time is reported). Accuracies are predicted top-1
fractions of that random predictor, so only their comparison means something. Needs the
``dev`` extra (``ofa``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ofa_search.arch import Arch
from ofa_search.atomic import atomic_write_json
from ofa_search.interop.reference import ofa_module
from ofa_search.profiling.host import host_info
from ofa_search.profiling.lut import find_table, now_iso
from ofa_search.search import QueryEngine, build_front
from ofa_search.workspace import Workspace
from predictors.accuracy_ofa import load_ofa_accuracy_predictor

DEVICE = "note10-tflite"
TUTORIAL_SETTINGS = {"mutate_prob": 0.1, "mutation_ratio": 0.5, "parent_ratio": 0.25,
                     "population_size": 100, "max_time_budget": 500}


class TableAsOfaEfficiency:
    """Our latency table behind once-for-all's ``predict_efficiency(sample)`` interface."""

    def __init__(self, device: str) -> None:
        self.table = find_table(device)
        self.calls = 0

    def predict_efficiency(self, sample: dict[str, Any]) -> float:
        self.calls += 1
        arch = Arch.from_ofa_dict({**sample, "w": self.table.width_mult})
        return float(self.table.predict(arch))


def run_ofa(predictor: Any, budget: float, seed: int) -> dict[str, Any]:
    finder_module = ofa_module("tutorial.evolution_finder")
    efficiency = TableAsOfaEfficiency(DEVICE)
    random.seed(seed)  # once-for-all's evolution draws from the global generators
    np.random.seed(seed)
    finder = finder_module.EvolutionFinder(
        constraint_type="note10", efficiency_constraint=budget,
        efficiency_predictor=efficiency, accuracy_predictor=predictor, **TUTORIAL_SETTINGS)
    start = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # its progress bar
        _, (acc, sample, latency) = finder.run_evolution_search(verbose=False)
    seconds = time.perf_counter() - start
    arch = Arch.from_ofa_dict({**sample, "w": 1.2})
    return {"seed": seed, "arch": arch.to_string(), "predicted_accuracy": float(acc),
            "predicted_latency_ms": float(latency), "seconds": seconds,
            "latency_lookups": efficiency.calls}


def run_ours(ws: Workspace, budget: float, repeats: int = 20) -> dict[str, Any]:
    engine = QueryEngine(ws)
    engine.query(DEVICE, budget)  # load table, predictor and front once
    start = time.perf_counter()
    for _ in range(repeats):
        result = engine.query(DEVICE, budget)
    seconds = (time.perf_counter() - start) / repeats
    return {"arch": result.arch.to_string(), "predicted_accuracy": result.predicted_accuracy,
            "predicted_latency_ms": result.predicted_latency_ms, "seconds": seconds,
            "source": result.source}


def run_ours_cold(ws: Workspace, budget: float) -> dict[str, Any]:
    engine = QueryEngine(ws)  # a fresh engine: loads everything, searches (no front)
    start = time.perf_counter()
    result = engine.query(DEVICE, budget)
    seconds = time.perf_counter() - start
    return {"arch": result.arch.to_string(), "predicted_accuracy": result.predicted_accuracy,
            "predicted_latency_ms": result.predicted_latency_ms, "seconds": seconds,
            "source": result.source}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", default="15,20,25,30,35")
    parser.add_argument("--ofa-seeds", default="0,1,2")
    parser.add_argument("--predictor-seed", type=int, default=0)
    parser.add_argument("--front-trials", type=int, default=3000,
                        help="NSGA-II trials of the front")
    parser.add_argument("--front-budgets", type=int, default=24,
                        help="constrained searches filling the front: a geometric grid of "
                        "budgets from the fastest subnet to --front-max-ms (not the "
                        "benchmark's budgets)")
    parser.add_argument("--front-max-ms", type=float, default=50.0)
    parser.add_argument("--budget-trials", type=int, default=32_000)
    parser.add_argument("--budget-restarts", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("results/bench_vs_ofa.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    budgets = [float(b) for b in args.budgets.split(",")]
    seeds = [int(s) for s in args.ofa_seeds.split(",")]

    tutorial = ofa_module("tutorial.accuracy_predictor")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.predictor_seed)
        reference = tutorial.AccuracyPredictor(pretrained=False, device="cpu")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp) / "ws")
        pth = Path(tmp) / "acc_predictor.pth"
        torch.save(reference.model.state_dict(), pth)
        ours_pred = load_ofa_accuracy_predictor(pth, width_mult=1.2)
        ours_pred.save(ws.accuracy_predictor)
        cold = {b: run_ours_cold(ws, b) for b in budgets}
        low = QueryEngine(ws).min_latency_ms(DEVICE)
        grid = [float(b) for b in np.round(np.geomspace(low * 1.02, args.front_max_ms,
                                                        args.front_budgets), 2)]
        start = time.perf_counter()
        build_front(ws, DEVICE, n_trials=args.front_trials, seed=0, budgets=grid,
                    budget_trials=args.budget_trials, budget_restarts=args.budget_restarts,
                    store=False)
        front_seconds = time.perf_counter() - start
        warm = {b: run_ours(ws, b) for b in budgets}
        for budget in budgets:
            ofa_runs = [run_ofa(reference, budget, seed) for seed in seeds]
            for run in ofa_runs:  # the same function: ours predicts what once-for-all did
                arch = Arch.parse(run["arch"], "ofa_mbv3")
                run["our_prediction"] = float(ours_pred.predict([arch])[0])
            best = max(r["predicted_accuracy"] for r in ofa_runs)
            mean_s = float(np.mean([r["seconds"] for r in ofa_runs]))
            row = {"budget_ms": budget, "ofa": ofa_runs, "ours_front": warm[budget],
                   "ours_cold": cold[budget],
                   "ofa_best_accuracy": best,
                   "ofa_mean_accuracy": float(np.mean([r["predicted_accuracy"]
                                                       for r in ofa_runs])),
                   "ofa_mean_seconds": mean_s,
                   "speedup_front": mean_s / warm[budget]["seconds"],
                   "speedup_cold": mean_s / cold[budget]["seconds"],
                   "ours_minus_ofa_best_points": 100 * (warm[budget]["predicted_accuracy"]
                                                        - best)}
            rows.append(row)
            print(f"budget {budget:5.1f} ms  ofa best {best:.5f} ({mean_s:6.2f} s)  "
                  f"ours front {warm[budget]['predicted_accuracy']:.5f} "
                  f"({warm[budget]['seconds'] * 1e3:6.2f} ms)  cold "
                  f"{cold[budget]['predicted_accuracy']:.5f} "
                  f"({cold[budget]['seconds']:5.2f} s)", file=sys.stderr)

    print()
    print("| budget ms | OFA acc (best / mean of seeds) | OFA lat ms | OFA s/answer "
          "| ours acc (front) | ours lat ms | ours ms/answer (front) | speed-up "
          "| ours acc (cold) | ours s (cold) | speed-up cold |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        best_run = max(row["ofa"], key=lambda r: r["predicted_accuracy"])
        w, c = row["ours_front"], row["ours_cold"]
        print(f"| {row['budget_ms']:g} | {row['ofa_best_accuracy']:.5f} / "
              f"{row['ofa_mean_accuracy']:.5f} | {best_run['predicted_latency_ms']:.2f} | "
              f"{row['ofa_mean_seconds']:.2f} | {w['predicted_accuracy']:.5f} | "
              f"{w['predicted_latency_ms']:.2f} | {w['seconds'] * 1e3:.3f} | "
              f"{row['speedup_front']:.0f}× | {c['predicted_accuracy']:.5f} | "
              f"{c['seconds']:.2f} | {row['speedup_cold']:.1f}× |")
    print(f"\nfront: NSGA-II {args.front_trials} trials + {args.front_budgets} budget searches "
          f"({args.budget_trials} trials, {args.budget_restarts} runs each) built in "
          f"{front_seconds:.1f} s, once per device and predictor")
    atomic_write_json(args.out, {
        "benchmark": "bench_vs_ofa", "created": now_iso(), "host": host_info(),
        "device": DEVICE, "budgets_ms": budgets, "ofa_seeds": seeds,
        "predictor_seed": args.predictor_seed, "ofa_settings": TUTORIAL_SETTINGS,
        "front_trials": args.front_trials, "front_budget_grid_ms": grid,
        "budget_trials": args.budget_trials, "budget_restarts": args.budget_restarts,
        "front_seconds": front_seconds,
        "threads": args.threads, "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
