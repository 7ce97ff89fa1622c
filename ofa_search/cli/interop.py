"""``ofa-search import ofa-supernet|ofa-predictor``: once-for-all's files into a
workspace (``export ofa-supernet``, the way back, is in :mod:`ofa_search.cli.export`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ofa_search.cli.options import ForceOpt, JsonOpt, WorkspaceOpt
from ofa_search.errors import OfaSearchError
from ofa_search.workspace import Workspace, check_workspace

FileArg = Annotated[Path, typer.Argument(help="once-for-all's file (read with "
                                         "weights_only=True; nothing is downloaded)")]

app = typer.Typer()
import_app = typer.Typer(no_args_is_help=True,
                         help="Bring once-for-all's supernet or accuracy predictor into a "
                         "workspace.")


@import_app.command("ofa-supernet")
def import_supernet_cmd(
    file: FileArg, workspace: WorkspaceOpt,
    width: Annotated[float | None, typer.Option(
        "--width", help="1.0 or 1.2 (default: detected from the tensor shapes)")] = None,
    force: ForceOpt = False, as_json: JsonOpt = False,
) -> None:
    """Import an OFAMobileNetV3 checkpoint (ofa_mbv3_d234_e346_k357_w1.0 / _w1.2) as the
    workspace's supernet."""
    check_workspace(workspace, must_exist=False, writable=True)
    ws = Workspace(workspace)
    # deferred until the cheap checks pass: each command imports only the library parts it
    # runs (CLI start-up)
    from ofa_search.interop import import_ofa_supernet

    report = import_ofa_supernet(file, ws.checkpoint, width_mult=width, overwrite=force,
                                 log=None if as_json else typer.echo)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=1))


@import_app.command("ofa-predictor")
def import_predictor_cmd(
    file: FileArg, workspace: WorkspaceOpt,
    width: Annotated[float, typer.Option(
        "--width", help="width of the supernet whose accuracies it predicts (once-for-all's "
        "tutorial predictor: 1.2)")] = 1.2,
    resolutions: Annotated[str | None, typer.Option(
        "--resolutions", help="comma-separated image_size_list of a nas-form predictor's "
        "encoder")] = None,
    std_points: Annotated[float | None, typer.Option(
        "--std-points", min=0.0, help="its held-out RMSE in accuracy points, if you measured "
        "it")] = None,
    force: ForceOpt = False, as_json: JsonOpt = False,
) -> None:
    """Import once-for-all's accuracy predictor as the workspace's accuracy predictor."""
    check_workspace(workspace, must_exist=False, writable=True)
    ws = Workspace(workspace)
    target = ws.accuracy_predictor
    if target.exists() and not force:
        raise OfaSearchError(f"{target} exists; pass --force to replace it")
    # deferred until the cheap checks pass: each command imports only the library parts it
    # runs (CLI start-up)
    from predictors.accuracy_ofa import load_ofa_accuracy_predictor

    res = None
    if resolutions is not None:
        try:
            res = [int(r) for r in resolutions.split(",")]
        except ValueError:
            raise OfaSearchError(f"--resolutions must be comma-separated integers, got "
                                 f"{resolutions!r}") from None
    pred = load_ofa_accuracy_predictor(file, width_mult=width, resolutions=res,
                                       residual_std=None if std_points is None
                                       else std_points / 100.0)
    pred.save(target)
    info = {"predictor": str(target), "encoding": pred.encoding, "width_mult": pred.width_mult,
            "resolutions": list(pred.known_resolutions()), **pred.source}
    if as_json:
        typer.echo(json.dumps(info, indent=1))
        return
    typer.echo(f"wrote {target} (once-for-all's {pred.encoding} predictor for ofa_mbv3 width "
               f"{pred.width_mult}; resolutions {', '.join(map(str, info['resolutions']))})")



app.add_typer(import_app, name="import")
