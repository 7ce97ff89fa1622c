"""The HTTP service: a thin FastAPI layer over query and export (``ofa-search serve``).

Routes (OpenAPI schema at ``/openapi.json``, interactive docs at ``/docs``)::

    GET  /healthz                    liveness and what was loaded
    GET  /devices                    device tables visible from the workspace
    GET  /devices/{id}               one table's description          404 lists known ids
    POST /query                      best subnet under a latency budget (as `query --json`)
    POST /exports                    start an export (202 + id)       needs the API key
    GET  /exports/{id}               queued / running / done (+ model card) / failed
    GET  /exports/{id}/artefact      the exported file

Errors are JSON ``{"detail": …}``: unknown device 404 with ``known``; infeasible budget
422 with ``min_latency_ms``; malformed body or arch 422; unknown export 404; a workspace
that lacks something (e.g. no accuracy predictor fitted, no checkpoint) 409; export queue
full 429 with ``Retry-After``. Bad input never yields a 500.

Authentication: when an API key is configured, ``POST /exports`` needs
``Authorization: Bearer <key>`` (401 without it, 403 with a wrong one; compared in
constant time). Reading routes stay open.

State: device tables, latency predictors and the :class:`QueryEngine` (fronts, accuracy
predictor) are loaded once at start-up and shared read-only by all requests; tables added
to the workspace later need a restart. Query routes are plain ``def`` endpoints, run in
the server's thread pool, so they never block the event loop.
"""

from __future__ import annotations

import hmac
import logging
import os
import pathlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ofa_search.errors import (
    FileFormatError,
    InfeasibleBudgetError,
    InvalidArchError,
    LutMissError,
    OfaSearchError,
    UnknownDeviceError,
    UnknownSpaceError,
    UnsupportedPrecisionError,
)
from ofa_search.profiling.lut import LatencyTable, list_tables
from ofa_search.service_exports import (
    ExportJobs,
    QueueFullError,
    UnknownExportError,
)
from ofa_search.service_models import (
    EXPORT_ID_PATTERN,
    ErrorBody,
    ExportAccepted,
    ExportRequest,
    ExportState,
    QueryRequest,
    QueryResponse,
)
from ofa_search.workspace import Workspace

log = logging.getLogger("ofa_search.service")
API_KEY_ENV = "OFA_SEARCH_API_KEY"


class AuthError(Exception):
    """Missing (401) or wrong (403) API key."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass
class ServiceState:
    """What every request shares, loaded once (read-only after start-up)."""

    workspace: Workspace
    tables: dict[str, LatencyTable]
    table_errors: dict[str, str]
    latency_predictors: dict[str, str]
    engine: Any
    jobs: ExportJobs
    api_key: str | None
    checkpoint_space: str | None
    checkpoint_width: float | None
    warm: dict[str, str] = field(default_factory=dict)

    def known(self) -> tuple[str, ...]:
        return tuple(sorted(self.tables))

    def check_precision(self, device: str, precision: str | None) -> None:
        """Refuse (422) a precision that ``device``'s space or the search cannot price."""
        from ofa_search.search.encoding import ANY_PRECISION

        if precision is None:
            return
        table = self.table(device)
        offered = [*self.engine.modes(device), ANY_PRECISION]
        if precision not in offered:
            raise UnsupportedPrecisionError(f"precision {precision!r} is not available on "
                                            f"device {device!r} (space {table.space!r}); "
                                            f"available: {offered}")

    def table(self, device: str) -> LatencyTable:
        table = self.tables.get(device)
        if table is None:
            known = self.known()
            raise UnknownDeviceError(f"no latency table for device {device!r}; known "
                                     f"devices: {list(known) or 'none'}", known=known)
        return table


def load_state(workspace: Workspace, *, api_key: str | None, max_export_workers: int,
               max_pending_exports: int, data_dir: pathlib.Path | None = None
               ) -> ServiceState:
    """Load tables, latency predictors and the query engine of ``workspace`` (and warm the
    engine up on every device, so the first query is as fast as the others)."""
    from ofa_search.search.query import QueryEngine
    from predictors.loading import load_latency_predictor

    tables: dict[str, LatencyTable] = {}
    errors: dict[str, str] = {}
    kinds: dict[str, str] = {}
    for info in list_tables(workspace=workspace.root):
        if info.error:
            errors[info.device_id] = info.error
            continue
        tables[info.device_id] = LatencyTable.load(info.path)
        try:
            kinds[info.device_id] = load_latency_predictor(workspace, info.device_id)[1]
        except OfaSearchError as exc:
            errors[info.device_id] = str(exc)
    engine = QueryEngine(workspace)
    warm: dict[str, str] = {}
    for device in tables:
        try:
            engine.min_latency_ms(device)
            warm[device] = "front" if engine.front(device) is not None else "no front"
        except (OfaSearchError, ValueError) as exc:
            warm[device] = f"not queryable: {exc}"
    space, width = None, None
    if workspace.checkpoint.is_file():
        from ofa_search.train import load_checkpoint

        try:
            meta = load_checkpoint(workspace.checkpoint)
            space, width = str(meta["space"]), float(meta["width_mult"])
        except FileFormatError as exc:
            log.warning("checkpoint unusable: %s", exc)
    jobs = ExportJobs(workspace, workers=max_export_workers, max_pending=max_pending_exports,
                      data_dir=data_dir)
    return ServiceState(workspace, tables, errors, kinds, engine, jobs, api_key, space, width,
                        warm)


