"""``ofa-search fit-predictors`` on a tiny workspace, and ``latency --predictor``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_cli import cli
from test_predictors_accuracy_data import tiny_checkpoint

from ofa_search.arch import Arch
from ofa_search.profiling.lut import REPO_TABLE_DIR, LatencyTable
from ofa_search.workspace import Workspace
from predictors.latency import LearnedLatencyPredictor
from predictors.loading import load_accuracy_predictor

DEVICE = "cpu-ort-1t"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, dict, str]:
    """One text-mode run; its JSON report is the workspace's ``predictors/quality.json``."""
    ws = Workspace(tmp_path_factory.mktemp("ws"))
    tiny_checkpoint(ws.supernet_dir)
    out = cli("fit-predictors", "--workspace", str(ws.root), "--n-archs", "8", "--device",
              DEVICE, "--n-latency", "6", "--max-eval-images", "40", "--threads", "1")
    assert out.returncode == 0, out.stderr
    return ws, json.loads((ws.predictors_dir / "quality.json").read_text()), out.stdout


@pytest.mark.slow
def test_fit_predictors_writes_files_and_reports(fitted: tuple[Workspace, dict, str]) -> None:
    ws, report, text = fitted
    acc = report["accuracy"]
    assert acc["n_archs"] == 8 and acc["n_train"] + acc["n_heldout"] == 8
    assert acc["n_evaluated_now"] == 8 and acc["chosen"] in {"mlp", "ensemble"}
    assert set(acc["candidates"]) == {"mlp", "ensemble"}
    for scores in acc["candidates"].values():
        assert scores["rmse"] >= 0 and -1 <= scores["kendall_tau"] <= 1
    assert Path(acc["path"]) == ws.accuracy_predictor and ws.accuracy_predictor.is_file()
    assert Workspace.accuracy_dataset_for(ws.checkpoint).is_file()
    pred = load_accuracy_predictor(ws.accuracy_predictor, space="mbv3_small28")
    archs = [Arch.smallest("mbv3_small28"), Arch.largest("mbv3_small28")]
    assert pred.predict(archs).shape == (2,) and np.all(pred.predict_std(archs) > 0)
    lat = report["latency"][DEVICE]
    assert lat["n_measurements"] == 6 and lat["n_measured_now"] == 6
    assert lat["n_train"] + lat["n_heldout"] == 6
    for name in ("learned", "lut"):
        assert {"within_5pct", "within_10pct", "kendall_tau", "mape"} <= set(lat[name])
    assert Path(lat["path"]) == ws.latency_predictor(DEVICE) and Path(lat["path"]).is_file()
    cache = json.loads((ws.predictors_dir / f"{DEVICE}-latency-measurements.json").read_text())
    assert len(cache["measured_ms"]) == 6 and all(v > 0 for v in cache["measured_ms"].values())
    # the session's drift check: one speed ratio beside every measurement
    assert cache["format_version"] == 2 and set(cache["ratio"]) == set(cache["measured_ms"])
    assert len(set(cache["ratio"].values())) == 1 and next(iter(cache["ratio"].values())) > 0
    # both predictors calibrated on all 6 measurements (too few for a held-out 0.9 bound)
    calibration = json.loads(Path(lat["calibration_path"]).read_text())
    learned = LearnedLatencyPredictor.load(ws.latency_predictor(DEVICE))
    assert calibration["predictors"]["learned"]["identity"] == learned.identity()
    for name in ("learned", "lut"):
        assert len(calibration["predictors"][name]["scores"]["fp32"]) == 6
        assert lat[name]["coverage"]["share_under_bound"] is None
    # the printed table
    assert "0 cached, 8 to evaluate" in text
    assert "accuracy predictors (6 train / 2 held-out archs" in text and "RMSE pts" in text
    assert f"latency {DEVICE} (5 train / 1 held-out" not in text  # at least two held out
    assert f"latency {DEVICE} (4 train / 2 held-out measurements)" in text


def test_rerun_reuses_cached_measurements(fitted: tuple[Workspace, dict, str]) -> None:
    ws, _, _ = fitted
    out = cli("fit-predictors", "--workspace", str(ws.root), "--skip-accuracy", "--device",
              DEVICE, "--n-latency", "6", "--json")
    assert out.returncode == 0, out.stderr
    lat = json.loads(out.stdout)["latency"][DEVICE]
    assert lat["n_measurements"] == 6 and lat["n_measured_now"] == 0


def test_latency_command_names_its_predictor(fitted: tuple[Workspace, dict, str]) -> None:
    ws, _, _ = fitted
    arch = Arch.largest("mbv3_small28").replace(resolution=24)
    args = ("latency", "--workspace", str(ws.root), "--device", DEVICE, arch.to_string())
    learned = json.loads(cli(*args, "--predictor", "learned", "--json").stdout)
    model = LearnedLatencyPredictor.load(ws.latency_predictor(DEVICE))
    assert learned["predictor"] == "learned"
    assert learned["predicted_ms"] == pytest.approx(float(model.predict([arch])[0]))
    assert learned["predicted_std_ms"] == pytest.approx(float(model.predict_std([arch])[0]))
    default = json.loads(cli(*args, "--json").stdout)
    assert default["predictor"] == "learned"
    assert default["predicted_ms"] == pytest.approx(learned["predicted_ms"])
    lut = json.loads(cli(*args, "--predictor", "lut", "--json").stdout)
    table = LatencyTable.load(REPO_TABLE_DIR / f"{DEVICE}.json")
    assert lut["predictor"] == "lut" and "predicted_std_ms" not in lut
    assert lut["predicted_ms"] == pytest.approx(table.predict(arch))
    bad = cli(*args, "--predictor", "oracle")
    assert bad.returncode == 2 and "--predictor must be one of lut, learned" in bad.stderr


def test_imported_tables_are_skipped_and_bad_devices_refused(tmp_path: Path) -> None:
    out = cli("fit-predictors", "--workspace", str(tmp_path), "--skip-accuracy", "--device",
              "note10-tflite", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["accuracy"] is None
    assert "imported table" in report["latency"]["note10-tflite"]["skipped"]
    assert not (tmp_path / "predictors" / "note10-tflite-latency.json").exists()
    bad = cli("fit-predictors", "--workspace", str(tmp_path), "--device", "no-such-device")
    assert bad.returncode == 2 and "no-such-device" in bad.stderr
    missing = cli("fit-predictors", "--workspace", str(tmp_path))
    assert missing.returncode == 2 and "checkpoint" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
