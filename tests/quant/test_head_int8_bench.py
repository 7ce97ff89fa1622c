"""scripts/bench_head_int8.py: the head variants it times are what it says they are."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import onnxruntime as ort
import pytest

from ofa_search.profiling.lut import LatencyTable

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_head_int8.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_head_int8", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _quantised_ops(model: object) -> set[str]:
    """Op types of the nodes that read a DequantizeLinear's output (the int8 layers)."""
    nodes = model.graph.node  # type: ignore[attr-defined]
    dq = {n.output[0] for n in nodes if n.op_type == "DequantizeLinear"}
    return {n.op_type for n in nodes if n.op_type != "QuantizeLinear"
            and any(i in dq for i in n.input)}


def test_head_variants_quantise_the_layers_they_name(bench: ModuleType) -> None:
    unit = bench.head_unit(224)
    assert (unit.in_channels, unit.expand_channels, unit.mix_channels, unit.in_size) == (
        160, 960, 1280, 7)
    models = bench.head_models(unit, 0)
    assert set(models) == set(bench.VARIANTS)
    assert not _quantised_ops(models["fp32"])
    full = [n for n in models["int8"].graph.node if n.op_type in ("Conv", "Gemm")]
    gemv = [n for n in models["int8-gemv"].graph.node if n.op_type in ("Conv", "Gemm")]
    dq = {n.output[0] for n in models["int8"].graph.node if n.op_type == "DequantizeLinear"}
    assert all(any(i in dq for i in n.input) for n in full)  # all three layers int8
    dq = {n.output[0] for n in models["int8-gemv"].graph.node
          if n.op_type == "DequantizeLinear"}
    first, *rest = gemv
    assert not any(i in dq for i in first.input)  # the final expand stays fp32
    assert rest and all(any(i in dq for i in n.input) for n in rest)
    x = np.random.default_rng(0).standard_normal((1, 160, 7, 7), dtype=np.float32)
    out = {name: ort.InferenceSession(m.SerializeToString(),
                                      providers=["CPUExecutionProvider"]).run(None, {
                                          "input": x})[0] for name, m in models.items()}
    scale = np.abs(out["fp32"]).max()
    for name in ("int8", "int8-gemv"):
        assert out[name].shape == (1, 1000)
        assert np.abs(out[name] - out["fp32"]).max() < 0.1 * scale


def test_the_shipped_table_prices_the_head_it_times(bench: ModuleType) -> None:
    table = LatencyTable.load(bench.DEFAULT_TABLE)
    shares = bench.table_shares(table, 160, n=4)
    assert shares["head_unit_ms"] == table.entries[bench.head_unit(160).key]["median_ms"]
    assert 0 < shares["head_share_median"] < 1
    assert shares["subnet_median_ms"] > shares["head_unit_ms"]
