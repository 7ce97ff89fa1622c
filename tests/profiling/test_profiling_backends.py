"""One contract suite for every latency backend: ONNX Runtime, local TVM, TVM over RPC."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ofa_search.errors import FileFormatError
from ofa_search.profiling import DeviceProfile, TimingConfig
from ofa_search.profiling.backends import (
    BackendUnavailableError,
    LatencyBackend,
    backend_class,
    get_backend,
)
from ofa_search.profiling.device import default_llvm_target

TIMING = TimingConfig(warmup=2, min_runs=8, max_runs=60, time_cap_s=0.5)
RPC_KEY = "test-key"
BACKENDS = ["onnxruntime", "tvm", "tvm-rpc"]


def tiny_model(seed: int = 0, size: int = 16) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Conv-BN-ReLU, depthwise conv-BN-ReLU6, 1x1 conv + a second input; two outputs."""
    rng = np.random.default_rng(seed)

    def param(name: str, *shape: int, low: float = -0.5, high: float = 0.5) -> TensorProto:
        return numpy_helper.from_array(rng.uniform(low, high, shape).astype(np.float32), name)

    c = 8
    params = [
        param("w1", c, 3, 3, 3), param("g1", c, low=0.5, high=1.5), param("b1", c),
        param("m1", c), param("v1", c, low=0.5, high=1.5),
        param("w2", c, 1, 3, 3), param("g2", c, low=0.5, high=1.5), param("b2", c),
        param("m2", c), param("v2", c, low=0.5, high=1.5),
        param("w3", 16, c, 1, 1), param("b3", 16),
        numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
        numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("BatchNormalization", ["c1", "g1", "b1", "m1", "v1"], ["n1"]),
        helper.make_node("Relu", ["n1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], group=c),
        helper.make_node("BatchNormalization", ["c2", "g2", "b2", "m2", "v2"], ["n2"]),
        helper.make_node("Clip", ["n2", "lo", "hi"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"]),
        helper.make_node("Add", ["c3", "bias"], ["y"]),
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[2, 3], keepdims=0),
    ]
    half = size // 2
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size]),
         helper.make_tensor_value_info("bias", TensorProto.FLOAT, [1, 16, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, half, half]),
         helper.make_tensor_value_info("m", TensorProto.FLOAT, [1, 3])],
        params,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    inputs = {"x": rng.standard_normal((1, 3, size, size)).astype(np.float32),
              "bias": rng.standard_normal((1, 16, 1, 1)).astype(np.float32)}
    return model, inputs


