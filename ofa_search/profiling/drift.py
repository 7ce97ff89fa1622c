"""Is this host still as fast as when its table was profiled? The drift check.

A measured table keeps the end-to-end times of a few *reference subnets* (the seeded fp32
subnets that fitted its overhead, ``table.meta["reference"]`` written by
:func:`~ofa_search.profiling.builder.fit_overhead`; older tables have them as
``meta["overhead"]["gaps_ms"]`` plus the unit sums). :func:`check_drift` times them again
in interleaved rounds and reports the host's speed ratio against the table (median of the
per-subnet ratios, with their spread); beyond :data:`DRIFT_TOLERANCE` the host has drifted.

A table that prices int8 or binary units can be checked per precision mode too
(``modes``): seeded subnets of each mode (``mixed``: int8 and binary stages in one
network) are timed in the same rounds as the references, and each mode's ratio is taken
against the table's own price of its subnets: a mode can drift apart from fp32 (on the
Intel host mixed subnets ran about 5 % over their price on some days and not on others),
which one fp32 ratio cannot correct.

A stored *scale* (:func:`save_scale`, ``ofa-search check-device --rescale``) is a ratio that
the predictions of the device then apply (:func:`load_scale`), with a ratio per checked
mode beside it; a search whose answers can be of several modes applies the largest of
theirs (:meth:`LatencyScale.for_modes`). It lives in the workspace at
``W/predictors/<device>-latency-scale.json`` and is recorded in every answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ofa_search.arch import Arch
from ofa_search.atomic import atomic_write_json
from ofa_search.errors import FileFormatError, OfaSearchError
from ofa_search.profiling.backends import get_backend
from ofa_search.profiling.builder import fit_network_model, mode_archs, sample_archs
from ofa_search.profiling.lut import MIXED_MODE, LatencyTable, NotMeasurableError, now_iso
from ofa_search.profiling.measure import FAST_TIMING, MEASURE_ROUNDS, default_chunk, measure_archs
from ofa_search.profiling.timing import TimingConfig
from ofa_search.versioning import read_format_json
from ofa_search.workspace import Workspace

DRIFT_TOLERANCE = 0.10
"""A speed ratio further than this from 1 is reported as drift."""
DRIFT_ROUNDS = 5
"""Interleaved rounds of a drift check."""
SCALE_FORMAT = "ofa-search-latency-scale"
SCALE_VERSION = 1
MODE_REFERENCE_SEED = 3_000_017
"""Seed of the per-mode subnets of a drift check (distinct from the overhead fit's and the
validation's)."""


def answer_modes(precisions: Sequence[str]) -> tuple[str, ...]:
    """The drift modes of the archs whose stages take ``precisions``: fp32 always, each
    low precision, and ``mixed`` where int8 and binary both are."""
    modes = ["fp32", *(p for p in ("int8", "binary") if p in precisions)]
    if "int8" in precisions and "binary" in precisions:
        modes.append(MIXED_MODE)
    return tuple(modes)


def table_modes(table: LatencyTable) -> tuple[str, ...]:
    """The drift modes ``table`` prices (:func:`answer_modes` of its precisions)."""
    return answer_modes(table.precisions)


@dataclass(frozen=True)
class References:
    """The table's reference subnets and their end-to-end times when it was profiled."""

    archs: tuple[Arch, ...]
    measured_ms: tuple[float, ...]
    source: str  # "reference" or "overhead" (derived from an older table's overhead fit)


def references(table: LatencyTable) -> References:
    """The reference subnets of ``table``; :class:`NotMeasurableError` (naming the fix)
    when it has none or cannot be measured here."""
    table.measurable_profile(", so there is no drift to check")
    ref = table.meta.get("reference")
    if isinstance(ref, dict):
        try:
            archs = tuple(Arch.parse(s, table.space) for s in ref["archs"])
            times = tuple(float(m) for m in ref["measured_ms"])
        except (KeyError, TypeError, ValueError) as exc:
            raise FileFormatError(f"table {table.device_id!r}: malformed reference subnets: "
                                  f"{exc}") from exc
        if archs and len(archs) == len(times):
            return References(archs, times, "reference")
    overhead = table.meta.get("overhead")
    if isinstance(overhead, dict) and overhead.get("gaps_ms"):
        gaps = [float(g) for g in overhead["gaps_ms"]]
        archs = tuple(sample_archs(table.space, len(gaps), int(overhead["seed"]),
                                   table.width_mult, table.resolutions))
        times = tuple(g + table.network_sum(a) for g, a in zip(gaps, archs, strict=True))
        return References(archs, times, "overhead")
    raise NotMeasurableError(
        f"table {table.device_id!r} has no reference subnets (it was profiled with "
        f"--overhead-archs 0); profile it again with `ofa-search profile --device "
        f"{table.device_id} --overhead-archs 10`")


def refit_network_model(table: LatencyTable) -> None:
    """Fit the table's in-network model and fp32 overhead again from its reference
    subnets' recorded times (nothing is measured): how a table profiled before the model
    existed gets it (:func:`~ofa_search.profiling.builder.fit_network_model`)."""
    refs = references(table)
    fit_network_model(table, refs.archs, refs.measured_ms)
    table.overhead_ms = float(np.median([m - table.network_sum(a)
                                         for a, m in zip(refs.archs, refs.measured_ms,
                                                         strict=True)]))


@dataclass(frozen=True)
class ModeDrift:
    """One precision mode's subnets: measured now over the table's price of them."""

    ratio: float
    low: float
    high: float
    archs: tuple[str, ...]
    measured_ms: tuple[float, ...]
    table_ms: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "low": self.low, "high": self.high,
                "archs": list(self.archs), "measured_ms": list(self.measured_ms),
                "table_ms": list(self.table_ms)}


