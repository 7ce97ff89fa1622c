"""Option types and small checks shared by the ``ofa-search`` commands."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer

from ofa_search.errors import OfaSearchError
from ofa_search.workspace import default_workspace_dir

WorkspaceOpt = Annotated[Path, typer.Option(
    "--workspace", "-w", help="workspace folder (default ./ofa-workspace or "
    "$OFA_SEARCH_WORKSPACE)", default_factory=default_workspace_dir)]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]
ForceOpt = Annotated[bool, typer.Option("--force", help="replace what the workspace has")]
SpaceOpt = Annotated[str, typer.Option("--space", "-s", help="search-space preset name")]
DEFAULT_SPACE = "mbv3_small28"
DeviceOpt = Annotated[str, typer.Option("--device", "-d", help="device id, e.g. cpu-ort-1t")]
PrecisionOpt = Annotated[str | None, typer.Option(
    "--precision", help="fp32, int8, binary (each stage fp32 or that precision), mixed (each "
    "stage fp32, int8 or binary) or any (the best answer of every mode); default fp32")]
LatencyKindOpt = Annotated[str | None, typer.Option(
    "--latency-predictor", help="lut or learned (default: learned when fitted)")]
CalibImagesOpt = Annotated[int, typer.Option(
    "--calib-images", min=1, help="ImageNet: recalibrate BN on at most N random train images "
    "(once-for-all uses 2000)")]
MaxEvalImagesOpt = Annotated[int, typer.Option(
    "--max-eval-images", min=1, help="ImageNet: measure accuracy on at most N random val "
    "images (reported with the result)")]
ArchArg = Annotated[str, typer.Argument(
    help="compact arch string, JSON of Arch.to_dict, or once-for-all's {ks,e,d,r} dict")]
SeedOpt = Annotated[int, typer.Option("--seed", min=0, max=2**32 - 1)]
ThreadsOpt = Annotated[int, typer.Option("--threads", min=1, max=1024,
                                         help="torch intra-op threads")]
TorchDeviceOpt = Annotated[str | None, typer.Option(
    "--torch-device", help="torch: cpu, cuda or cuda:N (default cpu)")]
TorchDtypeOpt = Annotated[str | None, typer.Option(
    "--torch-dtype", help="torch: fp32, bf16, or fp16 on a GPU (default fp32)")]
CudaGraphsOpt = Annotated[bool | None, typer.Option(
    "--cuda-graphs/--no-cuda-graphs", help="torch on a GPU: time CUDA-graph replays "
    "(default: eager calls)")]


def emit_json(data: Any) -> None:
    """Print ``data`` as indented JSON."""
    typer.echo(json.dumps(data, indent=1))


def check_finite(value: float | None, option: str, *, positive: bool = True) -> None:
    """Refuse NaN, infinities and (with ``positive``) values <= 0 of a float option."""
    if value is None:
        return
    if not math.isfinite(value) or (positive and not value > 0):
        raise OfaSearchError(f"{option} must be a finite number{' > 0' if positive else ''}, "
                             f"got {value!r}")


def given(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was given on the command line (not defaulted)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def target_json(text: str) -> dict[str, Any]:
    """``--target``'s JSON object (a ``BadParameter`` naming the option otherwise)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--target") from exc
    if not isinstance(value, dict) or "kind" not in value:
        raise typer.BadParameter('expected a JSON object with a "kind", e.g. '
                                 '{"kind": "llvm", "mcpu": "znver4"}', param_hint="--target")
    return value
