"""Exact extraction of a static subnet from a supernet."""

from __future__ import annotations

import copy

import torch

from ofa_search.arch import Arch
from ofa_search.nn.quant import QConv2d
from ofa_search.nn.static import Head, StaticSubnet
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
            modules.append(_head(supernet, unit))
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


def _head(supernet: Supernet, unit: HeadUnit) -> torch.nn.Module:
    """The supernet's head as a static module of ``unit``'s precision."""
    if unit.precision != "int8":
        return copy.deepcopy(supernet.head)
    source, quant = supernet.head, supernet.head_quant
    assert quant is not None
    dropout = source.dropout
    assert isinstance(dropout, torch.nn.Dropout)
    head = Head(unit, dropout.p)
    for part in ("final_expand", "feature_mix"):
        # the fp32 source has no input quantisers; they are loaded below
        missing, unexpected = getattr(head, part).load_state_dict(
            getattr(source, part).state_dict(), strict=False)
        assert not unexpected and all(".input_quant." in k for k in missing), (missing,
                                                                             unexpected)
    classifier, linear = head.classifier, source.classifier
    assert isinstance(classifier, QConv2d) and isinstance(linear, torch.nn.Linear)
    classifier.weight.copy_(linear.weight[:, :, None, None])
    assert classifier.bias is not None and linear.bias is not None
    classifier.bias.copy_(linear.bias)
    for name, layer in (("final_expand", head.final_expand[0]),
                        ("feature_mix", head.feature_mix[0]), ("classifier", classifier)):
        assert isinstance(layer, QConv2d)
        layer.input_quant.load_state_dict(quant[name].state_dict())
    return head
