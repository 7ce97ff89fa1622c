"""Structured channel pruning of an extracted subnet's hidden widths.

What is pruned: the hidden (expand) channels of every inverted-residual block that has an
expand conv, and the head's final-expand channels. Removing hidden channel ``c`` of a block
removes output ``c`` of its expand conv and BN, depthwise filter ``c`` and its BN entry,
input ``c`` of the squeeze-excite reduce conv and output ``c`` of its expand conv, and
input ``c`` of the project conv; block inputs and outputs (the residual stream) keep their
widths, so nothing else changes. The fixed first block (no expand conv) is left alone.

Which channels: the ones whose importance is lowest. Li et al. (2017) score a filter by the
L1 norm of its own weights; here every hidden channel is followed by batch norm, which
normalises the producing filter's scale away, so a channel is scored by the norm (L2 by
default, L1 as an option) of the weights that *read* it: its column of the project conv
(for the head, of the feature-mix conv). That is also how the supernet sorts its channels
(:meth:`~ofa_search.nn.elastic_block.ElasticMBConv.sort_channels`).

How many: every prunable layer keeps ``max(1, round(full · (1 - ratio)))`` channels of its
full width (the extracted subnet's), one ratio for all layers. The result is a
:class:`PrunedSubnet`: a :class:`~ofa_search.nn.StaticSubnet` whose :attr:`unit_specs` say
the pruned widths, so MAC counts and table keys describe what it really computes.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Literal

import torch
from torch import nn

from ofa_search.arch import Arch
from ofa_search.compress.errors import CompressError, check_ratio
from ofa_search.nn.static import Head, MBConv, SqueezeExcite, StaticSubnet, build_static
from ofa_search.units import HeadUnit, MBConvUnit, Unit, arch_units

Criterion = Literal["l2", "l1"]
CRITERIA: tuple[str, ...] = ("l2", "l1")


class PrunedSubnet(StaticSubnet):
    """A static subnet whose hidden widths were pruned: ``widths`` maps unit index → kept
    hidden channels (MBConv mid channels, the head's final expand), for every prunable
    unit. ``arch`` stays the subnet it was pruned from."""

    def __init__(self, arch: Arch, units: list[nn.Module], widths: Mapping[int, int]) -> None:
        super().__init__(arch, units)
        self.widths = dict(sorted(widths.items()))
        self.unit_specs = pruned_units(arch, self.widths)

    def macs(self) -> int:
        """Multiply-accumulates at batch 1 (counted as :mod:`ofa_search.units` counts)."""
        return sum(unit.macs() for unit in self.unit_specs)


def pruned_units(arch: Arch, widths: Mapping[int, int]) -> list[Unit]:
    """``arch``'s units with the hidden widths of ``widths`` (unit index → channels)."""
    units = arch_units(arch)
    out: list[Unit] = []
    for i, unit in enumerate(units):
        width = widths.get(i)
        if width is None:
            out.append(unit)
        elif isinstance(unit, MBConvUnit):
            out.append(dataclasses.replace(unit, mid_channels=width))
        elif isinstance(unit, HeadUnit):
            out.append(dataclasses.replace(unit, expand_channels=width))
        else:
            raise CompressError(f"unit {i} ({unit.kind}) has no hidden width to prune")
    return out


def prunable_units(arch: Arch) -> dict[int, int]:
    """Unit index → full hidden width of every unit whose hidden channels can be pruned:
    MBConv blocks with an expand conv, and the head. Only fp32 stages can be pruned."""
    low = sorted(set(arch.precisions) - {"fp32"})
    if low:
        raise CompressError(f"structured pruning works on fp32 subnets; this arch has "
                            f"{', '.join(low)} stages")
    out: dict[int, int] = {}
    for i, unit in enumerate(arch_units(arch)):
        if isinstance(unit, MBConvUnit) and unit.has_expand:
            out[i] = unit.mid_channels
        elif isinstance(unit, HeadUnit):
            out[i] = unit.expand_channels
    return out


def kept_widths(full: Mapping[int, int], ratio: float) -> dict[int, int]:
    """Channels each layer keeps at ``ratio``: ``max(1, round(full · (1 - ratio)))``."""
    check_ratio(ratio)
    return {i: max(1, round(width * (1.0 - ratio))) for i, width in full.items()}


def _reader(module: nn.Module) -> nn.Conv2d:
    """The conv that reads a unit's hidden channels (project, or the head's feature mix)."""
    if isinstance(module, MBConv):
        conv = module.project[0] if isinstance(module.project, nn.Sequential) else None
    elif isinstance(module, Head):
        conv = module.feature_mix[0]
    else:
        conv = None
    if not isinstance(conv, nn.Conv2d):
        raise CompressError(f"cannot prune a {type(module).__name__}: no fp32 1x1 conv reads "
                            "its hidden channels")
    return conv


@torch.no_grad()
def channel_importance(module: nn.Module, criterion: Criterion = "l2") -> torch.Tensor:
    """Importance of each hidden channel of an MBConv or head module: the L2 (or L1) norm
    of the weights that read it (see the module docstring)."""
    if criterion not in CRITERIA:
        raise CompressError(f"criterion must be one of {', '.join(CRITERIA)}, "
                            f"got {criterion!r}")
    weight = _reader(module).weight
    if criterion == "l1":
        return weight.abs().sum(dim=(0, 2, 3))
    return weight.pow(2).sum(dim=(0, 2, 3)).sqrt()


def _conv(conv: nn.Conv2d, out_idx: torch.Tensor | None = None,
          in_idx: torch.Tensor | None = None) -> nn.Conv2d:
    """A copy of ``conv`` keeping output channels ``out_idx`` and input channels ``in_idx``;
    a depthwise conv (groups = channels) keeps ``out_idx`` as both."""
    weight = conv.weight.detach()
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
    if conv.groups > 1 and not depthwise:
        raise CompressError("cannot prune a grouped conv that is not depthwise")
    if out_idx is not None:
        weight = weight[out_idx]
    if in_idx is not None and not depthwise:
        weight = weight[:, in_idx]
    out_ch = weight.shape[0]
    in_ch = out_ch if depthwise else weight.shape[1]
    new = nn.Conv2d(in_ch, out_ch, conv.kernel_size, conv.stride,  # type: ignore[arg-type]
                    conv.padding, conv.dilation, groups=out_ch if depthwise else 1,  # type: ignore[arg-type]
                    bias=conv.bias is not None)
    new.weight.data.copy_(weight)
    if conv.bias is not None:
        bias = conv.bias.detach()
        assert new.bias is not None
        new.bias.data.copy_(bias if out_idx is None else bias[out_idx])
    return new


def _bn(bn: nn.BatchNorm2d, idx: torch.Tensor) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(idx), eps=bn.eps, momentum=bn.momentum)
    assert bn.running_mean is not None and bn.running_var is not None
    assert new.running_mean is not None and new.running_var is not None
    new.weight.data.copy_(bn.weight.detach()[idx])
    new.bias.data.copy_(bn.bias.detach()[idx])
    new.running_mean.copy_(bn.running_mean[idx])
    new.running_var.copy_(bn.running_var[idx])
    if bn.num_batches_tracked is not None and new.num_batches_tracked is not None:
        new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new


