"""Calibrated latency bounds: the conformal quantile, the calibration file, and queries whose
upper bound (and stored speed scale) must fit the budget."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from search_objective import MacsProxy

from ofa_search.errors import FileFormatError, InfeasibleBudgetError, OfaSearchError
from ofa_search.profiling.drift import DriftReport, ModeDrift, clear_scale, save_scale
from ofa_search.profiling.lut import find_table
from ofa_search.search import QueryEngine, build_front
from ofa_search.workspace import Workspace
from predictors.calibration import (
    CalibrationError,
    IntervalModel,
    calibration_path,
    check_confidence,
    conformal_quantile,
    load_interval_model,
    min_scores,
    save_calibration,
)
from predictors.latency import LutLatencyPredictor

DEVICE = "cpu-ort-1t"


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    ws = Workspace(tmp_path_factory.mktemp("cal") / "ws")
    build_front(ws, DEVICE, accuracy=MacsProxy(), accuracy_name="macs-proxy", n_trials=600,
                latency_kind="lut")
    return ws


def engine(ws: Workspace) -> QueryEngine:
    return QueryEngine(ws, accuracy=MacsProxy(), accuracy_name="macs-proxy", latency_kind="lut")


def calibrate_lut(ws: Workspace, scores: list[float], mode: str = "fp32") -> IntervalModel:
    table = find_table(DEVICE, workspace=ws.root)
    model = IntervalModel(DEVICE, "lut", LutLatencyPredictor(table).identity(), "test",
                          {mode: tuple(scores)})
    save_calibration(ws, table, [model])
    return model


def test_conformal_quantile_is_the_order_statistic() -> None:
    scores = np.random.default_rng(0).normal(size=99)
    for level in (0.5, 0.8, 0.9, 0.95):
        rank = math.ceil((scores.size + 1) * level)  # split-conformal rank, 1-based
        assert conformal_quantile(scores, level) == pytest.approx(np.sort(scores)[rank - 1])
    assert min_scores(0.9) == 9 and min_scores(0.95) == 19
    assert conformal_quantile(np.arange(8.0), 0.9) == math.inf
    assert conformal_quantile(np.arange(9.0), 0.9) == 8.0


@pytest.mark.parametrize("bad", [0, 1, 1.0, -0.1, 1.5, float("nan"), float("inf"), True])
def test_confidence_outside_the_open_interval_is_refused(bad) -> None:
    with pytest.raises(CalibrationError, match="strictly between 0 and 1"):
        check_confidence(bad)


def test_interval_model_names_what_is_missing() -> None:
    model = IntervalModel("dev", "learned", "x", "test", {"fp32": (0.1,) * 5})
    with pytest.raises(CalibrationError, match=r"needs at least 9.*fit-predictors --device dev"):
        model.factor("fp32", 0.9)
    assert model.factor("fp32", 0.5) == pytest.approx(math.exp(0.1))
    with pytest.raises(CalibrationError, match="no calibration data for int8 subnets"):
        model.factor("int8", 0.5)


def test_calibration_file_round_trip_and_staleness(ws: Workspace) -> None:
    table = find_table(DEVICE, workspace=ws.root)
    identity = LutLatencyPredictor(table).identity()
    saved = calibrate_lut(ws, [0.01 * i for i in range(20)])
    assert load_interval_model(ws, table, "lut", identity) == saved
    assert load_interval_model(ws, table, "lut", "sha256:other") is None  # refitted predictor
    assert load_interval_model(ws, table, "learned", identity) is None
    path = calibration_path(ws, DEVICE)
    good = path.read_text()
    try:
        path.write_text("{not json")
        with pytest.raises(FileFormatError, match="cannot read latency calibration"):
            load_interval_model(ws, table, "lut", identity)
        data = json.loads(good)
        data["predictors"]["lut"]["scores"]["fp32"][0] = "NaN"
        path.write_text(json.dumps(data).replace('"NaN"', "NaN"))
        with pytest.raises(FileFormatError, match="finite"):
            load_interval_model(ws, table, "lut", identity)
    finally:
        path.write_text(good)


def test_query_by_bound_fits_the_budget_and_keeps_the_point(ws: Workspace) -> None:
    calibrate_lut(ws, [math.log(1.25)] * 30)  # every measured subnet 25 % over the table
    eng = engine(ws)
    front = eng.front(DEVICE)
    assert front is not None
    for budget in np.linspace(front.min_latency_ms * 1.3, front.latencies[-1], 12):
        result = eng.query(DEVICE, float(budget))
        assert result.confidence == 0.9 and result.warnings == ()
        assert result.latency_upper_ms == pytest.approx(1.25 * result.predicted_latency_ms)
        assert result.latency_upper_ms <= budget * (1 + 1e-12)
        index = front.best_under(float(budget) / 1.25)  # the front is sorted by bound too
        assert index is not None and result.arch == front.points[index].arch
        point = eng.query(DEVICE, float(budget), confidence=0.5)  # same factor at any level
        assert point.arch == result.arch and point.confidence == 0.5
    # the JSON keeps the point estimate and adds the bound
    data = result.to_dict()
    assert data["latency_upper_ms"] == result.latency_upper_ms and data["confidence"] == 0.9


def test_infeasible_budget_reports_the_bound(ws: Workspace) -> None:
    calibrate_lut(ws, [math.log(2.0)] * 30)
    eng = engine(ws)
    low = eng.min_latency_ms(DEVICE)
    assert eng.query(DEVICE, low * 2.01).latency_upper_ms <= low * 2.01
    with pytest.raises(InfeasibleBudgetError, match=r"bounded at confidence 0.9") as info:
        eng.query(DEVICE, low * 1.5)
    assert info.value.min_latency_ms == pytest.approx(2 * low)


def test_explicit_confidence_needs_calibration(ws: Workspace, tmp_path) -> None:
    bare = Workspace(tmp_path / "bare")
    build_front(bare, DEVICE, accuracy=MacsProxy(), accuracy_name="macs-proxy", n_trials=200,
                latency_kind="lut")
    eng = engine(bare)
    budget = eng.front(DEVICE).latencies[-1]
    answer = eng.query(DEVICE, budget)  # default: the point estimate, and it says so
    assert answer.confidence is None and answer.latency_upper_ms is None
    assert "fit-predictors --device cpu-ort-1t" in answer.warnings[0]
    with pytest.raises(CalibrationError, match=r"no calibration data.*fit-predictors"):
        eng.query(DEVICE, budget, confidence=0.9)
    with pytest.raises(CalibrationError, match="strictly between"):
        eng.query(DEVICE, budget, confidence=1.0)
    imported = QueryEngine(bare, accuracy=MacsProxy("ofa_mbv3"), accuracy_name="proxy")
    with pytest.raises(CalibrationError, match="imported table: it cannot be measured"):
        imported.query("note10-tflite", 30.0, confidence=0.9)


def test_too_few_scores_for_the_confidence(ws: Workspace) -> None:
    calibrate_lut(ws, [0.1] * 10)
    eng = engine(ws)
    budget = eng.front(DEVICE).latencies[-1]
    with pytest.raises(CalibrationError, match=r"cannot bound latency at confidence 0.95"):
        eng.query(DEVICE, budget, confidence=0.95)
    assert eng.query(DEVICE, budget, confidence=0.9).confidence == 0.9


def test_stored_scale_is_applied_and_recorded(ws: Workspace) -> None:
    calibrate_lut(ws, [0.0] * 30)
    eng = engine(ws)
    front = eng.front(DEVICE)
    budget = float(np.median(front.latencies))
    before = eng.query(DEVICE, budget)
    table = find_table(DEVICE, workspace=ws.root)
    report = DriftReport(DEVICE, 1.5, 1.4, 1.6, (1.5,), (1.0,), (1.0,), 5, 0.1, "now", "test")
    save_scale(ws, table, report)
    try:
        after = eng.query(DEVICE, budget)  # the engine rereads the changed scale file
        assert after.latency_scale == 1.5
        assert after.predicted_latency_ms <= budget * (1 + 1e-12)
        index = front.best_under(budget / 1.5)
        assert after.arch == front.points[index].arch
        assert after.predicted_latency_ms == pytest.approx(
            1.5 * front.points[index].predicted_latency_ms)
        assert any("scaled by 1.500" in w for w in after.warnings)
        assert before.predicted_accuracy >= after.predicted_accuracy
    finally:
        assert clear_scale(ws, DEVICE)
    assert eng.query(DEVICE, budget).latency_scale == 1.0


def test_a_search_applies_the_largest_scale_of_its_answer_modes(ws: Workspace) -> None:
    """An int8 ratio stored beside the fp32 one leaves fp32 searches alone; a context asked
    for fp32 and int8 answers takes the larger."""
    calibrate_lut(ws, [0.0] * 30)
    eng = engine(ws)
    budget = float(np.median(eng.front(DEVICE).latencies))
    table = find_table(DEVICE, workspace=ws.root)
    int8 = ModeDrift(1.8, 1.8, 1.8, ("a",), (1.8,), (1.0,))
    save_scale(ws, table, DriftReport(DEVICE, 1.5, 1.4, 1.6, (1.5,), (1.0,), (1.0,), 5, 0.1,
                                      "now", "test", modes={"int8": int8}))
    try:
        assert eng.query(DEVICE, budget).latency_scale == 1.5
        ctx = eng.context(DEVICE, "fp32")
        assert ctx.scale() == 1.5 and ctx.scale(("fp32", "int8")) == 1.8
        assert ctx.scale(("mixed",)) == 1.5  # not checked: the fp32 ratio
    finally:
        assert clear_scale(ws, DEVICE)


def test_cli_confidence_errors_and_bound(ws: Workspace, tmp_path) -> None:
    from test_cli import cli

    for args, message in ((("--confidence", "1.5"), "strictly between 0 and 1"),
                          (("--confidence", "0.9"), "no calibration data")):
        out = cli("query", "-w", str(tmp_path), "-d", DEVICE, "--latency-ms", "1", *args)
        assert out.returncode == 2 and message in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
    calibrate_lut(ws, [math.log(1.1)] * 20)
    arch = engine(ws).front(DEVICE).points[3].arch.to_string()
    out = cli("latency", "-w", str(ws.root), "-d", DEVICE, arch, "--predictor", "lut",
              "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["confidence"] == 0.9
    assert result["upper_ms"] == pytest.approx(1.1 * result["predicted_ms"])


def test_bound_is_scored_on_the_session_median_speed(ws: Workspace) -> None:
    """The point predictor is fitted on each batch's speed; the bound is scored against the
    median speed, so it covers the host's wander between batches."""
    from ofa_search.atomic import atomic_write_json
    from ofa_search.profiling.builder import sample_archs
    from predictors import latency_fit

    table = find_table(DEVICE, workspace=ws.root)
    if table.profile() is None:
        pytest.skip("the shipped table cannot be measured here")
    lut = LutLatencyPredictor(table)
    archs = sample_archs(table.space, 40, latency_fit.SAMPLE_SEED, table.width_mult,
                         table.resolutions)
    speeds = [0.9 if i % 2 else 1.1 for i in range(len(archs))]  # median 1.0
    truth = lut.predict(archs)
    names = [a.to_string() for a in archs]
    atomic_write_json(latency_fit.measurements_path(ws, DEVICE), {
        "format": latency_fit.MEASUREMENTS_FORMAT,
        "format_version": latency_fit.MEASUREMENTS_VERSION, "device": DEVICE,
        "fingerprint": table.fingerprint, "space": table.space,
        "measured_ms": {n: float(t * s) for n, t, s in zip(names, truth, speeds, strict=True)},
        "ratio": dict(zip(names, speeds, strict=True))})
    data = latency_fit.collect_measurements(ws, table, len(archs), show_progress=False)
    assert data.n_new == 0
    np.testing.assert_allclose(data.ms, truth)
    np.testing.assert_allclose(data.session_ms, truth * np.array(speeds))
    steady = latency_fit.calibrate(table, "lut", lut, data.archs, data.ms)
    wander = latency_fit.calibrate(table, "lut", lut, data.archs, data.ms, data.session_ms)
    assert steady.factor("fp32", 0.9) == pytest.approx(1.0)
    assert wander.factor("fp32", 0.9) == pytest.approx(1.1)


