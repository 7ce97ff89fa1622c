"""The stand-alone strategy and the supernet benchmark (tiny runs on digits)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ofa_search.arch import Arch
from ofa_search.train import TrainConfig, TrainingError, load_supernet, make_strategy
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


def _record(config: SupernetBenchConfig, accuracy: dict[str, list[float]]) -> dict:
    """A benchmark record of ``config`` whose stand-alone runs scored ``accuracy``."""
    return {"config": dataclasses.asdict(config),
            "archs": [a.to_string() for a in bench_archs(config)],
            "standalone": {"epochs": config.standalone_epochs(), "accuracy": accuracy}}


TINY = SupernetBenchConfig(dataset="digits", strategies=("spos",), budget=1, steps_per_epoch=2,
                           batch_size=32, n_random=2, n_standalone=3, warmup_epochs=0)


def test_a_matching_record_stands_in_for_the_standalone_runs(
        tmp_path: Path, one_torch_thread: None) -> None:
    record = _record(TINY, {"0": [0.9, 0.8, 0.7], "1": [0.8, 0.9, 0.6]})
    # another training seed: the same subnets and stand-alone runs, so the record fits
    config = dataclasses.replace(TINY, train_seed=3)
    results = run_supernet_bench(config, tmp_path, standalone_from=record, log=lambda _: None)
    assert not (tmp_path / "standalone").exists()  # nothing trained alone
    _, meta = load_supernet(tmp_path / "spos" / "checkpoint.pt")
    assert meta["config"]["seed"] == 3
    assert results["standalone_from_record"] is True
    assert results["standalone"]["mean_accuracy"] == pytest.approx([0.85, 0.85, 0.65])
    assert results["standalone"]["seed_to_seed_tau"] == pytest.approx(1 / 3)
    row = results["strategies"]["spos"]
    assert row["inherited_minus_standalone_mean"] == pytest.approx(
        np.mean(row["accuracy"][:3]) - np.mean([0.85, 0.85, 0.65]))


@pytest.mark.parametrize(("change", "message"), [
    ({"lr": 0.5}, "taken with lr=0.1, this benchmark has lr=0.5"),
    ({"seed": 1}, "taken with seed=0"),
    ({"standalone_seeds": (0, 2)}, "standalone_seeds=[0, 1]"),
    ({"budget": 20}, "trained 1 epochs, this benchmark's budget gives 5"),
])
def test_a_record_of_other_settings_is_refused_before_training(
        tmp_path: Path, change: dict, message: str) -> None:
    record = _record(TINY, {"0": [0.9, 0.8, 0.7], "1": [0.8, 0.9, 0.6]})
    with pytest.raises(TrainingError, match=message.replace("[", r"\[").replace("]", r"\]")):
        run_supernet_bench(dataclasses.replace(TINY, **change), tmp_path,
                           standalone_from=record, log=lambda _: None)
    assert list(tmp_path.iterdir()) == []


def test_a_record_of_other_subnets_or_no_record_is_refused(tmp_path: Path) -> None:
    record = _record(TINY, {"0": [0.9, 0.8, 0.7], "1": [0.8, 0.9, 0.6]})
    record["archs"][2] = Arch.largest(SPACE).to_string()
    with pytest.raises(TrainingError, match="subnets differ"):
        run_supernet_bench(TINY, tmp_path, standalone_from=record, log=lambda _: None)
    with pytest.raises(TrainingError, match="not a supernet benchmark record"):
        run_supernet_bench(TINY, tmp_path, standalone_from={"archs": []}, log=lambda _: None)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("accuracy", [
    {"0": [0.9, 0.8, 0.7]},                      # seed 1 missing
    {"0": [0.9, 0.8, 0.7], "1": [0.8, 0.9]},     # one subnet short
    {"0": [0.9, 0.8, 0.7], "1": None},
    {"0": [0.9, 0.8, 0.7], "1": ["a", 0.9, 0.6]},
    [0.9, 0.8, 0.7],
])
def test_a_record_lacking_a_seeds_accuracies_is_refused(
        tmp_path: Path, accuracy: object) -> None:
    record = _record(TINY, accuracy)  # type: ignore[arg-type]
    with pytest.raises(TrainingError, match="lacks the 3 accuracies of seed"):
        run_supernet_bench(TINY, tmp_path, standalone_from=record, log=lambda _: None)
    assert list(tmp_path.iterdir()) == []


def test_the_script_turns_a_bad_record_into_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from script_helpers import load_script

    script = load_script("bench_supernet")
    threads = ["--threads", str(torch.get_num_threads())]  # the script sets them
    assert script.main([str(tmp_path / "out"), *threads, "--standalone-from",
                        str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
    (tmp_path / "other.json").write_text(json.dumps(
        _record(dataclasses.replace(SupernetBenchConfig(), lr=0.3), {})))
    assert script.main([str(tmp_path / "out"), *threads, "--standalone-from",
                        str(tmp_path / "other.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: stand-alone record was taken with lr=0.3, this benchmark has lr=0.1"
    assert not (tmp_path / "out").exists()
