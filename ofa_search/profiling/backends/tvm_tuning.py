"""MetaSchedule tuning for the TVM backend, with a database shared across runs.

Does what ``relax.get_pipeline("static_shape_tuning", …)`` does, with two differences that
matter when profiling a whole search space: workloads that already have a record in the
database are not tuned again (the database in ``work_dir`` is reused across models and
runs), and the trial budget is per workload. Candidates are compiled in this process
rather than in TVM's ``LocalBuilder``, which starts a new pool of worker processes for
every batch: each worker spends ~25 s importing TVM before it compiles a candidate in
~1 s, so on a 2-core host the pool, not the compiler, took most of the tuning time. The
runner's time-out is raised from TVM's 30 s for the same start-up cost. The JSON database
takes one writer at a time: do not tune into one ``work_dir`` from several processes at
once.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import sys
from typing import Any

_MAX_TRIALS_PER_ITER = 64
_DATABASES: dict[str, Any] = {}
_INTRINSICS = "tvm.s_tir.tensor_intrin"


def load_intrinsics(target: Any) -> None:
    """Register the tensor intrinsics that MetaSchedule may tensorize with for ``target``.

    MetaSchedule imports ``tvm.s_tir.tensor_intrin`` when it creates a tune context or
    builds a candidate. That package registers every back end's intrinsics, for CUDA,
    ROCm, Hexagon, Arm, x86 and RISC-V: ~39 s of TVMScript parsing on a 2-core host, 28 s
    of it for CUDA's. For an x86 or Arm CPU target only that CPU's module is imported here,
    under a package entry whose ``__init__`` has not run (x86: its two VNNI / AVX-512
    dot products), so MetaSchedule's own import finds the package loaded. Any other target
    runs the package's ``__init__``, which registers the rest.
    """
    module = sys.modules.get(_INTRINSICS)
    if module is not None and not getattr(module, "_ofa_partial", False):
        return  # TVM's own import ran: every intrinsic is registered
    triple = str(target.attrs.get("mtriple", "") or platform.machine()).lower()
    cpu = triple.split("-")[0]
    wanted = None
    if target.kind.name == "llvm" and cpu in ("x86_64", "amd64", "i686", "i386"):
        wanted = "x86"
    elif target.kind.name == "llvm" and cpu.startswith(("aarch64", "arm")):
        wanted = "arm_cpu"
    if module is None:
        if wanted is None:
            return  # MetaSchedule's own import registers them all
        # deferred: TVM is a heavy optional import (the tvm extra)
        import tvm.s_tir

        spec = importlib.util.find_spec(_INTRINSICS)
        if spec is None:  # an older TVM layout: leave it to MetaSchedule
            return
        module = importlib.util.module_from_spec(spec)  # the package, without its __init__
        module._ofa_partial = True  # type: ignore[attr-defined]
        sys.modules[_INTRINSICS] = module
        tvm.s_tir.tensor_intrin = module
    if wanted is not None:
        importlib.import_module(f"{_INTRINSICS}.{wanted}")
    else:  # a partial package and another target: TVM's __init__ imports the rest
        assert module.__spec__ is not None and module.__spec__.loader is not None
        module.__spec__.loader.exec_module(module)
        module._ofa_partial = False  # type: ignore[attr-defined]


def make_runner(rpc: tuple[str, int, str] | None = None, timeout_s: float = 300.0) -> Any:
    """MetaSchedule's runner for candidates on this host (``rpc`` ``None``) or on the
    device registered as ``(tracker_host, tracker_port, key)``."""
    # deferred: TVM is a heavy optional import (the tvm extra)
    from tvm.s_tir import meta_schedule as ms

    if rpc is None:
        return ms.runner.LocalRunner(timeout_sec=timeout_s)
    host, port, key = rpc
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                                 session_timeout_sec=int(timeout_s))
    return ms.runner.RPCRunner(rpc_config=config)


def _population(trials_per_task: int) -> int:
    """Evolutionary-search population for a per-workload trial budget: 16 candidates per
    trial between 64 and MetaSchedule's default 512 (its 512 made the search, not the
    measurements, most of a small budget's time)."""
    return min(512, max(64, 16 * trials_per_task))


def _in_process_builder() -> Any:
    """A MetaSchedule builder that compiles and exports each candidate in this process
    (MetaSchedule's default build and export; a failure becomes that candidate's error)."""
    # deferred: TVM is a heavy optional import (the tvm extra)
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderInput, BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import default_build, default_export

    @derived_object
    class InProcessBuilder(PyBuilder):
        def build(self, build_inputs: list[BuilderInput]) -> list[BuilderResult]:
            results = []
            for item in build_inputs:
                try:
                    built = default_build(item.mod, item.target, None)
                    results.append(BuilderResult(default_export(built), None))
                except Exception as exc:
                    results.append(BuilderResult(None, f"{type(exc).__name__}: {exc}"))
            return results

    return InProcessBuilder()


