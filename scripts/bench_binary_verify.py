"""How binary packages compare with the PyTorch subnet: end to end against piece by piece.

    python scripts/bench_binary_verify.py [OUT] [--seeds 6] [--images 48]
        [--checkpoint C --arch A [--arch A2 ...] --data fashion-mnist --test-images 256
         --accuracy-images 2000]

Exports verify a binary package piece by piece
(:func:`ofa_search.binary.formats.stepwise_difference`); this measures why. For each
package it prints and records:

- ``end_to_end``: the largest |Δlogit| of the package run whole against the PyTorch
  subnet (relative to the logit range when the arch has int8 stages), the images over
  the export tolerance, and the top-1 agreement;
- ``per_piece``: the same comparison piece by piece (each fused block or step on
  PyTorch's input to it), as exports check it, with the TVM backend (fused blocks at one
  thread) and with NumPy, with and without the near-tie margin;
- ``near_ties``: the share of each binary layer's pixels that the margin leaves out.

Packages: random-init digits subnets of ``mbv3_small28_mp`` at 20 px (three int8 + binary
archs and one all-binary arch, ``--seeds`` weight seeds each, ``--images`` test images),
and, with ``--checkpoint``, each ``--arch`` of that supernet with its BN statistics
recalibrated as ``ofa-search export`` does, on ``--test-images`` test images of its
dataset, and the test accuracy of the package and of the PyTorch subnet on the first
``--accuracy-images``. One thread throughout. Writes ``OUT`` (default
``results/bench_binary_verify.json``) atomically, with the host.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

SPACE = "mbv3_small28_mp"
RANDOM_ARCHS = {
    "binary, int8, binary, int8": "r20_w1.0_k3e3-k5e4@binary_k7e4-k3e3@int8_"
                                  "k3e4-k5e3@binary_k5e3-k3e6@int8",
    "binary, binary, int8, int8": "r20_w1.0_k3e3-k5e4@binary_k7e4-k3e3@binary_"
                                  "k3e4-k5e3@int8_k5e3-k3e6@int8",
    "int8, binary, int8, binary": "r20_w1.0_k3e3-k5e4@int8_k7e4-k3e3@binary_"
                                  "k3e4-k5e3@int8_k5e3-k3e6@binary",
    "all binary": "r20_w1.0_k3e3-k5e4@binary_k7e4-k3e3@binary_k3e4-k5e3@binary_"
                  "k5e3-k3e6@binary",
}


def compare(net: Any, path: Path, package: Any, x: Any) -> dict[str, Any]:
    """End to end and piece by piece, for ``package`` (loaded from ``path``) of ``net`` on
    ``x``."""
    import torch

    import ofa_search.binary.formats as formats
    from ofa_search.binary import BinaryPackage
    from ofa_search.binary.package import trace_subnet
    from ofa_search.binary.program import BinaryStep
    from ofa_search.quant.formats import relative_logit_error

    relative = "int8" in net.arch.precisions
    tolerance = formats.BINARY.tolerance_of(net)
    with torch.no_grad():
        expected = net(x).numpy()
    got = package.run(x.numpy())
    per_image = np.abs(got - expected).max(axis=1)
    if relative:
        per_image = per_image / max(float(expected.max() - expected.min()), 1e-12)
    row: dict[str, Any] = {
        "arch": net.arch.to_string(), "relative": relative, "tolerance": tolerance,
        "images": int(x.shape[0]),
        "end_to_end": (relative_logit_error(got, expected) if relative
                       else float(np.abs(got - expected).max())),
        "images_over_tolerance": int((per_image > tolerance).sum()),
        "top1_agreement": float(np.mean(got.argmax(1) == expected.argmax(1))),
    }
    # the package as given (TVM, fused blocks, when TVM is installed), and NumPy
    row["backend"], row["fused_blocks"] = package.backend, package.fused_blocks
    row["per_piece_tvm"] = formats.stepwise_difference(package, net, x, relative=relative)
    row["per_piece_tvm_without_margin"] = formats.stepwise_difference(
        package, net, x, relative=relative, tie_margin=0.0)
    row["per_piece_numpy"] = formats.stepwise_difference(
        BinaryPackage.load(path, backend="numpy"), net, x, relative=relative)
    shares: list[float] = []

    def visit(index: int, inputs: dict[str, Any], _output: Any) -> None:
        step = package.program.steps[index] if index < len(package.program.steps) else None
        if isinstance(step, BinaryStep):
            layer = package.program.layers[step.layer]
            shares.append(float(formats.near_ties(layer, inputs[step.input].numpy()).mean()))

    with torch.no_grad():
        trace_subnet(net, x, visit)
    row["near_tie_pixels"] = {"median": float(np.median(shares)), "max": float(max(shares))}
    return row


def random_rows(seeds: int, images: int, folder: Path) -> list[dict[str, Any]]:
    import torch

    from ofa_search.arch import parse_arch
    from ofa_search.binary import BinaryPackage, write_binary_package
    from ofa_search.data import iterate_batches, load_dataset
    from ofa_search.nn import build_static
    from ofa_search.train.bn_calibration import recalibrate_bn

    digits = load_dataset("digits", in_channels=1, resolution=20)
    batches = [x.numpy() for x, _ in itertools.islice(iterate_batches(
        digits.train, 32, shuffle=True, generator=torch.Generator().manual_seed(0)), 4)]
    x, _ = next(iterate_batches(digits.test, images, shuffle=False))
    rows = []
    for (label, arch), seed in itertools.product(RANDOM_ARCHS.items(), range(seeds)):
        net = build_static(parse_arch(arch, SPACE), torch.Generator().manual_seed(seed))
        recalibrate_bn(net, [torch.from_numpy(b) for b in batches])
        net.eval()
        path = write_binary_package(net, folder / f"r{seed}.ofab", batches)
        row = {"source": "random-init digits", "label": label, "seed": seed,
               **compare(net, path, BinaryPackage.load(path), x)}
        rows.append(row)
        print_row(row)
    return rows


def accuracies(net: Any, package: Any, split: Any, images: int, resolution: int
               ) -> dict[str, Any]:
    """Test accuracy of the package and of the PyTorch subnet on the first ``images``."""
    import torch

    from ofa_search.data import iterate_batches

    right = {"package": 0, "pytorch": 0}
    seen = 0
    for x, y in iterate_batches(split, 250, shuffle=False, resolution=resolution):
        x, y = x[:images - seen], y[:images - seen]
        with torch.no_grad():
            right["pytorch"] += int((net(x).argmax(1) == y).sum())
        right["package"] += int((package.run(x.numpy()).argmax(1) == y.numpy()).sum())
        seen += len(y)
        if seen >= images:
            break
    return {"accuracy_images": seen,
            **{f"accuracy_{name}": count / seen for name, count in right.items()}}


def checkpoint_rows(checkpoint: str, archs: list[str], data_name: str, images: int,
                    accuracy_images: int, folder: Path) -> list[dict[str, Any]]:
    from ofa_search.binary import BinaryPackage, write_binary_package
    from ofa_search.data import iterate_batches, load_dataset
    from ofa_search.train.bn_calibration import calibrated_subnet
    from ofa_search.train.checkpoint import load_supernet_arch

    rows = []
    for arch in archs:
        supernet, _, parsed = load_supernet_arch(checkpoint, arch)
        data = load_dataset(data_name, in_channels=supernet.space.in_channels,
                            resolution=parsed.resolution)
        net = calibrated_subnet(supernet, parsed, data).eval()
        batches = [b.numpy() for b, _ in itertools.islice(
            iterate_batches(data.train, 64, shuffle=False), 4)]
        path = write_binary_package(net, folder / "c.ofab", batches)
        x, _ = next(iterate_batches(data.test, images, shuffle=False,
                                    resolution=parsed.resolution))
        package = BinaryPackage.load(path)  # compiled once for both measurements
        row = {"source": f"{Path(checkpoint).name} on {data_name}",
               "label": ", ".join(parsed.precisions), "seed": None,
               **compare(net, path, package, x),
               **accuracies(net, package, data.test, accuracy_images, parsed.resolution)}
        rows.append(row)
        print_row(row)
        print(f"{'':62s} test accuracy on {row['accuracy_images']} images: package "
              f"{100 * row['accuracy_package']:.2f} %, PyTorch "
              f"{100 * row['accuracy_pytorch']:.2f} %", flush=True)
    return rows


def print_row(row: dict[str, Any]) -> None:
    print(f"{row['source'][:28]:28s} {row['label'][:28]:28s} {row['seed']!s:>4s} "
          f"{row['end_to_end']:10.3g} {row['images_over_tolerance']:3d}/{row['images']:<4d}"
          f"{100 * row['top1_agreement']:6.1f} % {row['per_piece_tvm']:10.3g} "
          f"{row['per_piece_numpy']:10.3g} {row['per_piece_tvm_without_margin']:10.3g} "
          f"{100 * row['near_tie_pixels']['median']:6.2f} % "
          f"{100 * row['near_tie_pixels']['max']:6.2f} %", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="results/bench_binary_verify.json")
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--checkpoint")
    parser.add_argument("--arch", action="append", default=[])
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--test-images", type=int, default=256)
    parser.add_argument("--accuracy-images", type=int, default=2000)
    args = parser.parse_args(argv)
    if args.arch and not args.checkpoint:
        parser.error("--arch needs --checkpoint")
    import torch

    from ofa_search.atomic import atomic_write_json
    from ofa_search.profiling.host import host_info

    torch.set_num_threads(1)
    print(f"{'packages':28s} {'stages':28s} {'seed':>4s} {'end to end':>10s} "
          f"{'over':>8s} {'top-1':>8s} {'per piece':>10s} {'(NumPy)':>10s} "
          f"{'no margin':>10s} {'ties med':>8s} {'ties max':>8s}")
    with tempfile.TemporaryDirectory() as tmp:
        rows = random_rows(args.seeds, args.images, Path(tmp))
        if args.checkpoint:
            rows += checkpoint_rows(args.checkpoint, args.arch, args.data, args.test_images,
                                    args.accuracy_images, Path(tmp))
    from ofa_search.binary.formats import TIE_MARGIN

    command = "python scripts/bench_binary_verify.py " + " ".join(
        a if "/" not in a or a == args.out else Path(a).name for a in sys.argv[1:])
    atomic_write_json(args.out, {"benchmark": "binary_verify", "command": command,
                                 "tie_margin": TIE_MARGIN, "host": host_info(),
                                 "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
