"""Exports of low-precision archs: the default format by precision, the binary package
end to end (export → ofa-search run), and formats that cannot hold an arch's stages."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from supernet_helpers import save_untrained_checkpoint
from table_helpers import write_synthetic_table
from typer.testing import CliRunner

from ofa_search.arch import Arch, parse_arch
from ofa_search.binary import BinaryPackage
from ofa_search.binary.formats import MIXED_RELATIVE_TOLERANCE
from ofa_search.cli import app
from ofa_search.data import iterate_batches, load_dataset
from ofa_search.errors import UnsupportedPrecisionError
from ofa_search.export import default_format, export
from ofa_search.train import load_supernet
from ofa_search.train.bn_calibration import calibrated_subnet
from ofa_search.workspace import Workspace

MP = "mbv3_small28_mp"
BINARY = "r16_w1.0_k3e4-k5e3@binary_k3e3-k3e4_k5e3-k3e3@binary_k3e4-k3e3"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_untrained_checkpoint(MP, tmp_path_factory.mktemp("ckpt") / "supernet.pt")


def test_default_format_follows_the_precisions() -> None:
    base = Arch.smallest(MP)
    assert default_format(base) == "onnx"
    assert default_format(base.replace(precisions=("int8", "fp32", "fp32", "fp32"))) == \
        "onnx_int8"
    assert default_format(base.replace(precisions=("fp32", "binary", "fp32", "fp32"))) == \
        "binary"


def test_binary_arch_exports_a_verified_package_that_run_executes(checkpoint: Path,
                                                                  tmp_path: Path) -> None:
    result = export(checkpoint, BINARY, "auto", tmp_path / "out", calib_batches=2,
                    measure=False)
    assert result.artefact == tmp_path / "out" / "model.ofab"
    card = result.card
    assert card["artefact"]["format"] == "binary"
    assert card["verification"]["passed"]
    assert card["verification"]["max_abs_diff"] <= 1e-3
    # verified piece by piece; the end-to-end comparison is reported beside it
    e2e = card["verification"]["end_to_end"]
    assert e2e["max_abs_diff"] >= 0 and 0.9 <= e2e["top1_agreement"] <= 1.0
    rendered = (tmp_path / "out" / "model_card.md").read_text()
    assert "End to end on the same inputs" in rendered and "top-1 agreement" in rendered
    shown = CliRunner().invoke(app, ["export", "-w", str(tmp_path / "ws"), "-c", str(checkpoint),
                                     "--arch", BINARY, "--out", str(tmp_path / "cli"),
                                     "--no-measure"])
    assert shown.exit_code == 0, shown.output
    assert re.search(r"end to end: max \|Δ\| \S+, top-1 agreement \d+\.\d % \(reported, "
                     r"not checked\)", shown.output), shown.output
    out = CliRunner().invoke(app, ["run", str(result.artefact), "--data", "digits", "--n",
                                   "40", "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["samples"] == 40 and 0.0 <= report["accuracy"] <= 1.0
    # the package predicts what the exported PyTorch subnet predicts on those images
    supernet, _ = load_supernet(checkpoint)
    arch = parse_arch(BINARY, MP)
    data = load_dataset("digits", in_channels=1, resolution=arch.resolution)
    net = calibrated_subnet(supernet, arch, data, calib_batches=2, seed=0)
    x, y = next(iterate_batches(data.test, 40, shuffle=False))
    with torch.no_grad():
        expected = net.eval()(x).argmax(1).numpy()
    assert report["labels"] == y.tolist()
    assert (np.asarray(report["predictions"]) == expected).mean() >= 0.95


def test_int8_and_binary_stages_export_to_one_verified_package(checkpoint: Path,
                                                               tmp_path: Path) -> None:
    # int8 in the last stage: the random weights of this checkpoint, whose logits nearly
    # tie, would make an int8 rounding that reaches a binary sign decide the comparison
    mixed = f"{BINARY}@int8"
    assert set(parse_arch(mixed, MP).precisions) == {"fp32", "int8", "binary"}
    assert default_format(parse_arch(mixed, MP)) == "binary"
    result = export(checkpoint, mixed, "auto", tmp_path / "out", calib_batches=2,
                    measure=False)
    verification = result.card["verification"]
    assert result.card["artefact"]["format"] == "binary" and verification["passed"]
    assert verification["tolerance"] == MIXED_RELATIVE_TOLERANCE
    assert verification["max_abs_diff"] <= MIXED_RELATIVE_TOLERANCE
    program = BinaryPackage.load(result.artefact, backend="numpy").program
    assert any(b"QuantizeLinear" in segment for segment in program.segments)
    assert program.layers


@pytest.mark.parametrize(("fmt", "arch", "message"), [
    ("onnx", BINARY, r"format 'onnx' cannot hold binary stages.*formats for this arch: .*"
                     r"binary"),
    ("onnx_int8", BINARY, r"format 'onnx_int8' cannot hold binary stages.*formats for "
                          r"this arch: binary"),
])
def test_formats_refuse_stages_they_cannot_hold(checkpoint: Path, tmp_path: Path, fmt: str,
                                                arch: str, message: str) -> None:
    with pytest.raises(UnsupportedPrecisionError, match=message):
        export(checkpoint, parse_arch(arch, MP), fmt, tmp_path / "out", calib_batches=1,
               measure=False)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize(("arch", "fmt"), [(BINARY, "binary"),
                                           (BINARY.replace("@binary", "@int8"), "onnx_int8")])
def test_card_holds_predicted_and_measured_latency_of_the_artefact(
        checkpoint: Path, tmp_path: Path, arch: str, fmt: str) -> None:
    ws = Workspace(tmp_path / "ws")
    write_synthetic_table(ws, "mp-test", MP, ("fp32", "int8", "binary"))
    result = export(checkpoint, arch, "auto", tmp_path / "out", workspace=ws,
                    device="mp-test", calib_batches=1)
    card = result.card
    assert card["artefact"]["format"] == fmt
    device = card["device"]
    assert device["predicted_latency_ms"] > 0 and device["not_measured_reason"] is None
    assert 0 < device["measured_latency_ms"] < 100


RANDOM_PTQ_TOLERANCE = 0.35
"""Verification bound for post-training int8 of the untrained checkpoint here: random
weights amplify every rounding (relative logit error 0.13–0.23 over archs 0–5 on an Intel
Xeon with AVX512-VNNI, where CI once failed at 0.166 > 0.15); trained subnets give
0.013–0.03 (ofa_search/quant/formats.py). The test below is about the loss accounting."""


def test_int8_export_reports_and_limits_its_loss_to_the_fp32_twin(
        checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Post-training int8: the card holds the fp32 twin's test accuracy and the loss in
    points; an export losing more than ``max_int8_loss`` writes no artefact."""
    from ofa_search import formats
    from ofa_search.errors import AccuracyLossError
    from ofa_search.train import evaluate

    ptq = formats.get_format("onnx_int8_ptq")
    monkeypatch.setitem(formats._FORMATS, ptq.name,
                        dataclasses.replace(ptq, tolerance=RANDOM_PTQ_TOLERANCE))
    supernet, _ = load_supernet(checkpoint)
    data = load_dataset("digits", in_channels=1, resolution=16)
    for seed in range(6):  # the first arch whose int8 stages cost accuracy (untrained net)
        arch = Arch.sample(MP, seed, resolution=16).replace(precisions=("int8",) * 4)
        result = export(checkpoint, arch, "onnx_int8_ptq", tmp_path / f"out{seed}",
                        calib_batches=2, measure=False)
        scored = result.card["dataset"]
        twin = calibrated_subnet(supernet, arch.replace(precisions=("fp32",) * 4), data,
                                 calib_batches=2, seed=0)
        assert scored["fp32_twin_accuracy"] == pytest.approx(evaluate(twin, data.test, 16))
        loss = scored["int8_accuracy_loss_points"]
        assert loss == pytest.approx(100 * (scored["fp32_twin_accuracy"] - scored["accuracy"]))
        if loss > 0:
            break
    else:
        pytest.fail("no sampled int8 arch lost accuracy: the refusal is not exercised")
    refused = tmp_path / "refused"
    with pytest.raises(AccuracyLossError, match=rf"lose {loss:.2f} points .* more than the "
                                                rf"{loss / 2:g} allowed; no artefact"):
        export(checkpoint, arch, "onnx_int8_ptq", refused, calib_batches=2, measure=False,
               max_int8_loss=loss / 2)
    assert not refused.exists() or not any(refused.iterdir())
    # within the limit it is written; fp32 archs carry no loss
    export(checkpoint, arch, "onnx_int8_ptq", tmp_path / "allowed", calib_batches=2,
           measure=False, max_int8_loss=loss)
    fp32 = export(checkpoint, arch.replace(precisions=("fp32",) * 4), "onnx",
                  tmp_path / "fp32", calib_batches=2, measure=False)
    assert "int8_accuracy_loss_points" not in fp32.card["dataset"]
