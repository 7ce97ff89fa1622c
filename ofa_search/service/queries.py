"""Cold queries of the HTTP service: kept off the request path.

A query whose answer is not on a saved Pareto front needs a search (seconds of CPU). The
service's query engine (:func:`make_engine`) refuses to search on a request thread and
raises :class:`ColdQueryError` instead, which the service answers with 409 and the command
that builds the front. A server started with ``--cold-queries queue`` runs such queries
in :class:`QueryJobs` instead: a bounded pool (one worker by default) with a bounded
queue (429 beyond it), answered 202 with a job to poll at ``GET /queries/{id}``. Identical
queries share one job. Jobs live in memory only: a restart forgets them.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Literal

from ofa_search.errors import OfaSearchError
from ofa_search.profiling.lut import now_iso

log = logging.getLogger("ofa_search.service")
COLD_POLICIES = ("refuse", "queue")
ColdPolicy = Literal["refuse", "queue"]


class ColdQueryError(OfaSearchError):
    """The query needs a search, and this request may not run one (409)."""

    def __init__(self, message: str, *, device: str, precision: str) -> None:
        super().__init__(message)
        self.device, self.precision = device, precision


class UnknownQueryJobError(OfaSearchError, KeyError):
    """No cold-query job with that id (404)."""

    def __str__(self) -> str:  # KeyError's own __str__ would quote the message
        return str(self.args[0]) if self.args else ""


class QueryQueueFullError(OfaSearchError):
    """Too many cold queries queued; retry later (429)."""


def build_front_hint(device: str, precision: str) -> str:
    """The command that builds ``device``'s front (``WORKSPACE`` stands for the server's)."""
    option = "" if precision == "fp32" else f" --precision {precision}"
    return f"ofa-search search --workspace WORKSPACE --device {device}{option}"


class ColdGate:
    """The cold-query guard of the service's query engine: a search may run only inside
    :meth:`allowed` (on a :class:`QueryJobs` worker thread); elsewhere :meth:`__call__`
    raises :class:`ColdQueryError` with the command that builds the front."""

    def __init__(self) -> None:
        self._local = threading.local()
        self.engine: Any = None

    @contextlib.contextmanager
    def allowed(self) -> Iterator[None]:
        self._local.allowed = True
        try:
            yield
        finally:
            self._local.allowed = False

    def __call__(self, ctx: Any) -> None:
        if getattr(self._local, "allowed", False):
            return
        device, precision = ctx.device, ctx.precision
        hint = build_front_hint(device, precision)
        front = self.engine.front(device, precision) if self.engine is not None else None
        if front is None:
            what = f"device {device!r} has no saved Pareto front for {precision}"
        else:
            what = (f"the saved Pareto front of device {device!r} ({precision}) has no "
                    f"point under this budget (its fastest is predicted at "
                    f"{front.min_latency_ms:.4g} ms)")
            hint += " --front-trials 10000"
        raise ColdQueryError(
            f"{what}, and this server does not search on request; build the front with "
            f"`{hint}` (the server picks it up without a restart), or start the server "
            "with --cold-queries queue", device=device, precision=precision)


def make_engine(workspace: Any) -> tuple[Any, ColdGate]:
    """A :class:`~ofa_search.search.query.QueryEngine` of ``workspace`` that searches only
    inside its gate's :meth:`ColdGate.allowed` and otherwise raises
    :class:`ColdQueryError`; and that gate."""
    # deferred: the search engine loads Optuna and torch
    from ofa_search.search.query import QueryEngine

    gate = ColdGate()
    engine = QueryEngine(workspace, cold_guard=gate)
    gate.engine = engine
    return engine, gate


@dataclass
class QueryJob:
    """One cold query (what ``GET /queries/{id}`` shows)."""

    id: str
    device: str
    latency_ms: float
    precision: str | None
    confidence: float | None
    status: str = "queued"
    created: str = ""
    finished: str | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    error_status: int | None = None


class QueryJobs:
    """Runs cold queries in a bounded thread pool (thread-safe).

    Args:
        run: runs one query with searching allowed and returns its answer as a dict.
        describe: ``(status, body)`` of the error answer an exception would get.
        workers: queries searched at once.
        max_pending: queries waiting beyond those; more raise :class:`QueryQueueFullError`.
        keep: finished jobs remembered (the oldest are forgotten first).
    """

    def __init__(self, run: Callable[[QueryJob], dict[str, Any]],
                 describe: Callable[[BaseException], tuple[int, dict[str, Any]]], *,
                 workers: int = 1, max_pending: int = 4, keep: int = 256) -> None:
        if workers < 1 or max_pending < 0 or keep < 1:
            raise ValueError(f"need workers >= 1, max_pending >= 0 and keep >= 1, got "
                             f"{workers=}, {max_pending=}, {keep=}")
        self._run_query, self._describe = run, describe
        self.capacity, self.keep = workers + max_pending, keep
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cold-query")
        self._jobs: OrderedDict[str, QueryJob] = OrderedDict()
        self._by_key: dict[tuple[Any, ...], str] = {}
        self._active = 0
        self._lock = threading.Lock()

    def submit(self, device: str, latency_ms: float, precision: str | None,
               confidence: float | None) -> QueryJob:
        """Queue a query (or return the job of an identical one); raises
        :class:`QueryQueueFullError` when the pool and its queue are full."""
        key = (device, latency_ms, precision, confidence)
        with self._lock:
            known = self._jobs.get(self._by_key.get(key, ""))
            if known is not None and known.status != "failed":  # a failed one is retried
                return QueryJob(**asdict(known))
            if self._active >= self.capacity:
                raise QueryQueueFullError(f"{self._active} cold queries are queued or running "
                                          f"(limit {self.capacity}); retry later")
            job = QueryJob(id=uuid.uuid4().hex, device=device, latency_ms=latency_ms,
                           precision=precision, confidence=confidence, created=now_iso())
            self._jobs[job.id] = job
            self._by_key[key] = job.id
            self._active += 1
            self._forget_old()
            snapshot = QueryJob(**asdict(job))
        self._pool.submit(self._run, job)
        return snapshot

    def state(self, job_id: str) -> QueryJob:
        """A copy of the job's state; :class:`UnknownQueryJobError` when there is none."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise UnknownQueryJobError(f"no query job with id {job_id!r} (jobs live in "
                                           "memory: a restarted server forgets them)")
            return QueryJob(**asdict(job))

    def _run(self, job: QueryJob) -> None:
        with self._lock:
            job.status = "running"
        try:
            result = self._run_query(job)
        except Exception as exc:  # every failure is reported on the job
            status, body = self._describe(exc)
            if not isinstance(exc, OfaSearchError):
                log.exception("cold query %s failed", job.id)
            with self._lock:
                job.status, job.finished = "failed", now_iso()
                job.error, job.error_status = body, status
        else:
            with self._lock:
                job.status, job.finished, job.result = "done", now_iso(), result
        finally:
            with self._lock:
                self._active -= 1

    def _forget_old(self) -> None:
        """Drop the oldest finished jobs beyond ``keep`` (called with the lock held)."""
        finished = [jid for jid, job in self._jobs.items() if job.status in ("done", "failed")]
        for jid in finished[:max(0, len(self._jobs) - self.keep)]:
            old = self._jobs.pop(jid)
            key = (old.device, old.latency_ms, old.precision, old.confidence)
            if self._by_key.get(key) == jid:
                del self._by_key[key]

    def shutdown(self) -> None:
        """Stop taking jobs; queued ones are cancelled, a running one finishes."""
        self._pool.shutdown(wait=False, cancel_futures=True)
