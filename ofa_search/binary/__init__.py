"""Bit-packed binary inference for the binary layers of ``binary`` stages.

* :mod:`~ofa_search.binary.packing` — signs as ``uint64`` words along channels (NHWC);
* :mod:`~ofa_search.binary.kernels` — the NumPy reference binary conv (exact integers);
* :mod:`~ofa_search.binary.tvm_kernels`, :mod:`~ofa_search.binary.tvm_packing`,
  :mod:`~ofa_search.binary.tvm_pointwise` — the same in TVM (AVX-512 VPOPCNTDQ where the
  host has it), used whenever TVM is installed;
* :mod:`~ofa_search.binary.layer` — the deployable form of a ``BinaryPointwise`` block;
* :mod:`~ofa_search.binary.block` / :mod:`~ofa_search.binary.tvm_block` — a whole binary
  MBConv block recognised in a package and run as one fused TVM function;
* :mod:`~ofa_search.binary.package` / :mod:`~ofa_search.binary.archive` /
  :mod:`~ofa_search.binary.runtime` — one-file binary packages (``.ofab``): write, read, run;
* :mod:`~ofa_search.binary.measure` — latency of one binary block, for latency tables;
* :mod:`~ofa_search.binary.benchmark` — binary kernels against ONNX Runtime fp32.

Importing this package imports neither TVM nor ONNX Runtime.
"""

import ofa_search.binary.timing  # noqa: F401 (registers binary timing with profiling)
from ofa_search.binary._tvm import TvmUnavailableError, tvm_available
from ofa_search.binary.archive import FORMAT_VERSION, SUFFIX
from ofa_search.binary.kernels import binary_conv2d
from ofa_search.binary.layer import PackedPointwise
from ofa_search.binary.measure import measure_binary_unit
from ofa_search.binary.package import write_binary_package
from ofa_search.binary.packing import pack_activations, pack_signs, pack_weights, unpack_signs
from ofa_search.binary.runtime import BinaryPackage

__all__ = [
    "FORMAT_VERSION",
    "SUFFIX",
    "BinaryPackage",
    "PackedPointwise",
    "TvmUnavailableError",
    "binary_conv2d",
    "measure_binary_unit",
    "pack_activations",
    "pack_signs",
    "pack_weights",
    "tvm_available",
    "unpack_signs",
    "write_binary_package",
]
