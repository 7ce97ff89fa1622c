"""Int8 deployment of subnets with int8 stages: ONNX models that ONNX Runtime runs with
its int8 kernels (QLinearConv).

- :func:`export_int8` — learned (QAT) scales; :func:`export_int8_ptq` — post-training;
- :func:`int8_unit_onnx` — int8 units for latency tables, by the same path;
- :func:`ort_kernel_counts` — which kernels ORT runs (int8 vs fp32 convs);
- :mod:`ofa_search.quant.benchmark` — int8 vs fp32 kernel timings;
- :mod:`ofa_search.quant.formats` — export formats ``onnx_int8`` and ``onnx_int8_ptq``
  (importing it registers them with :mod:`ofa_search.export`).
"""

import ofa_search.quant.timing  # noqa: F401 (registers int8 timing with profiling)
from ofa_search.quant.fold import FoldedConv, FoldedNetwork, UncalibratedQuantError, fold_network
from ofa_search.quant.graph import KernelCounts, find_conv_nodes, ort_kernel_counts
from ofa_search.quant.ptq import export_int8_ptq
from ofa_search.quant.qdq import export_int8
from ofa_search.quant.units import int8_unit_onnx

__all__ = ["FoldedConv", "FoldedNetwork", "KernelCounts", "UncalibratedQuantError",
           "export_int8", "export_int8_ptq", "find_conv_nodes", "fold_network",
           "int8_unit_onnx", "ort_kernel_counts"]
