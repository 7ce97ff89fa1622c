from __future__ import annotations

from collections.abc import Iterator

import pytest
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


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for the test (much faster than two on a shared 2-core machine),
    restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
