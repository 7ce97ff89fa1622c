from __future__ import annotations

import json
import pickle
import re
from typing import Any

import pytest

from ofa_search.errors import FileFormatError
from ofa_search.profiling import SCHEMA_VERSION, DeviceProfile
from ofa_search.profiling.device import default_llvm_target, parse_tracker
from ofa_search.profiling.host import llvm_cpu_name, read_cpuinfo

TARGET = {"kind": "llvm", "mcpu": "znver5", "num-cores": 1}
TVM_REMOTE: dict[str, Any] = {
    "backend": "tvm", "target": TARGET, "rpc_tracker": "127.0.0.1:9190", "rpc_key": "rk3588"}


def ort(**kwargs: Any) -> DeviceProfile:
    return DeviceProfile(id="dev", backend="onnxruntime", **kwargs)


def tvm(**kwargs: Any) -> DeviceProfile:
    kwargs.setdefault("target", TARGET)
    return DeviceProfile(id="dev", backend="tvm", **kwargs)


INVALID: list[tuple[dict[str, Any], str]] = [
    ({"id": "Bad ID", "backend": "onnxruntime"}, "id must be a slug"),
    ({"id": "", "backend": "onnxruntime"}, "id must be a slug"),
    ({"id": "-dev", "backend": "onnxruntime"}, "id must be a slug"),
    ({"id": "a" * 65, "backend": "onnxruntime"}, "at most 64 characters"),
    ({"id": "dev", "backend": "tensorrt"},
     "backend must be one of ('onnxruntime', 'tvm', 'torch')"),
    ({"id": "dev", "backend": "onnxruntime", "batch_size": 0},
     "batch_size must be an integer >= 1, got batch_size=0"),
    ({"id": "dev", "backend": "onnxruntime", "batch_size": True}, "batch_size must be"),
    ({"id": "dev", "backend": "onnxruntime", "precisions": ()}, "non-empty and unique"),
    ({"id": "dev", "backend": "onnxruntime", "precisions": ("fp32", "fp32")}, "unique"),
    ({"id": "dev", "backend": "onnxruntime", "precisions": ("fp64",)},
     "precisions must be among ('fp32', 'int8', 'binary'), got 'fp64'"),
    ({"id": "dev", "backend": "onnxruntime", "precisions": "fp32"}, "sequence of names"),
    ({"id": "dev", "backend": "onnxruntime", "execution_provider": ""}, "execution_provider"),
    ({"id": "dev", "backend": "onnxruntime", "intra_op_threads": 0},
     "intra_op_threads must be an integer >= 1"),
    ({"id": "dev", "backend": "onnxruntime", "graph_optimization_level": "max"},
     "graph_optimization_level must be one of"),
    ({"id": "dev", "backend": "onnxruntime", "tuning_trials": 5},
     "tuning_trials=5 applies only to backend='tvm', not 'onnxruntime'"),
    ({"id": "dev", "backend": "onnxruntime", "target": TARGET}, "applies only to backend='tvm'"),
    ({"id": "dev", "backend": "tvm", "target": TARGET, "intra_op_threads": 2},
     "intra_op_threads=2 applies only to backend='onnxruntime', not 'tvm'"),
    ({"id": "dev", "backend": "tvm", "threads": 0}, "threads must be an integer >= 1"),
    ({"id": "dev", "backend": "tvm", "tuning_trials": -1}, "tuning_trials must be an integer"),
    ({"id": "dev", "backend": "tvm", "tuning_db": "db"}, "tuning_db needs tuning_trials > 0"),
    ({"id": "dev", **TVM_REMOTE, "rpc_tracker": "nohost"}, "rpc_tracker must be 'host:port'"),
    ({"id": "dev", **TVM_REMOTE, "rpc_tracker": "h:99999"}, "port in 1..65535"),
    ({"id": "dev", **TVM_REMOTE, "rpc_key": None}, "must be given together"),
    ({"id": "dev", **TVM_REMOTE, "rpc_key": ""}, "rpc_key must be a non-empty string"),
    ({"id": "dev", **TVM_REMOTE, "target": None}, "target is required with rpc_tracker"),
    ({"id": "dev", "backend": "tvm", "target": {"kind": "cuda"}},
     "target['kind'] must be 'llvm'"),
    ({"id": "dev", "backend": "tvm", "target": {"kind": "llvm", "num-cores": 4}},
     "target['num-cores'] must equal threads, got 4 and 1"),
    ({"id": "dev", "backend": "tvm", "target": {"kind": "llvm", "mcpu": 3.5}},
     "target['mcpu'] must be a string"),
    ({"id": "dev", "backend": "tvm", "target": "llvm -mcpu=znver5"}, "target must be a dict"),
]


@pytest.mark.parametrize(("kwargs", "message"), INVALID,
                         ids=[m[:40] for _, m in INVALID])
