"""The elastic MBConv block: kernel size and expand ratio chosen per forward call."""

from __future__ import annotations

import torch
from torch import nn

from ofa_search.nn.dynamic import (
    DynamicBatchNorm2d,
    DynamicDepthwiseConv2d,
    DynamicPointwiseConv2d,
    DynamicSqueezeExcite,
)
from ofa_search.nn.static import MBConv, make_act
from ofa_search.space import Activation, SearchSpace, StageSpec
from ofa_search.units import MBConvUnit


class ElasticMBConv(nn.Module):
    """1×1 expand + BN + act → k×k depthwise (stride) + BN + act → [SE] → 1×1 project + BN,
    with identity shortcut when stride is 1 and widths match.

    Holds the weights of the largest choice (largest expand ratio and kernel); a call with
    ``(kernel, expand)`` uses the first ``mid`` hidden channels and the transformed
    ``kernel×kernel`` centre. Channel sorting (:meth:`sort_channels`) keeps the most
    important hidden channels first, so small expand ratios keep the useful ones.
    """

    def __init__(self, space: SearchSpace, stage: StageSpec, in_channels: int,
                 out_channels: int, stride: int) -> None:
        super().__init__()
        self.space = space
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.act_name: Activation = stage.act
        self.residual = stride == 1 and in_channels == out_channels
        max_mid = space.mid_channels(in_channels, max(space.expand_ratios))
        self.expand_conv = DynamicPointwiseConv2d(in_channels, max_mid)
        self.expand_bn = DynamicBatchNorm2d(max_mid)
        self.depthwise = DynamicDepthwiseConv2d(max_mid, space.kernel_sizes, stride)
        self.depthwise_bn = DynamicBatchNorm2d(max_mid)
        self.se = DynamicSqueezeExcite(max_mid, space.se_channels(max_mid)) if stage.se else None
        self.project = DynamicPointwiseConv2d(max_mid, out_channels)
        self.project_bn = nn.BatchNorm2d(out_channels)
        self.act = make_act(stage.act)

    def mid_channels(self, expand: int) -> int:
        return self.space.mid_channels(self.in_channels, expand)

    def forward(self, x: torch.Tensor, kernel: int, expand: int) -> torch.Tensor:
        mid = self.mid_channels(expand)
        out = self.act(self.expand_bn(self.expand_conv(x, mid)))
        out = self.act(self.depthwise_bn(self.depthwise(out, kernel)))
        if self.se is not None:
            out = self.se(out, self.space.se_channels(mid))
        out = self.project_bn(self.project(out))
        return out + x if self.residual else out

    def unit(self, in_size: int, kernel: int, expand: int, precision: str = "fp32") -> MBConvUnit:
        mid = self.mid_channels(expand)
        return MBConvUnit(self.in_channels, self.out_channels, mid, in_size, kernel,
                          self.stride, self.act_name,
                          self.space.se_channels(mid) if self.se is not None else 0,
                          precision=precision)

    def to_static(self, unit: MBConvUnit) -> MBConv:
        """The static twin for ``unit`` (which must describe this block), weights copied."""
        if (unit.in_channels, unit.out_channels, unit.stride) != (
                self.in_channels, self.out_channels, self.stride):
            raise ValueError(f"unit {unit.key} does not fit this block")
        mid, k = unit.mid_channels, unit.kernel
        block = MBConv(unit)
        assert block.expand is not None
        block.expand[0] = self.expand_conv.to_static(mid, self.in_channels)
        block.expand[1] = self.expand_bn.to_static(mid)
        block.depthwise[0] = self.depthwise.to_static(k, mid)
        block.depthwise[1] = self.depthwise_bn.to_static(mid)
        if self.se is not None:
            block.se = self.se.to_static(mid, unit.se_channels)
        block.project[0] = self.project.to_static(self.out_channels, mid)
        block.project[1].load_state_dict(self.project_bn.state_dict())
        return block

    @torch.no_grad()
    def sort_channels(self) -> None:
        """Reorder hidden channels by importance (L1 norm of their projection weights,
        largest first), and the squeeze channels of SE by the L1 norm of their expand
        weights. The block computes the same function afterwards at full width."""
        importance = self.project.weight.abs().sum(dim=(0, 2, 3))
        order = torch.argsort(importance, descending=True, stable=True)
        self.expand_conv.weight.copy_(self.expand_conv.weight[order])
        for bn in (self.expand_bn, self.depthwise_bn):
            _permute_bn(bn, order)
        self.depthwise.weight.copy_(self.depthwise.weight[order])
        self.project.weight.copy_(self.project.weight[:, order])
        if self.se is not None:
            se = self.se
            assert se.reduce.bias is not None and se.expand.bias is not None
            se.reduce.weight.copy_(se.reduce.weight[:, order])
            se.expand.weight.copy_(se.expand.weight[order])
            se.expand.bias.copy_(se.expand.bias[order])
            sq_order = torch.argsort(se.expand.weight.abs().sum(dim=(0, 2, 3)),
                                     descending=True, stable=True)
            se.reduce.weight.copy_(se.reduce.weight[sq_order])
            se.reduce.bias.copy_(se.reduce.bias[sq_order])
            se.expand.weight.copy_(se.expand.weight[:, sq_order])


def _permute_bn(bn: nn.BatchNorm2d, order: torch.Tensor) -> None:
    assert bn.running_mean is not None and bn.running_var is not None
    for tensor in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
        tensor.copy_(tensor[order])
