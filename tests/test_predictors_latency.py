"""Metrics, the predictor file format and the latency predictors (on the shipped table)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ofa_search import metrics
from ofa_search.errors import FileFormatError
from ofa_search.profiling.builder import sample_archs
from ofa_search.profiling.lut import REPO_TABLE_DIR, LatencyTable
from predictors.latency import (
    FEATURE_NAMES,
    LearnedLatencyPredictor,
    LutLatencyPredictor,
    latency_features,
)


@pytest.fixture(scope="module")
def table() -> LatencyTable:
    return LatencyTable.load(REPO_TABLE_DIR / "cpu-ort-1t.json")


def _archs(table: LatencyTable, n: int, seed: int) -> list:
    return sample_archs(table.space, n, seed, table.width_mult, table.resolutions)


# -- metrics ------------------------------------------------------------------------------
def test_metrics_hand_computed() -> None:
    true = [1.0, 2.0, 4.0, 5.0]
    pred = [1.1, 1.8, 4.0, 6.0]  # errors 0.1, -0.2, 0, 1 -> relative 10 %, 10 %, 0 %, 20 %
    assert metrics.rmse(pred, true) == pytest.approx(math.sqrt((0.01 + 0.04 + 0 + 1) / 4))
    assert metrics.mape(pred, true) == pytest.approx((0.1 + 0.1 + 0 + 0.2) / 4)
    assert metrics.within(pred, true, 5) == pytest.approx(0.25)
    assert metrics.within(pred, true, 10) == pytest.approx(0.75)
    assert metrics.kendall_tau(pred, true) == pytest.approx(1.0)
    assert metrics.spearman_rho(pred, true) == pytest.approx(1.0)
    assert metrics.kendall_tau([3, 2, 1], [1, 2, 3]) == pytest.approx(-1.0)
    # one discordant pair of three: tau = (2 - 1) / 3
    assert metrics.kendall_tau([1, 3, 2], [1, 2, 3]) == pytest.approx(1 / 3)
    assert metrics.spearman_rho([1, 3, 2], [1, 2, 3]) == pytest.approx(0.5)
    rep = metrics.report(pred, true)
    assert set(rep) == {"n", "rmse", "mape", "within_5pct", "within_10pct", "kendall_tau",
                        "spearman_rho"}
    assert rep["n"] == 4
    with pytest.raises(ValueError):
        metrics.rmse([1.0], [1.0, 2.0])


# -- predictors ---------------------------------------------------------------------------
def test_lut_predictor_equals_table(table: LatencyTable) -> None:
    archs = _archs(table, 20, 11)
    pred = LutLatencyPredictor(table).predict(archs)
    np.testing.assert_allclose(pred, [table.predict(a) for a in archs], rtol=0, atol=1e-12)
    # refitting the overhead recovers a constant shift
    true = np.array([table.unit_sum(a) for a in archs]) + 0.05
    refit = LutLatencyPredictor(table).fit(archs, true)
    assert refit.overhead_ms == pytest.approx(0.05)


def test_features_shape(table: LatencyTable) -> None:
    archs = _archs(table, 5, 12)
    x = latency_features(table, archs)
    assert x.shape == (5, len(FEATURE_NAMES))
    np.testing.assert_allclose(x[:, 0], [table.unit_sum(a) for a in archs])
    np.testing.assert_allclose(x[:, 1] + x[:, 2] + x[:, 3], x[:, 0])


def _synthetic(table: LatencyTable, archs: list) -> np.ndarray:
    """Truth: unit sum times a known function of features (per-unit cost, resolution)."""
    x = latency_features(table, archs)
    return x[:, 0] * np.exp(0.3 - 0.02 * x[:, FEATURE_NAMES.index("n_units")]
                            + 0.004 * x[:, FEATURE_NAMES.index("resolution")])


@pytest.mark.parametrize(("model", "tol"), [("ridge", 0.005), ("xgb", 0.05)])
def test_learned_recovers_known_function(table: LatencyTable, model: str, tol: float) -> None:
    train, test = _archs(table, 150, 21), _archs(table, 40, 22)
    pred = LearnedLatencyPredictor(table, model, n_members=3, alpha=1e-4, seed=1)
    pred.fit(train, _synthetic(table, train))
    rel = np.abs(pred.predict(test) / _synthetic(table, test) - 1)
    assert rel.max() < tol  # ridge: exact family (<0.5 %); trees: piecewise (<5 %)
    assert np.all(pred.predict_std(test) >= 0)


@pytest.mark.parametrize("model", ["ridge", "xgb"])
def test_save_load_round_trip(table: LatencyTable, model: str, tmp_path: Path) -> None:
    archs = _archs(table, 30, 31)
    y = _synthetic(table, archs)
    pred = LearnedLatencyPredictor(table, model, n_members=2, seed=3, num_rounds=30).fit(archs,
                                                                                          y)
    path = pred.save(tmp_path / "p.json")
    loaded = LearnedLatencyPredictor.load(path)
    assert isinstance(loaded, LearnedLatencyPredictor)
    np.testing.assert_array_equal(loaded.predict(archs), pred.predict(archs))
    lut = LutLatencyPredictor(table, overhead_ms=0.01)
    again = LutLatencyPredictor.load(lut.save(tmp_path / "l.json"))
    np.testing.assert_array_equal(again.predict(archs), lut.predict(archs))


def test_bad_files(table: LatencyTable, tmp_path: Path) -> None:
    archs = _archs(table, 10, 41)
    path = LearnedLatencyPredictor(table, n_members=1).fit(archs, _synthetic(table, archs)).save(
        tmp_path / "p.json")
    text = path.read_text()
    truncated = tmp_path / "t.json"
    truncated.write_text(text[: len(text) // 2])
    with pytest.raises(FileFormatError, match="cannot read"):
        LearnedLatencyPredictor.load(truncated)
    data = json.loads(text)
    data["format_version"] = 99
    (tmp_path / "v.json").write_text(json.dumps(data))
    with pytest.raises(FileFormatError, match="format_version"):
        LearnedLatencyPredictor.load(tmp_path / "v.json")
    with pytest.raises(FileFormatError, match="predictor"):
        LutLatencyPredictor.load(path)  # another kind
    del data["state"]["members"]
    data["format_version"] = 1
    (tmp_path / "m.json").write_text(json.dumps(data))
    with pytest.raises(FileFormatError, match="malformed"):
        LearnedLatencyPredictor.load(tmp_path / "m.json")
    with pytest.raises(ValueError):
        LearnedLatencyPredictor(table, "nope")


def test_refit_replaces_members(table: LatencyTable) -> None:
    archs = _archs(table, 30, 51)
    y = _synthetic(table, archs)

    def make() -> LearnedLatencyPredictor:
        return LearnedLatencyPredictor(table, "xgb", n_members=1, num_rounds=20,
                                       xgb_params={"subsample": 1.0})

    pred = make().fit(archs, y)
    pred.predict(archs)  # loads (and caches) the first booster
    pred.fit(archs, 2 * y)
    fresh = make().fit(archs, 2 * y)
    np.testing.assert_array_equal(pred.predict(archs), fresh.predict(archs))
