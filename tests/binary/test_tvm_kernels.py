"""TVM binary kernels equal the NumPy reference exactly."""

from __future__ import annotations

import os

import numpy as np
import pytest

from ofa_search.binary import tvm_available
from ofa_search.binary.kernels import binary_conv2d, conv_geometry
from ofa_search.binary.packing import pack_activations, pack_weights
from ofa_search.profiling.host import cpu_flags, read_cpuinfo

pytestmark = pytest.mark.skipif(not tvm_available(), reason="TVM is not installed")

CASES = [(c, k, stride, pad_value)
         for c in (63, 130) for k in (1, 3, 5) for stride in (1, 2) for pad_value in (0, 1, -1)]
CASES += [(1, 3, 1, 0), (1, 1, 1, 0), (65, 3, 2, -1), (65, 1, 1, 0), (64, 5, 1, 0)]


@pytest.mark.parametrize(("channels", "kernel", "stride", "pad_value"), CASES)
def test_tvm_conv_equals_numpy(channels: int, kernel: int, stride: int, pad_value: int) -> None:
    from ofa_search.binary.tvm_kernels import TvmBinaryConv2d

    rng = np.random.default_rng(channels + 7 * kernel + stride)
    out_channels = 24 if kernel == 3 else 16  # 8 and 16 vector lanes
    x = rng.standard_normal((2, channels, 7, 6))
    w = rng.standard_normal((out_channels, channels, kernel, kernel))
    x_words, w_words = pack_activations(x), pack_weights(w)
    layer = TvmBinaryConv2d(w_words, channels, stride=stride, pad_value=pad_value)
    expected = binary_conv2d(x_words, w_words, channels, stride=stride, pad_value=pad_value)
    got = layer(x_words)
    assert got.dtype == np.int32 and np.array_equal(got, expected)
    assert np.array_equal(layer(x_words), expected)  # buffers reused, result not aliased
    assert got is not layer(x_words)


def test_odd_output_channels_are_padded_to_lanes() -> None:
    from ofa_search.binary.tvm_kernels import tvm_binary_conv2d

    rng = np.random.default_rng(3)
    x_words = pack_activations(rng.standard_normal((1, 70, 5, 5)))
    w_words = pack_weights(rng.standard_normal((13, 70, 3, 3)))
    assert np.array_equal(tvm_binary_conv2d(x_words, w_words, 70),
                          binary_conv2d(x_words, w_words, 70))


@pytest.mark.parametrize("shape", [(1, 256, 14, 14), (2, 65, 7, 5), (1, 1, 3, 3),
                                   (1, 130, 4, 9)])
def test_tvm_packing_equals_numpy(shape: tuple[int, int, int, int]) -> None:
    from ofa_search.binary.tvm_packing import TvmPacker, tvm_pack_activations

    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(np.float32)
    x[..., 0, 0] = 0.0
    x[..., -1, -1] = -0.0  # -0.0 >= 0: +1, as torch's sign
    assert np.array_equal(tvm_pack_activations(x), pack_activations(x))
    packer = TvmPacker(shape)
    with pytest.raises(ValueError, match="this packer takes"):
        packer(x[..., :1])


@pytest.mark.skipif("avx512_vpopcntdq" not in cpu_flags(read_cpuinfo()),
                    reason="host without AVX-512 VPOPCNTDQ")
def test_kernel_uses_avx512_popcount_on_this_host() -> None:
    from ofa_search.binary.tvm_kernels import ConvSpec, compiled_source

    spec = ConvSpec(1, conv_geometry(8, 8, 3), 128, 32, 0)
    asm = compiled_source(spec)
    assert "vpopcntq\t%zmm" in asm


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this OS")
def test_setting_tvm_threads_keeps_the_callers_cpu_affinity() -> None:
    """TVM pins the thread that configures its pool; ONNX Runtime and PyTorch pools made
    later by that thread would then share one core (measured: {0, 1} became {0})."""
    from ofa_search.binary._tvm import set_threads

    before = os.sched_getaffinity(0)
    assert set_threads(1) >= 1
    assert os.sched_getaffinity(0) == before
