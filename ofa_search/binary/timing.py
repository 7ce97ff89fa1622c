"""How binary units and subnets are timed for latency tables and end-to-end checks: the
bit-packed runtime of this package on this host, registered with
:func:`ofa_search.profiling.measure.register_precision_timing` when the package is
imported."""

from __future__ import annotations

import torch

from ofa_search.arch import Arch
from ofa_search.binary.measure import unit_package
from ofa_search.binary.package import subnet_program
from ofa_search.binary.runtime import BinaryPackage
from ofa_search.nn.static import build_static
from ofa_search.profiling.device import DeviceProfile
from ofa_search.profiling.measure import (
    Measurer,
    PrecisionTiming,
    Prepared,
    prepare_package,
    register_precision_timing,
)
from ofa_search.quant.units import seeded_calibration
from ofa_search.units import MBConvUnit, Unit, uses_int8


def prepare_binary_unit(backend: Measurer, unit: Unit, profile: DeviceProfile) -> Prepared:
    """The bit-packed block of ``unit`` (``backend`` unused: binary units run on this host's
    bit-packed runtime, so only ONNX Runtime profiles of this host can price them)."""
    if profile.backend != "onnxruntime":
        raise ValueError(f"binary units run on this host's bit-packed runtime; profile "
                         f"{profile.id!r} ({profile.backend}) cannot price them")
    assert isinstance(unit, MBConvUnit)
    return prepare_package(unit_package(unit, threads=profile.intra_op_threads or 1),
                           profile.batch_size)


def prepare_binary_arch(backend: Measurer, arch: Arch, batch_size: int = 1,
                        profile: DeviceProfile | None = None) -> Prepared:
    """The bit-packed package of ``arch``'s static subnet (seed 0), at ``profile``'s
    threads; int8 stages go into QDQ segments, calibrated on seeded random images."""
    if profile is not None and profile.backend != "onnxruntime":
        raise ValueError(f"binary subnets run on this host's bit-packed runtime; profile "
                         f"{profile.id!r} ({profile.backend}) cannot time them")
    net = build_static(arch, torch.Generator().manual_seed(0))
    calibration = None
    if uses_int8(arch):  # int8 segments: ranges observed as int8 units observe them
        batches = seeded_calibration(net, net.input_shape(batch_size))
        calibration = [b.numpy() for b in batches]
    threads = 1 if profile is None else profile.intra_op_threads
    program = subnet_program(net.eval(), calibration)
    return prepare_package(BinaryPackage(program, threads=threads), batch_size)


BINARY_TIMING = PrecisionTiming("binary", prepare_binary_unit, prepare_binary_arch)
register_precision_timing(BINARY_TIMING)
