"""``ofa-search``: a thin command line over the library.

Every input error (an :class:`~ofa_search.errors.OfaSearchError`) ends the program with
exit code 2 and one line on stderr, never a traceback.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ofa_search.cli_profile import target_json
from ofa_search.errors import OfaSearchError
from ofa_search.workspace import (
    check_device_id,
    check_workspace,
    default_workspace_dir,
    explicit_workspace,
)

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Hardware-aware NAS: once-for-all supernets, device tables, search.")
space_app = typer.Typer(no_args_is_help=True, help="Search-space presets.")
arch_app = typer.Typer(no_args_is_help=True, help="Inspect, sample and export architectures.")
app.add_typer(space_app, name="space")
app.add_typer(arch_app, name="arch")

SpaceOpt = Annotated[str, typer.Option("--space", "-s", help="search-space preset name")]
DEFAULT_SPACE = "mbv3_small28"
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]
CalibImagesOpt = Annotated[int, typer.Option(
    "--calib-images", min=1, help="ImageNet: recalibrate BN on at most N random train images "
    "(once-for-all uses 2000)")]
MaxEvalImagesOpt = Annotated[int, typer.Option(
    "--max-eval-images", min=1, help="ImageNet: measure accuracy on at most N random val "
    "images (reported with the result)")]
ArchArg = Annotated[str, typer.Argument(
    help="compact arch string, JSON of Arch.to_dict, or once-for-all's {ks,e,d,r} dict")]


def default_workspace() -> Path:
    return default_workspace_dir()


WorkspaceOpt = Annotated[Path, typer.Option(
    "--workspace", "-w", help="workspace folder (default ./ofa-workspace or "
    "$OFA_SEARCH_WORKSPACE)", default_factory=default_workspace)]


def _emit_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=1))


TRAIN_STRATEGIES = ("ps", "sandwich", "spos", "precision")
"""The strategies ``train --strategy`` offers (``standalone`` is the library's only: it
needs an arch)."""

_DEVICE_SLUG = "lower-case letters, digits, '.', '_' and '-', starting with a letter or " \
    "digit, at most 64 characters"


def check_new_device_id(device: str, option: str = "--device") -> str:
    """The id of a table about to be written: a slug (what :class:`DeviceProfile` needs),
    refused before any work otherwise."""
    from ofa_search.profiling.device import _ID_RE

    if not _ID_RE.fullmatch(device) or len(device) > 64:
        raise OfaSearchError(f"{option} {device!r} is not a valid device id: use {_DEVICE_SLUG}, "
                             "e.g. my-cpu")
    return device


def check_finite(value: float | None, option: str, *, positive: bool = True) -> None:
    """Refuse NaN, infinities and (with ``positive``) values <= 0 of a float option."""
    if value is None:
        return
    if not math.isfinite(value) or (positive and not value > 0):
        raise OfaSearchError(f"{option} must be a finite number{' > 0' if positive else ''}, "
                             f"got {value!r}")


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was given on the command line (not defaulted)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


# -- space -------------------------------------------------------------------------------
@space_app.command("list")
def space_list() -> None:
    """One preset name per line."""
    from ofa_search.space import list_spaces

    for name in list_spaces():
        typer.echo(name)


@space_app.command("show")
def space_show(name: Annotated[str, typer.Argument(help="preset name")],
               as_json: JsonOpt = False) -> None:
    """Choices, structure and size of a preset."""
    from ofa_search.space import get_space

    info = get_space(name).summary()
    if as_json:
        _emit_json(info)
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
                seed: Annotated[int, typer.Option("--seed", min=0, max=2**32 - 1)] = 0) -> None:
    """N seeded random archs, one compact string per line."""
    import numpy as np

    from ofa_search.arch import Arch

    rng = np.random.default_rng(seed)
    for _ in range(n):
        typer.echo(Arch.sample(space, rng).to_string())


@arch_app.command("info")
def arch_info(arch: ArchArg, space: SpaceOpt, as_json: JsonOpt = False,
              precision_summary: Annotated[bool, typer.Option(
                  "--precision-summary", help="per-layer precision, weights by bit width, "
                  "memory and MACs by precision (as Larq's summary)")] = False) -> None:
    """Resolution, depths, MACs, params and a per-block table."""
    from ofa_search.arch import parse_arch
    from ofa_search.report import arch_report, format_arch_report

    if precision_summary:
        from ofa_search.precision_summary import format_precision_summary
        from ofa_search.precision_summary import precision_summary as summarize

        summary = summarize(parse_arch(arch, space))
        if as_json:
            _emit_json(summary)
        else:
            typer.echo(format_precision_summary(summary))
        return
    report = arch_report(parse_arch(arch, space))
    if as_json:
        _emit_json(report)
    else:
        typer.echo(format_arch_report(report))


@arch_app.command("export")
def arch_export(arch: ArchArg, space: SpaceOpt,
                out: Annotated[Path, typer.Option("--out", "-o", help="FILE.onnx")],
                seed: Annotated[int, typer.Option("--seed", min=0, max=2**32 - 1)] = 0) -> None:
    """Export a randomly initialised static subnet to ONNX (for latency work)."""
    import torch

    from ofa_search.arch import parse_arch
    from ofa_search.atomic import check_writable_file
    from ofa_search.nn import build_static
    from ofa_search.onnx_export import export_onnx, save_onnx

    parsed = parse_arch(arch, space)
    check_writable_file(out, "--out")
    net = build_static(parsed, torch.Generator().manual_seed(seed))
    model = export_onnx(net, net.input_shape())
    save_onnx(model, out)
    typer.echo(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, input {net.input_shape()})")


@app.command("demo")
def demo(workspace: WorkspaceOpt,
         space: Annotated[str, typer.Option("--space", "-s")] = "mbv3_small28",
         seed: Annotated[int, typer.Option("--seed", min=0, max=2**32 - 1)] = 0,
         epochs: Annotated[int, typer.Option("--epochs", min=1)] = 6,
         n_archs: Annotated[int, typer.Option(
             "--n-archs", min=10, help="subnets evaluated for the accuracy predictor")] = 150,
         n_latency: Annotated[int, typer.Option(
             "--n-latency", min=5, help="end-to-end latency measurements")] = 40,
         resolutions: Annotated[list[int] | None, typer.Option(
             "--resolutions", "-r", help="profile only these (default: all)")] = None,
         quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
         ) -> None:
    """The main job on digits: train, profile, fit, front, three queries, export, plot."""
    from ofa_search.demo import run_demo

    check_workspace(workspace, must_exist=False, writable=True)
    run_demo(workspace, space=space, seed=seed, epochs=epochs, n_archs=n_archs,
             n_latency=n_latency, resolutions=resolutions, echo=typer.echo,
             progress=not quiet)


# -- train / eval ------------------------------------------------------------------------
@app.command("train")
def train_cmd(
    space: SpaceOpt = DEFAULT_SPACE,
    data: Annotated[str, typer.Option("--data", "-d", help="dataset name")] = "digits",
    strategy: Annotated[str, typer.Option(
        "--strategy", help="ps, sandwich, spos, or precision (int8/binary fine-tuning of a "
        "trained supernet given by --init)")] = "sandwich",
    epochs: Annotated[int, typer.Option("--epochs", min=1,
                                        help="epochs (ps, precision: per phase)")] = 5,
    out: Annotated[Path, typer.Option("--out", "-o", help="run folder")] = Path(
        "ofa-workspace/supernet"),
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    lr: Annotated[float, typer.Option("--lr")] = 0.05,
    warmup_epochs: Annotated[int, typer.Option("--warmup-epochs", min=0)] = 0,
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, max=2**32 - 1)] = 0,
    threads: Annotated[int | None, typer.Option("--threads", min=1, max=1024,
                                                help="torch intra-op threads")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue OUT/checkpoint.pt")] = False,
    init: Annotated[Path | None, typer.Option(
        "--init", help="start from this checkpoint's weights (e.g. an fp32 supernet of the "
        "same structure for --strategy precision)")] = None,
    steps_per_epoch: Annotated[int | None, typer.Option(
        "--steps-per-epoch", min=1, help="cap on optimizer steps per epoch (default: one "
        "pass over the train split)")] = None,
    resolutions: Annotated[list[int] | None, typer.Option(
        "--resolutions", "-r", help="sample only these resolutions (repeat for several; "
        "default: all of the space's)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Train a supernet (under torchrun for several processes); writes OUT/checkpoint.pt."""
    from ofa_search.train import TrainConfig, train

    if strategy not in TRAIN_STRATEGIES:
        raise OfaSearchError(f"--strategy must be one of {', '.join(TRAIN_STRATEGIES)}, got "
                             f"{strategy!r}")
    check_finite(lr, "--lr")
    if resolutions:
        from ofa_search.space import get_space

        offered = get_space(space).resolutions
        bad = sorted({r for r in resolutions if r not in offered})
        if bad:
            raise OfaSearchError(f"--resolutions: space {space!r} has resolutions "
                                 f"{list(offered)}, not {bad}")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    config = TrainConfig(space=space, dataset=data, data_dir=None if data_dir is None
                         else str(data_dir), strategy=strategy, epochs=epochs,
                         batch_size=batch_size, lr=lr, warmup_epochs=warmup_epochs, seed=seed,
                         out_dir=str(out), resume=resume, quiet=quiet,
                         init_checkpoint=None if init is None else str(init),
                         steps_per_epoch=steps_per_epoch,
                         resolutions=tuple(dict.fromkeys(resolutions)) if resolutions else None)
    path = train(config)
    if not quiet:
        typer.echo(f"wrote {path}")


