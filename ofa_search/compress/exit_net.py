"""Early-exit networks (BranchyNet, Teerapittayanon et al., 2016) over a static subnet.

An exit head reads the output of the last block of a chosen stage: 1×1 conv + BN +
h-swish → global mean → linear classifier. :class:`EarlyExitNet` runs the subnet and
returns its final logits followed by each exit's logits (the ONNX export's outputs);
:meth:`EarlyExitNet.segments` cuts it into the pieces a deployment runs one after another
(segment ``k`` maps the previous cut's features to this cut's features and exit ``k``'s
logits; the last maps them to the final logits), stopping at the first exit whose
confidence (its largest softmax probability) reaches that exit's threshold.

Expected latency of such a cascade on a dataset (:func:`expected_latency`)::

    E = Σ_k share_k · cost_k
    cost_k = prefix_k + Σ_{j ≤ k} head_j   for an exit k (every earlier head ran and said no)
    cost_final = full network + Σ_j head_j

where ``share_k`` is the share of samples that leave at exit ``k`` (or at the end), and
``prefix_k`` the backbone up to exit ``k``'s cut.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ofa_search.arch import Arch
from ofa_search.compress.errors import CompressError, check_exit_stages, check_thresholds
from ofa_search.nn import StaticSubnet
from ofa_search.nn.static import make_act
from ofa_search.onnx_export import OUTPUT_NAME
from ofa_search.units import MBConvUnit, arch_units

DEFAULT_HEAD_WIDTH = 64
THRESHOLD_GRID: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95,
                                     0.97, 0.98, 0.99, 0.995, 0.999, 1.0)
"""Thresholds tried per exit by :func:`choose_thresholds`."""
JOINT_SEARCH_MAX_EXITS = 3
"""Up to this many exits, every combination of per-exit thresholds is tried; beyond, one
common threshold."""


class ExitHead(nn.Module):
    """1×1 conv (no bias, ``width`` channels) + BN + h-swish → global mean → linear
    classifier; with ``width=0`` just global mean → linear (the cheapest head: two ops)."""

    def __init__(self, in_channels: int, width: int, num_classes: int) -> None:
        super().__init__()
        self.width = width
        self.conv: nn.Sequential | None = None
        if width > 0:
            self.conv = nn.Sequential(nn.Conv2d(in_channels, width, 1, bias=False),
                                      nn.BatchNorm2d(width), make_act("hswish"))
        self.classifier = nn.Linear(width or in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is not None:
            x = self.conv(x)
        return self.classifier(x.mean((2, 3)))

    def macs(self, in_size: int) -> int:
        """Multiply-accumulates at batch 1 on an ``in_size``² input (as units count them)."""
        conv = 0
        if self.conv is not None:
            first = self.conv[0]
            assert isinstance(first, nn.Conv2d)
            conv = first.weight.numel() * in_size**2
        return int(conv + self.classifier.weight.numel())


def exit_cuts(arch: Arch, after_stages: Sequence[int]) -> list[int]:
    """Index of the unit (of :func:`~ofa_search.units.arch_units`) after which each exit
    reads: the last block of its stage (unit 0 is the stem, unit 1 the fixed block)."""
    stages = check_exit_stages(after_stages, len(arch.depths))
    return [1 + sum(arch.depths[:s + 1]) for s in stages]


def exit_names(after_stages: Sequence[int]) -> list[str]:
    """ONNX output names of the exits."""
    return [f"exit_after_stage{s}" for s in after_stages]


class Segment(nn.Module):
    """Units of a subnet between two cuts, followed by an exit head (returns the features
    and the exit's logits) or, for the last segment, nothing more (returns the logits)."""

    def __init__(self, units: Sequence[nn.Module], head: nn.Module | None) -> None:
        super().__init__()
        self.units = nn.ModuleList(units)
        self.head = head

    def forward(self, x: torch.Tensor) -> Any:
        for unit in self.units:
            x = unit(x)
        if self.head is None:
            return x
        return x, self.head(x)


class EarlyExitNet(nn.Module):
    """A static subnet with exit heads after the stages ``after_stages``.

    ``forward(x)`` returns ``(final logits, exit logits…)`` in the order of the stages.
    """

    def __init__(self, backbone: StaticSubnet, after_stages: Sequence[int],
                 heads: Sequence[nn.Module]) -> None:
        super().__init__()
        self.after_stages = check_exit_stages(after_stages, len(backbone.arch.depths))
        if len(heads) != len(self.after_stages):
            raise CompressError(f"{len(heads)} heads for {len(self.after_stages)} exits")
        self.backbone = backbone
        self.heads = nn.ModuleList(heads)
        self.cuts = exit_cuts(backbone.arch, self.after_stages)

    @property
    def arch(self) -> Arch:
        return self.backbone.arch

    @property
    def output_names(self) -> list[str]:
        return [OUTPUT_NAME, *exit_names(self.after_stages)]

    def input_shape(self, batch_size: int = 1) -> tuple[int, int, int, int]:
        return self.backbone.input_shape(batch_size)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Final logits and the features each exit reads."""
        feats = []
        cuts = set(self.cuts)
        for i, unit in enumerate(self.backbone.units):
            x = unit(x)
            if i in cuts:
                feats.append(x)
        return x, feats

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        final, feats = self.features(x)
        return (final, *(head(f) for head, f in zip(self.heads, feats, strict=True)))

    def segments(self) -> list[Segment]:
        """The pieces of a cascade (see the module docstring); they share this network's
        modules."""
        units = list(self.backbone.units)
        out, start = [], 0
        for cut, head in zip(self.cuts, self.heads, strict=True):
            out.append(Segment(units[start:cut + 1], head))
            start = cut + 1
        out.append(Segment(units[start:], None))
        return out

    def segment_input_shapes(self, batch_size: int = 1) -> list[tuple[int, ...]]:
        """Input shape of each segment."""
        units = arch_units(self.arch)
        shapes: list[tuple[int, ...]] = [self.input_shape(batch_size)]
        for cut in self.cuts:
            unit = units[cut]
            assert isinstance(unit, MBConvUnit)
            shapes.append((batch_size, unit.out_channels, unit.out_size, unit.out_size))
        return shapes


def head_input_channels(arch: Arch, after_stages: Sequence[int]) -> list[int]:
    """Channels of the features each exit reads (the width of its stage)."""
    widths = arch.search_space.widths(arch.width_mult)
    return [widths.stages[s] for s in check_exit_stages(after_stages, len(arch.depths))]


# -- cascades ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ExitOutputs:
    """What a cascade needs of a dataset: ``confidence[k, n]`` (largest softmax probability
    of exit ``k`` on sample ``n``) and ``correct[k, n]`` for every exit and, last, the
    final head."""

    confidence: np.ndarray
    correct: np.ndarray

    @property
    def n_exits(self) -> int:
        return int(self.confidence.shape[0])


@torch.no_grad()
def collect_outputs(net: EarlyExitNet, batches: Any) -> ExitOutputs:
    """:class:`ExitOutputs` of ``net`` (eval mode) on ``(x, y)`` batches."""
    net.eval()
    conf: list[np.ndarray] = []
    correct: list[np.ndarray] = []
    for x, y in batches:
        final, *exits = net(x)
        logits = [*exits, final]
        conf.append(np.stack([F.softmax(z, 1).max(1).values.numpy() for z in exits])
                    if exits else np.zeros((0, len(y))))
        correct.append(np.stack([(z.argmax(1) == y).numpy() for z in logits]))
    return ExitOutputs(np.concatenate(conf, axis=1), np.concatenate(correct, axis=1))


def exit_index(confidence: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """For each sample, the first exit whose confidence reaches its threshold, or
    ``len(thresholds)`` (the final head) when none does."""
    n_exits, n = confidence.shape
    out = np.full(n, n_exits, dtype=np.int64)
    undecided = np.ones(n, dtype=bool)
    for k, tau in enumerate(thresholds):
        leave = undecided & (confidence[k] >= tau)
        out[leave] = k
        undecided &= ~leave
    return out


def exit_costs(prefix_ms: Sequence[float], head_ms: Sequence[float]) -> list[float]:
    """Cost of leaving at each exit and at the end (see the module docstring):
    ``prefix_ms`` has one entry per exit plus the full network, ``head_ms`` one per exit."""
    if len(prefix_ms) != len(head_ms) + 1:
        raise ValueError(f"need one prefix per exit plus the full network: "
                         f"{len(prefix_ms)} prefixes for {len(head_ms)} heads")
    heads = np.cumsum(head_ms).tolist()
    return [float(prefix_ms[k]) + heads[k] for k in range(len(head_ms))] + [
        float(prefix_ms[-1]) + (heads[-1] if heads else 0.0)]


def expected_latency(shares: Sequence[float], costs: Sequence[float]) -> float:
    """``Σ_k share_k · cost_k``."""
    if len(shares) != len(costs):
        raise ValueError(f"{len(shares)} shares for {len(costs)} costs")
    return float(np.dot(np.asarray(shares, dtype=float), np.asarray(costs, dtype=float)))


@dataclass(frozen=True)
class CascadeStats:
    """Accuracy of a cascade, the share leaving at each exit (last: the final head) and
    the expected latency under one list of costs."""

    thresholds: tuple[float, ...]
    accuracy: float
    shares: tuple[float, ...]
    expected_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {"thresholds": list(self.thresholds), "accuracy": self.accuracy,
                "shares": list(self.shares), "expected_ms": self.expected_ms}


def cascade_stats(outputs: ExitOutputs, thresholds: Sequence[float], costs: Sequence[float]
                  ) -> CascadeStats:
    """Run the cascade with ``thresholds`` on ``outputs``."""
    taus = check_thresholds(thresholds, outputs.n_exits)
    index = exit_index(outputs.confidence, taus)
    n = index.shape[0]
    accuracy = float(outputs.correct[index, np.arange(n)].mean()) if n else 0.0
    shares = np.bincount(index, minlength=outputs.n_exits + 1) / max(n, 1)
    return CascadeStats(taus, accuracy, tuple(float(s) for s in shares),
                        expected_latency(shares, costs))


def choose_thresholds(outputs: ExitOutputs, costs: Sequence[float], *,
                      max_drop: float | None = None, max_ms: float | None = None,
                      grid: Sequence[float] = THRESHOLD_GRID) -> tuple[CascadeStats, bool]:
    """Thresholds for a dataset (the validation split): with ``max_drop`` (a fraction) the
    fastest cascade whose accuracy is within ``max_drop`` of the final head's; with
    ``max_ms`` the most accurate one whose expected latency is at most ``max_ms``. Every
    combination of ``grid`` values per exit is tried (one common value beyond
    :data:`JOINT_SEARCH_MAX_EXITS` exits). Returns the stats and whether the constraint was
    met (if not: the fastest cascade)."""
    if (max_drop is None) == (max_ms is None):
        raise ValueError("give exactly one of max_drop and max_ms")
    n = outputs.n_exits
    combos: Any = (itertools.product(grid, repeat=n) if n <= JOINT_SEARCH_MAX_EXITS
                   else ((t,) * n for t in grid))
    full = float(outputs.correct[-1].mean())
    best: CascadeStats | None = None
    fastest: CascadeStats | None = None
    for combo in combos:
        stats = cascade_stats(outputs, combo, costs)
        if fastest is None or (stats.expected_ms, -stats.accuracy) < (
                fastest.expected_ms, -fastest.accuracy):
            fastest = stats
        if max_drop is not None:
            if stats.accuracy < full - max_drop - 1e-12:
                continue
            key = (stats.expected_ms, -stats.accuracy)
        else:
            assert max_ms is not None
            if stats.expected_ms > max_ms:
                continue
            key = (-stats.accuracy, stats.expected_ms)
        if best is None or key < ((best.expected_ms, -best.accuracy) if max_drop is not None
                                  else (-best.accuracy, best.expected_ms)):
            best = stats
    assert fastest is not None
    return (best, True) if best is not None else (fastest, False)
