"""``ofa-search query`` and ``ofa-search search``, run as a user runs them (subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from search_objective import MacsProxy

from ofa_search.search import build_front
from ofa_search.workspace import Workspace

FIELDS = {"arch", "space", "device", "precision", "predicted_accuracy", "accuracy_std",
          "predicted_latency_ms", "macs_m", "params_m", "source"}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ofa_search.cli", *args], capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    ws = Workspace(tmp_path_factory.mktemp("cli") / "ws")
    build_front(ws, "cpu-ort-1t", accuracy=MacsProxy(), accuracy_name="macs-proxy",
                n_trials=400)
    return ws


def test_query_json_fields(ws) -> None:
    out = cli("query", "--workspace", str(ws.root), "--device", "cpu-ort-1t",
              "--latency-ms", "0.3", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert FIELDS <= set(data) <= FIELDS | {"latency_predictor", "found_in_s",
                                            "latency_upper_ms", "confidence", "latency_scale",
                                            "warnings"}
    assert data["confidence"] is None and data["warnings"]  # this workspace is uncalibrated
    assert data["source"] == "front" and data["device"] == "cpu-ort-1t"
    assert data["precision"] == "fp32" and data["space"] == "mbv3_small28"
    assert data["predicted_latency_ms"] <= 0.3
    front = json.loads(ws.front("cpu-ort-1t").read_text())["points"]
    best = max((p for p in front if p["predicted_latency_ms"] <= 0.3),
               key=lambda p: p["predicted_accuracy"])
    assert data["arch"] == best["arch"]


def test_query_human_output(ws) -> None:
    out = cli("query", "--workspace", str(ws.root), "--device", "cpu-ort-1t",
              "--latency-ms", "0.3")
    assert out.returncode == 0, out.stderr
    for word in ("arch:", "accuracy:", "±", "latency:", "MACs:", "params:", "found by:   front"):
        assert word in out.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--device", "nope", "--latency-ms", "1"], "known devices: ['cpu-ort-1t'"),
    (["--device", "cpu-ort-1t", "--latency-ms", "0.001"], "minimum achievable latency"),
    (["--device", "cpu-ort-1t", "--latency-ms", "1", "--precision", "int8"],
     "precision 'int8' is not supported"),
    (["--device", "cpu-ort-1t", "--latency-ms", "1", "--latency-predictor", "xgb"],
     "--latency-predictor must be one of lut, learned"),
])
def test_query_input_errors_exit_2_with_one_line(ws, args, message) -> None:
    out = cli("query", "--workspace", str(ws.root), *args)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and message in out.stderr and "Traceback" not in out.stderr


def test_search_without_accuracy_predictor_says_what_to_run(tmp_path: Path) -> None:
    out = cli("search", "--workspace", str(tmp_path / "empty"), "--device", "cpu-ort-1t",
              "--budgets", "0.2")
    assert out.returncode == 2
    assert "ofa-search fit-predictors" in out.stderr and out.stderr.count("\n") == 1


def test_search_bad_budgets(tmp_path: Path) -> None:
    out = cli("search", "--workspace", str(tmp_path), "--device", "cpu-ort-1t",
              "--budgets", "0.2,abc")
    assert out.returncode == 2 and "--budgets" in out.stderr


def test_search_then_query_with_a_fitted_accuracy_predictor(tmp_path: Path) -> None:
    """End to end on a workspace with a real (small) MLP accuracy predictor, fitted to the
    test objective: ``search`` stores a study and a front, ``query`` answers from it."""
    import numpy as np
    import torch

    from ofa_search.arch import Arch
    from predictors.accuracy import MlpAccuracyPredictor

    torch.set_num_threads(1)
    ws = Workspace(tmp_path / "ws")
    rng = np.random.default_rng(0)
    archs = [Arch.sample("mbv3_small28", rng) for _ in range(200)]
    predictor = MlpAccuracyPredictor("mbv3_small28", hidden=(32,), epochs=5, min_steps=100)
    predictor.fit(archs, MacsProxy().predict(archs)).save(ws.accuracy_predictor)
    out = cli("search", "--workspace", str(ws.root), "--device", "cpu-ort-1t", "--budgets",
              "0.2", "--trials", "300", "--front-trials", "300", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    (search,) = summary["searches"]
    assert search["predicted_latency_ms"] <= 0.2 and search["trials"] == 300
    assert summary["front"]["points"] >= 5 and ws.front("cpu-ort-1t").is_file()
    assert (ws.root / "studies.log").is_file()
    front = json.loads(ws.front("cpu-ort-1t").read_text())
    assert front["accuracy_predictor"] == "workspace"
    assert front["accuracy_identity"].startswith("sha256:")
    got = json.loads(cli("query", "--workspace", str(ws.root), "--device", "cpu-ort-1t",
                         "--latency-ms", "0.2", "--json").stdout)
    assert got["source"] == "front" and got["predicted_latency_ms"] <= 0.2
    # a refitted predictor makes the front stale: the query searches instead
    predictor.fit(archs[:100], MacsProxy().predict(archs[:100])).save(ws.accuracy_predictor)
    got = json.loads(cli("query", "--workspace", str(ws.root), "--device", "cpu-ort-1t",
                         "--latency-ms", "0.2", "--json").stdout)
    assert got["source"] == "search" and got["predicted_latency_ms"] <= 0.2
