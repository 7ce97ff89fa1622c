"""``ofa-search export`` and ``ofa-search serve`` from the shell."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_service import DEVICE, SPACE, build_workspace

from ofa_search.arch import Arch
from ofa_search.model_card import read_card
from ofa_search.search.front import Front
from ofa_search.search.query import QueryEngine
from ofa_search.workspace import Workspace


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ofa_search.cli", *args], capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return build_workspace(tmp_path_factory.mktemp("ws"), front_trials=200)


def test_export_by_budget_queries_first(workspace: Workspace, tmp_path: Path) -> None:
    front = Front.load(workspace.front(DEVICE))
    budget = front.latencies[len(front.latencies) // 2]
    out = tmp_path / "out"
    res = cli("export", "--workspace", str(workspace.root), "--device", DEVICE,
              "--latency-ms", repr(budget), "--format", "torchscript", "--out", str(out),
              "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    expected = QueryEngine(workspace).query(DEVICE, budget).arch.to_string()
    assert data["query"]["arch"] == expected == data["card"]["arch"]["string"]
    assert data["artefact"] == str(out / "model.pt") and (out / "model.pt").is_file()
    card = read_card(out)
    assert card["device"]["id"] == DEVICE and card["device"]["measured_latency_ms"] > 0
    assert card["device"]["predicted_latency_ms"] == pytest.approx(
        data["query"]["predicted_latency_ms"])
    assert "verifying it with torch.jit" in res.stderr  # progress goes to stderr


def test_export_by_arch_into_the_workspace_then_served(workspace: Workspace) -> None:
    from fastapi.testclient import TestClient

    from ofa_search.service.app import create_app

    arch = Arch.smallest(SPACE).to_string()
    res = cli("export", "--workspace", str(workspace.root), "--arch", arch, "--format",
              "onnx")
    assert res.returncode == 0, res.stderr
    assert "artefact:" in res.stdout and "verified:" in res.stdout
    (folder,) = list(workspace.exports_dir.iterdir())
    assert len(folder.name) == 32 and (folder / "model.onnx").is_file()
    assert read_card(folder)["device"] is None
    with TestClient(create_app(workspace)) as client:  # the service sees CLI exports too
        state = client.get(f"/exports/{folder.name}").json()
        assert state["status"] == "done" and state["arch"] == arch
        blob = client.get(f"/exports/{folder.name}/artefact")
        assert blob.content == (folder / "model.onnx").read_bytes()


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """The console entry point in this process (as the shell runs it): exit code, stderr."""
    from ofa_search.cli import main

    with pytest.raises(SystemExit) as exited:
        main(list(args))
    return int(exited.value.code or 0), capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    (("--arch", "r28_w1.0_k3e3-k3e3_k3e3-k3e3_k3e3-k3e3_k3e3-k3e3", "--format", "tflite"),
     "unknown export format 'tflite'"),
    (("--format", "onnx"), "give --arch ARCH, or --device ID with --latency-ms N"),
    (("--latency-ms", "1"), "--latency-ms needs --device"),
    (("--device", DEVICE, "--latency-ms", "0.000001"), "minimum achievable latency"),
    (("--device", "nope", "--latency-ms", "1"), "known devices"),
    (("--checkpoint", "{bad}", "--arch", Arch.smallest(SPACE).to_string()),
     "not a readable ofa-search checkpoint"),
])
def test_export_errors_are_one_line(workspace: Workspace, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str], args: tuple[str, ...],
                                    message: str) -> None:
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    args = tuple(str(bad) if a == "{bad}" else a for a in args)
    code, err = run_main(capsys, "export", "--workspace", str(workspace.root), *args)
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0]  # progress precedes
    assert message in errors[0]


def test_serve_rejects_a_missing_api_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OFA_TEST_KEY", raising=False)
    code, err = run_main(capsys, "serve", "--workspace", str(tmp_path), "--api-key-env",
                         "OFA_TEST_KEY")
    assert code == 2 and "OFA_TEST_KEY (--api-key-env) is unset" in err
    empty = tmp_path / "key.txt"
    empty.write_text("\n")
    code, err = run_main(capsys, "serve", "--workspace", str(tmp_path), "--api-key-file",
                         str(empty))
    assert code == 2 and "is empty" in err
