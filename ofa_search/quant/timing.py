"""How int8 units and subnets are timed for latency tables and end-to-end checks: the QDQ
models of this package on the profile's backend (ONNX Runtime's int8 kernels), registered
with :func:`ofa_search.profiling.measure.register_precision_timing` when the package is
imported."""

from __future__ import annotations

from ofa_search.arch import Arch
from ofa_search.nn.static import build_static
from ofa_search.onnx_export import INPUT_NAME
from ofa_search.profiling.device import DeviceProfile
from ofa_search.profiling.measure import (
    Measurer,
    PrecisionTiming,
    Prepared,
    prepare_onnx,
    register_precision_timing,
)
from ofa_search.quant.units import int8_unit_onnx, seeded_input, seeded_int8_onnx
from ofa_search.units import Unit


def prepare_int8_unit(backend: Measurer, unit: Unit, profile: DeviceProfile) -> Prepared:
    """The QDQ int8 model of ``unit`` on ``backend``."""
    return prepare_onnx(backend, *int8_unit_onnx(unit, profile.batch_size))


def prepare_int8_arch(backend: Measurer, arch: Arch, batch_size: int = 1,
                      profile: DeviceProfile | None = None) -> Prepared:
    """The QDQ int8 model of ``arch``'s static subnet (seeded) on ``backend``."""
    net = build_static(arch)
    shape = net.input_shape(batch_size)
    return prepare_onnx(backend, seeded_int8_onnx(net, shape), {INPUT_NAME: seeded_input(shape)})


INT8_TIMING = PrecisionTiming("int8", prepare_int8_unit, prepare_int8_arch)
register_precision_timing(INT8_TIMING)
