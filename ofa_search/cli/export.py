"""``ofa-search export``: a verified artefact with its model card (``export ofa-supernet``:
the whole supernet as once-for-all saves it)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated

import typer

from ofa_search.atomic import check_writable_file
from ofa_search.cli.options import (
    CalibImagesOpt,
    JsonOpt,
    MaxEvalImagesOpt,
    ThreadsOpt,
    WorkspaceOpt,
    check_finite,
    emit_json,
)
from ofa_search.errors import OfaSearchError
from ofa_search.workspace import Workspace

app = typer.Typer()
export_app = typer.Typer(help="Export a subnet as a verified artefact with its model card "
                         "(or the whole supernet: see the subcommand).")


@export_app.callback(invoke_without_command=True)
def export_cmd(
    ctx: typer.Context,
    workspace: WorkspaceOpt,
    fmt: Annotated[str, typer.Option(
        "--format", "-f", help="auto (onnx, onnx_int8 or binary by the arch's "
        "precisions), onnx, onnx_int8, onnx_int8_ptq, binary, torchscript or "
        "state_dict")] = "auto",
    checkpoint: Annotated[Path | None, typer.Option(
        "--checkpoint", "-c", help="default: WORKSPACE/supernet/checkpoint.pt")] = None,
    arch: Annotated[str | None, typer.Option(
        "--arch", help="arch string or JSON (its space is the checkpoint's)")] = None,
    device: Annotated[str | None, typer.Option(
        "--device", "-d", help="device id: with --latency-ms, query it first; the card "
        "holds its predicted and measured latency")] = None,
    latency_ms: Annotated[float | None, typer.Option(
        "--latency-ms", help="latency budget in ms (with --device)")] = None,
    precision: Annotated[str | None, typer.Option("--precision")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", "-o", help="output folder (default: WORKSPACE/exports/<new id>)")] = None,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="the dataset's folder (default: the one it was trained from); "
        "ImageNet supernets (imported from once-for-all) need an ImageNet-layout folder "
        "DIR/train/<wnid>/…, DIR/val/<wnid>/…")] = None,
    calib_images: CalibImagesOpt = 2000,
    max_eval_images: MaxEvalImagesOpt = 10_000,
    measure: Annotated[bool, typer.Option(
        "--measure/--no-measure", help="measure the latency on --device")] = True,
    max_int8_loss: Annotated[float | None, typer.Option(
        "--max-int8-loss", min=0.0, help="int8 archs: refuse when the int8 stages lose more "
        "than this many test-accuracy points to the fp32 twin (default: report only)")
    ] = None,
    threads: ThreadsOpt = 1,
    as_json: JsonOpt = False,
) -> None:
    """Export a subnet as a verified artefact with its model card."""
    if ctx.invoked_subcommand is not None:
        return
    if (arch is None) == (latency_ms is None):
        raise OfaSearchError("give --arch ARCH, or --device ID with --latency-ms N")
    if latency_ms is not None and device is None:
        raise OfaSearchError("--latency-ms needs --device")
    check_finite(max_int8_loss, "--max-int8-loss", positive=False)

    # deferred: each command imports only the library parts it runs (CLI start-up)
    import torch

    from ofa_search.export import export

    torch.set_num_threads(threads)
    ws = Workspace(workspace)
    answer = None
    if arch is None:
        # deferred: the search engine (Optuna) only for --latency-ms
        from ofa_search.search.query import QueryEngine

        assert device is not None and latency_ms is not None
        answer = QueryEngine(ws).query(device, latency_ms, precision)
        arch = answer.arch.to_string()
        typer.echo(f"query: {arch} predicted {answer.predicted_latency_ms:.4f} ms on "
                   f"{device}", err=True)
    folder = out if out is not None else ws.exports_dir / uuid.uuid4().hex
    result = export(checkpoint or ws.checkpoint, arch, fmt, folder, device=device,
                    workspace=ws, data_dir=data_dir, measure=measure,
                    calib_images=calib_images, max_eval_images=max_eval_images,
                    max_int8_loss=max_int8_loss, progress=True,
                    echo=lambda line: typer.echo(line, err=True))
    if as_json:
        data = result.to_dict()
        data["query"] = answer.to_dict() if answer is not None else None
        emit_json(data)
        return
    card = result.card
    typer.echo(f"artefact:  {result.artefact} ({card['artefact']['bytes']} bytes, sha256 "
               f"{card['artefact']['sha256'][:16]}…)")
    typer.echo(f"verified:  max |Δ| {card['verification']['max_abs_diff']:.3g} with "
               f"{card['verification']['runtime']} (tolerance "
               f"{card['verification']['tolerance']:.0e})")
    e2e = card["verification"].get("end_to_end")
    if e2e:
        typer.echo(f"end to end: max |Δ| {e2e['max_abs_diff']:.3g}, top-1 agreement "
                   f"{100 * e2e['top1_agreement']:.1f} % (reported, not checked)")
    scored = card["dataset"]
    typer.echo(f"accuracy:  {scored['accuracy']:.4f} on {scored['name']} {scored['split']} "
               f"({scored['samples']} images)")
    if scored.get("int8_accuracy_loss_points") is not None:
        typer.echo(f"int8 loss: {scored['int8_accuracy_loss_points']:.2f} points against the "
                   f"fp32 twin ({scored['fp32_twin_accuracy']:.4f})")
    if card["device"]:
        dev = card["device"]
        measured = dev["measured_latency_ms"]
        typer.echo(f"latency:   {dev['predicted_latency_ms']:.4f} ms predicted, "
                   + (f"{measured:.4f} ms measured" if measured is not None
                      else f"not measured ({dev['not_measured_reason']})")
                   + f" on {dev['id']}")
    typer.echo(f"card:      {result.card_json}")


@export_app.command("ofa-supernet")
def export_supernet_cmd(
    out: Annotated[Path, typer.Argument(help="the .pth file to write")],
    workspace: WorkspaceOpt,
    checkpoint: Annotated[Path | None, typer.Option(
        "--checkpoint", "-c", help="default: WORKSPACE/supernet/checkpoint.pt")] = None,
) -> None:
    """Write the workspace's ofa_mbv3 supernet as once-for-all saves its own (its code
    loads it with OFAMobileNetV3.load_state_dict)."""
    check_writable_file(out, "OUT")
    # deferred until the cheap checks pass: each command imports only the library parts it
    # runs (CLI start-up)
    from ofa_search.interop import export_ofa_supernet

    path = export_ofa_supernet(checkpoint or Workspace(workspace).checkpoint, out)
    typer.echo(f"wrote {path}")


app.add_typer(export_app, name="export")
