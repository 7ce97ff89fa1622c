"""Architecture samplers for supernet training: which subnets one step trains, and how.

A strategy owns a seeded ``numpy.random.Generator``; :meth:`TrainingStrategy.state_dict`
captures it (as plain JSON text) together with any other progress, so a resumed run
samples exactly the archs that an uninterrupted run would. Every DDP rank builds its
strategy from the same seed, so all ranks train the same archs in each step.

Strategies:

- :class:`SandwichStrategy` — the sandwich rule with in-place distillation (BigNAS /
  AutoSlim): largest (labels), smallest and ``n_random`` random archs (distilled from the
  largest's detached soft output).
- :class:`SinglePathStrategy` — SPOS: one uniformly random arch per step, labels only.
- :class:`ProgressiveShrinking` — once-for-all's schedule of phases, each widening the
  sampled choices; distillation from a frozen copy of the full network.
- :class:`PrecisionStrategy` — low-precision fine-tuning of a trained fp32 supernet: the
  sandwich rule over archs with a random precision per stage (int8, then binary weights,
  then binary weights and activations), distilled in place from the fp32 largest.
"""

from __future__ import annotations

import dataclasses
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from ofa_search.arch import Arch
from ofa_search.space import SearchSpace, get_space

LossKind = Literal["labels", "inplace", "teacher"]
"""How a subnet of a step learns: ``labels`` — cross-entropy with label smoothing;
``inplace`` — soft cross-entropy against the detached output of the step's first subnet
(which must be a ``labels`` task); ``teacher`` — cross-entropy plus ``kd_ratio`` × soft
cross-entropy against a frozen teacher network."""


@dataclass(frozen=True)
class SubnetTask:
    """One subnet to train in a step and the loss it learns from."""

    arch: Arch
    loss: LossKind


@dataclass(frozen=True)
class Choices:
    """The choice sets that a sampler draws from (each a subset of the space's)."""

    resolutions: tuple[int, ...]
    depths: tuple[int, ...]
    kernels: tuple[int, ...]
    expands: tuple[int, ...]

    @classmethod
    def of_space(cls, space: SearchSpace, resolutions: Sequence[int] | None = None) -> Choices:
        """All choices of ``space`` (resolutions restricted to ``resolutions`` if given)."""
        res = tuple(space.resolutions) if resolutions is None else tuple(sorted(resolutions))
        bad = [r for r in res if r not in space.resolutions]
        if not res or bad:
            raise ValueError(f"resolutions must be a non-empty subset of {space.resolutions}, "
                             f"got {resolutions=}")
        return cls(res, tuple(space.depths), tuple(space.kernel_sizes),
                   tuple(space.expand_ratios))


def draw_precision(precisions: Sequence[str], rng: np.random.Generator,
                   weights: Sequence[float] | None = None) -> str:
    """One of ``precisions``: uniformly (``weights`` ``None``; nothing drawn for one
    precision) or with the given probabilities (``weights`` summing to 1)."""
    if weights is None:
        if len(precisions) == 1:
            return precisions[0]
        return precisions[int(rng.integers(len(precisions)))]
    return precisions[int(rng.choice(len(precisions), p=weights))]


def sample_arch(space: SearchSpace, width_mult: float, choices: Choices,
                rng: np.random.Generator, precisions: Sequence[str] = ("fp32",),
                weights: Sequence[float] | None = None) -> Arch:
    """A uniformly random arch over ``choices``, each stage at a random one of
    ``precisions`` (uniformly, or with probabilities ``weights``); draws only from ``rng``
    (nothing for one precision without weights)."""

    def pick(values: Sequence[int]) -> int:
        return int(values[int(rng.integers(len(values)))])

    n = space.num_stages
    resolution = pick(choices.resolutions)
    depths = tuple(pick(choices.depths) for _ in range(n))
    kernels = tuple(tuple(pick(choices.kernels) for _ in range(d)) for d in depths)
    expands = tuple(tuple(pick(choices.expands) for _ in range(d)) for d in depths)
    stage_precisions = tuple(draw_precision(precisions, rng, weights) for _ in range(n))
    return Arch(space=space.name, resolution=resolution, width_mult=width_mult, depths=depths,
                kernels=kernels, expands=expands, precisions=stage_precisions)


