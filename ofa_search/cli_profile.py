"""Subcommands of ``ofa-search profile`` (registered by :mod:`ofa_search.cli`): ``tune`` a
space's TVM workloads by shard, ``merge-db`` shard databases, ``pack-db`` a table's
database to ship beside it, ``import-ofa`` once-for-all's published Note10 tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ofa_search.errors import OfaSearchError
from ofa_search.workspace import check_device_id, check_workspace, default_workspace_dir

# the same options as ofa_search.cli's (not imported from there: cli imports this module)
WorkspaceOpt = Annotated[Path, typer.Option(
    "--workspace", "-w", help="workspace folder (default ./ofa-workspace or "
    "$OFA_SEARCH_WORKSPACE)", default_factory=default_workspace_dir)]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON")]


def _echo(result: dict[str, Any], as_json: bool, text: str) -> None:
    typer.echo(json.dumps(result, indent=1) if as_json else text)


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
    from ofa_search.atomic import check_writable_dir
    from ofa_search.profiling import DeviceProfile
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


def merge_db_cmd(
    sources: Annotated[list[Path], typer.Argument(help="tuning database folders")],
    out: Annotated[Path, typer.Option("--out", "-o", help="the joined database folder")],
    as_json: JsonOpt = False,
) -> None:
    """Join tuning databases: the best record of every workload, in a new folder."""
    from ofa_search.atomic import check_writable_dir
    from ofa_search.profiling.tvm_db import merge_databases

    check_writable_dir(out, "--out")
    result = merge_databases(sources, out)
    _echo(result, as_json, f"wrote {out}: {result['workloads']} workloads (best of "
          f"{result['records']} records)")


def pack_db_cmd(
    workspace: WorkspaceOpt,
    device: Annotated[str, typer.Option("--device", "-d", help="a tuned TVM table's id")],
    as_json: JsonOpt = False,
) -> None:
    """Pack a tuned TVM table's database beside it (tvm_db/DEVICE.tar.gz, best records
    only) and point the table at it, so that the table can be copied or committed with
    everything it needs."""
    from ofa_search.profiling.lut import find_table
    from ofa_search.profiling.tvm_db import pack_table_database

    check_device_id(device)
    check_workspace(workspace, must_exist=False)
    table = find_table(device, workspace=workspace)
    result = pack_table_database(table)
    _echo(result, as_json, f"wrote {result['archive']}: {result['workloads']} workloads, "
          f"{result['bytes'] / 1e6:.2f} MB (best of {result['records']} records); "
          f"{result['table']} now uses it")


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
    from ofa_search.cli import check_new_device_id
    from ofa_search.profiling.ofa_import import import_note10

    check_new_device_id(device)
    check_workspace(workspace, must_exist=False, writable=True)
    if not source.is_file():
        raise OfaSearchError(f"no such file: {source}")
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


def register(profile_app: typer.Typer) -> None:
    """Add the subcommands to ``ofa-search profile``."""
    profile_app.command("tune")(tune_cmd)
    profile_app.command("merge-db")(merge_db_cmd)
    profile_app.command("pack-db")(pack_db_cmd)
    profile_app.command("import-ofa")(import_ofa_cmd)
