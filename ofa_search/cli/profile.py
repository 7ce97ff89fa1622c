"""``ofa-search profile``: measure a device's latency table, and its subcommands: ``tune``
a space's TVM workloads by shard, ``merge-db`` shard databases, ``pack-db`` a table's
database to ship beside it, ``import-ofa`` once-for-all's published Note10 tables."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ofa_search.atomic import check_writable_dir
from ofa_search.cli.options import (
    DEFAULT_SPACE,
    CudaGraphsOpt,
    JsonOpt,
    SpaceOpt,
    TorchDeviceOpt,
    TorchDtypeOpt,
    WorkspaceOpt,
    check_finite,
    target_json,
)
from ofa_search.errors import OfaSearchError
from ofa_search.profiling import DeviceProfile, TimingConfig
from ofa_search.profiling.device import check_new_device_id
from ofa_search.profiling.lut import LatencyTable, find_table, unit_agreement
from ofa_search.space import get_space
from ofa_search.workspace import check_device_id, check_workspace

app = typer.Typer()
profile_app = typer.Typer(help="Measure device latency tables (and tune, pack or import "
                          "them: see the subcommands).")


@profile_app.callback(invoke_without_command=True)
def profile_cmd(
    ctx: typer.Context,
    workspace: WorkspaceOpt,
    device: Annotated[str | None, typer.Option(
        "--device", "-d", help="device id, e.g. cpu-ort-1t")] = None,
    space: SpaceOpt = DEFAULT_SPACE,
    backend: Annotated[str, typer.Option(
        "--backend", help="onnxruntime, tvm or torch")] = "onnxruntime",
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
    torch_device: TorchDeviceOpt = None,
    torch_dtype: TorchDtypeOpt = None,
    cuda_graphs: CudaGraphsOpt = None,
) -> None:
    """Measure (or resume) WORKSPACE/hw_profiles/DEVICE.json on this host or an RPC device."""
    if ctx.invoked_subcommand is not None:
        return
    if device is None:
        raise typer.BadParameter("a device id is required, e.g. --device my-cpu",
                                 param_hint="--device")
    check_new_device_id(device)
    spec = get_space(space)
    _check_profile_options(spec, resolutions, width_mult, time_cap)
    torch_options = TorchOptions(torch_device, torch_dtype, cuda_graphs)
    profile = _profile_for(device, backend, threads, tuning_trials, tuning_db, rpc_tracker,
                           rpc_key, target, provider, torch_options)
    offered = spec.precisions
    if backend == "torch":  # it runs fp32 graphs only (not int8 QDQ nor binary kernels)
        offered = tuple(p for p in offered if p == "fp32")
    chosen = tuple(dict.fromkeys(precisions)) if precisions else offered
    unknown = [p for p in chosen if p not in offered]
    if unknown:
        where = f"space {space!r}" + (" with --backend torch" if backend == "torch" else "")
        raise typer.BadParameter(f"{where} offers precisions {list(offered)}, not "
                                 f"{unknown}", param_hint="--precision")
    profile = dataclasses.replace(profile, precisions=chosen, batch_size=batch_size)
    timing = TimingConfig(warmup=3, min_runs=7, max_runs=200, time_cap_s=time_cap)
    check_workspace(workspace, must_exist=False, writable=True)
    # deferred until the options are checked: bad input is refused without loading torch
    # (and each subcommand imports only the library parts it runs)
    from ofa_search.profiling.builder import build_table

    out = workspace / "hw_profiles" / f"{device}.json"
    table = build_table(space, profile, resolutions, out, width_mult=width_mult,
                        timing=timing, overhead_archs=overhead_archs, rounds=rounds)
    typer.echo(f"wrote {out}: {len(table.entries)} units, overhead {table.overhead_ms:.4f} ms")
    _report_agreement(table)


def _report_agreement(table: LatencyTable) -> None:
    """How well the units' rounds agreed; a warning on stderr when the host was busy."""
    agreement = unit_agreement(table)
    if agreement is None:
        return
    typer.echo(agreement.summary())
    warning = agreement.warning(table.device_id)
    if warning is not None:
        typer.echo(warning, err=True)


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