def extreme_arch(space: SearchSpace, width_mult: float, choices: Choices, *,
                 largest: bool) -> Arch:
    """The largest (or smallest) arch within ``choices``."""
    pick = max if largest else min
    n = space.num_stages
    d = pick(choices.depths)
    return Arch(space=space.name, resolution=pick(choices.resolutions), width_mult=width_mult,
                depths=(d,) * n, kernels=((pick(choices.kernels),) * d,) * n,
                expands=((pick(choices.expands),) * d,) * n)


@dataclass(frozen=True)
class Segment:
    """A stretch of training with its own learning-rate schedule (warm-up + cosine)."""

    epochs: int
    lr: float


class TrainingStrategy(ABC):
    """Yields the subnets of each training step.

    Contract: :meth:`step` is a function of the strategy's state only (its generator and
    the epoch last passed to :meth:`begin_epoch`); ``state_dict`` → ``load_state_dict`` on
    a freshly built strategy with the same arguments restores that state exactly. The
    first task of a step is always a ``labels`` task when any task is ``inplace``.
    """

    name: ClassVar[str]

    def __init__(self, space: str | SearchSpace, width_mult: float | None = None, *,
                 seed: int = 0, resolutions: Sequence[int] | None = None) -> None:
        self.space = get_space(space)
        self.width_mult = self.space.width_mults[-1] if width_mult is None else float(width_mult)
        if self.width_mult not in self.space.width_mults:
            raise ValueError(f"width_mult must be one of {self.space.width_mults}, "
                             f"got {width_mult=}")
        self.choices = Choices.of_space(self.space, resolutions)
        self.rng = np.random.default_rng(seed)
        self.epoch = 0

    @abstractmethod
    def step(self) -> list[SubnetTask]:
        """The subnets of the next step, in training order."""

    def segments(self, epochs: int, lr: float) -> list[Segment]:
        """The learning-rate segments of a run of ``epochs`` epochs at peak ``lr``."""
        return [Segment(epochs, lr)]

    def begin_epoch(self, epoch: int) -> list[str]:
        """Enter epoch ``epoch`` (0-based); returns events for the training loop
        (``"sort_channels"``, ``"freeze_teacher"``) to act on at this epoch's start."""
        self.epoch = epoch
        return []

    @property
    def binary_activations(self) -> bool:
        """Whether ``binary`` stages binarize activations in the current epoch (off only in
        the first stage of two-stage binary training)."""
        return True

    @property
    def largest(self) -> Arch:
        return extreme_arch(self.space, self.width_mult, self.choices, largest=True)

    @property
    def smallest(self) -> Arch:
        return extreme_arch(self.space, self.width_mult, self.choices, largest=False)

    def state_dict(self) -> dict[str, Any]:
        """Plain types only (loadable with ``torch.load(weights_only=True)``)."""
        return {"name": self.name, "epoch": self.epoch,
                "rng": json.dumps(self.rng.bit_generator.state)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"state of strategy {state.get('name')!r}, expected {self.name!r}")
        self.epoch = int(state["epoch"])
        self.rng.bit_generator.state = json.loads(state["rng"])


class SandwichStrategy(TrainingStrategy):
    """Largest (labels), smallest and ``n_random`` uniform archs (in-place distillation)."""

    name = "sandwich"

    def __init__(self, space: str | SearchSpace, width_mult: float | None = None, *,
                 n_random: int = 2, seed: int = 0,
                 resolutions: Sequence[int] | None = None) -> None:
        super().__init__(space, width_mult, seed=seed, resolutions=resolutions)
        if n_random < 0:
            raise ValueError(f"n_random must be >= 0, got {n_random=}")
        self.n_random = n_random

    def step(self) -> list[SubnetTask]:
        tasks = [SubnetTask(self.largest, "labels"), SubnetTask(self.smallest, "inplace")]
        tasks += [SubnetTask(sample_arch(self.space, self.width_mult, self.choices, self.rng),
                             "inplace") for _ in range(self.n_random)]
        return tasks