def _conv_of(seq: nn.Module, i: int) -> nn.Conv2d:
    module = seq[i]  # type: ignore[index]
    if type(module) is not nn.Conv2d:  # quantised or binary convs are not pruned
        raise CompressError(f"cannot prune a {type(module).__name__}: fp32 convs only")
    return module


def _bn_of(seq: nn.Module, i: int) -> nn.BatchNorm2d:
    module = seq[i]  # type: ignore[index]
    assert isinstance(module, nn.BatchNorm2d)
    return module


def _narrow_mbconv(block: MBConv, idx: torch.Tensor) -> None:
    if block.expand is None or not isinstance(block.expand, nn.Sequential):
        raise CompressError("cannot prune a block without an fp32 expand conv")
    assert isinstance(block.project, nn.Sequential)
    block.expand[0] = _conv(_conv_of(block.expand, 0), out_idx=idx)
    block.expand[1] = _bn(_bn_of(block.expand, 1), idx)
    block.depthwise[0] = _conv(_conv_of(block.depthwise, 0), out_idx=idx)
    block.depthwise[1] = _bn(_bn_of(block.depthwise, 1), idx)
    if block.se is not None:
        se: SqueezeExcite = block.se
        se.reduce = _conv(se.reduce, in_idx=idx)
        se.expand = _conv(se.expand, out_idx=idx)
    block.project[0] = _conv(_conv_of(block.project, 0), in_idx=idx)


