"""The drift check: reference subnets of a table, re-timed here, and the speed ratio."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from table_helpers import write_synthetic_table
from test_cli import cli

from ofa_search.arch import Arch
from ofa_search.errors import FileFormatError, OfaSearchError
from ofa_search.profiling.builder import sample_archs
from ofa_search.profiling.drift import (
    NotMeasurableError,
    check_drift,
    load_scale,
    references,
    save_scale,
    scale_path,
)
from ofa_search.profiling.lut import REPO_TABLE_DIR, LatencyTable, find_table
from ofa_search.workspace import Workspace

SPACE = "mbv3_small28"


def table_with_references(ws: Workspace, times: list[float]) -> LatencyTable:
    table = write_synthetic_table(ws, "drift-dev", SPACE, ["fp32"])
    archs = sample_archs(SPACE, len(times), 7, 1.0, table.resolutions)
    table.meta["reference"] = {"archs": [a.to_string() for a in archs],
                               "measured_ms": times, "created": "now"}
    table.save(ws.hw_profiles_dir / "drift-dev.json")
    return table


def test_injected_drift_of_20_percent_is_detected_and_named(tmp_path: Path) -> None:
    table = table_with_references(Workspace(tmp_path), [0.2, 0.3, 0.4, 0.5])
    refs = references(table)

    def slower(archs):  # this host now runs every reference 20 % slower
        return [1.2 * refs.measured_ms[refs.archs.index(a)] for a in archs]

    report = check_drift(table, measure=slower)
    assert report.ratio == pytest.approx(1.2) and report.drifted
    assert "drifted" in report.summary() and "1.200x" in report.summary()
    assert "--rescale" in report.summary()
    steady = check_drift(table, measure=lambda archs: [1.05 * m for m in refs.measured_ms])
    assert not steady.drifted and "within ±10%" in steady.summary()


def test_real_timing_finds_a_table_that_claims_ten_times_the_speed(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    table = table_with_references(ws, [1.0, 1.0, 1.0])
    now = check_drift(table, rounds=3)  # the references' real times on this host
    assert all(m > 0 for m in now.measured_ms) and now.rounds == 3
    # 10x: far above the host's own wander between two checks (up to 1.5x when it is busy)
    table.meta["reference"]["measured_ms"] = [m / 10 for m in now.measured_ms]
    report = check_drift(table, rounds=3)
    assert report.drifted and 5 < report.ratio < 25, report.to_dict()
    assert report.low <= report.ratio <= report.high


def test_older_tables_use_their_overhead_subnets() -> None:
    table = LatencyTable.load(REPO_TABLE_DIR / "cpu-ort-1t.json")
    assert "reference" not in table.meta
    refs = references(table)
    gaps = table.meta["overhead"]["gaps_ms"]
    assert refs.source == "overhead" and len(refs.archs) == len(gaps)
    # the times are the overhead fit's measurements: gap plus the unit sum
    assert refs.measured_ms[0] == pytest.approx(gaps[0] + table.unit_sum(refs.archs[0]))


def test_tables_that_cannot_be_checked(tmp_path: Path) -> None:
    with pytest.raises(NotMeasurableError, match="imported table"):
        references(find_table("note10-tflite"))
    table = write_synthetic_table(Workspace(tmp_path), "bare", SPACE, ["fp32"])
    with pytest.raises(NotMeasurableError, match="--overhead-archs 10"):
        references(table)


def test_scale_file_is_checked(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    table = table_with_references(ws, [0.2, 0.3, 0.4])
    assert load_scale(ws, table) is None
    refs = references(table)
    report = check_drift(table, measure=lambda archs: [1.3 * m for m in refs.measured_ms])
    save_scale(ws, table, report)
    assert load_scale(ws, table).scale == pytest.approx(1.3)
    path = scale_path(ws, "drift-dev")
    data = json.loads(path.read_text())
    for bad, message in ((-1, "positive"), ("1.2", "positive"), (True, "positive")):
        path.write_text(json.dumps({**data, "scale": bad}))
        with pytest.raises(FileFormatError, match=message):
            load_scale(ws, table)
    path.write_text(json.dumps({**data, "fingerprint": "other"}))
    with pytest.raises(FileFormatError, match="another table"):
        load_scale(ws, table)


@pytest.mark.slow
def test_check_device_cli(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    out = cli("check-device", "-w", str(ws.root), "-d", "cpu-ort-1t", "--rounds", "2",
              "--rescale", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["rescaled"] and result["n_subnets"] == 10 and result["ratio"] > 0
    assert result["references"] == "overhead"
    stored = json.loads(scale_path(ws, "cpu-ort-1t").read_text())
    assert stored["scale"] == result["ratio"]
    cleared = cli("check-device", "-w", str(ws.root), "-d", "cpu-ort-1t", "--clear")
    assert cleared.returncode == 0 and "removed" in cleared.stdout
    assert not scale_path(ws, "cpu-ort-1t").exists()
    for args, message in ((("-d", "note10-tflite"), "imported table"),
                          (("-d", "cpu-ort-1t", "--rescale", "--clear"), "not both"),
                          (("-d", "cpu-ort-1t", "--mode", "mixed"), "fp32, not mixed"),
                          (("-d", "no-such"), "no latency table")):
        bad = cli("check-device", "-w", str(ws.root), *args)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1


def test_profiling_records_reference_subnets(tmp_path: Path) -> None:
    from ofa_search.profiling.builder import fit_overhead
    from ofa_search.profiling.measure import FAST_TIMING

    table = write_synthetic_table(Workspace(tmp_path), "ref-dev", SPACE, ["fp32"])
    from ofa_search.profiling.backends import get_backend

    profile = table.profile()
    with get_backend(profile, timing=FAST_TIMING) as backend:
        fit_overhead(table, backend, n=3, rounds=1)
    refs = references(table)
    assert refs.source == "reference" and len(refs.archs) == 3
    assert all(isinstance(a, Arch) and m > 0 for a, m in zip(refs.archs, refs.measured_ms,
                                                              strict=True))


def test_measurements_come_with_their_chunk_speed(tmp_path: Path) -> None:
    from ofa_search.profiling.backends import get_backend
    from ofa_search.profiling.drift import measure_with_references
    from ofa_search.profiling.measure import FAST_TIMING

    ws = Workspace(tmp_path)
    table = table_with_references(ws, [1.0, 1.0, 1.0])
    now = check_drift(table, rounds=2)
    # the table claims the references run 100x faster than here: every chunk says so (a
    # ratio far above the host's own wander, which reaches 1.5x on a busy shared host)
    table.meta["reference"]["measured_ms"] = [m / 100 for m in now.measured_ms]
    archs = sample_archs(SPACE, 5, 11, 1.0, table.resolutions)
    chunks = []
    with get_backend(table.profile(), timing=FAST_TIMING) as backend:
        out = measure_with_references(table, backend, archs, chunk=3, n_refs=3, rounds=2,
                                      on_chunk=chunks.append)
    assert [len(c) for c in chunks] == [3, 2] and len(out) == 5
    assert all(ms > 0 and 40 < ratio < 250 for ms, ratio in out), out
    bare = write_synthetic_table(Workspace(tmp_path / "bare"), "bare", SPACE, ["fp32"])
    with get_backend(bare.profile(), timing=FAST_TIMING) as backend:
        plain = measure_with_references(bare, backend, archs[:2], rounds=1)
    assert [ratio for _, ratio in plain] == [1.0, 1.0]


def test_network_model_is_fitted_from_the_references(tmp_path: Path) -> None:
    from ofa_search.profiling.builder import fit_network_model
    from ofa_search.profiling.drift import refit_network_model
    from ofa_search.units import arch_units

    ws = Workspace(tmp_path)
    table = write_synthetic_table(ws, "net-dev", SPACE, ["fp32"])
    archs = sample_archs(SPACE, 12, 5, 1.0, table.resolutions)
    # in a network: 0.9 x the units' sum, 3 µs less per unit, 0.02 ms more in all
    truth = [0.9 * table.unit_sum(a) - 0.003 * len(arch_units(a)) + 0.02 for a in archs]
    table.meta["reference"] = {"archs": [a.to_string() for a in archs],
                               "measured_ms": truth, "created": "now"}
    refit_network_model(table)
    assert table.unit_scale == pytest.approx(0.9) and table.per_unit_ms == pytest.approx(-0.003)
    assert table.overhead_ms == pytest.approx(0.02)
    assert [table.predict(a) for a in archs] == pytest.approx(truth)
    saved = table.save(tmp_path / "t.json")
    again = LatencyTable.load(saved)
    assert (again.unit_scale, again.per_unit_ms) == (table.unit_scale, table.per_unit_ms)
    # degenerate data keeps the plain sum; a file with a bad scale is refused
    fit_network_model(table, archs[:3], truth[:3])
    assert (table.unit_scale, table.per_unit_ms) == (1.0, 0.0)
    data = json.loads(saved.read_text())
    saved.write_text(json.dumps({**data, "unit_scale": -1}))
    with pytest.raises(FileFormatError, match="unit_scale must be positive"):
        LatencyTable.load(saved)


def test_modes_are_checked_against_the_tables_price(tmp_path: Path) -> None:
    """Subnets of each low-precision mode, timed with the references, each against the
    table's price: an injected host where mixed subnets run 1.08x their price and the
    rest 0.92x gives those ratios, stores them, and a search that can answer in mixed
    applies the largest of its modes'; 1.2x for mixed alone is drift."""
    from ofa_search.profiling.drift import table_modes
    from ofa_search.profiling.lut import overhead_mode

    ws = Workspace(tmp_path)
    table = write_synthetic_table(ws, "mp-drift", "mbv3_small28_mp", ["fp32", "int8", "binary"])
    archs = sample_archs("mbv3_small28_mp", 4, 7, 1.0, table.resolutions)
    table.meta["reference"] = {"archs": [a.to_string() for a in archs],
                               "measured_ms": [table.predict(a) for a in archs]}
    table.save(ws.hw_profiles_dir / "mp-drift.json")
    assert table_modes(table) == ("fp32", "int8", "binary", "mixed")
    seen: list[list[Arch]] = []

    mixed_speed = 1.08

    def host(archs: list[Arch]) -> list[float]:
        seen.append(list(archs))
        return [(mixed_speed if overhead_mode(a) == "mixed" else 0.92) * table.predict(a)
                for a in archs]

    report = check_drift(table, measure=host, modes=table_modes(table))
    assert len(seen) == 1 and len(seen[0]) == 16  # every mode in the same measurement
    assert [overhead_mode(a) for a in seen[0][4:]] == ["int8"] * 4 + ["binary"] * 4 + \
        ["mixed"] * 4
    assert report.mode_ratios() == pytest.approx(
        {"fp32": 0.92, "int8": 0.92, "binary": 0.92, "mixed": 1.08})
    assert not report.drifted  # every ratio within ±10 %
    assert "mixed 1.080x" in report.summary()
    assert report.to_dict()["modes"]["mixed"]["ratio"] == pytest.approx(1.08)
    save_scale(ws, table, report)
    stored = load_scale(ws, table)
    assert stored is not None and stored.scale == pytest.approx(0.92)
    assert stored.by_mode == pytest.approx({"int8": 0.92, "binary": 0.92, "mixed": 1.08})
    assert stored.for_modes(("fp32", "int8")) == pytest.approx(0.92)
    assert stored.for_modes(("fp32", "int8", "binary", "mixed")) == pytest.approx(1.08)
    mixed_speed = 1.2
    drifted = check_drift(table, measure=host, modes=("fp32", "mixed"))
    assert drifted.drifted and "up to +20%" in drifted.summary()
    assert list(drifted.modes) == ["mixed"]
    fp32_only = check_drift(table, measure=host)
    assert fp32_only.modes == {} and len(seen[-1]) == 4
    with pytest.raises(OfaSearchError, match="not mixed"):
        check_drift(write_synthetic_table(ws, "int8-only", "mbv3_small28_mp",
                                          ["fp32", "int8"]), measure=host, modes=["mixed"])


