"""Fashion-MNIST supernet on one device, time-boxed: train, then score the largest and the
smallest subnet (issue 21's accuracy target), with the run's wall time.

    python scripts/gpu_fmnist.py OUT.json [--data-dir DIR] [--strategy ps] [--epochs 3]
        [--batch-size 256] [--lr 0.1] [--device cuda] [--amp bf16] [--train-limit 170]
        [--run-dir DIR] [--resume] [--random-subnets N] [--seed S] [--random-erasing P]
        [--space mbv3_small28|mbv3_small28_lite] [--all-resolutions] [--resolutions R ...]
    python scripts/gpu_fmnist.py OUT.json --strategy standalone --arch largest|smallest|ARCH ...
    python scripts/gpu_fmnist.py OUT.json --score CHECKPOINT [CHECKPOINT ...] [--device D]

Trains ``mbv3_small28`` (or ``--space mbv3_small28_lite``) on Fashion-MNIST with
``--strategy`` (``ps``: once-for-all's six phases, ``--epochs`` each; ``sandwich``:
``--epochs`` in all; ``standalone``: ``--arch`` alone, ``--epochs`` in all, the ceiling
its inherited accuracy is measured against) in a child process that is stopped after
``--train-limit`` seconds; checkpoints every ``--checkpoint-every`` steps, so a stopped
run is still scored (its last checkpoint; the record says how far it got), and
``--resume`` continues it from there. Then the largest subnet (at the largest resolution)
and the smallest (at the smallest) are scored on the 10,000 test images after BN
recalibration, on the same device, and ``--random-subnets N`` seeded random ones (a
``standalone`` checkpoint: its one arch); ``--all-resolutions`` scores the largest and the
smallest also at each other resolution of the space (``smallest_r24``: the smallest's
blocks at 24 px; the issue's "< 100K parameters" does not depend on the resolution).
``--resolutions R ...`` trains at these resolutions of the space only (e.g. ``28``,
Fashion-MNIST's own); the largest and the smallest are then scored at the largest and the
smallest of them. ``--random-erasing P`` adds random erasing to the training
augmentation (each image with probability P). ``--score`` scores given checkpoints
instead of training (e.g. copies kept at each phase's end), in the space each was trained
in. Writes ``OUT.json`` atomically. Needs only torch, numpy and this package's core (no
optuna, typer or TVM).
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import signal
import sys
import time
from pathlib import Path
from typing import Any

SPACES = ("mbv3_small28", "mbv3_small28_lite")
"""The fp32 spaces for 28×28 grey images this script trains (``--space``; the first is the
default)."""


def _train(config: dict[str, Any]) -> None:
    from ofa_search.train import TrainConfig, train

    train(TrainConfig(**config))


def _dataset(args: argparse.Namespace) -> Any:
    """Fashion-MNIST, loaded once for every checkpoint scored: calibration and evaluation
    serve its batches at each arch's resolution (every space of ``SPACES`` is grey)."""
    from ofa_search.data import load_dataset

    return load_dataset("fashion-mnist", data_dir=args.data_dir, in_channels=1)


