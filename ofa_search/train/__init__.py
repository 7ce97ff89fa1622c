"""Supernet training: architecture samplers, the training loop, checkpoints and BN
recalibration.

Public API::

    TrainConfig, train, run_training, TrainResult      the loop (loop.py)
    SandwichStrategy, SinglePathStrategy, ProgressiveShrinking, Phase, default_phases,
    make_strategy, SubnetTask, Choices                 arch samplers (strategies.py)
    recalibrate_bn, evaluate, evaluate_arch, calibrated_subnet   (bn_calibration.py)
    calibrated_subnet_stream, evaluate_stream, evaluate_arch_stream, evaluate_batches,
    StreamAccuracy                       the same over streamed data (ImageNet)
    load_supernet, load_checkpoint, save_checkpoint, CHECKPOINT_VERSION   (checkpoint.py)
"""

from __future__ import annotations

from ofa_search.train.bn_calibration import (
    StreamAccuracy,
    calibrated_subnet,
    calibrated_subnet_stream,
    evaluate,
    evaluate_arch,
    evaluate_arch_stream,
    evaluate_batches,
    evaluate_stream,
    recalibrate_bn,
)
from ofa_search.train.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    load_checkpoint,
    load_supernet,
    save_checkpoint,
)
from ofa_search.train.evaluator import supernet_evaluator
from ofa_search.train.loop import (
    AMP_MODES,
    BIGNAS_EMA_DECAY,
    BINARY_WEIGHTS,
    LR_SCHEDULES,
    OPTIMIZERS,
    RECIPES,
    Autocast,
    SupernetStep,
    TrainConfig,
    TrainingError,
    TrainResult,
    cosine_lr,
    param_groups,
    resolve_device,
    run_training,
    scheduled_lr,
    train,
    with_recipe,
)
from ofa_search.train.strategies import (
    STRATEGIES,
    SUPERNET_STRATEGIES,
    Choices,
    Phase,
    ProgressiveShrinking,
    SandwichStrategy,
    SinglePathStrategy,
    SubnetTask,
    TrainingStrategy,
    default_phases,
    make_strategy,
)

__all__ = [
    "AMP_MODES",
    "BIGNAS_EMA_DECAY",
    "BINARY_WEIGHTS",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "RECIPES",
    "STRATEGIES",
    "SUPERNET_STRATEGIES",
    "Autocast",
    "Choices",
    "Phase",
    "ProgressiveShrinking",
    "SandwichStrategy",
    "SinglePathStrategy",
    "StreamAccuracy",
    "SubnetTask",
    "SupernetStep",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "TrainingStrategy",
    "calibrated_subnet",
    "calibrated_subnet_stream",
    "cosine_lr",
    "default_phases",
    "evaluate",
    "evaluate_arch",
    "evaluate_arch_stream",
    "evaluate_batches",
    "evaluate_stream",
    "load_checkpoint",
    "load_supernet",
    "make_strategy",
    "param_groups",
    "recalibrate_bn",
    "resolve_device",
    "run_training",
    "save_checkpoint",
    "scheduled_lr",
    "supernet_evaluator",
    "train",
    "with_recipe",
]
