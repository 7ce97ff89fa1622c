"""A device table for a space that shares most of its units with a space already profiled.

Spaces that differ from a profiled one in a few units (``ofa_mbv3_mp_int8head``: the head
runs int8 where ``ofa_mbv3_mp`` keeps it fp32) need not be profiled again:
:func:`derive_table` copies every unit the two spaces share and measures only the others,
each beside its fp32 twin (the same unit at fp32, which the table prices), in the same
interleaved rounds. A new unit's price is its twin's table price times the median over
rounds of (new unit / twin), so it lands on the table's time base whatever the host's
speed is now (the host's speed against the table, twin by twin, is recorded as the
measurement's noise). The mode overheads are copied as they are; subnets whose artefact
changes (an int8 head in a QDQ model or a binary package) want their modes' overheads
refitted on the derived table (``scripts/fit_mode_overhead.py``).
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
from typing import Any

from ofa_search.errors import OfaSearchError
from ofa_search.profiling.backends import get_backend
from ofa_search.profiling.builder import table_units
from ofa_search.profiling.host import host_info
from ofa_search.profiling.lut import LatencyTable, now_iso
from ofa_search.profiling.measure import (
    FAST_TIMING,
    MEASURE_ROUNDS,
    Measurer,
    measure_many_rounds,
    prepare_unit,
)
from ofa_search.profiling.timing import TimingConfig, TimingStats, combine_rounds
from ofa_search.space import SearchSpace, get_space
from ofa_search.units import Unit

PAIRS_PER_CHUNK = 8
"""New units (each with its twin) prepared and timed together."""


def fp32_twin(unit: Unit) -> Unit:
    """``unit`` at fp32: the table entry a new unit is priced against."""
    return dataclasses.replace(unit, precision="fp32")


def missing_units(table: LatencyTable, space: str | SearchSpace) -> list[Unit]:
    """The units of ``space`` (at the table's width, resolutions and precisions) that
    ``table`` lacks. Raises :class:`OfaSearchError` when ``space`` lacks the table's width or
    resolutions, or when a missing unit's fp32 twin is not in the table either (then the
    spaces differ in more than precision and the table must be profiled)."""
    spec = get_space(space)
    if table.width_mult not in spec.width_mults:
        raise OfaSearchError(f"space {spec.name!r} has no width {table.width_mult} (table "
                             f"{table.device_id!r})")
    extra = sorted(set(table.resolutions) - set(spec.resolutions))
    if extra:
        raise OfaSearchError(f"space {spec.name!r} has no resolutions {extra} (table "
                             f"{table.device_id!r} covers them)")
    units = table_units(spec, table.width_mult, table.resolutions, table.precisions)
    missing = [u for u in units if u.key not in table.entries]
    orphans = [u.key for u in missing if fp32_twin(u).key not in table.entries]
    if orphans:
        raise OfaSearchError(f"table {table.device_id!r} has no fp32 twin of unit "
                             f"{orphans[0]!r} ({len(orphans)} such units): space "
                             f"{spec.name!r} differs from {table.space!r} in more than "
                             "precisions; profile it instead")
    return missing


def derive_table(table: LatencyTable, space: str | SearchSpace, device_id: str, *,
                 backend: Measurer | None = None, rounds: int = MEASURE_ROUNDS
                 ) -> LatencyTable:
    """``table``'s copy for ``space`` under the id ``device_id``, with the units it lacks
    measured on the table's profile (with its timing budget) beside their fp32 twins, in
    ``rounds`` interleaved rounds (see the module's docstring).
    ``table`` is not modified; ``meta["derived"]["units"]`` lists each new unit with its
    price, its twin's and the ratio. Raises :class:`OfaSearchError` for the same space, an
    empty id, an imported table (no profile to measure on), or what :func:`missing_units`
    refuses, before anything is measured."""
    spec = get_space(space)
    if spec.name == table.space:
        raise OfaSearchError(f"table {table.device_id!r} already prices space {spec.name!r}")
    if not device_id:
        raise OfaSearchError("the derived table needs a device id")
    if isinstance(rounds, bool) or rounds < 2:
        raise OfaSearchError(f"rounds must be an integer >= 2, got {rounds!r}")
    missing = missing_units(table, spec)
    profile = table.profile()
    if profile is None:
        raise OfaSearchError(f"table {table.device_id!r} was imported, not measured here: "
                             "its new units cannot be timed on its profile")
    owned = backend is None
    timing = table.meta.get("timing")
    measurer = backend if backend is not None else get_backend(
        profile, timing=TimingConfig(**timing) if isinstance(timing, dict) else FAST_TIMING)
    pairs = [u for unit in missing for u in (unit, fp32_twin(unit))]
    try:
        samples = measure_many_rounds(pairs, lambda u: prepare_unit(measurer, u, profile),
                                      rounds=rounds, chunk=2 * PAIRS_PER_CHUNK)
    finally:
        if owned:
            close = getattr(measurer, "close", None)
            if close is not None:
                close()
    derived = LatencyTable.from_dict(copy.deepcopy(table.to_dict()))
    derived.device_id = device_id
    derived.device = {**derived.device, "id": device_id}
    derived.space = spec.name
    records: list[dict[str, Any]] = []
    for i, unit in enumerate(missing):
        mine, twins = samples[2 * i], samples[2 * i + 1]
        twin_key = fp32_twin(unit).key
        twin_price = float(table.entries[twin_key]["median_ms"])
        ratios = [m.median_ms / t.median_ms for m, t in zip(mine, twins, strict=True)]
        ratio = statistics.median(ratios)
        measured, twin_measured = combine_rounds(mine), combine_rounds(twins)
        derived.entries[unit.key] = {**_scaled(measured, twin_price * ratio),
                                     "twin": twin_key, "twin_ratio": ratio,
                                     "twin_ratios": ratios}
        records.append({"unit": unit.key, "ms": twin_price * ratio, "twin": twin_key,
                        "twin_ms": twin_price, "ratio": ratio,
                        "host_ratio": twin_measured.median_ms / twin_price})
    host_ratios = [r["host_ratio"] for r in records]
    derived.meta = {**derived.meta, "updated": now_iso(), "derived": {
        "created": now_iso(), "from": table.device_id, "from_space": table.space,
        "rounds": rounds, "host": host_info(), "units": records,
        "host_ratio_median": statistics.median(host_ratios) if host_ratios else None,
        "method": "ofa_search.profiling.derive: shared units copied; each new unit timed "
                  "beside its fp32 twin in interleaved rounds and priced at the twin's "
                  "table price x the median ratio (new / twin) over rounds"}}
    return derived


def _scaled(stats: TimingStats, median_ms: float) -> dict[str, Any]:
    """``stats`` as a table entry, every time rescaled so that its median is
    ``median_ms``."""
    factor = median_ms / stats.median_ms if stats.median_ms > 0 else 1.0
    entry = stats.to_dict()
    for key in ("median_ms", "iqr_ms", "mean_ms", "min_ms", "ci_halfwidth_ms"):
        if entry.get(key) is not None:
            entry[key] = float(entry[key]) * factor
    entry["measured_median_ms"] = stats.median_ms
    return entry

