"""Int8 ONNX export of a subnet with its learned (quantisation-aware training) scales.

The path, and why (measured with torch 2.13, onnxruntime 1.32, on a calibrated all-int8
``mbv3_small28_mp`` subnet at 20 px, 24 int8 convs, one thread):

- **Not** PyTorch exporting the fake-quant ops. The ``torch.export`` (dynamo) exporter
  fails on FakeQuantize ops, and the TorchScript exporter — deprecated — refuses our weight
  range ("ONNX allows only (0, 127), (0, 255) and (-128, 127). Got (-127, 127)"). With
  that worked around (range -128..127, BN folded) it emits convs with an fp32 bias and no
  QuantizeLinear after them, which ONNX Runtime's QDQ selector does not fuse: only 6 of
  the 24 int8 convs became QLinearConv, 18 ran as fp32 Conv between Q/DQ pairs, and the
  model took 0.485 ms against 0.113 ms for fp32.
- **Instead**: batch norms folded into the convs in PyTorch, the int8 weights put exactly
  on their learned grid (:mod:`ofa_search.quant.fold`), a plain fp32 export through
  :func:`ofa_search.onnx_export.export_onnx` (either exporter, so it outlives the
  TorchScript one), then ONNX Runtime's own quantiser (``quantize_static``, QDQ) with every
  learned scale passed as a ``TensorQuantOverrides`` entry (:mod:`ofa_search.quant.quantize`).
  ORT's quantiser emits the QDQ shape its CPU provider fuses (int32 bias DQ, Q after the
  conv, ReLU folded into the output's zero point): 24 of 24 convs run as QLinearConv
  (0.146 ms; that int8 is still slower than fp32 at these tiny shapes is a property of
  ORT's kernels, see :mod:`ofa_search.quant.benchmark`). It is the maintained int8 path
  for ONNX (``torch.ao.quantization`` is deprecated) and does not depend on how PyTorch
  exports quantisation ops.

The price: ONNX Runtime needs each int8 conv's output quantised too, also where the
fake-quant model keeps it fp32 (before h-swish, SE or a residual add); those ranges are
min/max calibrated, and their rounding is the difference between the two models (a block
matches the fake-quant block to one output quantisation step; a trained QAT subnet's
logits to about 1-3 % of their range, see :mod:`ofa_search.quant.formats`).

What comes from where in the result: int8 conv weights — the QAT integers (sign-flipped
where a BN γ is negative) with scale ``|γ/σ|·max|w|/127``; each int8 conv's input — its
``Int8ActQuant`` ``(scale, zero_point)``; bias — int32 at ``input_scale·weight_scale``;
conv outputs that the fake-quant model does not quantise (before h-swish, before a
residual add or an fp32 layer) — min/max calibrated on ``calibration`` images. A residual
add reads the fp32 block input, as in PyTorch, unless an int8 conv produced it (then
only its uint8 form exists).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx

from ofa_search.errors import InvalidArchError
from ofa_search.nn.static import StaticSubnet
from ofa_search.onnx_export import export_onnx
from ofa_search.quant.calibrate import DEFAULT_MAX_SAMPLES, iter_samples
from ofa_search.quant.fold import fold_network
from ofa_search.quant.quantize import quantize_convs


def int8_stages(net: StaticSubnet) -> list[int]:
    """Indices of ``net``'s ``int8`` stages."""
    return [s for s, p in enumerate(net.arch.precisions) if p == "int8"]


def require_int8(net: StaticSubnet) -> None:
    """Raise :class:`InvalidArchError` unless ``net``'s arch has an ``int8`` stage."""
    if not int8_stages(net):
        raise InvalidArchError(
            f"arch {net.arch.to_string()} has no int8 stage (precisions "
            f"{list(net.arch.precisions)}): int8 export quantises only the convs of int8 "
            "stages; use the fp32 'onnx' format, or an arch of a space with int8 "
            "precision (e.g. mbv3_small28_mp) with '@int8' stages")


def export_int8(net: StaticSubnet, calibration: Iterable[np.ndarray], *,
                max_samples: int = DEFAULT_MAX_SAMPLES, threads: int = 1) -> onnx.ModelProto:
    """QDQ int8 ONNX model (batch 1, input ``input``, output ``output``) of ``net`` with the
    learned scales of its int8 stages; everything else stays fp32.

    Args:
        net: a static subnet whose int8 activation quantisers are calibrated (extracted and
            BN-recalibrated: :func:`ofa_search.train.calibrated_subnet`).
        calibration: ``[N, C, r, r]`` float32 training batches (normalised like the
            model's inputs), for the conv outputs that have no learned range.
        max_samples: calibration images used at most.
        threads: ONNX Runtime threads used while calibrating.

    Raises:
        InvalidArchError: the arch has no int8 stage.
        UncalibratedQuantError: an int8 conv's activation range was never observed.
        ValueError: ``calibration`` holds no image.
    """
    return quantize_subnet(net, calibration, learned=True, max_samples=max_samples,
                           threads=threads)


def quantize_subnet(net: StaticSubnet, calibration: Iterable[np.ndarray], *, learned: bool,
                    max_samples: int = DEFAULT_MAX_SAMPLES, threads: int = 1
                    ) -> onnx.ModelProto:
    """The shared path of :func:`export_int8` (``learned``: weights on their learned grid,
    learned activation scales) and :func:`~ofa_search.quant.ptq.export_int8_ptq` (scales
    calibrated after training): fold BN, export fp32, quantise the int8 stages' convs."""
    require_int8(net)
    folded = fold_network(net, int8_grid=learned)
    fp32 = export_onnx(folded.module, net.input_shape(1))
    samples = list(iter_samples(calibration, max_samples))
    return quantize_convs(fp32, folded.int8_convs, samples, learned=learned, threads=threads)