class SinglePathStrategy(TrainingStrategy):
    """SPOS: one uniformly random arch per step, trained on labels."""

    name = "spos"

    def step(self) -> list[SubnetTask]:
        return [SubnetTask(sample_arch(self.space, self.width_mult, self.choices, self.rng),
                           "labels")]


class StandaloneStrategy(TrainingStrategy):
    """One fixed arch, trained on labels at its own resolution: the "from scratch"
    baseline that supernet benchmarks compare inherited weights with. Only that subnet's
    slice of the supernet's weights is ever used, so the trained supernet *is* the
    stand-alone network (kernels smaller than the largest are parametrised through the
    kernel-transformation matrices, as in the supernet)."""

    name = "standalone"

    def __init__(self, space: str | SearchSpace, width_mult: float | None = None, *,
                 arch: Arch, seed: int = 0, resolutions: Sequence[int] | None = None) -> None:
        if resolutions is not None and tuple(resolutions) != (arch.resolution,):
            raise ValueError(f"a stand-alone run trains at the arch's resolution "
                             f"{arch.resolution}, got {resolutions=}")
        super().__init__(space, arch.width_mult if width_mult is None else width_mult,
                         seed=seed, resolutions=(arch.resolution,))
        if arch.space != self.space.name or arch.width_mult != self.width_mult:
            raise ValueError(f"arch {arch.to_string()} is not of space {self.space.name!r} "
                             f"at width {self.width_mult}")
        self.arch = arch

    def step(self) -> list[SubnetTask]:
        return [SubnetTask(self.arch, "labels")]

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "arch": self.arch.to_string()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("arch") != self.arch.to_string():
            raise ValueError(f"state of a stand-alone run of {state.get('arch')!r}, expected "
                             f"{self.arch.to_string()!r}")
        super().load_state_dict(state)


@dataclass(frozen=True)
class Phase:
    """One progressive-shrinking phase: the choices it samples from, subnets per step,
    epochs and peak learning rate. Resolutions are elastic in every phase."""

    name: str
    kernels: tuple[int, ...]
    depths: tuple[int, ...]
    expands: tuple[int, ...]
    subnets_per_step: int
    epochs: int
    lr: float
    sort_channels: bool = False


def default_phases(space: str | SearchSpace, *, epochs: int = 1, lr: float = 0.1,
                   later_lr_scale: float = 0.3,
                   subnets_per_step: Sequence[int] = (1, 1, 2, 2, 4, 4)) -> tuple[Phase, ...]:
    """once-for-all's schedule: full → elastic kernel → depth (top two, then all) → expand
    (top two, then all). Every phase runs ``epochs`` epochs; the first at ``lr``, the others
    at ``lr × later_lr_scale``. Channels are importance-sorted before each expand phase."""
    spec = get_space(space)
    if len(subnets_per_step) != 6:
        raise ValueError(f"subnets_per_step needs 6 entries, got {subnets_per_step=}")
    k, d, e = spec.kernel_sizes, spec.depths, spec.expand_ratios
    kmax, dmax, emax = (k[-1],), (d[-1],), (e[-1],)
    low = lr * later_lr_scale
    n = list(subnets_per_step)
    return (
        Phase("full", kmax, dmax, emax, n[0], epochs, lr),
        Phase("kernel", k, dmax, emax, n[1], epochs, low),
        Phase("depth1", k, d[-2:], emax, n[2], epochs, low),
        Phase("depth2", k, d, emax, n[3], epochs, low),
        Phase("expand1", k, d, e[-2:], n[4], epochs, low, sort_channels=True),
        Phase("expand2", k, d, e, n[5], epochs, low, sort_channels=True),
    )


