"""The search loop: ask a generation, price it as one batch, tell it — in memory.

Engines (all seeded Optuna samplers, all recorded as trials of an Optuna study, so Optuna's
tools and storages work the same for every one):

* ``nsga2`` — Optuna's :class:`~optuna.samplers.NSGAIISampler`. The latency budget is a
  constraint set with ``trial.set_constraint("latency", ms - budget)`` (feasible when
  ≤ 0; ``constraints_func`` is deprecated in Optuna 5), so NSGA-II's constrained
  domination ranks feasible archs first and infeasible ones by their excess latency.
  Without a budget the study is multi-objective (accuracy up, latency down).
* ``random`` — Optuna's :class:`~optuna.samplers.RandomSampler` on the same parameters
  (uniform depth, uniform choice per block): the baseline.
* ``evolution`` — once-for-all's evolutionary finder as a sampler,
  :class:`~ofa_search.search.evolution_sampler.OFAEvolutionSampler` (population 100, top
  25 % parents, half the children by mutation with probability 0.1 per gene, half by
  uniform crossover; archs over the budget redrawn up to 30 times, priced by latency
  alone — for a table by gathering its block prices, exact and ~10× cheaper than
  building the archs; else through the evaluator's cached latency, counted apart in
  ``latency_calls``). Its parents are the best complete trials of the study, ranked by
  the same ``latency`` constraint.

A generation is asked before any of it is told: NSGA-II fixes a trial's generation when
it is asked (from the completed trials), and the evolution sampler drafts a generation at
once (:meth:`~ofa_search.search.evolution_sampler.OFAEvolutionSampler.next_batch_size`),
so a whole batch lands in one generation, and the predictors see one batch per generation.

A throw-away evolution search (``record_trials=False``, no ``on_generation``: a cold query,
the benchmark) keeps no trials: it drives the same sampler's generations as arrays
(:func:`_run_drafts`), which proposes the same archs for a seed as asking and telling
them, without Optuna's ~2 ms of bookkeeping per trial (~10× the search's own cost on a
table).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from ofa_search.arch import Arch
from ofa_search.search.encoding import ArchEncoding
from ofa_search.search.evaluator import CachedEvaluator, Evaluation, LatencyModel
from ofa_search.search.evolution_sampler import OFAEvolutionSampler, rank_order
from ofa_search.search.genomes import Genomes

ENGINES: tuple[str, ...] = ("nsga2", "evolution", "random")
DEFAULT_ENGINE = "evolution"
CONSTRAINT_KEY = "latency"

GenerationHook = Callable[[list[FrozenTrial]], None]


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
               population_size: int = 100, *, encoding: ArchEncoding | None = None,
               latency: LatencyModel | None = None,
               storage: str | optuna.storages.BaseStorage | None = None,
               study_name: str | None = None) -> optuna.Study:
    """A study (in memory unless ``storage``) with the engine's sampler and the right
    directions. ``evolution`` needs a budget, the ``encoding`` and the ``latency`` model
    its redraws price archs with."""
    sampler: optuna.samplers.BaseSampler
    if engine == "nsga2":
        sampler = optuna.samplers.NSGAIISampler(population_size=population_size, seed=seed)
    elif engine == "evolution":
        if budget_ms is None or encoding is None or latency is None:
            raise ValueError("the evolution engine needs budget_ms, encoding and latency")
        sampler = OFAEvolutionSampler(encoding, latency, budget_ms=budget_ms,
                                      population_size=population_size, seed=seed)
    elif engine == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        raise ValueError(f"unknown engine {engine!r}; choose one of {ENGINES}")
    directions = [StudyDirection[d.upper()] for d in study_directions(budget_ms)]
    return optuna.create_study(directions=directions, sampler=sampler, storage=storage,
                               study_name=study_name)


def trial_arch(encoding: ArchEncoding, trial: FrozenTrial) -> Arch:
    """The arch a trial stands for."""
    return encoding.decode(trial.params)


def _record_values(ev: Evaluation, budget_ms: float | None) -> list[float]:
    return [ev.accuracy] if budget_ms is not None else [ev.accuracy, ev.latency_ms]


def _user_attrs(ev: Evaluation) -> dict[str, object]:
    return {"arch": ev.arch.to_string(), "accuracy_std": ev.accuracy_std,
            "latency_ms": ev.latency_ms}


def best_feasible(evaluations: Sequence[Evaluation], budget_ms: float) -> Evaluation | None:
    """The most accurate evaluation within the budget (ties: the faster one)."""
    feasible = [e for e in evaluations if e.latency_ms <= budget_ms]
    if not feasible:
        return None
    return max(feasible, key=lambda e: (e.accuracy, -e.latency_ms))


class _CachedLatency:
    """An evaluator's latency model read through its cache (the evolution's redraws are
    counted in ``latency_calls``)."""

    def __init__(self, evaluator: CachedEvaluator) -> None:
        self._evaluator = evaluator

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        return self._evaluator.latency_only(archs)


def _redraw_latency(evaluator: CachedEvaluator) -> LatencyModel:
    """What the evolution sampler prices redraws with: a table as it is (its block prices
    are gathered), any other model through the evaluator's cache."""
    model = evaluator.latency
    return model if callable(getattr(model, "block_prices", None)) else _CachedLatency(evaluator)


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
        record_trials: keep the trials (with the ``arch``, ``accuracy_std`` and
            ``latency_ms`` user attributes) in ``SearchResult.new_trials``; off for a
            throw-away search.
        on_generation: called with each generation's new trials (e.g. to persist them;
            implies ``record_trials``).
        progress: called with the number of trials added after each generation.
        restarts: the evolution engine splits its trials over this many independent runs
            (studies of their own, seeds derived from ``seed``; resumed trials seed the
            first) and keeps the best of all — evolution on a rugged predictor stalls in
            one basin, and independent runs cost no more than one long run.
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
    record = record_trials or on_generation is not None

    def emit(batch: list[FrozenTrial]) -> None:
        new_trials.extend(batch)
        if on_generation is not None:
            on_generation(batch)

    def step(count: int) -> None:
        if progress is not None:
            progress(count)

    runs = restarts if engine == "evolution" else 1
    latency = _redraw_latency(evaluator) if engine == "evolution" else None
    todo = max(0, n_trials - len(history))
    for r in range(runs):
        run = history if r == 0 else []
        share = todo // runs + (1 if r < todo % runs else 0)
        study = make_study(budget_ms, engine, seed + 1_000_003 * r, population_size,
                           encoding=encoding, latency=latency)
        resumed = old if r == 0 else []
        if isinstance(study.sampler, OFAEvolutionSampler) and not record:
            _run_drafts(study.sampler, evaluator, len(run) + share, resumed, run, step)
        else:
            if resumed:
                study.add_trials(resumed)
            _run_study(study, encoding, evaluator, budget_ms, len(run) + share,
                       population_size, run, emit if record else None, step)
        if r:
            history.extend(run)
    best = best_feasible(history, budget_ms) if budget_ms is not None else None
    return SearchResult(budget_ms=budget_ms, engine=engine, best=best, evaluations=history,
                        new_trials=new_trials,
                        predictor_calls=evaluator.predictor_calls - calls_before,
                        wall_s=time.perf_counter() - start)