def test_invalid_profiles_name_the_field(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        DeviceProfile(**kwargs)


def test_keyword_only() -> None:
    with pytest.raises(TypeError):
        DeviceProfile("dev", "onnxruntime")  # type: ignore[call-arg]


def test_presets() -> None:
    profile = DeviceProfile.local_onnxruntime(threads=2)
    assert (profile.id, profile.intra_op_threads, profile.num_threads) == ("cpu-ort-2t", 2, 2)
    assert profile.target is None and not profile.is_remote
    local = DeviceProfile.local_tvm(threads=2, tuning_trials=64, tuning_db="db")
    assert local.id == "cpu-tvm-2t-ms64" and local.tuning_db == "db"
    assert local.target is not None and local.target["num-cores"] == 2
    remote = DeviceProfile.remote_tvm(id="pi", tracker="127.0.0.1:9190", key="pi4",
                                      target={"kind": "llvm", "mcpu": "cortex-a72"})
    assert remote.is_remote and remote.target == {"kind": "llvm", "mcpu": "cortex-a72",
                                                  "num-cores": 1}


def test_default_tvm_target_follows_the_host() -> None:
    profile = DeviceProfile.local_tvm(threads=2)
    # the profile freezes lists (mattr) into tuples
    assert dict(profile.target or {}) == {k: tuple(v) if isinstance(v, list) else v
                                          for k, v in default_llvm_target(2).items()}
    mcpu = llvm_cpu_name(read_cpuinfo())
    assert (profile.target or {}).get("mcpu") == mcpu


def test_target_is_read_only_and_lists_become_tuples() -> None:
    profile = tvm(target={**TARGET, "mattr": ["+avx512f"]})
    assert profile.target is not None and profile.target["mattr"] == ("+avx512f",)
    with pytest.raises(TypeError):
        profile.target["mcpu"] = "x"  # type: ignore[index]
    assert profile.to_dict()["target"]["mattr"] == ["+avx512f"]


PROFILES = [
    DeviceProfile.local_onnxruntime(),
    ort(precisions=("fp32", "int8"), batch_size=8, graph_optimization_level="basic"),
    tvm(),
    tvm(tuning_trials=16, tuning_db="/tmp/db"),
    DeviceProfile(id="pi", **TVM_REMOTE),
]


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.id)
def test_json_round_trip(profile: DeviceProfile) -> None:
    data = json.loads(json.dumps(profile.to_dict()))
    assert data["schema_version"] == SCHEMA_VERSION == 1
    restored = DeviceProfile.from_dict(data)
    assert restored == profile
    assert restored.fingerprint() == profile.fingerprint()
    assert pickle.loads(pickle.dumps(profile)) == profile
    assert hash(restored) == hash(profile)


def test_to_dict_holds_only_its_backends_keys() -> None:
    assert "target" not in DeviceProfile.local_onnxruntime().to_dict()
    assert "intra_op_threads" not in tvm().to_dict()


BAD_FILES: list[tuple[Any, str]] = [
    ([], "must be a JSON object"),
    ({"id": "dev", "backend": "onnxruntime"}, "unsupported device profile schema_version None"),
    ({"schema_version": 2, "id": "dev", "backend": "onnxruntime"},
     "unsupported device profile schema_version 2; this ofa-search reads version 1"),
    ({"schema_version": 1, "id": "dev", "backend": "cuda"}, "backend must be one of"),
    ({"schema_version": 1, "id": "dev", "backend": "onnxruntime", "colour": "red"},
     "unknown keys in device profile for backend 'onnxruntime': ['colour']"),
    ({"schema_version": 1, "id": "dev", "backend": "onnxruntime", "threads": 2},
     "unknown keys in device profile for backend 'onnxruntime': ['threads']"),
    ({"schema_version": 1, "id": "dev", "backend": "onnxruntime", "batch_size": "8"},
     "invalid device profile: batch_size must be an integer >= 1"),
]


@pytest.mark.parametrize(("data", "message"), BAD_FILES, ids=[m[:40] for _, m in BAD_FILES])
def test_from_dict_rejects_foreign_data(data: Any, message: str) -> None:
    with pytest.raises(FileFormatError, match=re.escape(message)):
        DeviceProfile.from_dict(data)


def test_fingerprint_is_stable_across_processes() -> None:
    # A change here invalidates every recorded table: bump it only on purpose.
    assert tvm().fingerprint() == "eaa979a1782f270e"
    assert DeviceProfile.local_onnxruntime().fingerprint() == "3c5eb7fd604f0b90"


@pytest.mark.parametrize("change", [
    {"id": "other"}, {"precisions": ("fp32", "int8")}, {"tuning_trials": 8, "tuning_db": "a"},
])
def test_fingerprint_ignores_names_and_locations(change: dict[str, Any]) -> None:
    base = tvm(tuning_trials=8) if "tuning_db" in change else tvm()
    assert base.replace(**change).fingerprint() == base.fingerprint()
    remote = DeviceProfile(id="pi", **TVM_REMOTE)
    assert remote.replace(rpc_tracker="10.0.0.2:9190").fingerprint() == remote.fingerprint()


@pytest.mark.parametrize("change", [
    {"threads": 2}, {"batch_size": 4}, {"tuning_trials": 8},
    {"target": {**TARGET, "mcpu": "znver4"}}, {"rpc_tracker": "h:1", "rpc_key": "k"},
])
def test_fingerprint_changes_with_timing_settings(change: dict[str, Any]) -> None:
    assert tvm().replace(**change).fingerprint() != tvm().fingerprint()


def test_fingerprint_differs_across_backends_and_ort_options() -> None:
    base = DeviceProfile.local_onnxruntime()
    variants = [base.replace(intra_op_threads=2), base.replace(graph_optimization_level="basic"),
                base.replace(execution_provider="CUDAExecutionProvider"), tvm()]
    assert len({base.fingerprint(), *(v.fingerprint() for v in variants)}) == 5


def test_replace_threads_moves_num_cores() -> None:
    profile = tvm().replace(threads=2)
    assert profile.target is not None and profile.target["num-cores"] == 2


@pytest.mark.parametrize(("address", "expected"),
                         [("127.0.0.1:9190", ("127.0.0.1", 9190)), ("::1:9190", ("::1", 9190))])
def test_parse_tracker(address: str, expected: tuple[str, int]) -> None:
    assert parse_tracker(address) == expected
