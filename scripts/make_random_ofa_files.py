"""Stand-ins for once-for-all's published files, built by once-for-all's own code with
seeded random weights: to try the import path without downloading anything.

    python scripts/make_random_ofa_files.py OUT_DIR [--width 1.0] [--seed 0]
        [--images N]

Writes ``OUT_DIR/ofa_mbv3_d234_e346_k357_w<width>`` (``{"state_dict": …}``, as once-for-all's
model zoo saves it), ``OUT_DIR/acc_predictor.pth`` (its tutorial accuracy predictor's
state dict) and, with ``--images N``, a tiny ImageNet-layout folder ``OUT_DIR/imagenet``
(``train/`` and ``val/``, 3 classes, N random JPEGs per class and split). Accuracies of
these stand-ins mean nothing; the real files come from once-for-all's public release.
Needs the ``dev`` extra (``ofa``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ofa_search.interop.reference import ofa_module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--width", type=float, default=1.0, choices=(1.0, 1.2))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    networks = ofa_module("imagenet_classification.elastic_nn.networks")
    tutorial = ofa_module("tutorial.accuracy_predictor")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        net = networks.OFAMobileNetV3(n_classes=1000, dropout_rate=0, width_mult=args.width,
                                      ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6],
                                      depth_list=[2, 3, 4])
        predictor = tutorial.AccuracyPredictor(pretrained=False, device="cpu")
    supernet = args.out / f"ofa_mbv3_d234_e346_k357_w{args.width}"
    torch.save({"state_dict": net.state_dict()}, supernet)
    torch.save(predictor.model.state_dict(), args.out / "acc_predictor.pth")
    print(f"wrote {supernet} and {args.out / 'acc_predictor.pth'}")
    if args.images:
        rng = np.random.default_rng(args.seed)
        for split in ("train", "val"):
            for wnid in ("n01440764", "n01443537", "n01484850"):
                folder = args.out / "imagenet" / split / wnid
                folder.mkdir(parents=True, exist_ok=True)
                for i in range(args.images):
                    size = (int(rng.integers(160, 400)), int(rng.integers(160, 400)))
                    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(folder / f"{wnid}_{i}.JPEG")
        print(f"wrote {args.out / 'imagenet'} (3 classes, {args.images} images per class "
              "and split)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