@dataclass(frozen=True)
class DriftReport:
    """The host's speed against ``device``'s table: ``ratio`` > 1 means slower now."""

    device: str
    ratio: float
    low: float  # smallest and largest per-subnet ratio
    high: float
    ratios: tuple[float, ...]
    measured_ms: tuple[float, ...]
    table_ms: tuple[float, ...]
    rounds: int
    tolerance: float
    checked: str
    source: str
    modes: dict[str, ModeDrift] = field(default_factory=dict)
    """The low-precision modes checked, each against the table's price of its subnets."""

    @property
    def drifted(self) -> bool:
        """Whether the fp32 ratio or any mode's is further than the tolerance from 1."""
        return any(abs(r - 1.0) > self.tolerance for r in self.mode_ratios().values())

    def mode_ratios(self) -> dict[str, float]:
        """The ratio of every mode checked, fp32 (:attr:`ratio`) first."""
        return {"fp32": self.ratio, **{m: d.ratio for m, d in self.modes.items()}}

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "ratio": self.ratio, "low": self.low, "high": self.high,
                "drifted": self.drifted, "tolerance": self.tolerance, "rounds": self.rounds,
                "n_subnets": len(self.ratios), "ratios": list(self.ratios),
                "measured_ms": list(self.measured_ms), "table_ms": list(self.table_ms),
                "checked": self.checked, "references": self.source,
                "modes": {m: d.to_dict() for m, d in self.modes.items()}}

    def summary(self) -> str:
        """One line: the ratio, its spread, and what it means."""
        speed = (f"{self.ratio:.3f}x the table's latency ({len(self.ratios)} reference "
                 f"subnets, {self.low:.3f}-{self.high:.3f}, {self.rounds} interleaved rounds)")
        if self.modes:
            speed += "; " + ", ".join(f"{m} {d.ratio:.3f}x" for m, d in self.modes.items())
        if not self.drifted:
            return f"{self.device}: within ±{self.tolerance:.0%} of its table: {speed}"
        worst = max(self.mode_ratios().values(), key=lambda r: abs(r - 1.0))
        return (f"warning: {self.device} has drifted: this host runs at {speed}; answers are "
                f"off by up to {worst - 1:+.0%} unless you store the ratios with "
                f"`ofa-search check-device --device {self.device} --rescale`")


