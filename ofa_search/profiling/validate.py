"""Validate a latency table end to end: predicted vs measured latency of held-out subnets.

Seeded random subnets (a seed distinct from the overhead fit's) are exported whole with
the same path as the table's units, measured on the table's own profile, and compared with
:meth:`LatencyTable.predict`: RMSE, MAPE, the share within ±5 % and ±10 %, and Kendall's
τ (does the table rank subnets as the device does?).

A table that prices int8 or binary units is validated per precision mode (``mode``): the
held-out subnets then have each stage fp32 or that precision (at least one stage in it),
measured as export emits them, as the table's per-mode overhead was fitted. Modes
validated together (:func:`validate_modes`) are measured in the same interleaved rounds,
and every report carries its noise floor: how well two halves of its own rounds agree.
With ``references`` the table's reference subnets are timed in every round beside the
held-out ones, and each round's times are divided by that round's host speed (the
references' median ratio to their times in the table), so the host's slow spells and its
drift since profiling cancel out.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ofa_search.arch import Arch
from ofa_search.atomic import atomic_write_json
from ofa_search.errors import OfaSearchError
from ofa_search.metrics import mape, report
from ofa_search.profiling.backends import get_backend
from ofa_search.profiling.builder import mode_archs
from ofa_search.profiling.drift import references as reference_subnets
from ofa_search.profiling.lut import MIXED_MODE, LatencyTable, now_iso, split_mode
from ofa_search.profiling.measure import (
    FAST_TIMING,
    MEASURE_ROUNDS,
    Measurer,
    default_chunk,
    measure_many_rounds,
    prepare_arch,
)
from ofa_search.profiling.timing import TimingConfig, TimingStats, combine_rounds
from ofa_search.space import get_space

REFERENCE = "reference"
"""The item kind of a reference subnet among the held-out ones' precision modes."""
VALIDATION_SEED = 2_000_003
"""Seed of the held-out subnets (distinct from :data:`~.builder.OVERHEAD_SEED`)."""


@dataclass
class ValidationReport:
    """Prediction quality of one table on ``n`` held-out subnets (latencies in ms)."""

    device_id: str
    space: str
    n: int
    seed: int
    rmse_ms: float
    mape: float
    within_5pct: float
    within_10pct: float
    kendall_tau: float
    mean_measured_ms: float
    validation_wall_s: float
    profiling_wall_s: float | None
    overhead_ms: float
    load_avg: list[float | None] = field(default_factory=list)
    rounds: int = 1
    mode: str = "fp32"
    date: str = field(default_factory=now_iso)
    rows: list[dict[str, Any]] = field(default_factory=list)
    noise_mape: float | None = None
    """MAPE between the first and the last half of each subnet's rounds (the noise
    floor, :func:`validate_modes`); ``None`` with one round."""
    modes_together: list[str] = field(default_factory=list)
    """The precision modes measured in the same rounds as this one (itself included)."""
    references: int = 0
    """Reference subnets timed in every round; with them each row's ``measured_ms`` is
    on the table's time base (each round divided by that round's host speed) and
    ``measured_raw_ms`` is as timed."""
    noise_mape_raw: float | None = None
    """With references: the noise floor of the raw times (before the host speed is
    divided out)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (rows included)."""
        return asdict(self)

    def summary_lines(self) -> list[str]:
        """A small human-readable table."""
        prof = "n/a" if self.profiling_wall_s is None else f"{self.profiling_wall_s:.1f} s"
        return [
            f"device {self.device_id}  space {self.space}  {self.n} held-out archs "
            f"(seed {self.seed}, precision mode {self.mode})",
            f"  {'RMSE':<22}{self.rmse_ms:.4f} ms  (mean measured {self.mean_measured_ms:.4f} ms)",
            f"  {'MAPE':<22}{100 * self.mape:.2f} %",
            *([] if self.noise_mape is None else
              [f"  {'noise floor (MAPE)':<22}{100 * self.noise_mape:.2f} %  "
               f"(first vs last {self.rounds // 2} of {self.rounds} rounds)"]),
            *([] if not self.references else
              [f"  {'host speed':<22}divided out per round ({self.references} reference "
               f"subnets); raw noise floor "
               + ("n/a" if self.noise_mape_raw is None
                  else f"{100 * self.noise_mape_raw:.2f} %")]),
            f"  {'within ±5 %':<22}{100 * self.within_5pct:.1f} %",
            f"  {'within ±10 %':<22}{100 * self.within_10pct:.1f} %",
            f"  {'Kendall tau':<22}{self.kendall_tau:.3f}",
            f"  {'overhead':<22}{self.overhead_ms:.4f} ms",
            f"  {'profiling wall time':<22}{prof}",
            f"  {'validation wall time':<22}{self.validation_wall_s:.1f} s",
            f"  {'rounds per arch':<22}{self.rounds}",
            f"  {'host load (1 min)':<22}{self.load_avg}",
        ]

    def save(self, results_dir: str | os.PathLike[str]) -> Path:
        """Write ``<results_dir>/latency_validation_<device>.json`` (``…_<device>_<mode>.json``
        for an int8 or binary mode) atomically."""
        suffix = "" if self.mode == "fp32" else f"_{self.mode}"
        return atomic_write_json(
            Path(results_dir) / f"latency_validation_{self.device_id}{suffix}.json",
            self.to_dict())


