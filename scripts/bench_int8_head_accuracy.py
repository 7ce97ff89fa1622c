"""What an int8 head costs in accuracy: the same weights, the same stages, the head fp32 or
int8.

    python scripts/bench_int8_head_accuracy.py CHECKPOINT [OUT_JSON] [--space SPACE]
        [--data NAME] [--data-dir DIR] [--n 10] [--calib-batches 16] [--seed 0]

The weights of CHECKPOINT (any supernet of the same structure, fp32-trained or not) are
loaded into ``--space`` (default: the checkpoint's; a space with int8 stages whose head stays
fp32, e.g. ``mbv3_small28_mp``) and into its ``head_int8`` sibling (e.g.
``mbv3_small28_mp_int8head``), which differ only in the head's precision. For ``--n``
seeded subnets (each at its own resolution), each in four versions:

- ``fp32``: every stage fp32 (the head is fp32 in both spaces);
- ``last-int8``: the last stage int8, the head fp32 (``--space``) or int8 (the sibling);
- ``all-int8``: every stage int8, the head fp32 or int8;

each is extracted, BN-recalibrated on ``--calib-batches`` training batches (which also
sets the int8 activation ranges: post-training quantisation of the fake-quant model where
the weights were not trained in int8) and scored on the whole test split in PyTorch. The
noise floor is the same fp32-head subnet recalibrated on other batches (seed + 1): how
far two scores of one model differ. Prints a table and writes the JSON atomically
(default ``results/bench_int8_head_accuracy.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _record import sanitized_command

from ofa_search.arch import Arch
from ofa_search.atomic import atomic_write_json
from ofa_search.data import load_dataset
from ofa_search.errors import OfaSearchError
from ofa_search.nn import Supernet
from ofa_search.profiling.host import host_info
from ofa_search.profiling.lut import now_iso
from ofa_search.space import SearchSpace, get_space, list_spaces
from ofa_search.train import evaluate_arch
from ofa_search.train.checkpoint import load_checkpoint, load_init_weights

VARIANTS = ("last-int8", "all-int8")


def int8_head_sibling(space: SearchSpace) -> SearchSpace:
    """The registered space equal to ``space`` but for its int8 head (and name)."""
    for name in list_spaces():
        other = get_space(name)
        if other.head_int8 and not space.head_int8 and dataclasses.replace(
                other, name=space.name, description=space.description,
                head_int8=False) == space:
            return other
    raise OfaSearchError(f"space {space.name!r} has no registered sibling with an int8 head "
                         "(a space with int8 stages whose head stays fp32 is needed, e.g. "
                         "mbv3_small28_mp)")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", nargs="?", type=Path,
                        default=Path("results/bench_int8_head_accuracy.json"))
    parser.add_argument("--space", default=None, help="default: the checkpoint's")
    parser.add_argument("--data", default=None, help="default: the checkpoint's dataset")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--calib-batches", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if min(args.n, args.calib_batches) < 1:
        parser.error("--n and --calib-batches must be >= 1")
    started = time.perf_counter()
    try:
        meta = load_checkpoint(args.checkpoint)
        base = get_space(args.space or meta["space"])
        if "int8" not in base.precisions or base.head_int8:
            raise OfaSearchError(f"--space {base.name!r} must offer int8 stages and keep its "
                                 "head fp32")
        sibling = int8_head_sibling(base)
        width = float(meta["width_mult"])
        nets = {}
        for space in (base, sibling):
            nets[space.name] = Supernet(space, width, generator=torch.Generator())
            load_init_weights(nets[space.name], args.checkpoint)
            nets[space.name].eval()
        name = args.data or (meta.get("config") or {}).get("dataset")
        if name is None:
            raise OfaSearchError("the checkpoint names no dataset: pass --data")
        data = load_dataset(name, data_dir=args.data_dir, in_channels=base.in_channels)
    except OfaSearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    def score(supernet: Supernet, arch: Arch, seed: int) -> float:
        return evaluate_arch(supernet, arch, data, split="test",
                             calib_batches=args.calib_batches, seed=seed)

    rng = np.random.default_rng(args.seed)
    rows: list[dict[str, Any]] = []
    last = (*("fp32",) * (base.num_stages - 1), "int8")
    for i in range(args.n):
        arch = Arch.sample(base.name, rng, width_mult=width).replace(
            precisions=("fp32",) * base.num_stages)
        row: dict[str, Any] = {"subnet": i, "arch": arch.to_string(),
                               "resolution": arch.resolution}
        fp32 = nets[base.name]
        row["fp32"] = score(fp32, arch, args.seed)
        row["fp32_again"] = score(fp32, arch, args.seed + 1)
        for variant, precisions in (("last-int8", last),
                                    ("all-int8", ("int8",) * base.num_stages)):
            stages = arch.replace(precisions=precisions)
            row[variant] = {
                "fp32_head": score(fp32, stages, args.seed),
                "int8_head": score(nets[sibling.name],
                                   Arch.parse(stages.to_string(), sibling.name), args.seed)}
            row[variant]["cost_points"] = 100 * (row[variant]["fp32_head"]
                                                 - row[variant]["int8_head"])
        rows.append(row)
        print(f"[{i + 1}/{args.n}] r{arch.resolution} fp32 {row['fp32']:.4f} (again "
              f"{row['fp32_again']:.4f}); " + "; ".join(
                  f"{v}: fp32 head {row[v]['fp32_head']:.4f}, int8 head "
                  f"{row[v]['int8_head']:.4f}" for v in VARIANTS), flush=True)
    summary = {v: {"cost_points_median": statistics.median(r[v]["cost_points"] for r in rows),
                   "cost_points_max": max(r[v]["cost_points"] for r in rows),
                   "cost_points_mean": statistics.fmean(r[v]["cost_points"] for r in rows)}
               for v in VARIANTS}
    noise = [100 * abs(r["fp32"] - r["fp32_again"]) for r in rows]
    summary["noise_floor_points"] = {"median": statistics.median(noise), "max": max(noise)}
    print(f"\nint8 head's cost in accuracy points (fp32 head − int8 head), over {args.n} subnets:")
    for v in VARIANTS:
        s = summary[v]
        print(f"  {v:<10} median {s['cost_points_median']:+.2f}, mean "
              f"{s['cost_points_mean']:+.2f}, max {s['cost_points_max']:+.2f}")
    print(f"  noise floor (one subnet recalibrated twice): median "
          f"{summary['noise_floor_points']['median']:.2f}, max "
          f"{summary['noise_floor_points']['max']:.2f} points")
    report = {
        "benchmark": "int8_head_accuracy", "created": now_iso(),
        "command": sanitized_command("bench_int8_head_accuracy.py",
                                     sys.argv[1:] if argv is None else argv),
        "checkpoint_space": meta["space"], "space": base.name, "int8_head_space": sibling.name,
        "dataset": name, "n": args.n, "calib_batches": args.calib_batches, "seed": args.seed,
        "wall_s": time.perf_counter() - started, "host": host_info(),
        "summary": summary, "rows": rows,
    }
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
