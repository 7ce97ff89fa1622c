"""Where searches persist: an Optuna storage (a journal file in the workspace by default).

A search runs in memory (Optuna's per-trial writes cost milliseconds: ~70 ms a trial on
SQLite, ~15 ms on a journal file, measured on this project's machines) and hands each
generation's trials to :func:`persist_trials`, which adds them in one call. Several
worker processes can share one study: each resumes from the trials already stored, runs
with its own seed, and appends its own; the storage numbers trials, so none is lost or
duplicated.

``storage`` arguments accept an SQLAlchemy URL (``sqlite:///…``, ``postgresql://…``,
``mysql+pymysql://…``), a path ending in ``.log``/``.journal`` (Optuna's journal file),
or ``None`` for the workspace default (:attr:`Workspace.studies_journal`).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from ofa_search.errors import OfaSearchError
from ofa_search.workspace import Workspace

JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")
SQLITE_TIMEOUT_S = 60
# Optuna's own grace period for a journal lock left by a dead process
STALE_LOCK_S = 30.0


def remove_stale_lock_leftovers(journal: Path, older_than_s: float = STALE_LOCK_S
                                ) -> list[Path]:
    """Remove what a killed process left of ``journal``'s lock; returns what was removed.

    Optuna releases a journal's lock by renaming ``<journal>.lock`` to
    ``<journal>.lock<uuid>.rename`` and unlinking that. A process killed between the two
    leaves the renamed file: never read again, but clutter beside the journal. Only files
    older than ``older_than_s`` go, since a live process unlinks its own a moment after the
    rename (and fails if the file is gone).
    """
    now, removed = time.time(), []
    for leftover in journal.parent.glob(f"{glob.escape(journal.name)}.lock*.rename"):
        try:
            if now - leftover.lstat().st_mtime > older_than_s:
                leftover.unlink()
                removed.append(leftover)
        except FileNotFoundError:  # its owner, or another process, removed it
            pass
    return removed


def open_storage(storage: str | os.PathLike[str] | None, workspace: Workspace | None = None
                 ) -> BaseStorage:
    """An Optuna storage from a URL, a journal-file path, or the workspace default."""
    if storage is None:
        if workspace is None:
            raise OfaSearchError("no storage given and no workspace to take the default from")
        storage = workspace.studies_journal
    text = os.fspath(storage)
    if "://" in text:
        kwargs: dict[str, Any] = {}
        if text.startswith("sqlite"):
            # concurrent writers wait for SQLite's lock instead of failing at once
            kwargs["engine_kwargs"] = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
        try:
            return optuna.storages.RDBStorage(text, **kwargs)
        except Exception as exc:  # SQLAlchemy raises many kinds for a bad URL
            raise OfaSearchError(f"cannot open storage {text!r}: {exc}") from exc
    path = Path(text)
    if path.suffix in JOURNAL_SUFFIXES:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_lock_leftovers(path)
        return JournalStorage(JournalFileBackend(str(path)))
    raise OfaSearchError(f"storage {text!r} is neither a URL (e.g. sqlite:///studies.db) nor a "
                         f"journal file ending in {', '.join(JOURNAL_SUFFIXES)}")


def study_name(space: str, device: str, precision: str, budget_ms: float | None, engine: str,
               seed: int, predictors: str | None = None) -> str:
    """``space/device/precision/budget/engine/seed[/p<tag>]``, e.g.
    ``mbv3_small28/cpu-ort-1t/fp32/0.2ms/evolution/seed0/p1a2b3c4d``; the multi-objective
    study of a front has ``front`` in place of the budget. ``predictors`` (see
    :func:`predictor_tag`) keeps the trials priced by other predictors in other studies."""
    budget = "front" if budget_ms is None else f"{budget_ms:.6g}ms"
    name = f"{space}/{device}/{precision}/{budget}/{engine}/seed{seed}"
    return name if predictors is None else f"{name}/p{predictors}"


def predictor_tag(identity: dict[str, Any]) -> str:
    """8 hex digits of the predictors and checkpoint in a context's ``identity()``: a
    resumed study must have been priced by the same ones, or its trials are stale."""
    keys = ("latency_identity", "accuracy_identity", "checkpoint")
    text = json.dumps({k: identity.get(k) for k in keys}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def open_study(storage: BaseStorage, name: str, directions: Sequence[str],
               attrs: dict[str, Any] | None = None) -> optuna.Study:
    """Create the study or load it (several workers may race to create it)."""
    study = optuna.create_study(storage=storage, study_name=name,
                                directions=[StudyDirection[d.upper()] for d in directions],
                                load_if_exists=True)
    have = [d.name.lower() for d in study.directions]
    if have != [d.lower() for d in directions]:
        raise OfaSearchError(f"study {name!r} exists with directions {have}, not "
                             f"{list(directions)}")
    existing = study.user_attrs
    for key, value in (attrs or {}).items():
        if key not in existing:
            study.set_user_attr(key, value)
    return study


def completed_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's complete trials (to resume from)."""
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def persist_trials(study: optuna.Study, trials: Sequence[FrozenTrial]) -> None:
    """Append finished in-memory trials to a stored study (the storage numbers them)."""
    if trials:
        study.add_trials(list(trials))
