"""Which shared weights cost the fp32 subnets accuracy in binary fine-tuning (issue 22).

Binary fine-tuning (``--strategy precision``) trains the binary convs on the latent
weights the fp32 subnets use. Its binary convs have their own batch norms, but share with
the fp32 path the 1×1 conv weights, the depthwise conv and its batch norm, and
squeeze-excite. This diagnostic takes a fine-tuned supernet and puts back, one group at a
time, the values those shared tensors had in the fp32 start, then scores the fp32
subnets (and the binary ones) again:

    python scripts/bench_shared_weight_drift.py --start FP32/supernet/checkpoint.pt \\
        --tuned RUN/checkpoint.pt [--record results/...json]

Groups: ``pointwise`` (expand and project conv weights), ``depthwise`` (depthwise
weights and kernel transforms), ``depthwise_bn`` (its affine parameters), ``se``
(squeeze-excite). A group whose restoration lifts the fp32 smallest subnet back toward
the start is where the binary training hurts it; the binary subnets' accuracy with the
same restoration shows what they lose. Restoring a group breaks its co-adaptation with
the rest, so the numbers are a diagnostic, not a recipe. Test accuracy at 28 px, BN
recalibrated, one thread. Prints a table and writes JSON (atomically) with ``--record``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from ofa_search.arch import Arch
from ofa_search.atomic import atomic_write_text
from ofa_search.data import load_dataset
from ofa_search.profiling.host import host_info
from ofa_search.train import evaluate_arch, load_supernet
from ofa_search.train.checkpoint import load_checkpoint

GROUPS: dict[str, tuple[str, ...]] = {
    "pointwise": (".expand_conv.weight", ".project.weight"),
    "depthwise": (".depthwise.weight", ".depthwise.transforms."),
    "depthwise_bn": (".depthwise_bn.weight", ".depthwise_bn.bias"),
    "se": (".se.",),
}
"""Shared tensors of the elastic blocks (``stages.*``), by a part of their names."""
RESOLUTION = 28


def _in_group(key: str, group: str) -> bool:
    return key.startswith("stages.") and any(part in key for part in GROUPS[group])


def subnet_archs(space: str, num_stages: int) -> dict[str, Arch]:
    largest = Arch.largest(space).replace(resolution=RESOLUTION)
    smallest = Arch.smallest(space).replace(resolution=RESOLUTION)
    binary = ("binary",) * num_stages
    return {"fp32_largest": largest, "fp32_smallest": smallest,
            "binary_largest": largest.replace(precisions=binary),
            "binary_smallest": smallest.replace(precisions=binary)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--start", type=Path, required=True, help="the fp32 start checkpoint")
    parser.add_argument("--tuned", type=Path, required=True,
                        help="the binary fine-tuned checkpoint (--strategy precision)")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--record", type=Path, default=None)
    args = parser.parse_args(argv)
    for path in (args.start, args.tuned):
        if not path.is_file():
            parser.error(f"{path}: no such file")
    torch.set_num_threads(1)
    start_state = load_checkpoint(args.start)["model"]
    net, meta = load_supernet(args.tuned)
    tuned_state = {k: v.clone() for k, v in net.state_dict().items()}
    archs = subnet_archs(net.space.name, net.space.num_stages)
    data = load_dataset(args.dataset, seed=0, in_channels=net.space.in_channels,
                        resolution=RESOLUTION)
    rows: dict[str, dict[str, Any]] = {}
    for variant in ("as tuned", *GROUPS):
        state = dict(tuned_state)
        restored = 0
        if variant in GROUPS:
            for key in state:
                if _in_group(key, variant):
                    if key not in start_state or start_state[key].shape != state[key].shape:
                        raise SystemExit(f"{args.start}: no tensor {key} of shape "
                                         f"{tuple(state[key].shape)}")
                    state[key] = start_state[key]
                    restored += 1
        net.load_state_dict(state)
        rows[variant] = {"restored_tensors": restored,
                         **{name: evaluate_arch(net, arch, data, split="test", seed=0)
                            for name, arch in archs.items()}}
        print(f"{variant:<14} " + " ".join(f"{name} {rows[variant][name]:.4f}"
                                           for name in archs), flush=True)
    record = {"benchmark": "shared_weight_drift",
              "command": "python scripts/bench_shared_weight_drift.py "
              + " ".join(sys.argv[1:] if argv is None else argv),
              "space": net.space.name, "binary_ablation": list(
                  (meta.get("config") or {}).get("binary_ablation") or []),
              "groups": GROUPS, "host": host_info(), "rows": rows}
    text = json.dumps(record, indent=2) + "\n"
    text = text.replace(str(args.start), "FP32/supernet/checkpoint.pt").replace(
        str(args.tuned), "RUN/checkpoint.pt")
    if args.record is not None:
        atomic_write_text(args.record, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
