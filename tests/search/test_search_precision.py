"""Precision as a search dimension: the fp32 / int8 / binary / mixed modes and ``any``, on a
mixed-precision device table whose unit latencies are a known function of MACs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from search_objective import MacsProxy
from table_helpers import SPEED, write_synthetic_table

from ofa_search.arch import Arch
from ofa_search.errors import InfeasibleBudgetError, UnsupportedPrecisionError
from ofa_search.profiling.builder import table_units
from ofa_search.search import QueryEngine
from ofa_search.space import get_space
from ofa_search.workspace import Workspace

MP = "mbv3_small28_mp"
DEVICE = "mp-test"
COST = {"fp32": 0.0, "int8": 0.004, "binary": 0.03}  # accuracy lost per stage


class PrecisionProxy(MacsProxy):
    """MacsProxy minus a fixed cost per low-precision stage."""

    def __init__(self) -> None:
        super().__init__(MP)

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        base = super().predict(archs)
        return base - np.array([sum(COST[p] for p in a.precisions) for a in archs])


def write_table(ws: Workspace, precisions: tuple[str, ...]) -> None:
    write_synthetic_table(ws, DEVICE, MP, precisions)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> QueryEngine:
    ws = Workspace(tmp_path_factory.mktemp("prec") / "ws")
    write_table(ws, ("fp32", "int8", "binary"))
    return QueryEngine(ws, accuracy=PrecisionProxy(), accuracy_name="precision-proxy",
                       cold_trials=600)


def test_table_units_cover_each_precision_once() -> None:
    units = table_units(get_space(MP), 1.0, (16,), ("fp32", "int8", "binary"))
    keys = [u.key for u in units]
    assert len(keys) == len(set(keys))
    by = {p: sum(u.precision == p for u in units) for p in SPEED}
    assert by["int8"] == by["binary"] == by["fp32"] - 3  # stem, first block, head: fp32 only


def test_each_mode_searches_its_own_per_stage_precisions(engine: QueryEngine) -> None:
    assert engine.modes(DEVICE) == ["fp32", "int8", "binary", "mixed"]
    budget = 1.3 * engine.min_latency_ms(DEVICE, "fp32")
    answers = {mode: engine.query(DEVICE, budget, mode) for mode in engine.modes(DEVICE)}
    assert set(answers["fp32"].arch.precisions) == {"fp32"}
    assert set(answers["int8"].arch.precisions) <= {"fp32", "int8"}
    assert "int8" in answers["int8"].arch.precisions  # the cheap precision buys accuracy
    assert set(answers["binary"].arch.precisions) <= {"fp32", "binary"}
    for answer in answers.values():
        assert answer.predicted_latency_ms <= budget
    assert answers["int8"].predicted_accuracy > answers["fp32"].predicted_accuracy
    best = engine.query(DEVICE, budget, "any")
    assert best.predicted_accuracy == max(a.predicted_accuracy for a in answers.values())
    assert best.arch == max(answers.values(), key=lambda a: a.predicted_accuracy).arch


def test_any_is_infeasible_only_below_every_mode(engine: QueryEngine) -> None:
    lows = {mode: engine.min_latency_ms(DEVICE, mode) for mode in engine.modes(DEVICE)}
    assert lows["binary"] < lows["fp32"] and lows["int8"] < lows["fp32"]
    with pytest.raises(InfeasibleBudgetError) as info:
        engine.query(DEVICE, min(lows.values()) * 0.9, "any")
    assert info.value.min_latency_ms == pytest.approx(min(lows.values()))
    between = (max(lows["int8"], lows["binary"]) + lows["fp32"]) / 2
    answer = engine.query(DEVICE, between, "any")  # no fp32-only arch fits
    assert answer.precision in ("int8", "binary", "mixed")
    assert set(answer.arch.precisions) - {"fp32"}


def test_mixed_mode_puts_int8_and_binary_stages_in_one_network(engine: QueryEngine) -> None:
    """Under a tight budget the best network holds both low precisions (binary where it
    saves the most time, int8 where accuracy matters): only ``mixed`` can answer it."""
    budget = 1.05 * engine.min_latency_ms(DEVICE, "fp32")
    answers = {mode: engine.query(DEVICE, budget, mode) for mode in engine.modes(DEVICE)}
    mixed = answers["mixed"]
    assert {"int8", "binary"} <= set(mixed.arch.precisions)
    assert mixed.predicted_latency_ms <= budget
    assert mixed.predicted_accuracy > max(answers[m].predicted_accuracy
                                          for m in ("fp32", "int8", "binary"))
    assert engine.min_latency_ms(DEVICE, "mixed") == pytest.approx(
        min(engine.min_latency_ms(DEVICE, m) for m in ("int8", "binary")))
    # priced on its own, a mixed network runs as a binary package
    assert engine.price(DEVICE, mixed.arch).precision == "binary"


def test_unknown_or_unprofiled_precisions_are_refused(tmp_path) -> None:
    ws = Workspace(tmp_path / "ws")
    write_table(ws, ("fp32",))
    eng = QueryEngine(ws, accuracy=PrecisionProxy(), accuracy_name="precision-proxy")
    with pytest.raises(UnsupportedPrecisionError, match="has no int8 units in its latency"):
        eng.query(DEVICE, 1.0, "int8")
    with pytest.raises(UnsupportedPrecisionError, match="unknown precision 'int4'"):
        eng.query(DEVICE, 1.0, "int4")
    assert eng.modes(DEVICE) == ["fp32"]


def test_price_states_a_given_arch_as_an_answer_of_its_mode(engine: QueryEngine,
                                                             tmp_path) -> None:
    """``price``: a given arch's predictions in its own precision mode (the table sum with
    the mode's units, the accuracy model), the same numbers a query answering it gives."""
    from ofa_search.errors import OfaSearchError

    budget = 1.3 * engine.min_latency_ms(DEVICE, "fp32")
    answer = engine.query(DEVICE, budget, "int8")
    priced = engine.price(DEVICE, answer.arch)
    assert priced.source == "given" and priced.precision == "int8"
    assert priced.arch == answer.arch
    assert priced.predicted_latency_ms == pytest.approx(answer.predicted_latency_ms)
    assert priced.predicted_accuracy == pytest.approx(answer.predicted_accuracy)
    twin = answer.arch.replace(precisions=("int8",) * 4)
    int8 = engine.price(DEVICE, twin)
    fp32 = engine.price(DEVICE, twin.replace(precisions=("fp32",) * 4))
    assert fp32.precision == "fp32"
    assert int8.predicted_accuracy == pytest.approx(fp32.predicted_accuracy - 4 * COST["int8"])
    ctx = engine.context(DEVICE, "int8")
    assert ctx.table is not None
    assert int8.predicted_latency_ms == pytest.approx(ctx.table.predict(twin))
    with pytest.raises(OfaSearchError, match="arch of space 'mbv3_small28' cannot be priced"):
        engine.price(DEVICE, Arch.smallest("mbv3_small28"))
    ws = Workspace(tmp_path / "ws")  # a table without int8 units cannot price int8 stages
    write_table(ws, ("fp32",))
    eng = QueryEngine(ws, accuracy=PrecisionProxy(), accuracy_name="precision-proxy")
    with pytest.raises(UnsupportedPrecisionError, match="has no int8 units"):
        eng.price(DEVICE, twin)


