"""Tune every TVM workload of a search space ahead of profiling, in shards.

Profiling a tuned TVM table tunes each unit's new workloads as it meets them, on one core.
:func:`tune_space` tunes them ahead, by *shard*: the space's distinct workloads (by the
digest of :func:`~ofa_search.profiling.backends.tvm_tuning.extract_workloads`) are split
into ``count`` disjoint shards, each tuned by its own process (or host) into its own
database; :func:`~ofa_search.profiling.tvm_db.merge_databases` then joins them, and
profiling with the joined database tunes nothing. Workloads that already have a record in
the shard's database are skipped, so an interrupted run resumes (a workload interrupted
mid-tuning keeps the records it has and counts as tuned).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from ofa_search.errors import FileFormatError
from ofa_search.profiling.backends.tvm_backend import TvmBackend
from ofa_search.profiling.backends.tvm_tuning import (
    extract_workloads,
    is_tuned,
    make_runner,
    open_database,
    tune_tasks,
)
from ofa_search.profiling.builder import enumerate_units, table_units
from ofa_search.profiling.device import DeviceProfile
from ofa_search.profiling.lut import LatencyTable
from ofa_search.profiling.measure import unit_onnx
from ofa_search.profiling.tvm_db import ARCHIVE_SUFFIX, pack_database
from ofa_search.space import get_space
from ofa_search.units import Unit
from ofa_search.versioning import now_iso

_SHARD_RE = re.compile(r"(\d+)/(\d+)")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (1-based, as ``--shard 1/2``)."""

    index: int = 1
    count: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.index <= self.count:
            raise ValueError(f"shard must be INDEX/COUNT with 1 <= INDEX <= COUNT, got "
                             f"{self.index}/{self.count}")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"2/3"`` → ``Shard(2, 3)``; anything else is a ``ValueError`` naming it."""
        match = _SHARD_RE.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"shard must be INDEX/COUNT, e.g. 1/2, got {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    def holds(self, digest: str) -> bool:
        """Whether the workload with hex ``digest`` belongs to this shard."""
        return int(digest[:15], 16) % self.count == self.index - 1


def tune_space(space: str, profile: DeviceProfile, resolutions: Sequence[int] | None = None,
               *, width_mult: float | None = None, shard: Shard = Shard(),
               chunk: int = 4, limit: int | None = None, progress: bool = True,
               timeout_s: float = 300.0, runner: Any = None) -> dict[str, Any]:
    """Tune the fp32 units' workloads of ``space`` that fall in ``shard`` into
    ``profile.tuning_db``, ``profile.tuning_trials`` trials each.

    Args:
        resolutions: input sizes (default: all of the space's).
        width_mult: width multiplier (default: the space's smallest).
        chunk: workloads per MetaSchedule run (progress advances per chunk).
        limit: tune at most this many new workloads (the rest on a later call).
        runner: MetaSchedule's runner (default: one local runner for all chunks; pass one
            to share it across calls, since each new one spends seconds starting its worker).

    Returns counts (``workloads`` of the space, ``in_shard``, ``already_tuned``, ``tuned``)
    and ``wall_s``. Raises ``ValueError`` for a profile that is not tuned TVM with a
    database on this host.
    """
    if profile.backend != "tvm" or profile.tuning_trials <= 0 or profile.tuning_db is None:
        raise ValueError(f"tuning a space needs a TVM profile with tuning trials and a "
                         f"tuning database; profile {profile.id!r} has backend "
                         f"{profile.backend!r}, tuning_trials {profile.tuning_trials}, "
                         f"tuning_db {profile.tuning_db!r}")
    if profile.is_remote:
        raise ValueError(f"profile {profile.id!r} is a remote device: tune it while profiling "
                         "(`ofa-search profile --rpc-tracker …` measures candidates there); "
                         "tuning ahead by shard runs on this host only")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")

    start = time.perf_counter()
    backend = TvmBackend(profile)
    target = backend.target()
    units = enumerate_units(get_space(space), width_mult, resolutions)
    workloads: dict[str, Any] = {}
    for found in unit_workloads(backend, units, progress).values():
        workloads.update(found)
    mine = [task for digest, task in workloads.items() if shard.holds(digest)]
    database = open_database(profile.tuning_db)
    with target:
        todo = [task for task in mine if not is_tuned(database, task, target)]
    summary: dict[str, Any] = {"space": space, "shard": f"{shard.index}/{shard.count}",
                               "workloads": len(workloads), "in_shard": len(mine),
                               "already_tuned": len(mine) - len(todo), "tuned": 0}
    todo = todo if limit is None else todo[:limit]
    bar = tqdm(total=len(todo), desc=f"tuning shard {shard.index}/{shard.count}",
               unit="workload", disable=not progress)
    if runner is None and todo:
        runner = make_runner(None, timeout_s)  # one worker for all chunks
    try:
        with target:
            for first in range(0, len(todo), chunk):
                batch = todo[first:first + chunk]
                tune_tasks(batch, target, database, trials_per_task=profile.tuning_trials,
                           work_dir=profile.tuning_db, timeout_s=timeout_s, runner=runner)
                summary["tuned"] += len(batch)
                bar.update(len(batch))
    finally:
        bar.close()
    summary["wall_s"] = time.perf_counter() - start
    return summary


def unit_workloads(backend: Any, units: Sequence[Unit], progress: bool = False
                   ) -> dict[str, dict[str, Any]]:
    """The tuning workloads of each unit (by key), as the TVM ``backend`` compiles them:
    ``{unit key: {workload digest: extracted task}}``."""
    target = backend.target()
    return {unit.key: extract_workloads(backend.relax_module(
                *unit_onnx(unit, backend.profile.batch_size)), target)
            for unit in tqdm(units, desc="extracting workloads", unit="unit",
                             disable=not progress)}


def untuned_units(table: LatencyTable, progress: bool = False) -> list[str]:
    """Keys of the fp32 units of a tuned TVM ``table`` with a workload that its tuning
    database (:meth:`LatencyTable.profile`'s, unpacked) has no record of; ``[]`` when the
    database covers the whole table."""
    profile = table.profile()
    if profile is None or profile.backend != "tvm" or profile.tuning_db is None:
        raise ValueError(f"table {table.device_id!r} is not a tuned TVM table")
    backend = TvmBackend(profile)
    target = backend.target()
    units = table_units(get_space(table.space), table.width_mult, table.resolutions, ("fp32",))
    database = open_database(profile.tuning_db)
    with target:
        return [key for key, tasks in unit_workloads(backend, units, progress).items()
                if not all(is_tuned(database, task, target) for task in tasks.values())]


def pack_table_database(table: LatencyTable, progress: bool = True) -> dict[str, Any]:
    """Pack the tuning database of the tuned TVM ``table`` (loaded from a file) into
    ``tvm_db/<device id>.tar.gz`` beside it and point the table at that archive (saved
    atomically). Refuses, changing nothing, when the database lacks a workload of one of
    the table's units."""
    if table.path is None:
        raise ValueError(f"table {table.device_id!r} was not loaded from a file")
    profile = table.profile()
    if profile is None or profile.backend != "tvm" or profile.tuning_db is None:
        raise FileFormatError(f"device {table.device_id!r} is not a tuned TVM table (backend "
                              f"{table.device.get('backend')!r}, tuning_db "
                              f"{table.device.get('tuning_db')!r}); nothing to pack")
    missing = untuned_units(table, progress=progress)
    if missing:
        raise FileFormatError(f"the tuning database {profile.tuning_db} of device "
                              f"{table.device_id!r} lacks workloads of {len(missing)} units, "
                              f"e.g. {missing[:3]}; profile them first")
    relative = f"tvm_db/{table.device_id}{ARCHIVE_SUFFIX}"
    archive = table.path.parent / relative
    counts = pack_database(profile.tuning_db, archive)
    table.device = {**table.device, "tuning_db": relative}
    table.meta["tuning_db"] = {**counts, "packed": now_iso()}
    table.save(table.path)
    return {**counts, "archive": str(archive), "table": str(table.path)}
