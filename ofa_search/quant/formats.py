"""Export formats ``onnx_int8`` (learned QAT scales) and ``onnx_int8_ptq`` (post-training).

Importing this module registers both with :func:`ofa_search.formats.register_format`. They
write from the calibration batches that :func:`ofa_search.export.export` passes to a
format's ``calibrated_write`` (the training batches of the BN recalibration).

Verification. An int8 model cannot match the PyTorch subnet to 1e-4, so ``verify`` returns
the largest absolute logit difference **relative to the logit range** of the PyTorch
outputs on the verification images, ``max|Δ| / (max(logits) − min(logits))``, with the
tolerance :data:`INT8_RELATIVE_TOLERANCE` (0.15). Top-1 agreement follows from it: a sample
whose top-2 margin exceeds twice the largest difference keeps its class. Measured on
digits (torch 2.13, onnxruntime 1.32): a QAT-trained subnet (28 px, all four stages int8,
4 epochs) is 0.013 away on 16 test images and 0.030 on all 359 (top-1 agreement 99.7 %
learned scales, 99.4 % post-training); random-init subnets, which amplify every rounding,
0.04-0.09 on an AMD EPYC, 0.09-0.32 post-training on an Intel Xeon with AVX512-VNNI
(ONNX Runtime's int8 kernels there match the QDQ graph's own fp32 semantics to 0.02, so
the gap is the quantisation's; why it is larger on that host is not known). One conv's
weight scale 1.5× too large gives 0.2-0.35 (trained) and 0.8-2.2 (random). ``verify``
also fails (VerificationError) when ONNX Runtime does not run every int8 conv of the file
with an int8 kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch

from ofa_search.errors import OfaSearchError
from ofa_search.formats import ArtefactFormat, VerificationError, register_format
from ofa_search.nn.quant import QConv2d
from ofa_search.nn.static import StaticSubnet
from ofa_search.onnx_export import save_onnx
from ofa_search.ort_options import exact_int8
from ofa_search.quant.graph import ort_kernel_counts
from ofa_search.quant.ptq import export_int8_ptq
from ofa_search.quant.qdq import export_int8

INT8_RELATIVE_TOLERANCE = 0.15
"""Largest ``max|Δlogit| / logit range`` an int8 artefact may show against PyTorch."""

Int8Exporter = Callable[[StaticSubnet, Iterable[np.ndarray]], onnx.ModelProto]


class CalibrationRequiredError(OfaSearchError, ValueError):
    """An int8 format written without calibration images."""


def relative_logit_error(got: np.ndarray, expected: np.ndarray) -> float:
    """``max|got − expected| / (max(expected) − min(expected))`` (``inf`` for NaN)."""
    span = float(np.max(expected) - np.min(expected))
    diff = float(np.max(np.abs(got - expected)))
    if not np.isfinite(diff):
        return float("inf")
    return diff / max(span, 1e-12)


def _needs_calibration(name: str) -> Callable[[StaticSubnet, Path], None]:
    def write(net: StaticSubnet, path: Path) -> None:
        raise CalibrationRequiredError(
            f"export format {name!r} quantises from training images: write it through "
            "ofa_search.export.export (which passes its calibration batches) or the format's "
            "calibrated_write(net, path, batches)")
    return write


def _calibrated_writer(exporter: Int8Exporter) -> Callable[[StaticSubnet, Path,
                                                            Sequence[np.ndarray]], None]:
    def write(net: StaticSubnet, path: Path, batches: Sequence[np.ndarray]) -> None:
        net.eval()
        save_onnx(exporter(net, batches), path)
    return write


def verify_int8(path: Path, net: StaticSubnet, x: torch.Tensor) -> float:
    """Relative logit error (see the module docs) of the int8 ONNX file at ``path`` against
    ``net`` on ``x``, run by ONNX Runtime (CPU, ``ORT_ENABLE_ALL``, one thread). Raises
    :class:`~ofa_search.export.VerificationError` if ORT runs any of the net's int8 convs
    with an fp32 kernel."""
    import onnxruntime as ort  # deferred: ONNX Runtime is a heavy import

    model = onnx.load(str(path))
    expected_int8 = sum(isinstance(m, QConv2d) for m in net.modules())
    counts = ort_kernel_counts(model)
    if counts.int8_convs < expected_int8:
        raise VerificationError(
            f"{path.name}: ONNX Runtime runs {counts.int8_convs} of the subnet's "
            f"{expected_int8} int8 convs with int8 kernels (optimised graph ops: "
            f"{counts.ops})")
    options = exact_int8(ort.SessionOptions())
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    got = np.concatenate([np.asarray(session.run(None, {name: x[i:i + 1].numpy()})[0])
                          for i in range(x.shape[0])])  # the graph's batch is fixed at 1
    net.eval()
    with torch.no_grad():
        expected = net(x).numpy()
    return relative_logit_error(got, expected)


def _int8_format(name: str, exporter: Int8Exporter, description: str) -> ArtefactFormat:
    return ArtefactFormat(name, ".onnx", "onnxruntime", INT8_RELATIVE_TOLERANCE, description,
                          _needs_calibration(name), verify_int8,
                          calibrated_write=_calibrated_writer(exporter),
                          precisions=("fp32", "int8"))


ONNX_INT8 = _int8_format(
    "onnx_int8", export_int8,
    "int8 QDQ ONNX (learned QAT scales; QLinearConv in ONNX Runtime), batch 1; verified "
    "as max|Δlogit| / logit range")
ONNX_INT8_PTQ = _int8_format(
    "onnx_int8_ptq", export_int8_ptq,
    "int8 QDQ ONNX (ONNX Runtime post-training quantisation of the int8 stages), batch 1; "
    "verified as max|Δlogit| / logit range")

for _fmt in (ONNX_INT8, ONNX_INT8_PTQ):
    register_format(_fmt, replace=True)  # replace: safe to import twice (module reloads)
