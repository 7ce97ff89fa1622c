"""scripts/reprice_validation.py on a synthetic table and validation records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from table_helpers import write_synthetic_table

from ofa_search.profiling.lut import LatencyTable
from ofa_search.profiling.validate import heldout_archs
from ofa_search.workspace import Workspace

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "reprice_validation.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          check=False)


def _record(run: Path, table: LatencyTable, mode: str, speed: float,
            noise: float | None) -> None:
    """A record of 6 held-out subnets measured at ``speed`` × the table's price, the
    first one 10 % slower still."""
    archs = heldout_archs(table, 6, mode=mode)
    rows = [{"arch": a.to_string(),
             "measured_ms": speed * table.predict(a) * (1.1 if i == 0 else 1.0)}
            for i, a in enumerate(archs)]
    suffix = "" if mode == "fp32" else f"_{mode}"
    (run / f"latency_validation_dev{suffix}.json").write_text(json.dumps(
        {"space": "mbv3_small28_mp", "mode": mode, "rows": rows, "noise_mape": noise}))


def test_a_run_is_repriced_raw_and_rescaled(tmp_path: Path) -> None:
    """The host runs fp32 at 0.8 and int8 at 0.9 of the table: raw errors show it, the fp32
    rescale fixes fp32 only, each mode's own rescale fixes both (one subnet 10 % off)."""
    table = write_synthetic_table(Workspace(tmp_path / "ws"), "dev", "mbv3_small28_mp",
                                  ("fp32", "int8"), resolutions=(16,))
    path = table.save(tmp_path / "table.json")
    run = tmp_path / "run"
    run.mkdir()
    _record(run, table, "fp32", 0.8, 0.02)
    _record(run, table, "int8", 0.9, None)
    out = _run(str(run), str(path), "--json", str(tmp_path / "r.json"))
    assert out.returncode == 0, out.stderr
    assert "fp32-scaled" in out.stdout and "int8" in out.stdout
    (result,) = json.loads((tmp_path / "r.json").read_text())["tables"].values()
    assert list(result) == ["fp32", "int8"]
    fp32, int8 = result["fp32"], result["int8"]
    assert fp32["measured_over_predicted"] == pytest.approx(0.8)
    assert int8["measured_over_predicted"] == pytest.approx(0.9)
    assert fp32["raw"]["mape"] == pytest.approx((5 * 0.2 / 0.8 + 0.12 / 0.88) / 6)
    one_off = 0.1 / 1.1 / 6  # the first subnet, 10 % slower than the rest
    assert fp32["fp32_rescaled"]["mape"] == pytest.approx(one_off)
    assert int8["mode_rescaled"]["mape"] == pytest.approx(one_off)
    assert int8["fp32_rescaled"]["mape"] > 0.1  # 0.8 applied to a host running int8 at 0.9
    assert (fp32["noise_mape"], int8["noise_mape"]) == (0.02, None)


def test_bad_runs_are_refused_in_one_line(tmp_path: Path) -> None:
    table = write_synthetic_table(Workspace(tmp_path / "ws"), "dev", "mbv3_small28_mp",
                                  ("fp32", "int8"), resolutions=(16,))
    path = table.save(tmp_path / "table.json")
    run = tmp_path / "run"
    run.mkdir()
    _record(run, table, "int8", 0.9, None)
    out = _run(str(run), str(path))
    assert out.returncode != 0 and "has no fp32 validation record" in out.stderr
    _record(run, table, "fp32", 0.9, None)
    other = write_synthetic_table(Workspace(tmp_path / "ws2"), "dev", "mbv3_small28",
                                  ("fp32",), resolutions=(16,))
    out = _run(str(run), str(other.save(tmp_path / "other.json")))
    assert out.returncode != 0 and "the records are of 'mbv3_small28_mp'" in out.stderr
