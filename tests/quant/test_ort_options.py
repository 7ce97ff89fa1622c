"""Exact int8 arithmetic in ONNX Runtime: the exact kernels only where the fast ones can
saturate (x86-64 without VNNI), and the fast ones exact where they are used."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from quant_helpers import INT8_ARCH, calibrated_net

from ofa_search.ort_options import X64_QUANT_PRECISION, exact_int8, int8_needs_exact_kernels
from ofa_search.quant.ptq import export_int8_ptq


@pytest.mark.parametrize(("flags", "needed"), [
    ({"avx2", "fma"}, True),  # the AMD EPYC of some days: u8×s8 pairs saturate in 16 bits
    ({"avx2", "avx512f", "avx512bw"}, True),  # AVX-512 without VNNI: the same
    ({"avx2", "avx512f", "avx512_vnni"}, False),
    ({"avx2", "avx_vnni"}, False),
])
def test_exact_kernels_only_without_vnni(flags: set[str], needed: bool) -> None:
    assert int8_needs_exact_kernels(frozenset(flags)) is needed


def test_the_option_follows_this_host() -> None:
    options = exact_int8(ort.SessionOptions())
    if int8_needs_exact_kernels():
        assert options.get_session_config_entry(X64_QUANT_PRECISION) == "1"
    else:
        with pytest.raises(RuntimeError):  # not set: the fast kernels are exact here
            options.get_session_config_entry(X64_QUANT_PRECISION)


@pytest.mark.skipif(int8_needs_exact_kernels(),
                    reason="host without VNNI: only the exact kernels are exact here")
def test_fast_kernels_equal_the_exact_ones_with_vnni() -> None:
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((8, 1, 20, 20)).astype(np.float32)]
    model = export_int8_ptq(calibrated_net(INT8_ARCH, batches), batches).SerializeToString()
    x = torch.from_numpy(rng.standard_normal((4, 1, 20, 20)).astype(np.float32))
    outputs = []
    for exact in (False, True):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        if exact:
            options.add_session_config_entry(X64_QUANT_PRECISION, "1")
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        outputs.append(np.concatenate([session.run(None, {"input": x[i:i + 1].numpy()})[0]
                                       for i in range(len(x))]))
    np.testing.assert_array_equal(outputs[0], outputs[1])
