"""Latency of one binary block through the package runtime."""

from __future__ import annotations

import pytest

from ofa_search.arch import Arch
from ofa_search.binary import measure_binary_unit, tvm_available
from ofa_search.binary.measure import unit_package
from ofa_search.profiling.timing import TimingConfig
from ofa_search.units import MBConvUnit, arch_units

QUICK = TimingConfig(warmup=1, min_runs=5, max_runs=20, time_cap_s=0.3)


def binary_units() -> list[MBConvUnit]:
    arch = Arch.smallest("mbv3_small28_mp").replace(precisions=("binary",) * 4)
    return [u for u in arch_units(arch) if isinstance(u, MBConvUnit) and u.precision == "binary"]


@pytest.mark.parametrize("backend", ["numpy", "tvm"])
def test_measures_a_binary_block(backend: str) -> None:
    if backend == "tvm" and not tvm_available():
        pytest.skip("TVM is not installed")
    unit = binary_units()[1]  # a residual block: expand, depthwise, project, add
    stats = measure_binary_unit(unit, threads=1, timing=QUICK, backend=backend)  # type: ignore[arg-type]
    assert stats.median_ms > 0 and stats.min_ms <= stats.median_ms
    assert QUICK.min_runs <= stats.count <= QUICK.max_runs


def test_unit_package_is_that_unit() -> None:
    unit = binary_units()[0]
    package = unit_package(unit, backend="numpy")
    assert package.program.unit == unit.key and package.program.arch is None
    assert package.input_shape == (unit.in_channels, unit.in_size, unit.in_size)
    assert len(package.program.layers) == 2  # expand and project


def test_refuses_other_precisions_and_bad_batch() -> None:
    fp32 = Arch.smallest("mbv3_small28_mp")
    unit = next(u for u in arch_units(fp32)[2:] if isinstance(u, MBConvUnit))
    with pytest.raises(ValueError, match="precision 'fp32'"):
        measure_binary_unit(unit, timing=QUICK)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        measure_binary_unit(binary_units()[0], timing=QUICK, batch_size=0)
