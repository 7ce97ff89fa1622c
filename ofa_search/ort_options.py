"""ONNX Runtime session options that every ofa-search session starts from.

On x86-64 CPUs without VNNI (AVX2, or AVX-512 without VNNI), ONNX Runtime's fast u8×s8
int8 kernels add pairs of products in 16-bit registers that saturate, so an int8 model's
outputs there differ from its numerics (measured here on an AMD EPYC without VNNI: logits
off by 20–29 % of their range, against ≤ 15 % allowed, where a VNNI host matches). The
session option ``session.x64quantprecision`` makes ONNX Runtime use exact u8×u8 kernels on
such CPUs and changes nothing on CPUs with VNNI (onnxruntime PR 12088). Every session sets
it, so verification, measurement and ``ofa-search run`` compute what the model says.
"""

from __future__ import annotations

from typing import Any

X64_QUANT_PRECISION = "session.x64quantprecision"


def exact_int8(options: Any) -> Any:
    """``options`` (an ``onnxruntime.SessionOptions``) with exact int8 arithmetic on x86-64
    hosts without VNNI (see the module docstring); returns it."""
    options.add_session_config_entry(X64_QUANT_PRECISION, "1")
    return options
