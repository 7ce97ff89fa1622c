"""The stand-alone strategy and the supernet benchmark (tiny runs on digits)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from ofa_search.arch import Arch
from ofa_search.train import TrainConfig, TrainingError, make_strategy
from ofa_search.train.benchmark import SupernetBenchConfig, bench_archs, run_supernet_bench

SPACE = "mbv3_small28"


def test_standalone_strategy_trains_only_its_arch() -> None:
    arch = Arch.sample(SPACE, np.random.default_rng(3))
    strategy = make_strategy("standalone", SPACE, arch=arch, seed=0)
    assert strategy.choices.resolutions == (arch.resolution,)
    for _ in range(3):
        tasks = strategy.step()
        assert [(t.arch, t.loss) for t in tasks] == [(arch, "labels")]
    other = make_strategy("standalone", SPACE, arch=Arch.largest(SPACE))
    with pytest.raises(ValueError, match="stand-alone run of"):
        other.load_state_dict(strategy.state_dict())


def test_standalone_config_needs_an_arch() -> None:
    with pytest.raises(TrainingError, match="needs an arch"):
        TrainConfig(strategy="standalone")
    with pytest.raises(TrainingError, match="only it takes one"):
        TrainConfig(strategy="sandwich", arch=Arch.largest(SPACE).to_string())


def test_compute_rule_equalises_subnet_epochs() -> None:
    config = SupernetBenchConfig(budget=52)
    assert config.epochs_for("sandwich") == 13  # 4 subnets per step
    assert config.epochs_for("spos") == 52
    assert config.epochs_for("ps") == 4  # 13 subnets over one epoch of each of 5 phases
    assert config.standalone_epochs() == 13


def test_bench_archs_are_distinct_and_seeded() -> None:
    config = SupernetBenchConfig(n_random=6)
    archs = bench_archs(config)
    assert archs[:2] == [Arch.largest(SPACE), Arch.smallest(SPACE)]
    assert len(set(archs)) == 8
    assert archs == bench_archs(config)
    assert archs != bench_archs(dataclasses.replace(config, seed=1))


@pytest.mark.slow
def test_tiny_benchmark_runs_and_resumes(tmp_path: Path, one_torch_thread: None) -> None:
    config = SupernetBenchConfig(dataset="digits", strategies=("sandwich", "spos"), budget=4,
                                 steps_per_epoch=2, batch_size=32, n_random=2,
                                 n_standalone=3, warmup_epochs=0)
    results = run_supernet_bench(config, tmp_path, log=lambda _: None)
    assert set(results["strategies"]) == {"sandwich", "spos"}
    for row in results["strategies"].values():
        assert len(row["accuracy"]) == 4
        assert all(0.0 <= a <= 1.0 for a in row["accuracy"])
        assert row["tau_inherited_vs_standalone"] is None or -1 <= row[
            "tau_inherited_vs_standalone"] <= 1
    assert results["strategies"]["sandwich"]["epochs"] == 1
    assert results["strategies"]["spos"]["epochs"] == 4
    assert len(results["standalone"]["accuracy"]["0"]) == 3
    assert (tmp_path / "results.json").is_file()
    checkpoints = sorted(tmp_path.rglob("checkpoint.pt"))
    assert len(checkpoints) == 2 + 2 * 3
    stamps = [p.stat().st_mtime_ns for p in checkpoints]
    again = run_supernet_bench(config, tmp_path, log=lambda _: None)
    assert [p.stat().st_mtime_ns for p in checkpoints] == stamps  # nothing retrained
    for name, row in results["strategies"].items():  # evaluations come from the cache
        assert again["strategies"][name]["accuracy"] == row["accuracy"]
