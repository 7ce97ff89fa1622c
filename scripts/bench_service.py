"""Throughput and latency of ``POST /query`` over loopback HTTP at several concurrencies.

    python scripts/bench_service.py WORKSPACE --device cpu-ort-1t [--clients 1 8 32]
        [--requests 400] [--out bench_service.json] [--server-threads 1]

Starts ``ofa-search serve --workspace WORKSPACE`` on a free 127.0.0.1 port in a subprocess,
waits for ``/healthz``, then for each client count runs that many threads, each with its
own keep-alive ``httpx.Client``, sending ``--requests`` queries in total with budgets
spread over the device's front (so every answer comes from the front; without a front the
budgets span the table's range and queries may need a cold search). Per-request latency is
client-side wall time. Prints one row per client count (throughput, p50, p90, p99, max,
errors) and writes all of it as JSON (atomically). Target: p99 <= 50 ms at 8 clients.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from ofa_search.atomic import atomic_write_json
from ofa_search.profiling.lut import now_iso
from ofa_search.service_process import served
from ofa_search.workspace import Workspace


def budgets_for(ws: Workspace, device: str, n: int = 50) -> tuple[list[float], str]:
    """Budgets spread over the device's front (or, without one, the table's range)."""
    from ofa_search.search.front import Front

    path = ws.front(device)
    if path.is_file():
        front = Front.load(path)
        return np.linspace(front.min_latency_ms, front.latencies[-1], n).tolist(), "front"
    from ofa_search.search.query import QueryEngine

    low = QueryEngine(ws).min_latency_ms(device)
    return np.linspace(low * 1.05, low * 4, n).tolist(), "no front"


def run_level(url: str, device: str, budgets: list[float], clients: int,
              requests: int) -> dict[str, Any]:
    """``requests`` queries from ``clients`` threads; client-side latencies in ms."""
    per_client = max(1, requests // clients)
    latencies: list[float] = []
    errors: list[str] = []
    sources: dict[str, int] = {}
    lock = threading.Lock()
    start_gate = threading.Barrier(clients)

    def client(index: int) -> None:
        local, bad, src = [], [], {}
        with httpx.Client(base_url=url, timeout=30) as http:
            http.get("/healthz")  # open the connection before the clock starts
            start_gate.wait()
            for j in range(per_client):
                body = {"device": device, "latency_ms": budgets[(index * 13 + j) % len(budgets)]}
                t0 = time.perf_counter()
                res = http.post("/query", json=body)
                local.append((time.perf_counter() - t0) * 1e3)
                if res.status_code != 200:
                    bad.append(f"{res.status_code}: {res.text[:120]}")
                else:
                    source = res.json()["source"]
                    src[source] = src.get(source, 0) + 1
        with lock:
            latencies.extend(local)
            errors.extend(bad)
            for key, count in src.items():
                sources[key] = sources.get(key, 0) + count

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - t0
    lat = np.asarray(latencies)
    return {"clients": clients, "requests": int(lat.size), "wall_s": wall,
            "throughput_rps": lat.size / wall, "p50_ms": float(np.percentile(lat, 50)),
            "p90_ms": float(np.percentile(lat, 90)), "p99_ms": float(np.percentile(lat, 99)),
            "max_ms": float(lat.max()), "errors": len(errors), "error_samples": errors[:3],
            "sources": sources}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--device", default="cpu-ort-1t")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=400, help="queries per client count")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--server-threads", type=int, default=1,
                        help="torch threads of the server")
    parser.add_argument("--out", type=Path, default=Path("bench_service.json"))
    args = parser.parse_args(argv)

    ws = Workspace(args.workspace)
    budgets, basis = budgets_for(ws, args.device)
    with served(ws.root, "--threads", str(args.server_threads)) as url:
        run_level(url, args.device, budgets, 1, args.warmup)
        rows = [run_level(url, args.device, budgets, c, args.requests) for c in args.clients]
    print(f"POST /query on {args.device} ({basis}; {len(budgets)} budgets), loopback, "
          f"server torch threads {args.server_threads}")
    print(f"{'clients':>7} {'requests':>8} {'req/s':>8} {'p50 ms':>7} {'p90 ms':>7} "
          f"{'p99 ms':>7} {'max ms':>7} {'errors':>6}  sources")
    for r in rows:
        print(f"{r['clients']:>7} {r['requests']:>8} {r['throughput_rps']:>8.0f} "
              f"{r['p50_ms']:>7.2f} {r['p90_ms']:>7.2f} {r['p99_ms']:>7.2f} "
              f"{r['max_ms']:>7.2f} {r['errors']:>6}  {r['sources']}")
    atomic_write_json(args.out, {"created": now_iso(), "device": args.device,
                                 "budget_basis": basis, "budgets": budgets,
                                 "cpu_count": os.cpu_count(),
                                 "python": platform.python_version(), "levels": rows,
                                 "command": " ".join(["scripts/bench_service.py",
                                                      *(argv or sys.argv[1:])])})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