def _error(status: int, detail: str, **extra: Any) -> JSONResponse:
    body = {"detail": detail, **{k: v for k, v in extra.items() if v is not None}}
    return JSONResponse(status_code=status, content=body)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AuthError)
    async def auth_error(_: Request, exc: AuthError) -> JSONResponse:
        response = _error(exc.status, exc.detail)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.exception_handler(OfaSearchError)
    async def ofa_error(_: Request, exc: OfaSearchError) -> JSONResponse:
        if isinstance(exc, UnknownDeviceError):
            return _error(404, str(exc), known=list(exc.known))
        if isinstance(exc, InfeasibleBudgetError):
            return _error(422, str(exc), min_latency_ms=exc.min_latency_ms)
        if isinstance(exc, UnknownExportError):
            return _error(404, str(exc))
        if isinstance(exc, QueueFullError):
            response = _error(429, str(exc))
            response.headers["Retry-After"] = "5"
            return response
        if isinstance(exc, InvalidArchError | LutMissError | UnknownSpaceError | ValueError):
            return _error(422, str(exc))
        return _error(409, str(exc))  # the workspace lacks something this request needs


def create_app(workspace: Workspace | str | os.PathLike[str], *, api_key: str | None = None,
               max_export_workers: int = 1, max_pending_exports: int = 8,
               data_dir: str | os.PathLike[str] | None = None) -> FastAPI:
    """The service of ``workspace``; ``api_key`` protects the mutating routes; ``data_dir``
    is the dataset folder exports recalibrate BN on (required for an ImageNet supernet
    imported from once-for-all; default: the folder the supernet was trained on)."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    if api_key is not None and not api_key:
        raise ValueError("api_key must not be empty (use None for no key)")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.ofa = load_state(ws, api_key=api_key, max_export_workers=max_export_workers,
                                   max_pending_exports=max_pending_exports,
                                   data_dir=None if data_dir is None
                                   else pathlib.Path(data_dir))
        try:
            yield
        finally:
            app.state.ofa.jobs.shutdown()

    app = FastAPI(title="ofa-search", version=_version(), lifespan=lifespan,
                  description="Hardware-aware NAS: the best subnet for a device under a "
                  "latency budget, and verified exports with model cards.")
    _install_error_handlers(app)
    _add_routes(app)
    return app


def _version() -> str:
    from ofa_search.export import tool_versions

    return tool_versions()["ofa-search"]


def _state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.ofa
    return state


StateDep = Annotated[ServiceState, Depends(_state)]
_bearer = HTTPBearer(auto_error=False, description="the API key, when one is configured")


def require_key(state: StateDep, credentials: Annotated[
        HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """Dependency of mutating routes: the bearer token must equal the API key."""
    if state.api_key is None:
        return
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise AuthError(401, "this route needs 'Authorization: Bearer <api key>'")
    if not hmac.compare_digest(credentials.credentials.encode(), state.api_key.encode()):
        raise AuthError(403, "wrong API key")


ExportId = Annotated[str, Path(pattern=EXPORT_ID_PATTERN, description="32 hex digits")]
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (401, 403, 404, 409, 422, 429)}


def _add_routes(app: FastAPI) -> None:
    @app.get("/healthz")
    def healthz(state: StateDep) -> dict[str, Any]:
        """Liveness, and what the service loaded at start-up."""
        return {"status": "ok", "version": _version(), "devices": list(state.known()),
                "queryable": state.warm, "checkpoint": state.checkpoint_space is not None,
                "auth": state.api_key is not None}

    @app.get("/devices")
    def devices(state: StateDep) -> list[dict[str, Any]]:
        """Every device table visible from the workspace and the repository."""
        return [_device_summary(state, device) for device in state.known()]

    @app.get("/devices/{device_id}", responses=_ERRORS)
    def device(device_id: str, state: StateDep) -> dict[str, Any]:
        """One device's table: profile, host, space, resolutions, size, predictor."""
        table = state.table(device_id)
        info = _device_summary(state, device_id)
        info.update(device=table.device, host=table.host, versions=table.versions,
                    overhead_ms=table.overhead_ms, fingerprint=table.fingerprint,
                    min_latency_ms=_min_latency(state, device_id),
                    **_calibration_summary(state, device_id))
        return info

    @app.post("/query", responses=_ERRORS)
    def query(body: QueryRequest, state: StateDep) -> QueryResponse:
        """The most accurate subnet predicted to run within ``latency_ms`` on ``device``."""
        state.check_precision(body.device, body.precision)
        result = state.engine.query(body.device, body.latency_ms, body.precision,
                                    confidence=body.confidence)
        return QueryResponse(**result.to_dict())

    @app.post("/exports", status_code=202, responses=_ERRORS,
              dependencies=[Depends(require_key)])
    def start_export(body: ExportRequest, state: StateDep, request: Request) -> ExportAccepted:
        """Queue an export of ``arch`` (or of the answer to ``device``/``latency_ms``)."""
        from ofa_search.arch import parse_arch
        from ofa_search.export import AUTO_FORMAT, get_format

        if body.format != AUTO_FORMAT:
            get_format(body.format)
        if state.checkpoint_space is None:
            raise OfaSearchError(f"the workspace has no usable supernet checkpoint at "
                                 f"{state.workspace.checkpoint.name}; train one first")
        if body.device is not None:
            state.table(body.device)
        answer = None
        if body.arch is not None:
            parsed = parse_arch(body.arch, state.checkpoint_space)
            if parsed.width_mult != state.checkpoint_width:
                raise InvalidArchError(f"arch has width {parsed.width_mult}; the workspace's "
                                       f"supernet has width {state.checkpoint_width}")
            if body.device is not None:
                state.table(body.device).predict(parsed)  # LutMissError (422) if unpriced
            arch = parsed.to_string()
        else:
            assert body.device is not None and body.latency_ms is not None
            state.check_precision(body.device, body.precision)
            answer = state.engine.query(body.device, body.latency_ms, body.precision).to_dict()
            arch = answer["arch"]
        job = state.jobs.submit(arch=arch, format=body.format, device=body.device,
                                query=answer)
        return ExportAccepted(id=job.id, status="queued", arch=arch, format=body.format,
                              url=str(request.url_for("export_state", export_id=job.id).path),
                              query=answer)

    @app.get("/exports/{export_id}", responses=_ERRORS, name="export_state")
    def export_state(export_id: ExportId, state: StateDep, request: Request) -> ExportState:
        """An export's status; its model card once done, its error once failed."""
        data = state.jobs.state(export_id)
        url = (str(request.url_for("export_artefact", export_id=export_id).path)
               if data["status"] == "done" else None)
        return ExportState(id=export_id, status=data["status"], arch=data.get("arch"),
                           format=data.get("format"), device=data.get("device"),
                           created=data.get("created"), finished=data.get("finished"),
                           error=data.get("error"), card=data.get("card"), artefact_url=url)

    @app.get("/exports/{export_id}/artefact", responses=_ERRORS, name="export_artefact",
             response_class=FileResponse)
    def export_artefact(export_id: ExportId, state: StateDep) -> FileResponse:
        """The exported file of a finished export (409 while it is not done)."""
        path = state.jobs.artefact(export_id)  # ExportNotReadyError: 409
        return FileResponse(path, filename=f"{export_id}{path.suffix}",
                            media_type="application/octet-stream")


def _device_summary(state: ServiceState, device: str) -> dict[str, Any]:
    table = state.table(device)
    return {"device_id": device, "backend": table.device.get("backend"), "space": table.space,
            "width_mult": table.width_mult, "resolutions": list(table.resolutions),
            "entries": len(table.entries), "complete": table.complete,
            "created": table.created, "measurable": table.fingerprint is not None,
            "latency_predictor": state.latency_predictors.get(device),
            "queryable": state.warm.get(device)}


def _calibration_summary(state: ServiceState, device: str) -> dict[str, Any]:
    """Whether the device's latency bound is calibrated, on how many measured subnets per
    precision mode, and the stored speed scale."""
    try:
        ctx = state.engine.context(device)
        scale = ctx.scale()
    except (OfaSearchError, ValueError):
        return {"calibrated": None, "latency_scale": None}
    counts = ({} if ctx.intervals is None
              else {mode: len(scores) for mode, scores in ctx.intervals.scores.items()})
    return {"calibrated": ctx.intervals is not None, "calibration_measurements": counts,
            "latency_scale": scale}


def _min_latency(state: ServiceState, device: str) -> float | None:
    try:
        return float(state.engine.min_latency_ms(device))
    except (OfaSearchError, ValueError):
        return None
