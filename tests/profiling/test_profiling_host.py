from __future__ import annotations

import json

import pytest

from ofa_search.profiling import host_info
from ofa_search.profiling.host import (
    FLAGS_OF_INTEREST,
    known_llvm_cpu_names,
    llvm_cpu_name,
    llvm_extra_features,
    read_cpuinfo,
)

AVX512 = "sse4_2 popcnt ssse3 avx2 bmi2 fma movbe avx512f avx512bw avx512cd avx512dq avx512vl"
CPUINFO = f"""processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC 9005
flags\t\t: {AVX512} avx512_vnni

processor\t: 1
vendor_id\t: GenuineIntel
"""


def cpu(vendor: str, family: int, model: int, flags: str = AVX512) -> dict[str, str]:
    return {"vendor_id": vendor, "cpu family": str(family), "model": str(model), "flags": flags}


def test_read_cpuinfo_takes_the_first_processor() -> None:
    info = read_cpuinfo(CPUINFO)
    assert info["vendor_id"] == "AuthenticAMD" and info["model name"] == "AMD EPYC 9005"
    assert "avx512_vnni" in info["flags"].split()


@pytest.mark.parametrize(("info", "expected"), [
    (cpu("AuthenticAMD", 26, 2), "znver5"),
    (cpu("AuthenticAMD", 25, 17), "znver4"),
    (cpu("AuthenticAMD", 25, 1, "avx2 bmi2 fma movbe"), "znver3"),
    (cpu("AuthenticAMD", 23, 49), "znver2"),
    (cpu("GenuineIntel", 6, 207), "emeraldrapids"),
    (cpu("GenuineIntel", 6, 85, AVX512), "skylake-avx512"),
    (cpu("GenuineIntel", 6, 85, AVX512 + " avx512_vnni"), "cascadelake"),
    (cpu("GenuineIntel", 6, 250), "x86-64-v4"),
    (cpu("HygonGenuine", 24, 1, "sse4_2 popcnt ssse3 avx2 bmi2 fma movbe"), "x86-64-v3"),
    (cpu("GenuineIntel", 6, 250, "sse4_2 popcnt ssse3"), "x86-64-v2"),
    ({"features": "fp asimd", "cpu part": "0xd08"}, None),
    ({}, None),
])
def test_llvm_cpu_name(info: dict[str, str], expected: str | None) -> None:
    assert llvm_cpu_name(info) == expected


@pytest.mark.parametrize(("info", "expected"), [
    # an Intel model missing from the table (a VM's "Intel Xeon Processor", model 167):
    # the generic level, plus the dot-product and popcount features it has
    (cpu("GenuineIntel", 6, 167, AVX512 + " avx512_vnni avx512_vpopcntdq avx512_bitalg"),
     ["+avx512bitalg", "+avx512vnni", "+avx512vpopcntdq"]),
    (cpu("GenuineIntel", 6, 250), []),
    # a named micro-architecture implies its features
    (cpu("GenuineIntel", 6, 207, AVX512 + " avx512_vnni avx512_vpopcntdq"), []),
    (cpu("AuthenticAMD", 25, 17, AVX512 + " avx512_vnni"), []),
    ({}, []),
])
def test_llvm_extra_features(info: dict[str, str], expected: list[str]) -> None:
    assert llvm_extra_features(info) == expected


def test_every_cpu_name_is_known_to_llvm() -> None:
    codegen = pytest.importorskip("tvm.target.codegen")
    unknown = [name for name in sorted(known_llvm_cpu_names())
               if not codegen.llvm_is_valid_cpu(name, "x86_64-linux-gnu")]
    assert unknown == []


def test_host_info_is_json_ready_and_complete() -> None:
    info = json.loads(json.dumps(host_info()))
    assert set(info) == {"cpu_model", "cpu_vendor", "logical_cores", "usable_cores",
                         "cpu_flags", "llvm_cpu", "os", "machine", "python", "versions",
                         "gpus"}
    assert set(info["cpu_flags"]) == set(FLAGS_OF_INTEREST)
    assert all(isinstance(v, bool) for v in info["cpu_flags"].values())
    assert info["logical_cores"] >= info["usable_cores"] >= 1
    assert set(info["versions"]) == {"torch", "onnx", "onnxruntime", "tvm"}
    assert info["versions"]["onnx"]  # a hard dependency: always installed


def test_gpu_info_is_empty_without_a_driver_and_shaped_with_one() -> None:
    """Here NVML finds no driver (no GPU): nothing is recorded. A stand-in for NVML's
    Python binding (the real one needs a GPU) checks the recorded fields."""
    from types import SimpleNamespace

    from ofa_search.profiling.host import gpu_info

    pytest.importorskip("pynvml")
    assert gpu_info() == [] or all("sm_clock_mhz" in g for g in gpu_info())
    calls: list[str] = []
    nvml = SimpleNamespace(
        NVML_CLOCK_SM=0, NVML_CLOCK_MEM=1, NVML_TEMPERATURE_GPU=0,
        nvmlInit=lambda: calls.append("init"), nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlSystemGetDriverVersion=lambda: b"580.1", nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: i, nvmlDeviceGetName=lambda h: "NVIDIA H200",
        nvmlDeviceGetClockInfo=lambda h, kind: (1980, 2619)[kind],
        nvmlDeviceGetMaxClockInfo=lambda h, kind: 1980,
        nvmlDeviceGetApplicationsClock=lambda h, kind: 1755,
        nvmlDeviceGetTemperature=lambda h, kind: 41,
        nvmlDeviceGetPowerUsage=lambda h: 120_500, nvmlDeviceGetEnforcedPowerLimit=lambda h:
        700_000, nvmlDeviceGetCurrentClocksThrottleReasons=lambda h: 0)
    [gpu] = gpu_info(nvml)
    assert gpu == {"index": 0, "name": "NVIDIA H200", "driver": "580.1", "sm_clock_mhz": 1980,
                   "sm_clock_max_mhz": 1980, "mem_clock_mhz": 2619, "app_sm_clock_mhz": 1755,
                   "temperature_c": 41, "power_w": 120.5, "power_limit_w": 700.0,
                   "throttle_reasons": 0}
    assert calls == ["init", "shutdown"]

    def no_driver() -> None:
        raise OSError("libnvidia-ml.so.1: cannot open shared object file")

    assert gpu_info(SimpleNamespace(nvmlInit=no_driver)) == []
