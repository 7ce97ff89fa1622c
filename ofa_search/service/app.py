"""The HTTP service: a thin FastAPI layer over query and export (``ofa-search serve``).

Routes (OpenAPI schema at ``/openapi.json``, interactive docs at ``/docs``)::

    GET  /healthz                    liveness and what was loaded (never rate-limited)
    GET  /devices                    device tables visible from the workspace
    GET  /devices/{id}               one table's description          404 lists known ids
    POST /query                      best subnet under a latency budget (as `query --json`)
    GET  /queries/{id}               a queued cold query (``--cold-queries queue`` only)
    POST /exports                    start an export (202 + id)       needs the API key
    GET  /exports/{id}               queued / running / done (+ model card) / failed
    GET  /exports/{id}/artefact      the exported file

Errors are JSON ``{"detail": "<one line>", …}``: unknown device 404 with ``known``;
infeasible budget 422 with ``min_latency_ms``; malformed body or arch 422 (with the
validation ``errors``; the offending value is never echoed); unknown export 404; a
workspace that lacks something (e.g. no accuracy predictor fitted, no checkpoint, no
front for a query that would need a search) 409; a corrupt ``job.json`` or model card of
an export 409; export queue full or a client over its rate limit 429 with ``Retry-After``;
a request over the time limit 503. Bad input never yields a 500, and no answer carries an
absolute path of the server (paths in the workspace are shown relative to it, others by
their last component).

Cold queries: a query whose answer is not on a saved front needs a search (seconds of
CPU). By default the request is refused (409, with the ``ofa-search search`` command that
builds the front); with ``cold_queries="queue"`` it runs in a bounded pool off the request
path and the answer is 202 with a job to poll (:mod:`ofa_search.service.queries`).

Authentication: when an API key is configured, ``POST /exports`` needs
``Authorization: Bearer <key>`` (401 without it, 403 with a wrong one; compared in
constant time). Reading routes stay open unless ``api_key_all`` is set: then every route
needs the key, ``/openapi.json`` too, and ``/docs`` is off.

Abuse limits: a per-client rate limit (``limits``, keyed by the client's address; default
:data:`DEFAULT_RATE_LIMIT`, ``None`` turns it off) and a time limit per request
(:data:`DEFAULT_REQUEST_TIMEOUT_S`; the work of a handler that overruns finishes in the
background, its answer is dropped).

State: device tables, latency predictors and the :class:`QueryEngine` (fronts, accuracy
predictor) are loaded once at start-up and shared read-only by all requests; tables added
to the workspace later need a restart, fronts are reloaded when their file changes. Query
routes are plain ``def`` endpoints, run in the server's thread pool, so they never block
the event loop; ``/healthz`` answers from the event loop without touching the pool, and
from a thread of its own on a second port with ``health`` (``serve --health-port``, see
:mod:`ofa_search.service.health`).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import hmac
import logging
import math
import os
import pathlib
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ofa_search.arch import parse_arch
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
from ofa_search.profiling.drift import table_modes
from ofa_search.profiling.lut import LatencyTable, list_tables, unit_spread
from ofa_search.service.exports import (
    CorruptExportError,
    ExportJobs,
    QueueFullError,
    UnknownExportError,
)
from ofa_search.service.health import BEAT_S, HealthListener
from ofa_search.service.models import (
    EXPORT_ID_PATTERN,
    QUERY_JOB_ID_PATTERN,
    ErrorBody,
    ExportAccepted,
    ExportRequest,
    ExportState,
    QueryJobAccepted,
    QueryJobState,
    QueryRequest,
    QueryResponse,
)
from ofa_search.service.queries import (
    COLD_POLICIES,
    ColdGate,
    ColdPolicy,
    ColdQueryError,
    QueryJob,
    QueryJobs,
    QueryQueueFullError,
    UnknownQueryJobError,
    make_engine,
)
from ofa_search.workspace import Workspace

log = logging.getLogger("ofa_search.service")
API_KEY_ENV = "OFA_SEARCH_API_KEY"
DEFAULT_RATE_LIMIT = "100/second"  # per client address, every route but /healthz
DEFAULT_REQUEST_TIMEOUT_S = 30.0
RETRY_AFTER_S = 5
# first path components of the service's own routes: never taken for server paths
_ROUTE_ROOTS = frozenset({"healthz", "devices", "query", "queries", "exports", "docs",
                          "redoc", "openapi.json"})
# an absolute path in free text (not after a word, a dot, a colon or another slash)
_ABS_PATH = re.compile(r"(?<![\w.~:/-])/[^\s'\"`()\[\]{},;<>|]+")


class PathRedactor:
    """Removes absolute server paths from what the service answers: paths inside the
    workspace become relative to it (the workspace itself reads ``WORKSPACE``), any other
    absolute path whose first component exists at the file system root (``/tmp/…``,
    ``/home/…``) is cut to its last component. Non-finite floats become ``None`` (JSON has
    no NaN)."""

    def __init__(self, workspace_root: pathlib.Path) -> None:
        roots = {str(workspace_root.absolute()), str(workspace_root.resolve())}
        self._roots = [re.compile(re.escape(root) + r"(/|(?![\w.-]))")
                       for root in sorted(roots, key=len, reverse=True) if root != "/"]
        try:
            self._top = frozenset(os.listdir("/")) - _ROUTE_ROOTS
        except OSError:
            self._top = frozenset({"tmp", "home", "root", "usr", "var", "opt", "work", "mnt",
                                   "data", "srv"})

    def text(self, text: str) -> str:
        """``text`` without absolute server paths."""
        if "/" not in text:
            return text
        for root in self._roots:
            text = root.sub(lambda m: "" if m.group(1) == "/" else "WORKSPACE", text)
        return _ABS_PATH.sub(self._cut, text)

    def _cut(self, match: re.Match[str]) -> str:
        path = match.group(0)
        if path.split("/", 2)[1] not in self._top:
            return path  # a route or something else, not a server path
        return path.rstrip("/").rsplit("/", 1)[-1] or "."

    def __call__(self, value: Any) -> Any:
        """``value`` (JSON-like) with every string redacted."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {key: self(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self(item) for item in value]
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value


