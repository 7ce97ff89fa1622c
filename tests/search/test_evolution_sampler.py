"""OFAEvolutionSampler: once-for-all's rules, seeded, and native to Optuna's studies,
storages and parallel workers."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from search_objective import MacsProxy

from ofa_search.arch import Arch
from ofa_search.search import ArchEncoding, CachedEvaluator, run_search
from ofa_search.search.evolution_sampler import OFAEvolutionSampler
from ofa_search.search.genomes import GenomeCodec
from ofa_search.search.storage import open_storage
from ofa_search.workspace import Workspace
from predictors.loading import load_latency_predictor

BUDGET_MS = 0.2
ENC = ArchEncoding("mbv3_small28")


@pytest.fixture(scope="module")
def latency() -> Any:
    predictor, _ = load_latency_predictor(Workspace("unused"), "cpu-ort-1t", "lut")
    return predictor


def _objective(evaluator: CachedEvaluator, budget_ms: float = BUDGET_MS
               ) -> Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        ev = evaluator.evaluate([ENC.suggest(trial)])[0]
        trial.set_constraint("latency", ev.latency_ms - budget_ms)
        return ev.accuracy

    return objective


def _archs(study: optuna.Study) -> list[Arch]:
    return [ENC.decode(t.params) for t in study.get_trials(deepcopy=False)]


def _study(latency: Any, seed: int | None = 0, storage: Any = None, name: str | None = None,
           budget_ms: float = BUDGET_MS, **kwargs: Any) -> optuna.Study:
    sampler = OFAEvolutionSampler(ENC, latency, budget_ms=budget_ms, seed=seed, **kwargs)
    return optuna.create_study(direction="maximize", sampler=sampler, storage=storage,
                               study_name=name, load_if_exists=name is not None)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"population_size": 1}, "population_size must be >= 2, got self.population_size=1"),
    ({"parent_ratio": 0.0}, r"parent_ratio must be in \(0, 1\], got 0.0"),
    ({"mutate_prob": 1.5}, r"mutate_prob must be in \(0, 1\], got 1.5"),
    ({"max_redraws": -1}, "max_redraws must be >= 0, got self.max_redraws=-1"),
    ({"parent_ratio": 1.0}, "parent_ratio=1.0 leaves no children in a population of 100"),
    ({"budget_ms": 0.0}, "budget_ms must be > 0, got budget_ms=0.0"),
])
def test_bad_settings_are_errors(latency, kwargs, message) -> None:
    args: dict[str, Any] = {"budget_ms": BUDGET_MS, **kwargs}
    with pytest.raises(ValueError, match=message):
        OFAEvolutionSampler(ENC, latency, **args)


def test_same_seed_same_trials(latency) -> None:
    runs = []
    for seed in (7, 7, 8):
        study = _study(latency, seed=seed, population_size=20)
        study.optimize(_objective(CachedEvaluator(MacsProxy(), latency)), n_trials=70)
        runs.append(_archs(study))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_optimize_proposes_what_the_batched_engine_does(latency) -> None:
    """One trial at a time or a generation at a time: the same drafts, so the same archs."""
    study = _study(latency, seed=7)
    study.optimize(_objective(CachedEvaluator(MacsProxy(), latency)), n_trials=300)
    result = run_search(ENC, CachedEvaluator(MacsProxy(), latency), budget_ms=BUDGET_MS,
                        engine="evolution", n_trials=300, seed=7)
    assert _archs(study) == [e.arch for e in result.evaluations]
    assert study.best_trial.value == pytest.approx(result.best.accuracy)  # type: ignore[union-attr]


@pytest.mark.parametrize("kind", ["lut", "learned"])
def test_throw_away_search_drafts_the_same_archs(kind) -> None:
    """Without trials (arrays only) the engine proposes what asking and telling does."""
    model, _ = load_latency_predictor(Workspace("unused"), "cpu-ort-1t", kind)
    runs = [run_search(ENC, CachedEvaluator(MacsProxy(), model), budget_ms=BUDGET_MS,
                       engine="evolution", n_trials=330, seed=5, restarts=2,
                       record_trials=record) for record in (True, False)]
    assert [e.arch for e in runs[0].evaluations] == [e.arch for e in runs[1].evaluations]
    assert len(runs[0].new_trials) == 330 and runs[1].new_trials == []
    first = run_search(ENC, CachedEvaluator(MacsProxy(), model), budget_ms=BUDGET_MS,
                       engine="evolution", n_trials=150, seed=5)
    resumed = [run_search(ENC, CachedEvaluator(MacsProxy(), model), budget_ms=BUDGET_MS,
                          engine="evolution", n_trials=260, seed=6,
                          resume_from=first.new_trials, record_trials=record)
               for record in (True, False)]
    assert [e.arch for e in resumed[0].evaluations] == [e.arch for e in resumed[1].evaluations]


def test_generations_and_batch_sizes(latency) -> None:
    study = _study(latency, population_size=20)  # 5 parents, 15 children
    sampler = study.sampler
    assert isinstance(sampler, OFAEvolutionSampler)
    assert sampler.next_batch_size(study) == 20  # the first population
    objective = _objective(CachedEvaluator(MacsProxy(), latency))
    study.optimize(objective, n_trials=5)
    assert sampler.next_batch_size(study) == 15  # what is left of the drafted population
    study.optimize(objective, n_trials=15)
    assert sampler.next_batch_size(study) == 15  # one generation of children
    assert _archs(study)[:len(ENC.smallest())] == ENC.smallest()  # the first draft's seeds


def _population(study: optuna.Study, archs: list[Arch], values: list[float],
                excess: list[float]) -> None:
    dists = ENC.distributions()
    study.add_trials([optuna.trial.create_trial(
        params=ENC.encode(a), distributions=dists, values=[v],
        constraints={"latency": e}) for a, v, e in zip(archs, values, excess, strict=True)])


def _children(study: optuna.Study) -> list[Arch]:
    sampler = study.sampler
    assert isinstance(sampler, OFAEvolutionSampler)
    trials = [study.ask(ENC.distributions()) for _ in range(sampler.next_batch_size(study))]
    return [ENC.decode(t.params) for t in trials]


def test_parents_are_the_best_feasible_trials(latency) -> None:
    """Feasible trials rank first by value; infeasible ones (a positive constraint, read
    through ``FrozenTrial.constraints``) only after them, however high their value."""
    rng = np.random.default_rng(0)
    study = _study(latency, budget_ms=10.0, seed=1)
    parent = Arch.smallest("mbv3_small28").replace(resolution=28)
    over = Arch.smallest("mbv3_small28").replace(resolution=24)
    other = [ENC.sample(rng).replace(resolution=20) for _ in range(50)]
    _population(study, [parent] * 25 + [over] * 25 + other,
                [0.9] * 25 + [0.99] * 25 + [0.5] * 50,
                [-1.0] * 25 + [1.0] * 25 + [-1.0] * 50)
    children = _children(study)
    assert len(children) == 75
    # crossover keeps the parents' resolution, a mutation changes it with p = 0.1 · 4/5
    kept = sum(c.resolution == 28 for c in children)
    assert kept >= 65


def test_half_the_children_mutants_half_crossovers(latency) -> None:
    """With one parent arch (everywhere feasible): crossovers reproduce it exactly,
    mutants resample each gene with p = 0.1 (2/3 of resampled kernels and depths change)."""
    study = _study(latency, budget_ms=10.0, seed=2)
    parent = Arch.parse("r28_w1.0_k3e4-k5e6-k7e3_k3e3-k3e3-k7e6_k5e4-k5e4_k3e6-k3e6-k3e6-k3e6",
                        "mbv3_small28")
    _population(study, [parent] * 100, [0.9] * 100, [-1.0] * 100)
    children = _children(study)
    mutants, crosses = children[:38], children[38:]
    assert crosses == [parent] * 37
    codec = GenomeCodec(ENC)
    g = codec.from_archs(mutants, np.random.default_rng(0))
    p = codec.from_archs([parent], np.random.default_rng(0))
    depth_changed = float((g.depth != p.depth).mean())
    active = codec.active(p)[0]
    same_depth = (g.depth == p.depth)[:, :, None] & active[None]
    kernel_changed = float((g.kernel != p.kernel)[same_depth].mean())
    assert 0.01 < depth_changed < 0.2 and 0.02 < kernel_changed < 0.13
    assert sum(m != parent for m in mutants) >= 20


@pytest.mark.parametrize(("max_redraws", "low", "high"), [(30, 0.0, 0.15), (0, 0.6, 1.0)])
def test_archs_over_the_budget_are_redrawn(latency, max_redraws, low, high) -> None:
    """At the 20th percentile of random archs' latency, the first population comes mostly
    within the budget — unless redraws are off. (Redraws stop early when a round fits
    none of those left: with a few left, 0.8^k of the time.)"""
    rng = np.random.default_rng(3)
    budget = float(np.percentile(latency.predict([ENC.sample(rng) for _ in range(500)]), 20))
    sampler = OFAEvolutionSampler(ENC, latency, budget_ms=budget, seed=0,
                                  max_redraws=max_redraws)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    proposals = [ENC.decode(study.ask(ENC.distributions()).params) for _ in range(100)]
    share_over = float(np.mean(np.asarray(latency.predict(proposals)) > budget))
    assert low <= share_over <= high


def test_table_prices_are_gathered(latency) -> None:
    sampler = OFAEvolutionSampler(ENC, latency, budget_ms=BUDGET_MS)
    assert sampler.table_priced
    rng = np.random.default_rng(4)
    archs = [ENC.sample(rng) for _ in range(50)]
    genomes = sampler.codec.from_params([ENC.encode(a) for a in archs])
    np.testing.assert_allclose(sampler.genome_latency(genomes), latency.predict(archs),
                               rtol=1e-12, atol=0)
    learned, _ = load_latency_predictor(Workspace("unused"), "cpu-ort-1t", "learned")
    assert not OFAEvolutionSampler(ENC, learned, budget_ms=BUDGET_MS).table_priced


def test_multi_objective_study_is_an_error(latency) -> None:
    sampler = OFAEvolutionSampler(ENC, latency, budget_ms=BUDGET_MS)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    with pytest.raises(ValueError, match="needs a single-objective study, got 2"):
        study.ask(ENC.distributions())


def test_rdb_study_resumes_with_a_new_sampler(latency, tmp_path: Path) -> None:
    """The study is the state: a fresh sampler on a stored study breeds from its trials."""
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    storage = open_storage(url)
    first = _study(latency, seed=0, storage=storage, name="s", population_size=4)
    first.optimize(_objective(CachedEvaluator(MacsProxy(), latency)), n_trials=4)
    again = _study(latency, seed=1, storage=open_storage(url), name="s", population_size=4)
    sampler = again.sampler
    assert isinstance(sampler, OFAEvolutionSampler)
    assert sampler.next_batch_size(again) == 3  # children of the stored population
    again.optimize(_objective(CachedEvaluator(MacsProxy(), latency)), n_trials=6)
    trials = again.get_trials(deepcopy=False)
    assert len(trials) == 10 and all(t.state.name == "COMPLETE" for t in trials)
    assert all(set(t.constraints) == {"latency"} for t in trials)


def test_threads_share_one_sampler_on_a_storage(latency, tmp_path: Path) -> None:
    storage = open_storage(tmp_path / "studies.log")
    study = _study(latency, storage=storage, name="threads", population_size=10)
    study.optimize(_objective(CachedEvaluator(MacsProxy(), latency)), n_trials=20, n_jobs=2)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 20 and sorted(t.number for t in trials) == list(range(20))
    assert all(t.state.name == "COMPLETE" for t in trials)


WORKER = """
import sys
sys.path.insert(0, {tests!r})
import optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
from search_objective import MacsProxy
from ofa_search.search import ArchEncoding, CachedEvaluator
from ofa_search.search.evolution_sampler import OFAEvolutionSampler
from ofa_search.search.storage import open_storage
from ofa_search.workspace import Workspace
from predictors.loading import load_latency_predictor
latency, _ = load_latency_predictor(Workspace("unused"), "cpu-ort-1t", "lut")
enc = ArchEncoding("mbv3_small28")
evaluator = CachedEvaluator(MacsProxy(), latency)
sampler = OFAEvolutionSampler(enc, latency, budget_ms=0.2, population_size=10, seed={seed})
study = optuna.create_study(direction="maximize", sampler=sampler, study_name="shared",
                            storage=open_storage({path!r}), load_if_exists=True)