def _score(checkpoint: Path, args: argparse.Namespace, data: Any) -> dict[str, Any]:
    """The checkpoint's epoch and step, and the test accuracy of its largest, smallest
    (with ``args.all_resolutions``: also at each other resolution of the space) and
    ``args.random_subnets`` random subnets (a stand-alone run's: its arch) after BN
    recalibration, on ``args.device``."""
    from ofa_search.arch import Arch, parse_arch
    from ofa_search.space import get_space
    from ofa_search.train import evaluate_arch, load_supernet
    from ofa_search.units import count_params

    net, meta = load_supernet(checkpoint)
    net.to(args.device)
    space = meta["space"]
    config = meta.get("config") or {}
    resolutions = config.get("resolutions")  # the run's, when it sampled only some
    archs = _named_archs(space, resolutions)
    trained = config.get("arch")
    if trained is not None:  # a stand-alone run: the other subnets were never trained
        archs = {_arch_name(trained, space): parse_arch(trained, space)}
        if args.all_resolutions:
            print(f"{checkpoint.name}: trained alone at one resolution; --all-resolutions "
                  "scores it at that one only", flush=True)
    else:
        if args.all_resolutions:  # e.g. smallest_r24: the smallest's blocks at 24 px
            archs.update({f"{name}_r{res}": dataclasses.replace(arch, resolution=res)
                          for name, arch in list(archs.items())
                          for res in get_space(space).resolutions if res != arch.resolution})
        archs.update({f"random_{seed}": Arch.sample(
            space, seed, resolution=resolutions[seed % len(resolutions)] if resolutions else None)
            for seed in range(args.random_subnets)})
    scores = {}
    for name, arch in archs.items():
        eval_start = time.monotonic()
        accuracy = evaluate_arch(net, arch, data, split="test", seed=args.calib_seed)
        params = count_params(arch)
        scores[name] = {"arch": arch.to_string(), "params": params,
                        "test_accuracy": accuracy,
                        "eval_s": round(time.monotonic() - eval_start, 1)}
        print(f"{checkpoint.name} {name}: {accuracy:.4f} test accuracy ({params} params)",
              flush=True)
    return {"checkpoint_epoch": meta["epoch"], "checkpoint_step": meta.get("step"),
            "subnets": scores}


def _named_archs(space: str, resolutions: list[int] | None = None) -> dict[str, Any]:
    """The space's largest and smallest subnets, by name; with ``resolutions`` (a run that
    trained at those only), at the largest and the smallest of them."""
    from ofa_search.arch import Arch

    largest, smallest = Arch.largest(space), Arch.smallest(space)
    if resolutions:
        largest = dataclasses.replace(largest, resolution=max(resolutions))
        smallest = dataclasses.replace(smallest, resolution=min(resolutions))
    return {"largest": largest, "smallest": smallest}


def _arch_name(arch: str, space: str) -> str:
    """``largest`` or ``smallest`` when ``arch`` is that subnet of the space, else ``arch``."""
    return next((name for name, named in _named_archs(space).items()
                 if named.to_string() == arch), "arch")


def _resolve_arch(arch: str | None, strategy: str, space: str) -> str | None:
    """``--arch`` as an arch string (``largest``/``smallest`` named by the space), or a
    ValueError when it is missing for ``standalone``, given for another strategy, or not
    an arch of the space."""
    from ofa_search.arch import parse_arch

    if (strategy == "standalone") != (arch is not None):
        raise ValueError("--arch goes with --strategy standalone, and only with it")
    if arch is None:
        return None
    named = _named_archs(space)
    return (named[arch] if arch in named else parse_arch(arch, space)).to_string()


