"""Int8 latency-table units and the int8-vs-fp32 kernel benchmark."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ofa_search.profiling.measure import unit_onnx
from ofa_search.quant.benchmark import (
    conv_case,
    cpu_int8_support,
    format_rows,
    kernel_rows,
    largest_int8_block,
)
from ofa_search.quant.graph import ort_kernel_counts
from ofa_search.quant.units import int8_unit_onnx
from ofa_search.units import MBConvUnit, StemUnit

UNIT = MBConvUnit(24, 24, 72, 7, kernel=5, stride=1, act="hswish", se_channels=24,
                  precision="int8")


@pytest.mark.usefixtures("torch_one_thread")
@pytest.mark.parametrize("batch_size", [1, 2])
def test_int8_unit_has_the_fp32_units_input_and_int8_kernels(batch_size: int) -> None:
    model, inputs = int8_unit_onnx(UNIT, batch_size)
    fp32_model, fp32_inputs = unit_onnx(dataclasses.replace(UNIT, precision="fp32"),
                                        batch_size)
    assert inputs.keys() == fp32_inputs.keys() == {"input"}
    np.testing.assert_array_equal(inputs["input"], fp32_inputs["input"])
    assert inputs["input"].shape == (batch_size, 24, 7, 7)
    assert [i.name for i in model.graph.input] == [i.name for i in fp32_model.graph.input]
    counts = ort_kernel_counts(model)
    assert counts.int8_convs == 3 and counts.fp32_convs == 2  # expand/dw/project; SE fp32


def test_int8_unit_refuses_other_precisions() -> None:
    with pytest.raises(ValueError, match="precision 'fp32'; int8_unit_onnx exports int8"):
        int8_unit_onnx(dataclasses.replace(UNIT, precision="fp32"))
    with pytest.raises(ValueError, match="precision 'fp32'"):
        int8_unit_onnx(StemUnit(1, 16, 28, 1, "hswish"))


def test_largest_stage_2_block() -> None:
    unit = largest_int8_block()
    assert unit.precision == "int8" and unit.act == "hswish"  # stage 2 of mbv3_small28_mp
    assert unit.key == "mbconv:i24:o32:m144:r7:k7:s2:hswish:se0:x1:int8"


@pytest.mark.usefixtures("torch_one_thread")
def test_kernel_rows_compare_int8_with_fp32_on_one_shape() -> None:
    (row,) = kernel_rows(1, cases=[conv_case(32, 32, 3, 8)], time_cap_s=0.05)
    assert row["case"] == "conv3x3 32->32 @8x8" and row["macs"] == 32 * 32 * 9 * 64
    assert row["int8_kernels"]["int8_convs"] == 1 and row["int8_kernels"]["fp32_convs"] == 0
    assert row["fp32_kernels"]["int8_convs"] == 0 and row["fp32_kernels"]["fp32_convs"] == 1
    assert row["fp32_median_ms"] > 0 and row["int8_median_ms"] > 0
    assert row["speedup"] == pytest.approx(row["fp32_median_ms"] / row["int8_median_ms"])
    assert set(row["cpu_int8_flags"]) == set(cpu_int8_support()) >= {"avx512_vnni"}
    assert "conv3x3 32->32 @8x8" in format_rows([row])
