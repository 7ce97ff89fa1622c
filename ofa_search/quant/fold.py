"""Deployment form of a static network: batch norms folded into their convs.

:func:`fold_network` copies a static subnet (or one unit's module) into plain fp32 layers:
every ``Conv2d`` (or int8 :class:`~ofa_search.nn.quant.QConv2d`) followed by a
``BatchNorm2d`` becomes one ``Conv2d`` with a bias, the batch norm an ``Identity``; the
fake-quantisation ops are dropped. What the int8 convs quantised is returned beside it
(:class:`FoldedConv`), for the ONNX quantiser to put back as QDQ.

With ``int8_grid=True`` (exporting learned, QAT scales) an int8 conv's folded weight lies
exactly on its int8 grid. The QAT forward pass is ``BN(conv(q(x), s·q))`` with per-channel
integers ``q = round(w / s)``, ``s = max|w| / 127`` (:func:`~ofa_search.nn.quant.int8_weight`).
Batch norm scales channel ``c`` by ``f_c = γ_c / √(var_c + ε)``, so the folded weight is
``f_c·s_c·q_c = (|f_c|·s_c) · (sign(f_c)·q_c)``: the same int8 integers (sign-flipped where
``γ < 0``) with scale ``|f_c|·s_c`` — folding a per-channel symmetric grid is exact.
With ``int8_grid=False`` (post-training quantisation) the folded weight is the plain
``f·w``, left for the quantiser to round.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ofa_search.errors import OfaSearchError
from ofa_search.nn.quant import INT8_WEIGHT_MAX, Int8ActQuant, QConv2d, int8_weight

MIN_SCALE = 1e-12
"""Floor of a folded weight scale (a channel with ``γ = 0`` or all-zero weights)."""


class UncalibratedQuantError(OfaSearchError, ValueError):
    """An int8 conv whose activation quantiser has never observed data."""


@dataclass(frozen=True)
class FoldedConv:
    """One conv of the folded network.

    ``weight`` is the folded float32 weight exactly as the deploy module holds it (and an
    ONNX export stores it). For int8 convs folded with ``int8_grid=True``, ``weight_int8``
    and ``weight_scale`` are its integers and per-output-channel scales (``weight ==
    weight_int8 * weight_scale[:, None, None, None]`` up to float rounding) and
    ``input_scale``/``input_zero_point`` the learned uint8 parameters of its input.
    """

    path: str
    int8: bool
    weight: np.ndarray
    weight_int8: np.ndarray | None = None
    weight_scale: np.ndarray | None = None
    input_scale: float | None = None
    input_zero_point: int | None = None

    @property
    def unit(self) -> int | None:
        """Index of the subnet unit holding the conv (``units.<i>.…``), else ``None``."""
        head, _, rest = self.path.partition(".")
        index = rest.partition(".")[0]
        return int(index) if head == "units" and index.isdigit() else None


@dataclass(frozen=True)
class FoldedNetwork:
    """A plain fp32 module computing what the source network computes (without fake
    quantisation) and the record of each of its convs, in module order."""

    module: nn.Module
    convs: tuple[FoldedConv, ...]

    @property
    def int8_convs(self) -> tuple[FoldedConv, ...]:
        return tuple(c for c in self.convs if c.int8)


@torch.no_grad()
def fold_network(net: nn.Module, *, int8_grid: bool) -> FoldedNetwork:
    """A folded, eval-mode copy of ``net`` (which is not modified).

    Raises :class:`UncalibratedQuantError` with ``int8_grid=True`` when an int8 conv's input
    quantiser has not observed data (its range is unknown: run
    :func:`~ofa_search.train.bn_calibration.recalibrate_bn` first).
    """
    module = copy.deepcopy(net).eval()
    records: dict[str, FoldedConv] = {}
    for parent_name, parent in list(module.named_modules()):
        children = list(parent.named_children())
        for i, (name, child) in enumerate(children):
            if not isinstance(child, nn.Conv2d):
                continue
            follower = children[i + 1][1] if i + 1 < len(children) else None
            bn = follower if isinstance(follower, nn.BatchNorm2d) else None
            path = f"{parent_name}.{name}" if parent_name else name
            conv, record = _fold_conv(child, bn, path, int8_grid)
            setattr(parent, name, conv)
            if bn is not None:
                setattr(parent, children[i + 1][0], nn.Identity())
            records[path] = record
    leftovers = [n for n, m in module.named_modules() if isinstance(m, Int8ActQuant | QConv2d)]
    if leftovers:  # a quantiser outside a conv: this module does not know how to export it
        raise ValueError(f"fake-quantisation modules left after folding: {leftovers[:3]}")
    return FoldedNetwork(module, tuple(records.values()))  # parents visited in module order


def _bn_affine(bn: nn.BatchNorm2d, path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(f, b)`` with ``bn(z) == f·z + b`` per channel, in eval mode."""
    mean, var, gamma, beta = bn.running_mean, bn.running_var, bn.weight, bn.bias
    if mean is None or var is None or gamma is None or beta is None:
        raise ValueError(f"the batch norm after conv {path} has no running statistics or no "
                         "affine parameters: it cannot be folded")
    factor = gamma / torch.sqrt(var + bn.eps)
    return factor, beta - mean * factor


def _fold_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d | None, path: str,
               int8_grid: bool) -> tuple[nn.Conv2d, FoldedConv]:
    out_ch = conv.out_channels
    factor, shift = _bn_affine(bn, path) if bn is not None else (torch.ones(out_ch),
                                                                  torch.zeros(out_ch))
    bias = shift if conv.bias is None else shift + factor * conv.bias
    int8 = isinstance(conv, QConv2d)
    weight_int8 = weight_scale = None
    input_scale: float | None = None
    input_zero: int | None = None
    if int8 and int8_grid:
        assert isinstance(conv, QConv2d)
        quant = conv.input_quant
        if int(quant.count) == 0:
            raise UncalibratedQuantError(
                f"int8 conv {path} has no observed activation range: calibrate the subnet "
                "(ofa_search.train.bn_calibration.recalibrate_bn) before exporting it")
        scale_t, zero_t = quant.qparams()
        input_scale, input_zero = float(scale_t), int(zero_t)
        amax = conv.weight.abs().flatten(1).amax(1).clamp_min(1e-8)
        scale = (amax / INT8_WEIGHT_MAX).float()  # as int8_weight computes it
        ints = torch.round(int8_weight(conv.weight) / scale.view(-1, 1, 1, 1))
        sign = torch.where(factor < 0, -1.0, 1.0)
        folded_scale = (factor.abs() * scale).clamp_min(MIN_SCALE)
        folded_ints = ints * sign.view(-1, 1, 1, 1)
        weight = folded_ints * folded_scale.view(-1, 1, 1, 1)
        weight_int8 = folded_ints.to(torch.int8).numpy()
        weight_scale = folded_scale.numpy().astype(np.float32)
    else:
        weight = conv.weight * factor.view(-1, 1, 1, 1)
    plain = nn.Conv2d(conv.in_channels, out_ch, conv.kernel_size,  # type: ignore[arg-type]
                      conv.stride, conv.padding, conv.dilation,  # type: ignore[arg-type]
                      conv.groups, bias=True)
    plain.weight.copy_(weight)
    plain.bias.copy_(bias)  # type: ignore[union-attr]
    plain.eval()
    record = FoldedConv(path, int8, plain.weight.detach().numpy().copy(), weight_int8,
                        weight_scale, input_scale, input_zero)
    return plain, record
