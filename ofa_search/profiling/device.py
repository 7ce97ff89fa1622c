"""``DeviceProfile``: one measurement target — a backend, its settings and the device.

A profile is the key of a device latency table: every entry of a table is measured under
one profile, and :meth:`DeviceProfile.fingerprint` lets later code refuse to mix entries
measured under profiles that would time differently. Profiles are stored as versioned,
allow-listed JSON (:meth:`DeviceProfile.to_dict` / :meth:`DeviceProfile.from_dict`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ofa_search.errors import FileFormatError, OfaSearchError
from ofa_search.profiling.host import llvm_cpu_name, llvm_extra_features, read_cpuinfo
from ofa_search.space import PRECISIONS
from ofa_search.versioning import require_version

SCHEMA_VERSION = 1
BACKENDS: tuple[str, ...] = ("onnxruntime", "tvm", "torch")
GRAPH_OPTIMIZATION_LEVELS: tuple[str, ...] = ("all", "extended", "basic", "disabled")
TORCH_DTYPES: tuple[str, ...] = ("fp32", "fp16", "bf16")
_TORCH_DEVICE_RE = re.compile(r"cpu|cuda(:(0|[1-9][0-9]*))?")

_ID_RE = re.compile(r"[a-z0-9][a-z0-9._-]*")
DEVICE_ID_RULE = ("lower-case letters, digits, '.', '_' and '-', starting with a letter or "
                  "digit, at most 64 characters")


def check_new_device_id(device: str, option: str = "--device") -> str:
    """The id of a table about to be written: a slug (what :class:`DeviceProfile` needs),
    refused (:class:`~ofa_search.errors.OfaSearchError`, naming ``option``) otherwise."""
    if not _ID_RE.fullmatch(device) or len(device) > 64:
        raise OfaSearchError(f"{option} {device!r} is not a valid device id: use "
                             f"{DEVICE_ID_RULE}, e.g. my-cpu")
    return device


_COMMON_KEYS = ("id", "backend", "batch_size", "precisions")
_BACKEND_KEYS: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("execution_provider", "intra_op_threads", "graph_optimization_level"),
    "tvm": ("target", "threads", "tuning_trials", "tuning_db", "rpc_tracker", "rpc_key"),
    "torch": ("threads", "torch_device", "torch_dtype", "cuda_graphs"),
}
_NOT_TIMING_RELEVANT = frozenset({"id", "precisions", "tuning_db", "rpc_tracker"})

TargetValue = str | int | bool | tuple[str, ...]


def default_llvm_target(threads: int, cpuinfo: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The TVM target dict for this host: ``llvm`` with the host's ``mcpu`` when known, and
    the ``mattr`` features it has beyond a generic ``x86-64-vN`` level."""
    info = read_cpuinfo() if cpuinfo is None else cpuinfo
    mcpu = llvm_cpu_name(info)
    target: dict[str, Any] = {"kind": "llvm"}
    if mcpu is not None:
        target["mcpu"] = mcpu
    extra = llvm_extra_features(info)
    if extra:
        target["mattr"] = extra
    target["num-cores"] = threads
    return target


