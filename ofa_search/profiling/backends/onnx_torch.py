"""A small ONNX → PyTorch executor for the graphs this project exports (fp32 units and
subnets), so that the ``torch`` latency backend runs the very model the other backends run.

:class:`OnnxModule` is an ``nn.Module`` built from an ``onnx.ModelProto``: initializers
become buffers on the chosen device (floating ones cast to the chosen dtype, integer ones
such as shapes kept integer), and ``forward`` runs the graph's nodes in order with torch
ops. Values that steer an op's shape (``Reshape``'s shape, ``ReduceMean``'s axes input) must
be constants of the graph; they are read once, when the module is built, so ``forward``
never synchronises with the device (a requirement of CUDA-graph capture).

Only the operators that :func:`~ofa_search.onnx_export.export_onnx` emits for fp32 units and
subnets (with either exporter) are supported, with the attribute values they may carry
(:data:`SUPPORTED_OPS`); anything else — another op, another domain (int8 QDQ, binary
custom ops), an attribute value not handled — is refused with a
:class:`~ofa_search.profiling.backends.base.BackendUnavailableError` naming it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper
from torch import nn

from ofa_search.profiling.backends.base import BackendUnavailableError, graph_input_names

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16,
                                  "bf16": torch.bfloat16}
"""Profile dtype names → the torch dtype that floating tensors are cast to."""

Op = Callable[..., Any]


@dataclass(frozen=True)
class _Node:
    """One compiled node: ``fn`` applied to the values named ``inputs`` gives ``outputs``."""

    op_type: str
    fn: Op
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


class _Unsupported(Exception):
    """Raised while compiling a node; becomes one BackendUnavailableError naming it."""


class _Graph:
    """What node compilers may ask of the graph: attributes and constant inputs."""

    def __init__(self, constants: dict[str, np.ndarray]) -> None:
        self.constants = constants

    def constant(self, node: onnx.NodeProto, index: int) -> np.ndarray:
        name = node.input[index]
        if name not in self.constants:
            raise _Unsupported(f"its input {index} ({name!r}) must be a constant of the "
                               "graph (an initializer or a Constant node)")
        return self.constants[name]


def _attrs(node: onnx.NodeProto, allowed: dict[str, Any]) -> dict[str, Any]:
    """``node``'s attributes over ``allowed``'s defaults; an unknown attribute is refused."""
    values = dict(allowed)
    for attribute in node.attribute:
        if attribute.name not in allowed:
            raise _Unsupported(f"attribute {attribute.name!r} is not supported")
        value = helper.get_attribute_value(attribute)
        values[attribute.name] = value.decode() if isinstance(value, bytes) else value
    return values


def _check_inputs(node: onnx.NodeProto, low: int, high: int) -> None:
    count = len(node.input)
    if not low <= count <= high or any(not name for name in node.input):
        raise _Unsupported(f"it takes {low}..{high} non-optional inputs, got "
                           f"{list(node.input)}")


# -- the operators ---------------------------------------------------------------------


def _conv(node: onnx.NodeProto, graph: _Graph) -> Op:
    _check_inputs(node, 2, 3)
    a = _attrs(node, {"auto_pad": "NOTSET", "dilations": None, "group": 1,
                      "kernel_shape": None, "pads": None, "strides": None})
    weight = graph.constants.get(node.input[1])
    rank = len(a["kernel_shape"] or ()) or (weight.ndim - 2 if weight is not None else 2)
    if rank not in (1, 2, 3):
        raise _Unsupported(f"{rank}-d convolutions are not supported")
    if weight is not None and a["kernel_shape"] is not None \
            and tuple(weight.shape[2:]) != tuple(a["kernel_shape"]):
        raise _Unsupported(f"kernel_shape {a['kernel_shape']} differs from its weight's "
                           f"{list(weight.shape[2:])}")
    if a["auto_pad"] == "VALID":
        pads = [0] * (2 * rank)
    elif a["auto_pad"] == "NOTSET":
        pads = list(a["pads"] or [0] * (2 * rank))
    else:
        raise _Unsupported(f"auto_pad={a['auto_pad']!r} is not supported (NOTSET, VALID)")
    strides = list(a["strides"] or [1] * rank)
    dilations = list(a["dilations"] or [1] * rank)
    if not len(pads) == 2 * rank or len(strides) != rank or len(dilations) != rank:
        raise _Unsupported(f"pads, strides or dilations do not fit a {rank}-d convolution")
    group = int(a["group"])
    conv = (F.conv1d, F.conv2d, F.conv3d)[rank - 1]
    begin, end = pads[:rank], pads[rank:]
    if begin == end:
        padding = tuple(begin)

        def run(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None
                ) -> torch.Tensor:
            return conv(x, w, b, strides, padding, dilations, group)

        return run
    # asymmetric: F.pad takes (last dim begin, last dim end, previous dim ...)
    explicit = [p for i in reversed(range(rank)) for p in (begin[i], end[i])]

    def run_padded(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None
                   ) -> torch.Tensor:
        return conv(F.pad(x, explicit), w, b, strides, 0, dilations, group)

    return run_padded


def _gemm(node: onnx.NodeProto, graph: _Graph) -> Op:
    _check_inputs(node, 2, 3)
    a = _attrs(node, {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0})
    alpha, beta = float(a["alpha"]), float(a["beta"])
    trans_a, trans_b = bool(a["transA"]), bool(a["transB"])
    if trans_b and not trans_a and alpha == 1.0 and beta == 1.0:
        def linear(x: torch.Tensor, w: torch.Tensor, c: torch.Tensor | None = None
                   ) -> torch.Tensor:
            if c is None or c.dim() <= 1:
                return F.linear(x, w, c)
            return F.linear(x, w) + c

        return linear

    def gemm(x: torch.Tensor, w: torch.Tensor, c: torch.Tensor | None = None
             ) -> torch.Tensor:
        y = (x.t() if trans_a else x) @ (w.t() if trans_b else w)
        if alpha != 1.0:
            y = y * alpha
        if c is not None:
            y = y + (c if beta == 1.0 else c * beta)
        return y

    return gemm


def _unary(fn: Op) -> Callable[[onnx.NodeProto, _Graph], Op]:
    def compile_(node: onnx.NodeProto, graph: _Graph) -> Op:
        _check_inputs(node, 1, 1)
        _attrs(node, {})
        return fn

    return compile_


def _binary(fn: Op) -> Callable[[onnx.NodeProto, _Graph], Op]:
    def compile_(node: onnx.NodeProto, graph: _Graph) -> Op:
        _check_inputs(node, 2, 2)
        _attrs(node, {})
        return fn

    return compile_


def _hard_sigmoid(node: onnx.NodeProto, graph: _Graph) -> Op:
    _check_inputs(node, 1, 1)
    a = _attrs(node, {"alpha": 0.2, "beta": 0.5})
    alpha, beta = float(a["alpha"]), float(a["beta"])
    if np.float32(alpha) == np.float32(1 / 6) and beta == 0.5:
        return F.hardsigmoid  # relu6(x + 3) / 6: the same function, one kernel

    def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x * alpha + beta, 0.0, 1.0)

    return hard_sigmoid


def _reduce_mean(node: onnx.NodeProto, graph: _Graph) -> Op:
    _check_inputs(node, 1, 2)
    a = _attrs(node, {"axes": None, "keepdims": 1, "noop_with_empty_axes": 0})
    if len(node.input) == 2:  # opset 18: the axes are an input
        if a["axes"] is not None:
            raise _Unsupported("axes given both as an attribute and as an input")
        axes = [int(v) for v in graph.constant(node, 1).reshape(-1)]
    else:
        axes = [int(v) for v in a["axes"] or ()]
    keep = bool(a["keepdims"])
    if not axes:
        if a["noop_with_empty_axes"]:
            return _identity

        def mean_all(x: torch.Tensor, *_axes: torch.Tensor) -> torch.Tensor:
            return torch.mean(x, dim=tuple(range(x.dim())), keepdim=keep)

        return mean_all
    dims = tuple(axes)

    def mean(x: torch.Tensor, *_axes: torch.Tensor) -> torch.Tensor:
        return torch.mean(x, dim=dims, keepdim=keep)

    return mean


def _flatten(node: onnx.NodeProto, graph: _Graph) -> Op:
    _check_inputs(node, 1, 1)
    axis = int(_attrs(node, {"axis": 1})["axis"])

    def flatten(x: torch.Tensor) -> torch.Tensor:
        cut = axis + x.dim() if axis < 0 else axis
        return x.reshape(math.prod(x.shape[:cut]), math.prod(x.shape[cut:]))

    return flatten


def _reshape(node: onnx.NodeProto, graph: _Graph) -> Op:
    _check_inputs(node, 2, 2)
    allow_zero = bool(_attrs(node, {"allowzero": 0})["allowzero"])
    shape = [int(v) for v in graph.constant(node, 1).reshape(-1)]
    if shape.count(-1) > 1:
        raise _Unsupported(f"shape {shape} has more than one -1")

    def reshape(x: torch.Tensor, _shape: torch.Tensor) -> torch.Tensor:
        target = shape if allow_zero else [x.shape[i] if s == 0 else s
                                           for i, s in enumerate(shape)]
        return x.reshape(target)

    return reshape


def _identity(x: torch.Tensor, *_: Any) -> torch.Tensor:
    return x


def _hardswish(x: torch.Tensor) -> torch.Tensor:
    return F.hardswish(x)  # x * max(0, min(1, x / 6 + 1 / 2)), ONNX's HardSwish


SUPPORTED_OPS: dict[str, Callable[[onnx.NodeProto, _Graph], Op]] = {
    "Add": _binary(torch.add),
    "Conv": _conv,
    "Flatten": _flatten,
    "Gemm": _gemm,
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": _unary(_hardswish),
    "Identity": _unary(_identity),
    "Mul": _binary(torch.mul),
    "ReduceMean": _reduce_mean,
    "Relu": _unary(F.relu),
    "Reshape": _reshape,
}
"""ONNX operator (default domain) → compiler of a node into a function of torch tensors.
``Constant`` nodes are supported too: they are folded when the module is built."""

_CONSTANT_ATTRIBUTES = ("value", "value_float", "value_floats", "value_int", "value_ints")


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    if len(node.attribute) != 1 or node.attribute[0].name not in _CONSTANT_ATTRIBUTES:
        names = [a.name for a in node.attribute]
        raise _Unsupported(f"attributes {names} are not supported (one of "
                           f"{', '.join(_CONSTANT_ATTRIBUTES)})")
    attribute = node.attribute[0]
    value = helper.get_attribute_value(attribute)
    if attribute.name == "value":
        return numpy_helper.to_array(value)
    dtype = np.float32 if attribute.name.startswith("value_float") else np.int64
    return np.asarray(value, dtype=dtype)


def _refuse(node: onnx.NodeProto, why: str) -> BackendUnavailableError:
    domain = f" (domain {node.domain!r})" if node.domain not in ("", "ai.onnx") else ""
    name = f" {node.name!r}" if node.name else ""
    return BackendUnavailableError(
        f"the torch latency backend cannot run ONNX op {node.op_type}{domain}{name}: {why}; "
        f"it supports {', '.join(sorted(SUPPORTED_OPS))} and Constant (the fp32 graphs "
        "this project exports), not int8 QDQ or binary graphs")


class OnnxModule(nn.Module):
    """``model``'s graph as a module: ``forward(*inputs)`` takes the graph inputs (those
    that are not initializers) in graph order and returns the graph outputs as a tuple.

    Floating inputs are cast to ``dtype``; floating initializers are cast to ``dtype`` and
    integer ones kept; everything is placed on ``device``. Raises
    :class:`BackendUnavailableError` for an op (or attribute value) it does not support.
    """

    def __init__(self, model: onnx.ModelProto, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        self.dtype = dtype
        graph = model.graph
        for opset in model.opset_import:
            if opset.domain not in ("", "ai.onnx"):
                raise BackendUnavailableError(
                    f"the torch latency backend cannot run ONNX models with operators of "
                    f"domain {opset.domain!r} (int8 QDQ and binary graphs are not supported)")
        constants: dict[str, np.ndarray] = {
            init.name: numpy_helper.to_array(init) for init in graph.initializer}
        self.input_names: tuple[str, ...] = graph_input_names(model)
        self.output_names: tuple[str, ...] = tuple(o.name for o in graph.output)
        nodes: list[_Node] = []
        for node in graph.node:
            if node.domain not in ("", "ai.onnx"):
                raise _refuse(node, "only the default ONNX domain is supported")
            try:
                if node.op_type == "Constant":
                    if len(node.output) != 1:
                        raise _Unsupported("a Constant has one output")
                    constants[node.output[0]] = _constant_value(node)
                    continue
                compile_node = SUPPORTED_OPS.get(node.op_type)
                if compile_node is None:
                    raise _Unsupported("this op is not supported")
                if len(node.output) != 1:
                    raise _Unsupported(f"{len(node.output)} outputs (only one is supported)")
                fn = compile_node(node, _Graph(constants))
            except _Unsupported as exc:
                raise _refuse(node, str(exc)) from None
            nodes.append(_Node(node.op_type, fn, tuple(node.input), tuple(node.output)))
        self._nodes = tuple(nodes)
        # constants become buffers (``.``-free names); _slots maps ONNX names to them
        used = {name for node in nodes for name in node.inputs} | set(self.output_names)
        self._slots: dict[str, str] = {}
        for index, (name, array) in enumerate(constants.items()):
            if name not in used or name in self.input_names:
                continue
            tensor = torch.from_numpy(np.array(array, copy=True))
            if tensor.is_floating_point():
                tensor = tensor.to(dtype)
            self.register_buffer(f"c{index}", tensor.to(device))
            self._slots[name] = f"c{index}"
        known = set(self.input_names) | set(self._slots)
        for node in nodes:
            missing = [name for name in node.inputs if name not in known]
            if missing:
                raise BackendUnavailableError(
                    f"ONNX node {node.op_type} reads {missing}, which no earlier node, input "
                    "or initializer produces (the graph is not topologically sorted)")
            known.update(node.outputs)
        absent = [name for name in self.output_names if name not in known]
        if absent:
            raise BackendUnavailableError(f"ONNX graph outputs {absent} are never produced")

    @property
    def op_types(self) -> tuple[str, ...]:
        """The op type of every compiled node, in execution order."""
        return tuple(node.op_type for node in self._nodes)

    def cast_input(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` as ``forward`` computes with it (floating → the module's dtype)."""
        return value.to(self.dtype) if value.is_floating_point() else value

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"the graph takes {len(self.input_names)} input(s) "
                             f"{list(self.input_names)}, got {len(inputs)}")
        buffers = self._buffers  # not getattr: this runs inside every timed call
        values: dict[str, Any] = {name: buffers[slot] for name, slot in self._slots.items()}
        for name, value in zip(self.input_names, inputs, strict=True):
            values[name] = self.cast_input(value)
        for node in self._nodes:
            values[node.outputs[0]] = node.fn(*(values[name] for name in node.inputs))
        return tuple(values[name] for name in self.output_names)


def supported_op_types() -> Sequence[str]:
    """Every ONNX op type :class:`OnnxModule` runs (default domain)."""
    return (*sorted(SUPPORTED_OPS), "Constant")
