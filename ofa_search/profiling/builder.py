"""Build a device latency table: measure every distinct unit, then fit the overhead.

Every unit a space can produce (:func:`enumerate_units`) is built with
:func:`~ofa_search.nn.static.build_unit`, exported with the same
:func:`~ofa_search.onnx_export.export_onnx` path as whole subnets, and timed by the
profile's backend. The table is saved atomically every few units, so an interrupted build
resumes where it stopped; a table measured under another profile fingerprint is refused.
Finally a few random whole subnets are measured end to end and ``overhead_ms`` is set to
the median gap between measured and summed latency.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
import torch
from tqdm import tqdm

from ofa_search.arch import Arch
from ofa_search.errors import OfaSearchError
from ofa_search.nn.static import StaticSubnet, build_static, build_unit, init_weights
from ofa_search.onnx_export import INPUT_NAME, export_onnx
from ofa_search.profiling.device import DeviceProfile
from ofa_search.profiling.host import host_info
from ofa_search.profiling.lut import LatencyTable, now_iso
from ofa_search.profiling.timing import TimingConfig, TimingStats
from ofa_search.space import SearchSpace, get_space
from ofa_search.units import HeadUnit, MBConvUnit, StemUnit, Unit, conv_out_size

OVERHEAD_SEED = 1_000_003
"""Seed of the subnets that fit ``overhead_ms`` (validation uses another one)."""

FAST_TIMING = TimingConfig(warmup=3, min_runs=7, max_runs=200, time_cap_s=0.5)
"""A cheap timing budget per unit, for tables of hundreds of units on a slow host."""


class Measurer(Protocol):
    """What the builder needs of a backend (a :class:`LatencyBackend` fits)."""

    def measure(self, onnx_model: Any, inputs: Any) -> TimingStats: ...

    def versions(self) -> dict[str, str]: ...


class ProfileMismatchError(OfaSearchError, ValueError):
    """An existing table was measured under a different device profile."""


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
        add(HeadUnit(in_ch, widths.final_expand, widths.feature_mix, spec.num_classes, size))
    return list(units.values())


def table_units(spec: SearchSpace, width: float, resolutions: Sequence[int],
                precisions: Sequence[str]) -> list[Unit]:
    """:func:`enumerate_units` at every precision of ``precisions`` that ``spec`` offers
    (fp32 first; stem, first block and head are fp32 at every precision, so they are
    listed once)."""
    units: dict[str, Unit] = {}
    for precision in [p for p in ("fp32", "int8", "binary")
                      if p in precisions and p in spec.precisions]:
        for unit in enumerate_units(spec, width, resolutions, precision):
            units.setdefault(unit.key, unit)
    return list(units.values())


def measure_unit(backend: Measurer, unit: Unit, profile: DeviceProfile) -> TimingStats:
    """Latency of one unit as export emits it: fp32 ONNX on ``backend``; ``int8`` the QDQ
    model of :mod:`ofa_search.quant` on ``backend`` (ONNX Runtime's int8 kernels);
    ``binary`` the bit-packed block of :mod:`ofa_search.binary` on this host."""
    if unit.precision == "binary":
        if profile.backend != "onnxruntime":
            raise ValueError(f"binary units run on this host's bit-packed runtime; profile "
                             f"{profile.id!r} ({profile.backend}) cannot price them")
        from ofa_search.binary.measure import measure_binary_unit

        assert isinstance(unit, MBConvUnit)
        return measure_binary_unit(unit, threads=profile.intra_op_threads or 1)
    if unit.precision == "int8":
        from ofa_search.quant.units import int8_unit_onnx

        model, inputs = int8_unit_onnx(unit, profile.batch_size)
    else:
        model, inputs = unit_onnx(unit, profile.batch_size)
    return backend.measure(model, inputs)


def unit_onnx(unit: Unit, batch_size: int = 1) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The unit's randomly initialised module exported to ONNX, with a seeded input."""
    module = build_unit(unit)
    init_weights(module, torch.Generator().manual_seed(0))
    shape = (batch_size, unit.in_channels, unit.in_size, unit.in_size)
    return export_onnx(module, shape), {INPUT_NAME: _input(shape)}


def arch_onnx(arch: Arch, batch_size: int = 1) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A static subnet of ``arch`` exported to ONNX (the same path as units), with an input."""
    net = build_static(arch)
    shape = net.input_shape(batch_size)
    return export_onnx(net, shape), {INPUT_NAME: _input(shape)}


def _input(shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def measure_arch(backend: Measurer, arch: Arch, batch_size: int = 1,
                 profile: DeviceProfile | None = None) -> TimingStats:
    """End-to-end latency of ``arch``'s static subnet (randomly initialised) as export
    emits it: fp32 ONNX on ``backend``; with int8 stages the QDQ model of
    :mod:`ofa_search.quant` on ``backend``; with binary stages the bit-packed package on this
    host (at ``profile``'s threads)."""
    if "binary" in arch.precisions:
        if profile is not None and profile.backend != "onnxruntime":
            raise ValueError(f"binary subnets run on this host's bit-packed runtime; profile "
                             f"{profile.id!r} ({profile.backend}) cannot time them")
        return _measure_binary_net(build_static(arch, torch.Generator().manual_seed(0)),
                                   1 if profile is None else profile.intra_op_threads,
                                   batch_size)
    if "int8" in arch.precisions:
        from ofa_search.quant.units import seeded_input, seeded_int8_onnx

        net = build_static(arch)
        shape = net.input_shape(batch_size)
        return backend.measure(seeded_int8_onnx(net, shape), {INPUT_NAME: seeded_input(shape)})
    model, inputs = arch_onnx(arch, batch_size)
    return backend.measure(model, inputs)


def _measure_binary_net(net: StaticSubnet, threads: int, batch_size: int) -> TimingStats:
    """Latency of ``net`` run as a binary package (:mod:`ofa_search.binary`)."""
    from ofa_search.binary.package import subnet_program
    from ofa_search.binary.runtime import BinaryPackage

    return time_binary_package(BinaryPackage(subnet_program(net.eval()), threads=threads),
                               batch_size)


def time_binary_package(package: Any, batch_size: int = 1) -> TimingStats:
    """Latency of a loaded :class:`~ofa_search.binary.runtime.BinaryPackage` on a seeded
    input of ``batch_size`` (compilation and warm-up untimed)."""
    from ofa_search.profiling.timing import callable_sampler, time_sampler

    x = _input((batch_size, *package.input_shape))
    package.run(x)
    return time_sampler(callable_sampler(lambda: package.run(x)), FAST_TIMING)


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


def _start_table(spec: SearchSpace, profile: DeviceProfile, width: float,
                 resolutions: Sequence[int], out_path: Path, backend: Measurer,
                 timing: TimingConfig) -> LatencyTable:
    if out_path.exists():
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
                overhead_seed: int = OVERHEAD_SEED, save_every: int = 10,
                on_unit: Callable[[Unit, TimingStats], None] | None = None) -> LatencyTable:
    """Measure (or resume measuring) the table of ``space`` on ``profile`` into ``out_path``.

    Args:
        resolutions: input sizes to cover (default: all of the space's).
        width_mult: width multiplier (default: the space's smallest).
        timing: per-measurement budget (default :data:`FAST_TIMING`).
        backend: measures models (default: ``get_backend(profile, timing=timing)``).
        limit: stop after measuring this many new units (the partial table is saved, with
            ``complete: false``; calling again resumes).
        overhead_archs: whole subnets measured to fit ``overhead_ms`` (0 keeps it at 0).
        save_every: write the partial table every this many units.
        on_unit: called after each unit is measured.

    Returns the table (also written to ``out_path``). Raises :class:`ProfileMismatchError`
    when ``out_path`` holds a table of another profile, space or width.
    """
    spec = get_space(space)
    width = spec.width_mults[0] if width_mult is None else width_mult
    res = tuple(spec.resolutions if resolutions is None else resolutions)
    timing = timing or FAST_TIMING
    path = Path(out_path)
    owned = backend is None
    if backend is None:
        from ofa_search.profiling.backends import get_backend

        backend = get_backend(profile, timing=timing)
    try:
        table = _start_table(spec, profile, width, res, path, backend, timing)
        units = table_units(spec, width, res, profile.precisions)
        todo = [u for u in units if u.key not in table.entries]
        if todo:
            table.meta.pop("overhead", None)  # new units: the overhead is refitted
        if limit is not None:
            todo = todo[:limit]
        bar = tqdm(todo, desc=f"profiling {profile.id}", unit="unit", disable=not progress)
        try:
            for i, unit in enumerate(bar, 1):
                start = time.perf_counter()
                stats = measure_unit(backend, unit, profile)
                table.entries[unit.key] = stats.to_dict()
                table.meta["unit_wall_s"] = (float(table.meta.get("unit_wall_s", 0.0))
                                             + time.perf_counter() - start)
                if on_unit is not None:
                    on_unit(unit, stats)
                if i % save_every == 0:
                    table.save(path)
        except BaseException:
            table.save(path)  # keep what was measured (still marked incomplete)
            raise
        remaining = [u for u in units if u.key not in table.entries]
        if remaining:
            table.save(path)
            return table
        if overhead_archs > 0 and "overhead" not in table.meta:
            fit_overhead(table, backend, overhead_archs, overhead_seed, profile.batch_size)
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


def fit_overhead(table: LatencyTable, backend: Measurer, n: int = 10,
                 seed: int = OVERHEAD_SEED, batch_size: int = 1) -> float:
    """Set ``table.overhead_ms`` to the median of (measured − unit sum) over ``n`` seeded
    random fp32 subnets, and likewise ``table.overhead_by_mode`` for each low-precision
    mode the table prices (archs whose stages are fp32 or that precision, measured as
    export emits them); the samples are kept in ``table.meta["overhead"]``."""
    start = time.perf_counter()
    profile = table.profile()
    meta: dict[str, Any] = {"seed": seed, "archs": n}
    for mode in [p for p in ("fp32", "int8", "binary") if p in table.precisions]:
        precisions = ("fp32",) if mode == "fp32" else ("fp32", mode)
        archs = [a for a in sample_archs(table.space, 2 * n, seed, table.width_mult,
                                         table.resolutions, precisions)
                 if mode == "fp32" or mode in a.precisions][:n]
        gaps = [measure_arch(backend, arch, batch_size, profile).median_ms
                - table.unit_sum(arch) for arch in archs]
        if mode == "fp32":
            table.overhead_ms = float(np.median(gaps))
            meta["gaps_ms"] = gaps
        else:
            table.overhead_by_mode[mode] = float(np.median(gaps))
            meta[f"gaps_ms_{mode}"] = gaps
    meta["wall_s"] = time.perf_counter() - start
    table.meta["overhead"] = meta
    return table.overhead_ms