def test_answer_scores_bound_answers_and_fall_back_when_few() -> None:
    model = IntervalModel("dev", "lut", "id", "test", {"fp32": (0.0,) * 30},
                          {"fp32": (math.log(1.2),) * 30})
    assert model.factor("fp32", 0.9) == pytest.approx(1.0)  # a given arch: random scores
    assert model.factor("fp32", 0.9, answers=True) == pytest.approx(1.2)
    few = IntervalModel("dev", "lut", "id", "test", {"fp32": (0.0,) * 30},
                        {"fp32": (math.log(1.2),) * 10})
    assert few.factor("fp32", 0.9, answers=True) == pytest.approx(1.2)  # 10 >= 9
    assert few.factor("fp32", 0.95, answers=True) == pytest.approx(1.0)  # 10 < 19


def test_calibrate_answers_measures_the_front_and_queries_use_it(ws: Workspace) -> None:
    from ofa_search.search.calibrate import calibrate_answers, spread

    assert spread(5, 3) == [0, 2, 4] and spread(3, 10) == [0, 1, 2] and spread(0, 4) == []
    table = find_table(DEVICE, workspace=ws.root)
    if table.profile() is None:
        pytest.skip("the shipped table cannot be measured here")
    options = {"accuracy": MacsProxy(), "accuracy_name": "macs-proxy", "latency_kind": "lut"}
    with pytest.raises(OfaSearchError, match="positive integer"):
        calibrate_answers(ws, DEVICE, n=0, **options)
    model = calibrate_lut(ws, [0.0] * 30)
    other = IntervalModel(DEVICE, "learned", "kept", "test", {"fp32": (0.5,) * 10})
    save_calibration(ws, table, [model, other])
    result = calibrate_answers(ws, DEVICE, n=12, chunk=6, **options)
    assert result.n_measured == 12 and result.precision == "fp32"
    assert result.factors["fp32"]["random"] == pytest.approx(1.0)
    assert result.factors["fp32"]["answers"] is not None
    stored = load_interval_model(ws, table, "lut", model.identity)
    assert stored is not None and len(stored.answer_scores["fp32"]) == 12
    assert stored.scores == model.scores and "front" in str(stored.answer_method)
    kept = load_interval_model(ws, table, "learned", "kept")  # the other entry survives
    assert kept is not None and kept.scores == other.scores
    eng = engine(ws)
    budget = float(np.median(eng.front(DEVICE).latencies))
    answer = eng.query(DEVICE, budget)
    assert answer.latency_upper_ms == pytest.approx(
        answer.predicted_latency_ms * max(1.0, stored.factor("fp32", 0.9, answers=True)))
    with pytest.raises(OfaSearchError, match=r"no saved front.*ofa-search search"):
        calibrate_answers(ws, DEVICE, n=4, accuracy=MacsProxy(), accuracy_name="other",
                          latency_kind="lut")


def test_answers_measured_faster_than_predicted_keep_the_point_estimate_as_bound(
        ws: Workspace) -> None:
    table = find_table(DEVICE, workspace=ws.root)
    model = calibrate_lut(ws, [0.0] * 30)
    fast = IntervalModel(DEVICE, "lut", model.identity, "test", model.scores,
                         {"fp32": (math.log(0.8),) * 30})
    save_calibration(ws, table, [fast])
    eng = engine(ws)
    budget = float(np.median(eng.front(DEVICE).latencies))
    answer = eng.query(DEVICE, budget)
    assert answer.confidence == 0.9
    # the calibrated factor is 0.8; the bound is not put under the point estimate
    assert answer.latency_upper_ms == pytest.approx(answer.predicted_latency_ms)
    assert answer.predicted_latency_ms <= budget


def test_cli_calibrate_errors(tmp_path) -> None:
    from test_cli import cli

    for args, message in ((("--n", "0"), "--n"),
                          ((), "fit-predictors --device cpu-ort-1t")):
        out = cli("calibrate", "-w", str(tmp_path), "-d", DEVICE, *args)
        assert out.returncode == 2 and message in out.stderr, out.stderr