@app.command("eval")
def eval_cmd(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="checkpoint.pt")],
    arch: Annotated[str, typer.Option("--arch", help="arch string or JSON (its space is the "
                                      "checkpoint's)")],
    data: Annotated[str | None, typer.Option("--data", "-d",
                                             help="dataset (default: the training one)")] = None,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="the dataset's folder; ImageNet supernets (imported from "
        "once-for-all) need an ImageNet-layout folder DIR/train/<wnid>/…, "
        "DIR/val/<wnid>/…")] = None,
    split: Annotated[str, typer.Option("--split", help="val or test (ImageNet: its val/ "
                                       "folder either way)")] = "test",
    calib_images: CalibImagesOpt = 2000,
    max_eval_images: MaxEvalImagesOpt = 10_000,
    as_json: JsonOpt = False,
) -> None:
    """Accuracy of one subnet of a trained supernet, after BN recalibration."""
    from ofa_search.arch import parse_arch
    from ofa_search.data import is_streamed_dataset, load_dataset, open_image_stream
    from ofa_search.train import evaluate_arch, evaluate_arch_stream, load_supernet

    if split not in ("val", "test"):
        raise OfaSearchError(f"--split must be val or test, got {split!r}")
    net, meta = load_supernet(checkpoint)
    parsed = parse_arch(arch, meta["space"])
    config = meta.get("config") or {}
    name = data or config["dataset"]
    samples: int | None = None
    if is_streamed_dataset(name):
        folder = data_dir if data_dir is not None else config.get("data_dir")
        scored = evaluate_arch_stream(
            net, parsed, open_image_stream(folder, parsed.resolution, name=name),
            calib_images=calib_images, max_eval_images=max_eval_images, progress=True)
        accuracy, samples, split = scored.accuracy, scored.eval_images, "val"
    else:
        dataset = load_dataset(name, data_dir=data_dir, in_channels=net.space.in_channels,
                               resolution=parsed.resolution)
        accuracy = evaluate_arch(net, parsed, dataset, split=split)
    result = {"arch": parsed.to_string(), "dataset": name, "split": split,
              "accuracy": accuracy, "checkpoint": str(checkpoint), "epoch": meta["epoch"]}
    if samples is not None:
        result["samples"] = samples
    if as_json:
        _emit_json(result)
    else:
        typer.echo(f"{parsed.to_string()}: {split} accuracy {accuracy:.4f} on {name}"
                   + ("" if samples is None else f" ({samples} images)"))


