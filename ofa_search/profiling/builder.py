"""Build a device latency table: measure every distinct unit, then fit the overhead.

Every unit a space can produce (:func:`enumerate_units`) is built with
:func:`~ofa_search.nn.static.build_unit`, exported with the same
:func:`~ofa_search.onnx_export.export_onnx` path as whole subnets, and timed by the
profile's backend, in chunks whose units are timed in interleaved rounds
(:func:`~ofa_search.profiling.measure.measure_many`), so that a burst of load elsewhere on
the host spoils no unit's whole timing. The table is saved atomically after every chunk, so
an interrupted build resumes where it stopped; a table measured under another profile
fingerprint is refused. Finally a few random whole subnets are measured end to end (also in
rounds) and ``overhead_ms`` is set to the median gap between measured and summed latency.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ofa_search.arch import Arch
from ofa_search.atomic import check_writable_file, remove_stale_temps
from ofa_search.errors import OfaSearchError
from ofa_search.profiling.backends import get_backend
from ofa_search.profiling.device import DeviceProfile
from ofa_search.profiling.host import host_info
from ofa_search.profiling.lut import MIXED_MODE, LatencyTable, now_iso, split_mode
from ofa_search.profiling.measure import (
    FAST_TIMING,
    MEASURE_ROUNDS,
    Measurer,
    default_chunk,
    measure_archs,
    measure_many,
    prepare_unit,
)
from ofa_search.profiling.timing import TimingConfig, TimingStats
from ofa_search.space import SearchSpace, get_space
from ofa_search.units import HeadUnit, MBConvUnit, StemUnit, Unit, arch_units, conv_out_size

OVERHEAD_SEED = 1_000_003
"""Seed of the subnets that fit ``overhead_ms`` (validation uses another one)."""


class ProfileMismatchError(OfaSearchError, ValueError):
    """An existing table was measured under a different device profile."""


class ProfileOptionError(OfaSearchError, ValueError):
    """Options of a table build that the space or the timing cannot honour."""


def check_build_options(spec: SearchSpace, width: float, resolutions: Sequence[int], *,
                        overhead_archs: int = 0, rounds: int = 1) -> None:
    """Refuse, before anything is measured or written, resolutions or a width that ``spec``
    does not have (a table of them could never be completed), and counts below their
    minimum. (Precisions that the space lacks are left out of the table, as documented.)"""
    if not resolutions:
        raise ProfileOptionError("no resolution to profile")
    bad = sorted({int(r) for r in resolutions if r not in spec.resolutions})
    if bad:
        raise ProfileOptionError(f"space {spec.name!r} has resolutions "
                                 f"{list(spec.resolutions)}, not {bad}")
    if width not in spec.width_mults:
        raise ProfileOptionError(f"space {spec.name!r} has widths {list(spec.width_mults)}, "
                                 f"not {width!r}")
    if overhead_archs < 0 or rounds < 1:
        raise ProfileOptionError(f"need overhead_archs >= 0 and rounds >= 1, got "
                                 f"{overhead_archs} and {rounds}")


def enumerate_units(space: str | SearchSpace, width_mult: float | None = None,
                    resolutions: Sequence[int] | None = None,
                    precision: str = "fp32") -> list[Unit]:
    """Every distinct unit (by key) that subnets of ``space`` at ``width_mult`` can contain
    at ``resolutions`` (default: all of the space's), in execution order per resolution."""
    spec = get_space(space)
    width = spec.width_mults[0] if width_mult is None else width_mult
    widths = spec.widths(width)
    units: dict[str, Unit] = {}

    def add(unit: Unit) -> None:
        units.setdefault(unit.key, unit)

    for res in spec.resolutions if resolutions is None else resolutions:
        stem = StemUnit(spec.in_channels, widths.stem, res, spec.stem_stride, spec.stem_act)
        add(stem)
        size = stem.out_size
        add(MBConvUnit(widths.stem, widths.first_block, widths.stem, size, kernel=3, stride=1,
                       act="relu", se_channels=0, has_expand=False))
        in_ch = widths.first_block
        for s, stage in enumerate(spec.stages):
            out_ch = widths.stages[s]
            shapes = [(in_ch, size, stage.stride)]
            out_size = conv_out_size(size, stage.stride)
            if max(spec.depths) > 1:
                shapes.append((out_ch, out_size, 1))
            for cin, r, stride in shapes:
                for kernel in spec.kernel_sizes:
                    for expand in spec.expand_ratios:
                        mid = spec.mid_channels(cin, expand)
                        add(MBConvUnit(cin, out_ch, mid, r, kernel=kernel, stride=stride,
                                       act=stage.act,
                                       se_channels=spec.se_channels(mid) if stage.se else 0,
                                       precision=precision))
            size, in_ch = out_size, out_ch
        add(HeadUnit(in_ch, widths.final_expand, widths.feature_mix, spec.num_classes, size,
                     precision=spec.head_precision((precision,))))
    return list(units.values())


def table_units(spec: SearchSpace, width: float, resolutions: Sequence[int],
                precisions: Sequence[str]) -> list[Unit]:
    """:func:`enumerate_units` at every precision of ``precisions`` that ``spec`` offers
    (fp32 first; stem and first block are fp32 at every precision, so they are listed
    once, and so is the head, except the int8 head of a ``head_int8`` space)."""
    units: dict[str, Unit] = {}
    for precision in [p for p in ("fp32", "int8", "binary")
                      if p in precisions and p in spec.precisions]:
        for unit in enumerate_units(spec, width, resolutions, precision):
            units.setdefault(unit.key, unit)
    return list(units.values())


def sample_archs(space: str | SearchSpace, n: int, seed: int, width_mult: float,
                 resolutions: Sequence[int], precisions: Sequence[str] = ("fp32",)
                 ) -> list[Arch]:
    """``n`` seeded random archs at ``width_mult``, resolutions drawn from ``resolutions``,
    each stage at a random one of ``precisions``."""
    gen = np.random.default_rng(seed)
    res = [int(r) for r in resolutions]
    stages = get_space(space).num_stages
    out = []
    for _ in range(n):
        arch = Arch.sample(space, gen, width_mult=width_mult,
                           resolution=res[int(gen.integers(len(res)))])
        out.append(arch.replace(precisions=tuple(
            precisions[int(gen.integers(len(precisions)))] for _ in range(stages))))
    return out


def mode_archs(space: str | SearchSpace, n: int, seed: int, width_mult: float,
               resolutions: Sequence[int], mode: str = "fp32") -> list[Arch]:
    """``n`` seeded random archs of precision mode ``mode``: fp32 ones (:func:`sample_archs`),
    or each stage fp32 or ``mode`` with at least one ``mode`` stage, or (``mixed``) each
    stage fp32, int8 or binary with at least one int8 and one binary stage (the first
    ``n`` such of a seeded draw, so a larger draw keeps them). A mode with its head's
    precision (``binary+int8head``, :func:`~ofa_search.profiling.lut.split_mode`) keeps only
    the archs whose head runs in it; an int8 head outside a ``head_int8`` space, or in an
    fp32 subnet, is an :class:`OfaSearchError`."""
    spec = get_space(space)
    base, head = split_mode(mode)
    if head is not None and head != "fp32" and (base == "fp32" or not spec.head_int8):
        raise OfaSearchError(f"no {base} subnet of space {spec.name!r} has an {head} head")
    if base == "fp32":
        return sample_archs(space, n, seed, width_mult, resolutions)
    precisions = ("fp32", "int8", "binary") if base == MIXED_MODE else ("fp32", base)
    needed = set(precisions) - {"fp32"}

    def wanted(arch: Arch) -> bool:
        return needed <= set(arch.precisions) and (
            head is None or spec.head_precision(arch.precisions) == head)

    archs: list[Arch] = []
    draw = 2 * n
    while len(archs) < n:  # a space of one stage draws all-fp32 archs half the time
        archs = [a for a in sample_archs(space, draw, seed, width_mult, resolutions,
                                         precisions) if wanted(a)][:n]
        draw *= 2
    return archs


def _existing_table(spec: SearchSpace, profile: DeviceProfile, width: float,
                    out_path: Path) -> LatencyTable | None:
    """The table at ``out_path`` to resume (checked against the profile, space and width),
    or ``None`` when there is none."""
    if not out_path.exists():
        return None
    table = LatencyTable.load(out_path)
    if table.fingerprint != profile.fingerprint():
        raise ProfileMismatchError(
            f"{out_path} was measured under profile fingerprint {table.fingerprint!r} "
            f"({table.device}); the requested profile {profile.id!r} has fingerprint "
            f"{profile.fingerprint()!r}. Use another output file or delete that one.")
    if table.space != spec.name or table.width_mult != width:
        raise ProfileMismatchError(
            f"{out_path} prices space {table.space!r} at width {table.width_mult}, not "
            f"{spec.name!r} at width {width}")
    return table


def _start_table(spec: SearchSpace, profile: DeviceProfile, width: float,
                 resolutions: Sequence[int], out_path: Path, backend: Measurer,
                 timing: TimingConfig, table: LatencyTable | None) -> LatencyTable:
    if table is not None:
        table.resolutions = tuple(sorted(set(table.resolutions) | set(resolutions)))
        extra = [p for p in profile.precisions if p not in table.precisions]
        table.device = {**table.device, "precisions": [*table.precisions, *extra]}
        table.complete = False
        return table
    return LatencyTable(
        device_id=profile.id, device=profile.to_dict(), fingerprint=profile.fingerprint(),
        space=spec.name, width_mult=width, resolutions=tuple(sorted(resolutions)),
        host=host_info(), versions=backend.versions(), complete=False,
        meta={"timing": dataclasses.asdict(timing), "unit_wall_s": 0.0},
    )


def build_table(space: str | SearchSpace, profile: DeviceProfile,
                resolutions: Sequence[int] | None, out_path: str | os.PathLike[str], *,
                width_mult: float | None = None, timing: TimingConfig | None = None,
                backend: Measurer | None = None, progress: bool = True,
                limit: int | None = None, overhead_archs: int = 10,
                overhead_seed: int = OVERHEAD_SEED, rounds: int = MEASURE_ROUNDS,
                chunk: int | None = None,
                on_unit: Callable[[Unit, TimingStats], None] | None = None) -> LatencyTable:
    """Measure (or resume measuring) the table of ``space`` on ``profile`` into ``out_path``.

    Args:
        resolutions: input sizes to cover (default: all of the space's).
        width_mult: width multiplier (default: the space's smallest).
        timing: budget of one measurement round (default :data:`FAST_TIMING`).
        backend: measures models (default: ``get_backend(profile, timing=timing)``).
        limit: stop after measuring this many new units (the partial table is saved, with
            ``complete: false``; calling again resumes).
        overhead_archs: whole subnets measured to fit ``overhead_ms`` (0 keeps it at 0).
        rounds: measurements of each unit (and overhead subnet), interleaved in time; the
            table keeps the median of their medians.
        chunk: units prepared and timed together (their rounds interleave); the table is
            saved after each chunk. Default: the backend's ``max_prepared``, else 25.
        on_unit: called after each unit is measured.

    Returns the table (also written to ``out_path``). Raises, before anything is measured:
    :class:`ProfileMismatchError` when ``out_path`` holds a table of another profile, space
    or width; :class:`ProfileOptionError` for resolutions or a width that the space lacks;
    :class:`~ofa_search.atomic.OutputPathError` when ``out_path`` cannot be written. Stale
    temporary files of ``out_path`` (a build killed mid-save) are removed.
    """
    spec = get_space(space)
    width = spec.width_mults[0] if width_mult is None else width_mult
    res = tuple(spec.resolutions if resolutions is None else resolutions)
    timing = timing or FAST_TIMING
    path = Path(out_path)
    # everything that can be refused is refused before the backend starts or a file changes
    check_build_options(spec, width, res, overhead_archs=overhead_archs, rounds=rounds)
    check_writable_file(path, "table")
    existing = _existing_table(spec, profile, width, path)
    remove_stale_temps(path.parent, path.name)  # left by a build killed mid-save
    owned = backend is None
    if backend is None:
        backend = get_backend(profile, timing=timing)
    measurer = backend
    try:
        table = _start_table(spec, profile, width, res, path, backend, timing, existing)
        table.meta["rounds"] = rounds
        units = table_units(spec, width, res, profile.precisions)
        todo = [u for u in units if u.key not in table.entries]
        if todo:
            table.meta.pop("overhead", None)  # new units: the overhead is refitted
        if limit is not None:
            todo = todo[:limit]
        chunk = chunk or default_chunk(measurer)
        bar = tqdm(total=len(todo), desc=f"profiling {profile.id}", unit="unit",
                   disable=not progress)
        last = [time.perf_counter(), 0]  # clock at the last result, results so far

        def done(unit: Unit, stats: TimingStats) -> None:
            now = time.perf_counter()
            table.entries[unit.key] = stats.to_dict()
            table.meta["unit_wall_s"] = (float(table.meta.get("unit_wall_s", 0.0))
                                         + now - last[0])
            last[0], last[1] = now, last[1] + 1
            if on_unit is not None:
                on_unit(unit, stats)
            bar.update()
            if last[1] % chunk == 0:
                table.save(path)

        try:
            measure_many(todo, lambda u: prepare_unit(measurer, u, profile), rounds=rounds,
                         chunk=chunk, on_result=done)
        except BaseException:
            table.save(path)  # keep what was measured (still marked incomplete)
            raise
        finally:
            bar.close()
        remaining = [u for u in units if u.key not in table.entries]
        if remaining:
            table.save(path)
            return table
        if overhead_archs > 0 and "overhead" not in table.meta:
            fit_overhead(table, backend, overhead_archs, overhead_seed, profile.batch_size,
                         rounds=rounds)
        table.complete = True
        table.meta["updated"] = now_iso()
        table.meta["load_avg_1min_at_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") \
            else None
        table.save(path)
        return table
    finally:
        if owned:
            close = getattr(backend, "close", None)
            if close is not None:
                close()


UNIT_SCALE_RANGE = (0.5, 2.0)
"""A fitted ``unit_scale`` outside this range is refused (the plain sum is kept)."""


def fit_network_model(table: LatencyTable, archs: Sequence[Arch], measured_ms: Sequence[float]
                      ) -> None:
    """Fit ``table.unit_scale`` and ``table.per_unit_ms`` by least squares of the measured
    latencies of ``archs`` on their unit sums and unit counts (with an intercept, which
    :func:`fit_overhead` then sets as the overhead). Units timed alone each pay the
    runtime's per-call cost and their own layout conversions, and run with their tensors
    hot in cache; inside a network neither holds, by an amount that grows with the number
    and the size of the units, which one constant overhead cannot follow. A degenerate fit
    (fewer than 4 subnets, one unit count, a scale outside :data:`UNIT_SCALE_RANGE`)
    keeps the plain sum."""
    sums = np.array([table.unit_sum(a) for a in archs])
    counts = np.array([len(arch_units(a)) for a in archs], dtype=float)
    table.unit_scale, table.per_unit_ms = 1.0, 0.0
    if len(archs) < 4 or np.ptp(counts) == 0:
        return
    design = np.c_[sums, counts, np.ones_like(sums)]
    (scale, per_unit, _), *_ = np.linalg.lstsq(design, np.asarray(measured_ms, dtype=float),
                                               rcond=None)
    if UNIT_SCALE_RANGE[0] <= scale <= UNIT_SCALE_RANGE[1] and np.isfinite(per_unit):
        table.unit_scale, table.per_unit_ms = float(scale), float(per_unit)


def fit_overhead(table: LatencyTable, backend: Measurer, n: int = 10,
                 seed: int = OVERHEAD_SEED, batch_size: int = 1, *,
                 rounds: int = MEASURE_ROUNDS) -> float:
    """Fit the in-network model of the units (:func:`fit_network_model`) and set
    ``table.overhead_ms`` to the median of (measured − network sum) over ``n`` seeded
    random fp32 subnets, and likewise ``table.overhead_by_mode`` for each low-precision mode
    the table prices (archs whose stages are fp32 or that precision, measured as export
    emits them) and, where it prices int8 and binary, for ``mixed`` subnets (int8 and
    binary stages in one package); in a ``head_int8`` space each low-precision mode is fitted
    twice, for subnets whose head is fp32 and int8 (``binary+fp32head``, ``binary+int8head``:
    :func:`~ofa_search.profiling.lut.head_mode`). All modes' subnets are measured together,
    alternating, in ``rounds`` interleaved rounds, so that the host's slow spells shift no
    mode against another. The samples are kept in ``table.meta["overhead"]``, and the fp32
    subnets with their times in ``table.meta["reference"]`` (the drift check's reference
    subnets)."""
    start = time.perf_counter()
    profile = table.profile()
    meta: dict[str, Any] = {"seed": seed, "archs": n}
    modes: list[str] = [p for p in ("fp32", "int8", "binary") if p in table.precisions]
    if "int8" in modes and "binary" in modes:
        modes.append(MIXED_MODE)
    if get_space(table.space).head_int8:  # each low mode's two artefacts, priced apart
        modes = [modes[0], *(f"{m}+{h}head" for m in modes[1:] for h in ("fp32", "int8"))]
    per_mode = {mode: mode_archs(table.space, n, seed, table.width_mult, table.resolutions,
                                 mode) for mode in modes}
    order = [(mode, i) for i in range(n) for mode in modes]
    stats = measure_archs(backend, [per_mode[m][i] for m, i in order], batch_size, profile,
                          rounds=rounds)
    measured = {mode: [s.median_ms for (m, _), s in zip(order, stats, strict=True) if m == mode]
                for mode in modes}
    for mode in modes:
        archs = per_mode[mode]
        if mode == "fp32":
            fit_network_model(table, archs, measured[mode])
            meta["network_model"] = {"unit_scale": table.unit_scale,
                                     "per_unit_ms": table.per_unit_ms}
        gaps = [ms - table.network_sum(arch)
                for arch, ms in zip(archs, measured[mode], strict=True)]
        if mode == "fp32":
            table.overhead_ms = float(np.median(gaps))
            meta["gaps_ms"] = gaps
            # the drift check's reference subnets (ofa_search.profiling.drift)
            table.meta["reference"] = {"archs": [a.to_string() for a in archs],
                                       "measured_ms": [float(ms) for ms in measured[mode]],
                                       "created": now_iso()}
        else:
            table.overhead_by_mode[mode] = float(np.median(gaps))
            meta[f"gaps_ms_{mode}"] = gaps
    meta["wall_s"] = time.perf_counter() - start
    table.meta["overhead"] = meta
    return table.overhead_ms
