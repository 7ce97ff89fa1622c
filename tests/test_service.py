"""The HTTP service through FastAPI's TestClient: every route and every error answer.

The workspace is real: a tiny trained supernet checkpoint, the shipped ``cpu-ort-1t``
table and learned latency predictor, and a Pareto front computed by NSGA-II. The front's
accuracies come from :class:`MacsAccuracy` (a deterministic stand-in for a fitted accuracy
predictor), so the workspace has no accuracy predictor file: queries answered from the
front work, those that would need a cold search get the "fit a predictor first" 409.

Every TestClient here (and in the other ``test_service_*`` modules) comes from
:func:`checked_client`, which checks every JSON answer for the workspace's absolute path
and ``/tmp``: no answer may carry a path of the server.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from ofa_search.arch import Arch
from ofa_search.model_card import read_card
from ofa_search.workspace import Workspace

DEVICE = "cpu-ort-1t"
SPACE = "mbv3_small28"
API_KEY = "s3cret-test-key"


class MacsAccuracy:
    """Predicted accuracy rising with MACs (deterministic, in [0.5, 0.9))."""

    space = SPACE

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        from ofa_search.units import count_macs

        macs = np.array([count_macs(a) for a in archs], dtype=float)
        return 0.9 - 0.4 / (1.0 + macs / 1e6)

    def predict_std(self, archs: Sequence[Arch]) -> np.ndarray:
        return np.full(len(archs), 0.01)


def build_workspace(root: Path, *, front_trials: int = 300) -> Workspace:
    """A small, complete-enough workspace: checkpoint + front of ``cpu-ort-1t``."""
    from ofa_search.search.context import load_context
    from ofa_search.search.engines import run_search
    from ofa_search.search.front import make_front
    from ofa_search.train import TrainConfig, train

    ws = Workspace(root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(TrainConfig(space=SPACE, dataset="digits", batch_size=32, resolutions=(16,),
                          epochs=1, steps_per_epoch=2, strategy="spos", quiet=True, seed=3,
                          out_dir=str(ws.supernet_dir)))
    finally:
        torch.set_num_threads(threads)
    ctx = load_context(ws, DEVICE, accuracy=MacsAccuracy(), accuracy_name="macs-test")
    result = run_search(ctx.encoding, ctx.evaluator(), budget_ms=None, engine="nsga2",
                        n_trials=front_trials, seed=0, record_trials=False)
    make_front(ctx, result.evaluations, {"engine": "nsga2", "n_trials": front_trials}).save(
        ws.front(DEVICE))
    return ws


CHECKED_RESPONSES: list[str] = []  # "METHOD path status" of every JSON answer checked


def server_paths(workspace: Workspace) -> set[str]:
    """What no answer may contain: the workspace's absolute path (as given and resolved)
    and ``/tmp`` (where the test workspaces live)."""
    return {str(workspace.root.absolute()), str(workspace.root.resolve()), "/tmp"}


def checked_client(app: Any, workspace: Workspace, **kwargs: Any) -> TestClient:
    """A TestClient of ``app`` that fails the request whose JSON answer carries a server
    path (see :func:`server_paths`)."""
    forbidden = server_paths(workspace)

    def check(response: httpx.Response) -> None:
        response.read()
        if not response.headers.get("content-type", "").startswith("application/json"):
            return
        leaked = sorted(path for path in forbidden if path in response.text)
        request = response.request
        assert not leaked, (f"{request.method} {request.url.path} answered a server path "
                            f"{leaked}: {response.text[:500]}")
        CHECKED_RESPONSES.append(f"{request.method} {request.url.path} {response.status_code}")

    test_client = TestClient(app, **kwargs)
    test_client.event_hooks = {"request": [], "response": [check]}
    return test_client


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return build_workspace(tmp_path_factory.mktemp("ws"))


@pytest.fixture(scope="module")
def client(workspace: Workspace) -> Iterator[TestClient]:
    from ofa_search.service.app import create_app

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with checked_client(create_app(workspace, api_key=API_KEY), workspace) as test_client:
        yield test_client
    torch.set_num_threads(threads)


def _front_budgets(workspace: Workspace) -> tuple[float, float]:
    from ofa_search.search.front import Front

    front = Front.load(workspace.front(DEVICE))
    return front.min_latency_ms, front.latencies[-1]


AUTH = {"Authorization": f"Bearer {API_KEY}"}


def test_healthz_and_openapi(client: TestClient) -> None:
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["auth"] and health["checkpoint"]
    assert DEVICE in health["devices"] and health["queryable"][DEVICE] == "front"
    schema = client.get("/openapi.json").json()
    assert {"/healthz", "/devices", "/devices/{device_id}", "/query", "/exports",
            "/exports/{export_id}", "/exports/{export_id}/artefact"} <= set(schema["paths"])
    assert "QueryRequest" in schema["components"]["schemas"]


def test_devices(client: TestClient) -> None:
    listed = client.get("/devices").json()
    ids = [d["device_id"] for d in listed]
    assert ids == sorted(ids) and {DEVICE, "cpu-ort-2t", "note10-tflite"} <= set(ids)
    one = client.get(f"/devices/{DEVICE}").json()
    assert one["space"] == SPACE and one["backend"] == "onnxruntime" and one["measurable"]
    assert one["latency_predictor"] == "learned" and one["entries"] > 100
    assert 0 < one["min_latency_ms"] < 1.0 and "path" not in one
    assert 0 < one["unit_spread"] < 1  # its units' rounds agreed within that (median)
    imported = client.get("/devices/note10-tflite").json()
    assert imported["measurable"] is False and imported["unit_spread"] is None


@pytest.mark.parametrize("device", ["no-such-device", "..", "a%2F..%2Fb"])
def test_unknown_device_is_404_with_known_ids(client: TestClient, device: str) -> None:
    res = client.get(f"/devices/{device}")
    assert res.status_code == 404
    if res.json().get("known") is not None:  # a path that reached the route
        assert DEVICE in res.json()["known"] and "no latency table" in res.json()["detail"]


def test_query_answers_like_the_library(client: TestClient, workspace: Workspace) -> None:
    from ofa_search.search.query import QueryEngine

    low, high = _front_budgets(workspace)
    budget = (low + high) / 2
    res = client.post("/query", json={"device": DEVICE, "latency_ms": budget})
    assert res.status_code == 200, res.text
    body = res.json()
    expected = QueryEngine(workspace).query(DEVICE, budget).to_dict()
    assert body["source"] == "front" and body["predicted_latency_ms"] <= budget
    for key in expected.keys() - {"found_in_s"}:
        assert body[key] == expected[key], key
    Arch.parse(body["arch"], SPACE)  # a valid arch string


def test_query_errors(client: TestClient, workspace: Workspace) -> None:
    unknown = client.post("/query", json={"device": "nope", "latency_ms": 1.0})
    assert unknown.status_code == 404 and DEVICE in unknown.json()["known"]
    low, _ = _front_budgets(workspace)
    tight = client.post("/query", json={"device": DEVICE, "latency_ms": 1e-6})
    assert tight.status_code == 422
    assert 0 < tight.json()["min_latency_ms"] <= low and "minimum" in tight.json()["detail"]
    for body in ({"device": DEVICE}, {"device": DEVICE, "latency_ms": -1},
                 {"device": DEVICE, "latency_ms": 0}, {"device": DEVICE, "latency_ms": "x"},
                 {"device": "../etc/x", "latency_ms": 1}, {"device": DEVICE, "latency_ms": 1,
                                                           "typo": 1}, [1, 2]):
        assert client.post("/query", json=body).status_code == 422, body
    int8 = client.post("/query", json={"device": DEVICE, "latency_ms": 1, "precision": "int8"})
    assert int8.status_code == 422 and "precision 'int8' is not available" in int8.text
    bad = client.post("/query", content=b"{not json", headers={"content-type":
                                                                 "application/json"})
    assert bad.status_code == 422
    # a budget between the fastest subnet and the front's fastest point needs a cold
    # search, hence the accuracy predictor this workspace lacks: 409, not 500
    from ofa_search.search.query import QueryEngine

    floor = QueryEngine(workspace).min_latency_ms(DEVICE)
    if floor < low * 0.999:
        res = client.post("/query", json={"device": DEVICE, "latency_ms": (floor + low) / 2})
        assert res.status_code == 409 and "accuracy predictor" in res.json()["detail"]


def test_query_confidence(client: TestClient, workspace: Workspace) -> None:
    _, high = _front_budgets(workspace)
    # the workspace never measured the device: by default the answer fits by its point
    # estimate and says so; an explicit confidence is refused with how to calibrate
    res = client.post("/query", json={"device": DEVICE, "latency_ms": high})
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["confidence"] is None and body["latency_upper_ms"] is None
    assert body["latency_scale"] == 1.0
    assert any(f"fit-predictors --device {DEVICE}" in w for w in body["warnings"])
    asked = client.post("/query", json={"device": DEVICE, "latency_ms": high,
                                        "confidence": 0.9})
    assert asked.status_code == 422 and "no calibration data" in asked.json()["detail"]
    for bad in (0, 1, 1.5, -0.1, "x"):
        res = client.post("/query", json={"device": DEVICE, "latency_ms": high,
                                          "confidence": bad})
        assert res.status_code == 422, bad
    info = client.get(f"/devices/{DEVICE}").json()
    assert info["calibrated"] is False and info["latency_scale"] == 1.0
    assert info["latency_scale_by_mode"] == {"fp32": 1.0}  # every mode its table prices


def _wait_done(client: TestClient, export_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.get(f"/exports/{export_id}").json()
        if state["status"] in ("done", "failed"):
            return dict(state)
        time.sleep(0.1)
    raise AssertionError(f"export {export_id} did not finish in {timeout} s")


def test_export_by_budget_then_download(client: TestClient, workspace: Workspace) -> None:
    import hashlib

    low, high = _front_budgets(workspace)
    res = client.post("/exports", headers=AUTH, json={"device": DEVICE, "format": "onnx",
                                                      "latency_ms": (low + high) / 2})
    assert res.status_code == 202, res.text
    accepted = res.json()
    assert accepted["status"] == "queued" and len(accepted["id"]) == 32
    assert accepted["query"]["arch"] == accepted["arch"]
    assert accepted["url"] == f"/exports/{accepted['id']}"
    state = _wait_done(client, accepted["id"])
    assert state["status"] == "done", state
    card = state["card"]
    assert isinstance(card, dict)
    assert card["arch"]["string"] == accepted["arch"] and card["device"]["id"] == DEVICE
    assert card["device"]["measured_latency_ms"] > 0 and card["verification"]["passed"]
    # the card as written, but no absolute server path: the checkpoint is relative
    on_disk = read_card(workspace.exports_dir / accepted["id"])
    assert card["supernet"]["checkpoint"] == "supernet/checkpoint.pt"
    assert {**card, "supernet": None} == {**on_disk, "supernet": None}
    assert {k: v for k, v in card["supernet"].items() if k != "checkpoint"} == {
        k: v for k, v in on_disk["supernet"].items() if k != "checkpoint"}
    blob = client.get(f"/exports/{accepted['id']}/artefact")
    assert blob.status_code == 200 and len(blob.content) == card["artefact"]["bytes"]
    assert hashlib.sha256(blob.content).hexdigest() == card["artefact"]["sha256"]


def test_export_errors_and_auth(client: TestClient) -> None:
    arch = Arch.smallest(SPACE).to_string()
    body = {"arch": arch, "format": "state_dict"}
    assert client.post("/exports", json=body).status_code == 401
    assert client.post("/exports", json=body,
                       headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert client.post("/exports", json=body,
                       headers={"Authorization": "Basic eDp5"}).status_code in (401, 403)
    for bad, code in (({"arch": arch, "format": "tflite"}, 422),
                      ({"arch": "r28_w1.0_k9e9", "format": "onnx"}, 422),
                      ({"arch": arch.replace("_w1.0_", "_w0.5_"), "format": "onnx"}, 422),
                      ({"arch": "{\"ks\": [3]", "format": "onnx"}, 422),
                      ({"format": "onnx"}, 422), ({"device": DEVICE, "format": "onnx"}, 422),
                      ({"arch": arch, "latency_ms": 1.0, "device": DEVICE}, 422),
                      ({"device": "nope", "latency_ms": 1.0}, 404),
                      ({"arch": arch, "device": "note10-tflite"}, 422),  # another space
                      ({"device": DEVICE, "latency_ms": 1e-6}, 422)):
        res = client.post("/exports", json=bad, headers=AUTH)
        assert res.status_code == code, (bad, res.text)
    assert "known formats" in client.post("/exports", headers=AUTH, json={
        "arch": arch, "format": "tflite"}).json()["detail"]
    # reading routes are open; ids are validated before any path is built
    assert client.get("/exports/" + "0" * 32).status_code == 404
    for bad_id in ("..", "../../etc/passwd", "ABC", "0" * 31, "g" * 32):
        assert client.get(f"/exports/{bad_id}").status_code in (404, 422), bad_id
        assert client.get(f"/exports/{bad_id}/artefact").status_code in (404, 422), bad_id
    res = client.post("/exports", json=body, headers=AUTH)
    assert res.status_code == 202
    state = _wait_done(client, res.json()["id"])
    assert state["status"] == "done" and state["card"]["artefact"]["format"] == "state_dict"


def test_failed_export_reports_its_error(workspace: Workspace) -> None:
    """An export whose checkpoint turned unreadable after start-up fails with a message
    (on the job, not as a 500)."""
    import shutil

    from ofa_search.service.app import create_app

    broken = Workspace(workspace.root.parent / "broken")
    broken.supernet_dir.mkdir(parents=True)
    shutil.copy(workspace.checkpoint, broken.checkpoint)
    with checked_client(create_app(broken), broken) as local:
        broken.checkpoint.write_bytes(b"garbage")
        res = local.post("/exports", json={"arch": Arch.smallest(SPACE).to_string()})
        assert res.status_code == 202
        state = _wait_done(local, res.json()["id"])
        assert state["status"] == "failed" and "not a readable" in str(state["error"])
        assert local.get(f"/exports/{res.json()['id']}/artefact").status_code == 409
        # no checkpoint at all: 409 at submission
    broken.checkpoint.unlink()
    with checked_client(create_app(broken), broken) as local:
        res = local.post("/exports", json={"arch": Arch.smallest(SPACE).to_string()})
        assert res.status_code == 409 and "checkpoint" in res.json()["detail"]


def test_queue_full_is_429(workspace: Workspace) -> None:
    from ofa_search.service.app import create_app

    arch = Arch.smallest(SPACE).to_string()
    with checked_client(create_app(workspace, max_pending_exports=0), workspace) as local:
        codes = [local.post("/exports", json={"arch": arch, "format": "state_dict"})
                 for _ in range(3)]
        assert codes[0].status_code == 202
        assert 429 in [r.status_code for r in codes[1:]]
        full = next(r for r in codes if r.status_code == 429)
        assert full.headers["retry-after"] == "5" and "retry later" in full.json()["detail"]
        _wait_done(local, codes[0].json()["id"])


def test_no_answer_carried_a_server_path(client: TestClient) -> None:
    """Every JSON answer of this module goes through :func:`checked_client`'s check, which
    fails the request that leaks a path; here the answers most likely to (errors naming
    files and tables) are asked for once more, and the check must have seen them."""
    before = len(CHECKED_RESPONSES)
    asks = [client.post("/query", json={"device": "no-such-device", "latency_ms": 1}),
            client.get("/devices/no-such-device"),
            client.post("/query", json={"device": "cpu-ort-2t", "latency_ms": 5}),
            client.get("/healthz"), client.get("/devices"), client.get(f"/devices/{DEVICE}"),
            client.get("/exports/" + "0" * 32), client.get("/openapi.json")]
    assert [r.status_code for r in asks] == [404, 404, 409, 200, 200, 200, 404, 200]
    assert "hw_profiles" not in asks[0].text and "WORKSPACE" in asks[2].text
    assert len(CHECKED_RESPONSES) == before + len(asks)
