"""The weight-sharing supernet of a search space."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ofa_search.arch import Arch
from ofa_search.errors import InvalidArchError
from ofa_search.nn.binary import check_ablation
from ofa_search.nn.elastic_block import ElasticMBConv
from ofa_search.nn.quant import Int8ActQuant, int8_weight
from ofa_search.nn.static import ConvBNAct, Head, MBConv, init_weights
from ofa_search.space import SearchSpace, get_space
from ofa_search.units import HeadUnit, MBConvUnit

HEAD_LAYERS = ("final_expand", "feature_mix", "classifier")
"""The head's layers, each with an activation quantiser in a ``head_int8`` space."""


class Supernet(nn.Module):
    """All subnets of ``space`` at one width multiplier, sharing weights.

    ``forward(x, arch)`` runs the subnet ``arch``: the first ``depths[s]`` blocks of each
    stage with their kernels and expand ratios. The input is resized (bilinear) to
    ``arch.resolution`` when its size differs (elastic resolution).
    """

    def __init__(self, space: str | SearchSpace, width_mult: float | None = None, *,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        spec = get_space(space)
        width = spec.width_mults[0] if width_mult is None else float(width_mult)
        if width not in spec.width_mults:
            raise InvalidArchError(f"width_mult={width} is not allowed in space {spec.name!r}; "
                                   f"choices: {', '.join(map(str, spec.width_mults))}")
        self.space, self.width_mult = spec, width
        w = spec.widths(width)
        self.stem = ConvBNAct(spec.in_channels, w.stem, 3, spec.stem_stride, act=spec.stem_act)
        self.first_block = MBConv(MBConvUnit(w.stem, w.first_block, w.stem, 1, 3, 1, "relu", 0,
                                             has_expand=False))
        stages = []
        in_ch = w.first_block
        for s, stage in enumerate(spec.stages):
            blocks = []
            for b in range(spec.max_depth):
                stride = stage.stride if b == 0 else 1
                blocks.append(ElasticMBConv(spec, stage, in_ch, w.stages[s], stride))
                in_ch = w.stages[s]
            stages.append(nn.ModuleList(blocks))
        self.stages = nn.ModuleList(stages)
        self.head = Head(HeadUnit(in_ch, w.final_expand, w.feature_mix, spec.num_classes, 1),
                         spec.dropout)
        # the int8 head's activation quantisers (spaces with head_int8); the weights are the
        # fp32 head's, fake-quantised per call, as the elastic blocks' int8 convs are
        self.head_quant: nn.ModuleDict | None = None
        if spec.head_int8:
            self.head_quant = nn.ModuleDict({name: Int8ActQuant() for name in HEAD_LAYERS})
        init_weights(self, generator)

    def check_arch(self, arch: Arch) -> None:
        if arch.space != self.space.name or arch.width_mult != self.width_mult:
            raise InvalidArchError(
                f"arch of {arch.space}/w{arch.width_mult} does not belong to this supernet "
                f"({self.space.name}/w{self.width_mult})"
            )

    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        self.check_arch(arch)
        if x.shape[-1] != arch.resolution or x.shape[-2] != arch.resolution:
            x = F.interpolate(x, size=(arch.resolution, arch.resolution), mode="bilinear",
                              align_corners=False)
        x = self.first_block(self.stem(x))
        for s in range(len(self.stages)):
            for b in range(arch.depths[s]):
                x = self.block(s, b)(x, arch.kernels[s][b], arch.expands[s][b],
                                     arch.precisions[s])
        if self.space.head_precision(arch.precisions) == "int8":
            return self._int8_head(x)
        out: torch.Tensor = self.head(x)
        return out

    def _int8_head(self, x: torch.Tensor) -> torch.Tensor:
        """The head with its three layers fake-quantised (what :class:`Head` computes for an
        ``int8`` unit; the classifier as a linear layer, its 1×1 conv's equal)."""
        assert self.head_quant is not None
        q, head = self.head_quant, self.head
        expand, mix = head.final_expand, head.feature_mix
        expand_conv, mix_conv = expand[0], mix[0]
        assert isinstance(expand_conv, nn.Conv2d) and isinstance(mix_conv, nn.Conv2d)
        x = F.conv2d(q["final_expand"](x), int8_weight(expand_conv.weight))
        x = expand[2](expand[1](x)).mean((2, 3), keepdim=True)
        x = F.conv2d(q["feature_mix"](x), int8_weight(mix_conv.weight))
        x = head.dropout(mix[1](x).flatten(1))
        classifier = head.classifier
        assert isinstance(classifier, nn.Linear)
        return F.linear(q["classifier"](x), int8_weight(classifier.weight), classifier.bias)

    def block(self, stage: int, index: int) -> ElasticMBConv:
        """The elastic block ``index`` of stage ``stage``."""
        block = self.stages[stage][index]  # type: ignore[index]
        assert isinstance(block, ElasticMBConv)
        return block

    def elastic_blocks(self) -> list[ElasticMBConv]:
        return [self.block(s, b) for s in range(len(self.stages))
                for b in range(self.space.max_depth)]

    @torch.no_grad()
    def zero_residual_gammas(self) -> int:
        """Set γ of the last batch norm of every residual block to 0, so that each residual
        block starts as the identity (BigNAS's initialisation of single-stage models; Yu et
        al., ECCV 2020). Returns how many batch norms were zeroed."""
        zeroed: list[nn.BatchNorm2d] = []
        if self.first_block.residual:
            zeroed += [m for m in self.first_block.project.modules()
                       if isinstance(m, nn.BatchNorm2d)][-1:]
        for block in self.elastic_blocks():
            if block.residual:
                zeroed.append(block.project_bn)
                binary_bn = getattr(block, "binary_project_bn", None)
                if isinstance(binary_bn, nn.BatchNorm2d):
                    zeroed.append(binary_bn)
        for bn in zeroed:
            bn.weight.zero_()
        return len(zeroed)

    def set_dropout(self, enabled: bool) -> None:
        """Turn the classifier's dropout (the space's rate) on or off, e.g. to regularise
        only the largest subnet of a sandwich step."""
        dropout = self.head.dropout
        assert isinstance(dropout, nn.Dropout)
        dropout.p = self.space.dropout if enabled else 0.0

    def set_binary_activations(self, enabled: bool) -> None:
        """Binarize activations in ``binary`` stages (on) or only weights (the first stage
        of two-stage binary training); extracted subnets inherit the setting."""
        for block in self.elastic_blocks():
            block.binary_activations = enabled

    def set_binary_ablation(self, ablated: Iterable[str]) -> None:
        """Switch off these :data:`~ofa_search.nn.binary.BINARY_INGREDIENTS` in every
        ``binary`` stage (an ablation; ``()`` restores them). Extracted subnets inherit the
        setting; the binary package holds layers without their shortcut and refuses the other
        ablations. Raises ``ValueError`` for an
        unknown name."""
        names = check_ablation(ablated)
        for block in self.elastic_blocks():
            block.binary_ablated = names

    def set_binary_weights(self, own: bool) -> None:
        """Give every block's binary 1×1 convs latent weights of their own (``own``: copies
        of the fp32 convs' weights as they are now, trained apart from them from then on),
        or let them binarize the fp32 convs' shared weights (the default). Raises
        ``ValueError`` for a space without binary stages."""
        for block in self.elastic_blocks():
            block.set_binary_weights(own)

    def copy_binary_weights(self) -> None:
        """Set the binary convs' own latent weights (where they have them) to the fp32
        convs' weights, e.g. after loading fp32 weights to start from."""
        for block in self.elastic_blocks():
            block.copy_binary_weights()

    def sort_channels(self) -> int:
        """Importance-sort the hidden channels of every elastic block (in place; the largest
        subnet's function is unchanged) and return how many were sorted: in a space that offers
        binary, none are, as sorting would change the binary subnets
        (:meth:`ElasticMBConv.sort_channels`)."""
        return sum(block.sort_channels() for block in self.elastic_blocks())
