"""A deployable binary 1×1 conv block (the inference form of ``BinaryPointwise``).

:class:`ofa_search.nn.binary.BinaryPointwise` in eval mode computes, per output channel
``o``::

    y_o = act( BN_o(α_o · Σ_c sign(w_oc)·sign(BN_in,c(x_c))) + x_(o mod C) )

Both batch norms fold into affine maps. The input one, ``n_c = u_c·x_c + v_c``, only sets
where each channel's sign flips (a learned threshold); the output one and the XNOR scale
give ``a_o = γ_o·α_o / √(σ²_o + ε)``, ``b_o = β_o − γ_o·μ_o / √(σ²_o + ε)``. So::

    y_o = act( a_o · dot_o + b_o + x_(o mod C) ),   dot_o = Σ_c sign(w_oc)·sign(u_c·x_c + v_c)

where ``dot_o`` is the exact integer binary dot product of packed signs.
:class:`PackedPointwise` holds exactly that: packed weight signs, ``u``, ``v``, ``a``, ``b``
and the activation; :meth:`PackedPointwise.run` is the NumPy implementation (the TVM one is
':mod:`ofa_search.binary.tvm_pointwise`). A ``BinaryPointwise`` without an input BN (older
code) packs with ``u = 1``, ``v = 0``; one trained without its cyclic shortcut (the
``shortcut``, ``expand_shortcut`` or ``project_shortcut`` ablation of
:mod:`ofa_search.nn.binary`) packs with ``shortcut=False``, which drops the ``x_(o mod C)``
term.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from ofa_search.binary.kernels import popcount_dot
from ofa_search.binary.packing import num_words, pack_activations, pack_weights
from ofa_search.nn.binary import BinaryPointwise

ACTIVATIONS: tuple[str, ...] = ("relu", "hswish")
"""Activations a packed layer may end with (``None``: none)."""


def activation_name(module: nn.Module | None) -> str | None:
    """``relu`` / ``hswish`` / ``None`` for the activation modules the static nets use."""
    if module is None:
        return None
    if isinstance(module, nn.ReLU):
        return "relu"
    if isinstance(module, nn.Hardswish):
        return "hswish"
    raise ValueError(f"unsupported activation {type(module).__name__} in a binary layer; "
                     f"supported: ReLU, Hardswish")


def apply_activation(y: np.ndarray, act: str | None) -> np.ndarray:
    """``act`` applied in place to float ``y`` (``hswish``: ``y·relu6(y + 3)/6``)."""
    if act == "relu":
        np.maximum(y, 0.0, out=y)
    elif act == "hswish":
        y *= np.clip(y + 3.0, 0.0, 6.0) / 6.0
    elif act is not None:
        raise ValueError(f"unknown activation {act!r}; known: {', '.join(ACTIVATIONS)}")
    return y


def bn_affine(bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """An eval-mode batch norm as ``(factor, shift)`` in float64: ``y = factor·x + shift``."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("a batch norm without running statistics cannot be folded")
    mean = bn.running_mean.detach().double().cpu().numpy()
    var = bn.running_var.detach().double().cpu().numpy()
    channels = mean.shape[0]
    gamma = (bn.weight.detach().double().cpu().numpy() if bn.weight is not None
             else np.ones(channels))
    beta = bn.bias.detach().double().cpu().numpy() if bn.bias is not None else np.zeros(channels)
    factor = gamma / np.sqrt(var + bn.eps)
    return factor, beta - mean * factor


