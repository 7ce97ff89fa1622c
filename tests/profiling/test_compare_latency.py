"""scripts/compare_latency.py on small table, measurement and validation files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "compare_latency.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          check=False)


def test_tables_are_compared_unit_by_unit(tmp_path: Path) -> None:
    entry = {"iqr_ms": 0.0, "mean_ms": 0.0, "min_ms": 0.0, "count": 1,
             "ci_halfwidth_ms": 0.0, "converged": True}
    a = {"entries": {k: {**entry, "median_ms": v} for k, v in
                     {"stem:u1": 1.0, "mbconv:u2": 2.0, "mbconv:u3": 3.0, "mbconv:u4": 4.0,
                      "head:only_a": 9.0}.items()}}
    b = {"entries": {k: {**entry, "median_ms": v} for k, v in
                     {"stem:u1": 1.01, "mbconv:u2": 2.08, "mbconv:u3": 3.6,
                      "mbconv:u4": 3.96}.items()}}
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    out = _run(str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--json",
               str(tmp_path / "r.json"))
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["n"] == 4
    assert result["within_2pct"] == pytest.approx(0.5)  # u1 (+1 %), u4 (-1 %)
    assert result["within_5pct"] == pytest.approx(0.75) and result["within_10pct"] == 0.75
    assert result["kendall_tau"] == pytest.approx(1.0)
    assert result["ratio_quantiles"]["p50"] == pytest.approx((1.01 + 1.04) / 2)
    assert result["b_faster"] == pytest.approx(0.25)  # u4 only
    assert result["b_faster_by_kind"] == {"stem": [0, 1], "mbconv": [1, 3]}
    assert "B faster than A on 25 % (mbconv 1/3, stem 0/1)" in out.stdout  # sorted keys


def test_measurements_and_validation_reports(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text(json.dumps({"heldout": {"x": 1.0, "y": 2.0, "z": 3.0}}))
    rows = [{"arch": k, "predicted_ms": 0.0, "measured_ms": v}
            for k, v in {"x": 1.0, "y": 3.0, "z": 2.0}.items()]
    (tmp_path / "v.json").write_text(json.dumps({"rows": rows}))
    out = _run(str(tmp_path / "m.json"), str(tmp_path / "v.json"))
    assert out.returncode == 0, out.stderr
    assert "3 common" in out.stdout and "Kendall τ 0.333" in out.stdout
    assert "B faster than A on 33 %\n" in out.stdout  # z; archs have no unit kinds
    missing = _run(str(tmp_path / "m.json"), str(tmp_path / "v.json"), "--group", "train")
    assert missing.returncode != 0
    assert "neither a latency table nor has a 'train' group" in missing.stderr
