"""Ablation of BigNAS's training fixes (issue 21): each fix switched off in turn from the
full ``bignas`` recipe, against the ``ofa`` recipe, at equal steps, with two seeds of the
baseline as the noise floor.

    python scripts/bench_bignas.py OUT_DIR [--dataset fashion-mnist] [--steps 400]
        [--batch-size 64] [--jobs 2] [--device cpu]

Every run trains ``mbv3_small28`` with the sandwich rule (2 random subnets), then reports
the test accuracy of the largest and the smallest subnet after BN recalibration. Runs go
``--jobs`` at a time, one torch thread each; each run's result is kept in
``OUT_DIR/<variant>.json``, so an interrupted benchmark resumes. Prints a table and writes
``OUT_DIR/results.json`` (atomically).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _ablation import kept_result, run_variants

from ofa_search.atomic import atomic_write_text
from ofa_search.data import load_dataset
from ofa_search.profiling.host import host_info
from ofa_search.train import (
    TrainConfig,
    evaluate_arch,
    make_strategy,
    run_training,
    with_recipe,
)

FIXES = ("zero_gamma", "lr_schedule", "regularize_largest_only", "ema_decay",
         "decay_bn_and_bias")
OFF: dict[str, Any] = {"zero_gamma": False, "lr_schedule": "cosine",
                       "regularize_largest_only": False, "ema_decay": None,
                       "decay_bn_and_bias": True}


def variants(base: TrainConfig) -> dict[str, TrainConfig]:
    """``ofa`` (seeds 0 and 1: the noise floor), ``bignas``, and ``bignas`` without each
    fix (``-decay_bn_and_bias`` decays BN parameters and biases too)."""
    bignas = with_recipe(base, "bignas")
    runs = {"ofa": base, "ofa-seed1": dataclasses.replace(base, seed=base.seed + 1),
            "bignas": bignas}
    for fix in FIXES:
        runs[f"bignas-{fix}"] = dataclasses.replace(bignas, **{fix: OFF[fix]})
    return runs


def run_one(name: str, config: TrainConfig, out_dir: str) -> dict[str, Any]:
    torch.set_num_threads(1)
    kept = kept_result(out_dir, name)
    if kept is not None:
        return kept
    start = time.perf_counter()
    trained = run_training(dataclasses.replace(config, out_dir=str(Path(out_dir) / name),
                                               resume=(Path(out_dir) / name /
                                                       "checkpoint.pt").exists()))
    seconds = time.perf_counter() - start
    strategy = make_strategy("sandwich", config.space, None, seed=0, n_random=0)
    data = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed,
                        in_channels=strategy.space.in_channels,
                        resolution=max(strategy.choices.resolutions))
    result = {"variant": name, "seconds": seconds, "step": trained.step,
              "config": config.to_dict()}
    for label, arch in (("largest", strategy.largest), ("smallest", strategy.smallest)):
        result[f"test_acc_{label}"] = evaluate_arch(trained.supernet, arch, data,
                                                     split="test", seed=0)
    atomic_write_text(Path(out_dir) / f"{name}.json", json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps per run")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", nargs="*", default=None, help="run only these variants")
    args = parser.parse_args(argv)
    epochs = 2
    base = TrainConfig(space="mbv3_small28", dataset=args.dataset, data_dir=args.data_dir,
                       strategy="sandwich", n_random=2, epochs=epochs,
                       steps_per_epoch=args.steps // epochs, batch_size=args.batch_size,
                       lr=args.lr, warmup_epochs=0, quiet=True, device=args.device, seed=0)
    runs = variants(base)
    if args.only:
        runs = {k: v for k, v in runs.items() if k in args.only}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    results = run_variants(run_one, runs, args.out_dir, args.jobs, "bench_bignas")
    floor = None
    if "ofa" in results and "ofa-seed1" in results:
        floor = {k: abs(results["ofa"][k] - results["ofa-seed1"][k])
                 for k in ("test_acc_largest", "test_acc_smallest")}
    record = {"benchmark": "bignas_ablation", "command": "python scripts/bench_bignas.py "
              + " ".join(sys.argv[1:] if argv is None else argv),
              "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
              "dataset": args.dataset, "host": host_info(), "noise_floor": floor,
              "runs": list(results.values())}
    atomic_write_text(args.out_dir / "results.json", json.dumps(record, indent=2) + "\n")
    print(f"{'variant':<32} {'largest':>8} {'smallest':>9} {'minutes':>8}")
    for name, row in results.items():
        print(f"{name:<32} {row['test_acc_largest']:>8.4f} {row['test_acc_smallest']:>9.4f} "
              f"{row['seconds'] / 60:>8.1f}")
    if floor is not None:
        print(f"noise floor (|ofa seed 0 - seed 1|): largest {floor['test_acc_largest']:.4f}, "
              f"smallest {floor['test_acc_smallest']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
