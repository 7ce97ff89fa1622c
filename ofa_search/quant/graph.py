"""ONNX graph helpers for int8 export: find the nodes of given convs, and count the kernels
ONNX Runtime really runs.

Conv nodes are found by their weights, not by names: both PyTorch exporters (TorchScript
and ``torch.export``) and ONNX Runtime's pre-processing rename nodes in their own ways, but
all of them keep a conv's weight initializer byte for byte (batch norms are folded in
PyTorch before export, see :mod:`ofa_search.quant.fold`, so no exporter rewrites them).

:func:`ort_kernel_counts` answers "did ONNX Runtime pick int8 kernels?": it lets ORT
optimise the model at ``ORT_ENABLE_ALL`` on the CPU provider, saves the optimised graph
(``SessionOptions.optimized_model_filepath``) and counts its node types. A QDQ model whose
QuantizeLinear/DequantizeLinear pairs ORT could not fuse runs fp32 Conv kernels between
them — slower than plain fp32, which only these counts reveal.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ofa_search.ort_options import exact_int8

INT8_CONV_OPS = frozenset({"QLinearConv", "ConvInteger"})
"""Node types of int8 convolution kernels (any domain: ORT also has an NHWC QLinearConv)."""
INT8_OPS = INT8_CONV_OPS | {"QLinearMatMul", "MatMulInteger", "QLinearAdd", "QLinearMul",
                            "QLinearGlobalAveragePool", "QLinearAveragePool",
                            "QLinearSigmoid", "QLinearLeakyRelu", "QLinearConcat",
                            "QLinearSoftmax", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
"""Node types that compute on int8/uint8 data."""
FP32_CONV_OPS = frozenset({"Conv", "FusedConv"})
"""fp32 convolution kernels (``Conv`` also in ORT's NCHWc domain)."""


def _key(array: np.ndarray) -> tuple[tuple[int, ...], str, bytes]:
    return tuple(array.shape), array.dtype.str, np.ascontiguousarray(array).tobytes()


def find_conv_nodes(model: onnx.ModelProto,
                    weights: Mapping[str, np.ndarray]) -> dict[str, onnx.NodeProto]:
    """The Conv node of ``model`` whose weight initializer equals each of ``weights`` (by
    key: any label, e.g. a module path). Raises ``ValueError`` naming the label when a
    weight matches no Conv node, or more than one."""
    initializers = {t.name: t for t in model.graph.initializer}
    by_weight: dict[tuple[tuple[int, ...], str, bytes], list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in initializers:
            array = numpy_helper.to_array(initializers[node.input[1]])
            by_weight.setdefault(_key(array), []).append(node)
    found: dict[str, onnx.NodeProto] = {}
    for label, weight in weights.items():
        nodes = by_weight.get(_key(np.asarray(weight, dtype=np.float32)), [])
        if len(nodes) != 1:
            raise ValueError(f"conv {label!r}: {len(nodes)} Conv nodes of the ONNX graph have "
                             f"its weight {tuple(weight.shape)} (expected exactly one)")
        found[label] = nodes[0]
    return found


def name_unnamed_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node of ``model`` a unique name (in place): ONNX Runtime's
    quantiser selects nodes by name."""
    taken = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def consumers(model: onnx.ModelProto, tensor: str) -> list[onnx.NodeProto]:
    """Nodes of ``model``'s graph reading ``tensor``."""
    return [n for n in model.graph.node if tensor in n.input]


@dataclass(frozen=True)
class KernelCounts:
    """Node types of a model after ONNX Runtime's graph optimisation."""

    ops: dict[str, int]

    @property
    def int8_convs(self) -> int:
        """Convolutions run by int8 kernels (QLinearConv, ConvInteger)."""
        return sum(n for op, n in self.ops.items() if op in INT8_CONV_OPS)

    @property
    def fp32_convs(self) -> int:
        """Convolutions left to fp32 kernels (Conv, FusedConv, NCHWc Conv)."""
        return sum(n for op, n in self.ops.items() if op in FP32_CONV_OPS)

    @property
    def int8_nodes(self) -> int:
        """All nodes computing on int8/uint8 data."""
        return sum(n for op, n in self.ops.items() if op in INT8_OPS)

    @property
    def quantize_nodes(self) -> int:
        """Remaining QuantizeLinear / DequantizeLinear conversions."""
        return self.ops.get("QuantizeLinear", 0) + self.ops.get("DequantizeLinear", 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the op counts and the totals above."""
        return {"int8_convs": self.int8_convs, "fp32_convs": self.fp32_convs,
                "int8_nodes": self.int8_nodes, "quantize_nodes": self.quantize_nodes,
                "ops": dict(sorted(self.ops.items()))}


def count_ops(nodes: Iterable[onnx.NodeProto]) -> dict[str, int]:
    """``op_type → count`` (domains merged)."""
    return dict(Counter(n.op_type for n in nodes))


def ort_optimized_model(model: onnx.ModelProto, threads: int = 1) -> onnx.ModelProto:
    """``model`` as ONNX Runtime's CPU provider optimises it at ``ORT_ENABLE_ALL`` (read
    back from ``optimized_model_filepath``)."""
    import onnxruntime as ort  # deferred: ONNX Runtime is a heavy import

    with tempfile.TemporaryDirectory(prefix="ofa-int8-") as tmp:
        path = Path(tmp) / "optimized.onnx"
        options = exact_int8(ort.SessionOptions())
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(path)
        options.log_severity_level = 3  # not the warning that NCHWc graphs are host-specific
        ort.InferenceSession(model.SerializeToString(), options,
                             providers=["CPUExecutionProvider"])
        return onnx.load(str(path))


def ort_kernel_counts(model: onnx.ModelProto, threads: int = 1) -> KernelCounts:
    """Node types of ``model`` after ONNX Runtime's ``ORT_ENABLE_ALL`` optimisation."""
    return KernelCounts(count_ops(ort_optimized_model(model, threads).graph.node))
