"""scripts/bench_int8_depthwise.py: its kernels compute what they time (small shapes)."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest
from script_helpers import load_script

from ofa_search.binary import tvm_available
from ofa_search.quant.benchmark import cpu_int8_support

pytestmark = [
    pytest.mark.skipif(not tvm_available(), reason="TVM is not installed (the tvm extra)"),
    pytest.mark.skipif(not cpu_int8_support().get("avx512_vnni"),
                       reason="the int8 kernel needs a CPU with avx512_vnni"),
]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("bench_int8_depthwise")


@pytest.mark.parametrize("shape", [(9, 10, 32, 3, 1), (8, 8, 16, 7, 2), (7, 7, 48, 5, 1)])
def test_int8_kernel_is_exact(bench: ModuleType, shape: tuple[int, ...]) -> None:
    """Quads built in the call give the NumPy sums exactly (a 7-tap row spans two quads,
    the last one's fourth tap zero), and quads given give the same output."""
    assert bench.check_int8(shape, 1) is None
    built = bench.int8_kernel(shape, 1, build_quads=True)
    given = bench.int8_kernel(shape, 1, build_quads=False)
    x, quads, c = built[1][0], given[1][0].shape[1], shape[2]
    xq = np.stack([x[:, j:j + quads, :] for j in range(4)], axis=-1)  # [h, q, c, 4]
    given[1][0][...] = xq.reshape(xq.shape[0], quads, c // 16, 16, 4)
    for i in (1, 2, 3, 4):
        given[1][i][...] = built[1][i]
    np.testing.assert_array_equal(bench.run_kernel(given), bench.run_kernel(built))


def test_a_wrong_sum_is_caught(bench: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """The script's check fails when the kernel's sums are off (here: one tap dropped from
    the reference)."""
    reference = bench.int8_reference

    def off_by_one_tap(shape: tuple[int, ...], args: list[np.ndarray]) -> np.ndarray:
        changed = list(args)
        changed[1] = args[1].copy()
        changed[1][0, 0, 0, 0, 0] = 0
        return reference(shape, changed)

    monkeypatch.setattr(bench, "int8_reference", off_by_one_tap)
    assert "wrong" in bench.check_int8((6, 6, 16, 3, 1))


def test_fp32_kernel_is_a_depthwise_conv(bench: ModuleType) -> None:
    shape = (9, 10, 32, 5, 2)
    k, s = shape[3], shape[4]
    kernel = bench.fp32_kernel(shape, 3)
    e, wt, bias = kernel[1][:3]
    got = bench.run_kernel(kernel)
    ho, wo = got.shape[:2]
    want = np.zeros_like(got, dtype=np.float64) + bias
    for i in range(k):
        for j in range(k):
            want += e[i:i + (ho - 1) * s + 1:s, j:j + (wo - 1) * s + 1:s, :] * wt[i, j]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