# -- device latency tables -----------------------------------------------------------------
profile_app = typer.Typer(help="Measure device latency tables (and tune, pack or import "
                          "them: see the subcommands).")
app.add_typer(profile_app, name="profile")


@profile_app.callback(invoke_without_command=True)
def profile_cmd(
    ctx: typer.Context,
    workspace: WorkspaceOpt,
    device: Annotated[str | None, typer.Option(
        "--device", "-d", help="device id, e.g. cpu-ort-1t")] = None,
    space: SpaceOpt = DEFAULT_SPACE,
    backend: Annotated[str, typer.Option("--backend", help="onnxruntime or tvm")] = "onnxruntime",
    threads: Annotated[int, typer.Option("--threads", min=1, max=1024)] = 1,
    resolutions: Annotated[list[int] | None, typer.Option(
        "--resolutions", "-r", help="repeat for several (default: all of the space's)")] = None,
    width_mult: Annotated[float | None, typer.Option("--width")] = None,
    time_cap: Annotated[float, typer.Option("--time-cap", help="seconds per unit")] = 0.5,
    overhead_archs: Annotated[int, typer.Option("--overhead-archs", min=0)] = 10,
    precisions: Annotated[list[str] | None, typer.Option(
        "--precision", "-p", help="repeat for several (default: all that the space offers; "
        "int8 and binary units are measured as export emits them)")] = None,
    rounds: Annotated[int, typer.Option(
        "--rounds", min=1, help="interleaved measurements per unit (median kept)")] = 3,
    tuning_trials: Annotated[int, typer.Option(
        "--tuning-trials", min=0, help="tvm: MetaSchedule trials per new workload")] = 0,
    tuning_db: Annotated[Path | None, typer.Option(
        "--tuning-db", help="tvm: tuning database folder, reused across runs")] = None,
    rpc_tracker: Annotated[str | None, typer.Option(
        "--rpc-tracker", help="tvm: HOST:PORT of the RPC tracker of a remote device")] = None,
    rpc_key: Annotated[str | None, typer.Option(
        "--rpc-key", help="tvm: the remote device's key at the tracker")] = None,
    target: Annotated[str | None, typer.Option(
        "--target", help='tvm: target as JSON, e.g. \'{"kind": "llvm", "mcpu": '
        '"cortex-a72", "mtriple": "aarch64-linux-gnu"}\' (default: this host)')] = None,
    provider: Annotated[str | None, typer.Option(
        "--provider", help="onnxruntime: execution provider, e.g. CUDAExecutionProvider "
        "(default: CPUExecutionProvider)")] = None,
    batch_size: Annotated[int, typer.Option(
        "--batch-size", min=1, help="batch of every measured input")] = 1,
) -> None:
    """Measure (or resume) WORKSPACE/hw_profiles/DEVICE.json on this host or an RPC device."""
    import dataclasses

    from ofa_search.profiling import TimingConfig
    from ofa_search.profiling.builder import build_table
    from ofa_search.space import get_space

    if ctx.invoked_subcommand is not None:
        return
    if device is None:
        raise typer.BadParameter("a device id is required, e.g. --device my-cpu",
                                 param_hint="--device")
    check_new_device_id(device)
    spec = get_space(space)
    _check_profile_options(spec, resolutions, width_mult, time_cap)
    profile = _profile_for(device, backend, threads, tuning_trials, tuning_db, rpc_tracker,
                           rpc_key, target, provider)
    offered = spec.precisions
    chosen = tuple(dict.fromkeys(precisions)) if precisions else offered
    unknown = [p for p in chosen if p not in offered]
    if unknown:
        raise typer.BadParameter(f"space {space!r} offers precisions {list(offered)}, not "
                                 f"{unknown}", param_hint="--precision")
    profile = dataclasses.replace(profile, precisions=chosen, batch_size=batch_size)
    timing = TimingConfig(warmup=3, min_runs=7, max_runs=200, time_cap_s=time_cap)
    check_workspace(workspace, must_exist=False, writable=True)
    out = workspace / "hw_profiles" / f"{device}.json"
    table = build_table(space, profile, resolutions, out, width_mult=width_mult,
                        timing=timing, overhead_archs=overhead_archs, rounds=rounds)
    typer.echo(f"wrote {out}: {len(table.entries)} units, overhead {table.overhead_ms:.4f} ms")


