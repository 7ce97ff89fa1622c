"""scripts/bench_precision_choice.py: the table's cheapest precision per stage, exported and
timed for real (ONNX Runtime, QDQ int8) beside each subnet's fp32 twin."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest
from script_helpers import load_script
from table_helpers import write_synthetic_table

from ofa_search.profiling.lut import LatencyTable
from ofa_search.workspace import Workspace

MP = "mbv3_small28_mp"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("bench_precision_choice")


def _table(tmp_path: Path, precisions: tuple[str, ...] = ("fp32", "int8")) -> LatencyTable:
    ws = Workspace(tmp_path / "ws")
    return write_synthetic_table(ws, "mp-choice", MP, precisions, resolutions=(16,))


def test_picks_are_the_cheapest_assignment_and_are_timed_beside_fp32(
        bench: ModuleType, tmp_path: Path) -> None:
    table = _table(tmp_path)  # int8 units at half their fp32 twin's price: int8 everywhere
    # references: two fp32 subnets, their table times the table's own prices
    refs = [a.replace(resolution=16) for a in bench.mode_archs(MP, 2, 7, 1.0, (16,))]
    table.meta["reference"] = {"archs": [a.to_string() for a in refs],
                               "measured_ms": [table.predict(a) for a in refs]}
    assert table.path is not None
    table.save(table.path)
    out = tmp_path / "choice.json"
    assert bench.main([str(out), "--table", str(table.path), "--n", "2", "--rounds", "2",
                       "--references", "2", "--variants", "int8", "binary"]) == 0
    report = json.loads(out.read_text())
    assert report["variants"] == ["int8"] and report["variants_skipped"] == ["binary"]
    assert set(report["summary"]) == {"int8", "all-int8", "noise_mape", "fp32_mape"}
    assert report["references"] == 2 and len(report["rows"]) == 2
    assert report["table_overheads_ms"] == {"fp32": table.overhead_ms}  # what priced the picks
    for row in report["rows"]:
        fp32, int8 = row["fp32"], row["int8"]
        assert set(fp32["precisions"]) == {"fp32"} and int8["precisions"] == ["int8"] * 4
        for timed in (fp32, int8):
            assert timed["measured_ms"] > 0 and timed["measured_raw_ms"] > 0
            assert len(timed["host_ratio"]) == 2  # one host speed per round
            # normalised: on the table's time base, the raw time divided by the host speed
            ratio = sorted(timed["host_ratio"])[0]
            assert timed["measured_ms"] <= 1.5 * timed["measured_raw_ms"] / ratio
        assert int8["predicted_speedup"] == pytest.approx(
            fp32["predicted_ms"] / int8["predicted_ms"])
        assert int8["measured_speedup"] == pytest.approx(
            fp32["measured_ms"] / int8["measured_ms"])
        assert int8["predicted_speedup"] > 1
    summary = report["summary"]["int8"]
    assert summary["low_precision_picks"] == 2 and summary["stages"] == {"int8": 8}
    assert summary["measured_speedup"]["min"] <= summary["measured_speedup"]["median"]
    assert report["summary"]["noise_mape"] is not None
    assert "ws" not in report["command"].split()  # no machine path in the record


def test_without_references_the_raw_times_are_reported(bench: ModuleType,
                                                      tmp_path: Path) -> None:
    table = _table(tmp_path)
    # int8 mode priced far above fp32: the table picks fp32, and the row says so
    # (what it turned down, the cheapest int8 one, is measured as "int8-forced")
    table.overhead_by_mode = {"int8": 1e3}
    chosen = bench.picks(table, bench.mode_archs(MP, 1, 3, 1.0, (16,)), ["int8"])
    (row,) = chosen
    assert set(row) == {"fp32", "int8", "int8-forced", "all-int8"}
    assert row["int8"] == row["fp32"]
    assert row["int8-forced"] == row["all-int8"] == table.cheapest_precisions(
        row["fp32"], ("fp32", "int8"), low_precision=True)
    measured = bench.measure(table, chosen, rounds=1, references=0, progress=False)
    assert len(measured) == 2  # two distinct subnets, each timed once
    for timed in measured.values():
        assert timed["measured_ms"] == timed["measured_raw_ms"]
        assert timed["first_ms"] is None and timed["host_ratio"] is None
    rows = bench.rows_of(table, chosen, measured)
    summary = bench.summarize(rows)
    assert summary["int8"]["low_precision_picks"] == 0
    assert summary["int8"]["measured_speedup"] is None and summary["noise_mape"] is None
    assert summary["int8-forced"]["low_precision_picks"] == 1
    assert summary["int8-forced"]["predicted_speedup"]["median"] < 1  # priced above fp32


def test_bad_input_is_one_line_and_writes_nothing(bench: ModuleType, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    table = _table(tmp_path, ("fp32",))
    out = tmp_path / "never.json"
    assert table.path is not None
    assert bench.main([str(out), "--table", str(table.path), "--n", "1"]) == 2
    assert "none of the variants" in capsys.readouterr().err
    table = _table(tmp_path / "b")
    assert table.path is not None
    assert bench.main([str(out), "--table", str(table.path), "--n", "1",
                       "--references", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no reference subnets" in err and "\n" not in err
    assert not out.exists()


def test_picks_with_an_int8_head_are_timed_beside_their_fp32_head_twins(
        bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ws = Workspace(tmp_path / "ws")
    table = write_synthetic_table(ws, "mph-choice", "mbv3_small28_mp_int8head",
                                  ("fp32", "binary"), resolutions=(16,))
    chosen = bench.picks(table, bench.mode_archs(table.space, 1, 3, 1.0, (16,)), ["binary"],
                         MP)
    (row,) = chosen  # binary everywhere is cheapest here: the head is int8 in both
    assert set(row) == {"fp32", "binary", "all-binary", "binary-fp32-head",
                        "all-binary-fp32-head"}
    twin = row["binary-fp32-head"]
    assert twin.space == MP and twin.to_string() == row["binary"].to_string()
    measured = bench.measure(table, chosen, rounds=1, references=0, progress=False)
    assert len(measured) == 3  # fp32; the binary pick (= all binary); its fp32-head twin
    rows = bench.rows_of(table, chosen, measured)
    (out,) = rows
    assert out["binary-fp32-head"]["predicted_ms"] is None  # another space's: not priced
    assert out["binary-fp32-head"]["int8_head_gain"] == pytest.approx(
        out["binary-fp32-head"]["measured_ms"] / out["binary"]["measured_ms"])
    summary = bench.summarize(rows)
    assert summary["binary-fp32-head"]["int8_head_gain"] is not None
    assert summary["binary-fp32-head"]["mape_of_picks"] is None
    bench.print_report(rows, summary, ["binary"])
    assert "the int8 head makes them" in capsys.readouterr().out
    # the option needs a head_int8 table and an fp32-head space
    assert table.path is not None
    assert bench.main([str(tmp_path / "x.json"), "--table", str(table.path), "--n", "1",
                       "--fp32-head-space", "mbv3_small28_mp_int8head"]) == 2
    assert "--fp32-head-space needs" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