def _score_only(args: argparse.Namespace) -> int:
    from ofa_search.atomic import atomic_write_json

    missing = [str(path) for path in args.score if not path.is_file()]
    if missing:
        print(f"error: no checkpoint at {', '.join(missing)}", file=sys.stderr)
        return 2
    start = time.monotonic()
    data = _dataset(args)
    scored = [{"checkpoint": path.name, **_score(path, args, data)} for path in args.score]
    record = {"benchmark": "gpu_fmnist_scores", "device": args.device,
              "calib_seed": args.calib_seed, "scored": scored,
              "wall_s": round(time.monotonic() - start, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, record, indent=2)
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--space", default=SPACES[0], choices=SPACES,
                        help="mbv3_small28_lite: a narrower head, its smallest subnet under "
                        "100K parameters")
    parser.add_argument("--strategy", default="ps", choices=("ps", "sandwich", "standalone"))
    parser.add_argument("--arch", default=None,
                        help="standalone only: largest, smallest or an arch string")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0,
                        help="training seed (weights, subnet draws, batch order)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--amp", default="bf16")
    parser.add_argument("--train-limit", type=float, default=170.0,
                        help="seconds of training before the run is stopped and scored")
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="the training run's folder (default: OUT without .json)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in the run folder from its last checkpoint")
    parser.add_argument("--random-subnets", type=int, default=0,
                        help="also score this many random subnets (seeds 0, 1, ...)")
    parser.add_argument("--random-erasing", type=float, default=0.0, metavar="P",
                        help="erase a random box of each training image with probability "
                        "P (Zhong et al.: 0.5)")
    parser.add_argument("--all-resolutions", action="store_true",
                        help="also score the largest and the smallest subnet at each other "
                        "resolution of the space (e.g. smallest_r24)")
    parser.add_argument("--resolutions", type=int, nargs="+", default=None, metavar="R",
                        help="train at these resolutions of the space only (e.g. 28); not "
                        "with --strategy standalone (the arch sets it)")
    parser.add_argument("--calib-seed", type=int, default=0,
                        help="seed of the BN recalibration batches (a second seed measures "
                        "the scores' noise)")
    parser.add_argument("--score", type=Path, nargs="+", default=None, metavar="CHECKPOINT",
                        help="score these checkpoints; no training")
    args = parser.parse_args(argv)
    if args.random_subnets < 0 or (args.strategy == "standalone" and args.random_subnets):
        print("error: --random-subnets must be >= 0, and 0 with --strategy standalone (its "
              f"other subnets are never trained), got {args.random_subnets}", file=sys.stderr)
        return 2
    if args.all_resolutions and args.strategy == "standalone":
        print("error: --all-resolutions does not go with --strategy standalone (its subnet "
              "is trained at one resolution)", file=sys.stderr)
        return 2
    if args.resolutions is not None and args.strategy == "standalone":
        print("error: --resolutions does not go with --strategy standalone (its arch sets the "
              "resolution)", file=sys.stderr)
        return 2
    if args.score is not None:
        return _score_only(args)

    import torch

    from ofa_search.atomic import atomic_write_json
    from ofa_search.space import get_space

    offered = get_space(args.space).resolutions
    if args.resolutions is not None and not set(args.resolutions) <= set(offered):
        print(f"error: --resolutions {' '.join(map(str, args.resolutions))}: space "
              f"{args.space} has resolutions {', '.join(map(str, offered))}", file=sys.stderr)
        return 2
    try:
        arch = _resolve_arch(args.arch, args.strategy, args.space)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run_dir = args.run_dir or args.out.with_suffix("")
    config = {"space": args.space, "dataset": "fashion-mnist", "data_dir": args.data_dir,
              "strategy": args.strategy, "arch": arch, "epochs": args.epochs,
              "batch_size": args.batch_size, "lr": args.lr, "warmup_epochs": 0,
              "seed": args.seed, "random_erasing": args.random_erasing,
              "resolutions": args.resolutions,
              "out_dir": str(run_dir), "device": args.device, "amp": args.amp,
              "checkpoint_every": args.checkpoint_every, "resume": args.resume,
              "quiet": False}
    from ofa_search.errors import OfaSearchError
    from ofa_search.train import TrainConfig

    try:  # a bad setting is refused here, before a child process starts
        TrainConfig(**config)
    except OfaSearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    start = time.monotonic()
    # spawn: the child starts its own CUDA context (a forked CUDA one would be unusable)
    child = multiprocessing.get_context("spawn").Process(target=_train, args=(config,))
    # a SIGTERM to this process (a job scheduler's stop) ends the training with it
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    child.start()
    try:
        child.join(args.train_limit)
        stopped = child.is_alive()
    finally:
        if child.is_alive():
            child.terminate()
            child.join()
    train_s = time.monotonic() - start
    record: dict[str, Any] = {"benchmark": "gpu_fmnist", "config": config,
                              "train_limit_s": args.train_limit, "train_s": round(train_s, 1),
                              "stopped_at_limit": stopped, "exit_code": child.exitcode,
                              "device_name": (torch.cuda.get_device_name(0)
                                              if torch.cuda.is_available() else "cpu")}
    checkpoint = run_dir / "checkpoint.pt"
    # a run that failed is not scored: the checkpoint may be an earlier run's
    failed = not stopped and child.exitcode != 0
    if failed:
        print(f"error: training exited with code {child.exitcode}; nothing scored",
              flush=True)
    elif checkpoint.exists():
        record["total_epochs"] = (6 * args.epochs if args.strategy == "ps" else args.epochs)
        record.update(_score(checkpoint, args, _dataset(args)))
    record["wall_s"] = round(time.monotonic() - start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, record, indent=2)
    print(f"wrote {args.out}")
    return 0 if "subnets" in record else 1


if __name__ == "__main__":
    raise SystemExit(main())
