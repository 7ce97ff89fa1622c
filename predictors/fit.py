"""``fit_predictors``: everything ``ofa-search fit-predictors`` does, as one library call.

1. Build or extend the accuracy dataset of the checkpoint (resumable, beside it).
2. Fit the accuracy-predictor candidates on a deterministic train part, score them on the
   held-out part, save the best (refitted on all archs) to ``W/predictors/accuracy.json``.
3. For each device whose table was measured on a host like this one: collect end-to-end
   measurements (resumable), fit the learned latency predictor, save it to
   ``W/predictors/<device>-latency.json``. Imported tables are skipped with a message.

The returned report (also written to ``W/predictors/quality.json``) holds held-out
quality numbers only; :func:`format_quality_table` prints it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ofa_search.atomic import atomic_write_json
from ofa_search.profiling.lut import find_table
from ofa_search.workspace import Workspace
from predictors.accuracy_data import EvalSettings, EvaluatorFactory, build_accuracy_dataset
from predictors.accuracy_fit import DEFAULT_CANDIDATES, select_accuracy_predictor
from predictors.latency_fit import fit_latency_predictor


def fit_predictors(workspace: Workspace | str | os.PathLike[str],
                   checkpoint: str | os.PathLike[str] | None = None,
                   devices: Sequence[str] = (), *, n_archs: int = 500, n_latency: int = 200,
                   accuracy: bool = True, max_eval_images: int | None = None, seed: int = 0,
                   holdout: float = 0.2, candidates: Sequence[str] = DEFAULT_CANDIDATES,
                   candidate_options: Mapping[str, Mapping[str, Any]] | None = None,
                   show_progress: bool = True, log: Callable[[str], None] | None = None,
                   evaluator_for: EvaluatorFactory | None = None) -> dict[str, Any]:
    """Fit the workspace's predictors and return their held-out quality report.

    Args:
        workspace: the workspace (or its folder).
        checkpoint: the trained supernet (default ``W/supernet/checkpoint.pt``).
        devices: device ids to fit latency predictors for.
        n_archs: size of the accuracy dataset (archs evaluated so far are reused).
        n_latency: end-to-end measurements per device (reused likewise).
        accuracy: set ``False`` to fit latency predictors only.
        max_eval_images: cap on ``val`` images per evaluation (``None``: all).
        seed, holdout: arch sampling / split seed, share held out for the report.
        candidates, candidate_options: accuracy predictors to compare, and their
            constructor options by name.
        evaluator_for: scores the supernet's subnets for the accuracy dataset (needed
            with ``accuracy``): :func:`ofa_search.train.supernet_evaluator`.
    """
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    report: dict[str, Any] = {"workspace": str(ws.root), "accuracy": None, "latency": {}}
    # unknown devices and path-like ids fail here, before any long work
    tables = {device: find_table(device, workspace=ws.root) for device in devices
              if ws.latency_predictor(device)}
    if accuracy:
        ckpt = Path(checkpoint) if checkpoint is not None else ws.checkpoint
        started = time.perf_counter()
        if evaluator_for is None:
            raise ValueError("fitting the accuracy predictor needs evaluator_for (e.g. "
                             "ofa_search.train.supernet_evaluator)")
        data = build_accuracy_dataset(ckpt, n_archs,
                                      settings=EvalSettings(max_eval_images=max_eval_images),
                                      seed=seed, show_progress=show_progress, log=log,
                                      evaluator_for=evaluator_for)
        build_s = time.perf_counter() - started
        pred, acc = select_accuracy_predictor(
            data.archs(), data.accuracies(), space=data.space, candidates=candidates,
            holdout=holdout, seed=seed, options=candidate_options, log=log)
        acc.update({"checkpoint": str(ckpt), "dataset": str(data.path),
                    "n_evaluated_now": data.n_evaluated, "dataset_build_s": build_s,
                    "path": str(pred.save(ws.accuracy_predictor))})
        report["accuracy"] = acc
    for device, table in tables.items():
        if table.profile() is None:
            message = (f"{device}: imported table, cannot be measured from this host; "
                       "skipped (the table sum stays its predictor)")
            if log is not None:
                log(message)
            report["latency"][device] = {"skipped": message}
            continue
        report["latency"][device] = fit_latency_predictor(
            ws, table, n_latency, holdout=holdout, seed=seed, show_progress=show_progress,
            log=log)
    atomic_write_json(ws.predictors_dir / "quality.json", report)
    return report


def format_quality_table(report: Mapping[str, Any]) -> str:
    """The report as a plain-text table (held-out numbers)."""
    lines: list[str] = []
    acc = report.get("accuracy")
    if acc:
        lines.append(f"accuracy predictors ({acc['n_train']} train / {acc['n_heldout']} "
                     f"held-out archs; chosen: {acc['chosen']})")
        lines.append(f"  {'candidate':<10} {'RMSE pts':>9} {'tau':>7} {'rho':>7} "
                     f"{'std pts':>8} {'fit s':>7}")
        for name, s in acc["candidates"].items():
            lines.append(f"  {name:<10} {s['rmse']:>9.3f} {s['kendall_tau']:>7.3f} "
                         f"{s['spearman_rho']:>7.3f} {s['mean_std_points']:>8.3f} "
                         f"{s['fit_s']:>7.1f}")
        lines.append(f"  saved {acc['path']}")
    for device, lat in report.get("latency", {}).items():
        if "skipped" in lat:
            lines.append(f"latency {lat['skipped']}")
            continue
        lines.append(f"latency {device} ({lat['n_train']} train / {lat['n_heldout']} "
                     "held-out measurements)")
        lines.append(f"  {'predictor':<10} {'±5 %':>7} {'±10 %':>7} {'tau':>7} {'MAPE %':>7} "
                     f"{'≤ bound':>8} {'bound':>7}")
        for name in ("learned", "lut"):
            s = lat[name]
            cover = s.get("coverage") or {}
            share, factor = cover.get("share_under_bound"), cover.get("factor")
            bound = (f"{'n/a':>8} {'n/a':>7}" if share is None or factor is None
                     else f"{share:>8.1%} {f'+{100 * (factor - 1):.1f}%':>7}")
            lines.append(f"  {name:<10} {s['within_5pct']:>7.1%} {s['within_10pct']:>7.1%} "
                         f"{s['kendall_tau']:>7.3f} {100 * s['mape']:>7.2f} {bound}")
        lines.append(f"  (≤ bound: held-out share measured under the "
                     f"{cover.get('confidence', 0.9):g}-confidence bound, calibrated on the "
                     "train part; bound: its margin over the point estimate)")
        lines.append(f"  saved {lat['path']}")
    return "\n".join(lines)
