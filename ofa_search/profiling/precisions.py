"""The registry of how low-precision units and subnets are timed (:class:`PrecisionTiming`).

The packages of those precisions register theirs on import (:mod:`ofa_search.quant` for
``int8``, :mod:`ofa_search.binary` for ``binary``): the profiling layer sits below them
and never imports them. This module is light (no torch, no onnx), so that a front end can
register loaders (:func:`register_precision_timing_loader`) without paying for them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ofa_search.errors import UnsupportedPrecisionError
from ofa_search.profiling.timing import TimingStats

if TYPE_CHECKING:
    from ofa_search.arch import Arch
    from ofa_search.profiling.device import DeviceProfile
    from ofa_search.units import Unit


class Measurer(Protocol):
    """What measuring needs of a backend (a :class:`LatencyBackend` fits; one that also
    has ``prepare`` keeps each model loaded across rounds)."""

    def measure(self, onnx_model: Any, inputs: Any) -> TimingStats: ...

    def versions(self) -> dict[str, str]: ...


@dataclass(frozen=True)
class Prepared:
    """A model ready to be timed: ``measure()`` any number of times, then ``close()``."""

    measure: Callable[[], TimingStats]
    close: Callable[[], None] = lambda: None


@dataclass(frozen=True)
class PrecisionTiming:
    """How units and subnets with stages of one low precision are prepared for timing, as
    export emits them (see the module docstring)."""

    precision: str
    unit: Callable[[Measurer, Unit, DeviceProfile], Prepared]
    arch: Callable[[Measurer, Arch, int, DeviceProfile | None], Prepared]


_PRECISION_TIMINGS: dict[str, PrecisionTiming] = {}
_PRECISION_LOADERS: dict[str, Callable[[], object]] = {}
_REGISTERING_PACKAGE = {"int8": "ofa_search.quant", "binary": "ofa_search.binary"}


def register_precision_timing(timing: PrecisionTiming) -> None:
    """Add (or replace) how ``timing.precision`` units and subnets are timed."""
    _PRECISION_TIMINGS[timing.precision] = timing


def register_precision_timing_loader(precision: str, load: Callable[[], object]) -> None:
    """Have ``load()`` called the first time ``precision``'s timing is asked for and none is
    registered: a front end that must start fast (the CLI) passes a function that imports
    the precision's package, which registers its timing, instead of importing it up front."""
    _PRECISION_LOADERS[precision] = load


def precision_timing(precision: str) -> PrecisionTiming:
    """The registered timing of ``precision`` (an :class:`UnsupportedPrecisionError`
    naming the package to import when none is)."""
    if precision not in _PRECISION_TIMINGS and precision in _PRECISION_LOADERS:
        _PRECISION_LOADERS[precision]()
    try:
        return _PRECISION_TIMINGS[precision]
    except KeyError:
        package = _REGISTERING_PACKAGE.get(precision)
        hint = f"; `import {package}` registers it" if package else ""
        raise UnsupportedPrecisionError(
            f"no timing is registered for {precision} units{hint}") from None