def parse_tracker(address: str) -> tuple[str, int]:
    """``"host:port"`` → ``(host, port)``; raises ``ValueError`` naming ``rpc_tracker``."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"rpc_tracker must be 'host:port' with a port in 1..65535, "
                         f"got {address!r}")
    return host, int(port)


def _positive_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {name}={value!r}")


def _freeze_target(target: Mapping[str, Any], threads: int) -> Mapping[str, TargetValue]:
    if not isinstance(target, Mapping):
        raise ValueError(f"target must be a dict, got {type(target).__name__}")
    frozen: dict[str, TargetValue] = {}
    for key, value in target.items():
        if not isinstance(key, str):
            raise ValueError(f"target keys must be strings, got {key!r}")
        if isinstance(value, list | tuple):
            if not all(isinstance(v, str) for v in value):
                raise ValueError(f"target[{key!r}] must hold strings, got {value!r}")
            frozen[key] = tuple(value)
        elif isinstance(value, str | int):
            frozen[key] = value
        else:
            raise ValueError(f"target[{key!r}] must be a string, integer, boolean or list of "
                             f"strings, got {value!r}")
    if frozen.get("kind") != "llvm":
        raise ValueError(f"target['kind'] must be 'llvm' (CPU targets only), "
                         f"got {frozen.get('kind')!r}")
    cores = frozen.setdefault("num-cores", threads)
    if cores != threads:
        raise ValueError(f"target['num-cores'] must equal threads, got {cores!r} and {threads}")
    return MappingProxyType(frozen)


@dataclass(frozen=True, kw_only=True)
class DeviceProfile:
    """A measurement target. Keyword-only; validated on construction (``ValueError``).

    Common attributes:
        id: file-name-safe slug, ``[a-z0-9][a-z0-9._-]*``, e.g. ``cpu-ort-1t``.
        backend: ``"onnxruntime"``, ``"tvm"`` or ``"torch"``.
        batch_size: batch size of every measured input.
        precisions: precisions the device's table covers (``fp32``, ``int8``, ``binary``).

    ONNX Runtime only: ``execution_provider``, ``intra_op_threads`` (inter-op is always 1)
    and ``graph_optimization_level`` (``all``, ``extended``, ``basic``, ``disabled``).

    TVM only: ``target`` (an ``llvm`` target dict; defaults to this host's CPU, and must be
    given for a remote device), ``threads`` (equal to ``target["num-cores"]``),
    ``tuning_trials`` (MetaSchedule trials per distinct workload; 0 = untuned),
    ``tuning_db`` (a tuning database folder reused across runs; needs ``tuning_trials``),
    ``rpc_tracker`` (``"host:port"`` of a TVM RPC tracker) and ``rpc_key`` (the device key
    registered there; required with, and only with, ``rpc_tracker``).

    PyTorch (the ONNX graph run by torch ops; see
    :mod:`ofa_search.profiling.backends.torch_backend`): ``threads`` (shared with TVM;
    ``torch.set_num_threads`` while it runs) and, for it only, ``torch_device``
    (``"cpu"``, ``"cuda"`` or ``"cuda:N"``), ``torch_dtype`` (``fp32``, ``bf16``, or
    ``fp16`` on a cuda device) and ``cuda_graphs`` (time CUDA-graph replays; a cuda device
    only).

    Options of another backend must stay at their defaults.
    """

    id: str
    backend: str
    batch_size: int = 1
    precisions: tuple[str, ...] = ("fp32",)
    execution_provider: str = "CPUExecutionProvider"
    intra_op_threads: int = 1
    graph_optimization_level: str = "all"
    target: Mapping[str, TargetValue] | None = dataclasses.field(default=None, hash=False)
    threads: int = 1
    tuning_trials: int = 0
    tuning_db: str | None = None
    rpc_tracker: str | None = None
    rpc_key: str | None = None
    torch_device: str = "cpu"
    torch_dtype: str = "fp32"
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if not isinstance(self.id, str) or not _ID_RE.fullmatch(self.id) or len(self.id) > 64:
            raise ValueError("id must be a slug matching [a-z0-9][a-z0-9._-]* of at most 64 "
                             f"characters, got {self.id!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        _positive_int("batch_size", self.batch_size, 1)
        if isinstance(self.precisions, str) or not isinstance(self.precisions, Sequence):
            raise ValueError(f"precisions must be a sequence of names, got {self.precisions!r}")
        set_(self, "precisions", tuple(self.precisions))
        if not self.precisions or len(set(self.precisions)) != len(self.precisions):
            raise ValueError(f"precisions must be non-empty and unique, got {self.precisions}")
        for precision in self.precisions:
            if precision not in PRECISIONS:
                raise ValueError(f"precisions must be among {PRECISIONS}, got {precision!r}")
        if not isinstance(self.execution_provider, str) or not self.execution_provider:
            raise ValueError(f"execution_provider must be a non-empty string, "
                             f"got {self.execution_provider!r}")
        _positive_int("intra_op_threads", self.intra_op_threads, 1)
        if self.graph_optimization_level not in GRAPH_OPTIMIZATION_LEVELS:
            raise ValueError(f"graph_optimization_level must be one of "
                             f"{GRAPH_OPTIMIZATION_LEVELS}, got {self.graph_optimization_level!r}")
        _positive_int("threads", self.threads, 1)
        _positive_int("tuning_trials", self.tuning_trials, 0)
        if self.tuning_db is not None:
            if not isinstance(self.tuning_db, str | os.PathLike) or not os.fspath(self.tuning_db):
                raise ValueError(f"tuning_db must be a path or None, got {self.tuning_db!r}")
            set_(self, "tuning_db", os.fspath(self.tuning_db))
            if self.tuning_trials == 0:
                raise ValueError("tuning_db needs tuning_trials > 0 (0 means untuned)")
        if self.rpc_tracker is not None:
            parse_tracker(str(self.rpc_tracker))
        if (self.rpc_tracker is None) != (self.rpc_key is None):
            raise ValueError("rpc_tracker and rpc_key must be given together, got "
                             f"rpc_tracker={self.rpc_tracker!r}, rpc_key={self.rpc_key!r}")
        if self.rpc_key is not None and (not isinstance(self.rpc_key, str) or not self.rpc_key):
            raise ValueError(f"rpc_key must be a non-empty string, got {self.rpc_key!r}")
        self._check_torch_options()
        self._check_other_backend_defaults()
        if self.backend == "tvm":
            if self.target is None and self.rpc_tracker is not None:
                raise ValueError("target is required with rpc_tracker: the remote device's "
                                 "CPU is not this host's")
            target = default_llvm_target(self.threads) if self.target is None else self.target
            set_(self, "target", _freeze_target(target, self.threads))

    def _check_torch_options(self) -> None:
        if not isinstance(self.torch_device, str) \
                or not _TORCH_DEVICE_RE.fullmatch(self.torch_device):
            raise ValueError(f"torch_device must be 'cpu', 'cuda' or 'cuda:N', "
                             f"got {self.torch_device!r}")
        if self.torch_dtype not in TORCH_DTYPES:
            raise ValueError(f"torch_dtype must be one of {TORCH_DTYPES}, "
                             f"got {self.torch_dtype!r}")
        if not isinstance(self.cuda_graphs, bool):
            raise ValueError(f"cuda_graphs must be true or false, got {self.cuda_graphs!r}")
        on_cpu = self.torch_device == "cpu"
        if on_cpu and self.torch_dtype == "fp16":
            raise ValueError("torch_dtype='fp16' needs a cuda torch_device (use bf16 on the "
                             "CPU)")
        if on_cpu and self.cuda_graphs:
            raise ValueError("cuda_graphs=True needs a cuda torch_device, got "
                             "torch_device='cpu'")

    def _check_other_backend_defaults(self) -> None:
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        own = set(_BACKEND_KEYS[self.backend])
        for name in dict.fromkeys(k for keys in _BACKEND_KEYS.values() for k in keys):
            if name in own or getattr(self, name) == defaults[name]:
                continue
            owners = " or ".join(repr(b) for b in BACKENDS if name in _BACKEND_KEYS[b])
            raise ValueError(f"{name}={getattr(self, name)!r} applies only to "
                             f"backend={owners}, not {self.backend!r}")

    @property
    def num_threads(self) -> int:
        """Worker threads of the backend (``intra_op_threads`` or ``threads``)."""
        return self.intra_op_threads if self.backend == "onnxruntime" else self.threads

    @property
    def is_remote(self) -> bool:
        """Whether measurements run on a device reached through a TVM RPC tracker."""
        return self.rpc_tracker is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with ``schema_version`` and the keys of this profile's backend."""
        data: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
        for name in (*_COMMON_KEYS, *_BACKEND_KEYS[self.backend]):
            value = getattr(self, name)
            if name == "precisions":
                value = list(value)
            elif name == "target" and value is not None:
                value = {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}
            data[name] = value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeviceProfile:
        """Inverse of :meth:`to_dict`; raises :class:`FileFormatError` for anything else.

        Unknown schema versions, unknown or misplaced keys and invalid values are errors,
        never silently dropped or defaulted.
        """
        if not isinstance(data, Mapping):
            raise FileFormatError(f"a device profile must be a JSON object, "
                                  f"got {type(data).__name__}")
        require_version(data, key="schema_version", expected=SCHEMA_VERSION,
                        what="device profile")
        backend = data.get("backend")
        if backend not in BACKENDS:
            raise FileFormatError(f"device profile backend must be one of {BACKENDS}, "
                                  f"got {backend!r}")
        allowed = {"schema_version", *_COMMON_KEYS, *_BACKEND_KEYS[backend]}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise FileFormatError(f"unknown keys in device profile for backend {backend!r}: "
                                  f"{unknown}; allowed: {sorted(allowed)}")
        kwargs = {k: v for k, v in data.items() if k != "schema_version"}
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise FileFormatError(f"invalid device profile: {exc}") from exc

    def fingerprint(self) -> str:
        """A stable hex digest of every setting that affects timings.

        Excluded: ``id`` (a name), ``precisions`` (which tables exist, not how one entry
        times), ``tuning_db`` and ``rpc_tracker`` (where things are, not what is measured).
        Package versions and the host are not part of a profile; tables record them apart.
        """
        relevant = {k: v for k, v in self.to_dict().items() if k not in _NOT_TIMING_RELEVANT}
        text = json.dumps(relevant, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def replace(self, **changes: Any) -> DeviceProfile:
        """A validated copy with ``changes`` (``dataclasses.replace``).

        Changing ``threads`` without passing ``target`` moves ``target["num-cores"]`` along.
        """
        if "threads" in changes and "target" not in changes and self.target is not None:
            changes["target"] = {**self.target, "num-cores": changes["threads"]}
        return dataclasses.replace(self, **changes)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickle (and deepcopy) through the validated JSON form.
        return (_profile_from_dict, (self.to_dict(),))

    @classmethod
    def local_onnxruntime(cls, threads: int = 1, *, id: str | None = None,
                          graph_optimization_level: str = "all",
                          execution_provider: str = "CPUExecutionProvider",
                          batch_size: int = 1) -> DeviceProfile:
        """ONNX Runtime on this host, e.g. ``cpu-ort-1t`` (CPU) or, with
        ``execution_provider="CUDAExecutionProvider"``, its GPU."""
        return cls(id=id or f"cpu-ort-{threads}t", backend="onnxruntime",
                   intra_op_threads=threads, graph_optimization_level=graph_optimization_level,
                   execution_provider=execution_provider, batch_size=batch_size)

    @classmethod
    def local_torch(cls, threads: int = 1, *, device: str = "cpu", dtype: str = "fp32",
                    cuda_graphs: bool = False, id: str | None = None,
                    batch_size: int = 1) -> DeviceProfile:
        """PyTorch on this host's CPU or one of its GPUs, e.g. ``cpu-torch-1t``,
        ``cpu-torch-1t-bf16`` or ``cuda0-torch-fp16-graphs``."""
        if id is None:
            where = f"cpu-torch-{threads}t" if device == "cpu" else \
                f"{device.replace(':', '')}-torch"
            suffix = "" if dtype == "fp32" and device == "cpu" else f"-{dtype}"
            id = f"{where}{suffix}{'-graphs' if cuda_graphs else ''}"
        return cls(id=id, backend="torch", threads=threads, torch_device=device,
                   torch_dtype=dtype, cuda_graphs=cuda_graphs, batch_size=batch_size)

    @classmethod
    def local_tvm(cls, threads: int = 1, *, tuning_trials: int = 0,
                  tuning_db: str | os.PathLike[str] | None = None,
                  id: str | None = None) -> DeviceProfile:
        """TVM for this host's CPU, e.g. ``cpu-tvm-1t`` or ``cpu-tvm-1t-ms64`` when tuned."""
        suffix = f"-ms{tuning_trials}" if tuning_trials else ""
        return cls(id=id or f"cpu-tvm-{threads}t{suffix}", backend="tvm", threads=threads,
                   tuning_trials=tuning_trials,
                   tuning_db=None if tuning_db is None else os.fspath(tuning_db))

    @classmethod
    def remote_tvm(cls, *, id: str, tracker: str, key: str, target: Mapping[str, Any],
                   threads: int = 1, tuning_trials: int = 0,
                   tuning_db: str | os.PathLike[str] | None = None) -> DeviceProfile:
        """TVM on a device registered as ``key`` at the RPC tracker ``"host:port"``."""
        return cls(id=id, backend="tvm", target=target, threads=threads,
                   tuning_trials=tuning_trials,
                   tuning_db=None if tuning_db is None else os.fspath(tuning_db),
                   rpc_tracker=tracker, rpc_key=key)


def _profile_from_dict(data: Mapping[str, Any]) -> DeviceProfile:
    return DeviceProfile.from_dict(data)
