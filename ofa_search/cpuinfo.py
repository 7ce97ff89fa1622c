"""This host's ``/proc/cpuinfo``: the first processor block and its feature flags; and
:func:`kept_affinity` and :func:`configure_tvm_pool`, which keep TVM's thread-pool setup
from pinning the caller to one core.

A core module (no third-party imports), so that the lowest layers (ONNX Runtime's session
options, :mod:`ofa_search.ort_options`) can ask for CPU flags;
:mod:`ofa_search.profiling.host` builds its host records on it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

TVM_AFFINITY_BIG_CORES = 1
"""TVM's ``ThreadGroup::AffinityMode::kBig``: the pool's threads on the big cores."""


def read_cpuinfo(text: str | None = None) -> dict[str, str]:
    """The first processor block of ``/proc/cpuinfo`` (or of ``text``) as lower-case keys.

    Returns an empty dict where the file does not exist (macOS, Windows).
    """
    if text is None:
        path = Path("/proc/cpuinfo")
        if not path.is_file():
            return {}
        text = path.read_text(encoding="utf-8", errors="replace")
    info: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if info:
                break
            continue
        key, sep, value = line.partition(":")
        if sep:
            info.setdefault(key.strip().lower(), value.strip())
    return info


def cpu_flags(cpuinfo: Mapping[str, str]) -> frozenset[str]:
    """The CPU feature flags (``flags`` on x86, ``features`` on Arm)."""
    return frozenset((cpuinfo.get("flags") or cpuinfo.get("features") or "").split())


@contextlib.contextmanager
def kept_affinity() -> Iterator[None]:
    """Restore the calling thread's CPU affinity on exit. TVM pins the thread that
    configures its pool (``runtime.config_threadpool``) to one core; every thread pool
    that thread creates later (ONNX Runtime's, PyTorch's, a DataLoader's workers) would
    inherit that one core. A no-op where the OS has no affinity (macOS, Windows)."""
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        yield
    finally:
        if affinity is not None:
            os.sched_setaffinity(0, affinity)


def configure_tvm_pool(config_threadpool: Callable[..., Any], threads: int) -> None:
    """Ask a TVM thread pool (``runtime.config_threadpool``, local or over RPC) for
    ``threads`` threads on the big cores, keeping the caller's CPU affinity."""
    with kept_affinity():
        config_threadpool(TVM_AFFINITY_BIG_CORES, threads)
