from __future__ import annotations

import itertools

import numpy as np
import pytest
from search_objective import MacsProxy

from ofa_search.search import ArchEncoding, CachedEvaluator, pareto_front, run_search
from ofa_search.search.engines import best_feasible, make_study
from ofa_search.search.evolution_sampler import OFAEvolutionSampler
from ofa_search.workspace import Workspace
from predictors.loading import load_latency_predictor

BUDGET_MS = 0.2


@pytest.fixture(scope="module")
def latency():
    predictor, _ = load_latency_predictor(Workspace("unused"), "cpu-ort-1t", "lut")
    return predictor


@pytest.fixture(scope="module")
def oracle(latency):
    """Best feasible test-objective value over 20,000 random archs (brute force)."""
    enc = ArchEncoding("mbv3_small28")
    rng = np.random.default_rng(123)
    archs = [enc.sample(rng) for _ in range(20_000)]
    best = best_feasible(CachedEvaluator(MacsProxy(), latency).evaluate(archs), BUDGET_MS)
    assert best is not None
    return best


@pytest.mark.parametrize("engine", ["evolution", "nsga2", "random"])
def test_constrained_search_respects_budget_and_nears_oracle(engine, proxy, latency,
                                                            oracle) -> None:
    enc = ArchEncoding("mbv3_small28")
    evaluator = CachedEvaluator(proxy, latency)
    n = 2000 if engine == "evolution" else 600
    result = run_search(enc, evaluator, budget_ms=BUDGET_MS, engine=engine, n_trials=n,
                        seed=0)
    assert result.n_trials == n
    assert result.best is not None
    assert result.best.latency_ms <= BUDGET_MS
    assert len(result.new_trials) == n
    # the stored trials carry the constraint the way trial.set_constraint stores it
    trial = result.new_trials[-1]
    assert trial.constraints["latency"] == pytest.approx(
        trial.user_attrs["latency_ms"] - BUDGET_MS)
    if engine == "evolution":
        # 2,000 trials of evolution beat 20,000 random samples (or come within 0.002)
        assert result.best.accuracy >= oracle.accuracy - 0.002
    else:
        assert result.best.accuracy >= oracle.accuracy - 0.03


def test_evolution_uses_fewer_predictor_calls_than_trials_for_repeats(proxy, latency) -> None:
    enc = ArchEncoding("mbv3_small28")
    evaluator = CachedEvaluator(proxy, latency)
    result = run_search(enc, evaluator, budget_ms=BUDGET_MS, engine="evolution",
                        n_trials=1000, seed=0, record_trials=False)
    assert result.new_trials == []
    assert result.predictor_calls == evaluator.predictor_calls == len(evaluator.cache)
    assert result.predictor_calls < 1000
    assert proxy.calls == result.predictor_calls


@pytest.mark.parametrize("engine", ["evolution", "nsga2"])
def test_seeded_runs_are_reproducible(engine, proxy, latency) -> None:
    enc = ArchEncoding("mbv3_small28")
    runs = [run_search(enc, CachedEvaluator(proxy, latency), budget_ms=BUDGET_MS,
                       engine=engine, n_trials=300, seed=7) for _ in range(2)]
    assert [e.arch for e in runs[0].evaluations] == [e.arch for e in runs[1].evaluations]
    assert runs[0].best == runs[1].best
    other = run_search(enc, CachedEvaluator(proxy, latency), budget_ms=BUDGET_MS,
                       engine=engine, n_trials=300, seed=8)
    assert [e.arch for e in other.evaluations] != [e.arch for e in runs[0].evaluations]


def test_multi_objective_front_is_non_dominated_and_sorted(proxy, latency) -> None:
    enc = ArchEncoding("mbv3_small28")
    result = run_search(enc, CachedEvaluator(proxy, latency), budget_ms=None,
                        engine="nsga2", n_trials=500, seed=0)
    front = pareto_front(result.evaluations)
    assert len(front) >= 10
    lat = [p.latency_ms for p in front]
    acc = [p.accuracy for p in front]
    assert lat == sorted(lat) and all(b > a for a, b in itertools.pairwise(acc))
    for ev in result.evaluations:  # nothing priced dominates a front point
        for p in front:
            assert not (ev.accuracy > p.accuracy and ev.latency_ms < p.latency_ms)
    assert result.new_trials[0].values is not None and len(result.new_trials[0].values) == 2


def test_bad_arguments_are_errors(proxy, latency) -> None:
    enc = ArchEncoding("mbv3_small28")
    ev = CachedEvaluator(proxy, latency)
    with pytest.raises(ValueError, match="unknown engine 'tpe'"):
        run_search(enc, ev, budget_ms=0.2, engine="tpe")
    with pytest.raises(ValueError, match="budget_ms must be > 0"):
        run_search(enc, ev, budget_ms=-1.0)
    with pytest.raises(ValueError, match="evolution engine searches under a budget"):
        run_search(enc, ev, budget_ms=None, engine="evolution")


def test_evolution_study_has_the_sampler(latency) -> None:
    enc = ArchEncoding("mbv3_small28")
    study = make_study(0.2, "evolution", 3, 20, encoding=enc, latency=latency)
    assert isinstance(study.sampler, OFAEvolutionSampler)
    assert study.sampler.config.population_size == 20 and study.sampler.budget_ms == 0.2
    assert [d.name for d in study.directions] == ["MAXIMIZE"]
    with pytest.raises(ValueError, match="needs budget_ms, encoding and latency"):
        make_study(0.2, "evolution", 0)
    with pytest.raises(ValueError, match="unknown engine 'tpe'"):
        make_study(0.2, "tpe", 0)


def test_evolution_redraws_through_the_evaluators_latency_cache(proxy) -> None:
    """A learned latency model prices redraws through the evaluator (latency_calls), the
    accuracy predictor only what the search proposes."""
    learned, _ = load_latency_predictor(Workspace("unused"), "cpu-ort-1t", "learned")
    evaluator = CachedEvaluator(proxy, learned)
    result = run_search(ArchEncoding("mbv3_small28"), evaluator, budget_ms=BUDGET_MS,
                        engine="evolution", n_trials=300, seed=0, record_trials=False)
    assert evaluator.latency_calls > 0
    assert proxy.calls == result.predictor_calls <= 300
