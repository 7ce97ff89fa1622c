"""Priced units: the pieces a subnet is made of, as plain frozen descriptions.

``arch_units(arch)`` lists the stem, the fixed first block, every active MBConv block and
the head with their exact shapes. Everything that needs the structure of a subnet reads
it from here: the static network (:mod:`ofa_search.nn.static`) builds one module per
unit, MAC and parameter counts sum the units, and device latency tables price them by
:attr:`key`. So what a table prices is what export emits.

MAC counting follows once-for-all's ``count_net_flops``: multiply-accumulates of conv and
linear layers at batch 1 (``c_in · out_elements · k² / groups`` for a conv, ``in · out`` for
a linear), squeeze-excite 1×1 convs included; batch norm, activations, pooling, the SE
product, residual adds and biases are not counted. Parameters are all trainable
parameters of the static module (conv and linear weights and biases, BN affine).
"""

from __future__ import annotations

from dataclasses import dataclass

from ofa_search.arch import Arch
from ofa_search.space import Activation, SearchSpace


@dataclass(frozen=True)
class Layer:
    """One weight layer of a unit, for per-layer summaries.

    ``weights``: weight elements (conv/linear kernels); ``extra``: 32-bit parameters that
    go with it (biases, BN affine); ``bits``: the weights' precision in the unit.
    """

    name: str
    weights: int
    extra: int
    macs: int
    bits: int = 32


def _pointwise_bits(precision: str) -> int:
    return {"fp32": 32, "int8": 8, "binary": 1}[precision]


def conv_out_size(size: int, stride: int) -> int:
    """Spatial output of a 'same'-padded conv with an odd kernel."""
    return (size - 1) // stride + 1


@dataclass(frozen=True)
class StemUnit:
    """3×3 conv (stride ``stride``) + BN + activation."""

    in_channels: int
    out_channels: int
    in_size: int
    stride: int
    act: Activation
    precision: str = "fp32"
    kind: str = "stem"
    kernel: int = 3

    @property
    def out_size(self) -> int:
        return conv_out_size(self.in_size, self.stride)

    @property
    def key(self) -> str:
        return (f"stem:i{self.in_channels}:o{self.out_channels}:r{self.in_size}:k{self.kernel}"
                f":s{self.stride}:{self.act}:{self.precision}")

    def layers(self) -> list[Layer]:
        weights = self.in_channels * self.out_channels * self.kernel**2
        return [Layer("stem.conv", weights, 2 * self.out_channels,
                      weights * self.out_size**2)]

    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers())

    def params(self) -> int:
        return sum(layer.weights + layer.extra for layer in self.layers())


@dataclass(frozen=True)
class MBConvUnit:
    """Inverted residual: [1×1 expand + BN + act] → k×k depthwise (stride) + BN + act →
    [squeeze-excite] → 1×1 project + BN; identity shortcut when ``residual``.

    ``mid_channels == in_channels`` with ``has_expand=False`` is MobileNet's expand-1 block.
    """

    in_channels: int
    out_channels: int
    mid_channels: int
    in_size: int
    kernel: int
    stride: int
    act: Activation
    se_channels: int  # 0 = no squeeze-excite
    has_expand: bool = True
    precision: str = "fp32"
    kind: str = "mbconv"

    @property
    def out_size(self) -> int:
        return conv_out_size(self.in_size, self.stride)

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels

    @property
    def key(self) -> str:
        return (f"mbconv:i{self.in_channels}:o{self.out_channels}:m{self.mid_channels}"
                f":r{self.in_size}:k{self.kernel}:s{self.stride}:{self.act}"
                f":se{self.se_channels}:x{int(self.has_expand)}:{self.precision}")

    def layers(self) -> list[Layer]:
        """Expand, depthwise, SE (reduce, expand) and project, with the bits that this
        unit's precision gives them: ``int8`` quantises the three convs, ``binary`` the
        two 1×1 convs (see :mod:`ofa_search.nn.binary`)."""
        hw_in, hw_out = self.in_size**2, self.out_size**2
        mid, bits = self.mid_channels, _pointwise_bits(self.precision)
        dw_bits = 8 if self.precision == "int8" else 32
        out: list[Layer] = []
        if self.has_expand:
            w = self.in_channels * mid
            out.append(Layer("expand", w, 2 * mid, w * hw_in, bits))
        w = mid * self.kernel**2
        out.append(Layer("depthwise", w, 2 * mid, w * hw_out, dw_bits))
        if self.se_channels:
            w = mid * self.se_channels
            out.append(Layer("se.reduce", w, self.se_channels, w))
            out.append(Layer("se.expand", w, mid, w))
        w = mid * self.out_channels
        out.append(Layer("project", w, 2 * self.out_channels, w * hw_out, bits))
        return out

    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers())

    def params(self) -> int:
        return sum(layer.weights + layer.extra for layer in self.layers())