def objective(trial):
    ev = evaluator.evaluate([enc.suggest(trial)])[0]
    trial.set_constraint("latency", ev.latency_ms - 0.2)
    return ev.accuracy
study.optimize(objective, n_trials=15)
"""


def test_two_worker_processes_share_one_journal(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.log")
    tests = str(Path(__file__).parent)
    procs = [subprocess.Popen([sys.executable, "-c", WORKER.format(
        tests=tests, seed=seed, path=path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for seed in (1, 2)]
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    study = optuna.load_study(study_name="shared", storage=open_storage(path))
    trials = study.get_trials(deepcopy=False)
    assert sorted(t.number for t in trials) == list(range(30))  # none lost or duplicated
    assert all(t.state.name == "COMPLETE" and "latency" in t.constraints for t in trials)


def test_no_private_optuna_attributes() -> None:
    """The search reads and writes trials through Optuna's public API only."""
    package = Path(__file__).parents[2] / "ofa_search" / "search"
    private = re.compile(r"system_attrs|\.(_storage|_study_id|_trial_id)\b|constraints:|"
                         r"optuna\.\w+\._|from optuna[\w.]*\._|(study|trial)\._\w")
    hits = [f"{path.name}:{n}: {line.strip()}" for path in sorted(package.glob("*.py"))
            for n, line in enumerate(path.read_text().splitlines(), 1)
            if private.search(line)]
    assert hits == []
