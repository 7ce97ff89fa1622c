"""``ofa-search prune`` and ``ofa-search exits``: pruning and early exits of a subnet
(:mod:`ofa_search.compress`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ofa_search.cli.options import JsonOpt, SeedOpt, WorkspaceOpt, emit_json
from ofa_search.errors import OfaSearchError
from ofa_search.workspace import Workspace, check_workspace

app = typer.Typer()

ArchOpt = Annotated[str, typer.Option("--arch", help="the subnet (arch string or JSON; its "
                                      "space is the checkpoint's)")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="output folder (artefacts, "
                                      "resumable state, model card)")]
CheckpointOpt = Annotated[Path | None, typer.Option(
    "--checkpoint", "-c", help="default: WORKSPACE/supernet/checkpoint.pt")]
DeviceOpt = Annotated[str | None, typer.Option(
    "--device", "-d", help="measure on this device's backend (default: ONNX Runtime, 1 "
    "thread, this host)")]
TargetOpt = Annotated[float | None, typer.Option(
    "--target-latency-ms", help="latency target in ms (instead of the ratio/thresholds)")]
RoundsOpt = Annotated[int, typer.Option("--rounds", min=1,
                                        help="interleaved timing rounds (median kept)")]
CalibOpt = Annotated[int, typer.Option("--calib-batches", min=1,
                                       help="train batches of the BN recalibration")]
EveryOpt = Annotated[int, typer.Option("--checkpoint-every", min=1,
                                       help="save the training state every N steps")]
StopOpt = Annotated[int | None, typer.Option(
    "--stop-after-steps", min=1, help="stop after N training steps (resume later with "
    "--resume)")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="continue OUT's saved state")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")]


def _checkpoint(workspace: Path, checkpoint: Path | None) -> Path:
    check_workspace(workspace, must_exist=checkpoint is None)
    path = checkpoint if checkpoint is not None else Workspace(workspace).checkpoint
    if not path.is_file():
        raise OfaSearchError(f"no supernet checkpoint at {path}; train one (`ofa-search "
                             "train`) or give --checkpoint")
    return path


def _print(result: Any, as_json: bool, lines: list[str]) -> None:
    if as_json:
        emit_json(result.to_dict())
        return
    for line in lines:
        typer.echo(line)


@app.command("prune")
def prune_cmd(
    workspace: WorkspaceOpt, arch: ArchOpt, out: OutOpt,
    method: Annotated[str, typer.Option(
        "--method", help="channel (structured: hidden channels) or magnitude (unstructured "
        "weights, exported dense)")] = "channel",
    ratio: Annotated[float | None, typer.Option(
        "--ratio", help="share of hidden channels (channel) or weights (magnitude) to "
        "remove, in [0, 1)")] = None,
    target_latency_ms: TargetOpt = None,
    criterion: Annotated[str, typer.Option("--criterion", help="l2 or l1")] = "l2",
    scope: Annotated[str, typer.Option("--scope", help="magnitude: global or layer")
                     ] = "global",
    schedule: Annotated[str, typer.Option("--schedule", help="one-shot or iterative")
                        ] = "one-shot",
    iterations: Annotated[int, typer.Option("--iterations", min=1,
                                            help="iterative: prune/fine-tune rounds")] = 3,
    finetune_steps: Annotated[int, typer.Option("--finetune-steps", min=0)] = 0,
    lr: Annotated[float, typer.Option("--lr")] = 0.01,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    kd_ratio: Annotated[float, typer.Option("--kd-ratio", help="weight of distillation")
                        ] = 1.0,
    teacher: Annotated[str, typer.Option("--teacher", help="subnet, largest or none")
                       ] = "subnet",
    device: DeviceOpt = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="onnx or torchscript")] = "onnx",
    measure: Annotated[bool, typer.Option("--measure/--no-measure",
                                          help="measure the latency")] = True,
    rounds: RoundsOpt = 3, calib_batches: CalibOpt = 16, seed: SeedOpt = 0,
    checkpoint_every: EveryOpt = 50, stop_after_steps: StopOpt = None,
    resume: ResumeOpt = False, quiet: QuietOpt = False, checkpoint: CheckpointOpt = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Prune a subnet (structured channels or unstructured weights), fine-tune it
    (resumable), export it verified with its model card, and measure it."""
    # deferred: each command imports only the library parts it runs (CLI start-up)
    from ofa_search.compress import prune

    path = _checkpoint(workspace, checkpoint)
    result = prune(path, arch, out, method=method, ratio=ratio,  # type: ignore[arg-type]
                   target_latency_ms=target_latency_ms, criterion=criterion,  # type: ignore[arg-type]
                   scope=scope, schedule=schedule,  # type: ignore[arg-type]
                   iterations=iterations, finetune_steps=finetune_steps, batch_size=batch_size,
                   lr=lr, kd_ratio=kd_ratio, teacher=teacher,  # type: ignore[arg-type]
                   device=device, workspace=workspace, data_dir=data_dir,
                   calib_batches=calib_batches, seed=seed, format=fmt, measure=measure,
                   rounds=rounds, checkpoint_every=checkpoint_every,
                   stop_after_steps=stop_after_steps, resume=resume, quiet=quiet or as_json,
                   say=None if as_json or quiet else typer.echo)
    if not result.finished:
        _print(result, as_json, [f"stopped after {result.steps} steps; continue with --resume"])
        return
    latency = result.latency or {}
    lines = [f"pruned ({result.method}, ratio {result.ratio:.3f}, {result.schedule}): "
             f"accuracy {result.accuracy_before:.4f} -> {result.accuracy:.4f}"]
    if latency.get("measured_ms") is not None:
        lines.append(f"latency:  {latency['unpruned_measured_ms']:.4f} -> "
                     f"{latency['measured_ms']:.4f} ms measured on "
                     f"{latency['target']['device']} ({latency['speedup']:.2f}x)")
    lines += [f"artefact: {result.artefact}", f"card:     {result.card_markdown}"]
    _print(result, as_json, lines)


