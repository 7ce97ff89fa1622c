"""once-for-all's evolutionary search as an Optuna sampler.

:class:`OFAEvolutionSampler` proposes whole archs of an
:class:`~ofa_search.search.encoding.ArchEncoding` (every parameter, through
``sample_relative``) with once-for-all's rules: population 100, the best 25 % are the
parents, half of the children are mutants of a random parent (each gene resampled with
probability 0.1), half uniform crossovers of two random parents. A child — and a member
of the first population — over the latency budget is redrawn, up to 30 rounds, priced by
latency alone (by gathering a table's block prices where the latency model is a table,
see :class:`~ofa_search.search.genomes.GenomeLatency`), so the objective sees mostly
feasible archs; one still over after that is proposed anyway and ranks last.

**The study is the state.** once-for-all's selection is elitist (the next parents are the
best of the parents and their children), so the parents of a generation are exactly the
``n_parents`` best *complete trials of the study*: feasible ones first, by objective value;
then infeasible ones by their total constraint violation (the sum of the positive values
of ``FrozenTrial.constraints``, as set by ``trial.set_constraint``); ties go to the
earlier trial. A trial without constraints counts as feasible. The sampler keeps no
generation counter and no attributes on trials: a study resumed from a storage, or shared
by several workers, carries everything it needs.

**Generations.** When a trial asks and the sampler holds no proposal for its study, it
drafts one generation at once, as arrays of choice indices
(:class:`~ofa_search.search.genomes.Genomes`): with fewer than ``population_size``
complete trials, the rest of the first population (the smallest arch at every
resolution, then uniform random archs); else ``population_size - n_parents`` children.
Trials then take the draft's archs one by one, in order. Ask :meth:`next_batch_size`
trials before telling any to have the objective price a generation as one batch; with
``study.optimize`` (one trial at a time) a generation is still drawn from one set of
parents.

**Storages and workers.** Any storage works (in memory, RDB, journal). Threads of one
process (``study.optimize(n_jobs=…)``) share the sampler's drafts under a lock (Optuna
reseeds a sampler per thread then, as it does its own). Worker processes on one stored
study each hold their own drafts, drawn from the complete trials in the storage when the
draft is made: each fills its own first population, then all breed from the best trials
that any of them told. Deterministic for a ``seed`` with one worker and ``n_jobs=1``.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from ofa_search.search.encoding import ArchEncoding
from ofa_search.search.evaluator import LatencyModel
from ofa_search.search.genomes import GenomeCodec, GenomeLatency, Genomes


@dataclass(frozen=True)
class EvolutionConfig:
    """once-for-all's evolution settings (its ``evolution_finder.py``), plus the bound on
    redraws of archs over the budget."""

    population_size: int = 100
    parent_ratio: float = 0.25
    mutation_ratio: float = 0.5
    mutate_prob: float = 0.1
    max_redraws: int = 30

    def __post_init__(self) -> None:
        if self.population_size < 2:
            raise ValueError(f"population_size must be >= 2, got {self.population_size=}")
        if self.max_redraws < 0:
            raise ValueError(f"max_redraws must be >= 0, got {self.max_redraws=}")
        for name in ("parent_ratio", "mutation_ratio", "mutate_prob"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        if self.n_parents >= self.population_size:
            raise ValueError(f"parent_ratio={self.parent_ratio} leaves no children in a "
                             f"population of {self.population_size}")

    @property
    def n_parents(self) -> int:
        return max(1, round(self.population_size * self.parent_ratio))

    @property
    def n_children(self) -> int:
        return self.population_size - self.n_parents


def rank_order(values: np.ndarray, violations: np.ndarray, numbers: np.ndarray) -> np.ndarray:
    """Indices of trials, best first: by total constraint violation (smaller first; a
    feasible trial has none), then by value (higher first, ``nan`` last), then by number
    (the earlier trial first)."""
    return np.lexsort((numbers, -values, violations))


class OFAEvolutionSampler(BaseSampler):
    """once-for-all's evolution over the archs of ``encoding`` under ``budget_ms`` (see the
    module docstring). Needs a single-objective study whose objective returns the value to
    maximise (or minimise, following the study's direction) and sets the latency excess as
    a constraint (``trial.set_constraint("latency", latency_ms - budget_ms)``).

    Args:
        encoding: the parameters proposed (:meth:`ArchEncoding.distributions`); other
            parameters are sampled uniformly at random.
        latency: the latency model that redraws price archs with (a table's block prices
            are gathered instead, when it has them and they are exact).
        budget_ms: the latency budget that drafts are redrawn under.
        seed: seeds the sampler's own generator (every draw); ``None`` for fresh entropy.
    """

    def __init__(self, encoding: ArchEncoding, latency: LatencyModel, *, budget_ms: float,
                 population_size: int = 100, parent_ratio: float = 0.25,
                 mutation_ratio: float = 0.5, mutate_prob: float = 0.1,
                 max_redraws: int = 30, seed: int | None = None) -> None:
        if not budget_ms > 0:
            raise ValueError(f"budget_ms must be > 0, got {budget_ms=}")
        self.config = EvolutionConfig(population_size, parent_ratio, mutation_ratio,
                                      mutate_prob, max_redraws)
        self.encoding = encoding
        self.budget_ms = float(budget_ms)
        self._codec = GenomeCodec(encoding)
        self._latency = GenomeLatency(self._codec, latency)
        self._space: dict[str, BaseDistribution] = dict(encoding.distributions())
        self._rng = np.random.default_rng(seed)
        self._random = RandomSampler(seed=int(self._rng.integers(2**31)))
        self._drafts: dict[str, deque[dict[str, Any]]] = {}
        self._lock = threading.RLock()

    # -- Optuna's sampler interface -------------------------------------------------
    def infer_relative_search_space(self, study: Study, trial: FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        return dict(self._space)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        with self._lock:
            drafts = self._drafts.setdefault(study.study_name, deque())
            if not drafts:
                drafts.extend(self._draft(study))
            return drafts.popleft()

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def reseed_rng(self) -> None:
        with self._lock:
            self._rng = np.random.default_rng()
            self._random.reseed_rng()

    # -- for batched ask-and-tell ----------------------------------------------------
    def next_batch_size(self, study: Study) -> int:
        """How many trials to ask before telling any, so that they are one generation:
        the proposals left in the current draft, else the size of the next one."""
        with self._lock:
            left = len(self._drafts.get(study.study_name, ()))
        if left:
            return left
        complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        size = self.config.population_size
        return size - complete if complete < size else self.config.n_children

    # -- one generation as arrays ----------------------------------------------------
    @property
    def codec(self) -> GenomeCodec:
        """The genome operators of the encoding (parameters ↔ genomes ↔ archs)."""
        return self._codec

    @property
    def table_priced(self) -> bool:
        """Whether latency is gathered from a table's block prices (then
        :meth:`genome_latency` is exact and ~10× cheaper than the model's ``predict``)."""
        return self._latency.table is not None

    def genome_latency(self, g: Genomes) -> np.ndarray:
        """Predicted latency (ms) of genomes, priced the way drafts are."""
        return self._latency(g)

    def draft(self, complete: int, parents: Genomes | None = None) -> Genomes:
        """The next generation, with ``complete`` trials complete: with fewer than
        ``population_size``, the rest of the first population; else ``n_children``
        children of ``parents`` — the ``n_parents`` best complete trials (by
        :func:`rank_order`). Each call draws from the sampler's generator."""
        cfg = self.config
        with self._lock:
            if complete < cfg.population_size:
                return self._first_population(cfg.population_size - complete)
            if parents is None or len(parents) == 0:
                raise ValueError(f"{complete} trials are complete: the next generation needs "
                                 "their best as parents")
            return self._children(parents, cfg.n_children)

    def _draft(self, study: Study) -> list[dict[str, Any]]:
        if len(study.directions) != 1:
            raise ValueError("OFAEvolutionSampler needs a single-objective study, got "
                             f"{len(study.directions)} objectives")
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        parents = None
        if len(complete) >= self.config.population_size:
            sign = 1.0 if study.direction == StudyDirection.MAXIMIZE else -1.0
            order = rank_order(
                np.array([sign * (t.values or [np.nan])[0] for t in complete]),
                np.array([sum(max(0.0, c) for c in t.constraints.values())
                          for t in complete]),
                np.array([t.number for t in complete]))
            best = order[:self.config.n_parents]
            parents = self._codec.from_params([complete[i].params for i in best])
        return self._codec.to_params(self.draft(len(complete), parents))

    def _first_population(self, size: int) -> Genomes:
        """The smallest arch at every resolution (so that a budget near the minimum has
        feasible parents), then uniform random archs."""
        codec, rng = self._codec, self._rng
        smallest = codec.from_archs(self.encoding.smallest()[:size], rng)
        rest = self._feasible(lambda k: codec.sample(rng, k), size - len(smallest))
        return Genomes.concat([smallest, rest])

    def _children(self, parents: Genomes, size: int) -> Genomes:
        """Half mutants, half crossovers of uniformly drawn parents (each parent's inactive
        block slots drawn afresh first: see :meth:`GenomeCodec.refill`)."""
        codec, rng, cfg = self._codec, self._rng, self.config

        def mutants(k: int) -> Genomes:
            pick = rng.integers(len(parents), size=k)
            return codec.mutate(codec.refill(parents.take(pick), rng), rng, cfg.mutate_prob)

        def crosses(k: int) -> Genomes:
            a, b = rng.integers(len(parents), size=(2, k))
            return codec.crossover(codec.refill(parents.take(a), rng),
                                   codec.refill(parents.take(b), rng), rng)

        n_mutate = round(size * cfg.mutation_ratio)
        return Genomes.concat([self._feasible(mutants, n_mutate),
                               self._feasible(crosses, size - n_mutate)])

    def _feasible(self, draw: Callable[[int], Genomes], size: int) -> Genomes:
        """``size`` genomes from ``draw``, those over the budget redrawn (up to
        ``max_redraws`` rounds, priced by latency alone); stops early when a round fits
        (almost) none — all that is left is over this close to the minimum latency."""
        g = draw(size)
        if size == 0:
            return g
        lat = self._latency(g)
        waiting = size
        for _ in range(self.config.max_redraws):
            over = np.flatnonzero(lat > self.budget_ms)
            if over.size == 0 or over.size > 0.99 * waiting:
                break
            waiting = over.size
            again = draw(over.size)
            g.put(over, again)
            lat[over] = self._latency(again)
        return g
