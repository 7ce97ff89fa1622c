"""The main job on the embedded default: the whole product in one run, in minutes.

Train a small supernet on scikit-learn's digits (sandwich rule, fp32), profile this machine
with ONNX Runtime (one thread) into a device table with fp32 and int8 units, fit the
accuracy and latency predictors, build the device's Pareto front of each precision mode and
measure some of its members end to end (the bound of query answers is calibrated on them),
check this host's speed against the table (drift), answer three queries at any precision
(tight, middle and loose budget; each answer's calibrated latency bound fits it) and price
the middle answer with every stage int8, measure each answer (latency through ONNX Runtime, said
plainly when over its budget; test accuracy after BN recalibration), export the middle
answer with its model card and its int8 version as post-training quantised int8 ONNX (with
its measured accuracy loss against the fp32 answer), and draw the front. Every step resumes
from the workspace, which afterwards serves ``ofa-search query`` and ``ofa-search serve``
as it is.

int8 here is post-training quantisation: the supernet is trained in fp32 only, and an int8
stage's activation ranges are calibrated after training (with the BN statistics), so the
accuracy predictor learns what quantisation without training costs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ofa_search.atomic import atomic_write_json
from ofa_search.data import load_dataset
from ofa_search.demo.plot import plot_front
from ofa_search.errors import OfaSearchError
from ofa_search.export import ExportResult, export
from ofa_search.extras import MissingExtraError
from ofa_search.profiling import DeviceProfile, TimingConfig
from ofa_search.profiling.backends import get_backend
from ofa_search.profiling.builder import build_table
from ofa_search.profiling.drift import check_drift
from ofa_search.profiling.lut import precision_mode
from ofa_search.profiling.measure import measure_archs
from ofa_search.search.calibrate import calibrate_answers
from ofa_search.search.front import build_front
from ofa_search.search.query import ANY_PRECISION, QueryEngine, QueryResult
from ofa_search.space import get_space
from ofa_search.train import (
    TrainConfig,
    calibrated_subnet,
    evaluate,
    load_supernet,
    supernet_evaluator,
    train,
)
from ofa_search.workspace import Workspace
from predictors.fit import fit_predictors, format_quality_table

DEMO_SPACE = "mbv3_small28_int8"
"""The demo's space: ``mbv3_small28`` with fp32 or int8 per stage."""
DEMO_DEVICE = "local-cpu-ort-1t"
"""The table the demo profiles (ONNX Runtime, 1 thread, this host) into the workspace."""
BUDGET_POSITIONS = (("tight", 0.1), ("middle", 0.5), ("loose", 0.9))
"""Budgets as positions in the front's predicted latency range."""
MEASURE_TIMING = TimingConfig(warmup=5, min_runs=20, max_runs=400, time_cap_s=1.0)
PROFILE_TIMING = TimingConfig(warmup=3, min_runs=7, max_runs=200, time_cap_s=0.3)
INT8_TWIN = "middle-int8"
"""The row of the middle answer with every stage int8: a comparison, not an answer."""
INT8_LOSS_LIMIT = 1.0
"""Test-accuracy points an int8 export may lose to its fp32 twin (post-training
quantisation, no int8 training); the demo reports the loss either way."""


