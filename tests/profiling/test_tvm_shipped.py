"""The shipped tuned TVM table: its packed database covers it, and it measures subnets on
this host without tuning anything (run through the CLI, as a user runs it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_cli import cli

from ofa_search.arch import Arch
from ofa_search.errors import FileFormatError
from ofa_search.profiling.lut import REPO_TABLE_DIR, LatencyTable, find_table

pytest.importorskip("tvm")

DEVICE = "cpu-tvm-1t-ms16"


def _host_runs(target: dict[str, object] | None) -> bool:
    """Whether this host has every instruction set that code for ``target`` uses."""
    import tvm

    from ofa_search.profiling.backends.tvm_backend import _ISA_FEATURES
    from ofa_search.profiling.host import cpu_flags, read_cpuinfo

    flags = cpu_flags(read_cpuinfo())
    tvm_target = tvm.target.Target(dict(target or {}))
    return all(flag in flags for name, flag in _ISA_FEATURES.items()
               if tvm.target.codegen.target_has_features(name, tvm_target))
ARCHIVE = REPO_TABLE_DIR / "tvm_db" / f"{DEVICE}.tar.gz"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OFA_SEARCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize(("device", "space", "resolution"),
                         [(DEVICE, "mbv3_small28", 28), (f"{DEVICE}-ofa", "ofa_mbv3", 160)])
def test_shipped_table_points_at_its_packed_database(cache: Path, device: str, space: str,
                                                     resolution: int) -> None:
    table = find_table(device)
    assert table.device["backend"] == "tvm" and table.device["tuning_trials"] == 16
    assert table.device["tuning_db"] == f"tvm_db/{device}.tar.gz"
    assert table.complete and table.space == space and table.resolutions == (resolution,)
    profile = table.profile()
    assert profile is not None and profile.tuning_db is not None
    folder = Path(profile.tuning_db)
    assert folder.parent == cache / "tvm-db"
    lines = (folder / "database_tuning_record.json").read_text().splitlines()
    assert len(lines) == table.meta["tuning_db"]["workloads"]


@pytest.mark.slow
def test_repacking_the_shipped_database_checks_coverage_and_gives_the_same_bytes(
        cache: Path, tmp_path: Path) -> None:
    profile = find_table(DEVICE).profile()
    assert profile is not None
    data = json.loads((REPO_TABLE_DIR / f"{DEVICE}.json").read_text())
    data["device"]["tuning_db"] = profile.tuning_db  # the unpacked folder
    workspace = tmp_path / "ws"
    (workspace / "hw_profiles").mkdir(parents=True)
    (workspace / "hw_profiles" / f"{DEVICE}.json").write_text(json.dumps(data))
    out = cli("profile", "pack-db", "--device", DEVICE, "--json", "--workspace", str(workspace))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    packed = workspace / "hw_profiles" / "tvm_db" / f"{DEVICE}.tar.gz"
    assert Path(result["archive"]) == packed
    assert packed.read_bytes() == ARCHIVE.read_bytes()
    table = LatencyTable.load(workspace / "hw_profiles" / f"{DEVICE}.json")
    assert table.device["tuning_db"] == f"tvm_db/{DEVICE}.tar.gz"


def test_latency_measures_with_the_shipped_database_and_tunes_nothing(cache: Path,
                                                                       tmp_path: Path) -> None:
    table = find_table(DEVICE)
    profile = table.profile()
    assert profile is not None and profile.tuning_db is not None
    records = Path(profile.tuning_db) / "database_tuning_record.json"
    before = records.read_bytes()
    arch = Arch.sample("mbv3_small28", 3).replace(resolution=28)
    out = cli("latency", "--device", DEVICE, arch.to_string(), "--measure", "--json",
              "--predictor", "lut", "--workspace", str(tmp_path))
    if not _host_runs(profile.target):
        # the table was tuned on an AVX-512 host: here its kernels would stop the process
        # with an illegal instruction; the backend refuses in one line instead
        assert out.returncode == 2, out.stderr
        assert "which this host lacks: it cannot run here" in out.stderr
        assert out.stderr.count("\n") == 1 and records.read_bytes() == before
        return
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["predicted_ms"] == pytest.approx(table.predict(arch))
    assert result["measured_ms"] > 0
    assert records.read_bytes() == before  # every workload was in the database
    other = arch.replace(resolution=24)
    out = cli("latency", "--device", DEVICE, other.to_string(), "--workspace", str(tmp_path))
    assert out.returncode == 2 and "does not cover resolution 24" in out.stderr


def test_a_clone_without_the_archive_gets_a_clear_error(tmp_path: Path) -> None:
    shutil.copy(REPO_TABLE_DIR / f"{DEVICE}.json", tmp_path / f"{DEVICE}.json")
    with pytest.raises(FileFormatError, match=r"tuning database archive .*tvm_db/"
                                        rf"{DEVICE}\.tar\.gz is missing"):
        LatencyTable.load(tmp_path / f"{DEVICE}.json").profile()