def check_drift(table: LatencyTable, *, rounds: int = DRIFT_ROUNDS,
                tolerance: float = DRIFT_TOLERANCE, backend: Any = None,
                measure: Callable[[Sequence[Arch]], Sequence[float]] | None = None,
                modes: Sequence[str] = ("fp32",)) -> DriftReport:
    """Time ``table``'s reference subnets now (in ``rounds`` interleaved rounds) and
    compare them with the table's times. ``modes`` beyond ``fp32`` (of
    :func:`table_modes`) add as many seeded subnets of each mode, timed in the same rounds
    and compared with the table's price of them. ``measure`` replaces the timing (tests
    inject a known speed); ``backend`` reuses an open backend of the table's profile."""
    extra = [m for m in dict.fromkeys(modes) if m != "fp32"]
    unknown = [m for m in extra if m not in table_modes(table)]
    if unknown:
        raise OfaSearchError(f"table {table.device_id!r} prices the modes "
                             f"{', '.join(table_modes(table))}, not {', '.join(unknown)}")
    refs = references(table)
    per_mode = {m: mode_archs(table.space, len(refs.archs), MODE_REFERENCE_SEED,
                              table.width_mult, table.resolutions, m) for m in extra}
    archs = [*refs.archs, *(a for m in extra for a in per_mode[m])]
    if measure is not None:
        times = [float(m) for m in measure(archs)]
    else:
        times = _measure(table, archs, rounds, backend)
    now, rest = times[:len(refs.archs)], times[len(refs.archs):]
    ratios = np.asarray(now) / np.asarray(refs.measured_ms)
    checked: dict[str, ModeDrift] = {}
    for m in extra:
        mine, rest = rest[:len(per_mode[m])], rest[len(per_mode[m]):]
        priced = [table.predict(a) for a in per_mode[m]]
        r = np.asarray(mine) / np.asarray(priced)
        checked[m] = ModeDrift(ratio=float(np.median(r)), low=float(r.min()),
                               high=float(r.max()),
                               archs=tuple(a.to_string() for a in per_mode[m]),
                               measured_ms=tuple(mine), table_ms=tuple(priced))
    return DriftReport(device=table.device_id, ratio=float(np.median(ratios)),
                       low=float(ratios.min()), high=float(ratios.max()),
                       ratios=tuple(float(r) for r in ratios), measured_ms=tuple(now),
                       table_ms=refs.measured_ms, rounds=rounds, tolerance=tolerance,
                       checked=now_iso(), source=refs.source, modes=checked)


def _measure(table: LatencyTable, archs: Sequence[Arch], rounds: int, backend: Any
             ) -> list[float]:
    profile = table.profile()
    assert profile is not None  # references() refused imported tables
    timing = table.meta.get("timing")
    config = TimingConfig(**timing) if isinstance(timing, dict) else FAST_TIMING
    if backend is not None:
        stats = measure_archs(backend, archs, profile.batch_size, profile, rounds=rounds)
    else:
        with get_backend(profile, timing=config) as owned:
            stats = measure_archs(owned, archs, profile.batch_size, profile, rounds=rounds)
    return [float(s.median_ms) for s in stats]


CHUNK_REFERENCES = 5
"""Reference subnets timed with every chunk of :func:`measure_with_references`."""


