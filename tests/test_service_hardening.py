"""The HTTP service against a hostile client (issue 20): non-finite and loosely typed
numbers, corrupt export files, server paths in answers, cold queries, the API key on
every route, the rate limit, the request time limit and quoted messages.

The workspace is the one :mod:`test_service` builds (a tiny trained supernet and a front
of ``cpu-ort-1t``); cold queries need a second one with a real (small) fitted accuracy
predictor and no front. Every TestClient checks its JSON answers for server paths
(:func:`test_service.checked_client`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from test_service import (
    DEVICE,
    SPACE,
    MacsAccuracy,
    build_workspace,
    checked_client,
    server_paths,
)

from ofa_search.arch import Arch
from ofa_search.workspace import Workspace

API_KEY = "hardening-test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return build_workspace(tmp_path_factory.mktemp("ws"), front_trials=150)


@pytest.fixture(scope="module")
def client(workspace: Workspace) -> Iterator[TestClient]:
    from ofa_search.service.app import create_app

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with checked_client(create_app(workspace, api_key=API_KEY, rate_limit=None),
                        workspace) as test_client:
        yield test_client
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cold_workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A workspace with a fitted (small, real) accuracy predictor and no front: every
    query on ``cpu-ort-1t`` needs a search."""
    from predictors.accuracy import MlpAccuracyPredictor

    ws = Workspace(tmp_path_factory.mktemp("cold-ws"))
    rng = np.random.default_rng(0)
    archs = [Arch.sample(SPACE, rng) for _ in range(40)]
    MlpAccuracyPredictor(SPACE, hidden=(16,), epochs=5, min_steps=20, holdout=0.0).fit(
        archs, MacsAccuracy().predict(archs)).save(ws.accuracy_predictor)
    return ws


def _front_high(workspace: Workspace) -> float:
    from ofa_search.search.front import Front

    return float(Front.load(workspace.front(DEVICE)).latencies[-1])


def _one_line_error(res: Any, status: int) -> str:
    assert res.status_code == status, res.text
    detail = res.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and detail.strip() == detail
    return detail


# -- 1. non-finite numbers: 422, not 500 ---------------------------------------------------
NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e309", "-1e309"]


@pytest.mark.parametrize("number", NON_FINITE)
def test_non_finite_budget_is_422(client: TestClient, number: str) -> None:
    for path, headers in (("/query", JSON), ("/exports", {**JSON, **AUTH})):
        raw = f'{{"device": "{DEVICE}", "latency_ms": {number}}}'
        detail = _one_line_error(client.post(path, content=raw, headers=headers), 422)
        assert "latency_ms" in detail and "finite" in detail, detail
    raw = f'{{"device": "{DEVICE}", "latency_ms": 1.0, "confidence": {number}}}'
    detail = _one_line_error(client.post("/query", content=raw, headers=JSON), 422)
    assert "confidence" in detail


def test_body_that_is_not_utf8_is_422(client: TestClient) -> None:
    res = client.post("/query", content=b'{"device": "\xff\xfe", "latency_ms": 1}',
                      headers=JSON)
    assert "invalid request" in _one_line_error(res, 422)


def test_validation_errors_never_echo_the_input(client: TestClient) -> None:
    res = client.post("/query", content=b'{"device": "x", "latency_ms": NaN, "typo": 1}',
                      headers=JSON)
    body = res.json()
    assert res.status_code == 422 and len(body["errors"]) == 2
    assert all(set(e) == {"loc", "msg", "type"} for e in body["errors"])
    assert body["detail"].startswith("invalid request: ") and "typo" in body["detail"]
    bad = client.post("/query", content=b"{not json", headers=JSON)
    assert "JSON decode error" in _one_line_error(bad, 422)