def test_any_prefers_answers_held_by_a_calibrated_bound(tmp_path) -> None:
    """fp32 calibrated, int8 not: ``any`` answers fp32 with its bound and says why int8 was
    left out, though int8 is predicted more accurate at that budget (uncalibrated, int8
    wins as before)."""
    from ofa_search.profiling.lut import find_table
    from predictors.calibration import IntervalModel, save_calibration
    from predictors.latency import LutLatencyPredictor

    ws = Workspace(tmp_path / "ws")
    write_table(ws, ("fp32", "int8"))

    def eng() -> QueryEngine:
        return QueryEngine(ws, accuracy=PrecisionProxy(), accuracy_name="precision-proxy",
                           latency_kind="lut", cold_trials=600)

    budget = 1.3 * eng().min_latency_ms(DEVICE, "fp32")
    before = eng().query(DEVICE, budget, "any")
    assert before.precision == "int8" and before.confidence is None
    table = find_table(DEVICE, workspace=ws.root)
    save_calibration(ws, table, [IntervalModel(DEVICE, "lut", LutLatencyPredictor(table)
                                               .identity(), "test", {"fp32": (0.01,) * 20})])
    after = eng().query(DEVICE, budget, "any")
    fp32 = eng().query(DEVICE, budget, "fp32")
    assert after.precision == "fp32" and after.confidence == 0.9
    assert after.arch == fp32.arch and after.latency_upper_ms is not None
    assert after.latency_upper_ms <= budget
    assert any("int8 answers have no calibrated latency bound" in w for w in after.warnings)
