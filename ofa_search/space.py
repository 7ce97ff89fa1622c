"""Search spaces: the choices a supernet offers, as frozen, named, registered objects.

A :class:`SearchSpace` fixes the network skeleton (stem, a fixed first block, elastic
stages of MBConv blocks, head) and the elastic choices (resolution, depth per stage,
kernel and expand ratio per block, width multiplier, precision per stage). One subnet of a
space is an :class:`ofa_search.arch.Arch`.

Presets:

- ``ofa_mbv3`` — exactly once-for-all's MobileNetV3 space (Cai et al., ICLR 2020), with
  the constants of ``ofa/imagenet_classification/elastic_nn/networks/ofa_mbv3.py``.
- ``mbv3_small28`` — the same block structure sized for 28×28 single-channel images
  (Fashion-MNIST; 8×8 digits upsampled), small enough to train on two CPU cores.
- ``mbv3_small28_lite`` — ``mbv3_small28`` with a head of 144 and 128 channels (not 192
  and 256), so that its smallest subnet has under 100K parameters.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from ofa_search.errors import UnknownSpaceError

Activation = Literal["relu", "hswish"]
ACTIVATIONS: tuple[str, ...] = ("relu", "hswish")
PRECISIONS: tuple[str, ...] = ("fp32", "int8", "binary")
SUPPORTED_PRECISIONS: tuple[str, ...] = ("fp32", "int8", "binary")
"""Precisions that the supernet implements."""


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """MobileNet's channel rounding, as once-for-all applies it.

    Rounds ``value`` to the nearest multiple of ``divisor`` (at least ``min_value``), then
    adds one ``divisor`` if rounding lost more than 10 %.
    """
    if min_value is None:
        min_value = divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@dataclass(frozen=True)
class StageSpec:
    """One elastic stage: output width at width multiplier 1.0, stride of its first block,
    activation, and whether its blocks have squeeze-and-excite."""

    width: int
    stride: int
    act: Activation
    se: bool


@dataclass(frozen=True)
class Widths:
    """Channel counts of a space at one width multiplier."""

    stem: int
    first_block: int
    stages: tuple[int, ...]
    final_expand: int
    feature_mix: int


@dataclass(frozen=True, kw_only=True)
class SearchSpace:
    """The choices of one supernet family; frozen, compared by value, named.

    Attributes:
        name: registry name.
        in_channels: image channels (3 for RGB, 1 for grey).
        num_classes: classifier outputs.
        stem_width, stem_stride, stem_act: the first 3×3 conv (+BN+act).
        first_block_width: output of the fixed MBConv (k3, expand 1, ReLU, no SE).
        stages: the elastic stages.
        final_expand, feature_mix: head widths at width multiplier 1.0 (1×1 conv+BN+hswish
            at the final spatial size, global pooling, 1×1 conv+hswish, linear).
        kernel_sizes, expand_ratios, depths, resolutions, width_mults, precisions: choices.
        head_int8: the head (final expand, feature mix, classifier) runs int8 in every
            subnet whose last stage is not fp32 (:meth:`head_precision`); otherwise the
            head is always fp32. Needs ``int8`` among the precisions.
        dropout: dropout before the classifier (training only).
        se_reduction: squeeze-excite reduction (mid channels // reduction, rounded by 8).
        channel_divisor: the rounding divisor of :func:`make_divisible`.
    """

    name: str
    description: str = ""
    in_channels: int
    num_classes: int
    stem_width: int
    stem_stride: int
    stem_act: Activation = "hswish"
    first_block_width: int
    stages: tuple[StageSpec, ...]
    final_expand: int
    feature_mix: int
    kernel_sizes: tuple[int, ...]
    expand_ratios: tuple[int, ...]
    depths: tuple[int, ...]
    resolutions: tuple[int, ...]
    width_mults: tuple[float, ...] = (1.0,)
    precisions: tuple[str, ...] = ("fp32",)
    head_int8: bool = False
    dropout: float = 0.1
    se_reduction: int = 4
    channel_divisor: int = 8
    _widths: dict[float, Widths] = field(default_factory=dict, init=False, repr=False,
                                         compare=False)

    def __post_init__(self) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"search space {self.name!r}: {message}")

        check(bool(self.name), "name must not be empty")
        for attr in ("kernel_sizes", "expand_ratios", "depths", "resolutions", "width_mults",
                     "precisions"):
            values = getattr(self, attr)
            check(len(values) > 0, f"{attr} must not be empty")
            check(list(values) == sorted(set(values)), f"{attr} must be sorted and unique, "
                  f"got {values}")
        check(all(k % 2 == 1 for k in self.kernel_sizes), "kernel sizes must be odd")
        check(all(d >= 1 for d in self.depths), "depths must be >= 1")
        check(all(p in PRECISIONS for p in self.precisions),
              f"precisions must be among {PRECISIONS}, got {self.precisions}")
        check(not self.head_int8 or "int8" in self.precisions,
              "head_int8 needs 'int8' among the precisions")
        check(len(self.stages) >= 1, "needs at least one stage")
        check(all(s.act in ACTIVATIONS for s in self.stages), "unknown stage activation")
        check(self.stem_act in ACTIVATIONS, "unknown stem activation")

    # -- derived structure -------------------------------------------------------------
    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def max_depth(self) -> int:
        return self.depths[-1]

    @property
    def num_slots(self) -> int:
        """Block slots in the supernet (stages × max depth); an arch uses the first
        ``depth`` slots of each stage."""
        return self.num_stages * self.max_depth

    def widths(self, width_mult: float) -> Widths:
        """Channel counts at ``width_mult``, rounded as once-for-all rounds them."""
        cached = self._widths.get(width_mult)
        if cached is not None:
            return cached

        def scale(base: int) -> int:
            return make_divisible(base * width_mult, self.channel_divisor)

        widths = Widths(
            stem=scale(self.stem_width),
            first_block=scale(self.first_block_width),
            stages=tuple(scale(s.width) for s in self.stages),
            final_expand=scale(self.final_expand),
            feature_mix=scale(self.feature_mix),
        )
        self._widths[width_mult] = widths
        return widths

    def mid_channels(self, in_channels: int, expand_ratio: float) -> int:
        """Hidden width of an MBConv block (once-for-all: ``make_divisible(round(c·e))``)."""
        return make_divisible(round(in_channels * expand_ratio), self.channel_divisor)

    def se_channels(self, mid_channels: int) -> int:
        """Squeeze width of a squeeze-excite module on ``mid_channels`` channels."""
        return make_divisible(mid_channels // self.se_reduction, self.channel_divisor)

    def head_precision(self, precisions: Sequence[str]) -> str:
        """The head's precision in a subnet whose stages have ``precisions``: ``int8`` when
        the space has ``head_int8`` and the last stage is int8 or binary, else ``fp32``."""
        return "int8" if self.head_int8 and precisions[-1] != "fp32" else "fp32"

    # -- counting ----------------------------------------------------------------------
    def size(self) -> int:
        """Number of distinct architectures (blocks past a stage's depth do not count)."""
        per_block = len(self.kernel_sizes) * len(self.expand_ratios)
        per_stage = sum(per_block**d for d in self.depths) * len(self.precisions)
        return len(self.resolutions) * len(self.width_mults) * per_stage**self.num_stages

    def summary(self) -> dict[str, object]:
        """The choices and structure as plain JSON-able data."""
        return {
            "name": self.name,
            "description": self.description,
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "stem": {"width": self.stem_width, "stride": self.stem_stride, "act": self.stem_act},
            "first_block_width": self.first_block_width,
            "stages": [
                {"width": s.width, "stride": s.stride, "act": s.act, "se": s.se}
                for s in self.stages
            ],
            "final_expand": self.final_expand,
            "feature_mix": self.feature_mix,
            "kernel_sizes": list(self.kernel_sizes),
            "expand_ratios": list(self.expand_ratios),
            "depths": list(self.depths),
            "resolutions": list(self.resolutions),
            "width_mults": list(self.width_mults),
            "precisions": list(self.precisions),
            "head_int8": self.head_int8,
            "size": self.size(),
            "size_log10": round(math.log10(self.size()), 2),
        }


_REGISTRY: dict[str, SearchSpace] = {}


def register_space(space: SearchSpace) -> SearchSpace:
    """Add ``space`` to the registry; a different space under a taken name is an error."""
    existing = _REGISTRY.get(space.name)
    if existing is not None and existing != space:
        raise ValueError(f"a different search space is already registered as {space.name!r}")
    _REGISTRY[space.name] = space
    return space


def get_space(name: str | SearchSpace) -> SearchSpace:
    """The registered space called ``name`` (a :class:`SearchSpace` passes through)."""
    if isinstance(name, SearchSpace):
        return name
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise UnknownSpaceError(f"unknown search space {name!r}; known: {known}") from None


def list_spaces() -> list[str]:
    """Names of the registered spaces, sorted."""
    return sorted(_REGISTRY)


OFA_MBV3 = register_space(
    SearchSpace(
        name="ofa_mbv3",
        description="once-for-all MobileNetV3 space (ImageNet, 128-224 px, width 1.0/1.2)",
        in_channels=3,
        num_classes=1000,
        stem_width=16,
        stem_stride=2,
        first_block_width=16,
        stages=(
            StageSpec(24, 2, "relu", False),
            StageSpec(40, 2, "relu", True),
            StageSpec(80, 2, "hswish", False),
            StageSpec(112, 1, "hswish", True),
            StageSpec(160, 2, "hswish", True),
        ),
        final_expand=960,
        feature_mix=1280,
        kernel_sizes=(3, 5, 7),
        expand_ratios=(3, 4, 6),
        depths=(2, 3, 4),
        resolutions=tuple(range(128, 225, 4)),
        width_mults=(1.0, 1.2),
    )
)

OFA_MBV3_MP = register_space(
    dataclasses.replace(
        OFA_MBV3,
        name="ofa_mbv3_mp",
        description="ofa_mbv3 with a precision per stage: fp32, int8 or binary",
        precisions=("binary", "fp32", "int8"),
    )
)

OFA_MBV3_MP_INT8HEAD = register_space(
    dataclasses.replace(
        OFA_MBV3_MP,
        name="ofa_mbv3_mp_int8head",
        description="ofa_mbv3_mp whose head runs int8 when the last stage is int8 or binary",
        head_int8=True,
    )
)

MBV3_SMALL28 = register_space(
    SearchSpace(
        name="mbv3_small28",
        description="MobileNetV3 blocks for 28x28 grey images (Fashion-MNIST, digits), 16-32 px",
        in_channels=1,
        num_classes=10,
        stem_width=16,
        stem_stride=1,
        first_block_width=16,
        stages=(
            StageSpec(16, 2, "relu", False),
            StageSpec(24, 2, "relu", True),
            StageSpec(32, 2, "hswish", False),
            StageSpec(48, 1, "hswish", True),
        ),
        final_expand=192,
        feature_mix=256,
        kernel_sizes=(3, 5, 7),
        expand_ratios=(3, 4, 6),
        depths=(2, 3, 4),
        resolutions=(16, 20, 24, 28, 32),
        width_mults=(1.0,),
        dropout=0.1,
    )
)

MBV3_SMALL28_LITE = register_space(
    dataclasses.replace(
        MBV3_SMALL28,
        name="mbv3_small28_lite",
        description="mbv3_small28 with a narrower head (144, 128): its smallest subnet has "
                    "under 100K parameters",
        final_expand=144,
        feature_mix=128,
    )
)

MBV3_SMALL28_MP = register_space(
    dataclasses.replace(
        MBV3_SMALL28,
        name="mbv3_small28_mp",
        description="mbv3_small28 with a precision per stage: fp32, int8 or binary",
        precisions=("binary", "fp32", "int8"),
    )
)

MBV3_SMALL28_MP_INT8HEAD = register_space(
    dataclasses.replace(
        MBV3_SMALL28_MP,
        name="mbv3_small28_mp_int8head",
        description="mbv3_small28_mp whose head runs int8 when the last stage is int8 or binary",
        head_int8=True,
    )
)

MBV3_SMALL28_INT8 = register_space(
    dataclasses.replace(
        MBV3_SMALL28,
        name="mbv3_small28_int8",
        description="mbv3_small28 with fp32 or int8 per stage (the demo's space: int8 by "
                    "post-training quantisation of fp32-trained weights)",
        precisions=("fp32", "int8"),
    )
)
