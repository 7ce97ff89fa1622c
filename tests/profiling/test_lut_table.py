"""LatencyTable pricing, file format errors and the device-table registry (no measuring)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ofa_search.arch import Arch
from ofa_search.errors import FileFormatError, LutMissError, UnknownDeviceError
from ofa_search.profiling.builder import enumerate_units
from ofa_search.profiling.lut import LUT_SCHEMA_VERSION, LatencyTable, find_table, list_tables
from ofa_search.units import arch_units

SPACE = "mbv3_small28"


def synthetic_table(resolutions: tuple[int, ...] = (16, 20), overhead: float = 0.25,
                    device_id: str = "fake-dev") -> LatencyTable:
    """Every unit priced at (index + 1) / 100 ms, so sums are checkable by hand."""
    units = enumerate_units(SPACE, 1.0, resolutions)
    entries = {u.key: {"median_ms": (i + 1) / 100, "iqr_ms": 0.001, "count": 10}
               for i, u in enumerate(units)}
    return LatencyTable(device_id=device_id, device={"id": device_id, "backend": "fake"},
                        space=SPACE, width_mult=1.0, resolutions=resolutions,
                        overhead_ms=overhead, entries=entries)


def test_enumerate_units_covers_every_sampled_arch() -> None:
    keys = {u.key for u in enumerate_units(SPACE)}
    assert len(keys) == len(enumerate_units(SPACE))
    for seed in range(30):
        arch = Arch.sample(SPACE, seed)
        assert {u.key for u in arch_units(arch)} <= keys
    assert {u.key for u in arch_units(Arch.largest(SPACE))} <= keys
    assert {u.key for u in arch_units(Arch.smallest(SPACE))} <= keys


def test_predict_is_unit_sum_plus_overhead() -> None:
    table = synthetic_table()
    arch = Arch.sample(SPACE, 3, resolution=20)
    by_hand = sum(table.entries[u.key]["median_ms"] for u in arch_units(arch)) + 0.25
    assert table.predict(arch) == pytest.approx(by_hand)
    assert table.unit_sum(arch) == pytest.approx(by_hand - 0.25)
    assert table.covers(arch)


def test_missing_unit_names_the_key() -> None:
    table = synthetic_table()
    arch = Arch.largest(SPACE).replace(resolution=16)
    head_key = arch_units(arch)[-1].key
    del table.entries[head_key]
    assert not table.covers(arch)
    with pytest.raises(LutMissError, match=head_key):
        table.predict(arch)


def test_uncovered_resolution_lists_covered_ones() -> None:
    table = synthetic_table()
    with pytest.raises(LutMissError, match=r"resolution 28.*\[16, 20\]"):
        table.predict(Arch.sample(SPACE, 0, resolution=28))


def test_round_trip(tmp_path: Path) -> None:
    table = synthetic_table()
    path = table.save(tmp_path / "fake-dev.json")
    again = LatencyTable.load(path)
    assert again.to_dict() == table.to_dict()
    assert json.loads(path.read_text())["schema_version"] == LUT_SCHEMA_VERSION


@pytest.mark.parametrize("mutate, message", [
    (lambda text: text[: len(text) // 2], "not valid JSON"),
    (lambda text: "hello", "not valid JSON"),
    (lambda text: "[1, 2]", "not an ofa-search latency table"),
    (lambda text: text.replace('"schema_version": 1', '"schema_version": 99'),
     "unsupported latency table schema_version 99"),
    (lambda text: text.replace('"overhead_ms"', '"overhead"'), r"lacks fields \['overhead_ms'\]"),
    (lambda text: text.replace('"median_ms"', '"mean"', 1), "must hold"),
])
def test_bad_files_raise_file_format_error(tmp_path: Path, mutate: object,
                                           message: str) -> None:
    path = synthetic_table().save(tmp_path / "t.json")
    assert callable(mutate)
    path.write_text(mutate(path.read_text()))
    with pytest.raises(FileFormatError, match=message):
        LatencyTable.load(path)


def test_registry(tmp_path: Path) -> None:
    repo, workspace = tmp_path / "repo", tmp_path / "ws"
    synthetic_table(device_id="dev-a").save(repo / "dev-a.json")
    synthetic_table(device_id="dev-b", overhead=1.0).save(repo / "dev-b.json")
    synthetic_table(device_id="dev-b", overhead=2.0).save(workspace / "dev-b.json")
    (repo / "broken.json").write_text("{")
    dirs = [workspace, repo]
    assert find_table("dev-b", dirs).overhead_ms == 2.0  # the first folder wins
    assert find_table("dev-a", dirs).device_id == "dev-a"
    infos = {info.device_id: info for info in list_tables(dirs)}
    assert sorted(infos) == ["broken", "dev-a", "dev-b"]
    assert infos["broken"].error is not None and infos["dev-a"].error is None
    with pytest.raises(UnknownDeviceError, match=r"'nope'.*known devices: \['broken', 'dev-a'"):
        find_table("nope", dirs)


def test_shipped_tables_are_listed() -> None:
    ids = {info.device_id for info in list_tables()}
    assert "note10-tflite" in ids


def test_unit_agreement_tells_a_busy_profile_from_a_quiet_one() -> None:
    """The median relative spread of the units' rounds: 2 % passes, 20 % warns (naming the
    fix); an unbounded interval counts as infinitely wide; no intervals at all (an imported
    table) gives nothing."""
    from ofa_search.profiling.lut import NOISY_SPREAD, unit_agreement

    table = synthetic_table()
    assert unit_agreement(table) is None  # entries without intervals
    keys = sorted(table.entries)
    for i, key in enumerate(keys):
        entry = table.entries[key]
        entry["ci_halfwidth_ms"] = 0.02 * entry["median_ms"]
        entry["converged"] = i % 2 == 0
    table.entries[keys[0]]["ci_halfwidth_ms"] = None
    quiet = unit_agreement(table)
    assert quiet is not None and not quiet.noisy
    assert quiet.units == len(keys) and quiet.median_spread == pytest.approx(0.02)
    assert quiet.p90_spread == pytest.approx(0.02)  # the one unbounded unit is above p90
    assert quiet.converged_share == pytest.approx((len(keys) + 1) // 2 / len(keys))
    assert quiet.warning("fake-dev") is None
    assert "agreed within a median 2.0%" in quiet.summary()
    for entry in table.entries.values():
        if entry["ci_halfwidth_ms"] is not None:
            entry["ci_halfwidth_ms"] = 0.2 * entry["median_ms"]
    busy = unit_agreement(table)
    assert busy is not None and busy.noisy and busy.median_spread > NOISY_SPREAD
    warning = busy.warning("fake-dev")
    assert warning is not None and warning.startswith("warning: fake-dev was profiled while")
    assert "median 20.0%" in warning and "profile it again under a new device id" in warning
