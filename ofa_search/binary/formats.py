"""The ``binary`` export format: a bit-packed binary package (:mod:`ofa_search.binary`).

Importing this module registers it with :func:`ofa_search.formats.register_format`. The
package is written with :func:`~ofa_search.binary.package.write_binary_package` and
verified by running it with :class:`~ofa_search.binary.runtime.BinaryPackage` (TVM kernels
when TVM is importable, NumPy otherwise) against the PyTorch subnet, piece by piece
(:func:`stepwise_difference`: a sign that float rounding decides at a near tie must not
fail an export).

An arch with int8 stages as well (fp32, int8 and binary stages in one network) gets QDQ
int8 segments (:mod:`ofa_search.binary.package`), written from the calibration batches
that :func:`ofa_search.export.export` passes, and is verified with the int8 formats'
measure (the largest difference relative to the output's range), piece by piece too,
within :data:`MIXED_RELATIVE_TOLERANCE`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ofa_search.binary.layer import PackedPointwise
from ofa_search.binary.package import trace_subnet, write_binary_package
from ofa_search.binary.program import BinaryStep
from ofa_search.binary.runtime import BinaryPackage
from ofa_search.formats import ArtefactFormat, register_format
from ofa_search.nn.static import StaticSubnet
from ofa_search.quant.formats import INT8_RELATIVE_TOLERANCE, relative_logit_error
from ofa_search.units import uses_int8

BINARY_TOLERANCE = 1e-3
"""Max |Δ| allowed between each piece of the package and the PyTorch subnet, given the
same input (:func:`stepwise_difference`): the packed kernels compute the binary dot
products exactly, so only float rounding of the full-precision parts (~1e-6) remains."""


MIXED_RELATIVE_TOLERANCE = INT8_RELATIVE_TOLERANCE
"""Largest ``max|Δ| / range`` of any piece of a package with int8 and binary stages,
each piece given PyTorch's input (:func:`stepwise_difference` with ``relative=True``):
the int8 measure (0.15), per piece. End to end the measure does not hold. ONNX Runtime
quantises int8 conv outputs that the fake-quant PyTorch subnet keeps in float
(:mod:`ofa_search.quant.qdq`); where such an output feeds a binary conv, a value within
half a quantisation step of its threshold flips sign, and the binary layers carry the flip
on. Measured (torch 2.13, onnxruntime 1.32, Intel Xeon with AVX512-VNNI), 18 random-init
digits packages of three int8 + binary archs: 0.02–0.09 per piece, 0.02–0.64 end to end;
three archs of a binary-trained Fashion-MNIST supernet: 0.036–0.076 per piece, 0.38–0.43
end to end on 256 test images (top-1 agreement 64–84 %), while the package's and
PyTorch's test accuracy on 2,000 images agree within 1.6 points
(``scripts/bench_binary_verify.py``, ``results/bench_binary_verify.json``)."""


def _write(net: StaticSubnet, path: Path) -> None:
    write_binary_package(net, path)


def _calibrated_write(net: StaticSubnet, path: Path, batches: Sequence[np.ndarray]) -> None:
    write_binary_package(net, path, calibration=batches)


def _has_int8(net: StaticSubnet) -> bool:
    return uses_int8(net.arch)


TIE_MARGIN = 1e-5
"""A value before a sign is a near tie when ``|u·x + v|`` is below ``TIE_MARGIN`` times its
channel's scale (``|u|·max|x| + |v|`` over the batch): float rounding upstream (~1e-6 of
that scale) can put it on either side of the threshold. An input of exactly 0 (what
ReLU and hard-swish clamp to, in every runtime) is never one."""


def near_ties(layer: PackedPointwise, x: np.ndarray, margin: float = TIE_MARGIN
               ) -> np.ndarray:
    """``[N, H, W]``: the pixels where some channel of ``x`` (``[N, C, H, W]``, a binary
    layer's input) is a near tie (``margin``: see :data:`TIE_MARGIN`)."""
    u = layer.input_scale[None, :, None, None]
    v = layer.input_shift[None, :, None, None]
    scale = np.abs(u) * np.abs(x).max(axis=(0, 2, 3), keepdims=True) + np.abs(v)
    return ((np.abs(u * x + v) < margin * scale) & (x != 0)).any(axis=1)


def _spread(ties: np.ndarray, kernel: int, stride: int) -> np.ndarray:
    """The output pixels of a ``kernel``×``kernel`` depthwise conv (``stride``, padding
    ``kernel // 2``) that read a pixel of ``ties`` (``[N, H, W]``)."""
    hit = torch.nn.functional.max_pool2d(torch.from_numpy(ties[:, None].astype(np.float32)),
                                         kernel, stride, kernel // 2)
    return hit[:, 0].numpy() > 0


def stepwise_difference(package: BinaryPackage, net: StaticSubnet, x: torch.Tensor, *,
                        relative: bool = False, tie_margin: float = TIE_MARGIN) -> float:
    """The largest |Δ| between ``package`` and the eval-mode PyTorch subnet ``net`` on
    ``x``, piece by piece: each call the package makes (a fused block or one step, see
    :meth:`BinaryPackage.pieces`) runs on PyTorch's value of its input, and its output is
    compared with PyTorch's, except at the pixels that a near tie before one of the
    piece's signs (``tie_margin``, :data:`TIE_MARGIN`) reaches. PyTorch's walk through the
    steps is itself compared with ``net(x)``, so the steps' wiring is checked too. ``inf`` when the
    package holds another arch, or its steps are not the subnet's. ``relative``: each
    difference divided by the range of PyTorch's output of that piece (the int8 measure,
    :func:`~ofa_search.quant.formats.relative_logit_error`, per piece).

    Why not end to end: a sign is a step function. Where a value before a sign lies
    within float rounding of its threshold, the ~1e-6 by which ONNX Runtime's or TVM's
    float parts differ from PyTorch's decide its side, and the flipped bit changes the
    logits by up to tenths. On a trained Fashion-MNIST subnet, 3 of 256 test images did
    so end to end; given PyTorch's input, a fused block still differed by 0.24 without
    the tie margin (``results/bench_binary_verify.json``).
    """
    if package.arch is not None and package.arch != net.arch.to_string():
        return math.inf
    steps = package.program.steps
    last_of = dict(package.pieces())
    first_of = {last: first for first, last in last_of.items()}
    waiting: dict[int, dict[str, np.ndarray]] = {}
    ties: dict[int, np.ndarray] = {}
    diffs: list[float] = []
    visited = 0

    def excused(first: int) -> np.ndarray | None:
        plan = package.fused_plan(first)
        if plan is not None:
            reach = _spread(ties[first], plan.depthwise.kernel, plan.depthwise.stride)
            return reach | ties[first + 2]
        return ties.get(first)

    def visit(index: int, inputs: dict[str, torch.Tensor], output: torch.Tensor) -> None:
        nonlocal visited
        visited += 1
        if index >= len(steps):
            return
        step = steps[index]
        if isinstance(step, BinaryStep):
            ties[index] = near_ties(package.program.layers[step.layer],
                                    inputs[step.input].numpy(), tie_margin)
        if index in last_of:
            waiting[index] = {name: value.numpy() for name, value in inputs.items()}
        first = first_of.get(index)
        if first is None or first not in waiting:
            return
        got, expected = package.run_piece(first, waiting.pop(first)), output.numpy()
        if got.shape != expected.shape:
            diffs.append(math.inf)
            return
        diff = np.abs(got - expected)
        mask = excused(first)
        if mask is not None:
            diff[np.broadcast_to(mask[:, None], diff.shape)] = 0.0
        worst = float(np.max(diff))
        if relative:
            worst /= max(float(np.max(expected) - np.min(expected)), 1e-12)
        diffs.append(worst)
        for done in range(first, index + 1):
            ties.pop(done, None)

    net.eval()
    with torch.no_grad():
        traced = trace_subnet(net, x, visit)
        expected = net(x)
    if visited != len(steps) or len(diffs) != len(last_of):
        return math.inf
    if relative:
        diffs.append(relative_logit_error(traced.numpy(), expected.numpy()))
    else:
        diffs.append(float((traced - expected).abs().max()))
    return float(np.max(diffs))


def _verify(path: Path, net: StaticSubnet, x: torch.Tensor) -> float:
    """Piece by piece (:func:`stepwise_difference`); relative to each piece's output range
    when the arch has int8 stages."""
    return stepwise_difference(BinaryPackage.load(path), net, x, relative=_has_int8(net))


def _agreement(path: Path, net: StaticSubnet, x: torch.Tensor) -> dict[str, float]:
    """End to end on ``x``: the largest |Δlogit| and the share of equal top-1 classes."""
    got = BinaryPackage.load(path).run(x.numpy())
    net.eval()
    with torch.no_grad():
        expected = net(x).numpy()
    return {"max_abs_diff": float(np.max(np.abs(got - expected))),
            "top1_agreement": float(np.mean(got.argmax(axis=1) == expected.argmax(axis=1)))}


def _tolerance(net: StaticSubnet) -> float:
    return MIXED_RELATIVE_TOLERANCE if _has_int8(net) else BINARY_TOLERANCE


BINARY = ArtefactFormat(
    "binary", ".ofab", "ofa_search.binary (TVM / NumPy + ONNX Runtime)", BINARY_TOLERANCE,
    "bit-packed binary package: ONNX fp32 (and QDQ int8) segments + packed 1-bit convs "
    "(ofa-search run)",
    _write, _verify, calibrated_write=_calibrated_write, precisions=("fp32", "int8", "binary"),
    tolerance_for=_tolerance, agreement=_agreement)
register_format(BINARY, replace=True)
