"""Helpers shared by test modules (a module of its own: the name ``conftest`` is taken by
several folders' fixture files)."""

from __future__ import annotations

from pathlib import Path

import torch

from ofa_search.arch import Arch
from ofa_search.nn import Supernet, extract
from ofa_search.nn.static import StaticSubnet


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


def save_untrained_checkpoint(space: str, path: Path, seed: int = 2) -> Path:
    """:func:`calibrated_supernet` saved as a checkpoint (for export tests that need a
    checkpoint of a space but no training)."""
    from ofa_search.train.checkpoint import save_checkpoint

    net = calibrated_supernet(space, seed=seed)
    return save_checkpoint(path, {"space": space, "width_mult": net.width_mult,
                                  "strategy": {"name": "untrained"}, "epoch": 0, "step": 0,
                                  "model": net.state_dict(), "optimizer": {},
                                  "scheduler": {}, "rng": {}, "config": {"dataset": "digits"}})


def save_proxy_accuracy_predictor(space: str, path: Path, n: int = 64) -> Path:
    """A small MLP accuracy predictor fitted on a MACs proxy of ``n`` seeded archs, saved
    to ``path`` (workspaces whose predictor only has to exist and rank by size)."""
    import numpy as np

    from ofa_search.units import count_macs
    from predictors.accuracy import MlpAccuracyPredictor

    rng = np.random.default_rng(0)
    archs = [Arch.sample(space, rng) for _ in range(n)]
    proxy = np.array([0.6 + 0.1 * np.log(count_macs(a) / 1e6) for a in archs])
    MlpAccuracyPredictor(space, hidden=(16,), epochs=3, min_steps=30).fit(
        archs, proxy).save(path)
    return path


def extracted_after_observing(net: Supernet, arch: Arch, gen: torch.Generator,
                              batch: int = 4) -> StaticSubnet:
    """``arch`` extracted from ``net`` after one train-mode pass over a random batch (which
    observes its int8 ranges), checked to compute what ``net`` computes in eval mode
    (within 1e-5, on a fresh batch of outputs that are not all near 0)."""
    x = torch.randn(batch, net.space.in_channels, arch.resolution, arch.resolution,
                    generator=gen)
    net.train()
    with torch.no_grad():
        net(x, arch)
    net.eval()
    static = extract(net, arch).eval()
    with torch.no_grad():
        expected, got = net(x, arch), static(x)
    assert expected.abs().max() > 1e-3
    assert float((expected - got).abs().max()) <= 1e-5
    return static
