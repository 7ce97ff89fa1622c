"""``ofa-search space …`` and ``ofa-search arch …``: presets and architectures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from ofa_search.arch import Arch, parse_arch
from ofa_search.atomic import check_writable_file
from ofa_search.cli.options import ArchArg, JsonOpt, SeedOpt, SpaceOpt, emit_json
from ofa_search.precision.summary import format_precision_summary
from ofa_search.precision.summary import precision_summary as summarize
from ofa_search.report import arch_report, format_arch_report
from ofa_search.space import get_space, list_spaces

app = typer.Typer()
space_app = typer.Typer(no_args_is_help=True, help="Search-space presets.")
arch_app = typer.Typer(no_args_is_help=True, help="Inspect, sample and export architectures.")
app.add_typer(space_app, name="space")
app.add_typer(arch_app, name="arch")


# -- space -------------------------------------------------------------------------------
@space_app.command("list")
def space_list() -> None:
    """One preset name per line."""
    for name in list_spaces():
        typer.echo(name)


@space_app.command("show")
def space_show(name: Annotated[str, typer.Argument(help="preset name")],
               as_json: JsonOpt = False) -> None:
    """Choices, structure and size of a preset."""
    info = get_space(name).summary()
    if as_json:
        emit_json(info)
        return
    for key, value in info.items():
        if key == "stages":
            typer.echo("stages:")
            stages: list[dict[str, Any]] = value  # type: ignore[assignment]
            for i, stage in enumerate(stages):
                typer.echo(f"  {i}: width {stage['width']}, stride {stage['stride']}, "
                           f"{stage['act']}, se={stage['se']}")
        else:
            typer.echo(f"{key}: {value}")


# -- arch --------------------------------------------------------------------------------
@arch_app.command("sample")
def arch_sample(space: SpaceOpt, n: Annotated[int, typer.Option("--n", min=1)] = 1,
                seed: SeedOpt = 0) -> None:
    """N seeded random archs, one compact string per line."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        typer.echo(Arch.sample(space, rng).to_string())


@arch_app.command("info")
def arch_info(arch: ArchArg, space: SpaceOpt, as_json: JsonOpt = False,
              precision_summary: Annotated[bool, typer.Option(
                  "--precision-summary", help="per-layer precision, weights by bit width, "
                  "memory and MACs by precision (as Larq's summary)")] = False) -> None:
    """Resolution, depths, MACs, params and a per-block table."""
    if precision_summary:
        summary = summarize(parse_arch(arch, space))
        if as_json:
            emit_json(summary)
        else:
            typer.echo(format_precision_summary(summary))
        return
    report = arch_report(parse_arch(arch, space))
    if as_json:
        emit_json(report)
    else:
        typer.echo(format_arch_report(report))


@arch_app.command("export")
def arch_export(arch: ArchArg, space: SpaceOpt,
                out: Annotated[Path, typer.Option("--out", "-o", help="FILE.onnx")],
                seed: SeedOpt = 0) -> None:
    """Export a randomly initialised static subnet to ONNX (for latency work)."""
    parsed = parse_arch(arch, space)
    check_writable_file(out, "--out")
    # deferred until the cheap checks pass: each command imports only the library parts it
    # runs (CLI start-up)
    import torch

    from ofa_search.nn import build_static
    from ofa_search.onnx_export import export_onnx, save_onnx

    net = build_static(parsed, torch.Generator().manual_seed(seed))
    model = export_onnx(net, net.input_shape())
    save_onnx(model, out)
    typer.echo(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, input {net.input_shape()})")