@dataclasses.dataclass(frozen=True)
class TorchOptions:
    """``profile``'s ``--backend torch`` options, ``None`` where not given."""

    device: str | None = None
    dtype: str | None = None
    cuda_graphs: bool | None = None

    def given(self) -> list[str]:
        """The options given on the command line, as their flags."""
        graphs = "--cuda-graphs" if self.cuda_graphs else "--no-cuda-graphs"
        flags = {"--torch-device": self.device, "--torch-dtype": self.dtype,
                 graphs: self.cuda_graphs}
        return [flag for flag, value in flags.items() if value is not None]


def _profile_for(device: str, backend: str, threads: int, tuning_trials: int,
                 tuning_db: Path | None, rpc_tracker: str | None, rpc_key: str | None,
                 target: str | None, provider: str | None = None,
                 torch_options: TorchOptions | None = None) -> Any:
    """The :class:`DeviceProfile` that ``profile``'s options describe."""
    try:
        return _make_profile(device, backend, threads, tuning_trials, tuning_db, rpc_tracker,
                             rpc_key, target, provider, torch_options or TorchOptions())
    except OfaSearchError:
        raise
    except ValueError as exc:  # DeviceProfile's own validation of the options
        raise OfaSearchError(f"invalid profile options: {exc}") from None


def _make_profile(device: str, backend: str, threads: int, tuning_trials: int,
                  tuning_db: Path | None, rpc_tracker: str | None, rpc_key: str | None,
                  target: str | None, provider: str | None,
                  torch_options: TorchOptions) -> Any:
    tvm_only = {"--tuning-trials": tuning_trials or None, "--tuning-db": tuning_db,
                "--rpc-tracker": rpc_tracker, "--rpc-key": rpc_key, "--target": target}
    if backend not in ("onnxruntime", "tvm", "torch"):
        raise typer.BadParameter(f"unknown backend {backend!r}; use onnxruntime, tvm or "
                                 "torch", param_hint="--backend")
    if backend != "torch" and torch_options.given():
        raise typer.BadParameter(f"{', '.join(torch_options.given())} apply to --backend "
                                 "torch only", param_hint="--backend")
    if backend in ("onnxruntime", "torch"):
        given = [name for name, value in tvm_only.items() if value is not None]
        if given:
            raise typer.BadParameter(f"{', '.join(given)} apply to --backend tvm only",
                                     param_hint="--backend")
    if backend == "onnxruntime":
        return DeviceProfile.local_onnxruntime(
            threads, id=device, execution_provider=provider or "CPUExecutionProvider")
    if provider is not None:
        raise typer.BadParameter("--provider applies to --backend onnxruntime only",
                                 param_hint="--backend")
    if backend == "torch":
        return _torch_profile(device, threads, torch_options)
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


def _torch_profile(device: str, threads: int, options: TorchOptions) -> Any:
    """A ``--backend torch`` profile; a device that this host cannot use is refused now,
    before anything is written."""
    # deferred: torch and the backend only for --backend torch
    from ofa_search.profiling.backends.torch_backend import resolve_device

    profile = DeviceProfile.local_torch(threads, device=options.device or "cpu",
                                        dtype=options.dtype or "fp32",
                                        cuda_graphs=bool(options.cuda_graphs), id=device)
    resolve_device(profile.torch_device, profile.id)
    return profile


def _echo(result: dict[str, Any], as_json: bool, text: str) -> None:
    typer.echo(json.dumps(result, indent=1) if as_json else text)


