"""Accuracy predictors: held-out RMSE (points) and Kendall τ versus training-set size.

    python scripts/bench_accuracy_predictor.py CHECKPOINT OUT.json [--n-archs N]
        [--sizes 250 500 1000 2000] [--candidates mlp ensemble gp] [--max-eval-images M]

Reads the accuracy dataset cached beside CHECKPOINT (with ``--n-archs``, first builds or
extends it to N archs); the logic lives in :mod:`predictors.accuracy_bench`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ofa_search.atomic import atomic_write_json
from ofa_search.train import supernet_evaluator
from ofa_search.workspace import Workspace
from predictors.accuracy_bench import BENCH_SIZES, format_bench, run_accuracy_bench
from predictors.accuracy_data import (
    EvalSettings,
    build_accuracy_dataset,
    read_accuracy_dataset,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path, help="results JSON")
    parser.add_argument("--n-archs", type=int, default=None,
                        help="build or extend the dataset to this many archs first")
    parser.add_argument("--max-eval-images", type=int, default=None)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(BENCH_SIZES))
    parser.add_argument("--candidates", nargs="+", default=["mlp", "ensemble", "gp"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.n_archs is not None:
        data = build_accuracy_dataset(args.checkpoint, args.n_archs, seed=args.seed,
                                      settings=EvalSettings(max_eval_images=args.max_eval_images),
                                      log=print, evaluator_for=supernet_evaluator)
    else:
        data = read_accuracy_dataset(Workspace.accuracy_dataset_for(args.checkpoint))
    result = run_accuracy_bench(data, sizes=args.sizes, candidates=args.candidates,
                                seed=args.seed)
    result["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    atomic_write_json(args.out, result)
    print(format_bench(result))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
