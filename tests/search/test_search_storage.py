from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from search_objective import MacsProxy

from ofa_search.errors import OfaSearchError
from ofa_search.search import load_context, open_storage, stored_search, study_name
from ofa_search.search.jobs import default_storage
from ofa_search.search.storage import predictor_tag, remove_stale_lock_leftovers

WORKER = """
import json, sys
sys.path.insert(0, {tests!r})
import optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
from search_objective import MacsProxy
from ofa_search.search import load_context, stored_search
from ofa_search.workspace import Workspace
import time
from pathlib import Path
ctx = load_context(Workspace({ws!r}), "cpu-ort-1t", accuracy=MacsProxy(), latency_kind="lut")
# Both workers start searching together: a worker still importing when the other had
# filled the study would add nothing, and the race would not be tested.
ready = Path({ws!r}).parent
(ready / "ready-{seed}").touch()
deadline = time.monotonic() + 60
while len(list(ready.glob("ready-*"))) < 2 and time.monotonic() < deadline:
    time.sleep(0.005)
result, _ = stored_search(ctx, budget_ms=0.2, engine="nsga2", n_trials=60, seed={seed},
                          storage={url!r}, population_size=20, name="shared")
print(json.dumps([t.user_attrs["arch"] for t in result.new_trials]))
"""


def test_two_processes_share_one_sqlite_study(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    open_storage(url)  # create the schema once, before the workers race
    tests = str(Path(__file__).parent)
    procs = [subprocess.Popen([sys.executable, "-c", WORKER.format(
        tests=tests, ws=str(tmp_path / "ws"), seed=seed, url=url)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    added: list[str] = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        archs = json.loads(out.strip().splitlines()[-1])
        assert len(archs) > 0
        added += archs
    study = optuna.load_study(study_name="shared", storage=open_storage(url))
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert len(trials) == len(added)  # nothing lost
    assert sorted(numbers) == list(range(len(trials)))  # nothing duplicated
    assert sorted(t.user_attrs["arch"] for t in trials) == sorted(added)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert 60 <= len(trials) <= 120  # each worker fills the study up to 60 from what it saw


def test_resume_continues_a_stored_study(workspace) -> None:
    ctx = load_context(workspace, "cpu-ort-1t", accuracy=MacsProxy(), latency_kind="lut")
    first, study = stored_search(ctx, budget_ms=0.2, engine="evolution", n_trials=150,
                                 seed=0)
    assert study.study_name == study_name("mbv3_small28", "cpu-ort-1t", "fp32", 0.2,
                                          "evolution", 0, predictor_tag(ctx.identity()))
    assert Path(default_storage(workspace)).is_file()
    second, study = stored_search(ctx, budget_ms=0.2, engine="evolution", n_trials=300,
                                  seed=0)
    assert len(second.new_trials) == 150 and second.n_trials == 300
    assert len(study.trials) == 300
    assert second.best is not None and first.best is not None
    assert second.best.accuracy >= first.best.accuracy
    assert study.user_attrs["device"] == "cpu-ort-1t" and study.user_attrs["budget_ms"] == 0.2


def test_other_predictors_do_not_resume_stale_trials(workspace) -> None:
    ctx = load_context(workspace, "cpu-ort-1t", accuracy=MacsProxy(), accuracy_name="proxy-a",
                       latency_kind="lut")
    _, first = stored_search(ctx, budget_ms=0.2, engine="evolution", n_trials=100, seed=0)
    other = load_context(workspace, "cpu-ort-1t", accuracy=MacsProxy(),
                         accuracy_name="proxy-b", latency_kind="lut")
    result, second = stored_search(other, budget_ms=0.2, engine="evolution", n_trials=100,
                                   seed=0)
    assert second.study_name != first.study_name
    assert len(result.new_trials) == 100  # nothing reused from the first study
    assert second.user_attrs["accuracy_identity"] == "proxy-b"


def test_storage_arguments(tmp_path: Path) -> None:
    journal = open_storage(tmp_path / "s.log")
    assert type(journal).__name__ == "JournalStorage"
    with pytest.raises(OfaSearchError, match="neither a URL"):
        open_storage(tmp_path / "studies.txt")
    with pytest.raises(OfaSearchError, match="cannot open storage"):
        open_storage("nosuchdialect://x")


def test_a_killed_release_of_the_journal_lock_is_tidied_once_stale(tmp_path: Path) -> None:
    """Optuna releases the journal lock by a rename then an unlink; a kill between the two
    leaves ``<journal>.lock<uuid>.rename``. Opening the journal removes such files once
    they are older than Optuna's grace period, never a fresh one (its owner unlinks it)."""
    journal = tmp_path / "studies.log"
    stale = tmp_path / "studies.log.lock0b1c.rename"
    fresh = tmp_path / "studies.log.lock9f8e.rename"
    other = tmp_path / "other.log.lock0b1c.rename"
    journal.touch()
    for path in (stale, fresh, other):
        path.symlink_to(journal)  # Optuna's lock is a symlink to the journal
    old = time.time() - 120
    os.utime(stale, (old, old), follow_symlinks=False)
    os.utime(other, (old, old), follow_symlinks=False)
    open_storage(journal)
    assert not stale.is_symlink() and fresh.is_symlink() and other.is_symlink()
    assert remove_stale_lock_leftovers(journal, older_than_s=0) == [fresh]
