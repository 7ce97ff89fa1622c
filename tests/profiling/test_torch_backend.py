"""The PyTorch latency backend: the ONNX executor against ONNX Runtime for every space's
exports, timing, profiles, a table build and the CLI on the CPU; the CUDA paths (dtypes,
CUDA graphs, event timing) where a GPU is present."""

from __future__ import annotations

import json
import math
import pickle
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from ofa_search.errors import FileFormatError
from ofa_search.profiling import DeviceProfile, TimingConfig, TimingStats
from ofa_search.profiling.backends import BackendUnavailableError, backend_class, get_backend
from ofa_search.profiling.backends import torch_backend as tb
from ofa_search.profiling.backends.onnx_torch import OnnxModule, supported_op_types
from ofa_search.profiling.builder import build_table, enumerate_units, sample_archs
from ofa_search.profiling.lut import LatencyTable, list_tables
from ofa_search.profiling.measure import arch_onnx, measure_arch, unit_onnx
from ofa_search.space import get_space, list_spaces

ort = pytest.importorskip("onnxruntime")

TIMING = TimingConfig(warmup=1, min_runs=5, max_runs=20, time_cap_s=0.05)
TINY = TimingConfig(warmup=1, min_runs=3, max_runs=5, time_cap_s=0.01, min_sample_ms=0.0)
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU: "
                                "torch.cuda.is_available() is False here")
Model = tuple[onnx.ModelProto, dict[str, np.ndarray]]


def reference(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return [np.asarray(out) for out in session.run(None, inputs)]


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """Largest absolute difference, relative to the reference's largest magnitude."""
    assert got.shape == want.shape and got.dtype == np.float32
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-30))