@app.command("exits")
def exits_cmd(
    workspace: WorkspaceOpt, arch: ArchOpt, out: OutOpt,
    after_stages: Annotated[str, typer.Option(
        "--after-stages", help="comma-separated stage indices to put exits after")] = "0,1,2",
    thresholds: Annotated[str | None, typer.Option(
        "--thresholds", help="confidence threshold per exit (or one for all), each in "
        "(0, 1]")] = None,
    max_accuracy_drop: Annotated[float | None, typer.Option(
        "--max-accuracy-drop", help="choose thresholds losing at most this many points on "
        "val (default 0.5)")] = None,
    target_latency_ms: TargetOpt = None,
    basis: Annotated[str | None, typer.Option(
        "--basis", help="expected latency from the table or measured segments")] = None,
    head_width: Annotated[int, typer.Option("--head-width", min=0,
                                            help="hidden width of exit heads (0: linear)")] = 64,
    steps: Annotated[int, typer.Option("--steps", min=1, help="head training steps")] = 300,
    lr: Annotated[float, typer.Option("--lr")] = 0.05,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    temperature: Annotated[float, typer.Option("--temperature")] = 1.0,
    label_weight: Annotated[float, typer.Option(
        "--label-weight", help="weight of the label loss beside distillation")] = 0.0,
    device: DeviceOpt = None, rounds: RoundsOpt = 3, calib_batches: CalibOpt = 16,
    seed: SeedOpt = 0, checkpoint_every: EveryOpt = 50, stop_after_steps: StopOpt = None,
    resume: ResumeOpt = False, quiet: QuietOpt = False, checkpoint: CheckpointOpt = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train early-exit heads on a subnet (distilled from its final head, backbone frozen),
    choose their thresholds, export the cascade verified, report expected latency."""
    # deferred: each command imports only the library parts it runs (CLI start-up)
    from ofa_search.compress import exits

    stages = _ints(after_stages, "--after-stages")
    levels = None if thresholds is None else _floats(thresholds, "--thresholds")
    path = _checkpoint(workspace, checkpoint)
    result = exits(path, arch, out, after_stages=stages, thresholds=levels,
                   max_accuracy_drop=max_accuracy_drop, target_latency_ms=target_latency_ms,
                   basis=basis, head_width=head_width, steps=steps,  # type: ignore[arg-type]
                   batch_size=batch_size, lr=lr, temperature=temperature,
                   label_weight=label_weight, device=device, workspace=workspace,
                   data_dir=data_dir, calib_batches=calib_batches, seed=seed, rounds=rounds,
                   checkpoint_every=checkpoint_every, stop_after_steps=stop_after_steps,
                   resume=resume, quiet=quiet or as_json,
                   say=None if as_json or quiet else typer.echo)
    if not result.finished:
        _print(result, as_json, [f"stopped after {result.steps} steps; continue with --resume"])
        return
    lines = [f"exits after stages {list(result.after_stages)} "
             f"(thresholds: {result.threshold_source})"]
    report = result.report or {}
    if report:
        lost = report["accuracy_loss_points"]
        lines.append(f"accuracy: {report['accuracy']:.4f} vs "
                     f"{report['accuracy_without_exits']:.4f} without exits ({abs(lost):.2f} "
                     f"points {'lost' if lost >= 0 else 'gained'})")
        cut = report["reduction_measured"]
        lines.append(f"expected latency: {report['expected_measured_ms']:.4f} ms vs "
                     f"{report['full_measured_ms']:.4f} ms without exits ({abs(cut):.1%} "
                     f"{'less' if cut >= 0 else 'more'}, measured segments)")
    lines += [f"artefact: {result.artefact} (+ {len(result.segments)} segments)",
              f"card:     {result.card_markdown}"]
    _print(result, as_json, lines)


def _ints(text: str, option: str) -> list[int]:
    return _numbers(text, option, int, "integers, e.g. 0,1,2")


def _floats(text: str, option: str) -> list[float]:
    return _numbers(text, option, float, "numbers, e.g. 0.9,0.8")


def _numbers(text: str, option: str, kind: Any, example: str) -> list[Any]:
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise OfaSearchError(f"{option} must be comma-separated {example}; got "
                             f"{text!r}") from None
