"""Binary (1-bit) layers for ``binary`` stages: sign activations and weights.

Which convs a ``binary`` stage binarizes: in each of its MBConv blocks, the 1×1 expand
and the 1×1 project convs. They hold most of a block's multiply-accumulates (in
``mbv3_small28`` 85 % of the MBConv MACs with 3×3 kernels, 52 % with 7×7 ones), they
have no padding and no stride, and each of their outputs sums ``C_in`` binary products,
which keeps information. The k×k depthwise conv stays full precision: each of its
outputs sees only k² inputs of one channel, so binarizing it throws away most of the
signal, it gains little from bit packing (no channel reduction to pack along), and it
carries the block's stride, so downsampling stays full precision (the BNN design rules
of Bi-Real Net and ReActNet). Squeeze-excite, the stem, the first block and the head stay
full precision too.

A binary 1×1 conv computes ``α_o · Σ_c sign(w_oc) · sign(n_c)`` (XNOR-Net's per-output-
channel scale ``α_o = mean |w_o|``) where ``n = BN_in(x)`` is its input through a batch
norm of its own (XNOR-Net's BN → sign → conv order: the input of a project conv follows
a ReLU or h-swish, so ``sign(x)`` alone would be +1 almost everywhere; the BN sets a
learned threshold per channel, as ReActNet's RSign does), followed by its output batch
norm, plus a real-valued shortcut of its input ``x`` (Bi-Real Net): the input's
channels repeated cyclically to the output width (channel ``o`` takes input channel
``o mod C_in``), so the shortcut exists for any pair of widths without parameters.

Each of the three design choices above can be switched off for an ablation
(:data:`BINARY_INGREDIENTS`: ``scale``, the XNOR-Net scale; ``shortcut``, the real-valued
shortcut; ``threshold``, the input BN; ``expand_shortcut`` and ``project_shortcut``, the
shortcut of an MBConv's expand or project conv only, which :func:`mbconv_ablation` turns
into each conv's own set), through ``BinaryPointwise.ablated`` or the supernet's
:meth:`~ofa_search.nn.supernet.Supernet.set_binary_ablation`. Such layers train and evaluate;
those without a shortcut are deployable too (the binary package and its kernels leave the
shortcut out, :class:`~ofa_search.binary.layer.PackedPointwise`), the other ablations are
refused by the binary package.

``sign`` maps 0 to +1 (``torch.sign(0)`` is 0, which is not a binary value); its gradient
is the clipped identity (1 where ``|x| ≤ 1``, else 0). Training is two-staged (Bi-Real,
ReActNet): with ``binary_activations`` off, only the weights are binary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn


class _Sign(torch.autograd.Function):
    """Exactly ±1 forward (the deployed kernels' values); clipped-identity backward."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad * (x.abs() <= 1)


def binary_sign(x: torch.Tensor) -> torch.Tensor:
    """+1 where ``x >= 0``, else -1; gradient 1 inside ``[-1, 1]``, 0 outside."""
    out: torch.Tensor = _Sign.apply(x)
    return out


def weight_scale(weight: torch.Tensor) -> torch.Tensor:
    """XNOR-Net's per-output-channel scale ``mean |w|``, shaped ``[out, 1, 1, 1]``."""
    return weight.abs().mean(dim=(1, 2, 3), keepdim=True)


BINARY_INGREDIENTS = ("scale", "shortcut", "threshold", "expand_shortcut", "project_shortcut")
"""The parts of a binary 1×1 conv that an ablation may switch off (module docstring)."""


def mbconv_ablation(ablated: frozenset[str]) -> tuple[frozenset[str], frozenset[str]]:
    """The ingredients switched off in an MBConv block's expand and project convs, from
    the block's ``ablated`` set: ``expand_shortcut`` is the expand conv's ``shortcut``,
    ``project_shortcut`` the project conv's."""
    own = ablated - {"expand_shortcut", "project_shortcut"}
    return ((own | {"shortcut"} if "expand_shortcut" in ablated else own),
            (own | {"shortcut"} if "project_shortcut" in ablated else own))


def check_ablation(ablated: Iterable[str]) -> frozenset[str]:
    """``ablated`` as a set of :data:`BINARY_INGREDIENTS`, or a one-line ``ValueError``."""
    names = frozenset([ablated] if isinstance(ablated, str) else ablated)
    unknown = sorted(names - set(BINARY_INGREDIENTS))
    if unknown:
        raise ValueError(f"unknown binary ingredient(s) {', '.join(unknown)}; known: "
                         f"{', '.join(BINARY_INGREDIENTS)}")
    return names


def binary_weight(weight: torch.Tensor, scale: bool = True) -> torch.Tensor:
    """``α_o · sign(w)`` (``sign(w)`` without ``scale``) with a straight-through gradient
    to ``w``."""
    signs = binary_sign(weight)
    return weight_scale(weight) * signs if scale else signs


def cyclic_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """``x``'s channels repeated cyclically (or truncated) to ``channels``."""
    c = x.shape[1]
    if c == channels:
        return x
    # cat, not index_select: its backward is a sum of slices (index_select's, a scatter
    # add, was 5 % of a binary training step), and it keeps channels_last where ``c``
    # divides ``channels`` (an MBConv's expand)
    return torch.cat([x] * -(-channels // c), dim=1)[:, :channels]


def binary_pointwise(x: torch.Tensor, weight: torch.Tensor,
                     binary_activations: bool = True, scale: bool = True) -> torch.Tensor:
    """The binary 1×1 conv of ``x`` with ``weight`` (``[out, in, 1, 1]``), no shortcut."""
    xb = binary_sign(x) if binary_activations else x
    return F.conv2d(xb, binary_weight(weight, scale))


def binary_block(x: torch.Tensor, in_bn: Callable[[torch.Tensor], torch.Tensor],
                 weight: torch.Tensor, bn: Callable[[torch.Tensor], torch.Tensor],
                 out_channels: int, binary_activations: bool = True,
                 ablated: frozenset[str] = frozenset()) -> torch.Tensor:
    """Input BN → binary 1×1 conv → BN → + cyclic shortcut of ``x`` (no activation), with
    the ``ablated`` parts off: what :class:`BinaryPointwise` and the supernet's binary
    stages compute."""
    n = x if "threshold" in ablated else in_bn(x)
    out = bn(binary_pointwise(n, weight, binary_activations, "scale" not in ablated))
    if "shortcut" not in ablated:
        out = out + cyclic_channels(x, out_channels)
    return out


class BinaryPointwise(nn.Module):
    """Input BN → binary 1×1 conv → BN → + real-valued cyclic shortcut [→ activation].

    Attributes:
        binary_activations: binarize the input (the final, deployable form) or only the
            weights (the first training stage).
        ablated: the :data:`BINARY_INGREDIENTS` switched off (an ablation; empty by
            default). Without ``threshold`` the input BN is skipped (it stays in the
            state dict). ``expand_shortcut`` and ``project_shortcut`` are an MBConv
            block's settings (:func:`mbconv_ablation`); a lone layer takes ``shortcut``.
    """

    def __init__(self, in_channels: int, out_channels: int, act: nn.Module | None = None,
                 binary_activations: bool = True) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.in_bn = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = act
        self.binary_activations = binary_activations
        self.ablated: frozenset[str] = frozenset()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = binary_block(x, self.in_bn, self.conv.weight, self.bn, self.out_channels,
                           self.binary_activations, self.ablated)
        return out if self.act is None else self.act(out)

    def extra_repr(self) -> str:
        ablated = f", ablated={sorted(self.ablated)}" if self.ablated else ""
        return f"binary_activations={self.binary_activations}{ablated}"
