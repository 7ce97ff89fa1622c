"""Whole binary MBConv blocks, recognised in a stored program (for the fused TVM kernel).

A binary MBConv block with an expand conv is stored (see :mod:`ofa_search.binary.package`)
as the steps::

    BinaryStep(expand, a → b)  OnnxStep(depthwise [+ SE], b → c)  BinaryStep(project, c → d)
    [AddStep(d, a → e)]                                        # identity residual

:func:`find_blocks` finds such runs in a :class:`~ofa_search.binary.program.BinaryProgram`
and :func:`parse_depthwise_segment` reads the depthwise conv (BN folded), its activation
and the optional squeeze-excite back out of the ONNX segment, so that
:mod:`ofa_search.binary.tvm_block` can compile the block as one function at load time,
from the package file as it is. Anything that does not match exactly (another exporter's
graph, a segment holding more than the block's own layers) is simply not fused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ofa_search.binary.layer import PackedPointwise
from ofa_search.binary.program import AddStep, BinaryProgram, BinaryStep, OnnxStep

_ACTS = {"Relu": "relu", "HardSwish": "hswish"}


@dataclass(frozen=True, eq=False)
class DepthwiseSE:
    """``act(depthwise_k×k(x) + bias)`` [then squeeze-excite], all BN folded, float32.

    Attributes:
        weight: ``[M, k, k]``; bias: ``[M]``; stride: 1 or 2 ('same' zero padding ``k//2``).
        act: ``relu`` or ``hswish``.
        se_reduce / se_reduce_bias: ``[Q, M]`` / ``[Q]`` (``None`` without SE);
        se_expand / se_expand_bias: ``[M, Q]`` / ``[M]``.
    """

    weight: np.ndarray
    bias: np.ndarray
    stride: int
    act: str
    se_reduce: np.ndarray | None = None
    se_reduce_bias: np.ndarray | None = None
    se_expand: np.ndarray | None = None
    se_expand_bias: np.ndarray | None = None

    @property
    def channels(self) -> int:
        return int(self.weight.shape[0])

    @property
    def kernel(self) -> int:
        return int(self.weight.shape[1])

    @property
    def se_channels(self) -> int:
        return 0 if self.se_reduce is None else int(self.se_reduce.shape[0])


@dataclass(frozen=True, eq=False)
class BlockPlan:
    """A fusable block: the indices of its steps and its parts."""

    first_step: int
    last_step: int
    input: str
    output: str
    expand: PackedPointwise
    depthwise: DepthwiseSE
    project: PackedPointwise
    residual: bool


def _attrs(node: Any) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def parse_depthwise_segment(model_bytes: bytes) -> DepthwiseSE | None:
    """The depthwise conv [+ SE] of a binary block's ONNX segment, or ``None`` when the
    segment is anything else."""
    try:
        model = onnx.load_from_string(model_bytes)
    except Exception:
        return None
    graph = model.graph
    consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    alias: dict[str, str] = {}
    nodes = []
    for node in graph.node:
        if node.op_type == "Constant":
            value = _attrs(node).get("value")
            if value is None:
                return None
            consts[node.output[0]] = numpy_helper.to_array(value)
        elif node.op_type == "Identity":
            src = alias.get(node.input[0], node.input[0])
            if src in consts:
                consts[node.output[0]] = consts[src]
            else:
                alias[node.output[0]] = src
        else:
            nodes.append(node)
    if len(graph.input) - sum(i.name in consts for i in graph.input) != 1 \
            or len(graph.output) != 1:
        return None
    source = next(i.name for i in graph.input if i.name not in consts)

    def arg(node: Any, index: int) -> str:
        inputs = node.input
        name = inputs[index] if index < len(inputs) else ""
        return alias.get(name, name)

    def const(node: Any, index: int) -> np.ndarray | None:
        value = consts.get(arg(node, index))
        return None if value is None else np.asarray(value, dtype=np.float64)

    try:
        pos = 0
        conv = nodes[pos]
        a = _attrs(conv)
        weight = const(conv, 0 + 1)
        if conv.op_type != "Conv" or arg(conv, 0) != source or weight is None \
                or weight.ndim != 4:
            return None
        m, one, k, k2 = weight.shape
        stride = [int(v) for v in a.get("strides", [1, 1])]
        pads = [int(v) for v in a.get("pads", [0] * 4)]
        dilations = [int(v) for v in a.get("dilations", [1, 1])]
        auto_pad = a.get("auto_pad", b"NOTSET")
        if one != 1 or k != k2 or k % 2 == 0 or a.get("group") != m or pads != [k // 2] * 4 \
                or dilations != [1, 1] or auto_pad not in (b"NOTSET", "NOTSET") \
                or stride[0] != stride[1] or stride[0] not in (1, 2):
            return None
        bias = const(conv, 2) if len(conv.input) > 2 and conv.input[2] else np.zeros(m)
        if bias is None or bias.shape != (m,):
            return None
        weight = weight[:, 0]
        value = conv.output[0]
        pos += 1
        if nodes[pos].op_type == "BatchNormalization":
            bn = nodes[pos]
            params = [const(bn, i) for i in range(1, 5)]
            if arg(bn, 0) != value or any(p is None or p.shape != (m,) for p in params) \
                    or len(bn.output) != 1:
                return None
            gamma, beta, mean, var = (np.asarray(p) for p in params)
            factor = gamma / np.sqrt(var + float(_attrs(bn).get("epsilon", 1e-5)))
            weight = weight * factor[:, None, None]
            bias = (bias - mean) * factor + beta
            value = bn.output[0]
            pos += 1
        act_node = nodes[pos]
        if act_node.op_type not in _ACTS or arg(act_node, 0) != value:
            return None
        act = _ACTS[act_node.op_type]
        value = act_node.output[0]
        pos += 1
        se: list[np.ndarray] = []
        if pos < len(nodes):
            mean_node, reduce, relu, expand, gate, mul = nodes[pos:pos + 6]
            ma = _attrs(mean_node)
            axes = ma.get("axes")
            if axes is None and len(mean_node.input) > 1:
                axes_value = const(mean_node, 1)
                axes = None if axes_value is None else axes_value.astype(int).tolist()
            if mean_node.op_type != "ReduceMean" or arg(mean_node, 0) != value \
                    or sorted(axes or []) != [2, 3] or ma.get("keepdims", 1) != 1:
                return None
            prev = mean_node.output[0]
            for conv_node, act_name in ((reduce, "Relu"), (expand, "HardSigmoid")):
                act_of = relu if act_name == "Relu" else gate
                w, b = const(conv_node, 1), const(conv_node, 2)
                ca = _attrs(conv_node)
                if conv_node.op_type != "Conv" or arg(conv_node, 0) != prev or w is None \
                        or b is None or w.ndim != 4 or w.shape[2:] != (1, 1) \
                        or ca.get("group", 1) != 1 or act_of.op_type != act_name \
                        or arg(act_of, 0) != conv_node.output[0]:
                    return None
                se += [w[:, :, 0, 0], b]
                prev = act_of.output[0]
            ga = _attrs(gate)
            if abs(float(ga.get("alpha", 0.2)) - 1 / 6) > 1e-6 \
                    or abs(float(ga.get("beta", 0.5)) - 0.5) > 1e-6:
                return None
            if mul.op_type != "Mul" or sorted((arg(mul, 0), arg(mul, 1))) != sorted((value, prev)):
                return None
            q = se[0].shape[0]
            if se[0].shape != (q, m) or se[1].shape != (q,) or se[2].shape != (m, q) \
                    or se[3].shape != (m,):
                return None
            value = mul.output[0]
            pos += 6
        if pos != len(nodes) or alias.get(graph.output[0].name, graph.output[0].name) != value:
            return None
    except (IndexError, TypeError, ValueError):
        return None
    f32 = [np.ascontiguousarray(v, dtype=np.float32) for v in (weight, bias, *se)]
    return DepthwiseSE(f32[0], f32[1], int(stride[0]), act, *f32[2:])


def find_blocks(program: BinaryProgram) -> list[BlockPlan]:
    """The whole binary MBConv blocks of ``program`` that one fused kernel can run."""
    steps = program.steps
    reads: dict[str, int] = {}
    for step in steps:
        for name in step.inputs():
            reads[name] = reads.get(name, 0) + 1
    plans: list[BlockPlan] = []
    i = 0
    while i + 2 < len(steps):
        plan = _match(program, i, reads)
        if plan is None:
            i += 1
        else:
            plans.append(plan)
            i = plan.last_step + 1
    return plans


def _match(program: BinaryProgram, i: int, reads: dict[str, int]) -> BlockPlan | None:
    first, middle, last = program.steps[i:i + 3]
    if not (isinstance(first, BinaryStep) and isinstance(middle, OnnxStep)
            and isinstance(last, BinaryStep)):
        return None
    expand, project = program.layers[first.layer], program.layers[last.layer]
    if expand.act is None or project.act is not None or middle.input != first.output \
            or last.input != middle.output \
            or reads.get(first.output) != 1 or reads.get(middle.output) != 1:
        return None
    depthwise = parse_depthwise_segment(program.segments[middle.segment])
    if depthwise is None or depthwise.channels != expand.out_channels \
            or project.in_channels != depthwise.channels:
        return None
    output, end, residual = last.output, i + 2, False
    if i + 3 < len(program.steps):
        add = program.steps[i + 3]
        if isinstance(add, AddStep) and add.left == last.output and add.right == first.input \
                and reads.get(last.output) == 1 and depthwise.stride == 1 \
                and project.out_channels == expand.in_channels:
            output, end, residual = add.output, i + 3, True
    return BlockPlan(i, end, first.input, output, expand, depthwise, project, residual)