def _redacting_response(redact: Callable[[Any], Any]) -> type[JSONResponse]:
    """A JSON response class that passes its content through ``redact`` first."""

    class RedactedJSONResponse(JSONResponse):
        def render(self, content: Any) -> bytes:
            return super().render(redact(content))

    return RedactedJSONResponse


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
    cold_jobs: QueryJobs | None = None  # None: cold queries are refused (409)

    def known(self) -> tuple[str, ...]:
        return tuple(sorted(self.tables))

    def check_precision(self, device: str, precision: str | None) -> None:
        """Refuse (422) a precision that ``device``'s space or the search cannot price."""
        # deferred: the search package loads Optuna and torch
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
               max_pending_exports: int, data_dir: pathlib.Path | None = None,
               cold_queries: ColdPolicy = "refuse", cold_workers: int = 1,
               max_pending_cold: int = 4) -> ServiceState:
    """Load tables, latency predictors and the query engine of ``workspace`` (and warm the
    engine up on every device, so the first query is as fast as the others)."""
    from predictors.loading import load_latency_predictor  # deferred: the predictors load torch

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
    engine, gate = make_engine(workspace)
    warm: dict[str, str] = {}
    for device in tables:
        try:
            engine.min_latency_ms(device)
            warm[device] = "front" if engine.front(device) is not None else "no front"
        except (OfaSearchError, ValueError) as exc:
            warm[device] = f"not queryable: {exc}"
    space, width = None, None
    if workspace.checkpoint.is_file():
        from ofa_search.train import load_checkpoint  # deferred: the trainer loads torch

        try:
            meta = load_checkpoint(workspace.checkpoint)
            space, width = str(meta["space"]), float(meta["width_mult"])
        except FileFormatError as exc:
            log.warning("checkpoint unusable: %s", exc)
    jobs = ExportJobs(workspace, workers=max_export_workers, max_pending=max_pending_exports,
                      data_dir=data_dir)
    state = ServiceState(workspace, tables, errors, kinds, engine, jobs, api_key, space,
                         width, warm)
    if cold_queries == "queue":
        state.cold_jobs = QueryJobs(functools.partial(_run_cold_query, engine, gate),
                                    describe_error, workers=cold_workers,
                                    max_pending=max_pending_cold)
    return state


def _run_cold_query(engine: Any, gate: ColdGate, job: QueryJob) -> dict[str, Any]:
    """A cold query on a :class:`QueryJobs` worker: searching allowed."""
    with gate.allowed():
        result = engine.query(job.device, job.latency_ms, job.precision,
                              confidence=job.confidence)
    return QueryResponse(**result.to_dict()).model_dump(mode="json")


