"""CLI of device tables: devices, latency, profile (run as a user runs them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import cli

from ofa_search.arch import Arch
from ofa_search.profiling.lut import find_table

NOTE10_ARCH = {"ks": [5, 3, 3, 3, 5, 3, 3, 3, 7, 7, 3, 3, 5, 5, 7, 3, 3, 3, 5, 3],
               "e": [3, 3, 3, 3, 4, 4, 3, 3, 6, 3, 4, 3, 4, 4, 4, 3, 6, 6, 6, 3],
               "d": [2, 2, 3, 4, 3], "r": 192, "w": 1.2}


def test_devices_lists_shipped_tables(tmp_path: Path) -> None:
    out = cli("devices", "--json", "--workspace", str(tmp_path))
    assert out.returncode == 0, out.stderr
    listed = {d["device_id"]: d for d in json.loads(out.stdout)}
    assert {"cpu-ort-1t", "cpu-ort-2t", "note10-tflite"} <= set(listed)
    # how well each table's units' rounds agreed: the 2-thread table was measured busy
    assert listed["cpu-ort-1t"]["unit_spread"] < 0.05 < listed["cpu-ort-2t"]["unit_spread"]
    assert listed["note10-tflite"]["unit_spread"] is None  # imported: no rounds
    text = cli("devices", "--workspace", str(tmp_path)).stdout.splitlines()
    (two,) = [line for line in text if line.startswith("cpu-ort-2t ")]
    assert two.endswith("(profiled on a busy host)") and "spread 16.3%" in two


def test_devices_text_keeps_one_column_for_long_ids(tmp_path: Path) -> None:
    hw = tmp_path / "hw_profiles"
    hw.mkdir()
    long_id = "local-cpu-ort-1t-with-a-long-name"
    find_table("cpu-ort-1t").save(hw / f"{long_id}.json")
    out = cli("devices", "--workspace", str(tmp_path))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.startswith(long_id + " ") for line in lines)
    # the backend column starts at the same offset on every line
    assert len({line.index("onnxruntime") for line in lines if "onnxruntime" in line}) == 1


def test_latency_of_the_note10_tutorial_arch(tmp_path: Path) -> None:
    out = cli("latency", "--device", "note10-tflite", json.dumps(NOTE10_ARCH), "--json",
              "--workspace", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["predicted_ms"] == pytest.approx(24.73, abs=0.005)


def test_latency_predicted_equals_library_and_measures(tmp_path: Path) -> None:
    arch = Arch.sample("mbv3_small28", 9)
    out = cli("latency", "--device", "cpu-ort-1t", arch.to_string(), "--measure", "--json",
              "--predictor", "lut", "--workspace", str(tmp_path))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["predictor"] == "lut"
    assert result["predicted_ms"] == pytest.approx(find_table("cpu-ort-1t").predict(arch))
    assert result["measured_ms"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [(["latency", "--device", "nope", "x"], "known devices: ['cpu-ort-1t'"),
     (["latency", "--device", "note10-tflite", json.dumps({**NOTE10_ARCH, "r": 200})],
      "it covers resolutions [160, 176, 192, 208, 224]")],
)
def test_latency_errors(tmp_path: Path, args: list[str], message: str) -> None:
    out = cli(*args, "--workspace", str(tmp_path))
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and message in out.stderr


def test_profile_writes_a_workspace_table(tmp_path: Path) -> None:
    out = cli("profile", "--space", "mbv3_small28", "--device", "tiny-ort", "-r", "16",
              "--time-cap", "0.02", "--overhead-archs", "2", "--rounds", "2",
              "--workspace", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "a unit's measurements agreed within a median" in out.stdout
    table = find_table("tiny-ort", workspace=tmp_path)
    assert table.space == "mbv3_small28" and list(table.resolutions) == [16]
    arch = Arch.sample("mbv3_small28", 0, resolution=16)
    assert table.predict(arch) > 0
    listed = cli("devices", "--workspace", str(tmp_path)).stdout
    assert "tiny-ort" in listed


def test_profile_batch_and_provider_options_reach_the_table(tmp_path: Path) -> None:
    out = cli("profile", "--space", "mbv3_small28", "--device", "tiny-ort-b4", "-r", "16",
              "--time-cap", "0.02", "--overhead-archs", "0", "--rounds", "1",
              "--batch-size", "4", "--provider", "CPUExecutionProvider",
              "--workspace", str(tmp_path))
    assert out.returncode == 0, out.stderr
    profile = find_table("tiny-ort-b4", workspace=tmp_path).profile()
    assert profile is not None
    assert (profile.batch_size, profile.execution_provider) == (4, "CPUExecutionProvider")


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--tuning-trials", "8"], "--tuning-trials apply to --backend tvm only"),
     (["--backend", "tensorrt"], "unknown backend 'tensorrt'"),
     (["--backend", "tvm", "--rpc-tracker", "127.0.0.1:9190"],
      "needs both --rpc-tracker and --rpc-key"),
     (["--backend", "tvm", "--rpc-tracker", "127.0.0.1:9190", "--rpc-key", "pi"],
      "a remote device needs --target"),
     (["--backend", "tvm", "--target", "llvm -mcpu=znver4"], "not JSON"),
     (["--backend", "tvm", "--target", '{"mcpu": "znver4"}'], 'with a "kind"'),
     (["--backend", "tvm", "--provider", "CUDAExecutionProvider"],
      "--provider applies to --backend onnxruntime only"),
     (["--provider", "NoSuchExecutionProvider", "-r", "16"],
      "execution provider 'NoSuchExecutionProvider' of profile 'x' is not available"),
     (["--batch-size", "0"], "--batch-size': Input should be greater than or equal to 1")],
)
def test_profile_option_errors(tmp_path: Path, args: list[str], message: str) -> None:
    out = cli("profile", "--device", "x", *args, "--workspace", str(tmp_path))
    assert out.returncode == 2
    assert message in " ".join(out.stderr.split())
    assert not (tmp_path / "hw_profiles" / "x.json").exists()