def reference(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return [np.asarray(out) for out in session.run(None, inputs)]


@pytest.fixture(scope="module")
def rpc_tracker() -> Iterator[str]:
    """A TVM RPC tracker and one server registered as ``RPC_KEY``, on loopback only."""
    rpc = pytest.importorskip("tvm.rpc")
    from tvm.rpc.tracker import Tracker

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TVM_NUM_THREADS", "2")  # the server process's thread-pool cap
        tracker = Tracker(host="127.0.0.1", port=19190, port_end=19290, silent=True)
        server = rpc.Server(host="127.0.0.1", port=19300, port_end=19400, key=RPC_KEY,
                            tracker_addr=("127.0.0.1", tracker.port), silent=True)
    try:
        deadline = time.monotonic() + 60
        client = rpc.connect_tracker("127.0.0.1", tracker.port)
        while RPC_KEY not in client.summary().get("queue_info", {}):
            assert time.monotonic() < deadline, "the RPC server never registered"
            time.sleep(0.1)
        yield f"127.0.0.1:{tracker.port}"
    finally:
        server.terminate()
        tracker.terminate()


def make_profile(kind: str, request: pytest.FixtureRequest | None = None) -> DeviceProfile:
    if kind == "onnxruntime":
        return DeviceProfile.local_onnxruntime()
    pytest.importorskip("tvm")
    if kind == "tvm":
        return DeviceProfile.local_tvm()
    if request is None:
        raise ValueError("a remote profile needs the rpc_tracker fixture")
    return DeviceProfile.remote_tvm(id="loopback", tracker=request.getfixturevalue("rpc_tracker"),
                                    key=RPC_KEY, target=default_llvm_target(1))


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[LatencyBackend]:
    """One backend per kind, shared by the module so that each compiles the model once."""
    with get_backend(make_profile(request.param, request), timing=TIMING) as shared:
        yield shared


@pytest.fixture(scope="module")
def model() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    return tiny_model()


# --- the contract, for every backend -------------------------------------------------------


def test_run_matches_onnxruntime(backend: LatencyBackend,
                                 model: tuple[onnx.ModelProto, dict[str, np.ndarray]]) -> None:
    proto, inputs = model
    outputs = backend.run(proto, inputs)
    expected = reference(proto, inputs)
    assert [o.shape for o in outputs] == [e.shape for e in expected]
    for got, want in zip(outputs, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_measure_gives_sane_statistics(
        backend: LatencyBackend, model: tuple[onnx.ModelProto, dict[str, np.ndarray]]) -> None:
    proto, inputs = model
    result = backend.measure(proto, inputs)
    assert math.isfinite(result.median_ms) and result.median_ms > 0
    assert result.count >= TIMING.min_runs and result.iqr_ms >= 0
    assert 0 < result.min_ms <= result.median_ms
    print(f"{backend.profile.id}: median {result.median_ms:.4f} ms, IQR {result.iqr_ms:.4f}, "
          f"n={result.count}, converged={result.converged}")


def test_model_may_be_bytes_or_a_path(backend: LatencyBackend, tmp_path: Path,
                                      model: tuple[onnx.ModelProto, dict[str, np.ndarray]]
                                      ) -> None:
    proto, inputs = model
    path = tmp_path / "tiny.onnx"
    onnx.save(proto, path)
    loaded = backend.load(proto, inputs)
    assert backend.load(path, inputs) is loaded  # same model and signature: cached
    from_bytes = backend.run(proto.SerializeToString(), inputs)
    np.testing.assert_array_equal(from_bytes[0], backend.run(str(path), inputs)[0])


def test_prepared_models_are_owned_by_the_caller(
        backend: LatencyBackend, model: tuple[onnx.ModelProto, dict[str, np.ndarray]]) -> None:
    proto, inputs = model
    expected = backend.run(proto, inputs)[0]
    backend.close()  # an RPC device serves one session: the cached model must go first
    prepared = backend.prepare(proto, inputs)
    try:
        np.testing.assert_array_equal(prepared.run(inputs)[0], expected)
        assert prepared.measure(inputs).median_ms > 0
    finally:
        prepared.close()
    assert backend.max_prepared == (1 if backend.profile.is_remote else None)
    if not backend.profile.is_remote:
        second = backend.prepare(proto, inputs)
        assert second is not backend.load(proto, inputs)  # not the cached model
        second.close()


def test_inputs_must_match_the_graph(backend: LatencyBackend,
                                     model: tuple[onnx.ModelProto, dict[str, np.ndarray]]
                                     ) -> None:
    proto, inputs = model
    with pytest.raises(ValueError, match=r"missing \['bias'\], unknown \['z'\]"):
        backend.run(proto, {"x": inputs["x"], "z": inputs["bias"]})


def test_versions_and_name(backend: LatencyBackend) -> None:
    versions = backend.versions()
    assert versions and all(isinstance(v, str) and v for v in versions.values())
    assert backend.name == backend.profile.backend


def test_backend_refuses_another_backends_profile(backend: LatencyBackend) -> None:
    other = "tvm" if backend.name == "onnxruntime" else "onnxruntime"
    with pytest.raises(ValueError, match="needs a profile with backend="):
        type(backend)(make_profile(other))


# --- errors outside the contract ------------------------------------------------------------


def test_corrupt_model_is_a_file_format_error() -> None:
    backend = get_backend(DeviceProfile.local_onnxruntime(), timing=TIMING)
    with pytest.raises(FileFormatError, match="not an ONNX model"):
        backend.run(b"definitely not protobuf", {})


def test_unknown_backend_name() -> None:
    with pytest.raises(ValueError, match="unknown latency backend 'tensorrt'"):
        backend_class("tensorrt")


def test_unavailable_execution_provider_lists_the_available_ones() -> None:
    profile = DeviceProfile.local_onnxruntime().replace(execution_provider="NoSuchProvider")
    with pytest.raises(BackendUnavailableError, match=r"available: .*CPUExecutionProvider"):
        get_backend(profile)


def test_onnxruntime_io_binding_runs_and_measures_like_plain_runs(
        model: tuple[onnx.ModelProto, dict[str, np.ndarray]]) -> None:
    pytest.importorskip("onnxruntime")
    from ofa_search.profiling.backends.onnxruntime_backend import (
        OnnxRuntimeBackend,
        binding_device,
    )

    assert binding_device("CUDAExecutionProvider") == "cuda"
    assert binding_device("CPUExecutionProvider") is None
    profile = DeviceProfile.local_onnxruntime()
    assert OnnxRuntimeBackend(profile).io_binding_device is None  # off on the CPU by default
    proto, inputs = model
    with OnnxRuntimeBackend(profile, timing=TIMING, io_binding=True) as bound:
        assert bound.io_binding_device == "cpu"
        outputs = bound.run(proto, inputs)
        for got, want in zip(outputs, reference(proto, inputs), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        # the binding is made once per measurement and reused by every timed run
        result = bound.measure(proto, inputs)
        assert result.count >= TIMING.min_runs and 0 < result.min_ms <= result.median_ms


@pytest.mark.parametrize(("kind", "module", "pip"), [
    ("onnxruntime", "onnxruntime", "pip install onnxruntime"),
    ("tvm", "tvm", "pip install 'ofa-search[tvm]'"),
])
def test_missing_package_names_the_pip_package(kind: str, module: str, pip: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    profile = make_profile(kind)
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(BackendUnavailableError, match=re.escape(pip)):
        get_backend(profile)


def test_unknown_rpc_key_lists_the_registered_ones(rpc_tracker: str) -> None:
    model, inputs = tiny_model(size=8)
    profile = DeviceProfile.remote_tvm(id="nobody", tracker=rpc_tracker, key="no-such-key",
                                       target=default_llvm_target(1))
    with pytest.raises(BackendUnavailableError, match=r"registered keys: \['test-key'\]"):
        get_backend(profile).run(model, inputs)


def test_tvm_rejects_an_mcpu_unknown_to_llvm() -> None:
    pytest.importorskip("tvm")
    profile = DeviceProfile(id="odd", backend="tvm", target={"kind": "llvm", "mcpu": "znver99"})
    with pytest.raises(ValueError, match="target mcpu 'znver99' of profile 'odd' is unknown"):
        get_backend(profile)


def test_tvm_thread_count_is_checked() -> None:
    pytest.importorskip("tvm")
    from ofa_search.profiling.backends.tvm_backend import _configure_threads

    with pytest.raises(BackendUnavailableError, match="set TVM_NUM_THREADS>=2"):
        _configure_threads(lambda mode, n: None, lambda: 1, 2, "of this process")


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this OS")
def test_tvm_thread_pool_setup_keeps_the_callers_cpu_affinity() -> None:
    """TVM pins the thread that configures its pool to one core; after a local TVM
    profile every pool that thread made later (PyTorch's, ONNX Runtime's, a DataLoader's
    workers) ran on that core (measured: {0, 1} became {0})."""
    tvm = pytest.importorskip("tvm")
    from ofa_search.profiling.backends.tvm_backend import _configure_threads

    before = os.sched_getaffinity(0)
    _configure_threads(tvm.get_global_func("runtime.config_threadpool"),
                       tvm.get_global_func("runtime.NumThreads"), 1, "of this process")
    assert os.sched_getaffinity(0) == before


def test_tvm_workload_keys_depend_on_shapes_only_through_the_workloads() -> None:
    pytest.importorskip("tvm")
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    from ofa_search.profiling.backends.tvm_tuning import workload_keys

    target = tvm.target.Target(default_llvm_target(1))

    def keys(seed: int, size: int) -> dict[str, str]:
        proto, inputs = tiny_model(seed, size)
        return workload_keys(from_onnx(proto, shape_dict={k: list(v.shape)
                                                          for k, v in inputs.items()}), target)

    small = keys(0, 16)
    assert len(small) >= 3  # at least the three convolutions
    assert keys(1, 16).keys() == small.keys()  # other weights, same workloads
    assert not keys(0, 8).keys() & small.keys()  # another input size, other workloads


@pytest.mark.slow
def test_tvm_tuning_fills_and_reuses_the_database(tmp_path: Path) -> None:
    pytest.importorskip("tvm")
    model, inputs = tiny_model(size=8)
    profile = DeviceProfile.local_tvm(tuning_trials=4, tuning_db=tmp_path / "db")
    with get_backend(profile, timing=TIMING) as first:
        outputs = first.run(model, inputs)
    for got, want in zip(outputs, reference(model, inputs), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    records = [json.loads(line) for line in
               (tmp_path / "db" / "database_tuning_record.json").read_text().splitlines()]
    # 4 trials for each of the 4 workloads, every candidate compiled in-process and run
    # (a candidate that fails to build or run is recorded as 1e10 s)
    assert len(records) == 16 and len({r[0] for r in records}) == 4
    assert all(0 < secs < 1 for r in records for secs in r[1][1])
    start = time.monotonic()
    with get_backend(profile, timing=TIMING) as second:  # every workload is in the database
        second.run(model, inputs)
    assert time.monotonic() - start < 30


def test_tuning_registers_only_the_cpus_intrinsics() -> None:
    """x86 tuning imports x86's tensor intrinsics, not every back end's (CUDA's alone take
    ~28 s to register); a fresh process, as the package stays imported once loaded."""
    pytest.importorskip("tvm")
    code = """if True:
        import platform, sys
        from ofa_search.profiling.backends.tvm_tuning import load_intrinsics
        from ofa_search.profiling.device import default_llvm_target
        from tvm.target import Target
        load_intrinsics(Target(default_llvm_target(1)))
        from tvm.s_tir import TensorIntrin
        import tvm.s_tir.tensor_intrin  # what MetaSchedule does: finds the package loaded
        loaded = sorted(m.rsplit(".", 1)[1] for m in sys.modules
                        if m.startswith("tvm.s_tir.tensor_intrin."))
        print(platform.machine(), loaded)
        if platform.machine() == "x86_64":
            assert TensorIntrin.get("dot_16x4_vnni") is not None
            assert "cuda" not in loaded, loaded
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