def _load_avg() -> float | None:
    """The 1-minute load average (other processes on the host skew timings), if known."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def profiling_wall_s(table: LatencyTable) -> float | None:
    """Wall time spent measuring the table (units plus the overhead fit), when recorded."""
    unit = table.meta.get("unit_wall_s")
    if unit is None:
        return None
    return float(unit) + float(table.meta.get("overhead", {}).get("wall_s", 0.0))


def heldout_archs(table: LatencyTable, n: int, seed: int = VALIDATION_SEED,
                  mode: str = "fp32") -> list[Arch]:
    """``n`` seeded random subnets of ``table``'s space, width and resolutions: fp32 ones,
    or (``mode`` int8 / binary) each stage fp32 or ``mode`` with at least one ``mode``
    stage, or (``mixed``) subnets with int8 and binary stages (:func:`mode_archs`).

    Raises:
        OfaSearchError: the table does not price ``mode`` (``mixed``: int8 and binary).
    """
    base = split_mode(mode)[0]
    needed = ("int8", "binary") if base == MIXED_MODE else (base,)
    offered = get_space(table.space).precisions
    missing = [p for p in needed if p not in table.precisions or p not in offered]
    if missing:
        raise OfaSearchError(
            f"table {table.device_id!r} prices precisions {list(table.precisions)}, not "
            f"{', '.join(map(repr, missing))}: profile it with --precision "
            f"{' '.join(missing)}")
    return mode_archs(table.space, n, seed, table.width_mult, table.resolutions, mode)


def noise_halves(samples: list[TimingStats]) -> tuple[TimingStats, TimingStats] | None:
    """One model's rounds as two measurements: the first ``⌊r/2⌋`` rounds and the last
    ``⌊r/2⌋`` (each combined as a table's rounds are), or ``None`` for a single round.
    Their disagreement over many models is the noise floor of a validation."""
    half = len(samples) // 2
    if half == 0:
        return None
    return combine_rounds(samples[:half]), combine_rounds(samples[-half:])


def host_ratios(reference_rounds: Sequence[Sequence[TimingStats]],
                table_ms: Sequence[float]) -> np.ndarray:
    """The host's speed in each round: the median over reference subnets of their round
    median over their time in the table (> 1: slower than when profiled)."""
    times = np.array([[s.median_ms for s in rounds] for rounds in reference_rounds])
    return np.median(times / np.asarray(table_ms, dtype=float)[:, None], axis=0)


def normalised(samples: Sequence[TimingStats], ratios: np.ndarray) -> list[float]:
    """Each round's median divided by that round's host speed."""
    return [s.median_ms / float(r) for s, r in zip(samples, ratios, strict=True)]


@dataclass(frozen=True)
class RoundTimes:
    """One model's rounds summed up: its time (normalised by the host's speed per round
    where one is given, else :attr:`raw_ms`), the raw time (the rounds combined), and both
    for the first and the last half of the rounds (``None`` with one round)."""

    measured_ms: float
    raw_ms: float
    first_ms: float | None = None
    last_ms: float | None = None
    raw_first_ms: float | None = None
    raw_last_ms: float | None = None


def round_times(samples: Sequence[TimingStats], ratios: np.ndarray | None = None
                ) -> RoundTimes:
    """:class:`RoundTimes` of one model's rounds; ``ratios`` (:func:`host_ratios`) divides
    each round by the host's speed in it (:func:`normalised`)."""
    raw = combine_rounds(samples).median_ms
    halves = noise_halves(list(samples))
    if ratios is None:
        if halves is None:
            return RoundTimes(raw, raw)
        return RoundTimes(raw, raw, halves[0].median_ms, halves[1].median_ms,
                          halves[0].median_ms, halves[1].median_ms)
    values = normalised(samples, ratios)
    measured = float(np.median(values))
    if halves is None:
        return RoundTimes(measured, raw)
    half = len(values) // 2
    return RoundTimes(measured, raw, float(np.median(values[:half])),
                      float(np.median(values[-half:])), halves[0].median_ms,
                      halves[1].median_ms)