def test_scale_files_without_modes_still_load(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    table = table_with_references(ws, [0.2, 0.3, 0.4])
    refs = references(table)
    save_scale(ws, table, check_drift(table, measure=lambda a: [1.2 * m for m in
                                                                refs.measured_ms]))
    path = scale_path(ws, "drift-dev")
    data = json.loads(path.read_text())
    del data["by_mode"]
    path.write_text(json.dumps(data))
    stored = load_scale(ws, table)
    assert stored is not None and stored.by_mode == {}
    assert stored.for_modes(("fp32", "mixed")) == pytest.approx(1.2)
    path.write_text(json.dumps({**data, "by_mode": {"mixed": -2}}))
    with pytest.raises(FileFormatError, match=r"by_mode\['mixed'\] must be a positive"):
        load_scale(ws, table)
    path.write_text(json.dumps({**data, "by_mode": [1.0]}))
    with pytest.raises(FileFormatError, match="by_mode must map"):
        load_scale(ws, table)


def test_check_device_without_tvm_leaves_binary_modes_out(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Binary tables are profiled with TVM's kernels: without TVM the default check leaves
    the binary and mixed subnets out (and says so), and asking for them is an error."""
    from typer.testing import CliRunner

    import ofa_search.binary
    from ofa_search.cli.app import app

    ws = Workspace(tmp_path)
    table = write_synthetic_table(ws, "mp-cli", "mbv3_small28_mp", ["fp32", "int8", "binary"],
                                  resolutions=(16,))
    archs = sample_archs("mbv3_small28_mp", 2, 7, 1.0, table.resolutions)
    table.meta["reference"] = {"archs": [a.to_string() for a in archs],
                               "measured_ms": [table.predict(a) for a in archs]}
    table.save(ws.hw_profiles_dir / "mp-cli.json")
    monkeypatch.setattr(ofa_search.binary, "tvm_available", lambda: False)
    runner = CliRunner()
    asked = runner.invoke(app, ["check-device", "-w", str(ws.root), "-d", "mp-cli",
                                "--mode", "mixed"])
    # the CLI's entry point turns this error into one line and exit status 2
    assert isinstance(asked.exception, OfaSearchError) and "needs TVM" in str(asked.exception)
    default = runner.invoke(app, ["check-device", "-w", str(ws.root), "-d", "mp-cli",
                                  "--rounds", "1", "--json"])
    assert default.exit_code == 0, default.output
    assert "binary and mixed subnets not checked" in default.output
    report = json.loads(default.output[default.output.index("{"):])
    assert list(report["modes"]) == ["int8"]
