"""Ablation of binary training (issue 22): each ingredient of the precision strategy's
binary fine-tuning switched in turn, from one trained fp32 supernet, at equal steps, with
a second seed of the baseline as the noise floor.

    python scripts/bench_binary_training.py OUT_DIR --fp32-checkpoint FP32/checkpoint.pt
        [--dataset fashion-mnist] [--steps-per-epoch 200] [--batch-size 64] [--lr 0.01]
        [--jobs 2] [--only two-stage share-1] [--record results/bench_binary_training.json]

Variants (``mbv3_small28_mp``, sandwich with 2 random subnets; the fp32 largest subnet
learns from labels in every step):

- ``two-stage``: ``binary-weights:1,binary:3`` (real activations first, as Bi-Real Net
  and ReActNet train), stage precisions uniform over fp32 / int8 / binary, the sampled
  subnets distilled in place from the fp32 largest; ``two-stage-seed1``: the same with
  seed 1 (the noise floor);
- ``one-stage``: ``binary:4`` (binary weights and activations from the start);
- ``no-distill``: the sampled subnets learn from the labels;
- ``share-0.5`` / ``share-1``: a sampled stage is binary with probability 0.5 / 1 in the
  binary phases (``--binary-share``);
- ``share-1-fp32-smallest``: share 1 for the random subnets while the sandwich's smallest
  subnet stays fp32 (``--fp32-smallest``);
- ``adamw-share-1-fp32-smallest``: the same with AdamW at lr 5e-4 instead of SGD at
  ``--lr`` (``--optimizer adamw``; Adam is what binary networks are trained with).
- ``adamw-no-scale``, ``adamw-no-shortcut``, ``adamw-no-threshold``: that AdamW variant
  with one ingredient of the binary convs switched off (``TrainConfig.binary_ablation``):
  XNOR-Net's per-channel weight scale, Bi-Real Net's real-valued shortcut, or the input
  batch norm that sets the sign's threshold (ReActNet's learned threshold);
  ``adamw-no-expand_shortcut``: without the shortcut of each block's expand conv only
  (the project conv keeps its own); ``adamw-no-project_shortcut``: the reverse;
  ``adamw-share-1-fp32-smallest-seed1`` and ``adamw-no-shortcut-seed1``: two of them again
  with seed 1.
- ``adamw-binary-largest``: that AdamW variant with the all-binary largest subnet in
  place of one random subnet in each binary step (``--binary-largest``: the sandwich rule
  for the binary subspace); ``adamw-binary-largest-seed1``: the same with seed 1.

Each run then reports the test accuracy at 28 px (all test images, BN recalibrated) of
the largest and smallest subnets in fp32 and with every stage binary, and of the fp32
start.
Runs go ``--jobs`` at a time, one torch thread each; each result is kept in
``OUT_DIR/<variant>.json`` and each run resumes from its checkpoint, so an interrupted
benchmark resumes. Prints a table and writes ``OUT_DIR/results.json`` (and ``--record``),
atomically.
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
from ofa_search.nn.binary import BINARY_INGREDIENTS
from ofa_search.profiling.host import host_info
from ofa_search.train import TrainConfig, evaluate_arch, load_supernet, make_strategy, run_training
from ofa_search.train.strategies import parse_precision_schedule

SPACE = "mbv3_small28_mp"
TWO_STAGE = "binary-weights:1,binary:3"
ADAMW_LR = 5e-4  # ReActNet's Adam learning rate (arXiv:2003.03488); the SGD variants take --lr
VARIANTS: dict[str, dict[str, Any]] = {
    "two-stage": {"schedule": TWO_STAGE},
    "two-stage-seed1": {"schedule": TWO_STAGE, "seed": 1},
    "one-stage": {"schedule": "binary:4"},
    "no-distill": {"schedule": TWO_STAGE, "precision_distill": False},
    "share-0.5": {"schedule": TWO_STAGE, "binary_share": 0.5},
    "share-1": {"schedule": TWO_STAGE, "binary_share": 1.0},
    "share-1-fp32-smallest": {"schedule": TWO_STAGE, "binary_share": 1.0,
                              "precision_fp32_smallest": True},
    "adamw-share-1-fp32-smallest": {"schedule": TWO_STAGE, "binary_share": 1.0,
                                    "precision_fp32_smallest": True, "optimizer": "adamw",
                                    "lr": ADAMW_LR},
}
for _ingredient in BINARY_INGREDIENTS:
    VARIANTS[f"adamw-no-{_ingredient}"] = {**VARIANTS["adamw-share-1-fp32-smallest"],
                                           "binary_ablation": (_ingredient,)}
VARIANTS["adamw-binary-largest"] = {**VARIANTS["adamw-share-1-fp32-smallest"],
                                   "precision_binary_largest": True}
for _name in ("adamw-share-1-fp32-smallest", "adamw-no-shortcut",
              "adamw-binary-largest"):  # their noise floor
    VARIANTS[f"{_name}-seed1"] = {**VARIANTS[_name], "seed": 1}
RESOLUTION = 28
SUBNETS = ("fp32_largest", "fp32_smallest", "binary_largest", "binary_smallest")


def subnet_archs() -> dict[str, Any]:
    """The four scored subnets: largest and smallest, all fp32 and all binary, at
    Fashion-MNIST's own 28 px."""
    strategy = make_strategy("sandwich", SPACE, None, seed=0, n_random=0)
    n = strategy.space.num_stages
    archs = {"fp32_largest": strategy.largest.replace(resolution=RESOLUTION),
             "fp32_smallest": strategy.smallest.replace(resolution=RESOLUTION)}
    for label in ("largest", "smallest"):
        archs[f"binary_{label}"] = archs[f"fp32_{label}"].replace(precisions=("binary",) * n)
    return archs