@dataclass(frozen=True)
class HeadUnit:
    """1×1 conv + BN + h-swish (final expand) → global average pool → 1×1 conv + h-swish
    (feature mix, no BN) → dropout → linear classifier; ``int8``: the three layers
    fake-quantised (see :meth:`ofa_search.space.SearchSpace.head_precision`)."""

    in_channels: int
    expand_channels: int
    mix_channels: int
    num_classes: int
    in_size: int
    precision: str = "fp32"
    kind: str = "head"

    @property
    def out_size(self) -> int:
        return 1

    @property
    def key(self) -> str:
        return (f"head:i{self.in_channels}:x{self.expand_channels}:m{self.mix_channels}"
                f":c{self.num_classes}:r{self.in_size}:{self.precision}")

    def layers(self) -> list[Layer]:
        w = self.in_channels * self.expand_channels
        mix = self.expand_channels * self.mix_channels
        cls = self.mix_channels * self.num_classes
        bits = 8 if self.precision == "int8" else 32
        return [Layer("head.final_expand", w, 2 * self.expand_channels, w * self.in_size**2,
                      bits),
                Layer("head.feature_mix", mix, 0, mix, bits),
                Layer("head.classifier", cls, self.num_classes, cls, bits)]

    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers())

    def params(self) -> int:
        return sum(layer.weights + layer.extra for layer in self.layers())


Unit = StemUnit | MBConvUnit | HeadUnit


def arch_units(arch: Arch, resolution: int | None = None) -> list[Unit]:
    """The units of ``arch`` in execution order, at ``resolution`` (default: the arch's own;
    another value lets one count a subnet at a size outside the space's choices)."""
    space: SearchSpace = arch.search_space
    widths = space.widths(arch.width_mult)
    size = arch.resolution if resolution is None else resolution
    units: list[Unit] = []
    stem = StemUnit(space.in_channels, widths.stem, size, space.stem_stride, space.stem_act)
    units.append(stem)
    size = stem.out_size
    first = MBConvUnit(widths.stem, widths.first_block, widths.stem, size, kernel=3, stride=1,
                       act="relu", se_channels=0, has_expand=False)
    units.append(first)
    in_ch = widths.first_block
    for s, stage in enumerate(space.stages):
        out_ch = widths.stages[s]
        for b in range(arch.depths[s]):
            stride = stage.stride if b == 0 else 1
            mid = space.mid_channels(in_ch, arch.expands[s][b])
            unit = MBConvUnit(
                in_ch, out_ch, mid, size, kernel=arch.kernels[s][b], stride=stride,
                act=stage.act, se_channels=space.se_channels(mid) if stage.se else 0,
                precision=arch.precisions[s],
            )
            units.append(unit)
            size = unit.out_size
            in_ch = out_ch
    units.append(HeadUnit(in_ch, widths.final_expand, widths.feature_mix, space.num_classes,
                          size, precision=space.head_precision(arch.precisions)))
    return units


def uses_int8(arch: Arch) -> bool:
    """Whether ``arch`` has int8 parts: an int8 stage, or the int8 head of a ``head_int8``
    space (whose artefacts then hold QDQ int8 segments that need calibration images)."""
    return "int8" in arch.precisions or \
        arch.search_space.head_precision(arch.precisions) == "int8"


def count_macs(arch: Arch, resolution: int | None = None) -> int:
    """Multiply-accumulates of ``arch`` at batch 1, counted as once-for-all counts them."""
    return sum(u.macs() for u in arch_units(arch, resolution))


def count_params(arch: Arch) -> int:
    """Trainable parameters of the static subnet of ``arch``."""
    return sum(u.params() for u in arch_units(arch))
