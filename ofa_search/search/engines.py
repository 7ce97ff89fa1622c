"""The search loop: ask a generation, price it as one batch, tell it — in memory.

Engines (all seeded, all recorded as trials of an Optuna study, so Optuna's tools and
storages work the same for every one):

* ``nsga2`` — Optuna's :class:`~optuna.samplers.NSGAIISampler`. The latency budget is a
  constraint set with ``trial.set_constraint("latency", ms - budget)`` (feasible when
  ≤ 0; ``constraints_func`` is deprecated in Optuna 5), so NSGA-II's constrained
  domination ranks feasible archs first and infeasible ones by their excess latency.
  Without a budget the study is multi-objective (accuracy up, latency down).
* ``random`` — Optuna's :class:`~optuna.samplers.RandomSampler` on the same parameters
  (uniform depth, uniform choice per block): the baseline.
* ``evolution`` — once-for-all's evolutionary finder (population 100, top 25 % parents,
  half the children by mutation with probability 0.1 per gene, half by uniform
  crossover), as a plain loop over :class:`~ofa_search.arch.Arch` whose children are
  recorded into the study with :func:`optuna.trial.create_trial`. As in once-for-all,
  a child (and a member of the first population) over the budget is redrawn — up to 30
  times, the candidates priced in batches by the latency predictor alone (cheap; counted
  apart in ``latency_calls``) — so the accuracy predictor sees mostly feasible archs;
  one still over budget after that is priced and ranked last (by excess latency).

A generation of ``population_size`` trials is asked before any is told: NSGA-II fixes a
trial's generation when it is asked (from the completed trials), so a whole batch lands
in one generation, and the predictors see one batch per generation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from ofa_search.arch import Arch
from ofa_search.search.encoding import ArchEncoding
from ofa_search.search.evaluator import CachedEvaluator, Evaluation

ENGINES: tuple[str, ...] = ("nsga2", "evolution", "random")
DEFAULT_ENGINE = "evolution"
CONSTRAINT_KEY = "latency"
_CONSTRAINTS_PREFIX = "constraints:"
"""Where ``Trial.set_constraint(key, v)`` keeps ``v``: system attribute ``constraints:key``."""

GenerationHook = Callable[[list[FrozenTrial]], None]


@dataclass(frozen=True)
class EvolutionConfig:
    """once-for-all's evolution settings (``evolution_finder.py``)."""

    population_size: int = 100
    parent_ratio: float = 0.25
    mutation_ratio: float = 0.5
    mutate_prob: float = 0.1
    max_redraws: int = 30

    def __post_init__(self) -> None:
        if self.max_redraws < 0:
            raise ValueError(f"max_redraws must be >= 0, got {self.max_redraws=}")
        if self.population_size < 2:
            raise ValueError(f"population_size must be >= 2, got {self.population_size=}")
        for name in ("parent_ratio", "mutation_ratio", "mutate_prob"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value}")


@dataclass
class SearchResult:
    """What one run found (``best`` is ``None`` for a multi-objective run, or when no
    trial met the budget). ``evaluations`` holds every trial's evaluation (resumed ones
    first); ``new_trials`` the Optuna trials this run added (to persist)."""

    budget_ms: float | None
    engine: str
    best: Evaluation | None
    evaluations: list[Evaluation]
    new_trials: list[FrozenTrial] = field(default_factory=list)
    predictor_calls: int = 0
    wall_s: float = 0.0

    @property
    def n_trials(self) -> int:
        return len(self.evaluations)


def study_directions(budget_ms: float | None) -> list[str]:
    """Constrained: maximise accuracy; without a budget: maximise accuracy, minimise
    latency."""
    return ["maximize"] if budget_ms is not None else ["maximize", "minimize"]


def make_study(budget_ms: float | None, engine: str, seed: int,
               population_size: int = 100) -> optuna.Study:
    """An in-memory study with the engine's sampler and the right directions."""
    sampler: optuna.samplers.BaseSampler
    if engine == "nsga2":
        sampler = optuna.samplers.NSGAIISampler(population_size=population_size, seed=seed)
    else:
        sampler = optuna.samplers.RandomSampler(seed=seed)
    directions = [StudyDirection[d.upper()] for d in study_directions(budget_ms)]
    return optuna.create_study(directions=directions, sampler=sampler)


