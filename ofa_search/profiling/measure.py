"""Time units and whole subnets as export emits them, one at a time or in rounds.

A single measurement of a model on a shared host can be spoilt as a whole by a burst of
load elsewhere (a 20 µs unit is timed within half a second). :func:`measure_many` therefore
prepares a chunk of models (exported, sessions created, compiled), then times every model
of the chunk once per *round*, ``rounds`` times over, and keeps the median of each model's
round medians (:func:`~ofa_search.profiling.timing.combine_rounds`): a burst now spoils one
round of a few models, and is outvoted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import onnx
import torch

from ofa_search.arch import Arch
from ofa_search.nn.static import build_static, build_unit, init_weights
from ofa_search.onnx_export import INPUT_NAME, export_onnx
from ofa_search.profiling.device import DeviceProfile
from ofa_search.profiling.precisions import (  # noqa: F401 (part of this module's interface)
    Measurer,
    PrecisionTiming,
    Prepared,
    precision_timing,
    register_precision_timing,
    register_precision_timing_loader,
)
from ofa_search.profiling.timing import (
    TimingConfig,
    TimingStats,
    callable_sampler,
    combine_rounds,
    time_sampler,
)
from ofa_search.units import Unit

FAST_TIMING = TimingConfig(warmup=3, min_runs=7, max_runs=200, time_cap_s=0.5)
"""A cheap timing budget per unit, for tables of hundreds of units on a slow host."""

MEASURE_ROUNDS = 3
"""Rounds per model in :func:`measure_many` (tables, overhead fits, validation)."""

CHUNK = 25
"""Models prepared at once in :func:`measure_many` (their rounds are interleaved)."""

T = TypeVar("T")


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


def prepare_onnx(backend: Measurer, model: onnx.ModelProto,
                 inputs: dict[str, np.ndarray]) -> Prepared:
    """``model`` loaded on ``backend`` (through its ``prepare`` when it has one; otherwise
    every ``measure()`` goes through ``backend.measure``)."""
    prepare = getattr(backend, "prepare", None)
    if prepare is None:
        return Prepared(lambda: backend.measure(model, inputs))
    loaded = prepare(model, inputs)
    return Prepared(lambda: loaded.measure(inputs), loaded.close)


def prepare_package(package: Any, batch_size: int = 1) -> Prepared:
    """A loaded :class:`~ofa_search.binary.runtime.BinaryPackage` on a seeded input of
    ``batch_size`` (compilation and warm-up happen here, untimed)."""
    x = _input((batch_size, *package.input_shape))
    package.run(x)
    return Prepared(lambda: time_sampler(callable_sampler(lambda: package.run(x)),
                                         FAST_TIMING))


def time_binary_package(package: Any, batch_size: int = 1) -> TimingStats:
    """Latency of a loaded binary package on a seeded input (see :func:`prepare_package`)."""
    return prepare_package(package, batch_size).measure()


def prepare_unit(backend: Measurer, unit: Unit, profile: DeviceProfile) -> Prepared:
    """``unit`` as export emits it: fp32 ONNX on ``backend``; a low precision by its
    registered :class:`PrecisionTiming` (``int8``: the QDQ model of :mod:`ofa_search.quant`
    on ``backend``; ``binary``: the bit-packed block of :mod:`ofa_search.binary` on this
    host)."""
    if unit.precision != "fp32":
        return precision_timing(unit.precision).unit(backend, unit, profile)
    return prepare_onnx(backend, *unit_onnx(unit, profile.batch_size))


def prepare_arch(backend: Measurer, arch: Arch, batch_size: int = 1,
                 profile: DeviceProfile | None = None) -> Prepared:
    """``arch``'s static subnet (randomly initialised) as export emits it: fp32 ONNX on
    ``backend``; with binary stages (else with int8 stages) by that precision's registered
    :class:`PrecisionTiming`."""
    for precision in ("binary", "int8"):
        if precision in arch.precisions:
            return precision_timing(precision).arch(backend, arch, batch_size, profile)
    return prepare_onnx(backend, *arch_onnx(arch, batch_size))


def _once(prepared: Prepared) -> TimingStats:
    try:
        return prepared.measure()
    finally:
        prepared.close()


def measure_unit(backend: Measurer, unit: Unit, profile: DeviceProfile) -> TimingStats:
    """One measurement of ``unit`` (see :func:`prepare_unit`)."""
    return _once(prepare_unit(backend, unit, profile))


def measure_arch(backend: Measurer, arch: Arch, batch_size: int = 1,
                 profile: DeviceProfile | None = None) -> TimingStats:
    """One end-to-end measurement of ``arch`` (see :func:`prepare_arch`)."""
    return _once(prepare_arch(backend, arch, batch_size, profile))


def round_samples(prepared: Sequence[Prepared], rounds: int) -> list[list[TimingStats]]:
    """Time every model once per round, ``rounds`` times over: each model's rounds, in
    order."""
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive integer, got {rounds!r}")
    per: list[list[TimingStats]] = [[] for _ in prepared]
    for _ in range(rounds):
        for samples, model in zip(per, prepared, strict=True):
            samples.append(model.measure())
    return per


def measure_rounds(prepared: Sequence[Prepared], rounds: int) -> list[TimingStats]:
    """Time every model once per round, ``rounds`` times over, and combine each model's
    rounds (:func:`~ofa_search.profiling.timing.combine_rounds`)."""
    return [combine_rounds(samples) for samples in round_samples(prepared, rounds)]


def measure_many_rounds(items: Sequence[T], prepare: Callable[[T], Prepared], *,
                        rounds: int = MEASURE_ROUNDS, chunk: int = CHUNK,
                        on_result: Callable[[T, list[TimingStats]], None] | None = None,
                        beside: Sequence[T] = (),
                        on_chunk: Callable[[Sequence[T], list[list[TimingStats]],
                                            list[list[TimingStats]]], None] | None = None
                        ) -> list[list[TimingStats]]:
    """Measure ``items`` chunk by chunk: prepare a chunk, time it in interleaved rounds
    (:func:`round_samples`), close it, then report each item's rounds to ``on_result`` (so
    a caller can save its progress after every chunk). Returns each item's rounds.

    ``beside`` (reference models) are prepared and timed in every chunk too, taking
    places of it (at least one item per chunk); ``on_chunk`` gets each chunk's items,
    their rounds and the rounds of ``beside`` in that chunk."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    step = max(1, chunk - len(beside))
    out: list[list[TimingStats]] = []
    for start in range(0, len(items), step):
        group = items[start:start + step]
        prepared: list[Prepared] = []
        try:
            for item in [*group, *beside]:
                prepared.append(prepare(item))
            samples = round_samples(prepared, rounds)
        finally:
            for model in prepared:
                model.close()
        mine, theirs = samples[:len(group)], samples[len(group):]
        if on_chunk is not None:
            on_chunk(group, mine, theirs)
        for item, result in zip(group, mine, strict=True):
            if on_result is not None:
                on_result(item, result)
        out.extend(mine)
    return out


