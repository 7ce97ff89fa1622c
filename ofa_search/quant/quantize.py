"""The one int8 quantisation path of ofa-search: a folded fp32 ONNX model → QDQ ONNX model
whose int8 convs ONNX Runtime runs as ``QLinearConv``.

Both int8 exports (learned QAT scales, :mod:`ofa_search.quant.qdq`; post-training,
:mod:`ofa_search.quant.ptq`) and int8 latency-table units (:mod:`ofa_search.quant.units`)
come through :func:`quantize_convs`:

1. ``quant_pre_process`` (shape inference, basic optimisation) of the fp32 model;
2. the Conv nodes of the int8 convs are found by weight (:mod:`ofa_search.quant.graph`),
   with the ReLU that alone consumes a conv's output — ONNX Runtime's quantiser then drops
   that ReLU into the conv's uint8 output (zero point 0 clamps as ReLU does);
3. every tensor the quantiser will quantise gets explicit parameters through
   ``TensorQuantOverrides``: learned ones (int8 conv inputs, per-channel weight scales) when
   given, the others from min/max calibration (:mod:`ofa_search.quant.calibrate`);
4. ``quantize_static`` (QDQ, per-channel int8 weights, uint8 activations, int32 bias);
   each int8 conv becomes ``DQ(x), DQ(w), DQ(b) → Conv → Q(y)``, the unit ONNX Runtime's
   QDQ selector fuses into ``QLinearConv``. The result is checked: every activation
   QuantizeLinear uses parameters set in step 3.

A conv's output needs a QuantizeLinear for that fusion even where the PyTorch fake-quant
model has none (a conv followed by h-swish, a projection feeding a residual add or an fp32
layer): those ranges are calibrated, and their rounding is the QDQ model's only departure
from the fake-quant model.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ofa_search.quant.calibrate import tensor_ranges, uint8_qparams
from ofa_search.quant.fold import FoldedConv
from ofa_search.quant.graph import consumers, find_conv_nodes, name_unnamed_nodes


def _one_sample_reader(input_name: str, sample: np.ndarray) -> Any:
    """A CalibrationDataReader of one input: quantize_static insists on calibrating (one
    run, on its own default-threaded session), though every tensor it quantises gets
    explicit parameters."""
    # deferred: ONNX Runtime is a heavy import
    from onnxruntime.quantization import CalibrationDataReader

    class OneSample(CalibrationDataReader):
        def __init__(self) -> None:
            self._items: Iterator[dict[str, np.ndarray]] = iter([{input_name: sample}])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._items, None)

    return OneSample()


def quantize_convs(model: onnx.ModelProto, convs: Sequence[FoldedConv],
                   samples: Sequence[np.ndarray], *, learned: bool,
                   threads: int = 1) -> onnx.ModelProto:
    """QDQ int8 version of the fp32 ``model`` in which exactly ``convs`` are quantised.

    Args:
        model: a folded fp32 model with one input (:func:`ofa_search.quant.fold.fold_network`
            then :func:`ofa_search.onnx_export.export_onnx`).
        convs: the int8 convs (their ``weight`` locates their nodes).
        samples: calibration inputs of the model's input shape.
        learned: use each conv's learned input parameters and weight scales (they must be
            set: ``fold_network(..., int8_grid=True)``); otherwise calibrate every activation
            and let the quantiser scale weights (symmetric, ``max|w| / 127`` per channel).
        threads: ONNX Runtime threads for calibration.

    Raises ``ValueError`` for no convs, no samples, or a conv not found in the graph.
    """
    # deferred: ONNX Runtime is a heavy import
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not convs:
        raise ValueError("no int8 convs to quantise")
    if not samples:
        raise ValueError("int8 quantisation needs at least one calibration image")
    with tempfile.TemporaryDirectory(prefix="ofa-int8-") as tmp:
        pre_path, out_path = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(model, pre_path)
        pre = onnx.load(str(pre_path))
        name_unnamed_nodes(pre)
        nodes, overrides = _plan(pre, convs, samples, learned, threads)
        onnx.save(pre, str(pre_path))
        quantize_static(str(pre_path), str(out_path),
                        _one_sample_reader(pre.graph.input[0].name, samples[0]),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_quantize=nodes,
                        extra_options={"TensorQuantOverrides": overrides,
                                       "ActivationSymmetric": False,
                                       "WeightSymmetric": True})
        out = onnx.load(str(out_path))
    _check_all_overridden(out, overrides)
    _restore_fp32_side_inputs(out, pre, nodes)
    return out


def _plan(model: onnx.ModelProto, convs: Sequence[FoldedConv], samples: Sequence[np.ndarray],
          learned: bool, threads: int) -> tuple[list[str], dict[str, list[dict[str, Any]]]]:
    """Names of the nodes to quantise and the overrides of every tensor they quantise."""
    found = find_conv_nodes(model, {c.path: c.weight for c in convs})
    nodes: list[str] = []
    fixed: dict[str, tuple[float, int]] = {}
    weights: dict[str, list[dict[str, Any]]] = {}
    activations: list[str] = []
    for conv in convs:
        node = found[conv.path]
        nodes.append(node.name)
        after = consumers(model, node.output[0])
        out = node.output[0]
        if len(after) == 1 and after[0].op_type == "Relu":
            nodes.append(after[0].name)
            out = after[0].output[0]
        activations += [node.input[0], out]
        if learned:
            if conv.input_scale is None or conv.input_zero_point is None \
                    or conv.weight_scale is None:
                raise ValueError(f"conv {conv.path} has no learned quantisation parameters "
                                 "(fold with int8_grid=True)")
            params = (float(np.float32(conv.input_scale)), int(conv.input_zero_point))
            if fixed.setdefault(node.input[0], params) != params:
                raise ValueError(f"tensor {node.input[0]!r} has two learned quantisations")
            weights[node.input[1]] = [{"axis": 0, "scale": np.array(s, dtype=np.float32),
                                       "zero_point": np.array(0, dtype=np.int8)}
                                      for s in conv.weight_scale]
    calibrate = list(dict.fromkeys(t for t in activations if t not in fixed))
    ranges = tensor_ranges(model, calibrate, samples, threads) if calibrate else {}
    overrides: dict[str, list[dict[str, Any]]] = dict(weights)
    for tensor in dict.fromkeys(activations):
        scale, zero = fixed[tensor] if tensor in fixed else uint8_qparams(*ranges[tensor])
        # 0-d arrays: the quantiser squeezes them and wants arrays back
        overrides[tensor] = [{"scale": np.array(scale, dtype=np.float32),
                              "zero_point": np.array(zero, dtype=np.uint8)}]
    return nodes, overrides


def _producers(model: onnx.ModelProto) -> dict[str, str]:
    return {t: n.op_type for n in model.graph.node for t in n.output}


def _restore_fp32_side_inputs(model: onnx.ModelProto, original: onnx.ModelProto,
                              quantised: Sequence[str]) -> None:
    """Feed the fp32 tensor, not its uint8 round trip, to the fp32 nodes that share an
    int8 conv's input (a residual add reading the block input): the fake-quant model
    quantises that tensor only inside the conv. In place.

    Left alone: a tensor an int8 conv produces (that conv must feed only its
    QuantizeLinear to be fused into QLinearConv), and one whose ReLU the quantiser folded
    away (its producer changed: only its quantised form is clamped)."""
    before, after = _producers(original), _producers(model)
    quantised_set = set(quantised)
    produced_by_int8 = {t for n in model.graph.node if n.name in quantised_set for t in n.output}
    graph_inputs = {i.name for i in model.graph.input}
    q_input = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    dq_source: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in q_input:
            dq_source[node.output[0]] = q_input[node.input[0]]
    conv_inputs = {dq_source.get(n.input[0]) for n in model.graph.node
                   if n.name in quantised_set and n.op_type == "Conv"}
    for node in model.graph.node:
        if node.name in quantised_set or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(node.input):
            source = dq_source.get(name)
            if source in conv_inputs and source is not None \
                    and source not in produced_by_int8 and (
                        source in graph_inputs or before.get(source) == after.get(source)):
                node.input[i] = source


def _check_all_overridden(model: onnx.ModelProto,
                          overrides: dict[str, list[dict[str, Any]]]) -> None:
    initializers = {t.name for t in model.graph.initializer}
    renamed = "_QuantizeLinear_Input"  # a graph output's producer writes <output><renamed>
    for node in model.graph.node:
        tensor = node.input[0] if node.op_type == "QuantizeLinear" else ""
        if tensor.endswith(renamed) and tensor not in overrides:
            tensor = tensor[:-len(renamed)]
        if tensor and tensor not in initializers and tensor not in overrides:
            raise RuntimeError(f"ONNX Runtime's quantiser quantised tensor {node.input[0]!r} "
                               "with parameters from its one-sample calibration; the plan "
                               "in ofa_search.quant.quantize missed it")
