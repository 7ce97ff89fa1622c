"""Tuned TVM tables end to end on a tiny space: tune by shard, merge, profile, pack, ship.

One module fixture tunes the tiny space's workloads (1 trial each) in two shards; every
test reuses those two databases.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ofa_search.errors import FileFormatError
from ofa_search.profiling import DeviceProfile, LatencyTable
from ofa_search.profiling.builder import build_table, enumerate_units
from ofa_search.profiling.lut import REPO_TABLE_DIR
from ofa_search.profiling.measure import FAST_TIMING
from ofa_search.profiling.timing import TimingConfig
from ofa_search.space import SearchSpace, StageSpec, register_space

pytest.importorskip("tvm")

from ofa_search.profiling.backends.tvm_tuning import make_runner
from ofa_search.profiling.tvm_db import (
    database_stats,
    merge_databases,
    pack_database,
    resolve_tuning_db,
    unpack_database,
)
from ofa_search.profiling.tvm_space import (
    Shard,
    pack_table_database,
    tune_space,
    untuned_units,
)

# registered by the ``shards`` fixture, once tests are collected: tests that parametrize
# over every registered space (test_space.py) must not see this one-arch space
TINY = SearchSpace(
    name="tvm_tiny", in_channels=1, num_classes=2, stem_width=8, stem_stride=1,
    first_block_width=8, stages=(StageSpec(8, 2, "relu", False),), final_expand=16,
    feature_mix=16, kernel_sizes=(3,), expand_ratios=(3,), depths=(1,), resolutions=(8,))
TIMING = TimingConfig(warmup=1, min_runs=3, max_runs=10, time_cap_s=0.05)


def _records(folder: Path) -> list[list[Any]]:
    return [json.loads(line) for line in
            (folder / "database_tuning_record.json").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    register_space(TINY)
    root = tmp_path_factory.mktemp("tvm-db")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OFA_SEARCH_CACHE", str(root / "cache"))
        summaries = []
        runner = make_runner()  # one worker process for both shards
        for index in (1, 2):
            profile = DeviceProfile.local_tvm(tuning_trials=1, tuning_db=root / f"s{index}")
            summaries.append(tune_space("tvm_tiny", profile, shard=Shard(index, 2),
                                        progress=False, runner=runner))
        yield {"root": root, "summaries": summaries,
               "dbs": [root / "s1", root / "s2"]}


def test_shards_partition_the_workloads() -> None:
    digests = [f"{n:064x}" for n in range(0, 10**6, 7919)]
    for count in (1, 2, 5):
        owners = [[Shard(i, count).holds(d) for i in range(1, count + 1)] for d in digests]
        assert all(sum(row) == 1 for row in owners)
    assert Shard.parse(" 2/3 ") == Shard(2, 3)
    for bad in ("0/2", "3/2", "1-2", "x"):
        with pytest.raises(ValueError, match="shard must be INDEX/COUNT"):
            Shard.parse(bad)


def test_tuning_by_shard_covers_each_workload_once(shards: dict[str, Any]) -> None:
    first, second = shards["summaries"]
    assert first["workloads"] == second["workloads"] >= 4  # stem, 2 blocks, head convs
    assert first["in_shard"] + second["in_shard"] == first["workloads"]
    assert (first["tuned"], second["tuned"]) == (first["in_shard"], second["in_shard"])
    for summary, db in zip(shards["summaries"], shards["dbs"], strict=True):
        records = _records(db)
        assert len(records) == summary["tuned"]  # one trial each
        assert len({r[0] for r in records}) == summary["tuned"]


def test_tuning_again_resumes_and_tunes_nothing(shards: dict[str, Any]) -> None:
    profile = DeviceProfile.local_tvm(tuning_trials=1, tuning_db=shards["dbs"][0])
    again = tune_space("tvm_tiny", profile, shard=Shard(1, 2), progress=False)
    assert again["already_tuned"] == again["in_shard"] and again["tuned"] == 0
    assert len(_records(shards["dbs"][0])) == shards["summaries"][0]["tuned"]


def test_tune_space_needs_a_database() -> None:
    with pytest.raises(ValueError, match="needs a TVM profile with tuning trials and a tuning "
                                         "database"):
        tune_space("tvm_tiny", DeviceProfile.local_tvm(tuning_trials=1))
    remote = DeviceProfile.remote_tvm(id="pi", tracker="127.0.0.1:9190", key="pi",
                                      target={"kind": "llvm"}, tuning_trials=1,
                                      tuning_db="db")
    with pytest.raises(ValueError, match="is a remote device: tune it while profiling"):
        tune_space("tvm_tiny", remote)


def test_merge_keeps_the_best_record_of_each_workload(shards: dict[str, Any],
                                                      tmp_path: Path) -> None:
    a, b = shards["dbs"]
    total = shards["summaries"][0]["workloads"]
    merged = merge_databases([a, b, a], tmp_path / "merged")
    assert merged == {"workloads": total,
                      "records": 2 * len(_records(a)) + len(_records(b))}
    assert database_stats(tmp_path / "merged")["records"] == total
    best: dict[tuple[int, int], float] = {}  # (shard, workload index in its file) -> secs
    for shard, db in enumerate((a, b)):
        for record in _records(db):
            key = (shard, record[0])
            best[key] = min(best.get(key, float("inf")), *record[1][1])
    assert sorted(min(r[1][1]) for r in _records(tmp_path / "merged")) == sorted(best.values())
    with pytest.raises(FileFormatError, match="not a MetaSchedule JSON database"):
        merge_databases([tmp_path], tmp_path / "other")


def test_pack_is_deterministic_and_unpacks_once(shards: dict[str, Any],
                                                tmp_path: Path) -> None:
    source = tmp_path / "merged"
    merge_databases(shards["dbs"], source)
    one = pack_database(source, tmp_path / "one.tar.gz")
    pack_database(source, tmp_path / "two.tar.gz")
    assert (tmp_path / "one.tar.gz").read_bytes() == (tmp_path / "two.tar.gz").read_bytes()
    assert one["bytes"] == (tmp_path / "one.tar.gz").stat().st_size
    folder = unpack_database(tmp_path / "one.tar.gz", tmp_path / "cache")
    assert database_stats(folder) == {"workloads": one["workloads"],
                                      "records": one["workloads"]}
    assert unpack_database(tmp_path / "one.tar.gz", tmp_path / "cache") == folder


def test_corrupt_or_foreign_archives_are_clear_errors(shards: dict[str, Any],
                                                      tmp_path: Path) -> None:
    pack_database(shards["dbs"][0], tmp_path / "db.tar.gz")
    data = (tmp_path / "db.tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError, match="corrupt tuning database archive"):
        unpack_database(tmp_path / "cut.tar.gz", tmp_path / "cache")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("../evil.json")
        tar.addfile(info, io.BytesIO(b""))
    (tmp_path / "foreign.tar.gz").write_bytes(buffer.getvalue())
    with pytest.raises(FileFormatError, match="not a packed tuning database"):
        unpack_database(tmp_path / "foreign.tar.gz", tmp_path / "cache")
    assert not (tmp_path / "evil.json").exists()


def test_missing_databases_are_clear_errors(tmp_path: Path) -> None:
    archive = DeviceProfile.local_tvm(tuning_trials=1, tuning_db="tvm_db/x.tar.gz", id="x")
    with pytest.raises(FileFormatError, match=r"archive .*tvm_db/x\.tar\.gz is missing"):
        resolve_tuning_db(archive, tmp_path)
    folder = DeviceProfile.local_tvm(tuning_trials=1, tuning_db=tmp_path / "gone", id="x")
    with pytest.raises(FileFormatError, match="gone is missing; without it TVM would tune"):
        resolve_tuning_db(folder, None)


@pytest.fixture(scope="module")
def packed_table(shards: dict[str, Any]) -> Path:
    """A tuned TVM table of the tiny space, profiled with the merged shards, then packed."""
    root = shards["root"]
    merge_databases(shards["dbs"], root / "merged")
    profile = DeviceProfile.local_tvm(tuning_trials=1, tuning_db=root / "merged", id="tiny-tvm")
    out = root / "tables" / "tiny-tvm.json"
    before = len(_records(root / "merged"))
    build_table("tvm_tiny", profile, None, out, timing=TIMING, progress=False,
                overhead_archs=1, rounds=1)
    assert len(_records(root / "merged")) == before  # nothing was left to tune
    pack_table_database(LatencyTable.load(out), progress=False)
    return out


def test_packed_table_travels_with_its_database(packed_table: Path, tmp_path: Path) -> None:
    shipped = tmp_path / "shipped"
    shutil.copytree(packed_table.parent, shipped)  # a copy elsewhere, as a clone would be
    table = LatencyTable.load(shipped / "tiny-tvm.json")
    assert table.device["tuning_db"] == "tvm_db/tiny-tvm.tar.gz"
    profile = table.profile()
    assert profile is not None and profile.tuning_db is not None
    packed = database_stats(profile.tuning_db)
    assert packed["records"] == packed["workloads"] == table.meta["tuning_db"]["workloads"]
    assert packed["workloads"] >= len(enumerate_units("tvm_tiny"))
    assert untuned_units(table) == []
    (shipped / "tvm_db" / "tiny-tvm.tar.gz").unlink()
    with pytest.raises(FileFormatError, match=r"tuning database archive .* is missing"):
        LatencyTable.load(shipped / "tiny-tvm.json").profile()


def test_packed_table_measures_subnets_without_tuning(packed_table: Path) -> None:
    from ofa_search.arch import Arch
    from ofa_search.profiling.backends import get_backend
    from ofa_search.profiling.measure import measure_arch

    table = LatencyTable.load(packed_table)
    profile = table.profile()
    assert profile is not None and profile.tuning_db is not None
    before = (Path(profile.tuning_db) / "database_tuning_record.json").read_bytes()
    arch = Arch.largest("tvm_tiny")
    with get_backend(profile, timing=FAST_TIMING) as backend:
        stats = measure_arch(backend, arch, 1, profile)
    assert stats.median_ms > 0 and stats.count >= FAST_TIMING.min_runs
    assert (Path(profile.tuning_db) / "database_tuning_record.json").read_bytes() == before
    assert table.predict(arch) > 0


def test_pack_refuses_a_database_that_misses_workloads(shards: dict[str, Any],
                                                       packed_table: Path,
                                                       tmp_path: Path) -> None:
    data = json.loads(packed_table.read_text())
    data["device"]["tuning_db"] = str(shards["dbs"][0])  # one shard only
    (tmp_path / "half.json").write_text(json.dumps(data))
    table = LatencyTable.load(tmp_path / "half.json")
    with pytest.raises(FileFormatError, match=r"lacks workloads of \d+ units"):
        pack_table_database(table, progress=False)
    assert not (tmp_path / "tvm_db").exists()
    assert json.loads((tmp_path / "half.json").read_text()) == data
    ort = LatencyTable.load(REPO_TABLE_DIR / "cpu-ort-1t.json")
    with pytest.raises(FileFormatError, match="is not a tuned TVM table"):
        pack_table_database(ort, progress=False)