class ProgressiveShrinking(TrainingStrategy):
    """once-for-all progressive shrinking over :class:`Phase` s.

    The first phase trains the full network on labels; every later phase trains
    ``subnets_per_step`` random archs of its choices with ``teacher`` loss (KD from a frozen
    copy of the full network taken when the second phase starts: event
    ``"freeze_teacher"``). Event ``"sort_channels"`` starts each expand phase.
    """

    name = "ps"

    def __init__(self, space: str | SearchSpace, width_mult: float | None = None, *,
                 phases: Sequence[Phase] | None = None, seed: int = 0,
                 resolutions: Sequence[int] | None = None) -> None:
        super().__init__(space, width_mult, seed=seed, resolutions=resolutions)
        self.phases = tuple(default_phases(self.space) if phases is None else phases)
        if not self.phases:
            raise ValueError("phases must not be empty")
        for phase in self.phases:
            for attr, allowed in (("kernels", self.space.kernel_sizes),
                                  ("depths", self.space.depths),
                                  ("expands", self.space.expand_ratios)):
                values = getattr(phase, attr)
                if not values or not set(values) <= set(allowed):
                    raise ValueError(f"phase {phase.name!r}: {attr}={values} must be a "
                                     f"non-empty subset of {allowed}")
            if phase.subnets_per_step < 1 or phase.epochs < 1:
                raise ValueError(f"phase {phase.name!r}: subnets_per_step and epochs must be "
                                 f">= 1, got {phase}")

    @property
    def total_epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

    def phase_index(self, epoch: int | None = None) -> int:
        """The phase that epoch ``epoch`` (default: the current one) belongs to."""
        return _phase_index([p.epochs for p in self.phases],
                             self.epoch if epoch is None else epoch)

    @property
    def phase(self) -> Phase:
        return self.phases[self.phase_index()]

    def phase_choices(self, phase: Phase | None = None) -> Choices:
        p = self.phase if phase is None else phase
        return Choices(self.choices.resolutions, p.depths, p.kernels, p.expands)

    def segments(self, epochs: int, lr: float) -> list[Segment]:
        """One segment per phase; ``epochs``/``lr`` are ignored (the phases set them)."""
        return [Segment(p.epochs, p.lr) for p in self.phases]

    def begin_epoch(self, epoch: int) -> list[str]:
        super().begin_epoch(epoch)
        index = self.phase_index()
        start = sum(p.epochs for p in self.phases[:index])
        if epoch != start:
            return []
        events = []
        if index == 1:
            events.append("freeze_teacher")
        if self.phases[index].sort_channels:
            events.append("sort_channels")
        return events

    def step(self) -> list[SubnetTask]:
        if self.phase_index() == 0:
            return [SubnetTask(sample_arch(self.space, self.width_mult, self.phase_choices(),
                                           self.rng), "labels")]
        choices = self.phase_choices()
        return [SubnetTask(sample_arch(self.space, self.width_mult, choices, self.rng),
                           "teacher") for _ in range(self.phase.subnets_per_step)]


def _phase_index(lengths: Sequence[int], epoch: int) -> int:
    """The index of the phase (of ``lengths`` epochs each) that ``epoch`` falls in; epochs
    past the end belong to the last phase."""
    for i, length in enumerate(lengths):
        if epoch < length:
            return i
        epoch -= length
    return len(lengths) - 1


@dataclass(frozen=True)
class PrecisionPhase:
    """One phase of low-precision fine-tuning: the precisions a stage may take, whether
    ``binary`` stages binarize activations, epochs and peak learning rate."""

    name: str
    precisions: tuple[str, ...]
    binary_activations: bool
    epochs: int
    lr: float


