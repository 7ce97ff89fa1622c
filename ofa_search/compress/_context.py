"""What every compression command starts from: a trained supernet's subnet, extracted,
BN-recalibrated, with its data and its test accuracy."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ofa_search.arch import Arch
from ofa_search.compress.errors import CompressError
from ofa_search.data import DatasetSplits, is_streamed_dataset, iterate_batches, load_dataset
from ofa_search.nn import StaticSubnet, Supernet
from ofa_search.train import calibrated_subnet, evaluate, recalibrate_bn
from ofa_search.train.checkpoint import load_supernet_arch

Say = Callable[[str], None]


@dataclass
class SubnetContext:
    """A calibrated subnet of a checkpoint, and the data it was calibrated on."""

    checkpoint: Path
    meta: dict[str, Any]
    supernet: Supernet
    arch: Arch
    data: DatasetSplits
    net: StaticSubnet
    calib_batches: int
    seed: int

    def calib_inputs(self) -> list[torch.Tensor]:
        """The un-augmented train batches that BN statistics are recomputed on (the same
        ones as :func:`~ofa_search.train.calibrated_subnet`: same generator seed)."""
        gen = torch.Generator().manual_seed(self.seed)
        batches = iterate_batches(self.data.train, 128, shuffle=True, generator=gen,
                                  resolution=self.arch.resolution)
        return [x for x, _ in itertools.islice(batches, self.calib_batches)]

    def recalibrate(self, net: torch.nn.Module) -> torch.nn.Module:
        """``net``'s BN statistics recomputed on :meth:`calib_inputs`; eval mode."""
        return recalibrate_bn(net, self.calib_inputs())

    def accuracy(self, net: torch.nn.Module, split: str = "test") -> float:
        """Top-1 accuracy of ``net`` on ``split`` at the subnet's resolution."""
        return evaluate(net, self.data.split(split), self.arch.resolution)

    def dataset_card(self, accuracy: float) -> dict[str, Any]:
        """The model card's dataset section."""
        return {"name": self.data.name, "split": "test", "samples": len(self.data.test),
                "accuracy": accuracy, "calib_batches": self.calib_batches,
                "calib_seed": self.seed}


def load_subnet(checkpoint: str | os.PathLike[str], arch: str | Arch, *,
                data: DatasetSplits | None = None, data_dir: str | os.PathLike[str] | None = None,
                calib_batches: int = 16, seed: int = 0, say: Say = lambda _: None,
                check: Callable[[Arch], object] | None = None) -> SubnetContext:
    """Load ``checkpoint``, parse ``arch`` in its space, run ``check(arch)`` (options that
    depend on the arch, checked before the data is loaded), load its dataset (or use
    ``data``) at the arch's resolution, and extract the subnet with recalibrated BN."""
    say(f"loading {checkpoint}")
    supernet, meta, parsed = load_supernet_arch(checkpoint, arch)
    if check is not None:
        check(parsed)
    if data is None:
        config = meta.get("config") or {}
        name = config.get("dataset", "digits")
        if is_streamed_dataset(name):
            raise CompressError(f"pruning and exits fine-tune on in-memory datasets; "
                                f"{name!r} is streamed")
        folder = data_dir if data_dir is not None else config.get("data_dir")
        data = load_dataset(name, data_dir=None if folder is None else Path(folder),
                            in_channels=supernet.space.in_channels,
                            resolution=parsed.resolution)
    else:
        data = data.with_resolution(parsed.resolution)
    say(f"extracting {parsed.to_string()} and recalibrating BN on {calib_batches} batches")
    net = calibrated_subnet(supernet, parsed, data, calib_batches=calib_batches, seed=seed)
    return SubnetContext(Path(checkpoint), meta, supernet, parsed, data, net, calib_batches,
                         seed)
