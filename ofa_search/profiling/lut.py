"""Device latency tables: per-unit latencies of one search space on one device.

A :class:`LatencyTable` prices an :class:`~ofa_search.arch.Arch` as the sum of the medians
of its units (:func:`ofa_search.units.arch_units`, matched by :attr:`key`), taken to their
in-network cost (:meth:`LatencyTable.network_sum`), plus a constant ``overhead_ms``; both
fitted end to end. Tables are self-describing, versioned JSON: the device
profile and its fingerprint, the host, the library versions, the date, the space, width
and resolutions covered, and for every unit the median, spread and count of its samples.

Tables live in ``hw_profiles/<device-id>.json`` — the ones shipped in the package
and the ones a user profiles into a workspace's ``hw_profiles/`` — and are found by device
id with :func:`find_table` / :func:`list_tables`.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ofa_search.arch import Arch
from ofa_search.atomic import atomic_write_json
from ofa_search.errors import FileFormatError, LutMissError, OfaSearchError, UnknownDeviceError
from ofa_search.profiling.device import DeviceProfile
from ofa_search.units import Unit, arch_units
from ofa_search.versioning import now_iso, require_version

LUT_SCHEMA_VERSION = 1
"""Version of the table file format this code reads and writes."""

FORMAT_NAME = "ofa-search-latency-table"


class NotMeasurableError(OfaSearchError, ValueError):
    """A table that cannot be measured from this host (imported, or without references)."""


REPO_TABLE_DIR = Path(__file__).resolve().parents[1] / "hw_profiles"
"""The tables shipped with the repository."""

_REQUIRED = ("format", "schema_version", "device_id", "device", "space", "width_mult",
             "resolutions", "overhead_ms", "entries")
_ENTRY_REQUIRED = ("median_ms", "iqr_ms", "count")


@dataclass
class LatencyTable:
    """Latency of every unit of one space (at one width) on one device, in milliseconds.

    Attributes:
        device_id: the device's id (also the file name, ``<device_id>.json``).
        device: the device description; for measured tables :meth:`DeviceProfile.to_dict`,
            for imported ones a free-form dict with at least ``backend``.
        fingerprint: :meth:`DeviceProfile.fingerprint` of the measuring profile (``None``
            for imported tables).
        space, width_mult: the search space and width multiplier priced.
        resolutions: input resolutions whose units the table covers.
        overhead_ms: constant added to every prediction (graph-level cost not in units).
        overhead_by_mode: the constant for subnets of a low-precision mode (``int8``: some
            int8 stages, ``binary``: some binary stages; see :func:`precision_mode`),
            which run as other artefacts (a QDQ model, a binary package) with their own
            graph-level costs; modes not listed use ``overhead_ms``. ``mixed`` (int8 and
            binary stages in one package, :func:`overhead_mode`) has its own in tables
            that fitted one, else the ``binary`` one.
        unit_scale, per_unit_ms: how units timed alone add up inside a network (see
            :meth:`network_sum`): a subnet costs ``unit_scale`` times the sum of its units
            plus ``per_unit_ms`` per unit (negative: the per-call cost and the layout
            conversions that every unit timed alone pays once and a network does not),
            fitted end to end with ``overhead_ms`` on the reference subnets
            (:func:`~ofa_search.profiling.builder.fit_overhead`); 1 and 0 in tables that
            predate them, whose prediction is the plain sum.
        entries: unit key → ``{"median_ms", "iqr_ms", "count", ...}``; an optional
            ``by_resolution`` (``{"192": ms}``) overrides ``median_ms`` for subnets at that
            input resolution (imported tables priced one key per resolution).
        host: :func:`~ofa_search.profiling.host.host_info` of the measuring host.
        versions: versions of the packages that shaped the timings.
        created: ISO date of creation (``updated`` in :attr:`meta` for later edits).
        complete: ``False`` while a build is still under way.
        meta: anything else (timing config, overhead fit, wall time, source of an import).
        path: the file the table was loaded from or last saved to (not stored in it).
    """

    device_id: str
    device: dict[str, Any]
    space: str
    width_mult: float
    resolutions: tuple[int, ...]
    fingerprint: str | None = None
    overhead_ms: float = 0.0
    overhead_by_mode: dict[str, float] = field(default_factory=dict)
    unit_scale: float = 1.0
    per_unit_ms: float = 0.0
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    host: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    created: str = field(default_factory=now_iso)
    complete: bool = True
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False, repr=False)

    # -- pricing ------------------------------------------------------------------------
    def _check_arch(self, arch: Arch) -> None:
        if arch.space != self.space:
            raise LutMissError(f"table {self.device_id!r} prices space {self.space!r}, "
                               f"not {arch.space!r}")
        if not math.isclose(arch.width_mult, self.width_mult):
            raise LutMissError(f"table {self.device_id!r} prices width {self.width_mult}, "
                               f"not {arch.width_mult}")
        if arch.resolution not in self.resolutions:
            raise LutMissError(f"table {self.device_id!r} does not cover resolution "
                               f"{arch.resolution}; it covers resolutions "
                               f"{list(self.resolutions)}")

    def unit_price(self, unit: Unit, resolution: int) -> float:
        """The median of ``unit`` in a subnet at ``resolution`` (:class:`LutMissError` when
        the table has no entry for it)."""
        entry = self.entries.get(unit.key)
        if entry is None:
            raise LutMissError(f"table {self.device_id!r} has no entry for unit {unit.key!r}")
        by_res = entry.get("by_resolution") or {}
        return float(by_res.get(str(resolution), entry["median_ms"]))

    def unit_sum(self, arch: Arch) -> float:
        """Sum of the medians of ``arch``'s units (no overhead)."""
        self._check_arch(arch)
        return sum(self.unit_price(unit, arch.resolution) for unit in arch_units(arch))

    def network_sum(self, arch: Arch) -> float:
        """``unit_scale · unit_sum + per_unit_ms · units``: the units' cost inside a
        network (no overhead)."""
        total = self.unit_sum(arch)
        if self.unit_scale == 1.0 and self.per_unit_ms == 0.0:
            return total
        return self.unit_scale * total + self.per_unit_ms * len(arch_units(arch))

    def predict(self, arch: Arch) -> float:
        """Predicted latency of ``arch`` in ms: unit medians plus ``overhead_ms``.

        Raises :class:`LutMissError` naming the first missing unit key, or the space,
        width or resolution the table does not cover.
        """
        return self.network_sum(arch) + self.overhead_for(arch)

    def cheapest_precisions(self, arch: Arch, precisions: Sequence[str] | None = None, *,
                            low_precision: bool = False) -> Arch:
        """``arch`` with the precision per stage that the table prices lowest, each stage
        one of ``precisions`` (default: every precision the table holds and the space
        offers; ``fp32`` must be among them), and with ``low_precision`` at least one stage
        not fp32. Every assignment is priced whole (:meth:`predict`, with its mode's
        overhead); of equal prices the one with the most fp32 stages wins, then the first
        in ``precisions``' order.

        Raises:
            OfaSearchError: a precision the space does not offer or the table lacks, or
                ``precisions`` without ``fp32``.
            LutMissError: the table does not cover ``arch``'s space, width or resolution.
        """
        offered = arch.search_space.precisions
        chosen = tuple(dict.fromkeys(
            [p for p in ("fp32", *self.precisions) if p in offered] if precisions is None
            else precisions))
        if "fp32" not in chosen:
            raise OfaSearchError(f"precisions must include 'fp32', got {list(chosen)}")
        if low_precision and len(chosen) < 2:
            raise OfaSearchError("low_precision needs a precision other than 'fp32' among "
                                 f"{list(chosen)}")
        for p in chosen:
            if p not in offered:
                raise OfaSearchError(f"space {arch.space!r} offers precisions "
                                     f"{list(offered)}, not {p!r}")
            if p not in self.precisions:
                raise OfaSearchError(f"table {self.device_id!r} prices precisions "
                                     f"{list(self.precisions)}, not {p!r}")
        best: tuple[float, int, tuple[int, ...]] | None = None
        best_arch = arch
        fp32 = chosen.index("fp32")
        for picks in itertools.product(range(len(chosen)), repeat=arch.search_space.num_stages):
            if low_precision and picks.count(fp32) == len(picks):
                continue
            candidate = arch.replace(precisions=tuple(chosen[i] for i in picks))
            key = (self.predict(candidate), -picks.count(fp32), picks)
            if best is None or key < best:
                best, best_arch = key, candidate
        return best_arch

    def mode_overhead(self, arch: Arch) -> float | None:
        """The overhead of ``arch``'s :func:`head_mode` (its mode and its head's precision)
        when the table has one, else of its :func:`overhead_mode` (a ``mixed`` arch without
        a ``mixed`` overhead takes the ``binary`` one), else ``None``."""
        mode = overhead_mode(arch)
        for key in (head_mode(arch), mode, "binary" if mode == MIXED_MODE else None):
            if key in self.overhead_by_mode:
                return self.overhead_by_mode[key]
        return None

    def overhead_for(self, arch: Arch) -> float:
        """The constant added to ``arch``'s unit sum: its mode's (:meth:`mode_overhead`),
        else ``overhead_ms``."""
        own = self.mode_overhead(arch)
        return self.overhead_ms if own is None else own

    @property
    def precisions(self) -> tuple[str, ...]:
        """The precisions whose units the table holds (its profile's ``precisions``)."""
        return tuple(self.device.get("precisions", ("fp32",)))

    def covers(self, arch: Arch) -> bool:
        """Whether :meth:`predict` can price ``arch``."""
        try:
            self.unit_sum(arch)
        except LutMissError:
            return False
        return True

    def measurable_profile(self, purpose: str = "") -> DeviceProfile:
        """The measuring :class:`DeviceProfile` (see :meth:`profile`); an imported table
        raises :class:`NotMeasurableError` (``purpose``: what the measurement was for,
        appended to the message)."""
        profile = self.profile()
        if profile is None:
            raise NotMeasurableError(f"device {self.device_id!r} is an imported table: it "
                                     f"cannot be measured from this host{purpose}")
        return profile

    def profile(self) -> DeviceProfile | None:
        """The measuring :class:`DeviceProfile`, or ``None`` for an imported table.

        A TVM table's ``tuning_db`` comes back usable: relative to the table's folder, an
        archive unpacked (:func:`~ofa_search.profiling.tvm_db.resolve_tuning_db`); a
        database that is gone raises :class:`FileFormatError`.
        """
        if self.fingerprint is None:
            return None
        # deferred: tvm_db loads the backends (onnx); lut stays light
        from ofa_search.profiling.tvm_db import resolve_tuning_db

        profile = DeviceProfile.from_dict(self.device)
        return resolve_tuning_db(profile, None if self.path is None else self.path.parent)

    # -- files --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON form (see :func:`LatencyTable.from_dict`)."""
        return {
            "format": FORMAT_NAME,
            "schema_version": LUT_SCHEMA_VERSION,
            "device_id": self.device_id,
            "device": self.device,
            "fingerprint": self.fingerprint,
            "host": self.host,
            "versions": self.versions,
            "created": self.created,
            "space": self.space,
            "width_mult": self.width_mult,
            "resolutions": list(self.resolutions),
            "complete": self.complete,
            "overhead_ms": self.overhead_ms,
            "overhead_by_mode": dict(self.overhead_by_mode),
            # written only when fitted, so that older tables keep their bytes and identity
            **({"unit_scale": self.unit_scale, "per_unit_ms": self.per_unit_ms}
               if (self.unit_scale, self.per_unit_ms) != (1.0, 0.0) else {}),
            "meta": self.meta,
            "entries": {key: self.entries[key] for key in sorted(self.entries)},
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = "table") -> LatencyTable:
        """Inverse of :meth:`to_dict`; anything malformed is a :class:`FileFormatError`."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT_NAME:
            raise FileFormatError(f"{source}: not an ofa-search latency table "
                                  f"(no 'format': {FORMAT_NAME!r})")
        require_version(data, key="schema_version", expected=LUT_SCHEMA_VERSION,
                        what="latency table", source=source)
        missing = [key for key in _REQUIRED if key not in data]
        if missing:
            raise FileFormatError(f"{source}: latency table lacks fields {missing}")
        entries = data["entries"]
        if not isinstance(entries, Mapping):
            raise FileFormatError(f"{source}: 'entries' must be an object")
        for key, entry in entries.items():
            if not isinstance(entry, Mapping) or any(k not in entry for k in _ENTRY_REQUIRED):
                raise FileFormatError(f"{source}: entry {key!r} must hold {_ENTRY_REQUIRED}")
            if not _is_number(entry["median_ms"]) or entry["median_ms"] < 0:
                raise FileFormatError(f"{source}: entry {key!r} has a bad median_ms "
                                      f"{entry['median_ms']!r}")
        try:
            return cls(
                device_id=str(data["device_id"]), device=dict(data["device"]),
                space=str(data["space"]), width_mult=float(data["width_mult"]),
                resolutions=tuple(int(r) for r in data["resolutions"]),
                fingerprint=data.get("fingerprint"), overhead_ms=float(data["overhead_ms"]),
                overhead_by_mode={str(k): float(v) for k, v in
                                  (data.get("overhead_by_mode") or {}).items()},
                unit_scale=_positive(data.get("unit_scale", 1.0), "unit_scale"),
                per_unit_ms=_finite(data.get("per_unit_ms", 0.0), "per_unit_ms"),
                entries={str(k): dict(v) for k, v in entries.items()},
                host=dict(data.get("host") or {}), versions=dict(data.get("versions") or {}),
                created=str(data.get("created", "")), complete=bool(data.get("complete", True)),
                meta=dict(data.get("meta") or {}),
            )
        except (TypeError, ValueError) as exc:
            raise FileFormatError(f"{source}: malformed latency table: {exc}") from exc

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the table to ``path`` atomically."""
        self.path = atomic_write_json(path, self.to_dict())
        return self.path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LatencyTable:
        """Read a table; truncated, non-JSON or foreign files raise :class:`FileFormatError`."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise FileFormatError(f"{os.fspath(path)}: not a UTF-8 JSON file ({exc})") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FileFormatError(f"{os.fspath(path)}: not valid JSON (truncated?): "
                                  f"{exc}") from exc
        table = cls.from_dict(data, source=os.fspath(path))
        table.path = Path(path)
        return table


def precision_mode(arch: Arch) -> str:
    """``binary`` when ``arch`` has a binary stage, ``int8`` when it has an int8 stage, else
    ``fp32``: which kind of artefact runs it (a package, a QDQ model, fp32 ONNX)."""
    if "binary" in arch.precisions:
        return "binary"
    return "int8" if "int8" in arch.precisions else "fp32"


MIXED_MODE = "mixed"
"""The mode of subnets with int8 *and* binary stages in one network (a binary package with
QDQ int8 segments)."""


def overhead_mode(arch: Arch) -> str:
    """``mixed`` for an arch with int8 and binary stages, else its :func:`precision_mode`:
    the mode whose overhead prices it, whose drift the drift check measures, and which
    validation reports."""
    if "int8" in arch.precisions and "binary" in arch.precisions:
        return MIXED_MODE
    return precision_mode(arch)


def head_mode(arch: Arch) -> str:
    """:func:`overhead_mode` with the head's precision, e.g. ``binary+int8head``: in a
    ``head_int8`` space, subnets of one mode run as two artefacts (the head fp32 or int8
    in the same QDQ model or package), whose graph-level costs a table may price apart."""
    head = arch.search_space.head_precision(arch.precisions)
    return f"{overhead_mode(arch)}+{head}head"


def split_mode(mode: str) -> tuple[str, str | None]:
    """``"binary+int8head"`` → ``("binary", "int8")``; a mode without a head's precision →
    ``(mode, None)``."""
    for head in ("fp32", "int8"):
        suffix = f"+{head}head"
        if mode.endswith(suffix):
            return mode.removesuffix(suffix), head
    return mode, None


QUIET_SPREAD = 0.02
"""The median relative spread of the units' rounds in tables profiled on a quiet host (1
thread, CPU)."""
NOISY_SPREAD = 0.05
"""A table whose units' rounds disagree by a larger median relative spread was profiled on
a busy host. Quiet 1-thread CPU tables sit near :data:`QUIET_SPREAD`; two threads on a
2-core host at 0.07-0.16; a host busy with other work above 0.2
(docs/benchmarks/precision-mbv3.md)."""


@dataclass(frozen=True)
class UnitAgreement:
    """How well the rounds of each unit of a table agreed: its spread is
    ``ci_halfwidth_ms / median_ms`` (for units measured in rounds, the largest distance of
    a round's median from the median; see
    :func:`~ofa_search.profiling.timing.combine_rounds`)."""

    units: int
    converged_share: float
    median_spread: float
    p90_spread: float

    @property
    def noisy(self) -> bool:
        return self.median_spread > NOISY_SPREAD

    def summary(self) -> str:
        """One line: the median and 90th-percentile spread and the converged share."""
        return (f"a unit's measurements agreed within a median {self.median_spread:.1%} "
                f"(90th percentile {self.p90_spread:.1%}; {self.converged_share:.0%} of "
                f"{self.units} units converged)")

    def warning(self, device: str) -> str | None:
        """A warning naming the fix, when the host was too busy while profiling."""
        if not self.noisy:
            return None
        return (f"warning: {device} was profiled while the host was busy: its units' "
                f"measurements disagreed by a median {self.median_spread:.1%}, where a quiet "
                f"host gives about {QUIET_SPREAD:.0%}. Its prices are that uncertain: profile "
                f"it again under a new device id when the host is quiet")


def unit_spread(table: LatencyTable) -> float | None:
    """``table``'s median unit spread (:func:`unit_agreement`) for listings and JSON:
    ``None`` for an imported table, or when most units' intervals are unbounded."""
    agreement = unit_agreement(table)
    if agreement is None or not math.isfinite(agreement.median_spread):
        return None
    return agreement.median_spread


