"""The command line, run as a user runs it (subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from ofa_search.arch import Arch
from ofa_search.units import count_macs, count_params


def cli(*args: str, cwd: Path | None = None, timeout: float = 300
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ofa_search.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


def test_space_list_and_show() -> None:
    out = cli("space", "list")
    assert out.returncode == 0
    assert {"ofa_mbv3", "mbv3_small28"} <= set(out.stdout.split())
    shown = cli("space", "show", "ofa_mbv3", "--json")
    info = json.loads(shown.stdout)
    assert info["size"] == 25 * 2 * (81 + 729 + 6561) ** 5
    assert info["kernel_sizes"] == [3, 5, 7]
    text = cli("space", "show", "mbv3_small28").stdout
    assert "resolutions: [16, 20, 24, 28, 32]" in text


def test_arch_sample_is_seeded_and_valid() -> None:
    a = cli("arch", "sample", "--space", "mbv3_small28", "--n", "5", "--seed", "3").stdout.split()
    b = cli("arch", "sample", "--space", "mbv3_small28", "--n", "5", "--seed", "3").stdout.split()
    assert a == b and len(a) == 5 and len(set(a)) == 5
    for text in a:
        Arch.parse(text, "mbv3_small28")


def test_arch_info_json_and_text() -> None:
    arch = Arch.sample("ofa_mbv3", 5)
    out = cli("arch", "info", "--space", "ofa_mbv3", arch.to_string(), "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["macs_m"] == pytest.approx(count_macs(arch) / 1e6)
    assert info["params_m"] == pytest.approx(count_params(arch) / 1e6)
    assert len(info["units"]) == 3 + arch.num_blocks
    text = cli("arch", "info", "--space", "ofa_mbv3", arch.to_string()).stdout
    assert f"MACs        {count_macs(arch) / 1e6:.2f} M" in text


def test_arch_info_accepts_ofa_dict_and_json() -> None:
    ofa = {"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5, "r": 160, "w": 1.2}
    out = cli("arch", "info", "--space", "ofa_mbv3", json.dumps(ofa), "--json")
    assert json.loads(out.stdout)["arch"] == "r160_w1.2" + "_k3e3-k3e3" * 5
    as_dict = Arch.smallest("mbv3_small28").to_dict()
    out = cli("arch", "info", "--space", "mbv3_small28", json.dumps(as_dict), "--json")
    assert json.loads(out.stdout)["resolution"] == 16


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["arch", "info", "--space", "mbv3_small28", "r29_w1.0_k3e3"], "has 3 '_'-separated"),
        (["arch", "info", "--space", "mbv3_small28",
          "r28_w1.0_k9e3-k3e3_k3e3-k3e3_k3e3-k3e3_k3e3-k3e3"], "kernels[0][0]=9 is not allowed"),
        (["arch", "info", "--space", "nope", "x"], "unknown search space 'nope'"),
        (["space", "show", "nope"], "unknown search space 'nope'; known:"),
        (["arch", "info", "--space", "ofa_mbv3", "{bad"], "looks like JSON but does not parse"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    out = cli(*args)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_arch_export_writes_valid_onnx(tmp_path: Path) -> None:
    arch = Arch.sample("mbv3_small28", 1)
    target = tmp_path / "m.onnx"
    out = cli("arch", "export", "--space", "mbv3_small28", arch.to_string(), "--out", str(target))
    assert out.returncode == 0, out.stderr
    model = onnx.load(str(target))
    onnx.checker.check_model(model)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 1, arch.resolution, arch.resolution]


@pytest.mark.slow
def test_demo_runs_and_leaves_a_workspace(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    out = cli("demo", "--workspace", str(ws), "--epochs", "1", "--n-archs", "24",
              "--n-latency", "10", "-r", "28", "--quiet", timeout=900)  # minutes on a busy host
    assert out.returncode == 0, out.stderr
    summary = json.loads((ws / "demo_summary.json").read_text())
    assert summary["device"] == "local-cpu-ort-1t"
    assert summary["space"] == "mbv3_small28_int8"
    assert summary["precision_modes"] == ["fp32", "int8"]
    table = json.loads((ws / "hw_profiles" / "local-cpu-ort-1t.json").read_text())
    assert table["device"]["precisions"] == ["fp32", "int8"]
    assert (ws / "predictors" / "accuracy.json").is_file()
    assert (ws / "predictors" / "local-cpu-ort-1t-latency.json").is_file()
    rows = summary["queries"]
    assert [r["query"] for r in rows] == ["tight", "middle", "loose", "middle-int8"]
    assert rows[0]["budget_ms"] < rows[1]["budget_ms"] < rows[2]["budget_ms"]
    for row in rows:
        arch = Arch.parse(row["arch"], "mbv3_small28_int8")
        assert arch.resolution == 28
        assert row["within_budget"] == (row["measured_latency_ms"] <= row["budget_ms"])
        assert row["measured_latency_ms"] > 0
        assert 0.0 <= row["measured_accuracy"] <= 1.0
        assert 0.0 <= row["predicted_accuracy"] <= 1.0
        assert row["precision"] == ("int8" if "int8" in arch.precisions else "fp32")
    for row in rows[:3]:  # answers at any precision: each fits its budget
        assert row["predicted_latency_ms"] <= row["budget_ms"]
        if row["precision"] == "fp32":
            # 10 measured subnets calibrate a 0.9 bound (9 are needed), which fits the budget
            assert row["confidence"] == 0.9
            assert row["predicted_latency_ms"] <= row["latency_upper_ms"] <= row["budget_ms"]
    assert rows[0]["predicted_accuracy"] <= rows[2]["predicted_accuracy"]
    # the middle answer with every stage int8: priced, measured and exported without QAT
    twin = Arch.parse(rows[3]["arch"], "mbv3_small28_int8")
    assert twin == Arch.parse(rows[1]["arch"], "mbv3_small28_int8").replace(
        precisions=("int8",) * 4)
    assert rows[3]["source"] == "given" and rows[3]["predicted_latency_ms"] > 0
    assert summary["drift"]["ratio"] > 0 and summary["drift"]["n_subnets"] == 10
    # front members measured for the answers' bound (as many as the front has, up to 10)
    assert summary["answer_calibration"]["n_measured"] == min(10, summary["front_points"])
    assert set(summary["answer_calibration_by_mode"]) == {"fp32", "int8"}
    card = summary["export"]["card"]
    assert card["arch"]["string"] == rows[1]["arch"]
    assert card["verification"]["passed"]
    assert card["verification"]["max_abs_diff"] <= card["verification"]["tolerance"]
    onnx.checker.check_model(onnx.load(summary["export"]["artefact"]))
    loss_limit = summary["int8_loss_limit_points"]
    if summary["int8_export"] is None:  # refused (its loss, or its verification): said why
        assert "int8 answer not exported: " in out.stdout
    else:
        int8_card = summary["int8_export"]["card"]
        assert int8_card["arch"]["string"] == rows[3]["arch"]
        assert int8_card["artefact"]["format"] == "onnx_int8_ptq"
        scored = int8_card["dataset"]
        assert scored["int8_accuracy_loss_points"] == pytest.approx(
            100 * (scored["fp32_twin_accuracy"] - scored["accuracy"]))
        assert scored["int8_accuracy_loss_points"] <= loss_limit
        assert "points from its fp32 twin" in out.stdout
    assert (ws / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the workspace answers queries afterwards, with the same answer as the demo's
    query = cli("query", "--workspace", str(ws), "--device", "local-cpu-ort-1t",
                "--latency-ms", repr(rows[1]["budget_ms"]), "--precision", "any", "--json")
    assert query.returncode == 0, query.stderr
    answer = json.loads(query.stdout)
    assert answer["arch"] == rows[1]["arch"] and answer["source"] == "front"
    # int8 runs slower than fp32 at 28 px: twice the loose fp32 budget leaves room for the
    # int8 bound on a busy host (once 0.835 ms against a 0.740-ms budget)
    int8 = cli("query", "--workspace", str(ws), "--device", "local-cpu-ort-1t",
               "--latency-ms", repr(2 * rows[2]["budget_ms"]), "--precision", "int8", "--json")
    assert int8.returncode == 0, int8.stderr  # no longer "int8 is not supported"
    assert (ws / "supernet" / "checkpoint.pt").exists()
