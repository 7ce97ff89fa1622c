"""Exact extraction of a static subnet from a supernet."""

from __future__ import annotations

import copy

import torch

from ofa_search.arch import Arch
from ofa_search.nn.static import StaticSubnet
from ofa_search.nn.supernet import Supernet
from ofa_search.units import HeadUnit, MBConvUnit, StemUnit, arch_units


@torch.no_grad()
def extract(supernet: Supernet, arch: Arch) -> StaticSubnet:
    """A static network (plain Conv2d/BatchNorm2d/Linear/…) computing exactly what
    ``supernet(x, arch)`` computes in eval mode, with copied weights and BN statistics.

    Pure: the supernet is not modified, and the result shares no tensors with it.
    The result is in the supernet's training mode and on its device.
    """
    supernet.check_arch(arch)
    modules: list[torch.nn.Module] = []
    blocks = iter(
        supernet.block(s, b) for s, depth in enumerate(arch.depths) for b in range(depth)
    )
    for i, unit in enumerate(arch_units(arch)):
        if isinstance(unit, StemUnit):
            modules.append(copy.deepcopy(supernet.stem))
        elif isinstance(unit, HeadUnit):
            modules.append(copy.deepcopy(supernet.head))
        elif i == 1:
            modules.append(copy.deepcopy(supernet.first_block))
        else:
            assert isinstance(unit, MBConvUnit)
            modules.append(next(blocks).to_static(unit))
    net = StaticSubnet(arch, modules)
    first = next(supernet.parameters(), None)
    if first is not None:
        net.to(first.device)
    net.train(supernet.training)
    return net
