"""Latency of compressed networks: measured with the device's backend, priced by its table
where the table has the units.

A pruned network has hidden widths outside the space's choices, so most of its units are
not in the device's table: it is priced by *measuring* it, exported to ONNX exactly as it
is deployed, on the device's backend (ONNX Runtime at the table's thread count; without a
device, ONNX Runtime at one thread on this host), with the project's robust timing
(:mod:`ofa_search.profiling.measure`: warm-up, adaptive samples, interleaved rounds).
:func:`price_units` also gives the table's price when every unit is in it, and says how
many are otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from torch import nn

from ofa_search.compress.errors import CompressError
from ofa_search.onnx_export import INPUT_NAME, export_onnx
from ofa_search.profiling.backends import get_backend
from ofa_search.profiling.device import DeviceProfile
from ofa_search.profiling.lut import LatencyTable, find_table
from ofa_search.profiling.measure import (
    FAST_TIMING,
    MEASURE_ROUNDS,
    measure_many,
    prepare_onnx,
)
from ofa_search.profiling.timing import TimingConfig, TimingStats
from ofa_search.units import Unit

Model = tuple[onnx.ModelProto, dict[str, np.ndarray]]
"""An ONNX model and the inputs it is timed on."""


@dataclass(frozen=True)
class Target:
    """Where latencies are measured: a backend profile, and the device's table if any."""

    profile: DeviceProfile
    table: LatencyTable | None = None

    @property
    def device(self) -> str:
        return self.profile.id

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "backend": self.profile.backend,
                "threads": self.profile.num_threads, "batch_size": self.profile.batch_size,
                "table": None if self.table is None else self.table.device_id}


LOCAL_DEVICE = "local-ort-1t"
"""Profile id used when no device is given: ONNX Runtime on this host at one thread."""


def resolve_target(device: str | None, workspace: str | os.PathLike[str] | None = None
                   ) -> Target:
    """The device's table and measuring profile (a
    :class:`~ofa_search.profiling.lut.NotMeasurableError` for an imported table, which
    cannot be measured from this host); ONNX Runtime at 1 thread without one."""
    if device is None:
        return Target(DeviceProfile.local_onnxruntime(1, id=LOCAL_DEVICE))
    table = find_table(device, workspace=workspace)
    profile = table.measurable_profile(
        "; compressed networks are priced by measuring them")
    if profile.batch_size != 1:
        raise CompressError(f"device {device!r} is profiled at batch {profile.batch_size}; "
                            "compressed networks are measured at batch 1")
    return Target(profile, table)


def module_onnx(module: nn.Module, input_shape: tuple[int, ...]) -> Model:
    """``module`` exported to ONNX (eval mode) with a seeded input of ``input_shape``."""
    x = np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)
    return export_onnx(module, input_shape), {INPUT_NAME: x}


def measure_models(target: Target, models: Sequence[Model], *, rounds: int = MEASURE_ROUNDS,
                   timing: TimingConfig | None = None) -> list[TimingStats]:
    """Latency of each model on ``target``'s backend, timed in interleaved rounds (each
    model once per round; the median of its round medians)."""
    with get_backend(target.profile, timing=timing or FAST_TIMING) as backend:
        return measure_many(list(models), lambda m: prepare_onnx(backend, *m), rounds=rounds)


@dataclass(frozen=True)
class UnitPrice:
    """A table's price of a list of units: ``ms`` when every unit is in the table (else
    ``None``), and which units are (``covered`` of ``total``)."""

    ms: float | None
    covered: int
    total: int
    missing: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"table_ms": self.ms, "units_in_table": self.covered, "units": self.total,
                "missing": list(self.missing[:5])}


def network_price(table: LatencyTable, unit_ms: Sequence[float], *, overhead: bool = True
                  ) -> float:
    """The table's in-network cost of units timed alone (``unit_ms``): ``unit_scale · Σ +
    per_unit_ms · n`` (see :meth:`LatencyTable.network_sum`), plus the fp32 overhead."""
    total = table.unit_scale * float(sum(unit_ms)) + table.per_unit_ms * len(unit_ms)
    return total + (table.overhead_ms if overhead else 0.0)


@dataclass(frozen=True)
class PrefixPrices:
    """A table's price of a subnet (``full_ms``) split into prefixes: ``prefix_ms[k]`` is
    the share of ``full_ms`` that units ``0 … cuts[k]`` have in the plain sum of the units'
    medians; ``factor`` (``full_ms`` / that sum) takes anything timed alone as a unit is
    (an exit head) to its in-network cost."""

    full_ms: float
    prefix_ms: tuple[float, ...]
    factor: float


def prefix_prices(table: LatencyTable, units: Sequence[Unit], resolution: int,
                  cuts: Sequence[int]) -> PrefixPrices | None:
    """:class:`PrefixPrices` of ``units`` cut after each of ``cuts``, or ``None`` when the
    table lacks a unit.

    The table prices a whole network, not a prefix: its fitted in-network model
    (:meth:`LatencyTable.network_sum`) corrects the sum of units timed alone by a scale
    and a per-unit term (each unit alone pays a per-call cost the network does not), plus
    an overhead, fitted on whole subnets. Applied to a short prefix of tiny units that
    linear model can go below zero, so a prefix gets its units' share of the whole
    price instead: always positive, and the prefix of every unit is the table's price."""
    full = price_units(table, units, resolution).ms
    if full is None:
        return None
    alone = [table.unit_price(unit, resolution) for unit in units]
    total = float(sum(alone))
    if total <= 0:
        return None
    factor = full / total
    return PrefixPrices(full, tuple(factor * float(sum(alone[:cut + 1])) for cut in cuts),
                        factor)


def price_units(table: LatencyTable, units: Sequence[Unit], resolution: int) -> UnitPrice:
    """:func:`network_price` of ``units`` from the table, where it has all of them."""
    prices: list[float] = []
    missing: list[str] = []
    for unit in units:
        entry: Mapping[str, Any] | None = table.entries.get(unit.key)
        if entry is None or resolution not in table.resolutions:
            missing.append(unit.key)
            continue
        prices.append(table.unit_price(unit, resolution))
    ms = network_price(table, prices) if not missing else None
    return UnitPrice(ms, len(prices), len(units), tuple(missing))
