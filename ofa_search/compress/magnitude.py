"""Unstructured magnitude pruning (Han et al., 2015): zero the weights of smallest magnitude.

Every conv and linear weight tensor is prunable (biases and batch norms are not). With
``scope="layer"`` each tensor loses ``ratio`` of its weights; with ``scope="global"`` one
magnitude threshold is chosen over all of them together, so layers lose different shares
(reported per layer by :func:`sparsity_report`). A mask per tensor keeps pruned weights at
zero through fine-tuning (:func:`apply_masks` after each optimizer step).

The network stays dense: ONNX Runtime's CPU kernels have no sparse fast path for these
convs, so a pruned model runs exactly as fast as the dense one. What it gains is a smaller
*compressed* artefact (runs of zero bytes compress well), which is what the ``prune``
command measures and reports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from ofa_search.compress.errors import CompressError, check_ratio

Scope = Literal["global", "layer"]
SCOPES: tuple[str, ...] = ("global", "layer")
Masks = dict[str, torch.Tensor]
"""Parameter name (``units.3.expand.0.weight``) → bool mask of the weights kept."""


def prunable_weights(net: nn.Module) -> dict[str, torch.Tensor]:
    """Name → weight of every ``Conv2d`` and ``Linear`` of ``net``, in module order."""
    return {f"{name}.weight": module.weight for name, module in net.named_modules()
            if isinstance(module, nn.Conv2d | nn.Linear)}


def _keep_top(values: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Bool mask of the ``n_keep`` largest entries of ``values`` (ties: lowest index)."""
    mask = torch.zeros(values.numel(), dtype=torch.bool)
    if n_keep > 0:
        order = torch.argsort(values.flatten(), descending=True, stable=True)
        mask[order[:n_keep]] = True
    return mask.view_as(values)


@torch.no_grad()
def magnitude_masks(net: nn.Module, ratio: float, *, scope: Scope = "global") -> Masks:
    """Masks that remove ``ratio`` of the prunable weights of ``net`` by magnitude (per
    tensor with ``scope="layer"``, over all tensors at once with ``"global"``). Weights that
    are already zero go first, so an iterative schedule passes its cumulative ratio."""
    check_ratio(ratio)
    if scope not in SCOPES:
        raise CompressError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    weights = prunable_weights(net)
    if scope == "layer":
        return {name: _keep_top(w.abs(), w.numel() - int(ratio * w.numel()))
                for name, w in weights.items()}
    flat = torch.cat([w.abs().flatten() for w in weights.values()])
    keep = _keep_top(flat, flat.numel() - int(ratio * flat.numel()))
    out: Masks = {}
    start = 0
    for name, w in weights.items():
        out[name] = keep[start:start + w.numel()].view_as(w)
        start += w.numel()
    return out


@torch.no_grad()
def apply_masks(net: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the weights of ``net`` that ``masks`` remove (in place)."""
    weights = prunable_weights(net)
    unknown = sorted(set(masks) - set(weights))
    if unknown:
        raise CompressError(f"masks name weights the network lacks: {unknown[:3]}")
    for name, mask in masks.items():
        weights[name].mul_(mask.to(weights[name].dtype))


@dataclass(frozen=True)
class LayerSparsity:
    """Weights and zeros of one prunable tensor."""

    name: str
    shape: tuple[int, ...]
    weights: int
    zeros: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.weights if self.weights else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "weights": self.weights,
                "zeros": self.zeros, "sparsity": self.sparsity}


@torch.no_grad()
def sparsity_report(net: nn.Module) -> list[LayerSparsity]:
    """Per prunable tensor of ``net``: its size and how many of its weights are zero."""
    return [LayerSparsity(name, tuple(w.shape), w.numel(), int((w == 0).sum()))
            for name, w in prunable_weights(net).items()]


def total_sparsity(layers: list[LayerSparsity]) -> float:
    """Share of zeros over all prunable weights."""
    weights = sum(layer.weights for layer in layers)
    return sum(layer.zeros for layer in layers) / weights if weights else 0.0
