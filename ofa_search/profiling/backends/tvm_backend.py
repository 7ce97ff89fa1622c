"""Apache TVM (Relax) latency backend: on this host, or on a device behind an RPC tracker.

ONNX → ``relax.frontend.onnx.from_onnx`` → (MetaSchedule when ``tuning_trials > 0``) →
``tvm.compile`` → ``relax.VirtualMachine``. Remote profiles export the compiled library,
upload it through the tracker's session and run the VM on ``remote.cpu()``. Timings come
from the VM's ``time_evaluator`` (C++ clock, on the device itself), driven by the adaptive
loop of :mod:`ofa_search.profiling.timing`.
"""

from __future__ import annotations

import gc
import os
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

from ofa_search.cpuinfo import configure_tvm_pool
from ofa_search.profiling.backends.base import (
    BackendUnavailableError,
    Inputs,
    LatencyBackend,
    LoadedModel,
    check_inputs,
    import_backend_package,
)
from ofa_search.profiling.backends.tvm_tuning import tune_and_apply
from ofa_search.profiling.device import DeviceProfile, parse_tracker
from ofa_search.profiling.host import cpu_flags, read_cpuinfo, usable_cores
from ofa_search.profiling.timing import TimingConfig, TimingStats, time_sampler

_ISA_FEATURES = {"avx2": "avx2", "fma": "fma", "avx512f": "avx512f", "avx512bw": "avx512bw",
                 "avx512vl": "avx512vl", "avx512vnni": "avx512_vnni",
                 "avx512vpopcntdq": "avx512_vpopcntdq"}
"""LLVM feature name → /proc/cpuinfo flag, for the instruction sets tuned kernels use."""
_PIP = "'ofa-search[tvm]'"  # the extra (ofa_search/extras.py)


def _configure_threads(config_threadpool: Any, num_threads: Any, threads: int,
                       where: str) -> None:
    configure_tvm_pool(config_threadpool, threads)  # TVM pins the configuring thread
    got = int(num_threads())
    if got != threads:
        raise BackendUnavailableError(
            f"TVM's thread pool {where} runs {got} thread(s), the profile asks for {threads}; "
            f"TVM fixes its maximum when the pool starts: set TVM_NUM_THREADS>={threads} "
            "in that process's environment before it first runs TVM code"
        )


def _to_numpy(tvm: Any, out: Any) -> list[np.ndarray]:
    if isinstance(out, tvm.runtime.Tensor):
        return [out.numpy()]
    arrays: list[np.ndarray] = []
    for item in out:
        arrays.extend(_to_numpy(tvm, item))
    return arrays


class _TvmModel(LoadedModel):
    """A compiled model in a VM on a (local or remote) CPU device."""

    def __init__(self, tvm: Any, vm: Any, device: Any, input_names: tuple[str, ...],
                 configure_threads: Callable[[], None], timing: TimingConfig,
                 keepalive: tuple[Any, ...]) -> None:
        self._tvm = tvm
        self._vm = vm
        self._device = device
        self.input_names = input_names
        self._configure_threads = configure_threads
        self._timing = timing
        self._keepalive = keepalive  # the RPC session and remote library, while in use

    def _arguments(self, inputs: Inputs) -> list[Any]:
        arrays = check_inputs(self.input_names, inputs)
        return [self._tvm.runtime.tensor(a, self._device) for a in arrays.values()]

    def run(self, inputs: Inputs) -> list[np.ndarray]:
        self._configure_threads()
        # The stateful API fetches tuple outputs field by field, which also works over RPC.
        self._vm.set_input("main", *self._arguments(inputs))
        self._vm.invoke_stateful("main")
        return _to_numpy(self._tvm, self._vm.get_outputs("main"))

    def measure(self, inputs: Inputs) -> TimingStats:
        self._configure_threads()
        args = self._arguments(inputs)
        vm, device = self._vm, self._device

        def sample(number: int, repeat: int) -> list[float]:
            evaluator = vm.time_evaluator("main", device, number=number, repeat=repeat)
            return [float(s) for s in evaluator(*args).results]

        return time_sampler(sample, self._timing)

    def close(self) -> None:
        # Drop every handle into the session (VM, device, remote thread-pool functions), so
        # that an RPC device is free for the next session at once.
        remote, self._keepalive = bool(self._keepalive), ()
        self._vm = self._device = None
        self._configure_threads = _closed
        if remote:  # TVM's FFI objects sit in reference cycles that hold the session
            gc.collect()


