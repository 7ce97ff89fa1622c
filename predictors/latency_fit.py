"""End-to-end latency measurements of a device (resumable) and the learned latency
predictor fitted on them.

Measurements are cached in ``W/predictors/<device>-latency-measurements.json``, written
atomically after every batch; the archs are a seeded, prefix-stable sample, so a larger
``n`` measures only the missing ones. A cache measured under another device fingerprint
is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ofa_search.arch import Arch
from ofa_search.atomic import atomic_write_json
from ofa_search.errors import FileFormatError, OfaSearchError
from ofa_search.profiling.lut import LatencyTable
from ofa_search.profiling.timing import TimingStats
from ofa_search.workspace import Workspace
from predictors import metrics
from predictors.accuracy_fit import heldout_split
from predictors.latency import LearnedLatencyPredictor, LutLatencyPredictor

MEASUREMENTS_FORMAT = "ofa-search-latency-measurements"
MEASUREMENTS_VERSION = 1
SAMPLE_SEED = 2_000_003
"""Seed of the measured archs (the table's overhead and validation archs use others)."""


def measurements_path(workspace: Workspace, device: str) -> Path:
    """``W/predictors/<device>-latency-measurements.json``."""
    return workspace.latency_predictor(device).with_name(f"{device}-latency-measurements.json")


def _read(path: Path, table: LatencyTable) -> dict[str, float]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FileFormatError(f"{path}: cannot read latency measurements: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != MEASUREMENTS_FORMAT:
        raise FileFormatError(f"{path} is not a latency-measurements file")
    if data.get("format_version") != MEASUREMENTS_VERSION:
        raise FileFormatError(f"{path}: unknown format_version {data.get('format_version')!r}")
    if data.get("fingerprint") != table.fingerprint or data.get("device") != table.device_id:
        raise FileFormatError(
            f"{path} was measured on {data.get('device')!r} (fingerprint "
            f"{data.get('fingerprint')!r}), not on {table.device_id!r} (fingerprint "
            f"{table.fingerprint!r}); delete it to measure again")
    return {str(k): float(v) for k, v in data["measured_ms"].items()}


def collect_measurements(workspace: Workspace, table: LatencyTable, n: int, *,
                         batch: int = 10, show_progress: bool = True,
                         log: Callable[[str], None] | None = None
                         ) -> tuple[list[Arch], np.ndarray, int]:
    """``(archs, measured_ms, n_new)``: the first ``n`` sampled archs and their end-to-end
    latencies, measuring only those the cache lacks."""
    from ofa_search.profiling.backends import get_backend
    from ofa_search.profiling.builder import sample_archs
    from ofa_search.profiling.measure import FAST_TIMING, measure_archs
    from predictors.accuracy_data import progress_bar

    profile = table.profile()
    if profile is None:
        raise OfaSearchError(f"device {table.device_id!r} is an imported table; it cannot be "
                             "measured from this host")
    path = measurements_path(workspace, table.device_id)
    measured = _read(path, table) if path.exists() else {}
    archs = sample_archs(table.space, n, SAMPLE_SEED, table.width_mult, table.resolutions)
    todo = [a for a in archs if a.to_string() not in measured]
    if log is not None:
        log(f"{table.device_id}: {n - len(todo)} measurements cached, {len(todo)} to measure")

    def save() -> None:
        atomic_write_json(path, {"format": MEASUREMENTS_FORMAT,
                                 "format_version": MEASUREMENTS_VERSION,
                                 "device": table.device_id, "fingerprint": table.fingerprint,
                                 "space": table.space, "measured_ms": measured})

    if todo:
        with get_backend(profile, timing=FAST_TIMING) as backend, \
                progress_bar(show_progress) as progress:
            task = progress.add_task(f"measuring on {table.device_id}", total=len(todo))

            def done(arch: Arch, stats: TimingStats) -> None:
                measured[arch.to_string()] = float(stats.median_ms)
                progress.advance(task)
                if len(measured) % batch == 0:
                    save()

            try:
                measure_archs(backend, todo, profile.batch_size, profile, chunk=batch,
                              on_result=done)
            finally:
                save()
    return archs, np.array([measured[a.to_string()] for a in archs]), len(todo)


def fit_latency_predictor(workspace: Workspace, table: LatencyTable, n: int, *,
                          holdout: float = 0.2, seed: int = 0, show_progress: bool = True,
                          log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure (resumably), score learned and table predictors on a held-out part, refit
    the learned one on all measurements and save it to ``workspace.latency_predictor``."""
    if n < 5:
        raise ValueError(f"n_latency must be >= 5 (train and held-out parts), got {n}")
    archs, ms, n_new = collect_measurements(workspace, table, n, show_progress=show_progress,
                                            log=log)
    train, test = heldout_split(len(archs), holdout, seed)
    tr_a, te_a = [archs[i] for i in train], [archs[i] for i in test]
    learned = LearnedLatencyPredictor(table, "ridge", seed=seed).fit(tr_a, ms[train])
    report: dict[str, Any] = {
        "n_measurements": len(archs), "n_measured_now": n_new, "n_train": len(train),
        "n_heldout": len(test),
        "learned": metrics.report(learned.predict(te_a), ms[test]),
        "lut": metrics.report(LutLatencyPredictor(table).predict(te_a), ms[test])}
    final = LearnedLatencyPredictor(table, "ridge", seed=seed).fit(archs, ms)
    report["path"] = str(final.save(workspace.latency_predictor(table.device_id)))
    return report
