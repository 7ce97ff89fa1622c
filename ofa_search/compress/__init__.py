"""Compression beside search: structured and unstructured pruning, and early exits.

Public API (one function per command, each returning a result with ``to_dict()``)::

    prune(checkpoint, arch, out_dir, *, method, ratio | target_latency_ms, ...) -> PruneResult
    exits(checkpoint, arch, out_dir, *, after_stages, thresholds | ..., ...) -> ExitsResult

and the pieces they are made of: channel pruning of static subnets
(:mod:`~ofa_search.compress.channels`), magnitude masks
(:mod:`~ofa_search.compress.magnitude`), resumable fine-tuning
(:mod:`~ofa_search.compress.finetune`), early-exit networks and cascades
(:mod:`~ofa_search.compress.exit_net`, :mod:`~ofa_search.compress.exit_onnx`) and latency
measurement (:mod:`~ofa_search.compress.latency`). Errors derive from
:class:`~ofa_search.compress.errors.CompressError`. See ``docs/compress.md``.
"""

from __future__ import annotations

from ofa_search.compress.channels import (
    PrunedSubnet,
    channel_importance,
    narrow,
    prunable_units,
    prune_channels,
    rebuild,
)
from ofa_search.compress.errors import (
    CompressError,
    ExitStageError,
    PruningRatioError,
    ThresholdError,
    check_exit_stages,
    check_ratio,
    check_thresholds,
)
from ofa_search.compress.exit_net import (
    CascadeStats,
    EarlyExitNet,
    ExitHead,
    ExitOutputs,
    cascade_stats,
    choose_thresholds,
    exit_costs,
    exit_index,
    expected_latency,
)
from ofa_search.compress.exits import ExitLatency, ExitsResult, TrainedExits, exits
from ofa_search.compress.latency import Target, measure_models, resolve_target
from ofa_search.compress.magnitude import (
    apply_masks,
    magnitude_masks,
    sparsity_report,
    total_sparsity,
)
from ofa_search.compress.prune import (
    LatencyFit,
    PruneResult,
    prune,
    ratio_for_latency,
    schedule_ratios,
)

__all__ = [
    "CascadeStats",
    "CompressError",
    "EarlyExitNet",
    "ExitHead",
    "ExitLatency",
    "ExitOutputs",
    "ExitStageError",
    "ExitsResult",
    "LatencyFit",
    "PruneResult",
    "PrunedSubnet",
    "PruningRatioError",
    "Target",
    "ThresholdError",
    "TrainedExits",
    "apply_masks",
    "cascade_stats",
    "channel_importance",
    "check_exit_stages",
    "check_ratio",
    "check_thresholds",
    "choose_thresholds",
    "exit_costs",
    "exit_index",
    "exits",
    "expected_latency",
    "magnitude_masks",
    "measure_models",
    "narrow",
    "prunable_units",
    "prune",
    "prune_channels",
    "ratio_for_latency",
    "rebuild",
    "resolve_target",
    "schedule_ratios",
    "sparsity_report",
    "total_sparsity",
]