def run_demo(workspace: Path, *, space: str = DEMO_SPACE, seed: int = 0,
             epochs: int = 6, n_archs: int = 150, n_latency: int = 40,
             resolutions: Sequence[int] | None = None,
             echo: Callable[[str], None] = print, progress: bool = True) -> dict[str, Any]:
    """Run the demo into ``workspace``; returns a summary (also written as
    ``demo_summary.json`` there). Rerunning on the same workspace reuses every finished
    step (checkpoint, table, datasets, measurements). ``resolutions`` restricts the
    profiled table (and so the searched subnets) to some of the space's resolutions."""
    start = time.perf_counter()
    modes = tuple(p for p in ("fp32", "int8") if p in get_space(space).precisions)
    ws = Workspace(workspace)
    ws.root.mkdir(parents=True, exist_ok=True)

    echo(f"[1/6] training a supernet of {space!r} on digits (sandwich rule, {epochs} epochs)")
    train(TrainConfig(space=space, dataset="digits", strategy="sandwich", epochs=epochs,
                      batch_size=64, lr=0.1, warmup_epochs=1, seed=seed,
                      out_dir=str(ws.supernet_dir), resume=ws.checkpoint.exists(),
                      quiet=not progress))

    echo(f"[2/6] profiling this machine: ONNX Runtime, 1 thread -> device {DEMO_DEVICE!r} "
         f"({' and '.join(modes)} units)")
    table_path = ws.hw_profiles_dir / f"{DEMO_DEVICE}.json"
    profile = dataclasses.replace(DeviceProfile.local_onnxruntime(1, id=DEMO_DEVICE),
                                  precisions=modes)
    table = build_table(space, profile, resolutions, table_path, timing=PROFILE_TIMING,
                        progress=progress)
    echo(f"      {len(table.entries)} units priced; wrote {table_path}")

    echo(f"[3/6] fitting predictors ({n_archs} subnets evaluated on val, "
         f"{n_latency} measured end to end)")
    quality = fit_predictors(ws, ws.checkpoint, [DEMO_DEVICE], n_archs=n_archs,
                             evaluator_for=supernet_evaluator,
                             n_latency=n_latency, seed=seed, show_progress=progress)
    for line in format_quality_table(quality).splitlines():
        echo(f"      {line}")

    echo(f"[4/6] building the Pareto front of each precision mode (NSGA-II, accuracy vs "
         f"latency) and measuring {n_latency} of its members")
    calibrations = {}
    for mode in modes:
        mode_front, _ = build_front(ws, DEMO_DEVICE, mode, seed=seed)
        echo(f"      {mode}: {len(mode_front.points)} points, {mode_front.min_latency_ms:.3f}"
             f"–{mode_front.points[-1].predicted_latency_ms:.3f} ms")
        answered = calibrate_answers(ws, DEMO_DEVICE, mode, n=n_latency)
        calibrations[mode] = answered.to_dict()
        factors = answered.factors.get(mode, {})
        if factors.get("answers") is not None and factors.get("random") is not None:
            echo(f"      {mode} answers' 0.9 bound: prediction x {factors['answers']:.3f} "
                 f"(random subnets: x {factors['random']:.3f})")
        if mode == "fp32":
            front = mode_front
    lo, hi = front.min_latency_ms, front.points[-1].predicted_latency_ms

    echo("[5/6] checking this host's speed, answering three queries"
         + (" at any precision, pricing the middle answer in int8" if "int8" in modes
            else "") + ", measuring the answers")
    drift = check_drift(table)
    echo(f"      {drift.summary()}")
    engine = QueryEngine(ws)
    ctx = engine.context(DEMO_DEVICE)
    level, factor, _ = ctx.bound_factor(None)
    # budgets as positions in the range of the front's bounds (its point range x factor)
    answers = [(name, factor * ctx.scale() * (lo + frac * (hi - lo)))
               for name, frac in BUDGET_POSITIONS]
    precision = ANY_PRECISION if len(modes) > 1 else None
    results = [(name, budget, engine.query(DEMO_DEVICE, budget, precision))
               for name, budget in answers]
    if "int8" in modes:  # the middle answer with every stage int8, priced like an answer
        middle_arch = results[1][2].arch
        twin = middle_arch.replace(precisions=("int8",) * len(middle_arch.precisions))
        results.append((INT8_TWIN, answers[1][1], engine.price(DEMO_DEVICE, twin)))
    if level is not None:
        echo(f"      each answer's {level:g}-confidence bound fits its budget (bound = "
             f"prediction x {factor:.3f}, calibrated on "
             f"{calibrations['fp32']['n_measured']} measured front members)")
    rows = _measure(ws, results, seed=seed)

    middle = results[1][2]
    echo("[6/6] exporting the middle answer with its model card"
         + (" and its int8 version as post-training quantised int8 ONNX"
            if len(results) > 3 else ""))
    exported = export(ws.checkpoint, middle.arch, "auto", _export_dir(ws, middle),
                      device=DEMO_DEVICE, workspace=ws, seed=seed)
    int8_export = (_export_int8(ws, results[3][2], seed=seed, echo=echo)
                   if len(results) > 3 else None)
    try:
        plot: Path | None = plot_front(
            front, [(b, r) for _, b, r in results[:3]], ws.root / "front.png",
            title=f"{space} on {DEMO_DEVICE} (digits)",
            others=[("middle answer, every stage int8", r) for _, _, r in results[3:]])
    except MissingExtraError as exc:
        echo(f"      no front plot: {exc}")
        plot = None

    echo("")
    echo(f"{'query':<11} {'budget':>7} {'pred ms':>8} {'bound ms':>8} {'meas ms':>8}  "
         f"{'verdict':<16} {'pred acc':>8} {'meas acc':>8}  {'prec':<5} arch")
    for row in rows:
        bound = row["latency_upper_ms"]
        echo(f"{row['query']:<11} {row['budget_ms']:7.3f} {row['predicted_latency_ms']:8.3f} "
             f"{'-' if bound is None else f'{bound:.3f}':>8} {row['measured_latency_ms']:8.3f}  "
             f"{_verdict(row, rows[1]):<16} "
             f"{row['predicted_accuracy']:8.3f} {row['measured_accuracy']:8.3f}  "
             f"{row['precision']:<5} {row['arch']}")
    over = [row for row in rows
            if row["query"] != INT8_TWIN and row["measured_latency_ms"] > row["budget_ms"]]
    if over:
        echo(f"warning: {len(over)} of {len(rows)} answers measured over their budget "
             f"(worst by {max(r['measured_latency_ms'] / r['budget_ms'] - 1 for r in over):.0%}"
             "); this host's speed varies, see `ofa-search check-device`")
    for done in (exported, int8_export):
        if done is not None:
            card = done.card
            echo(f"exported {done.artefact} ({card['artefact']['bytes'] / 1e3:.0f} kB, "
                 f"{card['verification']['runtime']} vs PyTorch "
                 f"{card['verification']['max_abs_diff']:.1e}); card {done.card_markdown}")
            loss = card["dataset"].get("int8_accuracy_loss_points")
            if loss is not None:
                echo(f"      int8 (post-training quantised): test accuracy "
                     f"{card['dataset']['accuracy']:.3f}, {loss:.2f} points from its fp32 twin "
                     f"({card['dataset']['fp32_twin_accuracy']:.3f}; allowed: "
                     f"{INT8_LOSS_LIMIT:g})")
    if plot is not None:
        echo(f"front plot {plot}")
    summary: dict[str, Any] = {
        "space": space, "seed": seed, "device": DEMO_DEVICE, "workspace": str(ws.root),
        "checkpoint": str(ws.checkpoint), "table": str(table_path), "quality": quality,
        "precision_modes": list(modes), "front_points": len(front.points),
        "answer_calibration": calibrations["fp32"],
        "answer_calibration_by_mode": calibrations,
        "drift": drift.to_dict(), "queries": rows, "export": exported.to_dict(),
        "int8_export": None if int8_export is None else int8_export.to_dict(),
        "int8_loss_limit_points": INT8_LOSS_LIMIT,
        "plot": None if plot is None else str(plot),
        "seconds": round(time.perf_counter() - start, 2),
    }
    atomic_write_json(ws.root / "demo_summary.json", summary)
    echo(f"done in {summary['seconds']:.0f} s; next: ofa-search query --workspace {ws.root} "
         f"--device {DEMO_DEVICE} --latency-ms {answers[1][1]:.3f}")
    return summary


