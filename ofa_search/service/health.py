"""A health listener on a port of its own (``ofa-search serve --health-port N``).

``GET /healthz`` on the service's own port is answered by its event loop, first come first
served, so under load it waits behind every query in flight (its p99 follows theirs, ~50 ms
at 32 clients on 2 cores). A liveness probe should not: this listener answers from a thread
of its own, so it waits at most for the interpreter's switch interval (5 ms).

It still tells whether the service is alive: the event loop stamps a heartbeat every
:data:`BEAT_S` seconds, and the listener answers 503 (``"status": "stalled"``) when the
last one is older than ``stale_after_s``: a loop that is blocked or dead fails the probe
even though this thread answers. With an API key required on every route, it requires it
too. Every other path is 404; one connection is served at a time, each with a short socket
timeout, so a client that stalls holds the listener for at most :data:`SOCKET_TIMEOUT_S`.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

BEAT_S = 0.5  # the event loop's heartbeat period
DEFAULT_STALE_AFTER_S = 10.0
SOCKET_TIMEOUT_S = 2.0


class HealthListener:
    """``GET /healthz`` on ``(host, port)`` from a daemon thread. The socket is bound at
    construction (an ``OSError`` when the port is taken), requests are answered from
    :meth:`start` on.

    Args:
        api_key: when set, requests need ``Authorization: Bearer <key>``.
        stale_after_s: heartbeat age beyond which the answer is 503.
    """

    def __init__(self, host: str, port: int, *, api_key: str | None = None,
                 stale_after_s: float = DEFAULT_STALE_AFTER_S) -> None:
        if not stale_after_s > 0:
            raise ValueError(f"stale_after_s must be > 0, got {stale_after_s!r}")
        self._body: Callable[[], dict[str, Any]] = lambda: {"status": "ok"}
        self._api_key = api_key
        self._stale_after_s = stale_after_s
        self._last_beat = time.monotonic()
        self._server = HTTPServer((host, port), self._handler_class())
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port it listens on (the one the OS chose for port 0)."""
        return int(self._server.server_address[1])

    def beat(self) -> None:
        """Called by the event loop: it is alive now."""
        self._last_beat = time.monotonic()

    def heartbeat_age_s(self) -> float:
        return time.monotonic() - self._last_beat

    def start(self, body: Callable[[], dict[str, Any]]) -> HealthListener:
        """Answer from now on; ``body`` gives the JSON of a healthy answer (called on the
        listener's thread: it must only read state that does not change after start-up)."""
        self._body = body
        self.beat()
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.2},
                                        name="ofa-search-health", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def answer(self, path: str, authorization: str | None) -> tuple[int, dict[str, Any]]:
        """Status and JSON body for a GET of ``path``."""
        if path.split("?", 1)[0] != "/healthz":
            return 404, {"detail": "not found: this port answers only GET /healthz"}
        if self._api_key is not None:
            scheme, _, token = (authorization or "").partition(" ")
            if scheme.lower() != "bearer" or not token:
                return 401, {"detail": "this route needs 'Authorization: Bearer <api key>'"}
            if not hmac.compare_digest(token.strip().encode(), self._api_key.encode()):
                return 403, {"detail": "wrong API key"}
        age = self.heartbeat_age_s()
        if age > self._stale_after_s:
            return 503, {"status": "stalled", "event_loop_heartbeat_age_s": round(age, 3),
                         "detail": f"the service's event loop has not run for {age:.1f} s"}
        return 200, {**self._body(), "event_loop_heartbeat_age_s": round(age, 3)}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        listener = self

        class Handler(BaseHTTPRequestHandler):
            timeout = SOCKET_TIMEOUT_S
            server_version = "ofa-search-health"
            sys_version = ""

            def do_GET(self) -> None:
                try:
                    status, body = listener.answer(self.path,
                                                   self.headers.get("Authorization"))
                except Exception as exc:
                    status, body = 503, {"status": "error", "detail": "health check "
                                         f"failed: {type(exc).__name__}"}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                self.send_error(405, "this port answers only GET /healthz")

            do_PUT = do_DELETE = do_PATCH = do_POST

            def log_message(self, format: str, *args: Any) -> None:
                pass  # probes every few seconds would flood the log

        return Handler