def _check_profile_options(spec: Any, resolutions: list[int] | None,
                           width_mult: float | None, time_cap: float) -> None:
    """``profile``'s options against the space, before any work."""
    bad = sorted({r for r in resolutions or () if r not in spec.resolutions})
    if bad:
        raise OfaSearchError(f"--resolutions: space {spec.name!r} has resolutions "
                             f"{list(spec.resolutions)}, not {bad}")
    if width_mult is not None and width_mult not in spec.width_mults:
        raise OfaSearchError(f"--width: space {spec.name!r} has widths {list(spec.width_mults)}, "
                             f"not {width_mult!r}")
    check_finite(time_cap, "--time-cap")


def _profile_for(device: str, backend: str, threads: int, tuning_trials: int,
                 tuning_db: Path | None, rpc_tracker: str | None, rpc_key: str | None,
                 target: str | None, provider: str | None = None) -> Any:
    """The :class:`DeviceProfile` that ``profile``'s options describe."""
    try:
        return _make_profile(device, backend, threads, tuning_trials, tuning_db, rpc_tracker,
                             rpc_key, target, provider)
    except OfaSearchError:
        raise
    except ValueError as exc:  # DeviceProfile's own validation of the options
        raise OfaSearchError(f"invalid profile options: {exc}") from None