def default_precision_phases(space: str | SearchSpace, *, epochs: int = 1,
                             lr: float = 0.01) -> tuple[PrecisionPhase, ...]:
    """Quantisation-aware fine-tuning after the fp32 phases: ``int8`` (stages fp32 or int8),
    then the two stages of binary training (Bi-Real Net, ReActNet): ``binary-weights``
    (binary stages with real activations) and ``binary`` (binary weights and
    activations). Only the phases that the space's precisions allow; ``epochs`` and ``lr``
    for each."""
    spec = get_space(space)
    offered = set(spec.precisions)
    base = tuple(p for p in ("fp32", "int8") if p in offered)
    phases = []
    if "int8" in offered:
        phases.append(PrecisionPhase("int8", base, True, epochs, lr))
    if "binary" in offered:
        every = tuple(p for p in ("fp32", "int8", "binary") if p in offered)
        phases.append(PrecisionPhase("binary-weights", every, False, epochs, lr))
        phases.append(PrecisionPhase("binary", every, True, epochs, lr))
    if not phases:
        raise ValueError(f"space {spec.name!r} offers no low precision "
                         f"(precisions: {', '.join(spec.precisions)})")
    return tuple(phases)


def parse_precision_schedule(text: str, space: str | SearchSpace, *, lr: float
                             ) -> tuple[PrecisionPhase, ...]:
    """Phases from ``NAME:EPOCHS[@LR],…`` (e.g. ``int8:1,binary-weights:3,binary:6@0.005``):
    the named phases of :func:`default_precision_phases` in the order given, each with its
    epochs and peak learning rate (default ``lr``). A phase may be left out (only binary:
    ``binary-weights:2,binary:4``) but not repeated.

    Raises:
        ValueError: one line naming the bad entry and the space's phases.
    """
    offered = {phase.name: phase for phase in default_precision_phases(space)}
    names = ", ".join(offered)
    phases: list[PrecisionPhase] = []
    for entry in (part.strip() for part in text.split(",")):
        name, sep, rest = entry.partition(":")
        epochs_text, at, lr_text = rest.partition("@")
        if not sep or name not in offered:
            raise ValueError(f"precision schedule entry {entry!r}: expected NAME:EPOCHS[@LR] "
                             f"with NAME among the phases of this space ({names})")
        try:
            epochs = int(epochs_text)
            phase_lr = float(lr_text) if at else lr
        except ValueError:
            raise ValueError(f"precision schedule entry {entry!r}: EPOCHS must be an integer "
                             "and LR a number") from None
        if epochs < 1 or not math.isfinite(phase_lr) or phase_lr <= 0:
            raise ValueError(f"precision schedule entry {entry!r}: needs EPOCHS >= 1 and a "
                             "finite LR > 0")
        if any(p.name == name for p in phases):
            raise ValueError(f"precision schedule: phase {name!r} is given twice")
        phases.append(dataclasses.replace(offered[name], epochs=epochs, lr=phase_lr))
    return tuple(phases)