def space_models(space: str) -> list[Model]:
    """A spread of the space's exported units (stem, blocks of every stage, head) and a
    whole subnet, at each width, its smallest resolution and batch 2."""
    spec = get_space(space)
    models: list[Model] = []
    for width in spec.width_mults:
        units = enumerate_units(spec, width, spec.resolutions[:1])
        picked = [*units[:2], *units[2:-1:max(1, len(units) // 6)], units[-1]]
        models += [unit_onnx(unit, batch_size=2) for unit in picked]
        arch = sample_archs(spec, 1, 0, width, spec.resolutions[:1])[0]
        models.append(arch_onnx(arch, batch_size=2))
    return models


@pytest.fixture(scope="module")
def cpu_backend() -> Iterator[Any]:
    with get_backend(DeviceProfile.local_torch(1), timing=TIMING) as backend:
        yield backend


@pytest.fixture(scope="module")
def small_arch() -> Model:
    return arch_onnx(sample_archs("mbv3_small28", 1, 3, 1.0, [20])[0])


# --- the executor, against ONNX Runtime --------------------------------------------------


@pytest.mark.parametrize("space", list_spaces())
def test_run_matches_onnxruntime_on_units_and_subnets(space: str, cpu_backend: Any,
                                                      one_torch_thread: None) -> None:
    ops: set[str] = set()
    for model, inputs in space_models(space):
        ops.update(node.op_type for node in model.graph.node)
        outputs, expected = cpu_backend.run(model, inputs), reference(model, inputs)
        assert len(outputs) == len(expected) == 1
        assert relative_error(outputs[0], expected[0]) < 1e-5
    assert ops <= set(supported_op_types())
    assert {"Conv", "Relu", "HardSwish", "HardSigmoid", "ReduceMean", "Mul", "Add", "Gemm",
            "Flatten"} <= ops


def test_bf16_on_the_cpu_is_close(one_torch_thread: None) -> None:
    spec = get_space("mbv3_small28")
    units = enumerate_units(spec, 1.0, [16])
    models = [unit_onnx(units[0]), unit_onnx(units[len(units) // 2]), unit_onnx(units[-1]),
              arch_onnx(sample_archs(spec, 1, 0, 1.0, [16])[0])]
    with get_backend(DeviceProfile.local_torch(1, dtype="bf16"), timing=TINY) as backend:
        for model, inputs in models:
            assert relative_error(backend.run(model, inputs)[0],
                                  reference(model, inputs)[0]) < 5e-2


def _graph(nodes: list[onnx.NodeProto], inits: list[TensorProto], out_shape: list[int],
           opset: int, in_shape: tuple[int, ...] = (2, 4, 7, 7)) -> Model:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    # IR 8, as torch.onnx writes: the default of a newer onnx can exceed what an older ONNX
    # Runtime reads (the GPU host's 1.30 refused onnx 1.23's)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=8)
    onnx.checker.check_model(model)
    x = np.random.default_rng(1).standard_normal(in_shape).astype(np.float32)
    return model, {"x": x}


def _tensor(name: str, *shape: int, seed: int = 0) -> TensorProto:
    rng = np.random.default_rng(seed)
    return numpy_helper.from_array(rng.uniform(-1, 1, shape).astype(np.float32), name)


def _int64(name: str, values: list[int]) -> TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


ATTRIBUTE_GRAPHS: dict[str, Any] = {
    # the torch.export-based exporter's forms (opset 18): axes as an input, Reshape, transA
    "opset18-reduce-reshape-gemm": lambda: _graph([
        helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=1,
                         noop_with_empty_axes=0),
        helper.make_node("Reshape", ["m", "shape"], ["r"], allowzero=1),
        helper.make_node("Gemm", ["r", "w", "b"], ["y"], transB=1, alpha=1.0, beta=1.0),
    ], [_int64("axes", [2, 3]), _int64("shape", [2, 4]), _tensor("w", 5, 4), _tensor("b", 5)],
        [2, 5], 18),
    "gemm-transA-alpha-beta": lambda: _graph([
        helper.make_node("Flatten", ["x"], ["f"], axis=2),
        helper.make_node("Gemm", ["f", "w", "c"], ["y"], transA=1, alpha=0.5, beta=2.0),
    ], [_tensor("w", 8, 3), _tensor("c", 49, 3)], [49, 3], 17),
    "conv-asymmetric-pads-dilation-groups": lambda: _graph([
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[0, 1, 2, 1], strides=[2, 1],
                         dilations=[1, 2], group=2, kernel_shape=[3, 3]),
        helper.make_node("HardSigmoid", ["c"], ["y"], alpha=0.3, beta=0.4),
    ], [_tensor("w", 6, 2, 3, 3)], [2, 6, 4, 5], 17),
    "constant-reshape-zero-copies-a-dim": lambda: _graph([
        helper.make_node("Constant", [], ["s"], value_ints=[0, -1]),
        helper.make_node("Reshape", ["x", "s"], ["r"]),
        helper.make_node("Constant", [], ["k"], value_float=1.5),
        helper.make_node("Mul", ["r", "k"], ["y"]),
    ], [], [2, 196], 17),
    "reduce-mean-all-axes-no-keepdims": lambda: _graph([
        helper.make_node("HardSwish", ["x"], ["h"]),
        helper.make_node("ReduceMean", ["h"], ["y"], keepdims=0),
    ], [], [], 17),
}


@pytest.mark.parametrize("name", ATTRIBUTE_GRAPHS)
def test_op_attributes_are_honoured(name: str, cpu_backend: Any) -> None:
    model, inputs = ATTRIBUTE_GRAPHS[name]()
    got, want = cpu_backend.run(model, inputs)[0], reference(model, inputs)[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


UNSUPPORTED: dict[str, tuple[Any, str]] = {
    "softmax": (lambda: _graph([helper.make_node("Softmax", ["x"], ["y"])], [],
                               [2, 4, 7, 7], 17), "ONNX op Softmax"),
    "int8-qdq": (lambda: _graph([
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
    ], [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.int8), "z")], [2, 4, 7, 7], 17),
        "ONNX op QuantizeLinear"),
    "auto-pad": (lambda: _graph([
        helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER")],
        [_tensor("w", 4, 4, 3, 3)], [2, 4, 7, 7], 17), "ONNX op Conv"),
    "dynamic-shape": (lambda: _graph([
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Reshape", ["x", "s"], ["y"])], [], [2, 4, 7, 7], 17),
        "ONNX op Shape"),
}


@pytest.mark.parametrize("name", UNSUPPORTED)
def test_unsupported_ops_are_one_clear_error(name: str, cpu_backend: Any) -> None:
    build, message = UNSUPPORTED[name]
    model, inputs = build()
    with pytest.raises(BackendUnavailableError) as error:
        cpu_backend.run(model, inputs)
    text = str(error.value)
    assert message in text and "\n" not in text


def test_a_custom_domain_is_refused() -> None:
    node = helper.make_node("BinaryConv", ["x"], ["y"], domain="ofa_search.binary")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("ofa_search.binary", 1)])
    with pytest.raises(BackendUnavailableError, match=re.escape("domain 'ofa_search.binary'")):
        OnnxModule(model)


# --- timing, threads, prepared models ---------------------------------------------------


def test_measure_gives_timing_stats_at_the_profiles_threads(
        small_arch: Model, monkeypatch: pytest.MonkeyPatch, one_torch_thread: None) -> None:
    seen: list[int] = []
    real = tb.callable_sampler

    def spy(fn: Any) -> Any:
        seen.append(torch.get_num_threads())
        return real(fn)

    monkeypatch.setattr(tb, "callable_sampler", spy)
    model, inputs = small_arch
    with get_backend(DeviceProfile.local_torch(2), timing=TIMING) as backend:
        stats = backend.measure(model, inputs)
        outputs = backend.run(model, inputs)
    assert isinstance(stats, TimingStats) and stats.count >= TIMING.min_runs
    assert math.isfinite(stats.median_ms) and 0 < stats.min_ms <= stats.median_ms
    assert seen == [2] and torch.get_num_threads() == 1  # set while timing, then restored
    assert outputs[0].dtype == np.float32
    assert relative_error(outputs[0], reference(model, inputs)[0]) < 1e-5


def test_prepared_models_are_independent(small_arch: Model, cpu_backend: Any) -> None:
    model, inputs = small_arch
    first, second = cpu_backend.prepare(model, inputs), cpu_backend.prepare(model, inputs)
    try:
        np.testing.assert_array_equal(first.run(inputs)[0], second.run(inputs)[0])
        assert second.measure(inputs).median_ms > 0
        with pytest.raises(ValueError, match="was prepared for"):
            first.run({"input": np.zeros((2, 3, 20, 20), np.float32)})
    finally:
        first.close()
        second.close()
    with pytest.raises(RuntimeError, match="closed"):
        first.run(inputs)
    assert cpu_backend.max_prepared is None
    assert cpu_backend.versions() == {"torch": torch.__version__}
    assert measure_arch(cpu_backend, sample_archs("mbv3_small28", 1, 3, 1.0, [20])[0]
                        ).median_ms > 0


def test_cuda_event_sampler_gives_per_call_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sampler's arithmetic, with fake events on a fake GPU clock (2 ms per call)."""
    clock = [0.0]
    synced: list[str] = []

    class FakeEvent:
        def __init__(self, enable_timing: bool = False) -> None:
            assert enable_timing
            self.at: float | None = None

        def record(self, stream: Any) -> None:
            self.at = clock[0]

        def synchronize(self) -> None:
            synced.append("end")

        def elapsed_time(self, end: FakeEvent) -> float:
            assert self.at is not None and end.at is not None
            return end.at - self.at  # milliseconds, as CUDA events give them

    class FakeStream:
        def synchronize(self) -> None:
            synced.append("start")

    def call() -> None:
        clock[0] += 2.0

    monkeypatch.setattr(tb.torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(tb.torch.cuda, "current_stream", lambda device=None: FakeStream())
    sampler = tb.cuda_event_sampler(call, torch.device("cuda", 0))
    assert sampler(4, 3) == [0.002] * 3
    assert synced == ["start", "end"] * 3  # each sample starts on an idle stream
    stats = tb.time_sampler(sampler, TimingConfig(warmup=1, min_runs=5, max_runs=5))
    assert stats.median_ms == pytest.approx(2.0) and stats.count == 5


def test_registered_and_refuses_other_profiles() -> None:
    assert backend_class("torch") is tb.TorchBackend
    with pytest.raises(ValueError, match="needs a profile with backend='torch'"):
        tb.TorchBackend(DeviceProfile.local_onnxruntime())


def test_an_unusable_gpu_is_one_clear_error() -> None:
    past_the_last = f"cuda:{torch.cuda.device_count() if HAS_CUDA else 0}"
    with pytest.raises(BackendUnavailableError, match="is not usable") as error:
        get_backend(DeviceProfile.local_torch(device=past_the_last))
    assert "\n" not in str(error.value)


# --- profiles -----------------------------------------------------------------------------


def torch_profile(**kwargs: Any) -> DeviceProfile:
    return DeviceProfile(id="dev", backend="torch", **kwargs)


INVALID: list[tuple[dict[str, Any], str]] = [
    ({"torch_device": "gpu"}, "torch_device must be 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
    ({"torch_device": "cuda:01"}, "torch_device must be"),
    ({"torch_device": None}, "torch_device must be"),
    ({"torch_dtype": "fp64"}, "torch_dtype must be one of ('fp32', 'fp16', 'bf16')"),
    ({"torch_dtype": "fp16"}, "torch_dtype='fp16' needs a cuda torch_device"),
    ({"cuda_graphs": True}, "cuda_graphs=True needs a cuda torch_device"),
    ({"torch_device": "cuda", "cuda_graphs": 1}, "cuda_graphs must be true or false"),
    ({"threads": 0}, "threads must be an integer >= 1"),
    ({"intra_op_threads": 2}, "intra_op_threads=2 applies only to backend='onnxruntime', "
                              "not 'torch'"),
    ({"tuning_trials": 4}, "tuning_trials=4 applies only to backend='tvm', not 'torch'"),
    ({"target": {"kind": "llvm"}}, "applies only to backend='tvm'"),
]


@pytest.mark.parametrize(("kwargs", "message"), INVALID, ids=[m[:40] for _, m in INVALID])
def test_invalid_torch_profiles_name_the_field(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        torch_profile(**kwargs)


@pytest.mark.parametrize(("backend", "kwargs", "message"), [
    ("onnxruntime", {"torch_device": "cuda"},
     "torch_device='cuda' applies only to backend='torch', not 'onnxruntime'"),
    ("onnxruntime", {"threads": 2}, "threads=2 applies only to backend='tvm' or 'torch'"),
    ("tvm", {"torch_dtype": "bf16"}, "torch_dtype='bf16' applies only to backend='torch'"),
])
def test_torch_options_stay_at_defaults_elsewhere(backend: str, kwargs: dict[str, Any],
                                                  message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        DeviceProfile(id="dev", backend=backend, **kwargs)


PROFILES = [
    DeviceProfile.local_torch(),
    DeviceProfile.local_torch(2, dtype="bf16", batch_size=4),
    DeviceProfile.local_torch(device="cuda", dtype="fp16", cuda_graphs=True),
    DeviceProfile.local_torch(device="cuda:1", dtype="bf16"),
]


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.id)
def test_torch_profiles_round_trip_through_json(profile: DeviceProfile) -> None:
    data = json.loads(json.dumps(profile.to_dict()))
    assert set(data) == {"schema_version", "id", "backend", "batch_size", "precisions",
                         "threads", "torch_device", "torch_dtype", "cuda_graphs"}
    restored = DeviceProfile.from_dict(data)
    assert restored == profile and restored.fingerprint() == profile.fingerprint()
    assert pickle.loads(pickle.dumps(profile)) == profile


def test_preset_ids_and_fingerprints() -> None:
    assert [p.id for p in PROFILES] == ["cpu-torch-1t", "cpu-torch-2t-bf16",
                                        "cuda-torch-fp16-graphs", "cuda1-torch-bf16"]
    base = DeviceProfile.local_torch(device="cuda")
    variants = [base.replace(torch_dtype="bf16"), base.replace(cuda_graphs=True),
                base.replace(threads=2), base.replace(torch_device="cpu"),
                DeviceProfile.local_onnxruntime()]
    assert len({base.fingerprint(), *(v.fingerprint() for v in variants)}) == 6
    assert base.replace(id="other").fingerprint() == base.fingerprint()


def test_old_profile_files_still_load() -> None:
    # written before the torch backend existed: no torch keys, same fingerprints
    ort_file = {"schema_version": 1, "id": "cpu-ort-1t", "backend": "onnxruntime",
                "batch_size": 1, "precisions": ["fp32"], "execution_provider":
                "CPUExecutionProvider", "intra_op_threads": 1, "graph_optimization_level": "all"}
    profile = DeviceProfile.from_dict(ort_file)
    assert profile.to_dict() == ort_file and profile.fingerprint() == "3c5eb7fd604f0b90"
    minimal = DeviceProfile.from_dict({"schema_version": 1, "id": "t", "backend": "torch"})
    assert (minimal.torch_device, minimal.torch_dtype, minimal.cuda_graphs) == ("cpu", "fp32",
                                                                              False)
    with pytest.raises(FileFormatError, match=r"for backend 'onnxruntime': \['torch_dtype'\]"):
        DeviceProfile.from_dict({**ort_file, "torch_dtype": "fp32"})
    with pytest.raises(FileFormatError, match="invalid device profile: torch_dtype='fp16'"):
        DeviceProfile.from_dict({"schema_version": 1, "id": "t", "backend": "torch",
                                 "torch_dtype": "fp16"})


# --- tables, without optuna/typer/tvm/fastapi, and the CLI ----------------------------------

ISOLATED_BUILD = textwrap.dedent("""
    import json, sys
    for name in ("optuna", "typer", "tvm", "fastapi"):
        sys.modules[name] = None  # import fails: the GPU host has none of them
    import torch
    torch.set_num_threads(1)
    from ofa_search.profiling.backends.torch_backend import TorchBackend
    from ofa_search.profiling.builder import build_table
    from ofa_search.profiling.device import DeviceProfile
    from ofa_search.profiling.timing import TimingConfig
    timing = TimingConfig(warmup=1, min_runs=3, max_runs=5, time_cap_s=0.01, min_sample_ms=0.0)
    table = build_table("mbv3_small28", DeviceProfile.local_torch(1), [16], sys.argv[1],
                        timing=timing, progress=False, rounds=1, overhead_archs=4)
    loaded = [n for n in ("optuna", "typer", "tvm", "fastapi") if sys.modules[n] is not None]
    print(json.dumps({"units": len(table.entries), "complete": table.complete,
                      "loaded": loaded}))
""")


def test_build_table_without_optuna_typer_tvm_fastapi(tmp_path: Path) -> None:
    out = tmp_path / "cpu-torch-1t.json"
    done = subprocess.run([sys.executable, "-c", ISOLATED_BUILD, str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"units": 75, "complete": True, "loaded": []}
    table = LatencyTable.load(out)
    assert table.profile() == DeviceProfile.local_torch(1)
    assert table.versions == {"torch": torch.__version__}
    assert len(table.meta["reference"]["archs"]) == 4
    assert all(entry["median_ms"] > 0 for entry in table.entries.values())


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    # the GPU host runs this file without the CLI's typer (scripts/gpu_check.py)
    pytest.importorskip("typer", reason="the CLI needs typer, which this host lacks")
    from ofa_search.cli.app import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_profiles_and_measures_with_torch(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             one_torch_thread: None) -> None:
    code, out, err = _cli(capsys, "profile", "-w", str(tmp_path), "-d", "my-torch",
                          "--backend", "torch", "--torch-device", "cpu", "--torch-dtype",
                          "fp32", "--no-cuda-graphs", "--threads", "1", "-r", "16",
                          "--rounds", "1", "--overhead-archs", "0", "--time-cap", "0.02")
    assert code == 0, err
    assert "wrote" in out and "75 units" in out
    table = LatencyTable.load(tmp_path / "hw_profiles" / "my-torch.json")
    assert table.profile() == DeviceProfile.local_torch(1, id="my-torch")
    assert [i.backend for i in list_tables(workspace=tmp_path) if i.device_id == "my-torch"] \
        == ["torch"]
    arch = sample_archs("mbv3_small28", 1, 0, 1.0, [16])[0].to_string()
    code, out, err = _cli(capsys, "latency", "-w", str(tmp_path), "-d", "my-torch", arch,
                          "--predictor", "lut", "--measure", "--json")
    assert code == 0, err
    assert json.loads(out)["measured_ms"] > 0


@pytest.mark.parametrize(("args", "message"), [
    (["--torch-device", f"cuda:{torch.cuda.device_count() if HAS_CUDA else 0}"],
     "is not usable"),
    (["--torch-dtype", "fp16"], "torch_dtype='fp16' needs a cuda torch_device"),
    (["--cuda-graphs"], "cuda_graphs=True needs a cuda torch_device"),
    (["--torch-device", "gpu"], "torch_device must be 'cpu', 'cuda' or 'cuda:N'"),
    (["--torch-dtype", "int8"], "torch_dtype must be one of"),
])
def test_cli_torch_option_errors_are_one_line(tmp_path: Path, args: list[str], message: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli(capsys, "profile", "-w", str(tmp_path), "-d", "dev", "-r", "16",
                        "--backend", "torch", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not tmp_path.joinpath("hw_profiles").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--backend", "onnxruntime", "--torch-dtype", "bf16"],
     "--torch-dtype apply to --backend torch only"),
    (["--backend", "tvm", "--no-cuda-graphs"], "--no-cuda-graphs apply to --backend torch"),
    (["--backend", "torch", "--provider", "CPUExecutionProvider"],
     "--provider applies to --backend onnxruntime only"),
    (["--backend", "torch", "--tuning-trials", "4"], "--tuning-trials apply to --backend tvm"),
    (["--backend", "tensorrt"], "use onnxruntime, tvm or torch"),
    (["--backend", "torch", "-s", "mbv3_small28_mp", "-p", "fp32", "-p", "int8"],
     "with --backend torch offers precisions ['fp32'], not ['int8']"),
])
def test_cli_options_of_other_backends_are_refused(tmp_path: Path, args: list[str],
                                                   message: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli(capsys, "profile", "-w", str(tmp_path), "-d", "dev", "-r", "16", *args)
    assert code == 2 and message in err, err


# --- CUDA (skipped without a GPU) ------------------------------------------------------------


def _cuda(**kwargs: Any) -> Any:
    return get_backend(DeviceProfile.local_torch(device="cuda", **kwargs), timing=TIMING)


@pytest.fixture(scope="module")
def cuda_models() -> dict[str, list[Model]]:
    """Units of both spaces' smallest and largest shapes, and two whole subnets."""
    units: list[Model] = []
    for space, width, res in (("mbv3_small28", 1.0, 16), ("ofa_mbv3", 1.2, 128)):
        found = enumerate_units(space, width, [res])
        units += [unit_onnx(u, batch_size=2) for u in (found[0], found[len(found) // 2],
                                                       found[-1])]
    archs = [arch_onnx(sample_archs(space, 1, 0, width, [res])[0], batch_size=2)
             for space, width, res in (("mbv3_small28", 1.0, 32), ("ofa_mbv3", 1.2, 128))]
    return {"units": units, "archs": archs}


@needs_cuda
@pytest.mark.parametrize(("dtype", "tolerance"), [("fp32", 1e-2), ("bf16", 5e-2),
                                                  ("fp16", 2e-2)])
@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graphs"])
def test_cuda_dtypes_match_cpu_fp32(dtype: str, tolerance: float, graphs: bool,
                                    cpu_backend: Any, cuda_models: dict[str, list[Model]]
                                    ) -> None:
    # fp32 on the GPU may run convolutions in TF32 (cuDNN's default): a looser bound. The
    # randomly initialised subnets end in activations of ~1e-8, below fp16's normal range,
    # so fp16 is compared on units only.
    models = cuda_models["units"] + (cuda_models["archs"] if dtype != "fp16" else [])
    with _cuda(dtype=dtype, cuda_graphs=graphs) as backend:
        for model, inputs in models:
            got = backend.run(model, inputs)[0]
            assert relative_error(got, cpu_backend.run(model, inputs)[0]) < tolerance


@needs_cuda
def test_cuda_graphs_on_and_off_agree(small_arch: Model) -> None:
    model, inputs = small_arch
    with _cuda() as eager, _cuda(cuda_graphs=True) as graphs:
        want = eager.run(model, inputs)[0]
        got = graphs.run(model, inputs)[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
        # the graph reads its static buffers: new inputs give new outputs
        other = {"input": inputs["input"] * 0.5}
        np.testing.assert_allclose(graphs.run(model, other)[0], eager.run(model, other)[0],
                                   rtol=1e-4, atol=1e-4 * np.abs(want).max())


@needs_cuda
@pytest.mark.parametrize("graphs", [True, False], ids=["graphs", "eager"])
def test_cuda_measure(small_arch: Model, graphs: bool) -> None:
    model, inputs = small_arch
    with _cuda(dtype="fp16", cuda_graphs=graphs) as backend:
        stats = backend.measure(model, inputs)
        assert isinstance(stats, TimingStats) and stats.count >= TIMING.min_runs
        assert math.isfinite(stats.median_ms) and 0 < stats.min_ms <= stats.median_ms
        versions = backend.versions()
        assert {"torch", "cuda", "cudnn", "device"} <= set(versions)
        assert versions["device"] == torch.cuda.get_device_name(0)
        assert backend.max_prepared == tb.CUDA_MAX_PREPARED
        prepared = [backend.prepare(model, inputs) for _ in range(2)]
        try:
            assert all(p.measure(inputs).median_ms > 0 for p in prepared)
        finally:
            for p in prepared:
                p.close()


@needs_cuda
def test_cuda_table_with_graphs(tmp_path: Path) -> None:
    profile = DeviceProfile.local_torch(device="cuda", dtype="fp16", cuda_graphs=True)
    table = build_table("mbv3_small28", profile, [16], tmp_path / "t.json", timing=TINY,
                        progress=False, rounds=1, overhead_archs=4, chunk=8)
    assert table.complete and len(table.entries) == 75
    assert table.versions["device"] == torch.cuda.get_device_name(0)
    assert LatencyTable.load(tmp_path / "t.json").profile() == profile