def measure_with_references(table: LatencyTable, backend: Any, archs: Sequence[Arch], *,
                            chunk: int = 20, n_refs: int = CHUNK_REFERENCES,
                            rounds: int | None = None,
                            on_chunk: Callable[[list[tuple[Arch, float, float]]], None]
                            | None = None) -> list[tuple[float, float]]:
    """``(median_ms, host_ratio)`` of each of ``archs``: measured chunk by chunk, each chunk
    interleaved with ``n_refs`` of the table's reference subnets, whose ratio to the table
    is that chunk's host speed (1.0 for a table without references). A burst of load
    that slows a whole chunk slows its references too, so ``median_ms / host_ratio`` is on
    the table's time base. ``on_chunk`` gets ``(arch, ms, ratio)`` after every chunk."""
    profile = table.measurable_profile()
    try:
        refs = references(table)
        ref_archs, ref_ms = list(refs.archs[:n_refs]), np.array(refs.measured_ms[:n_refs])
    except NotMeasurableError:
        ref_archs, ref_ms = [], np.zeros(0)
    out: list[tuple[float, float]] = []
    for start in range(0, len(archs), chunk):
        group = list(archs[start:start + chunk])
        items = [*group, *ref_archs]
        # all prepared at once where the backend allows (an RPC device holds one model)
        stats = measure_archs(backend, items, profile.batch_size, profile,
                              rounds=rounds or MEASURE_ROUNDS,
                              chunk=min(len(items), default_chunk(backend)))
        now = np.array([s.median_ms for s in stats[len(group):]])
        ratio = float(np.median(now / ref_ms)) if ref_archs else 1.0
        done = [(a, float(s.median_ms), ratio) for a, s in zip(group, stats, strict=False)]
        out.extend((ms, r) for _, ms, r in done)
        if on_chunk is not None:
            on_chunk(done)
    return out


# -- stored scales --------------------------------------------------------------------------
@dataclass(frozen=True)
class LatencyScale:
    """A stored speed ratio of a device: predictions are multiplied by :attr:`scale`
    (fp32 subnets) or by their mode's ratio in :attr:`by_mode` where it was checked."""

    device: str
    scale: float
    checked: str
    fingerprint: str | None
    by_mode: dict[str, float] = field(default_factory=dict)

    def for_modes(self, modes: Sequence[str]) -> float:
        """The scale for an answer that may be of any of ``modes``: the largest of their
        ratios (a mode not checked takes the fp32 one), so none is underpriced."""
        return max(self.by_mode.get(m, self.scale) for m in modes)


def scale_path(workspace: Workspace, device: str) -> Path:
    """``W/predictors/<device>-latency-scale.json``."""
    return workspace.latency_predictor(device).with_name(f"{device}-latency-scale.json")


def save_scale(workspace: Workspace, table: LatencyTable, report: DriftReport) -> Path:
    """Store ``report.ratio`` as the device's scale, with each checked mode's ratio
    (atomically)."""
    return atomic_write_json(scale_path(workspace, table.device_id), {
        "format": SCALE_FORMAT, "format_version": SCALE_VERSION, "device": table.device_id,
        "fingerprint": table.fingerprint, "scale": report.ratio,
        "by_mode": {m: d.ratio for m, d in report.modes.items()}, "checked": report.checked,
        "drift": report.to_dict()})


def clear_scale(workspace: Workspace, device: str) -> bool:
    """Remove a stored scale; whether there was one."""
    path = scale_path(workspace, device)
    if path.is_file():
        path.unlink()
        return True
    return False


def load_scale(workspace: Workspace, table: LatencyTable) -> LatencyScale | None:
    """The device's stored scale, or ``None``; a file that is not one, or was stored for
    another table of that id, is a :class:`FileFormatError`."""
    path = scale_path(workspace, table.device_id)
    if not path.is_file():
        return None
    data = read_format_json(path, fmt=SCALE_FORMAT, version=SCALE_VERSION,
                            what="latency-scale")
    scale = _ratio(path, "scale", data.get("scale"))
    by_mode = data.get("by_mode") or {}  # files written before per-mode checks have none
    if not isinstance(by_mode, dict):
        raise FileFormatError(f"{path.name}: by_mode must map modes to ratios, got "
                              f"{by_mode!r}")
    modes = {str(m): _ratio(path, f"by_mode[{m!r}]", r) for m, r in by_mode.items()}
    if data.get("fingerprint") != table.fingerprint:
        raise FileFormatError(f"{path.name} was stored for another table of device "
                              f"{table.device_id!r}; run `ofa-search check-device --device "
                              f"{table.device_id} --rescale` again")
    return LatencyScale(table.device_id, scale, str(data.get("checked")), table.fingerprint,
                        modes)


def _ratio(path: Path, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            0 < float(value) < 1e3) or not np.isfinite(value):
        raise FileFormatError(f"{path.name}: {name} must be a positive number, got {value!r}")
    return float(value)
