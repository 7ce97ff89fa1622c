"""Run ``ofa-search serve`` in a subprocess on loopback (for benchmarks and tests)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(workspace: str | os.PathLike[str], port: int, *extra: str,
                 timeout_s: float = 120.0, api_key: str | None = None
                 ) -> subprocess.Popen[bytes]:
    """``ofa-search serve`` on 127.0.0.1:``port`` (``extra``: more CLI options), returned
    once ``/healthz`` answers (sent with ``api_key`` as a bearer token, for a server started
    with ``--api-key-all``). Raises ``RuntimeError`` with the server's stderr if it exits
    first, or when it does not answer within ``timeout_s``."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ofa_search.cli", "serve", "--workspace", os.fspath(workspace),
         "--host", "127.0.0.1", "--port", str(port), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"server exited: {err}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", headers=headers,
                         timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    stop_server(proc)
    raise RuntimeError(f"server did not answer /healthz within {timeout_s:.0f} s")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    """Terminate (then kill) the server and close its pipe."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stderr is not None:
        proc.stderr.close()


@contextmanager
def served(workspace: str | os.PathLike[str], *extra: str,
           api_key: str | None = None) -> Iterator[str]:
    """A running server for the block; yields its base URL."""
    port = free_port()
    proc = start_server(workspace, port, *extra, api_key=api_key)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(proc)
