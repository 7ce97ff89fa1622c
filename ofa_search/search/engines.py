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
  crossover), run on whole generations of :class:`~ofa_search.search.genomes.Genomes`
  (arrays of choice indices) whose children are recorded into the study with
  :func:`optuna.trial.create_trial`. As in once-for-all, a child (and a member of the
  first population) over the budget is redrawn — up to 30 times, priced by latency alone
  (for a table: by gathering its block prices, exact and ~10× cheaper than building the
  archs; else through the latency predictor, counted apart in ``latency_calls``) — so the
  accuracy predictor sees mostly feasible archs; one still over budget after that is
  priced and ranked last (by excess latency).

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
from ofa_search.search.genomes import GenomeCodec, Genomes, TablePrices

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
               restarts: int = 1,
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
        restarts: the evolution engine splits its trials over this many independent runs
            (seeds derived from ``seed``; resumed trials seed the first) and keeps the best
            of all — evolution on a rugged predictor stalls in one basin, and independent
            runs cost no more than one long run.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {ENGINES}")
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials=}")
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts=}")
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
        todo = max(0, n_trials - len(history))
        for r in range(restarts):
            run = history if r == 0 else []
            share = todo // restarts + (1 if r < todo % restarts else 0)
            _run_evolution(encoding, evaluator, budget_ms, len(run) + share,
                           seed + 1_000_003 * r, run, emit, step,
                           EvolutionConfig(population_size=population_size),
                           record_trials or on_generation is not None)
            if r:
                history.extend(run)
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
    """once-for-all's evolution over :class:`~ofa_search.search.genomes.Genomes`: a whole
    generation is drawn, mutated, crossed and (for a table) priced as arrays; each
    generation's children become trials (built only when ``record_trials``: creating
    Optuna trials costs more than pricing the archs)."""
    rng = np.random.default_rng(seed)
    codec = GenomeCodec(encoding)
    prices = TablePrices.of(codec, evaluator.latency, rng)
    distributions = encoding.distributions()
    pop_size = config.population_size
    n_parents = max(1, round(pop_size * config.parent_ratio))

    def latency(g: Genomes) -> np.ndarray:
        if prices is not None:
            return prices.latency(g)
        return evaluator.latency_only(codec.to_archs(g))

    def feasible(draw: Callable[[int], Genomes], size: int) -> tuple[Genomes, np.ndarray]:
        """``size`` genomes from ``draw``, those over the budget redrawn (up to
        ``max_redraws`` rounds, priced by latency alone); stops early when a round fits
        (almost) none."""
        g = draw(size)
        lat = latency(g)
        if budget_ms is None:
            return g, lat
        waiting = size
        for _ in range(config.max_redraws):
            over = np.flatnonzero(lat > budget_ms)
            if over.size == 0 or over.size > 0.99 * waiting:
                break  # all fit, or (nearly) nothing fits this close to the minimum
            waiting = over.size
            again = draw(over.size)
            g.put(over, again)
            lat[over] = latency(again)
        return g, lat

    def record(g: Genomes, lat: np.ndarray) -> list[Evaluation]:
        archs = codec.to_archs(g)
        evaluations = evaluator.evaluate(archs, lat if prices is not None else None)
        history.extend(evaluations)
        if record_trials:
            emit([_frozen_trial(encoding, distributions, ev, budget_ms) for ev in evaluations])
        step(len(evaluations))
        return evaluations

    def ranked(g: Genomes, evs: list[Evaluation]) -> tuple[Genomes, list[Evaluation]]:
        order = sorted(range(len(evs)), key=lambda i: _rank_key(evs[i], budget_ms))
        return g.take(order), [evs[i] for i in order]

    start = sorted(history, key=lambda e: _rank_key(e, budget_ms))[:pop_size]
    pop_g = codec.from_archs([e.arch for e in start], rng)
    pop_e = list(start)
    if len(pop_e) < pop_size and len(history) < n_trials:
        size = min(pop_size - len(pop_e), n_trials - len(history))
        # the fastest subnets make sure that a budget near the minimum has feasible parents
        seeds = [a for a in encoding.smallest() if budget_ms is not None][:size]
        seed_g = codec.from_archs(seeds, rng)
        rest_g, rest_lat = feasible(lambda k: codec.sample(rng, k), size - len(seeds))
        first = Genomes.concat([seed_g, rest_g])
        pop_e += record(first, np.concatenate([latency(seed_g), rest_lat]))
        pop_g = Genomes.concat([pop_g, first])
    while len(history) < n_trials:
        pop_g, pop_e = ranked(pop_g, pop_e)
        parents_g, parents_e = pop_g.take(range(min(n_parents, len(pop_e)))), \
            pop_e[:n_parents]
        size = min(pop_size - len(parents_e), n_trials - len(history))
        n_mutate = round(size * config.mutation_ratio)

        def mutants(k: int, parents: Genomes = parents_g) -> Genomes:
            pick = rng.integers(len(parents), size=k)
            return codec.mutate(codec.refill(parents.take(pick), rng), rng,
                                config.mutate_prob)

        def crosses(k: int, parents: Genomes = parents_g) -> Genomes:
            a, b = rng.integers(len(parents), size=(2, k))
            return codec.crossover(codec.refill(parents.take(a), rng),
                                   codec.refill(parents.take(b), rng), rng)

        mut_g, mut_lat = feasible(mutants, n_mutate)
        cross_g, cross_lat = feasible(crosses, size - n_mutate)
        children = Genomes.concat([mut_g, cross_g])
        child_e = record(children, np.concatenate([mut_lat, cross_lat]))
        pop_g = Genomes.concat([parents_g, children])
        pop_e = parents_e + child_e