def _narrow_head(head: Head, idx: torch.Tensor) -> None:
    head.final_expand[0] = _conv(_conv_of(head.final_expand, 0), out_idx=idx)
    head.final_expand[1] = _bn(_bn_of(head.final_expand, 1), idx)
    head.feature_mix[0] = _conv(_conv_of(head.feature_mix, 0), in_idx=idx)


@torch.no_grad()
def narrow(net: StaticSubnet, keep: Mapping[int, torch.Tensor]) -> PrunedSubnet:
    """A pruned copy of ``net`` keeping, in unit ``i``, the hidden channels ``keep[i]``
    (indices into ``net``'s current hidden channels, in any order; they are kept in their
    original order). Pure: ``net`` is not modified."""
    widths = {**prunable_units(net.arch), **getattr(net, "widths", {})}
    units = [copy.deepcopy(u) for u in net.units]
    for i, idx in keep.items():
        if not 0 <= i < len(units):
            raise CompressError(f"unit {i} does not exist (the subnet has {len(units)})")
        order = torch.sort(torch.as_tensor(idx, dtype=torch.long)).values
        if len(order) < 1 or len(torch.unique(order)) != len(order):
            raise CompressError(f"unit {i}: keep at least one channel, each once")
        module = units[i]
        if isinstance(module, MBConv):
            _narrow_mbconv(module, order)
        elif isinstance(module, Head):
            _narrow_head(module, order)
        else:
            raise CompressError(f"unit {i} ({type(module).__name__}) has no hidden width")
        widths[i] = len(order)
    out = PrunedSubnet(net.arch, units, widths)
    out.train(net.training)
    return out


def prune_channels(net: StaticSubnet, ratio: float, *, criterion: Criterion = "l2",
                   full: Mapping[int, int] | None = None) -> PrunedSubnet:
    """``net`` with each prunable layer cut to ``max(1, round(full · (1 - ratio)))``
    channels, keeping those of highest importance (:func:`channel_importance`).

    ``full`` is the width the ratio refers to (default: the arch's unpruned widths), so an
    iterative schedule passes the cumulative ratio of each step. A layer already at or
    below its target keeps its channels. Weights and BN statistics are copied; BN
    statistics should be recalibrated afterwards (the SE gates and the project outputs
    see fewer channels)."""
    check_ratio(ratio)
    reference = prunable_units(net.arch) if full is None else dict(full)
    targets = kept_widths(reference, ratio)
    keep: dict[int, torch.Tensor] = {}
    for i, target in targets.items():
        importance = channel_importance(net.units[i], criterion)
        if target < len(importance):
            keep[i] = torch.argsort(importance, descending=True, stable=True)[:target]
    return narrow(net, keep)


def rebuild(arch: Arch, widths: Mapping[int, int]) -> PrunedSubnet:
    """A randomly initialised :class:`PrunedSubnet` of ``arch`` with hidden ``widths``
    (unit index → channels): the skeleton a saved pruned state dict loads into."""
    full = prunable_units(arch)
    for i, width in widths.items():
        if i not in full or not 1 <= width <= full[i]:
            raise CompressError(f"width {width} of unit {i} does not fit arch "
                                f"{arch.to_string()}")
    base = build_static(arch, torch.Generator().manual_seed(0))
    return narrow(base, {i: torch.arange(w) for i, w in widths.items()})
