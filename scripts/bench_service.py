"""Load benchmark of the HTTP service on loopback: ``POST /query`` from a saved front at 8
and 32 concurrent clients, with a storm of cold queries and a ``/healthz`` poller beside
them.

    python scripts/bench_service.py WORKSPACE [--device cpu-ort-1t] [--clients 8 32]
        [--seconds 25] [--cold-clients 4] [--cold-device ID] [--healthz-interval 0.05]
        [--no-health-port] [--server-threads 1]
        [--server-option=--cold-queries --server-option=refuse …]
        [--out results/bench_service.json]

Starts ``ofa-search serve --workspace WORKSPACE --rate-limit off`` (every client shares
127.0.0.1, so a per-client limit would throttle the benchmark) on a free port in a
subprocess, with ``--health-port`` on another free port unless ``--no-health-port``, and
waits for ``/healthz``. Then, for each client count, for ``--seconds``:

- that many threads, each with its own keep-alive ``httpx.Client``, send ``POST /query``
  back to back with budgets spread over the device's front (every answer from the front);
- ``--cold-clients`` threads send queries that no saved front answers (a device without a
  front, ``--cold-device`` or the first one ``/healthz`` lists as "no front", at twice
  its fastest subnet's latency). The service refuses them at once (409, the default
  ``--cold-queries refuse``) instead of searching in the request;
- one process of its own polls ``GET /healthz`` every ``--healthz-interval`` seconds, on
  the service's port (route ``healthz``: answered by the event loop, behind the queries)
  and on the health port (route ``health-port``: answered by a thread of its own).

Latency is client-side wall time per request. Prints one row per route and client count
(requests, req/s, p50, p99, max, errors; a cold query's expected answer is 409, or 202 on
a server started with ``--cold-queries queue``) against the targets (``/query`` p99 ≤ 50
ms at 8 clients and ≤ 150 ms at 32, ``/healthz`` p99 ≤ 50 ms on either port), and writes
everything with the host's description as JSON (atomically). The default run takes about
a minute: two client counts of 25 s plus the server's start.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from ofa_search.atomic import atomic_write_json
from ofa_search.profiling.host import host_info
from ofa_search.profiling.lut import now_iso
from ofa_search.service.process import free_port, served
from ofa_search.workspace import Workspace

TARGETS_P99_MS = {("query", 8): 50.0, ("query", 32): 150.0, ("healthz", None): 50.0,
                  ("health-port", None): 50.0}
ROUTES = ("query", "cold", "healthz", "health-port")
EXPECTED = {"query": {200}, "cold": {409, 202}, "healthz": {200}, "health-port": {200}}


def budgets_for(ws: Workspace, device: str, n: int = 50) -> tuple[list[float], str]:
    """Budgets spread over the device's front as queries bound it (its point range times
    the default bound's factor and the stored scale), or without one the table's range."""
    from ofa_search.search.front import Front
    from ofa_search.search.query import QueryEngine

    path = ws.front(device)
    if path.is_file():
        front = Front.load(path)
        ctx = QueryEngine(ws).context(device)
        factor = ctx.bound_factor(None)[1] * ctx.scale()
        return (factor * np.linspace(front.min_latency_ms * 1.001, front.latencies[-1],
                                     n)).tolist(), "front"
    low = QueryEngine(ws).min_latency_ms(device)
    return np.linspace(low * 1.05, low * 4, n).tolist(), "no front"


def cold_target(ws: Workspace, url: str, device: str, wanted: str | None
                ) -> tuple[str, float] | None:
    """A (device, budget) that no saved front answers: ``wanted`` or the first device the
    server lists as "no front", at twice its fastest subnet's predicted latency; ``None``
    when every device has a front."""
    from ofa_search.search.query import QueryEngine

    if wanted is None:
        queryable = httpx.get(f"{url}/healthz", timeout=30).json()["queryable"]
        candidates = [d for d, state in sorted(queryable.items())
                      if state == "no front" and d != device]
        if not candidates:
            return None
        wanted = candidates[0]
    return wanted, 2.0 * QueryEngine(ws).min_latency_ms(wanted)


@dataclass
class Record:
    """What one route's threads saw: per request latency (ms) and status (0: transport
    error)."""

    latencies: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, ms: float, status: int, text: str, expected: set[int]) -> None:
        with self.lock:
            self.latencies.append(ms)
            self.statuses.append(status)
            if status not in expected and len(self.samples) < 3:
                self.samples.append(f"{status}: {text[:160]}")

    def summary(self, expected: set[int], seconds: float) -> dict[str, Any]:
        lat = np.asarray(self.latencies, dtype=float)
        codes: dict[str, int] = {}
        for status in self.statuses:
            codes[str(status)] = codes.get(str(status), 0) + 1

        def stat(q: float) -> float | None:
            return float(np.percentile(lat, q)) if lat.size else None

        return {"requests": int(lat.size), "rps": lat.size / seconds, "p50_ms": stat(50),
                "p99_ms": stat(99), "max_ms": float(lat.max()) if lat.size else None,
                "errors": sum(1 for s in self.statuses if s not in expected),
                "statuses": codes, "error_samples": self.samples}


def _poll_healthz(urls: dict[str, str], go: Any, seconds: float, interval: float,
                  out: Any) -> None:
    """The ``/healthz`` poller, in its own process (the query threads' scheduling in this
    one would otherwise add to its times): from ``go`` for ``seconds``, every
    ``interval``, a GET of each of ``urls`` (route name → base URL) in turn; puts
    ``[(route, ms, status, text)]`` on ``out``."""
    got: list[tuple[str, float, int, str]] = []
    clients = {route: httpx.Client(base_url=url, timeout=30) for route, url in urls.items()}
    try:
        for http in clients.values():
            http.get("/healthz")  # open the connections before the clock starts
        go.wait()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for route, http in clients.items():
                t0 = time.perf_counter()
                try:
                    res = http.get("/healthz")
                    status, text = res.status_code, res.text[:160]
                except httpx.HTTPError as exc:
                    status, text = 0, f"{type(exc).__name__}: {exc}"
                got.append((route, (time.perf_counter() - t0) * 1e3, status, text))
            time.sleep(interval)
    finally:
        for http in clients.values():
            http.close()
    out.put(got)


def _loop(url: str, clock: list[float], start: threading.Barrier, record: Record,
          expected: set[int], send: Callable[[httpx.Client, int], httpx.Response],
          pause_s: float = 0.0) -> None:
    """Send until the deadline, which the barrier's action sets in ``clock[1]`` once every
    thread has opened its connection."""
    with httpx.Client(base_url=url, timeout=30) as http:
        http.get("/healthz")  # open the connection before the clock starts
        start.wait()
        deadline, i = clock[1], 0
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                res = send(http, i)
                status, text = res.status_code, res.text
            except httpx.HTTPError as exc:
                status, text = 0, f"{type(exc).__name__}: {exc}"
            record.add((time.perf_counter() - t0) * 1e3, status, text, expected)
            i += 1
            if pause_s:
                time.sleep(pause_s)


def run_level(url: str, device: str, budgets: list[float], clients: int, seconds: float,
              cold: tuple[str, float] | None, cold_clients: int,
              healthz_interval: float, health_url: str | None = None) -> dict[str, Any]:
    """``clients`` query threads, the cold storm and the poller (of ``url`` and of
    ``health_url``, the health listener, when given), for ``seconds``."""
    records = {route: Record() for route in ROUTES}
    storm = cold_clients if cold is not None else 0
    clock: list[float] = []  # [start, deadline], set when every thread is connected

    def set_clock() -> None:
        now = time.monotonic()
        clock.extend([now, now + seconds])

    go = multiprocessing.get_context("fork").Event()
    results = multiprocessing.get_context("fork").Queue()
    polled = {"healthz": url, **({"health-port": health_url} if health_url else {})}
    poller = multiprocessing.get_context("fork").Process(
        target=_poll_healthz, args=(polled, go, seconds, healthz_interval, results),
        daemon=True)
    poller.start()

    def start_all() -> None:
        set_clock()
        go.set()

    start = threading.Barrier(clients + storm, action=start_all)

    def query(http: httpx.Client, i: int, offset: int) -> httpx.Response:
        budget = budgets[(offset * 13 + i) % len(budgets)]
        return http.post("/query", json={"device": device, "latency_ms": budget})

    def cold_query(http: httpx.Client, i: int) -> httpx.Response:
        assert cold is not None
        return http.post("/query", json={"device": cold[0], "latency_ms": cold[1]})

    threads: list[threading.Thread] = []

    def spawn(route: str, send: Callable[[httpx.Client, int], httpx.Response],
              pause_s: float = 0.0) -> None:
        threads.append(threading.Thread(target=_loop, args=(
            url, clock, start, records[route], EXPECTED[route], send, pause_s), daemon=True))

    for index in range(clients):
        spawn("query", functools.partial(query, offset=index))
    for _ in range(storm):
        spawn("cold", cold_query)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for route, ms, status, text in results.get(timeout=seconds + 60):
        records[route].add(ms, status, text, EXPECTED[route])
    poller.join(timeout=10)
    wall = time.monotonic() - clock[0]
    return {"clients": clients, "cold_clients": storm, "seconds": wall,
            "routes": {route: records[route].summary(EXPECTED[route], wall)
                       for route in ROUTES if route != "health-port" or health_url}}


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(levels: list[dict[str, Any]]) -> None:
    print(f"{'clients':>7} {'route':<11} {'requests':>8} {'req/s':>7} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'max ms':>7} {'errors':>6}  target p99")
    for level in levels:
        for route, row in level["routes"].items():
            target = TARGETS_P99_MS.get((route, level["clients"]),
                                        TARGETS_P99_MS.get((route, None)))
            verdict = ""
            if target is not None and row["p99_ms"] is not None:
                verdict = f"<= {target:g} ms: {'met' if row['p99_ms'] <= target else 'MISSED'}"
            print(f"{level['clients']:>7} {route:<11} {row['requests']:>8} "
                  f"{row['rps']:>7.0f} {_fmt(row['p50_ms']):>7} {_fmt(row['p99_ms']):>7} "
                  f"{_fmt(row['max_ms']):>7} {row['errors']:>6}  {verdict}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--device", default="cpu-ort-1t")
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--seconds", type=float, default=25.0,
                        help="load time per client count")
    parser.add_argument("--cold-clients", type=int, default=4,
                        help="threads sending cold queries (0: no storm)")
    parser.add_argument("--cold-device", default=None,
                        help="device of the cold queries (default: one without a front)")
    parser.add_argument("--healthz-interval", type=float, default=0.05)
    parser.add_argument("--no-health-port", action="store_true",
                        help="start the server without --health-port")
    parser.add_argument("--server-threads", type=int, default=1,
                        help="torch threads of the server")
    parser.add_argument("--server-option", action="append", default=[],
                        help="another `ofa-search serve` option (repeatable; write "
                        "--server-option=--flag)")
    parser.add_argument("--out", type=Path, default=Path("results") / "bench_service.json")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or min(args.clients) < 1 or args.cold_clients < 0:
        parser.error("--seconds must be > 0, --clients >= 1, --cold-clients >= 0")

    ws = Workspace(args.workspace)
    budgets, basis = budgets_for(ws, args.device)
    extra = ["--threads", str(args.server_threads), "--rate-limit", "off",
             *args.server_option]
    health_url = None
    if not args.no_health_port:
        health_port = free_port()
        extra += ["--health-port", str(health_port)]
        health_url = f"http://127.0.0.1:{health_port}"
    with served(ws.root, *extra) as url:
        cold = cold_target(ws, url, args.device, args.cold_device)
        run_level(url, args.device, budgets, 1, min(2.0, args.seconds), None, 0,
                  args.healthz_interval, health_url)  # warm-up, not reported
        levels = [run_level(url, args.device, budgets, clients, args.seconds, cold,
                            args.cold_clients, args.healthz_interval, health_url)
                  for clients in args.clients]
    storm = ("no cold storm (every device has a front)" if cold is None else
             f"cold storm: {args.cold_clients} clients on {cold[0]} at {cold[1]:.4g} ms")
    print(f"POST /query on {args.device} ({basis}; {len(budgets)} budgets), loopback, "
          f"server torch threads {args.server_threads}; {storm}; /healthz every "
          f"{args.healthz_interval:g} s")
    print_table(levels)
    atomic_write_json(args.out, {
        "benchmark": "bench_service", "created": now_iso(), "host": host_info(),
        "command": " ".join(["scripts/bench_service.py", *(argv or sys.argv[1:])]),
        "workspace": ws.root.name, "device": args.device, "budget_basis": basis,
        "budgets": budgets, "server_options": extra,
        "cold": None if cold is None else {"device": cold[0], "latency_ms": cold[1],
                                           "clients": args.cold_clients},
        "healthz_interval_s": args.healthz_interval,
        "targets_p99_ms": {f"{route}@{clients or 'any'}": ms
                           for (route, clients), ms in TARGETS_P99_MS.items()},
        "levels": levels})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
