"""What machine is this? CPU model and features, OS and package versions.

Everything here reads ``/proc/cpuinfo``, :mod:`platform` and installed package metadata; it
imports none of the heavy packages it reports on, so it is cheap to call before profiling.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from importlib import metadata
from typing import Any

from ofa_search.cpuinfo import cpu_flags, read_cpuinfo

FLAGS_OF_INTEREST: tuple[str, ...] = ("avx2", "avx512f", "avx512_vnni", "avx512_vpopcntdq")
"""CPU flags that change which kernels the backends can emit (fp32 SIMD, int8, popcount)."""

_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"),
    "tvm": ("apache-tvm", "tvm"),
}

# Intel family 6 model numbers → LLVM CPU names (checked against LLVM in the tests).
_INTEL_FAMILY6: dict[int, str] = {
    63: "haswell", 79: "broadwell", 85: "skylake-avx512", 106: "icelake-server",
    108: "icelake-server", 140: "tigerlake", 141: "tigerlake", 142: "skylake",
    143: "sapphirerapids", 151: "alderlake", 154: "alderlake", 158: "skylake",
    165: "skylake", 170: "meteorlake", 173: "graniterapids", 174: "graniterapids",
    183: "raptorlake", 186: "raptorlake", 191: "raptorlake", 207: "emeraldrapids",
}


def llvm_cpu_name(cpuinfo: Mapping[str, str]) -> str | None:
    """The LLVM ``-mcpu`` name that fits this x86 CPU, or ``None`` when nothing fits.

    Known vendor/family/model triples map to their micro-architecture (``znver5``,
    ``emeraldrapids``…); other x86 CPUs fall back to the x86-64 micro-architecture level
    their flags allow (``x86-64-v4`` for AVX-512, ``-v3`` for AVX2, ``-v2``). Non-x86 CPUs
    give ``None``: use a generic target or name the CPU explicitly.
    """
    flags = cpu_flags(cpuinfo)
    vendor = cpuinfo.get("vendor_id", "")
    try:
        family = int(cpuinfo.get("cpu family", ""))
        model = int(cpuinfo.get("model", ""))
    except ValueError:
        family = model = -1
    if vendor == "AuthenticAMD":
        if family == 26:
            return "znver5"
        if family == 25:
            return "znver4" if "avx512f" in flags else "znver3"
        if family == 23:
            return "znver2" if model >= 0x30 else "znver1"
    if vendor == "GenuineIntel" and family == 6 and model in _INTEL_FAMILY6:
        name = _INTEL_FAMILY6[model]
        if name == "skylake-avx512" and "avx512_vnni" in flags:
            return "cascadelake"
        return name
    if {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"} <= flags:
        return "x86-64-v4"
    if {"avx2", "bmi2", "fma", "movbe"} <= flags:
        return "x86-64-v3"
    if {"sse4_2", "popcnt", "ssse3"} <= flags:
        return "x86-64-v2"
    return None


_BEYOND_X86_64_V4 = {"avx512_vnni": "+avx512vnni", "avx512_vpopcntdq": "+avx512vpopcntdq",
                     "avx512_bitalg": "+avx512bitalg", "avx512_vbmi": "+avx512vbmi",
                     "avx512_vbmi2": "+avx512vbmi2", "avx_vnni": "+avxvnni"}
"""/proc/cpuinfo flag → LLVM feature, for the int8 and popcount instructions that no
``x86-64-vN`` level includes."""


def llvm_extra_features(cpuinfo: Mapping[str, str]) -> list[str]:
    """LLVM ``-mattr`` features this CPU has beyond the ``x86-64-vN`` level that
    :func:`llvm_cpu_name` falls back to (VNNI, VPOPCNTDQ, BITALG, VBMI): without them a
    CPU with no known model name gets no dot-product or vector popcount instructions.
    Empty when :func:`llvm_cpu_name` names a micro-architecture (it implies its own)."""
    name = llvm_cpu_name(cpuinfo)
    if name is None or not name.startswith("x86-64-v"):
        return []
    flags = cpu_flags(cpuinfo)
    return sorted(feature for flag, feature in _BEYOND_X86_64_V4.items() if flag in flags)


def known_llvm_cpu_names() -> frozenset[str]:
    """Every name :func:`llvm_cpu_name` can return."""
    return frozenset({*_INTEL_FAMILY6.values(), "cascadelake", "x86-64-v2", "x86-64-v3",
                      "x86-64-v4", "znver1", "znver2", "znver3", "znver4", "znver5"})


def package_versions() -> dict[str, str | None]:
    """Installed versions of torch, onnx, onnxruntime and tvm; ``None`` where missing."""
    versions: dict[str, str | None] = {}
    for name, distributions in _DISTRIBUTIONS.items():
        versions[name] = None
        for dist in distributions:
            try:
                versions[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return versions


def usable_cores() -> int:
    """Logical cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def gpu_info(nvml: Any = None) -> list[dict[str, Any]]:
    """The NVIDIA GPUs of this host as NVML reports them, for recording next to GPU
    measurements: name, driver, SM and memory clocks (current and maximum, MHz), whether
    the application clocks are pinned, temperature (°C), power draw and limit (W) and the
    active clock-throttle reasons (a bit mask; 0: none). Empty when ``nvidia-ml-py`` (the
    ``gpu`` extra) is not installed or no NVIDIA driver answers.

    ``nvml`` is the ``pynvml`` module (imported here by default).
    """
    if nvml is None:
        try:
            import pynvml  # deferred: optional (extra 'gpu'), GPU hosts only
        except ImportError:
            return []
        nvml = pynvml
    try:
        nvml.nvmlInit()
    except Exception:  # no driver or library: NVMLError and OSError subclasses
        return []
    try:
        driver = nvml.nvmlSystemGetDriverVersion()
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            sm, mem = nvml.NVML_CLOCK_SM, nvml.NVML_CLOCK_MEM
            gpus.append({
                "index": index,
                "name": _text(nvml.nvmlDeviceGetName(handle)),
                "driver": _text(driver),
                "sm_clock_mhz": nvml.nvmlDeviceGetClockInfo(handle, sm),
                "sm_clock_max_mhz": nvml.nvmlDeviceGetMaxClockInfo(handle, sm),
                "mem_clock_mhz": nvml.nvmlDeviceGetClockInfo(handle, mem),
                "app_sm_clock_mhz": nvml.nvmlDeviceGetApplicationsClock(handle, sm),
                "temperature_c": nvml.nvmlDeviceGetTemperature(
                    handle, nvml.NVML_TEMPERATURE_GPU),
                "power_w": nvml.nvmlDeviceGetPowerUsage(handle) / 1000,
                "power_limit_w": nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000,
                "throttle_reasons": int(
                    nvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle)),
            })
        return gpus
    except Exception:  # a query this GPU or driver does not support: report none
        return []
    finally:
        nvml.nvmlShutdown()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def host_info() -> dict[str, Any]:
    """A JSON-ready description of this host, for recording next to measurements.

    Keys: ``cpu_model``, ``cpu_vendor``, ``logical_cores``, ``usable_cores``, ``cpu_flags``
    (each of :data:`FLAGS_OF_INTEREST` → bool), ``llvm_cpu``, ``os``, ``machine``,
    ``python``, ``versions`` (see :func:`package_versions`) and ``gpus`` (see
    :func:`gpu_info`).
    """
    cpuinfo = read_cpuinfo()
    flags = cpu_flags(cpuinfo)
    return {
        "cpu_model": cpuinfo.get("model name") or platform.processor() or None,
        "cpu_vendor": cpuinfo.get("vendor_id"),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "cpu_flags": {flag: flag in flags for flag in FLAGS_OF_INTEREST},
        "llvm_cpu": llvm_cpu_name(cpuinfo),
        "os": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "versions": package_versions(),
        "gpus": gpu_info(),
    }