def _make_profile(device: str, backend: str, threads: int, tuning_trials: int,
                  tuning_db: Path | None, rpc_tracker: str | None, rpc_key: str | None,
                  target: str | None, provider: str | None) -> Any:
    from ofa_search.profiling import DeviceProfile

    tvm_only = {"--tuning-trials": tuning_trials or None, "--tuning-db": tuning_db,
                "--rpc-tracker": rpc_tracker, "--rpc-key": rpc_key, "--target": target}
    if backend == "onnxruntime":
        given = [name for name, value in tvm_only.items() if value is not None]
        if given:
            raise typer.BadParameter(f"{', '.join(given)} apply to --backend tvm only",
                                     param_hint="--backend")
        return DeviceProfile.local_onnxruntime(
            threads, id=device, execution_provider=provider or "CPUExecutionProvider")
    if backend != "tvm":
        raise typer.BadParameter(f"unknown backend {backend!r}; use onnxruntime or tvm",
                                 param_hint="--backend")
    if provider is not None:
        raise typer.BadParameter("--provider applies to --backend onnxruntime only",
                                 param_hint="--backend")
    if (rpc_tracker is None) != (rpc_key is None):
        raise typer.BadParameter("a remote device needs both --rpc-tracker and --rpc-key",
                                 param_hint="--rpc-tracker")
    if tuning_db is not None:  # the table records it: relative to here, not to the table
        tuning_db = tuning_db.resolve()
    if rpc_tracker is None:
        profile = DeviceProfile.local_tvm(threads, tuning_trials=tuning_trials,
                                          tuning_db=tuning_db, id=device)
        return profile if target is None else profile.replace(target=target_json(target))
    if target is None:
        raise typer.BadParameter("a remote device needs --target (its CPU is not this "
                                 "host's)", param_hint="--target")
    assert rpc_key is not None
    return DeviceProfile.remote_tvm(id=device, tracker=rpc_tracker, key=rpc_key,
                                    target=target_json(target), threads=threads,
                                    tuning_trials=tuning_trials, tuning_db=tuning_db)


@app.command("devices")
def devices_cmd(ctx: typer.Context, workspace: WorkspaceOpt, as_json: JsonOpt = False) -> None:
    """Device latency tables visible from the workspace and the repository."""
    from ofa_search.profiling.lut import list_tables

    check_workspace(workspace, must_exist=explicit_workspace(_given(ctx, "workspace")))
    infos = list_tables(workspace=workspace)
    if as_json:
        _emit_json([info.to_dict() for info in infos])
        return
    for info in infos:
        if info.error:
            typer.echo(f"{info.device_id:<20} unreadable: {info.error}")
        else:
            state = "" if info.complete else "  (incomplete)"
            typer.echo(f"{info.device_id:<20} {info.backend:<12} {info.space} "
                       f"w{info.width_mult} r{list(info.resolutions)} "
                       f"{info.entries} units{state}")