def trial_arch(encoding: ArchEncoding, trial: FrozenTrial) -> Arch:
    """The arch a trial stands for."""
    return encoding.decode(trial.params)


def _record_values(ev: Evaluation, budget_ms: float | None) -> list[float]:
    return [ev.accuracy] if budget_ms is not None else [ev.accuracy, ev.latency_ms]


def _user_attrs(ev: Evaluation) -> dict[str, object]:
    return {"arch": ev.arch.to_string(), "accuracy_std": ev.accuracy_std,
            "latency_ms": ev.latency_ms}


def _frozen_trial(encoding: ArchEncoding, distributions: dict[str, Any], ev: Evaluation,
                  budget_ms: float | None) -> FrozenTrial:
    """A complete trial recording ``ev`` (constraint as ``trial.set_constraint`` stores it)."""
    system_attrs: dict[str, Any] = {}
    if budget_ms is not None:
        system_attrs[f"{_CONSTRAINTS_PREFIX}{CONSTRAINT_KEY}"] = ev.latency_ms - budget_ms
    return optuna.trial.create_trial(
        state=TrialState.COMPLETE, values=_record_values(ev, budget_ms),
        params=encoding.encode(ev.arch), distributions=distributions,
        user_attrs=_user_attrs(ev), system_attrs=system_attrs)


def _rank_key(ev: Evaluation, budget_ms: float | None) -> tuple[float, float]:
    """Sort key, smaller is better: feasible by accuracy, then infeasible by excess."""
    excess = 0.0 if budget_ms is None else max(0.0, ev.latency_ms - budget_ms)
    return (excess, -ev.accuracy)


def best_feasible(evaluations: Sequence[Evaluation], budget_ms: float) -> Evaluation | None:
    """The most accurate evaluation within the budget (ties: the faster one)."""
    feasible = [e for e in evaluations if e.latency_ms <= budget_ms]
    if not feasible:
        return None
    return max(feasible, key=lambda e: (e.accuracy, -e.latency_ms))


