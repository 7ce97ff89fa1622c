"""Turn an eval-mode static subnet into a binary package (:mod:`ofa_search.binary.archive`).

The units of the subnet are walked in order. Non-binary modules (stem, fp32 and int8
blocks, the depthwise conv and squeeze-excite of binary blocks, the head) accumulate into
the current segment; each :class:`~ofa_search.nn.binary.BinaryPointwise` closes it (one
ONNX model, exported with :func:`ofa_search.onnx_export.export_onnx`) and becomes a packed
layer; a binary block with an identity shortcut ends with an add step. So there is one
ONNX segment per stretch of non-binary code between binary convs, and no more.

A segment that holds int8 blocks is written as QDQ int8 ONNX by the path of
:func:`ofa_search.quant.qdq.export_int8` (batch norms folded, the learned QAT scales, ONNX
Runtime's quantiser), calibrated on the calibration images as they arrive at that segment
(the PyTorch subnet run up to it); so one package holds int8 segments beside binary layers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from ofa_search.atomic import atomic_write_bytes
from ofa_search.binary.archive import program_to_bytes
from ofa_search.binary.layer import PackedPointwise
from ofa_search.binary.program import (
    INPUT,
    OUTPUT,
    AddStep,
    BinaryProgram,
    BinaryStep,
    OnnxStep,
    Step,
)
from ofa_search.nn.binary import BinaryPointwise
from ofa_search.nn.quant import QConv2d
from ofa_search.nn.static import MBConv, StaticSubnet
from ofa_search.onnx_export import export_onnx
from ofa_search.quant.calibrate import iter_samples
from ofa_search.quant.fold import fold_network
from ofa_search.quant.quantize import quantize_convs
from ofa_search.units import uses_int8

BATCH_DIM = "N"
Visit = Callable[[int, dict[str, torch.Tensor], torch.Tensor], None]
"""``visit(step index, {input name: value}, output value)``: see :func:`trace_subnet`."""
CALIBRATION_IMAGES = 64
"""Calibration images an int8 segment of a package observes at most (each segment's input
is computed for all of them at once, so memory grows with the count)."""


def dynamic_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its first input and output dimension symbolic (``N``); the inner
    shape annotations, fixed at batch 1 by the exporter, are dropped."""
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    del model.graph.value_info[:]
    onnx.checker.check_model(model)
    return model


class _ProgramBuilder:
    """Collects steps while running the modules once in PyTorch (for the shapes, and for
    the inputs that int8 segments calibrate on). Only the values that later steps read are
    kept: the current one and the inputs of pending residual adds.

    With ``write=False`` nothing is exported or packed (the steps, and the names they
    read and write, are the same): ``visit(index, inputs, output)`` then sees PyTorch's
    values of each step's inputs and output (see :func:`trace_subnet`)."""

    def __init__(self, x: torch.Tensor, *, write: bool = True,
                 visit: Visit | None = None) -> None:
        self.values: dict[str, torch.Tensor] = {INPUT: x}
        self.current = INPUT
        self.pinned: set[str] = set()
        self.pending: list[nn.Module] = []
        self.steps: list[Step] = []
        self.segments: list[bytes] = []
        self.layers: list[PackedPointwise] = []
        self.write, self.visit = write, visit
        self.counts = {"segments": 0, "layers": 0}

    def _new_name(self) -> str:
        return f"v{len(self.steps) + 1}"

    def full_precision(self, module: nn.Module) -> None:
        self.pending.append(module)

    def flush(self) -> str:
        """Close the pending segment; the name of the value that now holds its output."""
        if self.pending:
            # eval() also on the wrapper: export_onnx restores the wrapper's mode recursively
            segment = nn.Sequential(*self.pending).eval()
            source = self.values[self.current]
            if self.write:
                self.segments.append(segment_bytes(segment, source))
            name = self._new_name()
            self.steps.append(OnnxStep(self._count("segments"), self.current, name))
            with torch.no_grad():
                self._advance(name, segment(source))
            self.pending = []
        return self.current

    def _advance(self, name: str, value: torch.Tensor) -> None:
        """``name`` (holding ``value``, the output of the last step) becomes the current
        value; values no later step reads are dropped."""
        if self.visit is not None:
            step = self.steps[-1]
            self.visit(len(self.steps) - 1, {k: self.values[k] for k in step.inputs()}, value)
        self.values[name] = value
        self.current = name
        for old in [k for k in self.values if k != name and k not in self.pinned]:
            del self.values[old]

    def binary(self, module: BinaryPointwise) -> None:
        source = self.flush()
        name = self._new_name()
        self.steps.append(BinaryStep(self._count("layers"), source, name))
        if self.write:
            self.layers.append(PackedPointwise.from_module(module))
        with torch.no_grad():
            self._advance(name, module(self.values[source]))

    def add(self, left: str, right: str) -> None:
        name = self._new_name()
        self.steps.append(AddStep(left, right, name))
        self.pinned.discard(right)
        self._advance(name, self.values[left] + self.values[right])

    def block(self, module: nn.Module) -> None:
        """One unit: binary MBConv blocks are split, everything else is full precision."""
        if not (isinstance(module, MBConv) and module.precision == "binary"):
            self.full_precision(module)
            return
        block_input = self.flush() if module.residual else None
        if block_input is not None:
            self.pinned.add(block_input)
        if module.expand is not None:
            self._pointwise_or_fp(module.expand)
        self.full_precision(module.depthwise)
        if module.se is not None:
            self.full_precision(module.se)
        self._pointwise_or_fp(module.project)
        if block_input is not None:
            self.add(self.flush(), block_input)

    def _count(self, what: str) -> int:
        """The index of the next segment or layer."""
        self.counts[what] += 1
        return self.counts[what] - 1

    def _pointwise_or_fp(self, module: nn.Module) -> None:
        if isinstance(module, BinaryPointwise):
            self.binary(module)
        else:
            self.full_precision(module)

    def finish(self) -> list[Step]:
        self.flush()
        if not self.steps:
            raise ValueError("nothing to package: no modules")
        last = self.steps[-1]
        if isinstance(last, OnnxStep):
            self.steps[-1] = OnnxStep(last.segment, last.input, OUTPUT)
        elif isinstance(last, BinaryStep):
            self.steps[-1] = BinaryStep(last.layer, last.input, OUTPUT)
        else:
            self.steps[-1] = AddStep(last.left, last.right, OUTPUT)
        return self.steps