def first_references(table: LatencyTable, k: int) -> tuple[list[Arch], list[float]]:
    """The first ``k`` of ``table``'s reference subnets and their times in the table (none
    for ``k == 0``); :class:`OfaSearchError` when it has fewer, or none."""
    if not k:
        return [], []
    refs = reference_subnets(table)
    if len(refs.archs) < k:
        raise OfaSearchError(f"table {table.device_id!r} has {len(refs.archs)} "
                             f"reference subnets, fewer than the {k} asked for")
    return list(refs.archs[:k]), list(refs.measured_ms[:k])


def validate_table(table: LatencyTable, n: int = 100, seed: int = VALIDATION_SEED, *,
                   backend: Measurer | None = None, timing: TimingConfig | None = None,
                   rounds: int = MEASURE_ROUNDS, progress: bool = False,
                   mode: str = "fp32") -> ValidationReport:
    """:func:`validate_modes` of one precision mode."""
    (report,) = validate_modes(table, (mode,), n, seed, backend=backend, timing=timing,
                               rounds=rounds, progress=progress)
    return report


def validate_modes(table: LatencyTable, modes: Sequence[str] = ("fp32",), n: int = 100,
                   seed: int = VALIDATION_SEED, *, backend: Measurer | None = None,
                   timing: TimingConfig | None = None, rounds: int = MEASURE_ROUNDS,
                   progress: bool = False, references: int = 0) -> list[ValidationReport]:
    """Measure ``n`` seeded random subnets of each precision mode of ``modes``
    (:func:`heldout_archs`) on the table's profile and compare them with the table: one
    report per mode, in order.

    The modes' subnets are measured together, alternating (mode 1's first subnet, mode 2's
    first, …), each in ``rounds`` interleaved rounds as tables are measured: a slow spell
    of a shared host then slows every mode alike, and the modes' errors can be compared.
    Each report also carries the validation's own noise floor (``noise_mape``): the MAPE
    between the first ``⌊rounds/2⌋`` rounds and the last ones of the same subnets
    (:func:`noise_halves`; ``None`` with one round). A table error near it is as small as
    this host lets one tell.

    Each row keeps the host's 1-minute load average when its chunk was measured: a load
    well above the profile's threads marks a row that other processes may have slowed.

    ``references`` > 0 times that many of the table's reference subnets (the drift
    check's, :func:`~ofa_search.profiling.drift.references`) in every round of every
    chunk, and divides each round's times by that round's host speed
    (:func:`host_ratios`): rows are then on the table's time base, as after
    ``check-device --rescale`` but per round, and the noise floor is that of the
    normalised times (``noise_mape_raw`` keeps the raw one).

    ``backend`` defaults to the table's own profile's backend; an imported table (no
    profile) needs one passed in.
    """
    if not modes or len(set(modes)) != len(modes):
        raise OfaSearchError(f"modes must be distinct and at least one, got {list(modes)}")
    if isinstance(references, bool) or not isinstance(references, int) or references < 0:
        raise OfaSearchError(f"references must be a whole number >= 0, got {references!r}")
    # a mode the table lacks, or references it lacks, fail before anything is measured
    per_mode = {mode: heldout_archs(table, n, seed, mode) for mode in modes}
    ref_archs, ref_ms = first_references(table, references)
    order = [(mode, i) for i in range(n) for mode in modes]
    profile = table.profile()
    owned = backend is None
    if backend is None:
        if profile is None:
            raise OfaSearchError(f"table {table.device_id!r} was imported, not measured "
                                 f"here; pass a backend to validate it")

        backend = get_backend(profile, timing=timing or FAST_TIMING)
    batch = profile.batch_size if profile is not None else 1
    load_before = _load_avg()
    start = time.perf_counter()
    ratios: list[np.ndarray | None] = []  # each item's chunk's host speed per round
    loads: list[float | None] = []  # when each item's chunk was done, in order
    try:
        label = "/".join(modes)
        bar = tqdm(total=len(order), desc=f"validating {table.device_id} ({label})",
                   disable=not progress)

        def done(group: Sequence[Any], samples: Any, beside: Any) -> None:
            chunk_ratios = host_ratios(beside, ref_ms) if ref_archs else None
            ratios.extend([chunk_ratios] * len(group))
            loads.extend([_load_avg()] * len(group))
            bar.update(len(group))

        # items are (mode, index) of held-out subnets, and (REFERENCE, index) of references
        chosen = {**per_mode, REFERENCE: ref_archs}
        measured = measure_many_rounds(
            order, lambda item: prepare_arch(backend, chosen[item[0]][item[1]], batch, profile),
            rounds=rounds, chunk=default_chunk(backend),
            beside=[(REFERENCE, j) for j in range(len(ref_archs))], on_chunk=done)
        bar.close()
    finally:
        if owned:
            close = getattr(backend, "close", None)
            if close is not None:
                close()
    wall = time.perf_counter() - start
    load_after = _load_avg()
    reports = []
    for mode in modes:
        rows: list[dict[str, Any]] = []
        for (of, i), samples, ratio, load in zip(order, measured, ratios, loads, strict=True):
            if of != mode:
                continue
            arch = per_mode[mode][i]
            t = round_times(samples, ratio)
            row: dict[str, Any] = {"arch": arch.to_string(), "predicted_ms": table.predict(arch),
                                   "measured_ms": t.measured_ms, "load_1min": load}
            if ratio is not None:
                row.update(measured_raw_ms=t.raw_ms, host_ratio=[float(r) for r in ratio])
            if t.first_ms is not None:
                row.update(measured_first_ms=t.first_ms, measured_last_ms=t.last_ms)
                if ratio is not None:
                    row.update(measured_raw_first_ms=t.raw_first_ms,
                               measured_raw_last_ms=t.raw_last_ms)
            rows.append(row)
        pred = np.array([r["predicted_ms"] for r in rows])
        meas = np.array([r["measured_ms"] for r in rows])
        m = report(pred, meas)
        noise = (None if rounds < 2 else
                 mape([r["measured_first_ms"] for r in rows],
                      [r["measured_last_ms"] for r in rows]))
        noise_raw = (None if rounds < 2 or not ref_archs else
                     mape([r["measured_raw_first_ms"] for r in rows],
                          [r["measured_raw_last_ms"] for r in rows]))
        reports.append(ValidationReport(
            device_id=table.device_id, space=table.space, n=n, seed=seed, rmse_ms=m["rmse"],
            mape=m["mape"], within_5pct=m["within_5pct"], within_10pct=m["within_10pct"],
            kendall_tau=m["kendall_tau"], mean_measured_ms=float(meas.mean()),
            validation_wall_s=wall, profiling_wall_s=profiling_wall_s(table),
            overhead_ms=table.overhead_for(per_mode[mode][0]),
            load_avg=[load_before, load_after], rounds=rounds, mode=mode, rows=rows,
            noise_mape=noise, modes_together=list(modes), references=len(ref_archs),
            noise_mape_raw=noise_raw))
    return reports
