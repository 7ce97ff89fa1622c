"""scripts/bench_head_int8.py: the head variants it times are what it says they are."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import onnxruntime as ort
import pytest
from script_helpers import load_script

from ofa_search.profiling.lut import LatencyTable


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("bench_head_int8")


def _int8_layers(model: object) -> list[bool]:
    """For each Conv / Gemm node in order: whether it reads a DequantizeLinear's output
    (ONNX Runtime then runs it in int8)."""
    nodes = model.graph.node  # type: ignore[attr-defined]
    dq = {n.output[0] for n in nodes if n.op_type == "DequantizeLinear"}
    return [any(i in dq for i in n.input) for n in nodes if n.op_type in ("Conv", "Gemm")]


def test_head_variants_quantise_the_layers_they_name(bench: ModuleType) -> None:
    unit = bench.head_unit(224)
    assert (unit.in_channels, unit.expand_channels, unit.mix_channels, unit.in_size) == (
        160, 960, 1280, 7)
    models = bench.head_models(unit, 0)
    assert set(models) == set(bench.VARIANTS)
    # final expand, feature mix, classifier
    assert _int8_layers(models["fp32"]) == [False, False, False]
    assert _int8_layers(models["int8"]) == [True, True, True]
    assert _int8_layers(models["int8-gemv"]) == [False, True, True]
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
