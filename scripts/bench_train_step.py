"""Supernet training-step throughput: the loop's own step (``SupernetStep``: sandwich rule,
in-place distillation, clipping, SGD) on synthetic batches already on the device, so
that the model step is measured apart from the data pipeline.

    python scripts/bench_train_step.py OUT.json [--device auto] [--space ofa_mbv3]
        [--resolution 224] [--batch-size 256] [--steps 20] [--warmup 5]
        [--variants fp32 fp32-cl bf16-cl bf16-cl-compile] [--profile] [--profile-steps 3]
        [--threads N] [--strategy sandwich|precision] [--precision-phase binary]
        [--binary-share P] [--fp32-smallest]

Variants: ``fp32`` (contiguous layout), ``-cl`` channels-last, ``bf16``/``fp16`` autocast,
``-compile`` the supernet wrapped in ``torch.compile`` (its compile time is the warm-up's
excess over a steady step, reported apart), ``-nobench`` cuDNN's heuristics instead of
its timed choice of conv algorithms (``torch.backends.cudnn.benchmark``, on by default as
in training). ``--strategy precision`` times the low-precision fine-tuning step instead
(one phase of ``--precision-phase``, e.g. ``binary`` on ``mbv3_small28_mp``, with the
sampling options of ``train --strategy precision``). Each variant gets a fresh supernet from the
same seed and the same arch sequence. ``--profile`` adds the top operators of a few
profiled steps (torch profiler, self time on the device). Prints a table and writes JSON
(atomically). Runs where only torch, numpy and this package's core are installed (the GPU
host of ``scripts/gpu_check.sh``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ofa_search.atomic import atomic_write_text
from ofa_search.nn import Supernet
from ofa_search.train import (
    Autocast,
    SupernetStep,
    TrainConfig,
    make_strategy,
    param_groups,
    resolve_device,
)
from ofa_search.train.strategies import PrecisionStrategy, default_precision_phases

VARIANTS = ("fp32", "fp32-cl", "bf16-cl", "fp16-cl", "bf16-cl-compile", "bf16-cl-nobench")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _variant(name: str) -> tuple[str, bool, bool, bool]:
    parts = name.split("-")
    amp = {"fp32": "off", "bf16": "bf16", "fp16": "fp16"}.get(parts[0])
    if amp is None or any(p not in ("cl", "compile", "nobench") for p in parts[1:]):
        raise SystemExit(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    return amp, "cl" in parts, "compile" in parts, "nobench" not in parts


def run_variant(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    amp_mode, channels_last, compiled, cudnn_benchmark = _variant(name)
    config = TrainConfig(space=args.space, dataset="digits", batch_size=args.batch_size,
                         amp=amp_mode, channels_last=channels_last, seed=args.seed,
                         device=str(device), n_random=args.n_random)
    # the step runs outside run_training, which would set it: set here (the CPU ignores it)
    torch.backends.cudnn.benchmark = cudnn_benchmark
    options: dict[str, Any] = {}
    if args.strategy == "precision":
        phase = next((p for p in default_precision_phases(args.space)
                      if p.name == args.precision_phase), None)
        if phase is None:
            raise SystemExit(f"space {args.space!r} has no precision phase "
                             f"{args.precision_phase!r}")
        options = {"phases": (phase,), "binary_share": args.binary_share,
                   "fp32_smallest": args.fp32_smallest}
    strategy = make_strategy(args.strategy, args.space, None, seed=args.seed,
                             resolutions=(args.resolution,), n_random=args.n_random,
                             **options)
    net = Supernet(args.space, strategy.width_mult,
                   generator=torch.Generator().manual_seed(args.seed)).to(device)
    if isinstance(strategy, PrecisionStrategy):
        net.set_binary_activations(strategy.binary_activations)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = torch.optim.SGD(param_groups(net, config.weight_decay), lr=0.01, momentum=0.9,
                                nesterov=True)
    model: torch.nn.Module = net
    if compiled:
        model = torch.compile(net)  # type: ignore[assignment]
    step = SupernetStep(model, config, strategy.largest, Autocast(amp_mode, device))
    gen = torch.Generator().manual_seed(args.seed)
    channels = strategy.space.in_channels
    x = torch.randn(args.batch_size, channels, args.resolution, args.resolution,
                    generator=gen).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, strategy.space.num_classes, (args.batch_size,),
                      generator=gen).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warm_times = []
    for _ in range(args.warmup):
        start = time.perf_counter()
        step(strategy.step(), x, y, optimizer, net.parameters())
        _sync(device)
        warm_times.append(time.perf_counter() - start)
    start = time.perf_counter()
    losses = []
    for _ in range(args.steps):
        losses.append(step(strategy.step(), x, y, optimizer, net.parameters()))
    _sync(device)
    seconds = time.perf_counter() - start
    per_step = seconds / args.steps
    row: dict[str, Any] = {
        "variant": name, "amp": amp_mode, "channels_last": channels_last,
        "compiled": compiled, "cudnn_benchmark": cudnn_benchmark, "steps": args.steps,
        "seconds": seconds,
        "step_ms": 1000 * per_step, "img_s": args.batch_size / per_step,
        "subnet_img_s": args.batch_size * (2 + args.n_random) / per_step,
        "warmup_s": sum(warm_times),
        # each warm-up step: the first steps meet conv shapes the backends have not seen
        # (cuDNN builds, or with benchmark mode times, a plan per new shape)
        "warmup_step_ms": [round(1000 * t, 1) for t in warm_times],
        "warmup_excess_s": max(0.0, sum(warm_times) - args.warmup * per_step),
        "final_loss": losses[-1],
    }
    if device.type == "cuda":
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if args.profile:
        row["top_ops"] = _profile(step, strategy, x, y, optimizer, net, device,
                                  n=args.profile_steps)
    return row


def _profile(step: SupernetStep, strategy: Any, x: torch.Tensor, y: torch.Tensor,
             optimizer: torch.optim.Optimizer, net: Supernet, device: torch.device,
             n: int = 3, top: int = 15) -> list[dict[str, Any]]:
    """The operators with the most self time over ``n`` steps (device time on CUDA)."""
    from torch.profiler import ProfilerActivity, profile  # deferred: only with --profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for _ in range(n):
            step(strategy.step(), x, y, optimizer, net.parameters())
        _sync(device)
    on_device = device.type == "cuda"
    events = prof.key_averages()
    key = "self_device_time_total" if on_device else "self_cpu_time_total"
    total = sum(getattr(e, key, 0.0) for e in events) or 1.0
    rows = sorted(events, key=lambda e: getattr(e, key, 0.0), reverse=True)[:top]
    return [{"op": e.key, "calls": e.count, "self_ms": getattr(e, key, 0.0) / 1000 / n,
             "share": getattr(e, key, 0.0) / total} for e in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--space", default="ofa_mbv3")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--n-random", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--variants", nargs="+", default=["fp32", "fp32-cl", "bf16-cl"])
    parser.add_argument("--strategy", choices=("sandwich", "precision"), default="sandwich")
    parser.add_argument("--precision-phase", default="binary",
                        help="with --strategy precision: the phase whose step is timed")
    parser.add_argument("--binary-share", type=float, default=None)
    parser.add_argument("--fp32-smallest", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--profile-steps", type=int, default=3,
                        help="steps the profile covers (its numbers are per step)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rows = []
    for name in args.variants:
        print(f"[bench_train_step] {name} ...", file=sys.stderr, flush=True)
        rows.append(run_variant(name, args, device))
    device_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else platform.processor() or platform.machine())
    record = {
        "benchmark": "train_step", "command": "python scripts/bench_train_step.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "device": str(device), "device_name": device_name, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "space": args.space, "strategy": args.strategy,
        **({"precision_phase": args.precision_phase, "binary_share": args.binary_share,
            "fp32_smallest": args.fp32_smallest} if args.strategy == "precision" else {}),
        "resolution": args.resolution, "batch_size": args.batch_size,
        "subnets_per_step": 2 + args.n_random, "rows": rows,
    }
    base = rows[0]["img_s"]
    print(f"{'variant':<18} {'step ms':>9} {'img/s':>8} {'× first':>8} {'warm-up excess s':>17}")
    for row in rows:
        print(f"{row['variant']:<18} {row['step_ms']:>9.1f} {row['img_s']:>8.1f} "
              f"{row['img_s'] / base:>8.2f} {row['warmup_excess_s']:>17.1f}")
        for op in row.get("top_ops", [])[:8]:
            print(f"    {op['share']:6.1%} {op['self_ms']:9.2f} ms  {op['op']}")
    atomic_write_text(args.out, json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
