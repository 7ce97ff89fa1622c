"""``ofa-search devices``, ``check-device`` and ``latency``: the device tables."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ofa_search.arch import parse_arch
from ofa_search.cli.options import ArchArg, JsonOpt, WorkspaceOpt, emit_json, given
from ofa_search.errors import OfaSearchError
from ofa_search.profiling.lut import NOISY_SPREAD, find_table, list_tables, precision_mode
from ofa_search.workspace import Workspace, check_device_id, check_workspace, explicit_workspace

app = typer.Typer()


@app.command("devices")
def devices_cmd(ctx: typer.Context, workspace: WorkspaceOpt, as_json: JsonOpt = False) -> None:
    """Device latency tables visible from the workspace and the repository."""
    check_workspace(workspace, must_exist=explicit_workspace(given(ctx, "workspace")))
    infos = list_tables(workspace=workspace)
    if as_json:
        emit_json([info.to_dict() for info in infos])
        return
    width = max([20, *(len(info.device_id) for info in infos)])  # one column for every id
    for info in infos:
        if info.error:
            typer.echo(f"{info.device_id:<{width}} unreadable: {info.error}")
        else:
            state = "" if info.complete else "  (incomplete)"
            spread = "" if info.unit_spread is None else (
                f", spread {info.unit_spread:.1%}"
                + ("  (profiled on a busy host)" if info.unit_spread > NOISY_SPREAD else ""))
            typer.echo(f"{info.device_id:<{width}} {info.backend:<12} {info.space} "
                       f"w{info.width_mult} r{list(info.resolutions)} "
                       f"{info.entries} units{spread}{state}")


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
    modes: Annotated[list[str] | None, typer.Option(
        "--mode", help="precision modes to check, repeatable: fp32, int8, binary, mixed "
        "(default: every mode the table prices; each adds as many subnets as the fp32 "
        "references)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-time DEVICE's reference subnets here and report this host's speed against its
    table, per precision mode (drift beyond ±10 % is a warning)."""
    if rescale and clear:
        raise OfaSearchError("give --rescale or --clear, not both")
    check_device_id(device)
    check_workspace(workspace, must_exist=False, writable=rescale or clear)
    ws = Workspace(workspace)
    table = find_table(device, workspace=workspace)
    # deferred until the cheap checks pass: each command imports only the library parts it
    # runs (CLI start-up)
    from ofa_search.profiling.drift import check_drift, clear_scale, save_scale, table_modes

    if clear:
        removed = clear_scale(ws, device)
        typer.echo(f"{device}: stored ratio removed" if removed
                   else f"{device}: no stored ratio")
        return
    checked = tuple(modes) if modes else table_modes(table)
    if "int8" in table.precisions:
        import ofa_search.quant  # noqa: F401  (registers the timing of int8 subnets)
    binary = [m for m in checked if m in ("binary", "mixed")]
    if binary:
        from ofa_search.binary import tvm_available  # registers the timing of binary subnets

        # binary tables are profiled with TVM's kernels; NumPy's would read as a slow host
        if not tvm_available():
            if modes:
                raise OfaSearchError(f"checking {' and '.join(binary)} subnets needs TVM "
                                     "(the tvm extra), which is not installed here")
            checked = tuple(m for m in checked if m not in binary)
            typer.echo(f"note: {' and '.join(binary)} subnets not checked: TVM (the tvm "
                       "extra) is not installed here", err=True)
    report = check_drift(table, rounds=rounds, modes=checked)
    result = report.to_dict()
    if rescale:
        save_scale(ws, table, report)
        result["rescaled"] = True
    if as_json:
        emit_json(result)
        return
    typer.echo(report.summary())
    if rescale:
        per_mode = "".join(f", {m} subnets {d.ratio:.3f}x" for m, d in report.modes.items())
        typer.echo(f"{device}: predictions now apply {report.ratio:.3f}x{per_mode} "
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
    # deferred: each command imports only the library parts it runs (CLI start-up)
    from predictors.base import LATENCY_KINDS
    from predictors.calibration import (
        DEFAULT_CONFIDENCE,
        CalibrationError,
        check_confidence,
        load_interval_model,
    )

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
    # the predictors (torch, scikit-learn) only once the cheap checks have passed
    from ofa_search.profiling.drift import load_scale
    from ofa_search.profiling.lut import overhead_mode
    from predictors.latency import LearnedLatencyPredictor
    from predictors.loading import load_latency_predictor

    model, kind = load_latency_predictor(ws, device, predictor)
    stored = load_scale(ws, table)
    scale = 1.0 if stored is None else stored.for_modes((overhead_mode(parsed),))
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
        # deferred: the backends only with --measure
        from ofa_search.profiling.backends import get_backend
        from ofa_search.profiling.measure import FAST_TIMING, measure_arch

        profile = table.measurable_profile()
        with get_backend(profile, timing=FAST_TIMING) as backend:
            result["measured_ms"] = measure_arch(backend, parsed, profile.batch_size,
                                                 profile).median_ms
    if as_json:
        emit_json(result)
    else:
        typer.echo("  ".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}"
                             for k, v in result.items()))
