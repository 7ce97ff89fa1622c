"""The elastic MBConv block: kernel size and expand ratio chosen per forward call."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ofa_search.nn.binary import BinaryPointwise, binary_block, mbconv_ablation
from ofa_search.nn.dynamic import (
    DynamicBatchNorm2d,
    DynamicDepthwiseConv2d,
    DynamicPointwiseConv2d,
    DynamicSqueezeExcite,
)
from ofa_search.nn.quant import Int8ActQuant, QConv2d, int8_weight
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

    When the space offers ``int8``, the block also holds one activation quantiser per conv
    input (shared by all subnets, like BN statistics, and recalibrated per subnet); when it
    offers ``binary``, separate batch norms for the binary expand and project convs, on
    their inputs (the threshold of the sign) and outputs (whose statistics differ from the
    fp32 convs' over the same latent weights).
    ``binary_activations`` is the two-stage switch of :mod:`ofa_search.nn.binary`, and
    ``binary_ablated`` the ingredients of its binary convs switched off for an ablation.
    The binary convs binarize the fp32 convs' latent weights, or latent weights of their
    own after :meth:`set_binary_weights` (``binary_expand_conv``, ``binary_project``).
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
        self.quant: nn.ModuleDict | None = None
        if "int8" in space.precisions:
            self.quant = nn.ModuleDict({name: Int8ActQuant()
                                        for name in ("expand", "depthwise", "project")})
        self.binary_expand_bn: DynamicBatchNorm2d | None = None
        self.binary_project_bn: nn.BatchNorm2d | None = None
        self.binary_expand_in_bn: nn.BatchNorm2d | None = None
        self.binary_project_in_bn: DynamicBatchNorm2d | None = None
        if "binary" in space.precisions:
            self.binary_expand_in_bn = nn.BatchNorm2d(in_channels)
            self.binary_expand_bn = DynamicBatchNorm2d(max_mid)
            self.binary_project_in_bn = DynamicBatchNorm2d(max_mid)
            self.binary_project_bn = nn.BatchNorm2d(out_channels)
        self.binary_activations = True
        self.binary_ablated: frozenset[str] = frozenset()
        self.binary_expand_conv: DynamicPointwiseConv2d | None = None
        self.binary_project: DynamicPointwiseConv2d | None = None

    def set_binary_weights(self, own: bool) -> None:
        """Give the binary expand and project convs latent weights of their own, copies of
        the fp32 convs' weights as they are now (``own``), or let them binarize the fp32
        convs' weights again (the default; drops the own ones)."""
        if "binary" not in self.space.precisions:
            raise ValueError(f"space {self.space.name!r} has no binary precision")
        if not own:
            self.binary_expand_conv = self.binary_project = None
        elif self.binary_expand_conv is None:
            self.binary_expand_conv = copy.deepcopy(self.expand_conv)
            self.binary_project = copy.deepcopy(self.project)

    @torch.no_grad()
    def copy_binary_weights(self) -> None:
        """Set the binary convs' own latent weights (if any) to the fp32 convs' weights."""
        if self.binary_expand_conv is not None and self.binary_project is not None:
            self.binary_expand_conv.weight.copy_(self.expand_conv.weight)
            self.binary_project.weight.copy_(self.project.weight)

    def _binary_convs(self) -> tuple[DynamicPointwiseConv2d, DynamicPointwiseConv2d]:
        """The expand and project convs whose latent weights the binary convs binarize."""
        if self.binary_expand_conv is not None and self.binary_project is not None:
            return self.binary_expand_conv, self.binary_project
        return self.expand_conv, self.project

    def mid_channels(self, expand: int) -> int:
        return self.space.mid_channels(self.in_channels, expand)

    def forward(self, x: torch.Tensor, kernel: int, expand: int,
                precision: str = "fp32") -> torch.Tensor:
        mid = self.mid_channels(expand)
        if precision == "binary":
            return self._forward_binary(x, kernel, mid)
        if precision == "int8":
            return self._forward_int8(x, kernel, mid)
        if precision != "fp32":
            raise ValueError(f"unknown precision {precision!r}")
        out = self.act(self.expand_bn(self.expand_conv(x, mid)))
        out = self.act(self.depthwise_bn(self.depthwise(out, kernel)))
        if self.se is not None:
            out = self.se(out, self.space.se_channels(mid))
        out = self.project_bn(self.project(out))
        return out + x if self.residual else out

    def _forward_int8(self, x: torch.Tensor, kernel: int, mid: int) -> torch.Tensor:
        if self.quant is None:
            raise ValueError(f"space {self.space.name!r} has no int8 precision")
        q = self.quant
        w = int8_weight(self.expand_conv.active_weight(mid, x.shape[1]))
        out = self.act(self.expand_bn(F.conv2d(q["expand"](x), w)))
        w = int8_weight(self.depthwise.active_weight(kernel, mid))
        out = F.conv2d(q["depthwise"](out), w, None, self.stride, kernel // 2, 1, mid)
        out = self.act(self.depthwise_bn(out))
        if self.se is not None:
            out = self.se(out, self.space.se_channels(mid))
        w = int8_weight(self.project.active_weight(self.out_channels, mid))
        out = self.project_bn(F.conv2d(q["project"](out), w))
        return out + x if self.residual else out

    def _forward_binary(self, x: torch.Tensor, kernel: int, mid: int) -> torch.Tensor:
        if (self.binary_expand_bn is None or self.binary_project_bn is None
                or self.binary_expand_in_bn is None or self.binary_project_in_bn is None):
            raise ValueError(f"space {self.space.name!r} has no binary precision")
        acts = self.binary_activations
        expand_ablated, project_ablated = mbconv_ablation(self.binary_ablated)
        expand_conv, project_conv = self._binary_convs()
        w = expand_conv.active_weight(mid, x.shape[1])
        out = self.act(binary_block(x, self.binary_expand_in_bn, w, self.binary_expand_bn,
                                    mid, acts, expand_ablated))
        out = self.act(self.depthwise_bn(self.depthwise(out, kernel)))
        if self.se is not None:
            out = self.se(out, self.space.se_channels(mid))
        w = project_conv.active_weight(self.out_channels, mid)
        out = binary_block(out, self.binary_project_in_bn, w, self.binary_project_bn,
                           self.out_channels, acts, project_ablated)
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
        block.depthwise[0].load_state_dict(self.depthwise.to_static(k, mid).state_dict(),
                                           strict=False)
        block.depthwise[1] = self.depthwise_bn.to_static(mid)
        if self.se is not None:
            block.se = self.se.to_static(mid, unit.se_channels)
        expand_src, project_src = (self._binary_convs() if unit.precision == "binary"
                                   else (self.expand_conv, self.project))
        expand_conv = expand_src.to_static(mid, self.in_channels)
        project_conv = project_src.to_static(self.out_channels, mid)
        if unit.precision == "binary":
            assert isinstance(block.expand, BinaryPointwise)
            assert isinstance(block.project, BinaryPointwise)
            assert self.binary_expand_bn is not None and self.binary_project_bn is not None
            assert (self.binary_expand_in_bn is not None
                    and self.binary_project_in_bn is not None)
            block.expand.in_bn.load_state_dict(self.binary_expand_in_bn.state_dict())
            block.expand.conv = expand_conv
            block.expand.bn = self.binary_expand_bn.to_static(mid)
            block.project.in_bn = self.binary_project_in_bn.to_static(mid)
            block.project.conv = project_conv
            block.project.bn.load_state_dict(self.binary_project_bn.state_dict())
            block.expand.binary_activations = self.binary_activations
            block.project.binary_activations = self.binary_activations
            block.expand.ablated, block.project.ablated = mbconv_ablation(self.binary_ablated)
            return block
        expand, project = block.expand, block.project
        assert isinstance(expand, nn.Sequential) and isinstance(project, nn.Sequential)
        expand[0].load_state_dict(expand_conv.state_dict(), strict=False)
        expand[1] = self.expand_bn.to_static(mid)
        project[0].load_state_dict(project_conv.state_dict(), strict=False)
        project[1].load_state_dict(self.project_bn.state_dict())
        if unit.precision == "int8":
            assert self.quant is not None
            for name in ("expand", "depthwise", "project"):
                conv = getattr(block, name)[0]
                assert isinstance(conv, QConv2d)
                conv.input_quant.load_state_dict(self.quant[name].state_dict())
        return block

    @torch.no_grad()
    def sort_channels(self) -> bool:
        """Reorder hidden channels by importance (L1 norm of their projection weights,
        largest first), and the squeeze channels of SE by the L1 norm of their expand
        weights. The block computes the same function afterwards at full width.

        A block of a space with binary stages is left as it is (returns ``False``): its
        binary convs' parameter-free shortcuts tie hidden channel ``o`` to input channel
        ``o mod C_in`` and output channel ``o`` to hidden channel ``o``, so reordering the
        hidden channels would change every binary subnet."""
        if "binary" in self.space.precisions:
            return False
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
        return True


def _permute_bn(bn: nn.BatchNorm2d, order: torch.Tensor) -> None:
    assert bn.running_mean is not None and bn.running_var is not None
    for tensor in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
        tensor.copy_(tensor[order])