def measure_many(items: Sequence[T], prepare: Callable[[T], Prepared], *,
                 rounds: int = MEASURE_ROUNDS, chunk: int = CHUNK,
                 on_result: Callable[[T, TimingStats], None] | None = None
                 ) -> list[TimingStats]:
    """:func:`measure_many_rounds` with each item's rounds combined
    (:func:`~ofa_search.profiling.timing.combine_rounds`), as ``on_result`` receives them."""
    out: list[TimingStats] = []

    def combined(item: T, samples: list[TimingStats]) -> None:
        out.append(combine_rounds(samples))
        if on_result is not None:
            on_result(item, out[-1])

    measure_many_rounds(items, prepare, rounds=rounds, chunk=chunk, on_result=combined)
    return out


def measure_archs(backend: Measurer, archs: Sequence[Arch], batch_size: int = 1,
                  profile: DeviceProfile | None = None, *, rounds: int = MEASURE_ROUNDS,
                  chunk: int | None = None,
                  on_result: Callable[[Arch, TimingStats], None] | None = None
                  ) -> list[TimingStats]:
    """End-to-end latency of each of ``archs`` in interleaved rounds (:func:`measure_many`);
    ``chunk`` defaults to the backend's ``max_prepared`` or :data:`CHUNK`."""
    return measure_many(archs, lambda a: prepare_arch(backend, a, batch_size, profile),
                        rounds=rounds, chunk=chunk or default_chunk(backend),
                        on_result=on_result)


def default_chunk(backend: Measurer) -> int:
    """How many models ``backend`` may hold prepared at once (one RPC device serves one
    session at a time)."""
    return int(getattr(backend, "max_prepared", None) or CHUNK)