def _measure(ws: Workspace, results: list[tuple[str, float, QueryResult]], *, seed: int
             ) -> list[dict[str, Any]]:
    """Measured latency (ONNX Runtime, this host) and test accuracy of each answer."""
    supernet, meta = load_supernet(ws.checkpoint)
    data = load_dataset("digits", seed=meta["config"]["seed"],
                        in_channels=supernet.space.in_channels)
    profile = DeviceProfile.local_onnxruntime(1, id=DEMO_DEVICE)
    rows = []
    with get_backend(profile, timing=MEASURE_TIMING) as backend:
        latencies = measure_archs(backend, [result.arch for _, _, result in results],
                                  profile=profile)
        for (name, budget, result), latency in zip(results, latencies, strict=True):
            net = calibrated_subnet(supernet, result.arch, data, seed=seed)
            rows.append({
                "query": name, "budget_ms": budget, "arch": result.arch.to_string(),
                "precision": precision_mode(result.arch), "source": result.source,
                "predicted_latency_ms": result.predicted_latency_ms,
                "latency_upper_ms": result.latency_upper_ms, "confidence": result.confidence,
                "measured_latency_ms": latency.median_ms,
                "within_budget": latency.median_ms <= budget,
                "predicted_accuracy": result.predicted_accuracy,
                "accuracy_std": result.accuracy_std,
                "measured_accuracy": evaluate(net, data.split("test"), result.arch.resolution),
                "macs_m": result.macs_m,
            })
    return rows


def _export_dir(ws: Workspace, result: QueryResult, suffix: str = "") -> Path:
    """The export folder of an answer: named by its arch, so a rerun reuses it."""
    digest = hashlib.sha256(result.arch.to_string().encode()).hexdigest()[:32]
    return ws.exports_dir / f"{digest}{suffix}"


def _export_int8(ws: Workspace, result: QueryResult, *, seed: int,
                 echo: Callable[[str], None]) -> ExportResult | None:
    """An int8 arch as post-training quantised int8 ONNX (``onnx_int8_ptq``), refused
    when its int8 stages lose more than :data:`INT8_LOSS_LIMIT` points; ``None`` (said)
    when it is refused, for its loss or by its verification."""
    try:
        return export(ws.checkpoint, result.arch, "onnx_int8_ptq",
                      _export_dir(ws, result, "-int8"), device=DEMO_DEVICE, workspace=ws,
                      seed=seed, max_int8_loss=INT8_LOSS_LIMIT)
    except OfaSearchError as exc:  # its loss (AccuracyLossError) or its verification: said
        echo(f"      int8 answer not exported: {exc}")
        return None


def _verdict(row: dict[str, Any], middle: dict[str, Any]) -> str:
    """``within budget`` or ``OVER by N %``; for the int8 twin of the middle answer, its
    latency as a multiple of the fp32 answer's (``1.63x fp32``)."""
    measured_ms, budget_ms = row["measured_latency_ms"], row["budget_ms"]
    if row["query"] == INT8_TWIN:
        return f"{measured_ms / middle['measured_latency_ms']:.2f}x fp32"
    if measured_ms <= budget_ms:
        return "within budget"
    return f"OVER by {measured_ms / budget_ms - 1:.1%}"
