"""Supernet benchmark: inherited vs from-scratch accuracy for each training strategy.

    python scripts/bench_supernet.py OUT_DIR [--quick] [--dataset fashion-mnist]
        [--budget 26] [--strategies sandwich spos ps] [--threads 2]
        [--checkpoint sandwich=PATH ...] [--standalone-from RECORD.json] [--train-seed S]

``--quick`` runs a few-minute version on the embedded digits data (budget 16 subnet-epochs,
8 random subnets, 4 stand-alone). Everything resumes from ``OUT_DIR``; the results are
printed as a table and written to ``OUT_DIR/results.json``. ``--standalone-from`` reuses
the stand-alone accuracies of an earlier record of the same settings (to rerun one
strategy's row without training the stand-alone subnets again); with ``--train-seed`` the
strategies train with another seed (same subnets and stand-alone runs: a second training
seed measures the rows' noise). See
:mod:`ofa_search.train.benchmark` for the compute rule.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from ofa_search.errors import OfaSearchError
from ofa_search.train.benchmark import SupernetBenchConfig, run_supernet_bench


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--budget", type=int, default=None, help="subnet-epochs per strategy")
    parser.add_argument("--strategies", nargs="+", default=None)
    parser.add_argument("--steps-per-epoch", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint", action="append", default=[],
                        help="STRATEGY=PATH: evaluate this trained checkpoint instead")
    parser.add_argument("--train-seed", type=int, default=None,
                        help="seed of the strategies' training runs (default: the "
                        "benchmark's seed, 0)")
    parser.add_argument("--standalone-from", type=Path, default=None, metavar="RECORD",
                        help="reuse the stand-alone accuracies of this earlier results.json")
    args = parser.parse_args(argv)
    record = None
    if args.standalone_from is not None:
        try:
            record = json.loads(args.standalone_from.read_text())
        except (OSError, ValueError) as exc:
            print(f"error: --standalone-from {args.standalone_from}: {exc}", file=sys.stderr)
            return 2
    torch.set_num_threads(args.threads)

    config = SupernetBenchConfig()
    if args.quick:
        config = dataclasses.replace(config, dataset="digits", budget=16, batch_size=64,
                                     lr=0.05, n_random=8, n_standalone=4)
    overrides = {"dataset": args.dataset, "data_dir": args.data_dir, "budget": args.budget,
                 "steps_per_epoch": args.steps_per_epoch, "train_seed": args.train_seed,
                 "strategies": None if args.strategies is None else tuple(args.strategies)}
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items()
                                            if v is not None})
    given = {}
    for item in args.checkpoint:
        name, _, path = item.partition("=")
        given[name] = Path(path)
    try:
        results = run_supernet_bench(config, args.out_dir, checkpoints=given,
                                     standalone_from=record,
                                     log=lambda line: print(line, file=sys.stderr))
    except OfaSearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    sa = results["standalone"]
    print(f"\n{config.dataset}, {config.space}, {config.budget} subnet-epochs per strategy; "
          f"stand-alone: {config.n_standalone} subnets x seeds {list(config.standalone_seeds)}"
          f", {sa['epochs']} epochs each; seed-to-seed tau {_fmt(sa['seed_to_seed_tau'], 2)}")
    print("| strategy | epochs | largest | smallest | random mean | inherited - scratch "
          "| tau vs scratch |")
    print("|---|---|---|---|---|---|---|")
    for name, row in results["strategies"].items():
        print(f"| {name} | {row['epochs']} | {_fmt(row['largest'])} | {_fmt(row['smallest'])} "
              f"| {_fmt(row['random_mean'])} | {row['inherited_minus_standalone_mean']:+.3f} "
              f"| {_fmt(row['tau_inherited_vs_standalone'], 2)} |")
    print("\n| subnet | MACs (M) | scratch (mean) | "
          + " | ".join(results["strategies"]) + " |")
    print("|---|---|---|" + "---|" * len(results["strategies"]))
    for i, (arch, macs) in enumerate(zip(results["archs"], results["macs_m"], strict=True)):
        scratch = sa["mean_accuracy"][i] if i < len(sa["mean_accuracy"]) else None
        cells = " | ".join(_fmt(row["accuracy"][i]) for row in results["strategies"].values())
        print(f"| {arch} | {macs:.2f} | {_fmt(scratch)} | {cells} |")
    print(f"\nwrote {args.out_dir / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
