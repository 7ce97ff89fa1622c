"""Early exits: the expected-latency formula on hand-computed cases, the cascade's bookkeeping,
exact segments, verified multi-output ONNX, resumable head training, bad options first."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from compress_helpers import FAST, SPACE, untrained_checkpoint
from supernet_helpers import calibrated_supernet

from ofa_search.arch import Arch
from ofa_search.compress import (
    CompressError,
    EarlyExitNet,
    ExitHead,
    ExitOutputs,
    ExitStageError,
    ThresholdError,
    cascade_stats,
    check_thresholds,
    choose_thresholds,
    exit_costs,
    exit_index,
    exits,
    expected_latency,
)
from ofa_search.compress._context import load_subnet
from ofa_search.compress.exit_onnx import TOLERANCE
from ofa_search.compress.exits import new_exit_net, train_exit_heads
from ofa_search.compress.finetune import STATE_NAME, FinetuneConfig, load_state
from ofa_search.compress.latency import prefix_prices, resolve_target
from ofa_search.model_card import read_card
from ofa_search.nn import extract
from ofa_search.units import arch_units

ARCH = Arch.sample(SPACE, np.random.default_rng(5)).replace(resolution=16)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return untrained_checkpoint(tmp_path_factory.mktemp("ck"))


# -- errors, before any work ------------------------------------------------------------------
@pytest.mark.parametrize(("stages", "message"), [
    ([3], r"cannot put an exit after stage 3: the subnet's own head is there"),
    ([7], r"the subnet has no stage 7: it has stages 0\.\.3"),
    ([-1], r"the subnet has no stage -1"),
    ([1, 1], r"must not repeat"),
    ([], r"at least one stage"),
    ([1.5], r"must be integers"),
])
def test_bad_exit_stage_is_one_line_before_any_work(tmp_path: Path, stages: list[int],
                                                    message: str) -> None:
    with pytest.raises(ExitStageError, match=message) as info:
        exits(tmp_path / "missing.pt", ARCH, tmp_path / "out", after_stages=stages)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("thresholds", [0.0, 1.5, -0.2, math.nan, [0.9, 0.9],
                                        [0.9, 0.9, 0.9, 0.9], [0.9, 0.0, 0.5], True, "0.9"])
def test_bad_threshold_is_one_line_before_any_work(tmp_path: Path, thresholds: object) -> None:
    with pytest.raises(ThresholdError, match=r"threshold") as info:
        exits(tmp_path / "missing.pt", ARCH, tmp_path / "out", after_stages=(0, 1, 2),
              thresholds=thresholds)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("options", "message"), [
    ({"thresholds": 0.9, "max_accuracy_drop": 1.0}, "at most one of thresholds"),
    ({"max_accuracy_drop": -1.0}, r"max_accuracy_drop must be in \[0, 100\) points"),
    ({"target_latency_ms": 0.0}, "target_latency_ms must be a number > 0"),
    ({"basis": "guess"}, "basis must be 'table' or 'measured'"),
    ({"basis": "table"}, "basis 'table' needs a device with a latency table"),
    ({"head_width": -1}, "head_width must be an integer >= 0"),
    ({"temperature": 0.0}, "temperature must be > 0"),
    ({"resume": True}, "cannot resume"),
])
def test_bad_exit_options_fail_before_any_work(tmp_path: Path, options: dict[str, object],
                                               message: str) -> None:
    with pytest.raises(CompressError, match=message):
        exits(tmp_path / "missing.pt", ARCH, tmp_path / "out", **options)  # type: ignore[arg-type]


def test_thresholds_in_range_are_accepted() -> None:
    assert check_thresholds(1.0, 2) == (1.0, 1.0)
    assert check_thresholds([0.5, 1], 2) == (0.5, 1.0)
    assert check_thresholds([0.7], 3) == (0.7, 0.7, 0.7)  # one for all


def test_a_string_arch_is_checked_before_data_or_extraction(checkpoint: Path,
                                                            tmp_path: Path) -> None:
    with pytest.raises(ExitStageError, match="no stage 4"):
        exits(checkpoint, ARCH.to_string(), tmp_path / "out", after_stages=(4,))


# -- the formula and the cascade --------------------------------------------------------------
def test_expected_latency_hand_computed() -> None:
    # backbone prefixes 1.0 and 2.0 ms, full network 5.0 ms; heads 0.1 and 0.2 ms:
    # leaving at exit 0 costs 1.0 + 0.1, at exit 1 2.0 + 0.1 + 0.2, at the end 5.0 + 0.3
    costs = exit_costs([1.0, 2.0, 5.0], [0.1, 0.2])
    assert costs == pytest.approx([1.1, 2.3, 5.3])
    # half leave at exit 0, a quarter at exit 1, a quarter at the end
    assert expected_latency([0.5, 0.25, 0.25], costs) == pytest.approx(
        0.5 * 1.1 + 0.25 * 2.3 + 0.25 * 5.3)  # = 2.45
    assert expected_latency([0.5, 0.25, 0.25], costs) == pytest.approx(2.45)
    with pytest.raises(ValueError, match="one prefix per exit"):
        exit_costs([1.0, 5.0], [0.1, 0.2])


def test_cascade_bookkeeping_hand_computed() -> None:
    # 4 samples, 2 exits. Confidences and correctness per exit (rows) and the final head.
    outputs = ExitOutputs(
        confidence=np.array([[0.95, 0.50, 0.40, 0.91],
                             [0.99, 0.85, 0.60, 0.99]]),
        correct=np.array([[1, 0, 0, 0],
                          [1, 1, 0, 1],
                          [1, 1, 1, 1]], dtype=bool))
    # thresholds 0.9 / 0.8: samples 0, 3 leave at exit 0 (sample 3 wrongly), 1 at exit 1,
    # 2 at the end
    assert exit_index(outputs.confidence, (0.9, 0.8)).tolist() == [0, 1, 2, 0]
    stats = cascade_stats(outputs, (0.9, 0.8), [1.1, 2.3, 5.3])
    assert stats.shares == pytest.approx((0.5, 0.25, 0.25))
    assert stats.accuracy == pytest.approx(0.75)
    assert stats.expected_ms == pytest.approx(2.45)
    # threshold 1.0 everywhere: nothing leaves early, the final head's accuracy and cost
    assert cascade_stats(outputs, (1.0, 1.0), [1.1, 2.3, 5.3]).expected_ms == pytest.approx(5.3)
    fastest, met = choose_thresholds(outputs, [1.1, 2.3, 5.3], max_drop=0.0)
    assert met and fastest.accuracy == 1.0  # exit 0 only for sample 0 (τ > 0.91)
    assert fastest.expected_ms == pytest.approx((1.1 + 2.3 + 2.3 + 5.3) / 4)
    best, met = choose_thresholds(outputs, [1.1, 2.3, 5.3], max_ms=2.46)
    assert met and best.expected_ms <= 2.46 and best.accuracy == 0.75
    _, met = choose_thresholds(outputs, [1.1, 2.3, 5.3], max_ms=0.5)
    assert not met


def test_prefix_prices_split_the_table_price() -> None:
    table = resolve_target("cpu-ort-1t").table
    assert table is not None
    units = arch_units(ARCH)
    priced = prefix_prices(table, units, ARCH.resolution, [2, 5, len(units) - 1])
    assert priced is not None
    assert priced.full_ms == pytest.approx(table.predict(ARCH))
    assert 0 < priced.prefix_ms[0] < priced.prefix_ms[1] < priced.full_ms
    assert priced.prefix_ms[-1] == pytest.approx(priced.full_ms)
    alone = [table.unit_price(u, ARCH.resolution) for u in units]
    assert priced.prefix_ms[0] == pytest.approx(priced.full_ms * sum(alone[:3]) / sum(alone))


def test_exit_net_keeps_the_subnet_and_segments_chain_exactly() -> None:
    backbone = extract(calibrated_supernet(SPACE, seed=2), ARCH).eval()
    heads = [ExitHead(c, 8, 10) for c in (16, 24, 32)]
    net = EarlyExitNet(backbone, (0, 1, 2), heads).eval()
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        final, *exit_logits = net(x)
        torch.testing.assert_close(final, backbone(x), rtol=0, atol=0)
        feats = x
        chained = []
        for segment in net.segments()[:-1]:
            feats, logits = segment(feats)
            chained.append(logits)
        torch.testing.assert_close(net.segments()[-1](feats), final)
    for a, b in zip(chained, exit_logits, strict=True):
        torch.testing.assert_close(a, b)
    assert net.output_names == ["output", "exit_after_stage0", "exit_after_stage1",
                                "exit_after_stage2"]


# -- the command ------------------------------------------------------------------------------
def test_exits_end_to_end_resumed_and_verified(checkpoint: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    options = {"after_stages": (1, 2), "steps": 4, "checkpoint_every": 1,
               "device": "cpu-ort-1t", **FAST}
    part = exits(checkpoint, ARCH, tmp_path, stop_after_steps=2,
                 **options)  # type: ignore[arg-type]
    assert (part.finished, part.steps, part.artefact) == (False, 2, None)
    result = exits(checkpoint, ARCH, tmp_path, resume=True, **options)  # type: ignore[arg-type]
    assert result.finished and result.steps == 4

    # the resumed heads are those of an uninterrupted run
    ctx = load_subnet(checkpoint, ARCH, calib_batches=2)
    net = new_exit_net(ctx, (1, 2), 64, 0)
    state = load_state(tmp_path / STATE_NAME, "exits")
    train_exit_heads(ctx, net, tmp_path / "whole", steps=4,
                     config=FinetuneConfig(batch_size=16, lr=0.05, kd_ratio=0.0,
                                           label_smoothing=0.0),
                     temperature=1.0, label_weight=0.0, options=state["options"],
                     resume_from=None, checkpoint_every=4, stop_after_steps=None, quiet=True)
    whole = load_state(tmp_path / "whole" / STATE_NAME, "exits")["heads"]
    for key, value in whole.items():
        assert torch.equal(value, state["heads"][key]), key

    # verified artefacts: the multi-output model and the segments, run by ONNX Runtime
    assert result.verification is not None and max(result.verification.values()) <= 1e-4
    assert result.artefact is not None and len(result.segments) == 3
    session = ort.InferenceSession(str(result.artefact), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["output", "exit_after_stage1",
                                                       "exit_after_stage2"]
    trained = result.trained
    assert trained is not None
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        expected = [t.numpy() for t in trained.net.eval()(x)]
    for got, want in zip(session.run(None, {"input": x.numpy()}), expected, strict=True):
        # float32 summation order differs between ONNX Runtime and torch (and between hosts'
        # kernels): errors scale with the logits' magnitude (~100 on random inputs), not with
        # each logit's own; CI saw 1.4e-5 of the largest on an AVX-512 host
        np.testing.assert_allclose(got, want, rtol=0,
                                   atol=TOLERANCE * np.abs(want).max() + 1e-5)

    # the report is the formula applied to the test shares
    report, lat = result.report, result.latency
    assert report is not None and lat is not None and lat.costs_table is not None
    assert report["expected_table_ms"] == pytest.approx(
        expected_latency(report["shares"], lat.costs_table))
    assert report["expected_measured_ms"] == pytest.approx(
        expected_latency(report["shares"], lat.costs_measured))
    assert sum(report["shares"]) == pytest.approx(1.0)
    assert report["accuracy_loss_points"] == pytest.approx(
        100 * (report["accuracy_without_exits"] - report["accuracy"]))
    assert lat.costs_table[-1] == pytest.approx(lat.full_table_ms + sum(lat.head_in_network_ms))
    card = read_card(result.card_json)  # type: ignore[arg-type]
    assert card["compression"]["method"] == "early-exits"
    assert card["compression"]["segments"] == ["segment_0.onnx", "segment_1.onnx",
                                               "segment_2.onnx"]

    # other thresholds for the same heads, without retraining
    never = trained.report((1.0, 1.0))
    assert never["accuracy"] == pytest.approx(never["accuracy_without_exits"])
