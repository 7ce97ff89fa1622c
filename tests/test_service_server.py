"""The real server: ``ofa-search serve`` in a subprocess on 127.0.0.1, queried over HTTP by
8 concurrent clients; every answer equals the library's and the CLI's. Also over HTTP:
non-finite numbers (422), cold queries (409 at once, /healthz still answering), and a
server started with ``--api-key-all`` and a small ``--rate-limit``."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from test_service import DEVICE, build_workspace

from ofa_search.search.front import Front
from ofa_search.search.query import QueryEngine
from ofa_search.service.process import free_port
from ofa_search.service.process import served as served_on_loopback
from ofa_search.workspace import Workspace

CLIENTS, QUERIES = 8, 50
KEY = "server-test-key"


@pytest.fixture(scope="module")
def health_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, health_port: int
           ) -> Iterator[tuple[Workspace, str]]:
    ws = build_workspace(tmp_path_factory.mktemp("ws"))
    key_file = ws.root / "api-key.txt"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    # 8 clients on one address: far over the default per-client rate limit
    with served_on_loopback(ws.root, "--api-key-file", str(key_file), "--rate-limit",
                            "off", "--health-port", str(health_port)) as url:
        yield ws, url


def _strip(answer: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in answer.items() if k != "found_in_s"}


def test_concurrent_queries_match_library_and_cli(served: tuple[Workspace, str]) -> None:
    ws, url = served
    front = Front.load(ws.front(DEVICE))
    budgets = np.linspace(front.min_latency_ms, front.latencies[-1] * 1.2, 25).tolist()
    engine = QueryEngine(ws)
    expected = {b: _strip(engine.query(DEVICE, b).to_dict()) for b in budgets}

    def client(index: int) -> list[tuple[float, int, dict[str, object]]]:
        out = []
        with httpx.Client(base_url=url, timeout=30) as http:
            for j in range(QUERIES):
                budget = budgets[(index * 7 + j) % len(budgets)]
                res = http.post("/query", json={"device": DEVICE, "latency_ms": budget})
                out.append((budget, res.status_code, res.json()))
        return out

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = [r for batch in pool.map(client, range(CLIENTS)) for r in batch]
    assert len(results) == CLIENTS * QUERIES
    assert all(code == 200 for _, code, _ in results), {c for _, c, _ in results}
    for budget, _, body in results:
        assert _strip(body) == expected[budget]
    assert len({body["arch"] for _, _, body in results}) > 3  # budgets pick different archs

    budget = budgets[len(budgets) // 2]
    cli = subprocess.run([sys.executable, "-m", "ofa_search.cli", "query", "--workspace",
                          str(ws.root), "--device", DEVICE, "--latency-ms", repr(budget),
                          "--json"], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert _strip(json.loads(cli.stdout)) == expected[budget]


def test_errors_and_export_over_http(served: tuple[Workspace, str]) -> None:
    ws, url = served
    with httpx.Client(base_url=url, timeout=30) as http:
        unknown = http.post("/query", json={"device": "nope", "latency_ms": 1})
        assert unknown.status_code == 404 and DEVICE in unknown.json()["known"]
        assert http.post("/query", json={"device": DEVICE, "latency_ms": 0}).status_code == 422
        budget = Front.load(ws.front(DEVICE)).latencies[-1]
        body = {"device": DEVICE, "latency_ms": budget, "format": "onnx"}
        assert http.post("/exports", json=body).status_code == 401
        res = http.post("/exports", json=body, headers={"Authorization": f"Bearer {KEY}"})
        assert res.status_code == 202, res.text
        export_id = res.json()["id"]
        deadline = time.monotonic() + 60
        while (state := http.get(f"/exports/{export_id}").json())["status"] not in (
                "done", "failed") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert state["status"] == "done", state
        blob = http.get(state["artefact_url"])
        assert blob.status_code == 200
        assert hashlib.sha256(blob.content).hexdigest() == state["card"]["artefact"]["sha256"]
        assert state["card"]["device"]["measured_latency_ms"] > 0
        assert (ws.exports_dir / export_id / "model.onnx").read_bytes() == blob.content


def test_health_port_answers_like_healthz(served: tuple[Workspace, str],
                                          health_port: int) -> None:
    _, url = served
    main = httpx.get(f"{url}/healthz", timeout=30).json()
    with httpx.Client(base_url=f"http://127.0.0.1:{health_port}", timeout=30) as http:
        res = http.get("/healthz")
        assert res.status_code == 200, res.text
        body = res.json()
        assert 0 <= body.pop("event_loop_heartbeat_age_s") < 10
        assert body == main
        other = http.get("/query")
        assert other.status_code == 404 and "only GET /healthz" in other.json()["detail"]
        assert http.post("/healthz").status_code == 405


def test_hostile_input_over_http(served: tuple[Workspace, str], health_port: int) -> None:
    ws, url = served
    headers = {"content-type": "application/json"}
    with httpx.Client(base_url=url, timeout=30) as http:
        for number in ("NaN", "Infinity", "-Infinity", "1e309"):
            raw = f'{{"device": "{DEVICE}", "latency_ms": {number}}}'
            res = http.post("/query", content=raw, headers=headers)
            assert res.status_code == 422 and "finite" in res.json()["detail"], res.text
        assert http.post("/query", json={"device": DEVICE, "latency_ms": "0.15"}
                         ).status_code == 422
        # a device without a front needs a search: answered at once (409), never run
        with ThreadPoolExecutor(8) as pool:
            cold = list(pool.map(lambda _: http.post("/query", json={
                "device": "cpu-ort-2t", "latency_ms": 5}), range(16)))
        assert {r.status_code for r in cold} == {409}
        assert http.get("/healthz").status_code == 200
        health = httpx.get(f"http://127.0.0.1:{health_port}/healthz", timeout=30)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        unknown = http.post("/query", json={"device": "nope", "latency_ms": 1})
        assert str(ws.root) not in unknown.text and "/tmp" not in unknown.text


def test_api_key_all_and_rate_limit_over_http(served: tuple[Workspace, str]) -> None:
    ws, _ = served
    key_file = ws.root / "api-key.txt"
    auth = {"Authorization": f"Bearer {KEY}"}
    port = free_port()
    health = f"http://127.0.0.1:{port}/healthz"
    with served_on_loopback(ws.root, "--api-key-file", str(key_file), "--api-key-all",
                            "--rate-limit", "4/minute", "--health-port", str(port),
                            api_key=KEY) as url, \
            httpx.Client(base_url=url, timeout=30) as http:
        # the health port asks for the key too
        assert httpx.get(health, timeout=30).status_code == 401
        assert httpx.get(health, headers={"Authorization": "Bearer nope"},
                         timeout=30).status_code == 403
        assert httpx.get(health, headers=auth, timeout=30).status_code == 200
        assert http.get("/healthz").status_code == 401  # exempt from the limit, not the key
        codes = [http.get("/devices", headers=auth).status_code for _ in range(4)]
        assert codes == [200] * 4
        over = http.get("/devices", headers=auth)
        assert over.status_code == 429 and int(over.headers["retry-after"]) >= 1
        assert http.get("/healthz", headers=auth).status_code == 200
