"""The ``binary`` export format: a bit-packed binary package (:mod:`ofa_search.binary`).

Importing this module registers it with :func:`ofa_search.formats.register_format`. The
package is written with :func:`~ofa_search.binary.package.write_binary_package` and
verified by running it with :class:`~ofa_search.binary.runtime.BinaryPackage` (TVM kernels
when TVM is importable, NumPy otherwise) against the PyTorch subnet.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ofa_search.binary.package import write_binary_package
from ofa_search.binary.runtime import BinaryPackage
from ofa_search.formats import ArtefactFormat, register_format
from ofa_search.nn.static import StaticSubnet

BINARY_TOLERANCE = 1e-3
"""Max |Δlogit| allowed: the packed kernels compute the binary dot products exactly, so
only float rounding of the full-precision parts (~1e-6) remains."""


def _write(net: StaticSubnet, path: Path) -> None:
    write_binary_package(net, path)


def _verify(path: Path, net: StaticSubnet, x: torch.Tensor) -> float:
    package = BinaryPackage.load(path)
    got = package.run(x.numpy())
    net.eval()
    with torch.no_grad():
        expected = net(x).numpy()
    return float(np.max(np.abs(got - expected)))


BINARY = ArtefactFormat(
    "binary", ".ofab", "ofa_search.binary (TVM / NumPy + ONNX Runtime)", BINARY_TOLERANCE,
    "bit-packed binary package: ONNX fp32 segments + packed 1-bit convs (ofa-search run)",
    _write, _verify, precisions=("fp32", "binary"))
register_format(BINARY, replace=True)