def run_search(encoding: ArchEncoding, evaluator: CachedEvaluator, *,
               budget_ms: float | None, engine: str = DEFAULT_ENGINE, n_trials: int = 2000,
               seed: int = 0, population_size: int = 100,
               resume_from: Sequence[FrozenTrial] = (), record_trials: bool = True,
               on_generation: GenerationHook | None = None,
               progress: Callable[[int], None] | None = None) -> SearchResult:
    """Run ``engine`` in memory until ``n_trials`` trials (resumed ones included) are done.

    Args:
        budget_ms: latency budget (constrained, single objective) or ``None``
            (multi-objective: accuracy and latency).
        resume_from: complete trials of an earlier run (e.g. from a persisted study) that
            count towards ``n_trials`` and seed the population.
        record_trials: build Optuna trials for the evolution engine's children (the
            sampler engines always have them); off for a throw-away search.
        on_generation: called with each generation's new trials (e.g. to persist them).
        progress: called with the number of trials added after each generation.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {ENGINES}")
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials=}")
    if budget_ms is not None and not budget_ms > 0:
        raise ValueError(f"budget_ms must be > 0, got {budget_ms=}")
    if engine == "evolution" and budget_ms is None:
        raise ValueError("the evolution engine searches under a budget; use nsga2 or random "
                         "for the multi-objective front")
    start = time.perf_counter()
    old = [t for t in resume_from if t.state == TrialState.COMPLETE]
    calls_before = evaluator.predictor_calls
    history = evaluator.evaluate([trial_arch(encoding, t) for t in old])
    new_trials: list[FrozenTrial] = []

    def emit(batch: list[FrozenTrial]) -> None:
        new_trials.extend(batch)
        if on_generation is not None:
            on_generation(batch)

    def step(count: int) -> None:
        if progress is not None:
            progress(count)

    if engine == "evolution":
        _run_evolution(encoding, evaluator, budget_ms, n_trials, seed, history, emit, step,
                       EvolutionConfig(population_size=population_size),
                       record_trials or on_generation is not None)
    else:
        study = make_study(budget_ms, engine, seed, population_size)
        if old:
            study.add_trials(old)
        _run_sampler(study, encoding, evaluator, budget_ms, n_trials, population_size,
                     history, emit, step)
    best = best_feasible(history, budget_ms) if budget_ms is not None else None
    return SearchResult(budget_ms=budget_ms, engine=engine, best=best, evaluations=history,
                        new_trials=new_trials,
                        predictor_calls=evaluator.predictor_calls - calls_before,
                        wall_s=time.perf_counter() - start)


def _run_sampler(study: optuna.Study, encoding: ArchEncoding, evaluator: CachedEvaluator,
                 budget_ms: float | None, n_trials: int, batch: int,
                 history: list[Evaluation], emit: GenerationHook,
                 step: Callable[[int], None]) -> None:
    """Ask-and-tell with an Optuna sampler, one generation per batch."""
    distributions: dict[str, BaseDistribution] = dict(encoding.distributions())
    while len(history) < n_trials:
        size = min(batch, n_trials - len(history))
        trials = [study.ask(distributions) for _ in range(size)]
        evaluations = evaluator.evaluate([encoding.decode(t.params) for t in trials])
        done = []
        for trial, ev in zip(trials, evaluations, strict=True):
            if budget_ms is not None:
                trial.set_constraint(CONSTRAINT_KEY, ev.latency_ms - budget_ms)
            for key, value in _user_attrs(ev).items():
                trial.set_user_attr(key, value)
            done.append(study.tell(trial, _record_values(ev, budget_ms)))
        history.extend(evaluations)
        emit(done)
        step(len(done))


def _run_evolution(encoding: ArchEncoding, evaluator: CachedEvaluator,
                   budget_ms: float | None, n_trials: int, seed: int,
                   history: list[Evaluation], emit: GenerationHook,
                   step: Callable[[int], None],
                   config: EvolutionConfig, record_trials: bool) -> None:
    """once-for-all's evolution; each generation's children become trials (built only
    when ``record_trials``: creating Optuna trials costs more than pricing the archs)."""
    rng = np.random.default_rng(seed)
    distributions = encoding.distributions()
    pop_size = config.population_size
    n_parents = max(1, round(pop_size * config.parent_ratio))
    population = sorted(history, key=lambda e: _rank_key(e, budget_ms))[:pop_size]

    def feasible(draw: Callable[[], Arch], size: int) -> list[Arch]:
        """``size`` archs from ``draw``, each redrawn (up to ``max_redraws`` times, in
        batches priced by the latency predictor alone) until it fits the budget; stops
        early when a round of redraws fits (almost) none."""
        archs = [draw() for _ in range(size)]
        if budget_ms is None:
            return archs
        waiting = size
        for _ in range(config.max_redraws):
            over = np.flatnonzero(evaluator.latency_only(archs) > budget_ms)
            if over.size == 0 or over.size > 0.99 * waiting:
                break  # all fit, or (nearly) nothing fits this close to the minimum
            waiting = over.size
            for i in over:
                archs[int(i)] = draw()
        return archs

    def record(archs: list[Arch]) -> list[Evaluation]:
        evaluations = evaluator.evaluate(archs)
        history.extend(evaluations)
        if record_trials:
            emit([_frozen_trial(encoding, distributions, ev, budget_ms) for ev in evaluations])
        step(len(evaluations))
        return evaluations

    if len(population) < pop_size and len(history) < n_trials:
        size = min(pop_size - len(population), n_trials - len(history))
        # the fastest subnets make sure that a budget near the minimum has feasible parents
        seeds = [a for a in encoding.smallest() if budget_ms is not None][:size]
        population += record(seeds + feasible(lambda: encoding.sample(rng), size - len(seeds)))
    while len(history) < n_trials:
        population.sort(key=lambda e: _rank_key(e, budget_ms))
        parents = population[:n_parents]
        size = min(pop_size - n_parents, n_trials - len(history))
        n_mutate = round(size * config.mutation_ratio)

        archs = [p.arch for p in parents]

        def mutant(archs: list[Arch] = archs) -> Arch:
            parent = archs[int(rng.integers(len(archs)))]
            return encoding.project(parent.mutate(rng, config.mutate_prob), rng)

        def cross(archs: list[Arch] = archs) -> Arch:
            a, b = rng.integers(len(archs), size=2)
            return encoding.project(archs[int(a)].crossover(archs[int(b)], rng), rng)

        children = feasible(mutant, n_mutate) + feasible(cross, size - n_mutate)
        population = parents + record(children)
