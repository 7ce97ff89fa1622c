"""Latency of one binary MBConv block through the binary package runtime.

For latency tables: the block is built from its :class:`~ofa_search.units.MBConvUnit`
(random weights, seeded), packaged exactly as :func:`ofa_search.binary.package.
write_binary_package` packages a subnet (ONNX segments + packed layers, through the file
format's bytes), loaded with :class:`~ofa_search.binary.runtime.BinaryPackage` and timed
with the project's adaptive method (:mod:`ofa_search.profiling.timing`). With TVM at one
thread the block runs as one fused function (:mod:`ofa_search.binary.tvm_block`), as it
does in a loaded subnet package, so the table prices what runs.
"""

from __future__ import annotations

import numpy as np
import torch

from ofa_search.binary.archive import program_from_bytes, program_to_bytes
from ofa_search.binary.package import build_program
from ofa_search.binary.runtime import Backend, BinaryPackage
from ofa_search.nn.static import build_unit, init_weights
from ofa_search.profiling.timing import TimingConfig, TimingStats, callable_sampler, time_sampler
from ofa_search.units import MBConvUnit


def unit_package(unit: MBConvUnit, *, threads: int = 1, backend: Backend = "auto",
                 seed: int = 0, fuse: bool | None = None) -> BinaryPackage:
    """A loaded package of ``unit`` alone, randomly initialised (``seed``)."""
    if not isinstance(unit, MBConvUnit):
        raise TypeError(f"expected an MBConvUnit, got {type(unit).__name__}")
    if unit.precision != "binary":
        raise ValueError(f"unit {unit.key} has precision {unit.precision!r}; only binary "
                         "units run on the binary package runtime")
    module = build_unit(unit)
    init_weights(module, torch.Generator().manual_seed(seed))
    module.eval()
    program = build_program([module], (unit.in_channels, unit.in_size, unit.in_size),
                            unit=unit.key)
    data = program_to_bytes(program)
    return BinaryPackage(program_from_bytes(data, unit.key), backend=backend, threads=threads,
                         fuse=fuse)


def measure_binary_unit(unit: MBConvUnit, threads: int = 1, *,
                        timing: TimingConfig | None = None, batch_size: int = 1,
                        backend: Backend = "auto", seed: int = 0,
                        fuse: bool | None = None) -> TimingStats:
    """Per-inference latency (ms) of the binary block ``unit`` on this host.

    Args:
        unit: a block with ``precision == "binary"``.
        threads: intra-op threads of ONNX Runtime and TVM.
        timing: the adaptive timing settings (default :class:`TimingConfig`).
        batch_size: samples per inference.
        backend: binary kernels: ``tvm``, ``numpy`` or ``auto`` (TVM when installed).
        seed: seeds the random weights and input.
        fuse: run the block as one fused TVM function (default: with TVM at one thread,
            as :class:`~ofa_search.binary.runtime.BinaryPackage` does); ``False`` times the
            step-by-step path (binary kernels, ONNX Runtime segment, add).

    Compilation and session set-up happen before timing (one untimed run).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size=}")
    package = unit_package(unit, threads=threads, backend=backend, seed=seed, fuse=fuse)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch_size, *package.input_shape)).astype(np.float32)
    package.run(x)  # compile and warm up, untimed

    def infer() -> object:
        return package.run(x)

    return time_sampler(callable_sampler(infer), timing or TimingConfig())
