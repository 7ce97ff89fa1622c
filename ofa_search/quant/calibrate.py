"""Activation ranges for int8 export, measured with ONNX Runtime at one thread.

ONNX Runtime's own calibrator opens its session with default options (every core); these
helpers run the same min/max calibration on a session limited to ``threads``, and turn
ranges into uint8 parameters with the formula of :class:`~ofa_search.nn.quant.Int8ActQuant`,
so calibrated and learned parameters follow one convention (range widened to contain 0,
``scale = (hi - lo) / 255``, ``zero_point = round(-lo / scale)``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import onnx

from ofa_search.nn.quant import UINT8_MAX
from ofa_search.ort_options import exact_int8

DEFAULT_MAX_SAMPLES = 256
"""Calibration images used at most (the graphs have batch 1: one run per image)."""


def iter_samples(batches: Iterable[np.ndarray],
                 max_samples: int = DEFAULT_MAX_SAMPLES) -> Iterator[np.ndarray]:
    """Single ``[1, C, H, W]`` float32 images from ``[N, C, H, W]`` batches (arrays or
    tensors), at most ``max_samples`` of them."""
    if max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {max_samples}")
    seen = 0
    for batch in batches:
        array = np.asarray(batch, dtype=np.float32)
        if array.ndim != 4:
            raise ValueError(f"calibration batches must be [N, C, H, W], got shape "
                             f"{array.shape}")
        for i in range(array.shape[0]):
            yield np.ascontiguousarray(array[i:i + 1])
            seen += 1
            if seen >= max_samples:
                return


def tensor_ranges(model: onnx.ModelProto, tensors: Sequence[str], samples: Iterable[np.ndarray],
                  threads: int = 1) -> dict[str, tuple[float, float]]:
    """``(min, max)`` of each of ``tensors`` (intermediate tensor names of ``model``) over
    ``samples`` (the model's single input), with ONNX Runtime at ``threads`` threads and no
    graph optimisation (so every tensor exists). Raises ``ValueError`` without samples."""
    import onnxruntime as ort  # deferred: ONNX Runtime is a heavy import

    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    present = {o.name for o in augmented.graph.output}
    for name in tensors:
        if name not in present:
            augmented.graph.output.append(onnx.ValueInfoProto(name=name))
    options = exact_int8(ort.SessionOptions())
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(augmented.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    lows = np.full(len(tensors), np.inf)
    highs = np.full(len(tensors), -np.inf)
    count = 0
    for sample in samples:
        outputs = session.run(list(tensors), {input_name: sample})
        lows = np.minimum(lows, [float(np.min(o)) for o in outputs])
        highs = np.maximum(highs, [float(np.max(o)) for o in outputs])
        count += 1
    if count == 0:
        raise ValueError("calibration needs at least one image")
    return {name: (float(lo), float(hi)) for name, lo, hi in zip(tensors, lows, highs,
                                                                 strict=True)}


def uint8_qparams(lo: float, hi: float) -> tuple[float, int]:
    """``(scale, zero_point)`` of per-tensor uint8 over ``[lo, hi]`` widened to contain 0,
    as :meth:`Int8ActQuant.qparams <ofa_search.nn.quant.Int8ActQuant.qparams>` computes."""
    lo32, hi32 = np.float32(min(lo, 0.0)), np.float32(max(hi, 0.0))
    scale = np.float32(max(np.float32(hi32 - lo32) / np.float32(UINT8_MAX), np.float32(1e-8)))
    zero = np.clip(np.round(-lo32 / scale), 0, UINT8_MAX)
    return float(scale), int(zero)