def tune_and_apply(mod: Any, target: Any, *, trials_per_task: int, work_dir: str,
                   rpc: tuple[str, int, str] | None = None, timeout_s: float = 300.0,
                   seed: int = 0, keep_loaded: bool = True) -> Any:
    """Tune the untuned workloads of relax ``mod`` and apply the database in ``work_dir``.

    Args:
        mod: a relax ``IRModule`` with static shapes (as the ONNX frontend returns it).
        target: the ``tvm.target.Target`` to tune for.
        trials_per_task: MetaSchedule trials for each workload not yet in the database.
        work_dir: the JSON database folder (created if missing).
        rpc: ``(tracker_host, tracker_port, key)`` to measure candidates on a remote
            device; ``None`` measures them on this host.
        timeout_s: runner time-out per batch of candidates.
        seed: seed of the evolutionary search.
        keep_loaded: keep the database loaded for later calls with the same ``work_dir``
            (``False`` for a throw-away folder).

    Returns:
        The module with tuned schedules applied, ready for ``tvm.compile(mod, target)``.
    """
    # deferred: TVM is a heavy optional import (the tvm extra)
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.relax_integration import extract_tasks

    os.makedirs(work_dir, exist_ok=True)
    load_intrinsics(target)  # records may replay a tensorization with them
    with target:
        mod = _lowered(mod)
        database = (_database(ms, work_dir) if keep_loaded
                    else ms.database.JSONDatabase(work_dir=work_dir))
        todo = [task for task in extract_tasks(mod, target)
                if not is_tuned(database, task, target)]
        tune_tasks(todo, target, database, trials_per_task=trials_per_task,
                   work_dir=work_dir, rpc=rpc, timeout_s=timeout_s, seed=seed)
        with database:  # the pass applies the current database
            return relax.transform.MetaScheduleApplyDatabase()(mod)


def is_tuned(database: Any, task: Any, target: Any) -> bool:
    """Whether ``database`` holds a record of the extracted ``task`` for ``target``."""
    return database.query_tuning_record(task.dispatched[0], target, "main") is not None


def tune_tasks(tasks: list[Any], target: Any, database: Any, *, trials_per_task: int,
               work_dir: str, rpc: tuple[str, int, str] | None = None,
               timeout_s: float = 300.0, seed: int = 0, runner: Any = None) -> None:
    """Tune MetaSchedule's extracted ``tasks`` into ``database``, ``trials_per_task`` each
    (candidates compiled in this process; nothing happens for an empty list). ``runner``
    (default: a new one for ``rpc``, see :func:`make_runner`) may be reused across calls:
    a new local runner spends ~25 s starting its worker process."""
    if not tasks:
        return
    # deferred: TVM is a heavy optional import (the tvm extra)
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.relax_integration import extracted_tasks_to_tune_contexts

    load_intrinsics(target)

    contexts, weights = extracted_tasks_to_tune_contexts(
        tasks, work_dir=work_dir, seed=seed,
        strategy=ms.search_strategy.EvolutionarySearch(
            population_size=_population(trials_per_task)))
    ms.tune_tasks(
        tasks=contexts, task_weights=weights, work_dir=work_dir,
        max_trials_global=trials_per_task * len(tasks),
        max_trials_per_task=trials_per_task,
        num_trials_per_iter=min(trials_per_task, _MAX_TRIALS_PER_ITER),
        builder=_in_process_builder(),
        runner=runner if runner is not None else make_runner(rpc, timeout_s),
        database=database,
    )


def open_database(work_dir: str) -> Any:
    """The JSON database in ``work_dir`` (created if missing), loaded once per process."""
    # deferred: TVM is a heavy optional import (the tvm extra)
    from tvm.s_tir import meta_schedule as ms

    os.makedirs(work_dir, exist_ok=True)
    return _database(ms, work_dir)


def _database(ms: Any, work_dir: str) -> Any:
    """The JSON database in ``work_dir``, loaded once per process: parsing a whole space's
    records takes seconds, once per compiled model otherwise. Tuning appends to this same
    object, so it stays current (one writer per ``work_dir``, as above)."""
    key = os.path.abspath(work_dir)
    if key not in _DATABASES:
        _DATABASES[key] = ms.database.JSONDatabase(work_dir=work_dir)
    return _DATABASES[key]


def _lowered(mod: Any) -> Any:
    """``mod`` as MetaSchedule extracts its tasks (call inside ``with target``)."""
    # deferred: TVM is a heavy optional import (the tvm extra)
    import tvm
    from tvm import relax

    return tvm.transform.Sequential([
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
        relax.get_pipeline("zero"),
    ])(mod)


def extract_workloads(mod: Any, target: Any) -> dict[str, Any]:
    """MetaSchedule's extracted tasks of relax ``mod`` for ``target`` by workload digest:
    the structural hash of the workload's TIR, in hex, which is how MetaSchedule's
    database tells workloads apart (two models share a workload when they share a
    digest)."""
    # deferred: TVM is a heavy optional import (the tvm extra)
    from tvm.s_tir.meta_schedule.relax_integration import extract_tasks

    with target:
        tasks = extract_tasks(_lowered(mod), target)
    return {workload_digest(task.dispatched[0]): task for task in tasks}


def workload_digest(workload: Any) -> str:
    """A workload's (TIR ``IRModule``'s) structural hash as 16 hex digits."""
    import tvm_ffi  # deferred: tvm_ffi comes with TVM (the tvm extra)

    return f"{tvm_ffi.structural_hash(workload) & (2**64 - 1):016x}"


def workload_keys(mod: Any, target: Any) -> dict[str, str]:
    """The tuning workloads of relax ``mod`` for ``target``: task name by workload digest
    (see :func:`extract_workloads`)."""
    return {digest: task.task_name for digest, task in extract_workloads(mod, target).items()}