def unit_agreement(table: LatencyTable) -> UnitAgreement | None:
    """The agreement of ``table``'s unit measurements, or ``None`` when its entries carry no
    spread (an imported table)."""
    spreads: list[float] = []
    converged = 0
    for entry in table.entries.values():
        if "ci_halfwidth_ms" not in entry or not _is_number(entry.get("median_ms")):
            continue
        median, half = float(entry["median_ms"]), entry["ci_halfwidth_ms"]
        if median <= 0:
            continue
        spreads.append(half / median if _is_number(half) else math.inf)  # None: unbounded
        converged += bool(entry.get("converged"))
    if not spreads:
        return None
    spreads.sort()
    return UnitAgreement(units=len(spreads), converged_share=converged / len(spreads),
                         median_spread=spreads[len(spreads) // 2],
                         p90_spread=spreads[min(len(spreads) - 1, int(0.9 * len(spreads)))])


def _finite(value: Any, name: str) -> float:
    if not _is_number(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _positive(value: Any, name: str) -> float:
    if _finite(value, name) <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return float(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# -- registry ---------------------------------------------------------------------------
def table_dirs(workspace: str | os.PathLike[str] | None = None) -> list[Path]:
    """Where tables are looked up: the workspace's ``hw_profiles/`` (if given) first, then
    the package's ``ofa_search/hw_profiles/``."""
    dirs = []
    if workspace is not None:
        dirs.append(Path(workspace) / "hw_profiles")
    dirs.append(REPO_TABLE_DIR)
    return dirs


@dataclass(frozen=True)
class TableInfo:
    """One table file found by :func:`list_tables` (``error`` set when it does not load)."""

    device_id: str
    path: Path
    space: str | None = None
    width_mult: float | None = None
    resolutions: tuple[int, ...] = ()
    backend: str | None = None
    entries: int = 0
    complete: bool = False
    error: str | None = None
    unit_spread: float | None = None
    """The median relative spread of its units' rounds (:func:`unit_spread`): above
    :data:`NOISY_SPREAD` it was profiled on a busy host."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"device_id": self.device_id, "path": str(self.path), "space": self.space,
                "width_mult": self.width_mult, "resolutions": list(self.resolutions),
                "backend": self.backend, "entries": self.entries, "complete": self.complete,
                "error": self.error, "unit_spread": self.unit_spread}


def _resolve_dirs(dirs: Iterable[str | os.PathLike[str]] | None,
                  workspace: str | os.PathLike[str] | None) -> list[Path]:
    return table_dirs(workspace) if dirs is None else [Path(d) for d in dirs]


def list_tables(dirs: Sequence[str | os.PathLike[str]] | None = None, *,
                workspace: str | os.PathLike[str] | None = None) -> list[TableInfo]:
    """Every ``*.json`` table in ``dirs`` (default :func:`table_dirs`), one per device id;
    an id found in several folders is listed from the first. Sorted by id."""
    found: dict[str, TableInfo] = {}
    for folder in _resolve_dirs(dirs, workspace):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.json")):
            if path.stem in found:
                continue
            try:
                table = LatencyTable.load(path)
            except (FileFormatError, OSError) as exc:
                found[path.stem] = TableInfo(path.stem, path, error=str(exc))
                continue
            found[path.stem] = TableInfo(
                path.stem, path, table.space, table.width_mult, table.resolutions,
                table.device.get("backend"), len(table.entries), table.complete,
                unit_spread=unit_spread(table))
    return [found[key] for key in sorted(found)]


def find_table(device_id: str, dirs: Sequence[str | os.PathLike[str]] | None = None, *,
               workspace: str | os.PathLike[str] | None = None) -> LatencyTable:
    """Load the table of ``device_id`` (first match in ``dirs``, default :func:`table_dirs`).

    Raises :class:`UnknownDeviceError` listing the known device ids when there is none.
    """
    folders = _resolve_dirs(dirs, workspace)
    for folder in folders:
        path = folder / f"{device_id}.json"
        if path.is_file():
            return LatencyTable.load(path)
    known = [info.device_id for info in list_tables(folders)]
    raise UnknownDeviceError(f"no latency table for device {device_id!r} in "
                             f"{[str(f) for f in folders]}; known devices: {known or 'none'}",
                             known=tuple(known))