def _run_study(study: optuna.Study, encoding: ArchEncoding, evaluator: CachedEvaluator,
               budget_ms: float | None, n_trials: int, batch: int,
               history: list[Evaluation], emit: GenerationHook | None,
               step: Callable[[int], None]) -> None:
    """Ask-and-tell one generation at a time until ``history`` holds ``n_trials``: the
    evolution sampler says how many trials its generation has, other samplers take
    ``batch``. Trials are told with their values and the latency constraint (and, when
    ``emit`` is given, the user attributes; then ``emit`` gets each generation)."""
    distributions: dict[str, BaseDistribution] = dict(encoding.distributions())
    sampler = study.sampler
    evolution = sampler if isinstance(sampler, OFAEvolutionSampler) else None
    while len(history) < n_trials:
        size = evolution.next_batch_size(study) if evolution is not None else batch
        trials = [study.ask(distributions) for _ in range(min(size, n_trials - len(history)))]
        params = [t.params for t in trials]
        latencies = (evolution.genome_latency(evolution.codec.from_params(params))
                     if evolution is not None and evolution.table_priced else None)
        evaluations = evaluator.evaluate([encoding.decode(p) for p in params], latencies)
        done: list[FrozenTrial] = []
        for trial, ev in zip(trials, evaluations, strict=True):
            if budget_ms is not None:
                trial.set_constraint(CONSTRAINT_KEY, ev.latency_ms - budget_ms)
            if emit is not None:
                for key, value in _user_attrs(ev).items():
                    trial.set_user_attr(key, value)
            frozen = study.tell(trial, _record_values(ev, budget_ms))
            if emit is not None:
                done.append(frozen)
        history.extend(evaluations)
        if emit is not None:
            emit(done)
        step(len(trials))


def _run_drafts(sampler: OFAEvolutionSampler, evaluator: CachedEvaluator, n_trials: int,
                resumed: Sequence[FrozenTrial], history: list[Evaluation],
                step: Callable[[int], None]) -> None:
    """The evolution sampler's generations without Optuna trials, for a throw-away search:
    drafted, priced and ranked as arrays, exactly as :func:`_run_study` would ask and tell
    them (the same archs for a seed — ``tests/search/test_evolution_sampler.py`` checks —
    at a tenth of the cost: Optuna's bookkeeping costs ~2 ms a trial). Selection is
    elitist, so ranking the last parents with their children ranks all trials."""
    budget, codec, k = sampler.budget_ms, sampler.codec, sampler.config.n_parents
    pool = codec.from_params([t.params for t in resumed])
    values = np.array([e.accuracy for e in history])
    excess = np.array([max(0.0, e.latency_ms - budget) for e in history])
    numbers = np.arange(len(history))
    while len(history) < n_trials:
        parents = None
        if len(history) >= sampler.config.population_size:
            best = rank_order(values, excess, numbers)[:k]
            pool, values, excess, numbers = pool.take(best), values[best], excess[best], \
                numbers[best]
            parents = pool
        drafted = sampler.draft(len(history), parents)
        g = drafted.take(np.arange(min(len(drafted), n_trials - len(history))))
        latencies = sampler.genome_latency(g) if sampler.table_priced else None
        evaluations = evaluator.evaluate(codec.to_archs(g), latencies)
        pool = Genomes.concat([pool, g])
        values = np.concatenate([values, [e.accuracy for e in evaluations]])
        excess = np.concatenate([excess, [max(0.0, e.latency_ms - budget)
                                          for e in evaluations]])
        numbers = np.concatenate([numbers, np.arange(len(history), len(history) + len(g))])
        history.extend(evaluations)
        step(len(evaluations))