@profile_app.command("tune")
def tune_cmd(
    tuning_db: Annotated[Path, typer.Option(
        "--tuning-db", help="this shard's tuning database folder (created or resumed)")],
    tuning_trials: Annotated[int, typer.Option(
        "--tuning-trials", min=1, help="MetaSchedule trials per workload")],
    space: Annotated[str, typer.Option("--space", "-s")] = "mbv3_small28",
    resolutions: Annotated[list[int] | None, typer.Option(
        "--resolutions", "-r", help="repeat for several (default: all of the space's)")] = None,
    width_mult: Annotated[float | None, typer.Option("--width")] = None,
    threads: Annotated[int, typer.Option("--threads", min=1, max=1024)] = 1,
    shard: Annotated[str, typer.Option(
        "--shard", help="INDEX/COUNT: tune only this shard of the workloads")] = "1/1",
    target: Annotated[str | None, typer.Option(
        "--target", help="target as JSON (default: this host)")] = None,
    limit: Annotated[int | None, typer.Option(
        "--limit", min=1, help="tune at most this many workloads now")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Tune the TVM workloads of a space's fp32 units ahead of profiling, one shard per
    process or host; join the shards with `profile merge-db`, then profile with the joined
    database (nothing left to tune)."""
    # deferred: each command imports only the library parts it runs (CLI start-up)
    from ofa_search.profiling.tvm_space import Shard, tune_space

    try:
        part = Shard.parse(shard)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--shard") from exc
    check_writable_dir(tuning_db, "--tuning-db")
    profile = DeviceProfile.local_tvm(threads, tuning_trials=tuning_trials,
                                      tuning_db=tuning_db, id="tuning")
    if target is not None:
        profile = profile.replace(target=target_json(target))
    result = tune_space(space, profile, resolutions, width_mult=width_mult, shard=part,
                        limit=limit)
    _echo(result, as_json, f"shard {result['shard']}: {result['in_shard']} of "
          f"{result['workloads']} workloads, {result['already_tuned']} already tuned, "
          f"{result['tuned']} tuned now in {result['wall_s']:.0f} s -> {tuning_db}")


@profile_app.command("merge-db")
def merge_db_cmd(
    sources: Annotated[list[Path], typer.Argument(help="tuning database folders")],
    out: Annotated[Path, typer.Option("--out", "-o", help="the joined database folder")],
    as_json: JsonOpt = False,
) -> None:
    """Join tuning databases: the best record of every workload, in a new folder."""
    check_writable_dir(out, "--out")
    # deferred until the cheap checks pass: each command imports only the library parts it
    # runs (CLI start-up)
    from ofa_search.profiling.tvm_db import merge_databases

    result = merge_databases(sources, out)
    _echo(result, as_json, f"wrote {out}: {result['workloads']} workloads (best of "
          f"{result['records']} records)")


@profile_app.command("pack-db")
def pack_db_cmd(
    workspace: WorkspaceOpt,
    device: Annotated[str, typer.Option("--device", "-d", help="a tuned TVM table's id")],
    as_json: JsonOpt = False,
) -> None:
    """Pack a tuned TVM table's database beside it (tvm_db/DEVICE.tar.gz, best records
    only) and point the table at it, so that the table can be copied or committed with
    everything it needs."""
    check_device_id(device)
    check_workspace(workspace, must_exist=False)
    table = find_table(device, workspace=workspace)
    # deferred until the device is found: each command imports only the library parts it
    # runs (CLI start-up)
    from ofa_search.profiling.tvm_space import pack_table_database

    result = pack_table_database(table)
    _echo(result, as_json, f"wrote {result['archive']}: {result['workloads']} workloads, "
          f"{result['bytes'] / 1e6:.2f} MB (best of {result['records']} records); "
          f"{result['table']} now uses it")


@profile_app.command("import-ofa")
def import_ofa_cmd(
    workspace: WorkspaceOpt,
    source: Annotated[Path, typer.Argument(
        help="once-for-all's note10_lut_full.json ({resolution: {key: stats}})")],
    device: Annotated[str, typer.Option("--device", "-d")] = "note10-tflite",
    width_mult: Annotated[float, typer.Option("--width")] = 1.2,
    as_json: JsonOpt = False,
) -> None:
    """Import once-for-all's published Note10 latency tables as a device table of the
    ofa_mbv3 space (WORKSPACE/hw_profiles/DEVICE.json)."""
    check_new_device_id(device)
    check_workspace(workspace, must_exist=False, writable=True)
    if not source.is_file():
        raise OfaSearchError(f"no such file: {source}")
    # deferred until the cheap checks pass: each command imports only the library parts it
    # runs (CLI start-up)
    from ofa_search.profiling.ofa_import import import_note10

    table = import_note10(source, width_mult=width_mult, device_id=device)
    if not table.resolutions:
        raise OfaSearchError(f"{source}: no resolution of ofa_mbv3 at width {width_mult} is "
                             f"fully priced (missing keys: {table.meta['missing']})")
    out = workspace / "hw_profiles" / f"{device}.json"
    table.save(out)
    result = {"table": str(out), "space": table.space, "width_mult": table.width_mult,
              "resolutions": list(table.resolutions), "units": len(table.entries),
              "missing": table.meta["missing"]}
    note = "" if not table.meta["missing"] else (
        f"; resolutions {sorted(table.meta['missing'])} left out (keys missing)")
    _echo(result, as_json, f"wrote {out}: {len(table.entries)} units of {table.space} "
          f"w{table.width_mult} at {list(table.resolutions)}{note}")


app.add_typer(profile_app, name="profile")
