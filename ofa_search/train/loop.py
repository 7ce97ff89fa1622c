"""The supernet training loop: SGD + Nesterov (or AdamW), warm-up + cosine, gradient
accumulation over the subnets of each step, distillation, clipping, JSONL metrics, atomic
checkpoints, bit-for-bit resume (from epoch ends, or mid-epoch with ``checkpoint_every``),
CPU or CUDA with optional bf16/fp16 autocast, and DDP under ``torchrun`` (gloo on CPU,
NCCL on CUDA).

Randomness: the supernet's initialisation, the data order and augmentation, and the
archs each come from a generator seeded from ``TrainConfig.seed``, and so does dropout
(:class:`~ofa_search.nn.static.SeededDropout`, on the training device; checkpointed), so
that no other thread drawing from PyTorch's default generator changes a run. Module
construction draws from the default generators, so the loop runs inside
``torch.random.fork_rng``: the caller's global RNG state is untouched afterwards.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel

from ofa_search.arch import Arch, parse_arch
from ofa_search.atomic import (
    OutputPathError,
    atomic_write_text,
    check_writable_dir,
    remove_stale_temps,
)
from ofa_search.data import (
    DatasetSplits,
    ImageStreamSplits,
    is_streamed_dataset,
    iterate_batches,
    load_dataset,
    open_image_stream,
    train_stream_loader,
)
from ofa_search.errors import OfaSearchError
from ofa_search.nn import Supernet
from ofa_search.nn.binary import check_ablation
from ofa_search.nn.static import SeededDropout
from ofa_search.space import get_space
from ofa_search.train.bn_calibration import evaluate_arch, evaluate_arch_stream
from ofa_search.train.checkpoint import load_checkpoint, load_init_weights, save_checkpoint
from ofa_search.train.strategies import (
    STRATEGIES,
    Phase,
    PrecisionPhase,
    Segment,
    SubnetTask,
    TrainingStrategy,
    default_phases,
    default_precision_phases,
    make_strategy,
)

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
AMP_MODES = ("off", "bf16", "fp16")
"""Autocast choices of :class:`TrainConfig`: full fp32, bfloat16, or float16 with a
gradient scaler (CUDA only)."""
_DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")
LR_SCHEDULES = ("cosine", "exp_constant")
"""Learning-rate decays of :class:`TrainConfig`: cosine to 0 (once-for-all), or BigNAS's
exponential decay with a constant ending (see :func:`scheduled_lr`)."""
OPTIMIZERS = ("sgd", "adamw")
"""Optimizers of :class:`TrainConfig` (see :func:`make_optimizer`)."""
BINARY_WEIGHTS = ("shared", "own")
"""Where binary stages' 1×1 convs take their latent weights (:class:`TrainConfig`)."""
EXP_FLOOR = 0.05
"""``exp_constant``: the learning rate ends at this fraction of its peak (BigNAS: 5 %)..."""
EXP_DECAY_SPAN = 0.75
"""... reached after this fraction of each segment's post-warm-up steps, and held after."""
RECIPES = ("ofa", "bignas")
BIGNAS_EMA_DECAY = 0.9998
"""The weight EMA's decay of recipe ``bignas`` (per optimizer step), reached once the EMA
has averaged ~45,000 updates: until then :func:`ema_decay_at` warms it up."""


class TrainingError(OfaSearchError, ValueError):
    """A training run that cannot start or resume as asked."""