def segment_bytes(segment: nn.Module, source: torch.Tensor) -> bytes:
    """The serialised ONNX model (batch dimension symbolic) of an eval-mode segment whose
    input is ``source``: QDQ int8 when it holds int8 convs, else fp32."""
    if any(isinstance(m, QConv2d) for m in segment.modules()):
        model = int8_segment(segment, source)
    else:
        model = export_onnx(segment, (1, *source.shape[1:]))
    return dynamic_batch(model).SerializeToString()


def int8_segment(segment: nn.Module, samples: torch.Tensor) -> onnx.ModelProto:
    """QDQ int8 ONNX (batch 1) of an eval-mode ``segment`` holding int8 convs, with their
    learned scales; ``samples`` ``[N, C, H, W]``: the segment's calibration inputs, for
    the conv outputs without a learned range."""
    folded = fold_network(segment, int8_grid=True)
    fp32 = export_onnx(folded.module, (1, *samples.shape[1:]))
    return quantize_convs(fp32, folded.int8_convs, list(iter_samples([samples.numpy()])),
                          learned=True)


def build_program(modules: Sequence[nn.Module], input_shape: tuple[int, int, int], *,
                  calibration: Sequence[np.ndarray] | None = None, arch: str | None = None,
                  space: str | None = None, unit: str | None = None) -> BinaryProgram:
    """The program of ``modules`` run in sequence on one sample of ``input_shape``
    ``(C, H, W)``; the modules must be in eval mode. Int8 layers (calibrated QAT convs)
    need ``calibration``: ``[N, C, H, W]`` float32 batches of real inputs (the first
    :data:`CALIBRATION_IMAGES` images are used)."""
    int8 = any(isinstance(m, QConv2d) for module in modules for m in module.modules())
    if int8 and not calibration:
        raise ValueError("int8 layers in a binary package need calibration images (the "
                         "training batches that export passes): none were given")
    training = [type(m).__name__ for m in modules if m.training]
    if training:
        raise ValueError(f"put the network in eval mode before packaging (in training mode: "
                         f"{', '.join(training)})")
    if int8:
        assert calibration is not None
        images = np.concatenate(list(iter_samples(calibration, CALIBRATION_IMAGES)))
        if images.shape[1:] != tuple(input_shape):
            raise ValueError(f"calibration images must be [N, {', '.join(map(str, input_shape))}]"
                             f", got {list(images.shape)}")
        start = torch.from_numpy(images)
    else:
        start = torch.zeros((1, *input_shape))
    builder = _ProgramBuilder(start)
    for module in modules:
        builder.block(module)
    steps = builder.finish()
    return BinaryProgram(input_shape=tuple(input_shape), steps=tuple(steps),
                         segments=tuple(builder.segments), layers=tuple(builder.layers),
                         arch=arch, space=space, unit=unit)


def subnet_program(net: StaticSubnet, calibration: Sequence[np.ndarray] | None = None
                   ) -> BinaryProgram:
    """The program of an eval-mode static subnet (see :func:`build_program`;
    ``calibration`` is needed, and used, only when the arch has int8 stages)."""
    if not isinstance(net, StaticSubnet):
        raise TypeError(f"expected a StaticSubnet, got {type(net).__name__}")
    if net.training:
        raise ValueError("put the network in eval mode (net.eval()) before packaging")
    _, c, h, w = net.input_shape(1)
    return build_program(list(net.units), (c, h, w),
                         calibration=calibration if uses_int8(net.arch) else None,
                         arch=net.arch.to_string(), space=net.arch.space)


def trace_subnet(net: StaticSubnet, x: torch.Tensor, visit: Visit) -> torch.Tensor:
    """Run an eval-mode static subnet on ``x`` as its package's steps (the same steps, and
    names, that :func:`subnet_program` writes), in PyTorch: ``visit`` is called once per
    step, in order, with the step's index, PyTorch's values of its inputs and of its
    output. Returns the output (the logits). Nothing is exported; what is not read
    again is dropped as the walk goes on, so memory stays near one forward pass."""
    if not isinstance(net, StaticSubnet):
        raise TypeError(f"expected a StaticSubnet, got {type(net).__name__}")
    if net.training:
        raise ValueError("put the network in eval mode (net.eval()) before tracing")
    builder = _ProgramBuilder(x, write=False, visit=visit)
    for module in net.units:
        builder.block(module)
    builder.finish()
    return builder.values[builder.current]


def write_binary_package(net: StaticSubnet, path: str | os.PathLike[str],
                         calibration: Sequence[np.ndarray] | None = None) -> Path:
    """Write ``net`` (eval mode) as one binary package file at ``path``, atomically
    (a temporary file in the same folder, then a rename); ``calibration``: training
    batches for the int8 segments of an arch with int8 stages."""
    return atomic_write_bytes(path, program_to_bytes(subnet_program(net, calibration)))
