"""Helpers shared by test modules (a module of its own: the name ``conftest`` is taken by
several folders' fixture files)."""

from __future__ import annotations

import torch

from ofa_search.arch import Arch
from ofa_search.nn import Supernet


def calibrated_supernet(space: str, width_mult: float | None = None, seed: int = 0) -> Supernet:
    """A randomly initialised supernet whose BN statistics come from one train-mode batch of
    the largest arch, so that outputs have a usable scale (O(0.1–1)); in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    net = Supernet(space, width_mult, generator=gen)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 1.0
    largest = Arch.largest(space, net.width_mult).replace(resolution=net.space.resolutions[0])
    net.train()
    with torch.no_grad():
        x = torch.randn(8, net.space.in_channels, largest.resolution, largest.resolution,
                        generator=gen)
        net(x, largest)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.1
    return net.eval()
