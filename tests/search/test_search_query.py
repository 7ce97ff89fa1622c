from __future__ import annotations

import itertools
import json
import time

import numpy as np
import pytest
from search_objective import MacsProxy

from ofa_search.errors import InfeasibleBudgetError, OfaSearchError, UnknownDeviceError
from ofa_search.search import Front, QueryEngine, build_front, query
from ofa_search.workspace import Workspace

DEVICE = "cpu-ort-1t"


@pytest.fixture(scope="module")
def ws_with_front(tmp_path_factory) -> Workspace:
    ws = Workspace(tmp_path_factory.mktemp("q") / "ws")
    build_front(ws, DEVICE, accuracy=MacsProxy(), accuracy_name="macs-proxy", n_trials=800,
                budgets=(0.15,), budget_trials=600)
    return ws


def engine(ws: Workspace) -> QueryEngine:
    return QueryEngine(ws, accuracy=MacsProxy(), accuracy_name="macs-proxy")


def test_front_file_is_versioned_sorted_and_non_dominated(ws_with_front) -> None:
    path = ws_with_front.front(DEVICE)
    data = json.loads(path.read_text())
    assert data["format"] == "ofa-search-front" and data["format_version"] == 1
    assert data["space"] == "mbv3_small28" and data["device"] == DEVICE
    assert data["accuracy_predictor"] == "macs-proxy"
    assert data["latency_predictor"] in ("lut", "learned")
    assert set(data["points"][0]) == {"arch", "predicted_accuracy", "accuracy_std",
                                      "predicted_latency_ms", "macs_m", "params_m"}
    front = Front.load(path)
    lat = [p.predicted_latency_ms for p in front.points]
    acc = [p.predicted_accuracy for p in front.points]
    assert len(lat) >= 10 and lat == sorted(lat)
    assert all(b > a for a, b in itertools.pairwise(acc))


def test_query_from_front_is_the_best_feasible_point(ws_with_front) -> None:
    eng = engine(ws_with_front)
    front = eng.front(DEVICE)
    assert front is not None
    for budget in np.linspace(front.min_latency_ms, front.latencies[-1] * 1.1, 25):
        result = eng.query(DEVICE, float(budget))
        feasible = [p for p in front.points if p.predicted_latency_ms <= budget]
        best = max(feasible, key=lambda p: p.predicted_accuracy)
        assert result.source == "front"
        assert result.arch == best.arch
        assert result.predicted_latency_ms <= budget
        assert result.predicted_accuracy == best.predicted_accuracy


def test_query_from_front_is_fast(ws_with_front) -> None:
    eng = engine(ws_with_front)
    eng.query(DEVICE, 0.3)  # loads table, predictors and front once
    start = time.perf_counter()
    for _ in range(20):
        eng.query(DEVICE, 0.3)
    assert (time.perf_counter() - start) / 20 < 0.05


def test_refine_never_loses_and_stays_in_budget(ws_with_front) -> None:
    eng = engine(ws_with_front)
    plain = eng.query(DEVICE, 0.25)
    refined = eng.query(DEVICE, 0.25, refine=True)
    assert refined.source == "front"
    assert refined.predicted_latency_ms <= 0.25
    assert refined.predicted_accuracy >= plain.predicted_accuracy


def test_infeasible_budget_states_the_minimum(ws_with_front) -> None:
    eng = engine(ws_with_front)
    low = eng.min_latency_ms(DEVICE)
    with pytest.raises(InfeasibleBudgetError, match=r"minimum achievable latency") as info:
        eng.query(DEVICE, low * 0.5)
    assert info.value.min_latency_ms == pytest.approx(low)
    assert f"{low:.4g} ms" in str(info.value)
    # the bound is the predictor's minimum: no random subnet is predicted faster
    ctx = eng.context(DEVICE)
    rng = np.random.default_rng(0)
    archs = [ctx.encoding.sample(rng) for _ in range(3000)]
    assert np.asarray(ctx.latency.predict(archs)).min() >= low
    assert eng.query(DEVICE, low).predicted_latency_ms <= low


def test_unknown_device_lists_known_ids(workspace) -> None:
    with pytest.raises(UnknownDeviceError, match="known devices") as info:
        engine(workspace).query("no-such-device", 1.0)
    assert "cpu-ort-1t" in info.value.known and "cpu-ort-1t" in str(info.value)


def test_unsupported_precision_and_bad_budget(workspace) -> None:
    with pytest.raises(OfaSearchError, match=r"precision 'int8' is not supported"):
        engine(workspace).query(DEVICE, 1.0, precision="int8")
    with pytest.raises(OfaSearchError, match="positive"):
        engine(workspace).query(DEVICE, -1.0)


def test_cold_search_without_front(workspace) -> None:
    # the test objective counts MACs in Python (slower than a predictor): fewer trials
    eng = QueryEngine(workspace, accuracy=MacsProxy(), accuracy_name="macs-proxy",
                      cold_trials=2000)
    result = eng.query(DEVICE, 0.2)
    assert result.source == "search"
    assert result.predicted_latency_ms <= 0.2
    assert result.to_dict()["arch"] == result.arch.to_string()
    again = eng.query(DEVICE, 0.2)  # seeded: the same answer
    assert again.arch == result.arch


def test_missing_accuracy_predictor_says_what_to_run(workspace) -> None:
    with pytest.raises(OfaSearchError, match="ofa-search fit-predictors"):
        QueryEngine(workspace).query(DEVICE, 0.2)


def test_stale_front_is_not_used(ws_with_front, tmp_path) -> None:
    # a front computed with another accuracy model is ignored: the query searches instead
    eng = QueryEngine(ws_with_front, accuracy=MacsProxy(), accuracy_name="other-model",
                      cold_trials=300)
    assert eng.front(DEVICE) is None
    assert eng.query(DEVICE, 0.3).source == "search"


def test_query_function_answers_from_the_front(ws_with_front) -> None:
    # no accuracy predictor in the workspace: a front is all there is, and it is used
    result = query(ws_with_front, DEVICE, 0.3)
    assert result.source == "front" and result.predicted_latency_ms <= 0.3
    assert query(ws_with_front.root, DEVICE, 0.3).arch == result.arch
    assert set(result.to_dict()) == {
        "arch", "space", "device", "precision", "predicted_accuracy", "accuracy_std",
        "predicted_latency_ms", "latency_upper_ms", "confidence", "latency_scale", "macs_m",
        "params_m", "source", "latency_predictor", "found_in_s", "warnings"}
    # the workspace never measured the device: the answer says it fits by its point estimate
    assert result.confidence is None and result.latency_upper_ms is None
    assert result.latency_scale == 1.0
    assert any("fit-predictors --device cpu-ort-1t" in w for w in result.warnings)
