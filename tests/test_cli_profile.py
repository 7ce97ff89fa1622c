"""CLI subcommands of ``ofa-search profile``: import-ofa, tune, merge-db, pack-db (run as a
user runs them)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from test_cli import cli

from ofa_search.profiling.lut import LatencyTable, find_table

# once-for-all's Note10 table, vendored with its provenance (tests/data/ofa/README.md)
NOTE10 = Path(__file__).resolve().parent / "data" / "ofa" / "note10_lut_full.json"


def _one_line_error(out: subprocess.CompletedProcess[str], message: str) -> None:
    assert out.returncode == 2, out.stdout
    assert len(out.stderr.strip().splitlines()) == 1 and message in out.stderr, out.stderr


def test_import_ofa_writes_the_note10_table(tmp_path: Path) -> None:
    out = cli("profile", "import-ofa", str(NOTE10), "--device", "my-note10", "--json",
              "--workspace", str(tmp_path))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["resolutions"] == [160, 176, 192, 208, 224] and result["missing"] == {}
    table = LatencyTable.load(tmp_path / "hw_profiles" / "my-note10.json")
    assert table.device_id == "my-note10"
    assert table.entries == find_table("note10-tflite").entries
    shown = cli("devices", "--workspace", str(tmp_path))
    assert "my-note10" in shown.stdout and "r[160, 176, 192, 208, 224]" in shown.stdout


def test_import_ofa_errors(tmp_path: Path) -> None:
    _one_line_error(cli("profile", "import-ofa", str(tmp_path / "nope.json"),
                        "--workspace", str(tmp_path)), "no such file")
    (tmp_path / "bad.json").write_text("{\"160\": ")
    _one_line_error(cli("profile", "import-ofa", str(tmp_path / "bad.json"),
                        "--workspace", str(tmp_path)), "not valid JSON")
    (tmp_path / "empty.json").write_text(json.dumps({"160": {}}))
    _one_line_error(cli("profile", "import-ofa", str(tmp_path / "empty.json"),
                        "--workspace", str(tmp_path)), "no resolution of ofa_mbv3 at width 1.2")
    assert not (tmp_path / "hw_profiles").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [(["profile", "--workspace", "."], "a device id is required"),
     (["profile", "tune", "--tuning-db", "db", "--tuning-trials", "4", "--shard", "3/2"],
      "shard must be INDEX/COUNT with 1 <= INDEX <= COUNT, got 3/2"),
     (["profile", "merge-db", ".", "--out", "merged"], "not a MetaSchedule JSON database"),
     (["profile", "pack-db", "--device", "cpu-ort-1t", "--workspace", "."],
      "is not a tuned TVM table"),
     (["profile", "pack-db", "--device", "nope", "--workspace", "."],
      "known devices: ['cpu-ort-1t'")],
)
def test_profile_subcommand_errors(tmp_path: Path, args: list[str], message: str) -> None:
    out = cli(*args, cwd=tmp_path)
    assert out.returncode == 2
    assert message in out.stderr, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written
