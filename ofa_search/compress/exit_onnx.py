"""ONNX export of early-exit networks, verified against PyTorch.

Two artefacts: ``model.onnx``, the whole network with the exits as extra outputs (input
``input``; outputs ``output`` — the final logits, as in every export — then
``exit_after_stage<s>``), and ``segment_<k>.onnx``, the cascade a deployment runs piece
by piece (segment ``k`` < last: input ``input`` → outputs ``features`` and ``logits``; the
last segment: ``input`` → ``output``). Both are checked by ``onnx.checker`` and verified
with ONNX Runtime on real inputs (every output; the segments chained as deployed) within
:data:`TOLERANCE` of PyTorch.

Running ``model.onnx`` computes every exit and the whole backbone: it is what a runtime
that cannot stop mid-graph deploys, and it is slower than the subnet alone. The latency
saving of early exits needs the segments.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from ofa_search.compress.artefacts import pending_path
from ofa_search.compress.exit_net import EarlyExitNet
from ofa_search.export import VerificationError
from ofa_search.onnx_export import INPUT_NAME, OUTPUT_NAME, export_onnx, save_onnx
from ofa_search.ort_options import exact_int8

TOLERANCE = 1e-4
OPSET = 17
FEATURES_NAME = "features"
LOGITS_NAME = "logits"


def export_multi(module: nn.Module, input_shape: tuple[int, ...], output_names: Sequence[str]
                 ) -> onnx.ModelProto:
    """``module`` (eval mode) exported with the TorchScript exporter (opset 17), one input
    ``input`` and the named outputs (:func:`ofa_search.onnx_export.export_onnx`)."""
    return export_onnx(module, input_shape, opset=OPSET, exporter="torchscript",
                       output_names=output_names)


def _session(model: onnx.ModelProto | Path) -> object:
    import onnxruntime as ort  # deferred: a heavy import, needed only to verify

    options = exact_int8(ort.SessionOptions())
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _run(session: object, x: np.ndarray) -> list[np.ndarray]:
    """Outputs of a batch-1 graph for every row of ``x``, stacked."""
    rows = [session.run(None, {INPUT_NAME: x[i:i + 1]}) for i in range(x.shape[0])]  # type: ignore[attr-defined]
    return [np.concatenate([np.asarray(r[j]) for r in rows]) for j in range(len(rows[0]))]


def segment_models(net: EarlyExitNet) -> list[onnx.ModelProto]:
    """Each segment of ``net`` exported (see the module docstring)."""
    segments = net.segments()
    shapes = net.segment_input_shapes(1)
    out = []
    for k, (segment, shape) in enumerate(zip(segments, shapes, strict=True)):
        names = [OUTPUT_NAME] if k == len(segments) - 1 else [FEATURES_NAME, LOGITS_NAME]
        out.append(export_multi(segment, shape, names))
    return out


@torch.no_grad()
def verify_exit_artefacts(net: EarlyExitNet, model: Path, segments: Sequence[Path],
                          x: torch.Tensor) -> dict[str, float]:
    """Largest absolute difference from PyTorch of the whole model's outputs and of the
    chained segments' logits, on the inputs ``x``."""
    net.eval()
    expected = [t.numpy() for t in net(x)]
    whole = _run(_session(model), x.numpy())
    diff_model = max(float(np.max(np.abs(a - b))) for a, b in zip(whole, expected, strict=True))
    feats = x.numpy()
    chained: list[np.ndarray] = []
    for k, path in enumerate(segments):
        outs = _run(_session(path), feats)
        if k < len(segments) - 1:
            feats, logits = outs
            chained.append(logits)
        else:
            chained.insert(0, outs[0])
    diff_segments = max(float(np.max(np.abs(a - b)))
                        for a, b in zip(chained, expected, strict=True))
    return {"model": diff_model, "segments": diff_segments}


def write_exit_artefacts(net: EarlyExitNet, folder: Path, x: torch.Tensor
                         ) -> tuple[Path, list[Path], dict[str, float]]:
    """Write ``model.onnx`` and ``segment_<k>.onnx`` into ``folder``, verified on ``x``
    before they get their final names."""
    folder.mkdir(parents=True, exist_ok=True)
    finals = [folder / "model.onnx", *(folder / f"segment_{k}.onnx"
                                       for k in range(len(net.cuts) + 1))]
    pendings = [pending_path(p) for p in finals]
    try:
        save_onnx(export_multi(net, net.input_shape(1), net.output_names), pendings[0])
        for path, model in zip(pendings[1:], segment_models(net), strict=True):
            save_onnx(model, path)
        diffs = verify_exit_artefacts(net, pendings[0], pendings[1:], x)
        worst = max(diffs.values())
        if not worst <= TOLERANCE:
            raise VerificationError(f"early-exit ONNX differs from PyTorch by {worst:.3g} > "
                                    f"tolerance {TOLERANCE:.0e} ({diffs})")
        for pending, final in zip(pendings, finals, strict=True):
            os.replace(pending, final)
    finally:
        for pending in pendings:
            pending.unlink(missing_ok=True)
    return finals[0], finals[1:], diffs
