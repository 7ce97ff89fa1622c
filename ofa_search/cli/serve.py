"""``ofa-search serve``: the HTTP service (:mod:`ofa_search.service`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ofa_search.cli.options import WorkspaceOpt
from ofa_search.errors import OfaSearchError
from ofa_search.extras import require
from ofa_search.workspace import check_workspace


def read_api_key(env_var: str | None, key_file: Path | None) -> str | None:
    """The API key: from ``key_file`` (first line), else ``$env_var``, else
    ``$OFA_SEARCH_API_KEY`` when set, else none (mutating routes are then open)."""
    # deferred: service.app imports FastAPI (the serve extra)
    from ofa_search.service.app import API_KEY_ENV

    if env_var is not None and key_file is not None:
        raise OfaSearchError("give --api-key-env or --api-key-file, not both")
    if key_file is not None:
        try:
            lines = key_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise OfaSearchError(f"cannot read API key file {key_file}: {exc}") from None
        key = lines[0].strip() if lines else ""
        if not key:
            raise OfaSearchError(f"API key file {key_file} is empty")
        warn_if_world_readable(key_file)
        return key
    if env_var is not None:
        key = os.environ.get(env_var, "")
        if not key:
            raise OfaSearchError(f"environment variable {env_var} (--api-key-env) is unset "
                                 "or empty")
        return key
    return os.environ.get(API_KEY_ENV) or None


def warn_if_world_readable(key_file: Path) -> bool:
    """Print a warning (stderr) when others may read ``key_file``; whether it did."""
    try:
        mode = key_file.stat().st_mode
    except OSError:
        return False
    if not mode & 0o004:
        return False
    typer.echo(f"warning: API key file {key_file} is readable by every user (mode "
               f"{mode & 0o777:o}); restrict it with `chmod 600 {key_file}`", err=True)
    return True


def parse_rate_limit(value: str) -> str | None:
    """``--rate-limit``: ``off`` (None) or a limit like ``100/second``; one line if bad."""
    if value.strip().lower() in ("off", "none", "0"):
        return None
    # deferred: service.app imports FastAPI (the serve extra)
    from ofa_search.service.app import RateLimit

    try:
        RateLimit(value)
    except ValueError as exc:
        raise OfaSearchError(f"--rate-limit: {exc}, or 'off'") from None
    return value


app = typer.Typer()


@app.command("serve")
def serve_cmd(
    workspace: WorkspaceOpt,
    host: Annotated[str, typer.Option("--host", help="bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535)] = 8000,
    api_key_env: Annotated[str | None, typer.Option(
        "--api-key-env", help="environment variable holding the API key (default: "
        "OFA_SEARCH_API_KEY when set)")] = None,
    api_key_file: Annotated[Path | None, typer.Option(
        "--api-key-file", help="file whose first line is the API key")] = None,
    export_workers: Annotated[int, typer.Option("--export-workers", min=1)] = 1,
    max_pending: Annotated[int, typer.Option("--max-pending-exports", min=0)] = 8,
    threads: Annotated[int, typer.Option("--threads", min=1, max=1024,
                                         help="torch intra-op threads")] = 1,
    log_level: Annotated[str, typer.Option("--log-level")] = "warning",
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="dataset folder that exports recalibrate BN on (an "
        "ImageNet-layout folder for a supernet imported from once-for-all)")] = None,
    api_key_all: Annotated[bool, typer.Option(
        "--api-key-all", help="require the API key on every route (reading ones, "
        "/healthz and /openapi.json too; /docs is then off)")] = False,
    rate_limit: Annotated[str, typer.Option(
        "--rate-limit", help="requests per client address, e.g. 100/second or "
        "20/second;1000/minute ('off': no limit; /healthz is exempt)")] = "100/second",
    request_timeout: Annotated[float, typer.Option(
        "--request-timeout", min=0.0, help="seconds a request may take before its "
        "answer starts (503 beyond; 0: no limit)")] = 30.0,
    cold_queries: Annotated[str, typer.Option(
        "--cold-queries", help="queries that need a search (no saved front covers "
        "them): refuse (409, with how to build the front) or queue (202 and a job "
        "at /queries/{id}, run in a bounded pool)")] = "refuse",
    cold_workers: Annotated[int, typer.Option(
        "--cold-workers", min=1, help="queued cold queries searched at once")] = 1,
    max_pending_cold: Annotated[int, typer.Option(
        "--max-pending-cold", min=0, help="cold queries waiting beyond those (429 "
        "beyond)")] = 4,
    health_port: Annotated[int | None, typer.Option(
        "--health-port", min=0, max=65535, help="also answer GET /healthz on this port, "
        "from a thread that does not wait behind queries (503 when the event loop "
        "stalls); for liveness probes under load")] = None,
) -> None:
    """Serve query and export over HTTP (OpenAPI docs at /docs)."""
    import torch  # deferred: each command imports only the library parts it runs (CLI start-up)

    for module in ("fastapi", "uvicorn", "limits"):
        require(module, "serve", "ofa-search serve")
    # deferred: the serve extra, once require() has checked it
    import uvicorn

    from ofa_search.service.app import create_app

    check_workspace(workspace)  # a file or a missing folder: one line, exit 2
    key = read_api_key(api_key_env, api_key_file)
    torch.set_num_threads(threads)
    if key is None and host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"warning: serving on {host} without an API key: anyone who can reach "
                   "it can start exports", err=True)
    # deferred: the service package (serve extra) loads with the command
    from ofa_search.service.queries import COLD_POLICIES

    if cold_queries not in COLD_POLICIES:
        raise OfaSearchError(f"--cold-queries must be one of {', '.join(COLD_POLICIES)}, "
                             f"got {cold_queries!r}")
    if api_key_all and key is None:
        raise OfaSearchError("--api-key-all needs an API key (--api-key-file, "
                             "--api-key-env or $OFA_SEARCH_API_KEY)")
    limit = parse_rate_limit(rate_limit)
    health = None
    if health_port is not None:
        from ofa_search.service.health import HealthListener  # deferred: only with --health-port

        if health_port == port and port != 0:
            raise OfaSearchError(f"--health-port {health_port} is the service's --port; "
                                 "give it a port of its own")
        try:
            health = HealthListener(host, health_port,
                                    api_key=key if api_key_all else None)
        except OSError as exc:
            raise OfaSearchError(f"--health-port {health_port}: cannot listen on "
                                 f"{host}:{health_port} ({exc.strerror or exc})") from None
        typer.echo(f"health listener on http://{host}:{health.port}/healthz", err=True)
    guarded = "every route" if api_key_all else "POST /exports"
    typer.echo(f"serving {workspace} on http://{host}:{port} (API key "
               f"{f'required for {guarded}' if key else 'not set'}; rate limit "
               f"{limit or 'off'} per client; cold queries: {cold_queries})", err=True)
    uvicorn.run(create_app(workspace, api_key=key, max_export_workers=export_workers,
                           max_pending_exports=max_pending, data_dir=data_dir,
                           api_key_all=api_key_all, rate_limit=limit,
                           request_timeout_s=request_timeout or None,
                           cold_queries=cold_queries,  # type: ignore[arg-type]
                           cold_workers=cold_workers, max_pending_cold=max_pending_cold,
                           health=health),
                host=host, port=port, log_level=log_level)
