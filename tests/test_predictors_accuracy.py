"""Accuracy predictors on synthetic-but-real data: accuracies from a known function of
``Arch.encode()`` plus noise; held-out quality, uncertainty, files, selection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ofa_search import metrics
from ofa_search.arch import Arch
from ofa_search.errors import FileFormatError, InvalidArchError
from predictors.accuracy import (
    AccuracyPredictor,
    EnsembleAccuracyPredictor,
    MlpAccuracyPredictor,
)
from predictors.accuracy_features import encode_batch, n_features
from predictors.accuracy_fit import heldout_split, make_candidate, select_accuracy_predictor
from predictors.accuracy_gp import GpAccuracyPredictor
from predictors.loading import load_accuracy_predictor

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SPACE = "mbv3_small28"
# small settings keep the suite fast; the defaults are exercised by the benchmark script
FAST: dict[str, dict[str, object]] = {
    "mlp": {"hidden": (64, 64, 64), "min_steps": 400, "epochs": 20},
    "ensemble": {"n_members": 3, "hidden": (32, 32), "min_steps": 300, "epochs": 20},
    "gp": {"n_restarts": 0},
}


def synthetic(archs: list[Arch], noise: float, seed: int) -> np.ndarray:
    """A smooth known accuracy: larger and higher-resolution subnets score higher."""
    x = np.stack([a.encode() for a in archs]).astype(float)
    w = np.random.default_rng(123).normal(0.0, 1.0, x.shape[1])
    signal = np.tanh((x @ w - 0.0) / 6.0)
    return 0.85 + 0.05 * signal + np.random.default_rng(seed).normal(0.0, noise, len(archs))


@pytest.fixture(scope="module")
def data() -> tuple[list[Arch], np.ndarray, list[Arch], np.ndarray]:
    gen = np.random.default_rng(0)
    archs = [Arch.sample(SPACE, gen) for _ in range(360)]
    y = synthetic(archs, 0.002, 1)
    return archs[:280], y[:280], archs[280:], y[280:]


def test_encode_batch_equals_encode() -> None:
    for space in (SPACE, "ofa_mbv3"):
        gen = np.random.default_rng(5)
        archs = [Arch.sample(space, gen) for _ in range(50)] + [Arch.smallest(space),
                                                               Arch.largest(space)]
        x = encode_batch(archs, space)
        assert x.dtype == np.float32 and x.shape == (52, n_features(space))
        np.testing.assert_array_equal(x, np.stack([a.encode() for a in archs]))
    assert encode_batch([], SPACE).shape == (0, n_features(SPACE))
    with pytest.raises(InvalidArchError, match="arch 0 is of space 'ofa_mbv3'"):
        encode_batch([Arch.smallest("ofa_mbv3")], SPACE)


@pytest.mark.parametrize("name,max_rmse_points", [("mlp", 1.2), ("ensemble", 1.2),
                                                  ("gp", 1.2)])
def test_candidate_quality_uncertainty_and_round_trip(name: str, max_rmse_points: float,
                                                      data: tuple, tmp_path: Path) -> None:
    train_a, train_y, test_a, test_y = data
    pred = make_candidate(name, SPACE, seed=0, options=FAST[name]).fit(train_a, train_y)
    assert isinstance(pred, AccuracyPredictor) and pred.space == SPACE
    p = pred.predict(test_a)
    assert p.shape == (len(test_a),) and p.dtype == np.float64
    spread = 100 * float(np.std(test_y))
    rmse_points = metrics.rmse(p * 100, test_y * 100)
    assert rmse_points < max_rmse_points < spread, (rmse_points, spread)
    assert metrics.kendall_tau(p, test_y) > 0.75
    std = pred.predict_std(test_a)
    assert std.shape == (len(test_a),) and np.all(std > 0) and np.all(np.isfinite(std))
    assert float(np.mean(std)) < 0.05  # same units as the accuracy (fractions)
    path = pred.save(tmp_path / "acc.json")
    assert path.stat().st_size < 2_000_000
    loaded = load_accuracy_predictor(path)
    assert type(loaded) is type(pred) and loaded.space == SPACE
    np.testing.assert_array_equal(loaded.predict(test_a), p)
    np.testing.assert_array_equal(loaded.predict_std(test_a), std)
    with pytest.raises(InvalidArchError, match="fitted on space 'mbv3_small28'"):
        loaded.predict([Arch.smallest("ofa_mbv3")])


def test_ensemble_std_is_per_arch_and_predict_matches_members(data: tuple) -> None:
    train_a, train_y, test_a, _ = data
    pred = EnsembleAccuracyPredictor(SPACE, seed=1, **FAST["ensemble"])  # type: ignore[arg-type]
    pred.fit(train_a, train_y)
    members = pred.predict_members(test_a)
    assert members.shape == (3, len(test_a))
    np.testing.assert_allclose(pred.predict(test_a), members.mean(axis=0))
    np.testing.assert_allclose(pred.predict_std(test_a), members.std(axis=0), atol=1e-6)
    assert np.ptp(pred.predict_std(test_a)) > 0
    # a fresh list of the same archs gives the same numbers (the memo is by identity)
    np.testing.assert_array_equal(pred.predict(list(test_a)), pred.predict(test_a))


def test_mlp_std_is_the_heldout_rmse_and_fits_are_seeded(data: tuple) -> None:
    train_a, train_y, test_a, _ = data
    a = MlpAccuracyPredictor(SPACE, seed=3, **FAST["mlp"]).fit(train_a, train_y)  # type: ignore[arg-type]
    b = MlpAccuracyPredictor(SPACE, seed=3, **FAST["mlp"]).fit(train_a, train_y)  # type: ignore[arg-type]
    np.testing.assert_array_equal(a.predict(test_a), b.predict(test_a))
    std = a.predict_std(test_a)
    assert np.all(std == std[0]) and 0 < std[0] < 0.02
    c = MlpAccuracyPredictor(SPACE, seed=4, **FAST["mlp"]).fit(train_a, train_y)  # type: ignore[arg-type]
    assert not np.array_equal(a.predict(test_a), c.predict(test_a))


def test_fit_rejects_bad_targets() -> None:
    archs = [Arch.smallest(SPACE), Arch.largest(SPACE)] * 3
    pred = EnsembleAccuracyPredictor(SPACE, n_members=2)
    with pytest.raises(ValueError, match="fractions in"):
        pred.fit(archs, [50.0] * 6)
    with pytest.raises(ValueError, match="6 archs but 5 targets"):
        pred.fit(archs, [0.5] * 5)
    with pytest.raises(RuntimeError, match="not fitted"):
        pred.predict(archs)
    with pytest.raises(ValueError, match="n_members"):
        EnsembleAccuracyPredictor(SPACE, n_members=1)
    with pytest.raises(ValueError, match="unknown accuracy predictor 'svm'"):
        make_candidate("svm", SPACE)


def test_bad_files_are_refused(data: tuple, tmp_path: Path) -> None:
    train_a, train_y, _, _ = data
    good = MlpAccuracyPredictor(SPACE, **FAST["mlp"]).fit(  # type: ignore[arg-type]
        train_a[:40], train_y[:40]).save(tmp_path / "good.json")
    content = json.loads(good.read_text())
    cases = {
        "trunc.json": (good.read_text()[:200], "cannot read"),
        "kind.json": (json.dumps(dict(content, kind="latency_learned")),
                      "not an accuracy predictor"),
        "version.json": (json.dumps(dict(content, format_version=9)), "format_version 9"),
        "shape.json": (json.dumps(dict(content, state=dict(
            content["state"], layers=content["state"]["layers"][1:]))), "malformed"),
        "feat.json": (json.dumps(dict(content, state=dict(content["state"], n_features=5))),
                      "5 features"),
    }
    for file, (text, message) in cases.items():
        (tmp_path / file).write_text(text)
        with pytest.raises(FileFormatError, match=message):
            load_accuracy_predictor(tmp_path / file)
    with pytest.raises(FileFormatError, match="fitted on space 'mbv3_small28', not 'ofa_mbv3'"):
        load_accuracy_predictor(good, space="ofa_mbv3")
    with pytest.raises(FileFormatError, match="cannot read"):
        load_accuracy_predictor(tmp_path / "missing.json")


def test_heldout_split_and_selection(data: tuple) -> None:
    train, test = heldout_split(100, 0.2, seed=0)
    assert len(test) == 20 and len(train) == 80 and not set(train) & set(test)
    again = heldout_split(100, 0.2, seed=0)
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
    with pytest.raises(ValueError, match="at least 4"):
        heldout_split(3)
    archs, y = data[0][:150], data[1][:150]
    pred, report = select_accuracy_predictor(archs, y, space=SPACE,
                                             candidates=("mlp", "gp"), options=FAST)
    assert report["n_train"] == 120 and report["n_heldout"] == 30
    scores = report["candidates"]
    assert set(scores) == {"mlp", "gp"}
    best = max(scores, key=lambda n: (round(scores[n]["kendall_tau"], 2), -scores[n]["rmse"]))
    assert report["chosen"] == best
    assert isinstance(pred, GpAccuracyPredictor if best == "gp" else MlpAccuracyPredictor)
    for s in scores.values():
        assert {"rmse", "kendall_tau", "mean_std_points", "fit_s", "within_5pct"} <= set(s)


def test_benchmark_rows_over_training_sizes(data: tuple, tmp_path: Path) -> None:
    from predictors.accuracy_bench import format_bench, run_accuracy_bench
    from predictors.accuracy_data import AccuracyDataset, AccuracyRecord

    archs, y = data[0][:70], data[1][:70]
    records = tuple(AccuracyRecord(a.to_string(), float(v), 0, a.resolution)
                    for a, v in zip(archs, y, strict=True))
    dataset = AccuracyDataset(tmp_path / "d.jsonl", {"space": SPACE}, records)
    result = run_accuracy_bench(dataset, sizes=(20, 40, 1000), candidates=("ensemble",),
                                options=FAST, log=None)
    assert result["n_heldout"] == 14 and result["n_archs"] == 70
    # sizes the pool (56) cannot supply are dropped; "all of it" is added
    assert [r["n_train"] for r in result["rows"]] == [20, 40, 56]
    for row in result["rows"]:
        assert row["candidate"] == "ensemble" and row["rmse_points"] > 0
        assert row["predict_ms_per_1000"] > 0 and -1 <= row["kendall_tau"] <= 1
    assert result["rows"][-1]["rmse_points"] < 100 * float(np.std(y))
    assert "n_train candidate" in format_bench(result)
