"""Post-training int8 quantisation of a subnet's int8 stages with ONNX Runtime.

The alternative to :func:`ofa_search.quant.qdq.export_int8` when learned scales are not
wanted (or not trusted): the subnet's fp32 weights — batch norms folded, fake quantisation
dropped — are exported, and ONNX Runtime's ``quant_pre_process`` + ``quantize_static``
(QDQ, per-channel symmetric QInt8 weights, QUInt8 activations, min/max calibration on
training images) quantise exactly the expand, depthwise and project convs of the arch's
``int8`` stages (and the head's three layers where it runs int8: ``head_int8`` spaces).
Those convs are found in the ONNX graph by their weights (:mod:`ofa_search.quant.graph`),
which no exporter renames or rewrites, so the selection does not depend on the exporter's
node names. It shares every step after the export with the learned-scale path
(:mod:`ofa_search.quant.quantize`), so both give the same graph shape and ONNX Runtime
kernels; only the origin of the scales differs.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx

from ofa_search.nn.static import StaticSubnet
from ofa_search.quant.calibrate import DEFAULT_MAX_SAMPLES
from ofa_search.quant.qdq import quantize_subnet


def export_int8_ptq(net: StaticSubnet, calibration: Iterable[np.ndarray], *,
                    max_samples: int = DEFAULT_MAX_SAMPLES,
                    threads: int = 1) -> onnx.ModelProto:
    """QDQ int8 ONNX model (batch 1, input ``input``, output ``output``) of ``net`` with its
    int8 stages post-training quantised on ``calibration`` images; the rest stays fp32.

    Args:
        net: a static subnet (its activation quantisers' ranges are not used).
        calibration: ``[N, C, r, r]`` float32 training batches, normalised like the
            model's inputs.
        max_samples: calibration images used at most.
        threads: ONNX Runtime threads used while calibrating.

    Raises:
        InvalidArchError: the arch has no int8 stage.
        ValueError: ``calibration`` holds no image.
    """
    return quantize_subnet(net, calibration, learned=False, max_samples=max_samples,
                           threads=threads)
