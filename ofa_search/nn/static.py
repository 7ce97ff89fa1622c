"""Static (non-elastic) modules: what an extracted subnet is made of.

Plain ``torch.nn`` layers (Conv2d, BatchNorm2d, Linear, ReLU, Hardswish, Hardsigmoid,
Dropout), plus, in ``int8`` and ``binary`` stages, the quantised convs of
:mod:`ofa_search.nn.quant` and :mod:`ofa_search.nn.binary`; no elastic code. One module
per priced unit of :mod:`ofa_search.units`, built from the unit's description, so a
subnet and its latency table entries have the same structure.
"""

from __future__ import annotations

import torch
from torch import nn

from ofa_search.arch import Arch
from ofa_search.nn.binary import BinaryPointwise
from ofa_search.nn.quant import QConv2d
from ofa_search.units import HeadUnit, MBConvUnit, StemUnit, Unit, arch_units


def make_act(name: str) -> nn.Module:
    """``relu`` → ReLU, ``hswish`` → Hardswish (x·relu6(x+3)/6, as once-for-all's Hswish)."""
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "hswish":
        return nn.Hardswish(inplace=True)
    raise ValueError(f"unknown activation {name!r}; known: relu, hswish")


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias, 'same' padding) + BatchNorm2d [+ activation]; with ``int8`` the
    conv is a :class:`~ofa_search.nn.quant.QConv2d` (fake-quantised input and weights)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
                 act: str | None = None, int8: bool = False) -> None:
        conv_cls = QConv2d if int8 else nn.Conv2d
        layers: list[nn.Module] = [
            conv_cls(in_ch, out_ch, kernel, stride, padding=kernel // 2, groups=groups,
                     bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        if act is not None:
            layers.append(make_act(act))
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    """Global mean → 1×1 conv (bias) → ReLU → 1×1 conv (bias) → hard sigmoid → rescale."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(squeeze, channels, 1, bias=True)
        self.gate = nn.Hardsigmoid(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(self.act(self.reduce(s))))


class MBConv(nn.Module):
    """Inverted residual block of one :class:`~ofa_search.units.MBConvUnit`.

    ``int8``: the expand, depthwise and project convs are fake-quantised. ``binary``: the
    expand and project convs are :class:`~ofa_search.nn.binary.BinaryPointwise` (see that
    module for why those two); the depthwise conv and squeeze-excite stay fp32.
    """

    def __init__(self, unit: MBConvUnit) -> None:
        super().__init__()
        self.residual = unit.residual
        self.precision = unit.precision
        int8, binary = unit.precision == "int8", unit.precision == "binary"
        self.expand: nn.Module | None = None
        if unit.has_expand and binary:
            self.expand = BinaryPointwise(unit.in_channels, unit.mid_channels,
                                          make_act(unit.act))
        elif unit.has_expand:
            self.expand = ConvBNAct(unit.in_channels, unit.mid_channels, 1, act=unit.act,
                                    int8=int8)
        self.depthwise = ConvBNAct(unit.mid_channels, unit.mid_channels, unit.kernel,
                                   unit.stride, groups=unit.mid_channels, act=unit.act,
                                   int8=int8)
        self.se = (SqueezeExcite(unit.mid_channels, unit.se_channels)
                   if unit.se_channels else None)
        self.project: nn.Module = (BinaryPointwise(unit.mid_channels, unit.out_channels)
                                   if binary else
                                   ConvBNAct(unit.mid_channels, unit.out_channels, 1, int8=int8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.expand is None else self.expand(x)
        out = self.depthwise(out)
        if self.se is not None:
            out = self.se(out)
        out = self.project(out)
        return out + x if self.residual else out


class SeededDropout(nn.Dropout):
    """``nn.Dropout`` that draws its mask from ``generator`` when one is set (on the input's
    device), so that no other code drawing from PyTorch's default generator meanwhile (a
    thread of a service, a module built elsewhere) changes it. Without a generator, and in
    eval mode, it is ``nn.Dropout``. On the CPU, the same generator state gives the same
    mask as ``nn.Dropout`` given that state as the default generator's."""

    generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or self.generator is None:
            return super().forward(x)
        if self.p == 1:
            return x * 0.0
        noise = torch.empty_like(x).bernoulli_(1 - self.p, generator=self.generator)
        return x * noise.div_(1 - self.p)


class Head(nn.Module):
    """Final expand (1×1 conv+BN+h-swish) → global mean → feature mix (1×1 conv+h-swish) →
    dropout → linear classifier.

    An ``int8`` unit's three layers are :class:`~ofa_search.nn.quant.QConv2d`, the
    classifier a 1×1 one over the pooled ``[N, C, 1, 1]`` features (flattened after it), so
    that the int8 export path, which quantises convs, holds it like any other int8 conv.
    """

    def __init__(self, unit: HeadUnit, dropout: float = 0.0) -> None:
        super().__init__()
        self.int8 = unit.precision == "int8"
        conv_cls = QConv2d if self.int8 else nn.Conv2d
        self.final_expand = ConvBNAct(unit.in_channels, unit.expand_channels, 1, act="hswish",
                                      int8=self.int8)
        self.feature_mix = nn.Sequential(
            conv_cls(unit.expand_channels, unit.mix_channels, 1, bias=False),
            make_act("hswish"),
        )
        self.dropout = SeededDropout(dropout)
        self.classifier: nn.Module = (QConv2d(unit.mix_channels, unit.num_classes, 1)
                                      if self.int8
                                      else nn.Linear(unit.mix_channels, unit.num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final_expand(x).mean((2, 3), keepdim=True)
        x = self.feature_mix(x)
        if self.int8:
            out: torch.Tensor = self.classifier(self.dropout(x)).flatten(1)
            return out
        out = self.classifier(self.dropout(x.flatten(1)))
        return out


def build_unit(unit: Unit, dropout: float = 0.0) -> nn.Module:
    """A randomly initialised static module for ``unit``."""
    if isinstance(unit, StemUnit):
        return ConvBNAct(unit.in_channels, unit.out_channels, unit.kernel, unit.stride,
                         act=unit.act)
    if isinstance(unit, MBConvUnit):
        return MBConv(unit)
    return Head(unit, dropout)


class StaticSubnet(nn.Module):
    """A plain feed-forward network: its units in order. Input: ``[N, C, r, r]``."""

    def __init__(self, arch: Arch, units: list[nn.Module]) -> None:
        super().__init__()
        self.arch = arch
        self.unit_specs = arch_units(arch)
        if len(units) != len(self.unit_specs):
            raise ValueError(f"{len(units)} modules for {len(self.unit_specs)} units")
        self.units = nn.ModuleList(units)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            x = unit(x)
        return x

    def input_shape(self, batch_size: int = 1) -> tuple[int, int, int, int]:
        space = self.arch.search_space
        return (batch_size, space.in_channels, self.arch.resolution, self.arch.resolution)


def build_static(arch: Arch, generator: torch.Generator | None = None) -> StaticSubnet:
    """A randomly initialised static subnet of ``arch`` (for latency work before training);
    ``generator`` makes the weights reproducible."""
    dropout = arch.search_space.dropout
    net = StaticSubnet(arch, [build_unit(u, dropout) for u in arch_units(arch)])
    init_weights(net, generator)
    return net


def init_weights(module: nn.Module, generator: torch.Generator | None = None) -> None:
    """once-for-all's initialisation: convs Kaiming-normal (fan-out), BN γ=1 β=0, linear
    uniform ±1/√fan_in with zero bias. ``generator`` makes it reproducible."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.weight.shape[0] * m.weight.shape[2] * m.weight.shape[3]
            with torch.no_grad():
                m.weight.normal_(0.0, (2.0 / fan_out) ** 0.5, generator=generator)
                if m.bias is not None:
                    m.bias.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.fill_(1.0)
                m.bias.zero_()
        elif isinstance(m, nn.Linear):
            bound = 1.0 / m.weight.shape[1] ** 0.5
            with torch.no_grad():
                m.weight.uniform_(-bound, bound, generator=generator)
                if m.bias is not None:
                    m.bias.zero_()