def check_optimizer_options(check: Callable[[bool, str], None], *, lr: float,
                            momentum: float, weight_decay: float, label_smoothing: float,
                            kd_ratio: float, grad_clip: float | None) -> None:
    """The checks every SGD run makes of its options (training, fine-tuning): ``check(ok,
    message)`` raises the caller's error when ``ok`` is false."""
    check(math.isfinite(lr) and lr > 0, f"lr must be a finite number > 0, got {lr!r}")
    check(0 <= momentum < 1, f"momentum must be in [0, 1), got {momentum!r}")
    check(weight_decay >= 0, f"weight_decay must be >= 0, got {weight_decay!r}")
    check(0 <= label_smoothing < 1,
          f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    check(kd_ratio >= 0, f"kd_ratio must be >= 0, got {kd_ratio!r}")
    check(grad_clip is None or grad_clip > 0, f"grad_clip must be > 0 or None, got {grad_clip!r}")

@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything a training run depends on; change with ``dataclasses.replace``.

    Attributes:
        space, width_mult: the supernet (``None``: the space's largest width).
        dataset, data_dir: passed to :func:`ofa_search.data.load_dataset`; a streamed
            dataset (``imagenet``: an ImageNet-layout folder too big for memory) is read
            by :func:`ofa_search.data.train_stream_loader` instead: ``num_workers``
            decoding processes (default :func:`~ofa_search.data.default_num_workers`),
            pinned memory on CUDA, once-for-all's random-resized-crop and flip.
        strategy: ``sandwich``, ``spos``, ``ps`` or ``standalone`` (trains only ``arch``,
            a string or JSON of one subnet, at its resolution); ``n_random`` is the
            sandwich's number
            of random archs per step. For ``ps``, ``ps_phases`` sets each phase's choices,
            subnets per step, epochs and lr (``precision_phases`` likewise for strategy
            ``precision``, default :func:`default_precision_phases`); by default
            (:func:`default_phases`) ``epochs`` is the length of *each* phase, the first
            phase runs at ``lr`` and the later ones at ``lr × ps_later_lr_scale``.
            For ``precision``, ``binary_share`` (probability of a binary stage in the
            phases that offer binary; ``None``: uniform over the phase's precisions) and
            ``precision_distill`` (sampled subnets learn from the fp32 largest's soft
            output; off: from labels), ``precision_fp32_smallest`` (the sandwich's
            smallest subnet stays fp32) and ``precision_binary_largest`` (the all-binary
            largest subnet replaces a random one in the binary phases) go to
            :class:`PrecisionStrategy`.
        binary_ablation: binary ingredients switched off in every ``binary`` stage
            (:data:`~ofa_search.nn.binary.BINARY_INGREDIENTS`: ``scale``, ``shortcut``,
            ``threshold``, ``expand_shortcut``, ``project_shortcut``), to measure what
            each is worth; the checkpoint keeps the setting and loads with it; subnets
            without a shortcut (``shortcut``, ``expand_shortcut``, ``project_shortcut``)
            package and run as trained, the other ablations cannot be packaged.
        binary_weights: ``shared`` (the binary 1×1 convs binarize the fp32 convs' latent
            weights) or ``own`` (latent weights of their own, started as copies of the
            fp32 convs' weights after ``init_checkpoint``: binary training then leaves the
            fp32 1×1 weights to the fp32 subnets; the other layers stay shared).
        epochs, batch_size (per rank), lr (peak), momentum, nesterov, weight_decay (not on
            BN parameters and biases), warmup_epochs (linear, at the start of every
            lr segment), label_smoothing, kd_ratio, grad_clip (max global L2 norm or None).
        depthwise_lr_scale: run the depthwise convs' parameters at the learning rate times
            this scale in (0, 1] (:func:`param_groups`), e.g. to keep the fp32 subnets'
            shared depthwise weights from drifting while binary subnets train on them.
        optimizer: ``sgd`` (with ``momentum`` and ``nesterov``; once-for-all's) or
            ``adamw`` (Adam with decoupled weight decay, β₁ = ``momentum``; what binary
            networks are trained with: Liu et al., "How do Adam and training strategies
            help BNNs optimization?", ICML 2021, arXiv:2106.11309).
        resolutions: restrict the sampled resolutions (default: all of the space).
        data_resolution: side at which batches are served (default: the largest sampled
            resolution); the supernet resizes to each arch's resolution.
        steps_per_epoch: cap on steps per epoch (default: one pass over the train split).
        stop_after_epochs: end the run (checkpointed, resumable) after this many epochs in
            total, e.g. to split a run into time slices.
        augment: use the dataset's training augmentation.
        random_erasing: with ``augment``, also erase a random box of each training image
            with this probability (:class:`~ofa_search.data.AugmentPolicy`'s ``erase``;
            0.5 is Zhong et al.'s setting); in-memory datasets only.
        eval_each_epoch: after each epoch, log the val accuracy of the largest and smallest
            arch (BN recalibrated).
        channels_last: run the network in channels-last memory format (about 2× faster
            on CPU for this network, measured at 28 px).
        device: ``auto`` (the rank's CUDA GPU when there is one, else the CPU), ``cpu``,
            ``cuda`` or ``cuda:N``. Under ``torchrun``, ``auto`` and ``cuda`` take GPU
            ``LOCAL_RANK``. Evaluation and BN recalibration run on the same device.
        amp: autocast of forward passes and losses: ``off`` (fp32), ``bf16``, or ``fp16``
            (CUDA only, with a gradient scaler that is checkpointed).
        cudnn_benchmark: on CUDA, let cuDNN time its algorithms for each new conv shape
            and keep the fastest (``torch.backends.cudnn.benchmark``, as once-for-all's
            training script sets it); the flag is restored when the run ends. Its choices
            can differ between runs, so a resumed GPU run is exact only up to them.
        checkpoint_every: also write the checkpoint (and the metrics so far) every this many
            optimizer steps, so that a run killed mid-epoch resumes from there, bit for
            bit; ``None``: at epoch ends only.
        lr_schedule: ``cosine`` or ``exp_constant`` (:func:`scheduled_lr`).
        zero_gamma: start every residual block as the identity (γ = 0 in its last BN).
        regularize_largest_only: strategy ``sandwich`` only: dropout only in the largest
            subnet's forward passes, the one trained against labels (label smoothing
            already applies only there; the other subnets learn from its in-place
            distillation targets).
        ema_decay: keep an exponential moving average of the weights (parameters and BN
            buffers), updated after every optimizer step with this decay, warmed up as
            :func:`ema_decay_at` says; it is checkpointed as ``ema``, evaluated by
            ``eval_each_epoch`` and served by ``load_supernet``.
        decay_bn_and_bias: apply weight decay to BN parameters and biases too (off: the
            common practice, and BigNAS's).
        The ``bignas`` recipe (:func:`with_recipe`) turns on the four BigNAS fixes.
        init_checkpoint: start from the weights of this supernet checkpoint (a fresh run
            only), e.g. strategy ``precision`` from a trained fp32 supernet of the same
            structure; layers that only low precisions have (int8 activation ranges,
            binary batch norms) start fresh.
        seed, out_dir, resume, quiet: as named; ``out_dir`` receives ``checkpoint.pt`` and
            ``metrics.jsonl``.
    """

    space: str = "mbv3_small28"
    width_mult: float | None = None
    dataset: str = "digits"
    data_dir: str | None = None
    strategy: str = "sandwich"
    n_random: int = 2
    ps_later_lr_scale: float = 0.3
    ps_phases: tuple[Phase, ...] | None = None
    precision_phases: tuple[PrecisionPhase, ...] | None = None
    binary_share: float | None = None
    precision_distill: bool = True
    precision_fp32_smallest: bool = False
    precision_binary_largest: bool = False
    binary_ablation: tuple[str, ...] = ()
    binary_weights: str = "shared"
    arch: str | None = None
    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 3e-5
    depthwise_lr_scale: float = 1.0
    optimizer: str = "sgd"
    warmup_epochs: int = 0
    label_smoothing: float = 0.1
    kd_ratio: float = 1.0
    grad_clip: float | None = 5.0
    resolutions: tuple[int, ...] | None = None
    data_resolution: int | None = None
    steps_per_epoch: int | None = None
    stop_after_epochs: int | None = None
    augment: bool = True
    random_erasing: float = 0.0
    eval_each_epoch: bool = False
    channels_last: bool = True
    device: str = "auto"
    amp: str = "off"
    cudnn_benchmark: bool = True
    checkpoint_every: int | None = None
    num_workers: int | None = None
    lr_schedule: str = "cosine"
    zero_gamma: bool = False
    regularize_largest_only: bool = False
    ema_decay: float | None = None
    decay_bn_and_bias: bool = False
    init_checkpoint: str | None = None
    seed: int = 0
    out_dir: str = "ofa-workspace/supernet"
    resume: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise TrainingError(message)

        get_space(self.space)
        check(self.strategy in STRATEGIES,
              f"strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs!r}")
        check(0 <= self.seed < 2**32, f"seed must be in [0, 2**32), got {self.seed!r}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size!r}")
        check_optimizer_options(check, lr=self.lr, momentum=self.momentum,
                                weight_decay=self.weight_decay,
                                label_smoothing=self.label_smoothing, kd_ratio=self.kd_ratio,
                                grad_clip=self.grad_clip)
        check(isinstance(self.depthwise_lr_scale, (int, float))
              and 0 < self.depthwise_lr_scale <= 1,
              f"depthwise_lr_scale must be in (0, 1], got {self.depthwise_lr_scale!r}")
        check(self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs!r}")
        check(self.steps_per_epoch is None or self.steps_per_epoch >= 1,
              f"steps_per_epoch must be >= 1, got {self.steps_per_epoch!r}")
        check(self.stop_after_epochs is None or self.stop_after_epochs >= 1,
              f"stop_after_epochs must be >= 1, got {self.stop_after_epochs!r}")
        check(isinstance(self.device, str) and _DEVICE_RE.fullmatch(self.device) is not None,
              f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        check(self.amp in AMP_MODES,
              f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        check(self.checkpoint_every is None or self.checkpoint_every >= 1,
              f"checkpoint_every must be >= 1, got {self.checkpoint_every!r}")
        check(self.num_workers is None or self.num_workers >= 0,
              f"num_workers must be >= 0, got {self.num_workers!r}")
        check(not is_streamed_dataset(self.dataset) or self.augment,
              f"dataset {self.dataset!r} is streamed with its training augmentation; "
              "augment must stay on")
        check(isinstance(self.random_erasing, (int, float))
              and not isinstance(self.random_erasing, bool) and 0 <= self.random_erasing <= 1,
              f"random_erasing must be in [0, 1], got {self.random_erasing!r}")
        check(self.random_erasing == 0 or self.augment,
              "random_erasing is part of the training augmentation: it needs augment on")
        check(self.random_erasing == 0 or not is_streamed_dataset(self.dataset),
              f"random_erasing applies to in-memory datasets; {self.dataset!r} is streamed "
              "with its own augmentation")
        check(self.optimizer in OPTIMIZERS, f"optimizer must be one of "
              f"{', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        check(self.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of "
              f"{', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        check(not self.regularize_largest_only or self.strategy == "sandwich",
              "regularize_largest_only needs strategy 'sandwich' (the only one with a "
              f"largest subnet in every step), got {self.strategy!r}")
        check(self.ema_decay is None or 0 < self.ema_decay < 1,
              f"ema_decay must be in (0, 1) or None, got {self.ema_decay!r}")
        check((self.strategy == "standalone") == (self.arch is not None),
              "strategy 'standalone' needs an arch, and only it takes one "
              f"(got strategy {self.strategy!r}, arch {self.arch!r})")
        if self.resolutions is not None:
            object.__setattr__(self, "resolutions", tuple(self.resolutions))
        if self.ps_phases is not None:
            check(self.strategy == "ps" and len(self.ps_phases) > 0,
                  "ps_phases needs strategy='ps' and at least one phase")
            object.__setattr__(self, "ps_phases", tuple(self.ps_phases))
        check(self.strategy == "precision" or (self.binary_share is None
                                                and self.precision_distill
                                                and not self.precision_fp32_smallest
                                                and not self.precision_binary_largest),
              "binary_share, precision_distill, precision_fp32_smallest and "
              "precision_binary_largest apply to strategy 'precision' only, got strategy "
              f"{self.strategy!r}")
        check(not self.precision_binary_largest or self.n_random >= 1,
              "precision_binary_largest takes a random subnet's place: it needs "
              f"n_random >= 1, got {self.n_random}")
        check(not self.precision_binary_largest
              or "binary" in get_space(self.space).precisions,
              f"precision_binary_largest needs a space with binary stages; {self.space!r} "
              "has none")
        try:
            ablation = check_ablation(self.binary_ablation)
        except ValueError as exc:
            raise TrainingError(f"binary_ablation: {exc}") from None
        object.__setattr__(self, "binary_ablation", tuple(sorted(ablation)))
        check(not ablation or "binary" in get_space(self.space).precisions,
              f"binary_ablation needs a space with binary stages; {self.space!r} has none")
        check(self.binary_weights in BINARY_WEIGHTS, f"binary_weights must be one of "
              f"{', '.join(BINARY_WEIGHTS)}, got {self.binary_weights!r}")
        check(self.binary_weights == "shared" or "binary" in get_space(self.space).precisions,
              f"binary_weights 'own' needs a space with binary stages; {self.space!r} has none")
        check(self.binary_share is None or 0 <= self.binary_share <= 1,
              f"binary_share must be in [0, 1] or None, got {self.binary_share!r}")
        if self.precision_phases is not None:
            check(self.strategy == "precision" and len(self.precision_phases) > 0,
                  "precision_phases needs strategy='precision' and at least one phase")
            object.__setattr__(self, "precision_phases", tuple(self.precision_phases))

    def to_dict(self) -> dict[str, Any]:
        """Plain data (tuples as lists)."""
        data = dataclasses.asdict(self)
        if data["resolutions"] is not None:
            data["resolutions"] = list(data["resolutions"])
        data["binary_ablation"] = list(data["binary_ablation"])
        for key in ("ps_phases", "precision_phases"):
            if data[key] is not None:
                data[key] = [
                    {k: list(v) if isinstance(v, tuple) else v for k, v in phase.items()}
                    for phase in data[key]
                ]
        return data


@dataclass
class TrainResult:
    """What :func:`run_training` leaves: the checkpoint and the trained supernet (its
    weight EMA when ``ema_decay`` is set)."""

    checkpoint: Path
    supernet: Supernet
    epoch: int
    step: int


def cosine_lr(step: int, segments: Sequence[Segment], steps_per_epoch: int,
              warmup_epochs: int) -> float:
    """The learning rate of optimizer step ``step`` (0-based): within each segment a linear
    warm-up over ``warmup_epochs`` (at most the segment) then a cosine decay to 0."""
    return scheduled_lr(step, segments, steps_per_epoch, warmup_epochs, "cosine")


def _cosine_decay(done: int, span: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * done / max(1, span)))


def _exp_constant_decay(done: int, span: int) -> float:
    return float(EXP_FLOOR ** min(1.0, done / max(1.0, EXP_DECAY_SPAN * span)))


_DECAYS: dict[str, Callable[[int, int], float]] = {
    "cosine": _cosine_decay, "exp_constant": _exp_constant_decay}


def scheduled_lr(step: int, segments: Sequence[Segment], steps_per_epoch: int,
                 warmup_epochs: int, schedule: str = "cosine") -> float:
    """The learning rate of optimizer step ``step`` (0-based) under ``schedule``: within each
    segment a linear warm-up over ``warmup_epochs`` (at most the segment), then ``cosine``
    decays to 0 (:func:`cosine_lr`), and ``exp_constant`` is BigNAS's decay (Yu et al.,
    ECCV 2020) scaled to the run: exponential from the peak to ``EXP_FLOOR`` × peak over
    the first ``EXP_DECAY_SPAN`` of the post-warm-up steps, held constant to the segment's
    end."""
    decay = _DECAYS[schedule]
    for seg in segments:
        n = seg.epochs * steps_per_epoch
        if step < n:
            warm = min(warmup_epochs * steps_per_epoch, n)
            if step < warm:
                return seg.lr * (step + 1) / warm
            return seg.lr * decay(step - warm, n - warm)
        step -= n
    return 0.0


def with_recipe(config: TrainConfig, recipe: str) -> TrainConfig:
    """``config`` with a training recipe's options: ``ofa`` leaves them as they are (cosine,
    no zero-γ, dropout everywhere, no EMA); ``bignas`` sets ``lr_schedule='exp_constant'``,
    ``zero_gamma``, ``regularize_largest_only`` and ``ema_decay`` (``BIGNAS_EMA_DECAY``
    unless one is set). BN parameters and biases are never decayed in either."""
    if recipe not in RECIPES:
        raise TrainingError(f"recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    if recipe == "ofa":
        return config
    if config.strategy != "sandwich":
        raise TrainingError(f"recipe 'bignas' needs strategy 'sandwich' (BigNAS trains with "
                            f"the sandwich rule), got {config.strategy!r}")
    return dataclasses.replace(
        config, lr_schedule="exp_constant", zero_gamma=True, regularize_largest_only=True,
        ema_decay=BIGNAS_EMA_DECAY if config.ema_decay is None else config.ema_decay)


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay of the weight EMA's ``updates``-th update (0-based):
    ``min(decay, (1 + updates) / (10 + updates))``, TensorFlow's
    ``ExponentialMovingAverage`` with ``num_updates`` (as EfficientNet's TPU training code
    uses it). Without the warm-up, a run of a few hundred steps at decay 0.999 would
    serve weights still two-thirds at their random initialisation."""
    return min(decay, (1 + updates) / (10 + updates))


def _ema_avg_fn(decay: float) -> Callable[..., None]:
    """The ``multi_avg_fn`` of ``AveragedModel`` for a warmed-up EMA (see
    :func:`ema_decay_at`); ``n_averaged`` counts the updates so far (the first one, a
    copy, is done by ``AveragedModel`` itself)."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor],
               n_averaged: torch.Tensor) -> None:
        weight = 1.0 - ema_decay_at(decay, int(n_averaged))
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, weight)
        else:  # integer buffers (BN's num_batches_tracked): keep the latest
            for mine, theirs in zip(averaged, current, strict=True):
                mine.copy_(theirs)

    return update


def make_optimizer(net: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """``config.optimizer`` over ``net``'s parameters (:func:`param_groups`)."""
    groups = param_groups(net, config.weight_decay, config.decay_bn_and_bias,
                          config.depthwise_lr_scale)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, betas=(config.momentum, 0.999))
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                           nesterov=config.nesterov)


def param_groups(net: nn.Module, weight_decay: float, decay_bn_and_bias: bool = False,
                 depthwise_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """Two optimizer groups: weights with decay; BN parameters and biases (1-D) without (with
    ``decay_bn_and_bias``, all parameters decay). With a ``depthwise_lr_scale`` other than 1,
    a third group holds the depthwise convs' parameters (their weights and elastic kernel
    transforms, with decay), tagged ``lr_scale``: the training loop runs it at the
    scheduled learning rate times that scale."""
    depthwise = ({id(p) for m in net.modules()
                  if isinstance(m, nn.Conv2d) and 1 < m.groups == m.in_channels
                  for p in m.parameters()} if depthwise_lr_scale != 1 else set())
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    scaled: list[nn.Parameter] = []
    for _, param in net.named_parameters():
        if id(param) in depthwise:
            scaled.append(param)
        else:
            (no_decay if param.ndim <= 1 and not decay_bn_and_bias else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if depthwise:
        groups.append({"params": scaled, "weight_decay": weight_decay,
                       "lr_scale": depthwise_lr_scale})
    return groups


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-Σ p log softmax(logits)``."""
    return -(target_probs * F.log_softmax(logits, dim=1)).sum(1).mean()


def _dist_env() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


def _strategy_for(config: TrainConfig) -> TrainingStrategy:
    """The run's arch sampler; options it cannot honour (e.g. strategy ``precision`` on a
    space without low precisions, resolutions outside the space) raise
    :class:`TrainingError`."""
    try:
        return _make_strategy(config)
    except OfaSearchError:
        raise
    except ValueError as exc:  # the strategies' own validation of their options
        raise TrainingError(f"strategy {config.strategy!r}: {exc}") from None


def _make_strategy(config: TrainConfig) -> TrainingStrategy:
    options: dict[str, Any] = {}
    if config.strategy in ("sandwich", "precision"):
        options["n_random"] = config.n_random
    if config.strategy == "precision":
        options["phases"] = config.precision_phases or default_precision_phases(
            config.space, epochs=config.epochs, lr=config.lr)
        options["binary_share"] = config.binary_share
        options["distill"] = config.precision_distill
        options["fp32_smallest"] = config.precision_fp32_smallest
        options["binary_largest"] = config.precision_binary_largest
    if config.strategy == "standalone":
        assert config.arch is not None  # checked by TrainConfig
        options["arch"] = parse_arch(config.arch, config.space)
    if config.strategy == "ps":
        options["phases"] = config.ps_phases or default_phases(
            config.space, epochs=config.epochs, lr=config.lr,
            later_lr_scale=config.ps_later_lr_scale)
    return make_strategy(config.strategy, config.space, config.width_mult, seed=config.seed,
                         resolutions=config.resolutions, **options)


def _load_data(config: TrainConfig, strategy: TrainingStrategy
               ) -> DatasetSplits | ImageStreamSplits:
    resolution = config.data_resolution or max(strategy.choices.resolutions)
    if is_streamed_dataset(config.dataset):
        space = strategy.space
        if space.in_channels != 3:
            raise TrainingError(f"dataset {config.dataset!r} is RGB; space {space.name!r} "
                                f"takes {space.in_channels}-channel images")
        stream = open_image_stream(config.data_dir, resolution, name=config.dataset)
        if len(stream.class_names) > space.num_classes:
            raise TrainingError(f"{stream.root} has {len(stream.class_names)} classes; space "
                                f"{space.name!r} classifies {space.num_classes}")
        return stream
    splits = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed,
                          in_channels=strategy.space.in_channels, resolution=resolution)
    if config.random_erasing > 0:
        policy = dataclasses.replace(splits.augmentation, erase=float(config.random_erasing))
        splits = dataclasses.replace(splits, augmentation=policy, train=dataclasses.replace(
            splits.train, augmentation=policy))
    return splits


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The torch device of a :attr:`TrainConfig.device` value (``auto``, ``cpu``, ``cuda``,
    ``cuda:N``) for the process with this ``LOCAL_RANK``; a CUDA device that this
    installation cannot use is a :class:`TrainingError`."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise TrainingError(f"device {name!r} needs a CUDA GPU, and torch "
                            f"{torch.__version__} sees none; use --device cpu")
    index = local_rank if name == "cuda" else int(name.split(":")[1])
    count = torch.cuda.device_count()
    if index >= count:
        raise TrainingError(f"device cuda:{index} does not exist; this machine has {count} "
                            "CUDA device(s)")
    return torch.device("cuda", index)


class Autocast:
    """The autocast of a run (``amp``: ``off``, ``bf16`` or ``fp16``) and, for fp16, its
    gradient scaler."""

    def __init__(self, mode: str, device: torch.device) -> None:
        if mode == "fp16" and device.type != "cuda":
            raise TrainingError("amp 'fp16' needs a CUDA device; use amp 'bf16' on the CPU")
        self.mode, self.device = mode, device
        self.scaler = (torch.amp.GradScaler(device.type) if mode == "fp16" else None)

    def autocast(self) -> AbstractContextManager[Any]:
        if self.mode == "off":
            return nullcontext()
        dtype = torch.bfloat16 if self.mode == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, optimizer: torch.optim.Optimizer, params: Iterator[nn.Parameter],
             grad_clip: float | None) -> None:
        """Clip (after unscaling) and take the optimizer step."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        if grad_clip is not None:
            nn.utils.clip_grad_norm_(params, grad_clip)
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)
            self.scaler.update()


class SupernetStep:
    """One optimizer step of supernet training: the forward and backward passes of a step's
    subnets (gradients accumulate), the losses of its tasks (labels, in-place distillation,
    a frozen teacher's soft labels), clipping and the update.

    ``model`` is the supernet or its DDP wrapper; ``teacher`` is set by the loop when a
    strategy freezes one. Used by :func:`run_training` and by the step benchmark
    (``scripts/bench_train_step.py``).
    """

    def __init__(self, model: nn.Module, config: TrainConfig, largest: Arch,
                 amp: Autocast) -> None:
        self.model, self.config, self.largest, self.amp = model, config, largest, amp
        self.teacher: Supernet | None = None

    def teacher_probs(self, x: torch.Tensor, resolution: int) -> torch.Tensor:
        assert self.teacher is not None
        with torch.no_grad():
            return F.softmax(self.teacher(x, self.largest.replace(resolution=resolution)), 1)

    def run(self, tasks: Sequence[SubnetTask], x: torch.Tensor, y: torch.Tensor) -> float:
        smoothing = self.config.label_smoothing
        total = torch.zeros((), device=x.device)
        inplace_target: torch.Tensor | None = None
        teacher_cache: dict[int, torch.Tensor] = {}
        net = self.model.module if isinstance(
            self.model, nn.parallel.DistributedDataParallel) else self.model
        largest_only = self.config.regularize_largest_only and isinstance(net, Supernet)
        for i, task in enumerate(tasks):
            if largest_only:
                assert isinstance(net, Supernet)
                net.set_dropout(task.loss == "labels")  # the sandwich's largest subnet
            with self.amp.autocast():
                logits = self.model(x, task.arch)
                if task.loss == "labels":
                    loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
                    if i == 0:
                        inplace_target = F.softmax(logits.detach().float(), 1)
                elif task.loss == "inplace":
                    if inplace_target is None:
                        raise TrainingError("an 'inplace' task needs a 'labels' task first")
                    loss = soft_cross_entropy(logits, inplace_target)
                else:
                    loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
                    if self.teacher is not None and self.config.kd_ratio > 0:
                        r = task.arch.resolution
                        if r not in teacher_cache:
                            teacher_cache[r] = self.teacher_probs(x, r)
                        loss = loss + self.config.kd_ratio * soft_cross_entropy(
                            logits, teacher_cache[r])
            self.amp.backward(loss)
            total += loss.detach().float()
        if largest_only:
            assert isinstance(net, Supernet)
            net.set_dropout(True)
        return float(total) / len(tasks)  # one device sync per step

    def __call__(self, tasks: Sequence[SubnetTask], x: torch.Tensor, y: torch.Tensor,
                 optimizer: torch.optim.Optimizer, params: Iterator[nn.Parameter]) -> float:
        """Zero the gradients, run ``tasks`` on the batch, clip and step; the mean loss."""
        optimizer.zero_grad(set_to_none=True)
        loss = self.run(tasks, x, y)
        self.amp.step(optimizer, params, self.config.grad_clip)
        return loss


def train(config: TrainConfig) -> Path:
    """Train a supernet as ``config`` says; returns the path of the final checkpoint.
    See :func:`run_training`."""
    return run_training(config).checkpoint


def run_training(config: TrainConfig) -> TrainResult:
    """Train (or, with ``config.resume``, continue) a supernet.

    Writes ``out_dir/checkpoint.pt`` atomically at the end of every epoch, every
    ``checkpoint_every`` steps when set, and at the end, and appends one JSON line per step
    and per epoch to ``out_dir/metrics.jsonl`` whenever it writes the checkpoint. A resumed
    run continues bit-for-bit as the uninterrupted run would (same weights, on the same
    machine, device and thread count), from an epoch end or from the middle of an epoch.
    Under ``torchrun`` (``WORLD_SIZE>1``) the model is wrapped in
    ``DistributedDataParallel`` (gloo on the CPU, NCCL on CUDA); every rank samples the
    same archs, reads its own shard of each batch order, and rank 0 writes the files.

    On start (rank 0), what a run killed mid-epoch left is put right: metrics rows of
    steps beyond the checkpoint's (appended before a checkpoint that was never written) are
    dropped, and temporary files of killed atomic writes are removed (see
    :mod:`ofa_search.atomic`).

    Raises:
        TrainingError: before any work: an output folder that is a file, lies under one or
            cannot be written; ``resume`` without a checkpoint in it; an ``init_checkpoint``
            that is not a file; a CUDA device this installation cannot use; amp ``fp16``
            on the CPU. Later: a checkpoint exists but ``resume`` is off, or it belongs to
            another space, width, strategy, seed, dataset, batch size, augmentation or
            stand-alone arch.
        FileFormatError: an unreadable checkpoint.
    """
    rank, world = _dist_env()
    _check_run_folder(config)
    device = resolve_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
    amp = Autocast(config.amp, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    own_group = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        own_group = True
    benchmark = torch.backends.cudnn.benchmark
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = config.cudnn_benchmark
    try:
        # module construction draws from the default generators: fork them so
        # that the caller's global RNG state is left as it was
        forked = [device.index] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=forked, device_type=device.type):
            return _run(config, rank, world, device, amp)
    finally:
        torch.backends.cudnn.benchmark = benchmark
        if own_group:
            dist.destroy_process_group()


@dataclass
class _Position:
    """Where a run stands: completed epochs and optimizer steps, steps done in the current
    epoch (0 at an epoch end), the data generator's state at the start of that epoch, and
    the dropout generator(s)."""

    epoch: int = 0
    step: int = 0
    epoch_step: int = 0
    data_epoch_start: torch.Tensor | None = None
    dropout: torch.Tensor | None = None
    dropout_cuda: torch.Tensor | None = None


def _run(config: TrainConfig, rank: int, world: int, device: torch.device,
         amp: Autocast) -> TrainResult:
    strategy = _strategy_for(config)
    data = _load_data(config, strategy)
    net = Supernet(config.space, strategy.width_mult,
                   generator=torch.Generator().manual_seed(config.seed))
    if config.zero_gamma:
        net.zero_residual_gammas()
    net.set_binary_ablation(config.binary_ablation)
    if config.binary_weights == "own":
        net.set_binary_weights(True)
    net.to(device)
    optimizer = make_optimizer(net, config)
    data_gen = torch.Generator().manual_seed(config.seed + 1)
    pos = _Position(dropout=torch.Generator().manual_seed(config.seed + 2).get_state())
    if device.type == "cuda":
        pos.dropout_cuda = torch.Generator(device).manual_seed(config.seed + 2).get_state()
    out = Path(config.out_dir)
    ckpt_path, metrics_path = out / CHECKPOINT_NAME, out / METRICS_NAME
    teacher_state: dict[str, Any] | None = None
    ema_state: dict[str, Any] | None = None
    if ckpt_path.exists():
        if not config.resume:
            raise TrainingError(f"{ckpt_path} exists; resume it (--resume) or choose "
                                "another output folder")
        pos, teacher_state, ema_state = _restore(ckpt_path, config, strategy, net,
                                                 optimizer, data_gen, amp, pos)
    elif config.init_checkpoint is not None:
        load_init_weights(net, config.init_checkpoint)
    ema: AveragedModel | None = None
    if config.ema_decay is not None:
        ema = AveragedModel(net, multi_avg_fn=_ema_avg_fn(config.ema_decay),
                            use_buffers=True)
        if ema_state is not None:
            ema.load_state_dict(ema_state)
    if rank == 0:
        # what a run killed mid-epoch or mid-write left: temporary files of dead writers,
        # and metrics rows of steps that no checkpoint holds (they are trained again)
        remove_stale_temps(out)
        _drop_metrics_after(metrics_path, pos.step)

    segments = strategy.segments(config.epochs, config.lr)
    total_epochs = sum(s.epochs for s in segments)
    shard = len(data.train) // world
    steps_per_epoch = max(1, shard // config.batch_size)
    if config.steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, config.steps_per_epoch)
    if config.channels_last:
        net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    model: nn.Module = net
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True)
    runner = SupernetStep(model, config, strategy.largest, amp)
    if teacher_state is not None:
        runner.teacher = _frozen_copy(net)
        runner.teacher.load_state_dict(teacher_state)
    segment_starts = set(itertools.accumulate(s.epochs for s in segments))

    def state() -> dict[str, Any]:
        mid_epoch = pos.epoch_step > 0
        return {
            "space": config.space, "width_mult": strategy.width_mult,
            "strategy": strategy.state_dict(), "epoch": pos.epoch, "step": pos.step,
            "epoch_step": pos.epoch_step,
            "finished": pos.epoch >= total_epochs, "model": net.state_dict(),
            "teacher": None if runner.teacher is None else runner.teacher.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": {"step": pos.step},
            "scaler": None if amp.scaler is None else amp.scaler.state_dict(),
            "ema": None if ema is None else ema.state_dict(),
            "rng": {"data": pos.data_epoch_start if mid_epoch else data_gen.get_state(),
                    "dropout": pos.dropout, "dropout_cuda": pos.dropout_cuda},
            "config": config.to_dict(), "dataset": data.describe(),
        }

    stop = total_epochs if config.stop_after_epochs is None else min(
        total_epochs, config.stop_after_epochs)
    show = not config.quiet and rank == 0
    pending: list[dict[str, Any]] = []  # metrics rows not yet written

    def step_done(row: dict[str, Any]) -> None:
        if ema is not None:
            ema.update_parameters(net)
        pos.step, pos.epoch_step = row["step"], pos.epoch_step + 1
        pending.append(row)
        every = config.checkpoint_every
        if every is not None and pos.step % every == 0 and pos.epoch_step < steps_per_epoch:
            pos.dropout, pos.dropout_cuda = dropout_state()
            if rank == 0:
                _append_jsonl(metrics_path, pending)
                save_checkpoint(ckpt_path, state())
            pending.clear()

    # dropout draws from a generator of its own, which nothing else in the process draws
    # from (another thread using PyTorch's default generator would change the run)
    dropout_gen = torch.Generator(device)
    start = pos.dropout_cuda if device.type == "cuda" else pos.dropout
    assert start is not None
    dropout_gen.set_state(start)
    head_dropout = net.head.dropout
    assert isinstance(head_dropout, SeededDropout)
    head_dropout.generator = dropout_gen

    def dropout_state() -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if device.type == "cuda":
            return pos.dropout, dropout_gen.get_state()
        return dropout_gen.get_state(), pos.dropout_cuda
    while pos.epoch < stop:
        # resumed mid-epoch, _restore left data_gen at this epoch's start: same batch order
        resumed_mid_epoch = pos.epoch_step > 0
        if not resumed_mid_epoch:
            pos.data_epoch_start = data_gen.get_state()
            for event in strategy.begin_epoch(pos.epoch):
                if event == "freeze_teacher":
                    runner.teacher = _frozen_copy(net)
                elif event == "sort_channels":
                    net.sort_channels()
            if pos.epoch in segment_starts:
                optimizer.state.clear()  # momenta do not carry across phases (or sorting)
        net.set_binary_activations(strategy.binary_activations)
        net.train()
        started = time.perf_counter()
        remaining: Iterator[tuple[torch.Tensor, torch.Tensor]]
        if isinstance(data, ImageStreamSplits):
            # the stream skips what the checkpoint holds without decoding it
            loader = train_stream_loader(
                data.train, batch_size=config.batch_size, seed=config.seed,
                epoch=pos.epoch, rank=rank, world_size=world, start_batch=pos.epoch_step,
                num_workers=config.num_workers, pin_memory=device.type == "cuda")
            remaining = itertools.islice(loader, steps_per_epoch - pos.epoch_step)
        else:
            batches = iterate_batches(data.train, config.batch_size, shuffle=True,
                                      generator=data_gen, augment=config.augment,
                                      drop_last=True, rank=rank, world_size=world)
            # skip what the checkpoint holds (augmentation draws are replayed on the way)
            remaining = itertools.islice(batches, pos.epoch_step, steps_per_epoch)
        bar = _progress(steps_per_epoch, f"epoch {pos.epoch + 1}/{total_epochs}", show,
                        initial=pos.epoch_step)
        lines = _train_epoch(remaining, pos.step, runner, strategy, optimizer, net, config,
                             segments, steps_per_epoch, world, pos.epoch, bar, device,
                             step_done)
        pos.epoch += 1
        pos.epoch_step = 0
        if world > 1:
            _average_buffers(net, world)
        pos.dropout, pos.dropout_cuda = dropout_state()
        summary: dict[str, Any] = {
            "event": "epoch_end", "epoch": pos.epoch, "step": pos.step,
            "loss": sum(r["loss"] for r in lines) / max(1, len(lines)),
            "seconds": time.perf_counter() - started,
        }
        if resumed_mid_epoch:
            summary["resumed_at_step"] = pos.step - len(lines)
        if config.eval_each_epoch and rank == 0:
            served = net if ema is None else _ema_supernet(ema)
            for label, arch in (("largest", strategy.largest),
                                ("smallest", strategy.smallest)):
                summary[f"val_acc_{label}"] = (
                    evaluate_arch_stream(served, arch, data, seed=config.seed,
                                         num_workers=config.num_workers).accuracy
                    if isinstance(data, ImageStreamSplits)
                    else evaluate_arch(served, arch, data, seed=config.seed))
            net.train()
        if rank == 0:
            _append_jsonl(metrics_path, [*pending, summary])
            save_checkpoint(ckpt_path, state())
        pending.clear()
        if world > 1:
            dist.barrier()
    if rank == 0 and pos.epoch >= total_epochs and not ckpt_path.exists():
        save_checkpoint(ckpt_path, state())
    final = net if ema is None else _ema_supernet(ema)
    return TrainResult(ckpt_path, final.eval(), pos.epoch, pos.step)


def _ema_supernet(ema: AveragedModel) -> Supernet:
    module = ema.module
    assert isinstance(module, Supernet)
    return module


def _check_run_folder(config: TrainConfig) -> None:
    """Refuse, before any work, an output folder that cannot be written, ``resume`` without
    a checkpoint to resume, and an ``init_checkpoint`` that is not a file."""
    out = Path(config.out_dir)
    try:
        check_writable_dir(out, "output folder")
    except OutputPathError as exc:
        raise TrainingError(str(exc)) from None
    if config.resume and not (out / CHECKPOINT_NAME).is_file():
        what = ("does not exist" if not out.is_dir() else "is empty"
                if not any(out.iterdir()) else f"has no {CHECKPOINT_NAME}")
        raise TrainingError(f"cannot resume: output folder {out} {what}; start a new run "
                            "there without --resume")
    if config.init_checkpoint is not None and not config.resume \
            and not Path(config.init_checkpoint).is_file():
        raise TrainingError(f"init checkpoint {config.init_checkpoint} is not a file")


def _drop_metrics_after(path: Path, step: int) -> None:
    """Keep only the metrics rows of the first ``step`` optimizer steps (and their epoch
    ends): a run killed between appending an epoch's rows and writing its checkpoint trains
    that epoch again on resume, and must not list it twice; a torn last line goes too.
    The file is rewritten atomically, and only when something is dropped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line)
    if len(kept) == len(lines):
        return
    if kept:
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))
    else:
        path.unlink(missing_ok=True)


def _train_epoch(batches: Iterator[tuple[torch.Tensor, torch.Tensor]], step: int,
                 runner: SupernetStep, strategy: TrainingStrategy,
                 optimizer: torch.optim.Optimizer, net: Supernet, config: TrainConfig,
                 segments: Sequence[Segment], steps_per_epoch: int, world: int, epoch: int,
                 bar: Any, device: torch.device,
                 step_done: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    """Train on ``batches`` starting at optimizer step ``step``; one metrics row per step,
    each also passed to ``step_done`` as soon as its step is taken."""
    lines: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        lr = scheduled_lr(step, segments, steps_per_epoch, config.warmup_epochs,
                          config.lr_schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        loss = runner(strategy.step(), x, y, optimizer, net.parameters())
        step += 1
        now = time.perf_counter()  # img/s includes batch preparation
        img_s = x.shape[0] * world / max(now - t0, 1e-9)
        t0 = now
        row = {"epoch": epoch, "step": step, "lr": lr, "loss": loss, "img_s": img_s}
        lines.append(row)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{img_s:.0f}")
        step_done(row)
    if bar is not None:
        bar.close()
    return lines


def _restore(path: Path, config: TrainConfig, strategy: TrainingStrategy, net: Supernet,
             optimizer: torch.optim.Optimizer, data_gen: torch.Generator, amp: Autocast,
             pos: _Position
             ) -> tuple[_Position, dict[str, Any] | None, dict[str, Any] | None]:
    """Load the checkpoint at ``path`` into the run's objects; returns the run's position
    and the teacher's and the weight EMA's states (or None)."""
    ckpt = load_checkpoint(path)
    expected = (config.space, strategy.width_mult, strategy.name)
    found = (ckpt["space"], ckpt["width_mult"], ckpt["strategy"].get("name"))
    if found != expected:
        raise TrainingError(f"{path} is a run of space/width/strategy {found}, not {expected}")
    # settings that change the model's or the optimizer's state, or the training images
    # (a checkpoint older than a setting ran with its default)
    saved, wanted = ckpt.get("config") or {}, config.to_dict()
    defaults: dict[str, Any] = {"binary_ablation": [], "binary_weights": "shared",
                                "depthwise_lr_scale": 1.0, "random_erasing": 0.0}
    for key, default in defaults.items():
        ran = saved.get(key) or default
        if key == "binary_ablation":
            ran = sorted(ran)
        if ran != wanted[key]:
            raise TrainingError(f"{path} is a run with {key} {ran!r}, not {wanted[key]!r}")
    # settings that decide what the run trains on: the seed also splits the data, the batch
    # size places a mid-epoch position, a stand-alone run's arch is its whole model, and the
    # sampled resolutions set the subnets trained and the batches' size
    for key in ("seed", "dataset", "batch_size", "augment", "arch", "resolutions"):
        if key in saved and saved[key] != wanted[key]:
            raise TrainingError(f"{path} is a run with {key} {saved[key]!r}, "
                                f"not {wanted[key]!r}")
    step = int(ckpt["step"])
    if int(ckpt["scheduler"]["step"]) != step:
        raise TrainingError(f"{path}: scheduler and optimizer steps disagree")
    net.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    strategy.load_state_dict(ckpt["strategy"])
    scaler_state = ckpt.get("scaler")
    if amp.scaler is not None and scaler_state is not None:
        amp.scaler.load_state_dict(scaler_state)
    rng = ckpt["rng"]
    epoch_step = int(ckpt.get("epoch_step", 0))
    data_gen.set_state(rng["data"])
    restored = _Position(epoch=int(ckpt["epoch"]), step=step, epoch_step=epoch_step,
                         data_epoch_start=rng["data"] if epoch_step else None,
                         dropout=rng["dropout"],
                         dropout_cuda=pos.dropout_cuda if rng.get("dropout_cuda") is None
                         else rng["dropout_cuda"])
    return restored, ckpt.get("teacher"), ckpt.get("ema")


@torch.no_grad()
def _average_buffers(net: nn.Module, world: int) -> None:
    """Average the BN running statistics over ranks (each rank saw its own shard), so that
    every rank holds the same model after each epoch."""
    for buffer in net.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer.div_(world)


def _frozen_copy(net: Supernet) -> Supernet:
    """Progressive shrinking's frozen teacher: a copy of ``net`` whose batch norms normalise
    with each batch's own statistics, as once-for-all's teacher does (it runs in train mode
    under ``no_grad``). The running statistics were accumulated over batches of every
    resolution, and in eval mode the teacher mispredicts at the resolutions least like
    the last batches' (measured on Fashion-MNIST after three epochs: 32 % against 86 % at
    16 px). Those statistics stay as they are (no tracking, momentum 0 for the elastic
    batch norms, which pass them on regardless); the classifier's dropout is off.
    """
    teacher = copy.deepcopy(net).train()
    teacher.set_dropout(False)
    for module in teacher.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.track_running_stats = False
            module.momentum = 0.0
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher


def _progress(total: int, desc: str, show: bool, initial: int = 0) -> Any:
    if not show:
        return None
    from tqdm.auto import tqdm  # deferred: tqdm.auto only when progress is shown

    return tqdm(total=total, desc=desc, unit="step", leave=True, dynamic_ncols=True,
                initial=initial)


def _append_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