def describe_error(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The status code and body an error answers with (the body unredacted)."""
    detail = " ".join(str(exc).split())
    if isinstance(exc, UnknownDeviceError):
        return 404, {"detail": detail, "known": list(exc.known)}
    if isinstance(exc, InfeasibleBudgetError):
        low = exc.min_latency_ms
        return 422, {"detail": detail, "min_latency_ms": (
            low if low is not None and math.isfinite(low) else None)}
    if isinstance(exc, UnknownExportError | UnknownQueryJobError):
        return 404, {"detail": detail}
    if isinstance(exc, QueueFullError | QueryQueueFullError):
        return 429, {"detail": detail}
    if isinstance(exc, ColdQueryError | CorruptExportError):
        return 409, {"detail": detail}
    if isinstance(exc, InvalidArchError | LutMissError | UnknownSpaceError | ValueError):
        return 422, {"detail": detail}
    if isinstance(exc, OfaSearchError):
        return 409, {"detail": detail}  # the workspace lacks something this request needs
    return 500, {"detail": f"internal error ({type(exc).__name__})"}


def _validation_body(errors: Any) -> dict[str, Any]:
    """A 422 body for pydantic's ``errors``: one line in ``detail`` and the list in
    ``errors`` (location, message, type); the offending input is never echoed (it may be
    a NaN that JSON cannot carry, or large)."""
    issues: list[dict[str, Any]] = []
    for error in errors:
        loc = [part if isinstance(part, int) else str(part) for part in error.get("loc", ())]
        msg = str(error.get("msg", "invalid"))
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        reason = (error.get("ctx") or {}).get("error")
        if error.get("type") == "json_invalid" and isinstance(reason, str):
            msg = f"{msg} ({reason})"
        issues.append({"loc": loc, "msg": " ".join(msg.split()),
                       "type": str(error.get("type", "invalid"))})
    parts = []
    for issue in issues[:5]:
        loc = issue["loc"][1:] if issue["loc"][:1] == ["body"] else issue["loc"]
        where = ".".join(str(p) for p in loc) or "body"
        if issue["type"] == "json_invalid":  # its loc is the character position
            where = f"body (character {loc[0]})" if loc else "body"
        parts.append(f"{where}: {issue['msg']}")
    more = f" (and {len(issues) - 5} more)" if len(issues) > 5 else ""
    return {"detail": "invalid request: " + "; ".join(parts) + more, "errors": issues}


def _install_error_handlers(app: FastAPI, response: type[JSONResponse]) -> None:
    def error(status: int, body: dict[str, Any]) -> JSONResponse:
        return response(status_code=status,
                        content={k: v for k, v in body.items() if v is not None})

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, _validation_body(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI's own: 400 for a body it cannot decode (answered 422 like any malformed
        # body), 404 for an unknown path, 405 for a wrong method
        detail = " ".join(str(exc.detail).split()) or "error"
        status = exc.status_code
        if status == 400:
            status, detail = 422, f"invalid request: {detail[:1].lower()}{detail[1:]}"
        return response(status_code=status, content={"detail": detail}, headers=exc.headers)

    @app.exception_handler(AuthError)
    async def auth_error(_: Request, exc: AuthError) -> JSONResponse:
        answer = error(exc.status, {"detail": exc.detail})
        if exc.status == 401:
            answer.headers["WWW-Authenticate"] = "Bearer"
        return answer

    @app.exception_handler(OfaSearchError)
    async def ofa_error(_: Request, exc: OfaSearchError) -> JSONResponse:
        status, body = describe_error(exc)
        answer = error(status, body)
        if status == 429:
            answer.headers["Retry-After"] = str(RETRY_AFTER_S)
        return answer


class RateLimit:
    """A per-client request limit (the ``limits`` library's fixed windows, in memory):
    ``rate`` like ``"100/second"`` or ``"20/second;1000/minute"``; a malformed one raises
    ``ValueError``. Clients are told apart by their address."""

    def __init__(self, rate: str) -> None:
        # deferred: limits only when a rate limit is set
        from limits import parse_many, storage, strategies

        try:
            self.items = parse_many(rate)
        except ValueError:
            self.items = []
        if not self.items:
            raise ValueError(f"rate limit {rate!r} is not like '100/second' or "
                             "'20/second;1000/minute'")
        self.rate = rate
        self._limiter = strategies.FixedWindowRateLimiter(storage.MemoryStorage())

    def hit(self, client: str) -> float | None:
        """Count one request of ``client``: ``None`` when allowed, else the seconds until
        the exceeded window resets."""
        for item in self.items:
            if not self._limiter.hit(item, client):
                reset = self._limiter.get_window_stats(item, client)[0]
                return max(0.0, reset - time.time())
        return None


class RateLimitMiddleware:
    """Answers 429 (with ``Retry-After``) to a client over its :class:`RateLimit`, before
    any routing or authentication; ``/healthz`` is exempt. A pure ASGI middleware: it
    never touches the response of an allowed request."""

    EXEMPT = frozenset({"/healthz"})

    def __init__(self, app: ASGIApp, *, limit: RateLimit,
                 response: type[JSONResponse] = JSONResponse) -> None:
        self.app, self.limit, self.response = app, limit, response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.EXEMPT:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        wait = self.limit.hit(str(client[0]) if client else "unknown")
        if wait is None:
            await self.app(scope, receive, send)
            return
        answer = self.response(
            status_code=429, headers={"Retry-After": str(max(1, math.ceil(wait)))},
            content={"detail": f"rate limit exceeded ({self.limit.rate} per client); retry "
                     "later"})
        await answer(scope, receive, send)


class RequestTimeoutMiddleware:
    """Answers 503 when a request has not started its response within ``seconds``.

    The handler runs in a task of its own; on time-out the client gets the 503 at once and
    the handler's late answer is dropped (a ``def`` handler's thread cannot be interrupted:
    it finishes in the background). Once a response has started (a file download), there
    is no limit."""

    def __init__(self, app: ASGIApp, *, seconds: float,
                 response: type[JSONResponse] = JSONResponse) -> None:
        self.app, self.seconds, self.response = app, seconds, response
        self._abandoned: set[asyncio.Task[None]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = asyncio.Event()
        abandoned = False

        async def guarded_send(message: Message) -> None:
            if abandoned:
                return
            if message["type"] == "http.response.start":
                started.set()
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, guarded_send))
        waiter = asyncio.ensure_future(started.wait())
        try:
            await asyncio.wait({task, waiter}, timeout=self.seconds,
                               return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            waiter.cancel()
        if task.done() or started.is_set():
            await task
            return
        abandoned = True
        task.cancel()
        self._abandoned.add(task)
        task.add_done_callback(self._forget)
        log.warning("%s %s abandoned after %.3g s", scope.get("method"), scope.get("path"),
                    self.seconds)
        answer = self.response(status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)},
                               content={"detail": f"the request took longer than "
                                        f"{self.seconds:g} s and was abandoned; retry later"})
        await answer(scope, receive, send)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._abandoned.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("abandoned request failed: %r", task.exception())


def create_app(workspace: Workspace | str | os.PathLike[str], *, api_key: str | None = None,
               max_export_workers: int = 1, max_pending_exports: int = 8,
               data_dir: str | os.PathLike[str] | None = None, api_key_all: bool = False,
               rate_limit: str | None = DEFAULT_RATE_LIMIT,
               request_timeout_s: float | None = DEFAULT_REQUEST_TIMEOUT_S,
               cold_queries: ColdPolicy = "refuse", cold_workers: int = 1,
               max_pending_cold: int = 4, health: HealthListener | None = None) -> FastAPI:
    """The service of ``workspace``.

    Args:
        api_key: protects the mutating routes (every route with ``api_key_all``).
        data_dir: the dataset folder exports recalibrate BN on (required for an ImageNet
            supernet imported from once-for-all; default: the folder it was trained on).
        rate_limit: per-client limit in the ``limits`` notation (``"100/second"``,
            ``"20/second;1000/minute"``); ``None``: no limit. ``/healthz`` is exempt.
        request_timeout_s: time limit of a request until its response starts (503 beyond
            it); ``None``: no limit.
        cold_queries: ``"refuse"`` (409) or ``"queue"`` (202 and a job; ``cold_workers``
            run at once, ``max_pending_cold`` wait, more get 429) for queries that need a
            search.
        health: a bound :class:`~ofa_search.service.health.HealthListener` (``serve
            --health-port``): started with the service, its heartbeat beaten by the event
            loop, stopped with the service.
    """
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    if api_key is not None and not api_key:
        raise ValueError("api_key must not be empty (use None for no key)")
    if api_key_all and api_key is None:
        raise ValueError("api_key_all needs an api_key")
    if cold_queries not in COLD_POLICIES:
        raise ValueError(f"cold_queries must be one of {COLD_POLICIES}, got {cold_queries!r}")
    if request_timeout_s is not None and not request_timeout_s > 0:
        raise ValueError(f"request_timeout_s must be > 0 or None, got {request_timeout_s!r}")
    limit = None if rate_limit is None else RateLimit(rate_limit)
    response = _redacting_response(PathRedactor(ws.root))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.ofa = load_state(ws, api_key=api_key, max_export_workers=max_export_workers,
                                   max_pending_exports=max_pending_exports,
                                   data_dir=None if data_dir is None
                                   else pathlib.Path(data_dir),
                                   cold_queries=cold_queries, cold_workers=cold_workers,
                                   max_pending_cold=max_pending_cold)
        # what start-up loaded (torch, tables, predictors) lives as long as the server: out
        # of the collector's sight, so that full collections stay short under load
        gc.collect()
        gc.freeze()
        beating = None
        if health is not None:
            state = app.state.ofa
            health.start(lambda: _health_body(state))
            beating = asyncio.create_task(_heartbeat(health))
        try:
            yield
        finally:
            if beating is not None:
                beating.cancel()
                assert health is not None
                health.stop()
            app.state.ofa.jobs.shutdown()
            if app.state.ofa.cold_jobs is not None:
                app.state.ofa.cold_jobs.shutdown()

    app = FastAPI(title="ofa-search", version=_version(), lifespan=lifespan,
                  description="Hardware-aware NAS: the best subnet for a device under a "
                  "latency budget, and verified exports with model cards.",
                  default_response_class=response,
                  dependencies=[Depends(require_key)] if api_key_all else None,
                  openapi_url=None if api_key_all else "/openapi.json",
                  docs_url=None if api_key_all else "/docs",
                  redoc_url=None if api_key_all else "/redoc")
    _install_error_handlers(app, response)
    _add_routes(app, response)
    if api_key_all:
        @app.get("/openapi.json", include_in_schema=False)
        async def openapi_schema() -> dict[str, Any]:
            return app.openapi()
    if limit is not None:
        app.add_middleware(RateLimitMiddleware, limit=limit, response=response)
    if request_timeout_s is not None:
        app.add_middleware(RequestTimeoutMiddleware, seconds=request_timeout_s,
                           response=response)
    return app


async def _heartbeat(health: HealthListener) -> None:
    """Tell the health listener every :data:`~ofa_search.service.health.BEAT_S` seconds
    that the event loop runs."""
    while True:
        health.beat()
        await asyncio.sleep(BEAT_S)


def _health_body(state: ServiceState) -> dict[str, Any]:
    """What ``/healthz`` answers: liveness and what the service loaded at start-up."""
    return {"status": "ok", "version": _version(), "devices": list(state.known()),
            "queryable": state.warm, "checkpoint": state.checkpoint_space is not None,
            "auth": state.api_key is not None}


@functools.cache
def _version() -> str:
    # deferred: ofa_search.export loads torch and ONNX; the app imports without them
    from ofa_search.export import tool_versions

    return tool_versions()["ofa-search"]


async def _state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.ofa
    return state


StateDep = Annotated[ServiceState, Depends(_state)]
_bearer = HTTPBearer(auto_error=False, description="the API key, when one is configured")


async def require_key(state: StateDep, credentials: Annotated[
        HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """Dependency of mutating routes (of every route with ``api_key_all``): the bearer
    token must equal the API key."""
    if state.api_key is None:
        return
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise AuthError(401, "this route needs 'Authorization: Bearer <api key>'")
    if not hmac.compare_digest(credentials.credentials.encode(), state.api_key.encode()):
        raise AuthError(403, "wrong API key")


ExportId = Annotated[str, Path(pattern=EXPORT_ID_PATTERN, description="32 hex digits")]
QueryJobId = Annotated[str, Path(pattern=QUERY_JOB_ID_PATTERN, description="32 hex digits")]
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (401, 403, 404, 409, 422, 429, 503)}


def _add_routes(app: FastAPI, response: type[JSONResponse]) -> None:
    @app.get("/healthz", responses=_ERRORS)
    async def healthz(state: StateDep) -> dict[str, Any]:
        """Liveness, and what the service loaded at start-up (answered on the event loop;
        ``serve --health-port`` answers the same from a thread that does not wait behind
        queries)."""
        return _health_body(state)

    @app.get("/devices", responses=_ERRORS)
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
                    unit_spread=unit_spread(table),
                    min_latency_ms=_min_latency(state, device_id),
                    **_calibration_summary(state, device_id))
        return info

    @app.post("/query", response_model=QueryResponse, responses={
        **_ERRORS, 202: {"model": QueryJobAccepted, "description": "the query needs a search "
                         "and was queued (server started with --cold-queries queue)"}})
    async def query(body: QueryRequest, state: StateDep, request: Request) -> Any:
        """The most accurate subnet predicted to run within ``latency_ms`` on ``device``.

        A query whose answer is not on the device's saved front needs a search: refused
        with 409 (how to build the front), or queued (202 and a job) on a server started
        with ``--cold-queries queue``."""
        state.table(body.device)  # 404 naming the known ids (and nothing of the disk)
        state.check_precision(body.device, body.precision)
        run = functools.partial(state.engine.query, body.device, body.latency_ms,
                                body.precision, confidence=body.confidence)
        try:
            # a front lookup takes microseconds: on the event loop, without a thread hop;
            # a context still to load (another precision, "any") goes to the thread pool
            if state.engine.loaded(body.device, body.precision):
                result = run()
            else:
                result = await run_in_threadpool(run)
        except ColdQueryError:
            if state.cold_jobs is None:
                raise
            job = state.cold_jobs.submit(body.device, body.latency_ms, body.precision,
                                         body.confidence)
            url = str(request.url_for("query_job", job_id=job.id).path)
            accepted = QueryJobAccepted(id=job.id, status=job.status, url=url)  # type: ignore[arg-type]
            return response(status_code=202, content=accepted.model_dump(mode="json"),
                            headers={"Location": url})
        # validated once here; a Response skips FastAPI's second pass over response_model
        return response(content=QueryResponse(**result.to_dict()).model_dump(mode="json"))

    @app.get("/queries/{job_id}", responses=_ERRORS, name="query_job")
    def query_job(job_id: QueryJobId, state: StateDep) -> QueryJobState:
        """A queued cold query: queued / running / done (with ``result``) / failed (with
        ``error`` and the ``error_status`` the query would have answered)."""
        if state.cold_jobs is None:
            raise UnknownQueryJobError(f"no query job with id {job_id!r}: this server refuses "
                                       "cold queries (started without --cold-queries queue)")
        return QueryJobState(**asdict(state.cold_jobs.state(job_id)))

    @app.post("/exports", status_code=202, responses=_ERRORS,
              dependencies=[Depends(require_key)])
    def start_export(body: ExportRequest, state: StateDep, request: Request) -> ExportAccepted:
        """Queue an export of ``arch`` (or of the answer to ``device``/``latency_ms``)."""
        # deferred: ofa_search.export loads torch and ONNX; the app imports without them
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
            try:
                answer = state.engine.query(body.device, body.latency_ms,
                                            body.precision).to_dict()
            except ColdQueryError as exc:
                raise ColdQueryError(f"{exc}; or export an 'arch' instead of a budget",
                                     device=exc.device, precision=exc.precision) from None
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
    precision mode, and the stored speed scale (of fp32 subnets, and of each mode the
    table prices)."""
    try:
        ctx = state.engine.context(device)
        scale = ctx.scale()
        by_mode = ({} if ctx.table is None
                   else {mode: ctx.scale((mode,)) for mode in table_modes(ctx.table)})
    except (OfaSearchError, ValueError):
        return {"calibrated": None, "latency_scale": None, "latency_scale_by_mode": None}
    counts = ({} if ctx.intervals is None
              else {mode: len(scores) for mode, scores in ctx.intervals.scores.items()})
    return {"calibrated": ctx.intervals is not None, "calibration_measurements": counts,
            "latency_scale": scale, "latency_scale_by_mode": by_mode}


def _min_latency(state: ServiceState, device: str) -> float | None:
    try:
        return float(state.engine.min_latency_ms(device))
    except (OfaSearchError, ValueError):
        return None