@dataclass(frozen=True, eq=False)
class PackedPointwise:
    """``act(scale ⊙ dot + bias [+ cyclic(x)])`` for a binary 1×1 conv; see the module doc.

    Attributes:
        weights: packed weight signs, ``uint64 [O, 1, 1, words(in_channels)]``.
        in_channels: ``C``, the input width (and the period of the cyclic shortcut).
        scale: ``float32 [O]``, XNOR scale times the output BN factor.
        bias: ``float32 [O]``, the folded output BN shift.
        act: ``relu``, ``hswish`` or ``None``.
        input_scale: ``float32 [C]``, the folded input BN factor ``u`` (signs are taken of
            ``u·x + v``).
        input_shift: ``float32 [C]``, the folded input BN shift ``v``.
        shortcut: add the cyclic shortcut ``x_(o mod C)`` (Bi-Real Net's real-valued
            shortcut); ``False`` for a layer trained without it.
    """

    weights: np.ndarray
    in_channels: int
    scale: np.ndarray
    bias: np.ndarray
    act: str | None
    input_scale: np.ndarray
    input_shift: np.ndarray
    shortcut: bool = True

    def __post_init__(self) -> None:
        words = num_words(self.in_channels)
        w = self.weights
        if not isinstance(w, np.ndarray) or w.dtype != np.uint64 or w.ndim != 4 \
                or w.shape[1:] != (1, 1, words):
            shape = getattr(w, "shape", None)
            raise ValueError(f"weights must be uint64 [O, 1, 1, {words}] for "
                             f"{self.in_channels} input channels, got {shape}")
        for name, size in (("scale", w.shape[0]), ("bias", w.shape[0]),
                           ("input_scale", self.in_channels), ("input_shift", self.in_channels)):
            value = getattr(self, name)
            if not isinstance(value, np.ndarray) or value.dtype != np.float32 \
                    or value.shape != (size,):
                got = f"{getattr(value, 'dtype', None)} {getattr(value, 'shape', None)}"
                raise ValueError(f"{name} must be float32 [{size}], got {got}")
            if not np.isfinite(value).all():
                raise ValueError(f"{name} has non-finite values")
        if self.act is not None and self.act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.act!r}; known: {', '.join(ACTIVATIONS)}")
        if not isinstance(self.shortcut, bool):
            raise ValueError(f"shortcut must be a bool, got {self.shortcut!r}")

    @property
    def out_channels(self) -> int:
        return int(self.weights.shape[0])

    @classmethod
    def from_module(cls, module: BinaryPointwise) -> PackedPointwise:
        """Pack an eval-mode :class:`BinaryPointwise` (binary activations on; without its
        shortcut where it was trained so)."""
        if not isinstance(module, BinaryPointwise):
            raise TypeError(f"expected a BinaryPointwise, got {type(module).__name__}")
        if not module.binary_activations:
            raise ValueError("this BinaryPointwise has binary_activations=False (first "
                             "training stage): only layers with binary inputs can be packed")
        if module.training:
            raise ValueError("put the network in eval mode before packing (BN must use its "
                             "running statistics)")
        ablated = frozenset(getattr(module, "ablated", frozenset()))
        if ablated - {"shortcut"}:
            raise ValueError(f"this BinaryPointwise has {', '.join(sorted(ablated))} "
                             "switched off (an ablation): only binary layers with their scale "
                             "and threshold can be packed")
        weight = module.conv.weight.detach().double().cpu().numpy()
        alpha = np.abs(weight).mean(axis=(1, 2, 3))
        out_factor, out_shift = bn_affine(module.bn)
        in_bn = getattr(module, "in_bn", None)
        if in_bn is None:
            in_factor, in_shift = np.ones(module.in_channels), np.zeros(module.in_channels)
        else:
            in_factor, in_shift = bn_affine(in_bn)
        return cls(weights=pack_weights(weight), in_channels=module.in_channels,
                   scale=(alpha * out_factor).astype(np.float32),
                   bias=out_shift.astype(np.float32), act=activation_name(module.act),
                   input_scale=in_factor.astype(np.float32),
                   input_shift=in_shift.astype(np.float32),
                   shortcut="shortcut" not in ablated)

    def check_input(self, x: np.ndarray) -> np.ndarray:
        """``x`` as a float32 ``[N, C, H, W]`` array, or a ``ValueError``."""
        x = np.asarray(x)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"input must be [N, {self.in_channels}, H, W], got {x.shape}")
        return x.astype(np.float32, copy=False)

    def run(self, x: np.ndarray) -> np.ndarray:
        """NumPy forward: float32 ``[N, C, H, W]`` → ``[N, O, H, W]``."""
        x = self.check_input(x)
        n, c, h, w = x.shape
        thresholded = x * self.input_scale[:, None, None] + self.input_shift[:, None, None]
        words = pack_activations(thresholded).reshape(-1, self.weights.shape[-1])
        dot = c - 2 * popcount_dot(words, self.weights.reshape(self.out_channels, -1))
        y = dot.astype(np.float32) * self.scale + self.bias  # [N·H·W, O]
        y = np.ascontiguousarray(y.reshape(n, h, w, -1).transpose(0, 3, 1, 2))
        if self.shortcut:
            y += x[:, np.arange(self.out_channels) % c]
        return apply_activation(y, self.act)