def score(checkpoint: Path, config: TrainConfig, names: tuple[str, ...]) -> dict[str, float]:
    """Test accuracy of ``names`` (keys of :func:`subnet_archs`) of a checkpoint."""
    net, _ = load_supernet(checkpoint)
    archs = subnet_archs()
    data = load_dataset(config.dataset, data_dir=config.data_dir, seed=0,
                        in_channels=net.space.in_channels,
                        resolution=max(a.resolution for a in archs.values()))
    return {name: evaluate_arch(net, archs[name].replace(space=net.space.name), data,
                                split="test", seed=0)
            for name in names}


def run_one(name: str, config: TrainConfig, out_dir: str) -> dict[str, Any]:
    torch.set_num_threads(1)
    kept = kept_result(out_dir, name)
    if kept is not None:
        return kept
    run_dir = Path(out_dir) / name
    start = time.perf_counter()
    trained = run_training(dataclasses.replace(
        config, out_dir=str(run_dir), resume=(run_dir / "checkpoint.pt").exists()))
    seconds = time.perf_counter() - start
    result = {"variant": name, "seconds": seconds, "step": trained.step,
              "config": config.to_dict(), **score(trained.checkpoint, config, SUBNETS)}
    atomic_write_text(Path(out_dir) / f"{name}.json", json.dumps(result, indent=2) + "\n")
    return result


def start_scores(checkpoint: Path, config: TrainConfig, out_dir: Path) -> dict[str, float]:
    """fp32 accuracy of the untouched fp32 supernet (kept in ``OUT_DIR/start.json``)."""
    path = out_dir / "start.json"
    if path.exists():
        cached: dict[str, float] = json.loads(path.read_text())
        return cached
    torch.set_num_threads(1)
    scores = score(checkpoint, config, ("fp32_largest", "fp32_smallest"))
    atomic_write_text(path, json.dumps(scores, indent=2) + "\n")
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--fp32-checkpoint", type=Path, required=True,
                        help="a trained fp32 mbv3_small28 supernet (ofa-search train)")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--steps-per-epoch", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, choices=sorted(VARIANTS),
                        help="run only these variants")
    parser.add_argument("--record", type=Path, default=None,
                        help="also write the record here (e.g. results/...json)")
    args = parser.parse_args(argv)
    if not args.fp32_checkpoint.is_file():
        parser.error(f"--fp32-checkpoint {args.fp32_checkpoint}: no such file")
    base = TrainConfig(space=SPACE, dataset=args.dataset, data_dir=args.data_dir,
                       strategy="precision", n_random=2, steps_per_epoch=args.steps_per_epoch,
                       batch_size=args.batch_size, lr=args.lr, quiet=True, device="cpu",
                       init_checkpoint=str(args.fp32_checkpoint), seed=0)
    runs = {}
    for name, spec in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        options = {k: v for k, v in spec.items() if k != "schedule"}
        lr = options.pop("lr", args.lr)
        phases = parse_precision_schedule(spec["schedule"], SPACE, lr=lr)
        runs[name] = dataclasses.replace(base, precision_phases=phases, lr=lr, **options)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    start = start_scores(args.fp32_checkpoint, base, args.out_dir)
    results = run_variants(run_one, runs, args.out_dir, args.jobs, "bench_binary_training")
    floor = None
    if "two-stage" in results and "two-stage-seed1" in results:
        floor = {k: abs(results["two-stage"][k] - results["two-stage-seed1"][k])
                 for k in SUBNETS}
    record = {"benchmark": "binary_training_ablation",
              "command": "python scripts/bench_binary_training.py "
              + " ".join(sys.argv[1:] if argv is None else argv),
              "space": SPACE, "dataset": args.dataset, "steps_per_epoch": args.steps_per_epoch,
              "batch_size": args.batch_size, "lr": args.lr, "host": host_info(),
              "variants": VARIANTS, "fp32_start": start, "noise_floor": floor,
              "runs": list(results.values())}
    text = json.dumps(record, indent=2) + "\n"
    # the record names no folder of this machine: the two paths as the docs write them
    text = text.replace(str(args.fp32_checkpoint), "FP32/supernet/checkpoint.pt").replace(
        str(args.out_dir), "OUT_DIR")
    atomic_write_text(args.out_dir / "results.json", text)
    if args.record is not None:
        atomic_write_text(args.record, text)
    print(f"{'variant':<22} {'steps':>5} " + " ".join(f"{k:>15}" for k in SUBNETS)
          + f" {'minutes':>8}")
    print(f"{'fp32 start':<22} {'':>5} {start['fp32_largest']:>15.4f} "
          f"{start['fp32_smallest']:>15.4f}")
    for name, row in results.items():
        print(f"{name:<22} {row['step']:>5} " + " ".join(f"{row[k]:>15.4f}" for k in SUBNETS)
              + f" {row['seconds'] / 60:>8.1f}")
    if floor is not None:
        print("noise floor (|two-stage seed 0 - seed 1|): "
              + ", ".join(f"{k} {v:.4f}" for k, v in floor.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
