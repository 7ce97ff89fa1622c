"""``ofa-search fit-predictors``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ofa_search.atomic import remove_stale_temps
from ofa_search.cli.options import JsonOpt, WorkspaceOpt
from ofa_search.errors import OfaSearchError
from ofa_search.workspace import Workspace, check_device_id, check_workspace

app = typer.Typer()


@app.command("fit-predictors")
def fit_predictors_cmd(
    workspace: WorkspaceOpt,
    checkpoint: Annotated[Path | None, typer.Option(
        "--checkpoint", "-c", help="trained supernet (default WORKSPACE/supernet/"
        "checkpoint.pt)")] = None,
    device: Annotated[list[str] | None, typer.Option(
        "--device", "-d", help="fit a latency predictor for this device (repeatable)")] = None,
    n_archs: Annotated[int, typer.Option("--n-archs", min=4,
                                         help="archs in the accuracy dataset")] = 500,
    n_latency: Annotated[int, typer.Option("--n-latency", min=5,
                                           help="end-to-end measurements per device")] = 200,
    max_eval_images: Annotated[int | None, typer.Option(
        "--max-eval-images", min=1, help="cap on val images per subnet (default: all)")] = None,
    skip_accuracy: Annotated[bool, typer.Option(
        "--skip-accuracy", help="fit latency predictors only")] = False,
    seed: Annotated[int, typer.Option("--seed", min=0, max=2**32 - 1)] = 0,
    threads: Annotated[int | None, typer.Option("--threads", min=1, max=1024,
                                                help="torch intra-op threads")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Build the accuracy dataset, fit accuracy and latency predictors, print their
    held-out quality (resumable: cached evaluations and measurements are reused)."""
    for name in device or []:
        check_device_id(name)
    check_workspace(workspace, must_exist=False, writable=True)
    if checkpoint is not None and not checkpoint.is_file():
        raise OfaSearchError(f"--checkpoint {checkpoint} is not a file")
    # deferred until the cheap checks pass: each command imports only the library parts it
    # runs (CLI start-up)
    from ofa_search.train import supernet_evaluator
    from predictors.fit import fit_predictors, format_quality_table

    if threads is not None:
        import torch  # deferred: torch only with --threads

        torch.set_num_threads(threads)
    ws = Workspace(workspace)
    # temporary files of a run killed mid-write (its caches are resumed, not rewritten)
    for folder in (ws.predictors_dir, (checkpoint or ws.checkpoint).parent):
        remove_stale_temps(folder)
    log = None if as_json else typer.echo
    report = fit_predictors(ws, checkpoint, device or [], n_archs=n_archs,
                            evaluator_for=supernet_evaluator,
                            n_latency=n_latency, accuracy=not skip_accuracy,
                            max_eval_images=max_eval_images, seed=seed,
                            show_progress=not as_json, log=log)
    if as_json:
        typer.echo(json.dumps(report, indent=1))
    else:
        typer.echo(format_quality_table(report))
