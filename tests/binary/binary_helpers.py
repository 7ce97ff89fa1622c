"""Shared builders of the binary tests: networks with random BN statistics."""

from __future__ import annotations

import torch
from torch import nn

from ofa_search.arch import Arch
from ofa_search.nn import build_static
from ofa_search.nn.static import StaticSubnet

MP = "mbv3_small28_mp"


def randomize_bn(module: nn.Module, seed: int) -> None:
    """Random BN affine parameters and running statistics.

    Fresh BNs are identities (γ=1, β=0, μ=0, σ²=1): then a binary conv whose ±1 products
    cancel exactly gives 0, which PyTorch's float conv (summing ±α in float32) returns as
    ±1e-8 and the next binary layer binarises at random. Trained BNs, like these, shift
    such ties away from 0, so the comparison with PyTorch is meaningful.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=generator))
                m.bias.copy_(0.3 * torch.randn(n, generator=generator))
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(0.3 * torch.randn(n, generator=generator))
                m.running_var.copy_(0.5 + torch.rand(n, generator=generator))


def eval_net(arch: Arch, seed: int = 0) -> StaticSubnet:
    """A seeded static subnet of ``arch`` with random BN statistics, in eval mode."""
    net = build_static(arch, torch.Generator().manual_seed(seed))
    randomize_bn(net, seed)
    return net.eval()


def binary_arch(precisions: tuple[str, ...], seed: int | None = None) -> Arch:
    """The smallest arch (or a seeded random one) of the mixed-precision space."""
    base = Arch.smallest(MP) if seed is None else Arch.sample(MP, seed)
    return base.replace(precisions=precisions)
