"""ONNX Runtime session options that every ofa-search session starts from.

On x86-64 CPUs without VNNI (AVX2, or AVX-512 without VNNI), ONNX Runtime's fast u8×s8
int8 kernels add pairs of products in 16-bit registers that saturate, so an int8 model's
outputs there differ from its numerics (measured here on an AMD EPYC without VNNI: logits
off by 20–29 % of their range, against ≤ 15 % allowed, where a VNNI host matches). The
session option ``session.x64quantprecision`` makes ONNX Runtime use exact u8×u8 kernels on
such CPUs (onnxruntime PR 12088), so verification, measurement and ``ofa-search run``
compute what the model says.

On CPUs with VNNI (``avx512_vnni`` or ``avx_vnni``) the fast kernels are exact already
(VPDPBUSD accumulates in 32 bits), and the option only slows them: measured on an Intel
Xeon with AVX512-VNNI, ``ofa_mbv3`` int8 subnets at 224 px ran 1.7–2.0× slower with it
(docs/benchmarks/precision-mbv3.md). So it is set only where it is needed:
:func:`int8_needs_exact_kernels`.
"""

from __future__ import annotations

import functools
import platform
from typing import Any

from ofa_search.cpuinfo import cpu_flags, read_cpuinfo

X64_QUANT_PRECISION = "session.x64quantprecision"
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})
"""x86 CPU flags under which ONNX Runtime's u8×s8 kernels are exact."""


def int8_needs_exact_kernels(flags: frozenset[str] | None = None) -> bool:
    """Whether this host's (or, given ``flags``, such a CPU's) u8×s8 int8 kernels can
    saturate: an x86-64 CPU without VNNI. Other architectures: no (the option is
    x86-64's). An x86-64 host whose flags cannot be read (no ``/proc/cpuinfo``): yes, the
    safe answer."""
    if flags is None:
        if platform.machine().lower() not in ("x86_64", "amd64"):
            return False  # the option applies to x86-64 only
        flags = _cpu_flags()
        if not flags:
            return True
    return not (flags & VNNI_FLAGS)


@functools.cache
def _cpu_flags() -> frozenset[str]:
    return cpu_flags(read_cpuinfo())  # once per process: the CPU does not change


def exact_int8(options: Any) -> Any:
    """``options`` (an ``onnxruntime.SessionOptions``) with exact int8 arithmetic: on x86-64
    hosts without VNNI the exact kernels are asked for, elsewhere the fast ones are exact
    already (see the module docstring); returns it."""
    if int8_needs_exact_kernels():
        options.add_session_config_entry(X64_QUANT_PRECISION, "1")
    return options