@app.command("check-device")
def check_device_cmd(
    workspace: WorkspaceOpt,
    device: Annotated[str, typer.Option("--device", "-d", help="device id")],
    rounds: Annotated[int, typer.Option("--rounds", min=1,
                                        help="interleaved rounds per subnet")] = 5,
    rescale: Annotated[bool, typer.Option(
        "--rescale", help="store the measured ratio: the device's predictions then apply "
        "it (recorded in every answer)")] = False,
    clear: Annotated[bool, typer.Option("--clear", help="remove a stored ratio")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Re-time DEVICE's reference subnets here and report this host's speed against its
    table (drift beyond ±10 % is a warning)."""
    from ofa_search.profiling.drift import check_drift, clear_scale, save_scale
    from ofa_search.profiling.lut import find_table
    from ofa_search.workspace import Workspace

    if rescale and clear:
        raise OfaSearchError("give --rescale or --clear, not both")
    check_device_id(device)
    check_workspace(workspace, must_exist=False, writable=rescale or clear)
    ws = Workspace(workspace)
    table = find_table(device, workspace=workspace)
    if clear:
        removed = clear_scale(ws, device)
        typer.echo(f"{device}: stored ratio removed" if removed
                   else f"{device}: no stored ratio")
        return
    report = check_drift(table, rounds=rounds)
    result = report.to_dict()
    if rescale:
        save_scale(ws, table, report)
        result["rescaled"] = True
    if as_json:
        _emit_json(result)
        return
    typer.echo(report.summary())
    if rescale:
        typer.echo(f"{device}: predictions now apply {report.ratio:.3f}x "
                   f"(`ofa-search check-device --device {device} --clear` removes it)")


@app.command("latency")
def latency_cmd(
    workspace: WorkspaceOpt,
    arch: ArchArg,
    device: Annotated[str, typer.Option("--device", "-d")],
    space: Annotated[str | None, typer.Option(
        "--space", "-s", help="default: the table's space")] = None,
    predictor: Annotated[str | None, typer.Option(
        "--predictor", help="lut or learned (default: learned when fitted, else lut)")] = None,
    measure: Annotated[bool, typer.Option("--measure", help="also measure it end to end")] = False,
    confidence: Annotated[float | None, typer.Option(
        "--confidence", help="also give the calibrated upper bound at this confidence "
        "(default 0.9 where the device is calibrated)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Predicted latency of ARCH on DEVICE, its calibrated upper bound, and (with
    --measure) the measured one."""
    from ofa_search.arch import parse_arch
    from ofa_search.profiling.drift import load_scale
    from ofa_search.profiling.lut import find_table, precision_mode
    from ofa_search.workspace import Workspace
    from predictors.calibration import (
        DEFAULT_CONFIDENCE,
        CalibrationError,
        check_confidence,
        load_interval_model,
    )
    from predictors.latency import LearnedLatencyPredictor
    from predictors.loading import LATENCY_KINDS, load_latency_predictor

    if predictor is not None and predictor not in LATENCY_KINDS:
        raise OfaSearchError(f"--predictor must be one of {', '.join(LATENCY_KINDS)}, got "
                             f"{predictor!r}")
    if confidence is not None:
        check_confidence(confidence)
    check_device_id(device)
    check_workspace(workspace, must_exist=False)
    ws = Workspace(workspace)
    table = find_table(device, workspace=workspace)
    parsed = parse_arch(arch, space or table.space)
    model, kind = load_latency_predictor(ws, device, predictor)
    stored = load_scale(ws, table)
    scale = 1.0 if stored is None else stored.scale
    result: dict[str, Any] = {"device": device, "arch": parsed.to_string(), "predictor": kind,
                              "predicted_ms": scale * float(model.predict([parsed])[0])}
    if isinstance(model, LearnedLatencyPredictor):
        result["predicted_std_ms"] = scale * float(model.predict_std([parsed])[0])
    intervals = load_interval_model(ws, table, kind, model.identity())
    try:
        if intervals is None:
            raise CalibrationError(f"device {device!r} has no calibration data for its {kind} "
                                   f"latency predictor; measure it with `ofa-search "
                                   f"fit-predictors --device {device} --skip-accuracy`")
        level = DEFAULT_CONFIDENCE if confidence is None else confidence
        factor = intervals.factor(precision_mode(parsed), level)
        result.update(upper_ms=result["predicted_ms"] * factor, confidence=level)
    except CalibrationError:
        if confidence is not None:
            raise
    if scale != 1.0:
        result["latency_scale"] = scale
    if measure:
        from ofa_search.profiling.backends import get_backend
        from ofa_search.profiling.measure import FAST_TIMING, measure_arch

        profile = table.profile()
        if profile is None:
            raise OfaSearchError(f"device {device!r} is an imported table; it cannot be "
                                 "measured from this host")
        with get_backend(profile, timing=FAST_TIMING) as backend:
            result["measured_ms"] = measure_arch(backend, parsed, profile.batch_size,
                                                 profile).median_ms
    if as_json:
        _emit_json(result)
    else:
        typer.echo("  ".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}"
                             for k, v in result.items()))


# -- commands of the other parts, each in its own module -----------------------------------
def _register_parts() -> None:
    from ofa_search import (
        cli_interop,
        cli_predictors,
        cli_profile,
        cli_run,
        cli_search,
        cli_service,
    )

    for part in (cli_interop, cli_predictors, cli_run, cli_search, cli_service):
        part.register(app)
    cli_profile.register(profile_app)


_register_parts()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: input errors become one line and exit code 2."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own progress is enough
    try:
        app(args=argv, standalone_mode=False)
    except OfaSearchError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as exc:
        # usage errors of the click that typer bundles (typer no longer exposes it publicly)
        show, code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            sys.exit(code)
        raise


if __name__ == "__main__":
    main()