class PrecisionStrategy(SandwichStrategy):
    """The sandwich rule over mixed-precision archs, phase by phase
    (:func:`default_precision_phases`): per step the fp32 largest arch learns from labels,
    and the smallest and ``n_random`` random archs — each stage at a random precision of
    the phase — learn from its detached soft output (distillation from the fp32 largest
    net). Start it from a trained fp32 supernet (``TrainConfig.init_checkpoint``).

    Args:
        binary_share: in phases that offer ``binary``, the probability that a sampled
            stage is binary (the other precisions share the rest evenly); ``None``: every
            precision of the phase equally likely (a stage is binary 1 time in 3 when the
            phase offers fp32, int8 and binary; an all-binary 4-stage subnet 1 in 81).
        distill: the sampled subnets learn from the fp32 largest subnet's soft output
            (in-place distillation); ``False``: from the labels, like the largest.
        fp32_smallest: the sandwich's smallest subnet stays fp32 in every phase (only the
            random subnets take the phase's precisions), so that the fp32 smallest keeps
            its own training step.
        binary_largest: in phases that offer ``binary``, the largest arch with every stage
            binary takes the first random subnet's place, so that the top of the binary
            subspace is trained in every step (the sandwich rule applied to it); needs
            ``n_random >= 1``.
    """

    name = "precision"

    def __init__(self, space: str | SearchSpace, width_mult: float | None = None, *,
                 phases: Sequence[PrecisionPhase] | None = None, n_random: int = 2,
                 binary_share: float | None = None, distill: bool = True,
                 fp32_smallest: bool = False, binary_largest: bool = False, seed: int = 0,
                 resolutions: Sequence[int] | None = None) -> None:
        super().__init__(space, width_mult, n_random=n_random, seed=seed,
                         resolutions=resolutions)
        if binary_share is not None and not 0 <= binary_share <= 1:
            raise ValueError(f"binary_share must be in [0, 1] or None, got {binary_share!r}")
        if binary_largest and "binary" not in self.space.precisions:
            raise ValueError(f"binary_largest needs a space with binary stages; "
                             f"{self.space.name!r} has none")
        if binary_largest and n_random < 1:
            raise ValueError("binary_largest takes a random subnet's place: it needs "
                             f"n_random >= 1, got {n_random}")
        self.binary_largest = binary_largest
        self.binary_share = binary_share
        self.distill = distill
        self.fp32_smallest = fp32_smallest
        self.phases = tuple(default_precision_phases(self.space) if phases is None
                            else phases)
        if not self.phases:
            raise ValueError("phases must not be empty")
        for phase in self.phases:
            bad = [p for p in phase.precisions if p not in self.space.precisions]
            if not phase.precisions or bad or phase.epochs < 1:
                raise ValueError(f"phase {phase.name!r}: precisions must be a non-empty "
                                 f"subset of {self.space.precisions} and epochs >= 1, "
                                 f"got {phase}")

    @property
    def phase(self) -> PrecisionPhase:
        return self.phases[_phase_index([p.epochs for p in self.phases], self.epoch)]

    @property
    def binary_activations(self) -> bool:
        return self.phase.binary_activations

    def segments(self, epochs: int, lr: float) -> list[Segment]:
        """One segment per phase; ``epochs``/``lr`` are ignored (the phases set them)."""
        return [Segment(p.epochs, p.lr) for p in self.phases]

    def precision_weights(self) -> tuple[float, ...] | None:
        """The probabilities of the phase's precisions for one stage (``None``: uniform)."""
        precisions = self.phase.precisions
        if self.binary_share is None or "binary" not in precisions:
            return None
        if len(precisions) == 1:
            return (1.0,)
        rest = (1.0 - self.binary_share) / (len(precisions) - 1)
        return tuple(self.binary_share if p == "binary" else rest for p in precisions)

    def step(self) -> list[SubnetTask]:
        precisions = self.phase.precisions
        weights = self.precision_weights()
        loss: LossKind = "inplace" if self.distill else "labels"
        smallest = self.smallest if self.fp32_smallest else self.smallest.replace(
            precisions=tuple(draw_precision(precisions, self.rng, weights)
                             for _ in range(self.space.num_stages)))
        tasks = [SubnetTask(self.largest, "labels"), SubnetTask(smallest, loss)]
        n_random = self.n_random
        if self.binary_largest and "binary" in precisions:
            tasks.append(SubnetTask(self.largest.replace(
                precisions=("binary",) * self.space.num_stages), loss))
            n_random -= 1
        tasks += [SubnetTask(sample_arch(self.space, self.width_mult, self.choices, self.rng,
                                         precisions, weights), loss)
                  for _ in range(n_random)]
        return tasks


STRATEGIES: dict[str, type[TrainingStrategy]] = {
    cls.name: cls for cls in (SandwichStrategy, SinglePathStrategy, ProgressiveShrinking,
                              StandaloneStrategy, PrecisionStrategy)
}
SUPERNET_STRATEGIES: tuple[str, ...] = ("ps", "sandwich", "spos", "precision")
"""The strategies that train a whole supernet from a config alone (``train --strategy``);
``standalone`` trains one given arch."""


def make_strategy(name: str, space: str | SearchSpace, width_mult: float | None = None, *,
                  seed: int = 0, resolutions: Sequence[int] | None = None,
                  **options: Any) -> TrainingStrategy:
    """A strategy by name (``sandwich``, ``spos``, ``ps``, ``standalone``); ``options`` go to its
    constructor (e.g. ``n_random``, ``phases``) and unknown ones raise ``TypeError``."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}") from None
    return cls(space, width_mult, seed=seed, resolutions=resolutions, **options)
