"""The ``binary`` export format: a bit-packed binary package (:mod:`ofa_search.binary`).

Importing this module registers it with :func:`ofa_search.formats.register_format`. The
package is written with :func:`~ofa_search.binary.package.write_binary_package` and
verified by running it with :class:`~ofa_search.binary.runtime.BinaryPackage` (TVM kernels
when TVM is importable, NumPy otherwise) against the PyTorch subnet.

An arch with int8 stages as well (fp32, int8 and binary stages in one network) gets QDQ
int8 segments (:mod:`ofa_search.binary.package`), written from the calibration batches
that :func:`ofa_search.export.export` passes, and is verified with the int8 formats'
measure (the largest logit difference relative to the logit range), within
:data:`MIXED_RELATIVE_TOLERANCE`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ofa_search.binary.package import write_binary_package
from ofa_search.binary.runtime import BinaryPackage
from ofa_search.formats import ArtefactFormat, register_format
from ofa_search.nn.static import StaticSubnet
from ofa_search.quant.formats import relative_logit_error

BINARY_TOLERANCE = 1e-3
"""Max |Δlogit| allowed: the packed kernels compute the binary dot products exactly, so
only float rounding of the full-precision parts (~1e-6) remains."""


MIXED_RELATIVE_TOLERANCE = 0.35
"""Largest ``max|Δlogit| / logit range`` of a package with int8 and binary stages. ONNX
Runtime quantises int8 conv outputs that the fake-quant PyTorch subnet keeps in float
(:mod:`ofa_search.quant.qdq`); where such an output feeds a binary conv, a value within
half a quantisation step of its threshold flips sign, and the binary layers carry the flip
on. Measured (torch 2.13, onnxruntime 1.32, 200 Fashion-MNIST test images, 28 px, a
binary-trained ``mbv3_small28_mp`` supernet): 0.10–0.20 for three int8 + binary archs,
top-1 agreement 86–94 %, accuracy equal within 2 points; 0.29 for a random-init digits
subnet. The int8-only tolerance (0.15) would refuse such packages."""


def _write(net: StaticSubnet, path: Path) -> None:
    write_binary_package(net, path)


def _calibrated_write(net: StaticSubnet, path: Path, batches: Sequence[np.ndarray]) -> None:
    write_binary_package(net, path, calibration=batches)


def _has_int8(net: StaticSubnet) -> bool:
    return "int8" in net.arch.precisions


def _verify(path: Path, net: StaticSubnet, x: torch.Tensor) -> float:
    """Largest |Δlogit|; relative to the logit range when the arch has int8 stages."""
    package = BinaryPackage.load(path)
    got = package.run(x.numpy())
    net.eval()
    with torch.no_grad():
        expected = net(x).numpy()
    if _has_int8(net):
        return relative_logit_error(got, expected)
    return float(np.max(np.abs(got - expected)))


def _tolerance(net: StaticSubnet) -> float:
    return MIXED_RELATIVE_TOLERANCE if _has_int8(net) else BINARY_TOLERANCE


BINARY = ArtefactFormat(
    "binary", ".ofab", "ofa_search.binary (TVM / NumPy + ONNX Runtime)", BINARY_TOLERANCE,
    "bit-packed binary package: ONNX fp32 (and QDQ int8) segments + packed 1-bit convs "
    "(ofa-search run)",
    _write, _verify, calibrated_write=_calibrated_write, precisions=("fp32", "int8", "binary"),
    tolerance_for=_tolerance)
register_format(BINARY, replace=True)