# -- 4. strict types over HTTP -------------------------------------------------------------
@pytest.mark.parametrize("value", ["0.15", True, False, "1", [1.0], {"ms": 1}, None])
def test_budgets_must_be_json_numbers(client: TestClient, value: object) -> None:
    res = client.post("/query", json={"device": DEVICE, "latency_ms": value})
    assert "latency_ms" in _one_line_error(res, 422)
    res = client.post("/exports", headers=AUTH, json={"device": DEVICE, "latency_ms": value})
    assert res.status_code == 422, res.text
    res = client.post("/query", json={"device": DEVICE, "latency_ms": 1.0,
                                      "confidence": value if value is not None else "x"})
    assert res.status_code == 422, res.text


def test_integer_budget_is_a_number(client: TestClient, workspace: Workspace) -> None:
    budget = int(np.ceil(_front_high(workspace))) + 1
    res = client.post("/query", json={"device": DEVICE, "latency_ms": budget})
    assert res.status_code == 200 and res.json()["source"] == "front", res.text
    # a string field takes no number either
    assert client.post("/query", json={"device": 7, "latency_ms": 1}).status_code == 422


def test_world_readable_api_key_file_warns(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from ofa_search.cli.serve import read_api_key

    key_file = tmp_path / "key"
    key_file.write_text("s3cret\n")
    key_file.chmod(0o644)
    assert read_api_key(None, key_file) == "s3cret"
    err = capsys.readouterr().err
    assert "warning" in err and "readable by every user" in err and "chmod 600" in err
    key_file.chmod(0o640)
    assert read_api_key(None, key_file) == "s3cret"
    assert capsys.readouterr().err == ""


# -- 2. corrupt export files: a clean 409, the file untouched ------------------------------
CORRUPT_JOBS = {
    "not-json": b"{not json",
    "list": b"[1, 2]",
    "no-status": b'{"arch": "x"}',
    "bad-status": b'{"status": "weird"}',
    "typed-wrong": b'{"status": "failed", "arch": 5, "error": ["x"]}',
    "binary": b"\xff\xfe\x00garbage",
}


@pytest.mark.parametrize("kind", sorted(CORRUPT_JOBS))
def test_corrupt_job_file_is_409_and_kept(client: TestClient, workspace: Workspace,
                                          kind: str) -> None:
    export_id = f"e{sorted(CORRUPT_JOBS).index(kind):031x}"
    folder = workspace.exports_dir / export_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job.json").write_bytes(CORRUPT_JOBS[kind])
    for path in (f"/exports/{export_id}", f"/exports/{export_id}/artefact"):
        detail = _one_line_error(client.get(path), 409)
        assert f"exports/{export_id}/job.json" in detail, detail
    assert (folder / "job.json").read_bytes() == CORRUPT_JOBS[kind]  # never rewritten


@pytest.mark.parametrize("card", [b"{oops", b"[]", b'{"format": "something else"}'])
def test_corrupt_model_card_is_409_naming_the_relative_path(
        client: TestClient, workspace: Workspace, card: bytes) -> None:
    export_id = "c" * 31 + str(len(card) % 10)
    folder = workspace.exports_dir / export_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_card.json").write_bytes(card)
    detail = _one_line_error(client.get(f"/exports/{export_id}"), 409)
    assert f"exports/{export_id}/model_card.json" in detail, detail
    assert (folder / "model_card.json").read_bytes() == card


def test_done_job_with_a_corrupt_card_is_409(client: TestClient,
                                              workspace: Workspace) -> None:
    export_id = "d" * 32
    folder = workspace.exports_dir / export_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job.json").write_text(json.dumps({"status": "done", "arch": "x"}))
    (folder / "model_card.json").write_text("not a card")
    for path in (f"/exports/{export_id}", f"/exports/{export_id}/artefact"):
        assert "model_card.json" in _one_line_error(client.get(path), 409)


# -- 3. no absolute server path in any answer ----------------------------------------------
def test_unknown_device_lists_ids_not_folders(client: TestClient, workspace: Workspace) -> None:
    for path, body in (("/query", {"device": "my-phone", "latency_ms": 5}),
                       ("/exports", {"device": "my-phone", "latency_ms": 5})):
        res = client.post(path, json=body, headers=AUTH)
        detail = _one_line_error(res, 404)
        assert "hw_profiles" not in detail and "/" not in detail, detail
        assert DEVICE in res.json()["known"]


def test_path_redactor() -> None:
    from ofa_search.service.app import PathRedactor

    root = Path("/tmp/some-ws")
    redact = PathRedactor(root)
    assert redact.text("no predictor at /tmp/some-ws/predictors/a.json; run `x -w "
                       "/tmp/some-ws`") == ("no predictor at predictors/a.json; run `x -w "
                                            "WORKSPACE`")
    assert redact.text("in ['/tmp/other/hw_profiles', '/usr/lib/x.so']") == \
        "in ['hw_profiles', 'x.so']"
    assert redact.text("/tmp/some-ws2/x") == "x"  # a sibling is not the workspace
    for kept in ("GET /exports/abc/artefact", "http://host/tmp/x", "1/2 ms", "a/b/c",
                 "no slash at all"):
        assert redact.text(kept) == kept
    assert redact({"a": [float("nan"), 1.5, {"b": "/tmp/x/y.pt"}], "c": None}) == {
        "a": [None, 1.5, {"b": "y.pt"}], "c": None}


def test_export_card_and_errors_carry_no_server_path(client: TestClient,
                                                     workspace: Workspace) -> None:
    arch = Arch.smallest(SPACE).to_string()
    res = client.post("/exports", headers=AUTH, json={"arch": arch, "format": "state_dict"})
    assert res.status_code == 202, res.text
    export_id = res.json()["id"]
    deadline = time.monotonic() + 120
    while (state := client.get(f"/exports/{export_id}")).json()["status"] not in (
            "done", "failed") and time.monotonic() < deadline:
        time.sleep(0.1)
    body = state.json()
    assert body["status"] == "done", body
    text = state.text
    assert not any(path in text for path in server_paths(workspace))
    assert body["card"]["supernet"]["checkpoint"] == "supernet/checkpoint.pt"


# -- 5. cold queries: 409 with how to build the front, or queued ---------------------------
def test_cold_query_is_refused_with_the_command(cold_workspace: Workspace) -> None:
    from ofa_search.search.query import QueryEngine
    from ofa_search.service.app import create_app

    low = QueryEngine(cold_workspace).min_latency_ms(DEVICE)
    with checked_client(create_app(cold_workspace, rate_limit=None),
                        cold_workspace) as local:
        assert local.get("/healthz").json()["queryable"][DEVICE] == "no front"
        res = local.post("/query", json={"device": DEVICE, "latency_ms": low * 2})
        detail = _one_line_error(res, 409)
        assert f"`ofa-search search --workspace WORKSPACE --device {DEVICE}`" in detail
        assert "--cold-queries queue" in detail
        # the same for an export by budget (no checkpoint here: that is 409 first)
        assert local.get("/queries/" + "0" * 32).status_code == 404


def test_cold_query_queued_off_the_request_path(cold_workspace: Workspace) -> None:
    from ofa_search.search.query import QueryEngine
    from ofa_search.service.app import create_app

    low = QueryEngine(cold_workspace).min_latency_ms(DEVICE)
    body = {"device": DEVICE, "latency_ms": low * 2}
    with checked_client(create_app(cold_workspace, rate_limit=None, cold_queries="queue",
                                   max_pending_cold=0), cold_workspace) as local:
        res = local.post("/query", json=body)
        assert res.status_code == 202, res.text
        job = res.json()
        assert job["url"] == f"/queries/{job['id']}" and res.headers["location"] == job["url"]
        again = local.post("/query", json=body)  # the same query: the same job
        assert again.status_code == 202 and again.json()["id"] == job["id"]
        other = local.post("/query", json={**body, "latency_ms": low * 3})
        assert other.status_code in (202, 429)  # one worker, no queue: 429 while busy
        if other.status_code == 429:
            assert "retry later" in other.json()["detail"] and other.headers["retry-after"]
        assert local.get("/healthz").status_code == 200  # answered while the search runs
        deadline = time.monotonic() + 300
        while (state := local.get(job["url"]).json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, state
            time.sleep(0.2)
        assert state["status"] == "done", state
        assert state["result"]["source"] == "search"
        assert state["result"]["predicted_latency_ms"] <= body["latency_ms"]
        # an infeasible budget fails at once, like any query (422), and is not queued
        tight = local.post("/query", json={"device": DEVICE, "latency_ms": low / 2})
        assert tight.status_code == 422 and tight.json()["min_latency_ms"] > 0


def test_no_accuracy_predictor_is_409_before_any_queueing(workspace: Workspace) -> None:
    from ofa_search.service.app import create_app

    with checked_client(create_app(workspace, rate_limit=None, cold_queries="queue"),
                        workspace) as local:
        res = local.post("/query", json={"device": "cpu-ort-2t", "latency_ms": 5})
        assert "fit-predictors" in _one_line_error(res, 409)


# -- 6. API key on every route, rate limit, request time limit -----------------------------
def test_api_key_on_every_route(workspace: Workspace) -> None:
    from ofa_search.service.app import create_app

    app = create_app(workspace, api_key=API_KEY, api_key_all=True, rate_limit=None)
    routes = ["/healthz", "/devices", f"/devices/{DEVICE}", "/exports/" + "0" * 32,
              "/queries/" + "0" * 32, "/openapi.json"]
    with checked_client(app, workspace) as local:
        for path in routes:
            assert local.get(path).status_code == 401, path
            assert local.get(path, headers={"Authorization": "Bearer nope"}
                             ).status_code == 403, path
            assert local.get(path, headers=AUTH).status_code in (200, 404), path
        assert local.post("/query", json={"device": DEVICE, "latency_ms": 1}
                          ).status_code == 401
        ok = local.post("/query", headers=AUTH,
                        json={"device": DEVICE, "latency_ms": _front_high(workspace)})
        assert ok.status_code == 200, ok.text
        assert local.get("/docs").status_code == 404
        assert local.get("/healthz", headers=AUTH).json()["auth"] is True
    with pytest.raises(ValueError, match="needs an api_key"):
        create_app(workspace, api_key_all=True)


def test_rate_limit_per_client(workspace: Workspace) -> None:
    from ofa_search.service.app import create_app

    with checked_client(create_app(workspace, rate_limit="3/minute"), workspace) as local:
        codes = [local.get("/devices").status_code for _ in range(3)]
        assert codes == [200, 200, 200]
        over = local.post("/query", json={"device": DEVICE, "latency_ms": 1})
        detail = _one_line_error(over, 429)
        assert "3/minute" in detail and int(over.headers["retry-after"]) >= 1
        assert local.get("/healthz").status_code == 200  # exempt
    with checked_client(create_app(workspace, rate_limit=None), workspace) as local:
        assert {local.get("/devices").status_code for _ in range(20)} == {200}
    for bad in ("lots", "", "5/fortnight"):
        with pytest.raises(ValueError, match="rate limit"):
            create_app(workspace, rate_limit=bad)


def test_request_time_limit_is_503(workspace: Workspace) -> None:
    """A time limit no handler can meet: every request that reaches a ``def`` handler
    (a thread) is answered 503 at once; its late answer is dropped. (``POST /query`` from
    a loaded front answers on the event loop in microseconds, before any limit.)"""
    from ofa_search.service.app import create_app

    body = {"device": DEVICE, "latency_ms": _front_high(workspace)}
    with checked_client(create_app(workspace, rate_limit=None, request_timeout_s=1e-9),
                        workspace) as local:
        res = local.get(f"/devices/{DEVICE}")  # a def route: run in a thread
        detail = _one_line_error(res, 503)
        assert "took longer than" in detail and res.headers["retry-after"]
    with checked_client(create_app(workspace, rate_limit=None, request_timeout_s=60),
                        workspace) as local:
        assert local.post("/query", json=body).status_code == 200
        blob_id = "f" * 32  # no such export: the ordinary 404 passes the middleware
        assert local.get(f"/exports/{blob_id}/artefact").status_code == 404
    with pytest.raises(ValueError, match="request_timeout_s"):
        create_app(workspace, request_timeout_s=0)


def test_serve_options_are_checked_before_serving(workspace: Workspace,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from ofa_search.cli import main

    monkeypatch.delenv("OFA_SEARCH_API_KEY", raising=False)
    for args, message in ((["--api-key-all"], "--api-key-all needs an API key"),
                          (["--cold-queries", "later"], "--cold-queries must be one of"),
                          (["--rate-limit", "lots"], "--rate-limit")):
        with pytest.raises(SystemExit) as stop:
            main(["serve", "--workspace", str(workspace.root), "--port", "0", *args])
        assert stop.value.code == 2, args
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


# -- 7. messages read cleanly --------------------------------------------------------------
def test_messages_have_no_doubled_quotes(client: TestClient) -> None:
    res = client.get("/exports/" + "0" * 32)
    detail = _one_line_error(res, 404)
    assert detail == f"no export with id {'0' * 32!r}"
    assert not detail.startswith(("'", '"'))
    job = client.get("/queries/" + "0" * 32)
    assert not _one_line_error(job, 404).startswith(("'", '"'))


def test_modes_of_the_key_file_are_not_touched(tmp_path: Path) -> None:
    """The warning only reads the mode."""
    from ofa_search.cli.serve import warn_if_world_readable

    key_file = tmp_path / "key"
    key_file.write_text("k\n")
    key_file.chmod(0o604)
    assert warn_if_world_readable(key_file) is True
    assert os.stat(key_file).st_mode & 0o777 == 0o604
    assert warn_if_world_readable(tmp_path / "missing") is False


# -- 8. a health listener that does not wait behind queries ---------------------------------
def test_health_listener_in_process(workspace: Workspace) -> None:
    import httpx

    from ofa_search.service.app import create_app
    from ofa_search.service.health import HealthListener

    health = HealthListener("127.0.0.1", 0)
    url = f"http://127.0.0.1:{health.port}/healthz"
    with TestClient(create_app(workspace, rate_limit=None, health=health)) as client:
        body = httpx.get(url, timeout=30).json()
        assert body.pop("event_loop_heartbeat_age_s") >= 0
        assert body == client.get("/healthz").json()
    with pytest.raises(httpx.TransportError):  # stopped with the service
        httpx.get(url, timeout=5)


def test_health_listener_fails_when_the_event_loop_stalls() -> None:
    from ofa_search.service.health import HealthListener

    health = HealthListener("127.0.0.1", 0, stale_after_s=0.2, api_key="k")
    try:
        assert health.answer("/healthz", None)[0] == 401
        assert health.answer("/healthz", "Bearer x")[0] == 403
        assert health.answer("/devices", "Bearer k")[0] == 404
        health.beat()
        assert health.answer("/healthz", "Bearer k")[0] == 200
        time.sleep(0.3)  # no heartbeat: the loop is blocked or dead
        status, body = health.answer("/healthz", "Bearer k")
        assert status == 503 and body["status"] == "stalled" and "event loop" in body["detail"]
        health.beat()
        assert health.answer("/healthz?verbose=1", "Bearer k")[0] == 200
    finally:
        health.stop()
    with pytest.raises(ValueError, match="stale_after_s"):
        HealthListener("127.0.0.1", 0, stale_after_s=0)


def test_serve_refuses_a_health_port_it_cannot_use(workspace: Workspace,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from ofa_search.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for args, message in ((["--port", str(port), "--health-port", str(port)],
                               "is the service's --port"),
                              (["--port", "0", "--health-port", str(port)],
                               f"cannot listen on 127.0.0.1:{port}")):
            with pytest.raises(SystemExit) as stop:
                main(["serve", "--workspace", str(workspace.root), *args])
            assert stop.value.code == 2, args
            err = capsys.readouterr().err
            assert message in err and len(err.strip().splitlines()) == 1, err