def _closed() -> None:
    raise RuntimeError("this TVM model was closed")


class TvmBackend(LatencyBackend):
    """TVM for ``profile.target`` with ``profile.threads`` threads, locally or over RPC.

    Threads: TVM caps its thread pool by ``TVM_NUM_THREADS`` when the pool first starts in
    a process. This backend sets ``TVM_NUM_THREADS`` (when unset) to the larger of the
    profile's threads and this host's usable cores, then selects exactly
    ``profile.threads`` with ``runtime.config_threadpool`` before each run — locally, or in
    the RPC server's process, whose environment is its launcher's business.

    Tuning (``profile.tuning_trials > 0``) runs MetaSchedule per untuned workload into
    ``profile.tuning_db`` (a temporary folder when None), measuring candidates where the
    profile runs (this host, or the RPC device). It takes minutes, not seconds.
    """

    name = "tvm"

    def __init__(self, profile: DeviceProfile, *, timing: TimingConfig | None = None,
                 tuning_timeout_s: float = 300.0) -> None:
        super().__init__(profile, timing=timing)
        self._tvm = import_backend_package("tvm", backend=self.name, pip=_PIP)
        import_backend_package("tvm.relax.frontend.onnx", backend=self.name, pip=_PIP)
        self._tuning_timeout_s = tuning_timeout_s
        self._check_mcpu()
        if not profile.is_remote:
            os.environ.setdefault("TVM_NUM_THREADS", str(max(profile.threads, usable_cores())))

    @property
    def max_prepared(self) -> int | None:
        """One over RPC (a device serves one session at a time); five when tuning (each
        model may take minutes to tune, and a table is saved after each chunk); else no
        limit."""
        if self.profile.is_remote:
            return 1
        return 5 if self.profile.tuning_trials else None

    def versions(self) -> dict[str, str]:
        llvm = self._tvm.target.codegen.llvm_version_major()
        return {"tvm": str(self._tvm.__version__), "llvm": str(llvm)}

    def _check_mcpu(self) -> None:
        # TVM accepts an unknown mcpu silently and then emits generic code: refuse it here.
        target = self.profile.target or {}
        mcpu = target.get("mcpu")
        if not isinstance(mcpu, str):
            return
        codegen = self._tvm.target.codegen
        triple = target.get("mtriple")
        triple = triple if isinstance(triple, str) else codegen.llvm_get_system_triple()
        if not codegen.llvm_is_valid_cpu(mcpu, triple):
            raise ValueError(
                f"target mcpu {mcpu!r} of profile {self.profile.id!r} is unknown to LLVM "
                f"{codegen.llvm_version_major()} for {triple!r}"
            )

    def _check_host_runs(self) -> None:
        """Code built for the profile's target must run on this host before it is loaded: a
        table tuned on an AVX-512 CPU would otherwise stop the process with an illegal
        instruction on one without it (tuning databases can still be packed and merged)."""
        flags = cpu_flags(read_cpuinfo())
        mcpu = (self.profile.target or {}).get("mcpu")
        if not flags or not isinstance(mcpu, str):
            return  # nothing to compare (no /proc/cpuinfo, or a generic target)
        target = self.target()
        missing = [flag for llvm_name, flag in _ISA_FEATURES.items()
                   if self._tvm.target.codegen.target_has_features(llvm_name, target)
                   and flag not in flags]
        if missing:
            raise BackendUnavailableError(
                f"profile {self.profile.id!r} targets mcpu {mcpu!r}, whose code uses "
                f"{', '.join(missing)}, which this host lacks: it cannot run here; profile "
                f"this host with `ofa-search profile --backend tvm` (target detected from it)")

    def _rpc(self) -> tuple[str, int, str] | None:
        if self.profile.rpc_tracker is None or self.profile.rpc_key is None:
            return None
        host, port = parse_tracker(self.profile.rpc_tracker)
        return host, port, self.profile.rpc_key

    def target(self) -> Any:
        """The profile's ``tvm.target.Target``."""
        if self.profile.target is None:
            raise ValueError(f"profile {self.profile.id!r} has no target")
        return self._tvm.target.Target({k: list(v) if isinstance(v, tuple) else v
                                        for k, v in self.profile.target.items()})

    def relax_module(self, model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> Any:
        """``model`` imported into a relax ``IRModule`` for these input shapes and dtypes."""
        # deferred: TVM is a heavy optional import (the tvm extra)
        from tvm.relax.frontend.onnx import from_onnx

        return from_onnx(model, shape_dict={k: list(v.shape) for k, v in inputs.items()},
                         dtype_dict={k: str(v.dtype) for k, v in inputs.items()})

    def compile(self, model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> Any:
        """The ``tvm.compile`` executable of ``model`` for these input shapes and dtypes."""
        tvm = self._tvm
        mod = self.relax_module(model, inputs)
        target = self.target()
        if self.profile.tuning_trials > 0:
            with tempfile.TemporaryDirectory(prefix="ofa-tvm-tuning-") as scratch:
                mod = tune_and_apply(
                    mod, target, trials_per_task=self.profile.tuning_trials,
                    work_dir=self.profile.tuning_db or scratch, rpc=self._rpc(),
                    timeout_s=self._tuning_timeout_s,
                    keep_loaded=self.profile.tuning_db is not None)
        return tvm.compile(mod, target)

    def _load(self, model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> LoadedModel:
        rpc = self._rpc()
        remote = None if rpc is None else self._connect(rpc)  # fail fast, before compiling
        if remote is None:
            self._check_host_runs()
        executable = self.compile(model, inputs)
        names = tuple(inputs)
        if remote is None:
            return self._load_local(executable, names)
        return self._load_remote(executable, names, remote)

    def _load_local(self, executable: Any, names: tuple[str, ...]) -> LoadedModel:
        tvm = self._tvm
        device = tvm.cpu()
        vm = tvm.relax.VirtualMachine(executable, device)
        config = tvm.get_global_func("runtime.config_threadpool")
        count = tvm.get_global_func("runtime.NumThreads")
        threads = self.profile.threads

        def configure() -> None:
            _configure_threads(config, count, threads, "of this process")

        return _TvmModel(tvm, vm, device, names, configure, self.timing, keepalive=())

    def _connect(self, rpc: tuple[str, int, str]) -> Any:
        """A session with the device registered as ``key`` at the tracker."""
        from tvm import rpc as tvm_rpc  # deferred: TVM is a heavy optional import (the tvm extra)

        host, port, key = rpc
        try:
            tracker = tvm_rpc.connect_tracker(host, port)
            keys = set(tracker.summary().get("queue_info", {}))
        except (OSError, RuntimeError) as exc:
            raise BackendUnavailableError(
                f"cannot reach the TVM RPC tracker at {host}:{port}: {exc}") from exc
        if key not in keys:
            raise BackendUnavailableError(
                f"no device with key {key!r} is registered at the TVM RPC tracker "
                f"{host}:{port}; registered keys: {sorted(keys)}")
        return tracker.request(key, session_timeout=0)

    def _load_remote(self, executable: Any, names: tuple[str, ...], remote: Any) -> LoadedModel:
        tvm = self._tvm
        with tempfile.TemporaryDirectory(prefix="ofa-tvm-rpc-") as scratch:
            path = os.path.join(scratch, "model.so")
            executable.export_library(path)
            remote.upload(path)
        library = remote.load_module("model.so")
        device = remote.cpu()
        vm = tvm.relax.VirtualMachine(library, device)
        config = remote.get_function("runtime.config_threadpool")
        count = remote.get_function("runtime.NumThreads")
        threads = self.profile.threads
        key = self.profile.rpc_key

        def configure() -> None:
            _configure_threads(config, count, threads, f"of RPC device {key!r}")

        return _TvmModel(tvm, vm, device, names, configure, self.timing,
                         keepalive=(remote, library))
