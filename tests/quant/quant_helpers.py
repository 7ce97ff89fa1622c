"""Helpers shared by the int8 export tests (a module of its own: ``conftest`` is taken)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch

from ofa_search.arch import Arch, parse_arch
from ofa_search.nn import StaticSubnet, build_static
from ofa_search.ort_options import exact_int8
from ofa_search.train.bn_calibration import recalibrate_bn

MP = "mbv3_small28_mp"
RESOLUTION = 20
INT8_ARCH = "r20_w1.0_k7e4-k3e6@int8_k5e3-k3e4@int8_k3e6-k7e3@int8_k5e4-k3e3@int8"
"""Every stage int8 (relu, relu+SE, h-swish, h-swish+SE blocks; residual and strided)."""
MIXED_ARCH = "r20_w1.0_k3e3-k5e4_k7e4-k3e3@int8_k3e4-k5e3_k5e3-k3e6@int8"
"""Stages 1 (relu+SE) and 3 (h-swish+SE) int8, stages 0 and 2 fp32."""


def calibrated_net(arch: str | Arch, batches: list[np.ndarray], seed: int = 0) -> StaticSubnet:
    """A seeded subnet of ``mbv3_small28_mp`` whose BN statistics and int8 activation
    ranges come from ``batches``."""
    parsed = arch if isinstance(arch, Arch) else parse_arch(arch, MP)
    net = build_static(parsed, torch.Generator().manual_seed(seed))
    recalibrate_bn(net, [torch.from_numpy(b) for b in batches])
    return net


def run_ort(model: onnx.ModelProto, x: torch.Tensor, optimise: bool = True) -> np.ndarray:
    """``model`` (batch 1) on each image of ``x``, ONNX Runtime CPU at one thread, with
    ``ORT_ENABLE_ALL`` (int8 kernels) or ``ORT_DISABLE_ALL`` (QDQ semantics in fp32)."""
    options = exact_int8(ort.SessionOptions())
    options.intra_op_num_threads = 1
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimise
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"input": x[i:i + 1].numpy()})[0]
                           for i in range(len(x))])


def torch_logits(net: StaticSubnet, x: torch.Tensor) -> np.ndarray:
    """The PyTorch (fake-quant) subnet's outputs in eval mode."""
    with torch.no_grad():
        return net.eval()(x).numpy()
