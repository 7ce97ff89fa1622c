"""Int8 units for latency tables, exported by the same path as whole int8 subnets.

A table prices what export emits only if a unit is built, folded and quantised the way
:func:`ofa_search.quant.qdq.export_int8` treats a subnet: :func:`int8_unit_onnx` builds the
unit's static module (:func:`~ofa_search.nn.static.build_unit`), initialises it like
:func:`ofa_search.profiling.builder.unit_onnx` (seed 0), observes its BN statistics and
activation ranges on a few seeded random inputs (there is no data for a unit), then runs
:func:`~ofa_search.quant.fold.fold_network` → :func:`~ofa_search.onnx_export.export_onnx` →
:func:`~ofa_search.quant.quantize.quantize_convs` with the learned scales, exactly as
``export_int8`` does.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from torch import nn

from ofa_search.nn.bn import recalibrate_bn
from ofa_search.nn.static import build_unit, init_weights
from ofa_search.onnx_export import INPUT_NAME, export_onnx
from ofa_search.quant.fold import fold_network
from ofa_search.quant.quantize import quantize_convs
from ofa_search.units import Unit

CALIBRATION_BATCHES = 4
"""Random batches that set a unit's BN statistics and activation ranges."""


def int8_unit_onnx(unit: Unit, batch_size: int = 1
                   ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The unit's int8 module as a QDQ ONNX model (fixed batch ``batch_size``), with a
    seeded input ``{"input": array}`` — the same input name, shape and values as
    :func:`ofa_search.profiling.builder.unit_onnx` gives for the fp32 unit.

    Raises ``ValueError`` unless ``unit.precision == "int8"`` (an MBConv unit of an int8
    stage, or the int8 head of a ``head_int8`` space; stem and first block are always
    fp32).
    """
    if unit.precision != "int8":
        raise ValueError(f"unit {unit.key} has precision {unit.precision!r}; int8_unit_onnx "
                         "exports int8 units only (use profiling.builder.unit_onnx for fp32)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    module = build_unit(unit)
    shape = (batch_size, unit.in_channels, unit.in_size, unit.in_size)
    return seeded_int8_onnx(module, shape), {INPUT_NAME: seeded_input(shape)}


def seeded_input(shape: tuple[int, ...]) -> np.ndarray:
    """The standard-normal float32 input of seed 0 that latency tables time units with."""
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def seeded_calibration(module: nn.Module, shape: tuple[int, ...]) -> list[torch.Tensor]:
    """Initialise ``module`` with seed 0 and observe its BN statistics and int8 activation
    ranges on :data:`CALIBRATION_BATCHES` seeded standard-normal batches of ``shape``
    (at least 8 images each), which are returned."""
    init_weights(module, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn((max(shape[0], 8), *shape[1:]), generator=gen)
               for _ in range(CALIBRATION_BATCHES)]
    recalibrate_bn(module, batches)
    return batches


def seeded_int8_onnx(module: nn.Module, shape: tuple[int, ...]) -> onnx.ModelProto:
    """``module`` (with int8 fake-quant convs, modified in place) initialised with seed 0,
    its BN statistics and activation ranges observed on seeded random batches, exported as
    QDQ int8 ONNX for the fixed input ``shape`` by the whole-subnet path."""
    batches = seeded_calibration(module, shape)
    folded = fold_network(module, int8_grid=True)
    if not folded.int8_convs:
        raise ValueError(f"{type(module).__name__} has no int8 conv to quantise")
    fp32 = export_onnx(folded.module, shape)
    return quantize_convs(fp32, folded.int8_convs, [b[:shape[0]].numpy() for b in batches],
                          learned=True)
