"""Export: every format written, verified by its own runtime, with a complete model card."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ofa_search.arch import Arch
from ofa_search.errors import FileFormatError, InvalidArchError, UnknownDeviceError
from ofa_search.export import (
    UnknownFormatError,
    VerificationError,
    export,
    get_format,
    list_formats,
    load_state_dict_artefact,
    register_format,
)
from ofa_search.model_card import CARD_JSON, CARD_MARKDOWN, read_card
from ofa_search.workspace import Workspace

SPACE = "mbv3_small28"
DEVICE = "cpu-ort-1t"
ARCH = Arch.sample(SPACE, np.random.default_rng(7)).replace(resolution=20)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ofa_search.train import TrainConfig, train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(TrainConfig(space=SPACE, dataset="digits", batch_size=32,
                                 resolutions=(16,), epochs=1, steps_per_epoch=2,
                                 strategy="spos", quiet=True, seed=3,
                                 out_dir=str(tmp_path_factory.mktemp("run"))))
    finally:
        torch.set_num_threads(threads)


def _reload_outputs(fmt: str, path: Path, x: torch.Tensor) -> np.ndarray:
    """The artefact's outputs on ``x``, computed by its own runtime (not through export)."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.concatenate([session.run(None, {"input": x[i:i + 1].numpy()})[0]
                               for i in range(len(x))])
    with torch.no_grad():
        if fmt == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                loaded = torch.jit.load(str(path))
            return loaded(x).numpy()  # type: ignore[no-any-return]
        return load_state_dict_artefact(path)(x).numpy()  # type: ignore[no-any-return]


def test_formats_registry() -> None:
    assert {"onnx", "torchscript", "state_dict"} <= set(list_formats())
    with pytest.raises(UnknownFormatError, match=r"unknown export format 'tflite'; known "
                                                 r"formats: .*onnx.*state_dict.*torchscript"):
        get_format("tflite")
    with pytest.raises(ValueError, match="already registered"):
        register_format(get_format("onnx"))


@pytest.mark.parametrize(("fmt", "suffix"), [("onnx", ".onnx"), ("torchscript", ".pt"),
                                             ("state_dict", ".safetensors")])
def test_export_writes_a_verified_artefact_and_card(checkpoint: Path, tmp_path: Path, fmt: str,
                                                    suffix: str) -> None:
    from ofa_search.data import iterate_batches, load_dataset
    from ofa_search.train import calibrated_subnet, evaluate, load_supernet
    from ofa_search.units import count_macs, count_params

    out = tmp_path / "out"
    lines: list[str] = []
    result = export(checkpoint, ARCH.to_string(), fmt, out, device=DEVICE,
                    measure=fmt == "onnx", echo=lines.append)
    assert result.artefact == out / f"model{suffix}" and result.artefact.is_file()
    assert sorted(p.name for p in out.iterdir()) == sorted([f"model{suffix}", CARD_JSON,
                                                            CARD_MARKDOWN])
    assert any("verifying" in line for line in lines)
    card = read_card(out)
    assert card == json.loads((out / CARD_JSON).read_text()) and card == {
        "format": "ofa-search-model-card", "format_version": 1, **result.card}
    assert card["arch"]["string"] == ARCH.to_string() and card["arch"]["space"] == SPACE
    assert Arch.from_dict(card["arch"]["dict"]) == ARCH
    assert card["macs_m"] == pytest.approx(count_macs(ARCH) / 1e6)
    assert card["params_m"] == pytest.approx(count_params(ARCH) / 1e6)
    art = card["artefact"]
    assert art["format"] == fmt and art["bytes"] == result.artefact.stat().st_size
    assert art["sha256"] == hashlib.sha256(result.artefact.read_bytes()).hexdigest()
    assert card["supernet"]["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert card["supernet"]["checkpoint"] == checkpoint.name  # outside the workspace
    ver = card["verification"]
    assert ver["passed"] and 0 <= ver["max_abs_diff"] <= ver["tolerance"] <= 1e-4
    assert ver["samples"] == 16
    assert set(card["versions"]) >= {"torch", "onnx", "onnxruntime", "ofa-search"}
    assert card["input"]["shape"] == [1, 1, 20, 20]

    # the card's accuracy is the recalibrated subnet's test accuracy, recomputed here
    supernet, _ = load_supernet(checkpoint)
    data = load_dataset("digits", in_channels=1, resolution=20)
    net = calibrated_subnet(supernet, ARCH, data)
    assert card["dataset"] == {"name": "digits", "split": "test", "samples": len(data.test),
                               "accuracy": evaluate(net, data.test, 20),
                               "calib_batches": 16, "calib_seed": 0}
    x, _ = next(iterate_batches(data.test, 32, shuffle=False, resolution=20))
    with torch.no_grad():
        expected = net.eval()(x).numpy()
    got = _reload_outputs(fmt, result.artefact, x)
    assert got.shape == (32, 10)
    np.testing.assert_allclose(got, expected, atol=ver["tolerance"], rtol=0)

    device = card["device"]
    assert device["id"] == DEVICE and device["latency_predictor"] == "learned"
    assert 0.01 < device["predicted_latency_ms"] < 5
    if fmt == "onnx":
        assert 0.01 < device["measured_latency_ms"] < 50 and device["measured_runs"] >= 7
        assert device["not_measured_reason"] is None
        # measured with a drift check of the device (its reference subnets re-timed)
        drift = device["drift"]
        assert drift["low"] <= drift["ratio"] <= drift["high"] and drift["ratio"] > 0
        assert "the table's speed (drift check" in (out / CARD_MARKDOWN).read_text()
    else:
        assert device["measured_latency_ms"] is None
        assert device["not_measured_reason"] == "not requested"
    markdown = (out / CARD_MARKDOWN).read_text()
    assert ARCH.to_string() in markdown and art["sha256"] in markdown


def test_imported_device_is_predicted_not_measured(checkpoint: Path, tmp_path: Path) -> None:
    from ofa_search.profiling.lut import find_table

    ws = Workspace(tmp_path / "ws")
    table = dataclasses.replace(find_table(DEVICE), device_id="imported-dev",
                                fingerprint=None, device={"backend": "tflite"})
    table.save(ws.hw_profiles_dir / "imported-dev.json")
    result = export(checkpoint, ARCH, "state_dict", tmp_path / "out", device="imported-dev",
                    workspace=ws)
    device = result.card["device"]
    assert device["latency_predictor"] == "lut"
    assert device["predicted_latency_ms"] == pytest.approx(table.predict(ARCH))
    assert device["measured_latency_ms"] is None
    assert "imported table" in device["not_measured_reason"]


def test_bad_inputs(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(UnknownFormatError, match="unknown export format 'int4'"):
        export(checkpoint, ARCH, "int4", out)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(FileFormatError, match=r"corrupt\.pt is not a readable"):
        export(corrupt, ARCH, "onnx", out)
    with pytest.raises(InvalidArchError, match="bad block token 'x3e3'"):
        export(checkpoint, "r20_w1.0_x3e3-k3e3_k3e3-k3e3_k3e3-k3e3_k3e3-k3e3", "onnx", out)
    with pytest.raises(InvalidArchError, match="=9 is not allowed"):
        export(checkpoint, "r20_w1.0_k9e3-k3e3_k3e3-k3e3_k3e3-k3e3_k3e3-k3e3", "onnx", out)
    other = Arch.smallest("ofa_mbv3")
    with pytest.raises(InvalidArchError, match="space 'ofa_mbv3'; the checkpoint's is"):
        export(checkpoint, other, "onnx", out)
    with pytest.raises(UnknownDeviceError, match="no latency table for device 'nope'") as err:
        export(checkpoint, ARCH, "onnx", out, device="nope")
    assert DEVICE in err.value.known
    assert not out.exists() or not any(out.iterdir())


@pytest.fixture
def perturbed_format() -> Iterator[str]:
    """A format whose writer stores slightly wrong weights (a buggy converter); verified
    with the real state_dict check."""
    from ofa_search.formats import ArtefactFormat, unregister_format

    real = get_format("state_dict")

    def write(net: torch.nn.Module, path: Path) -> None:
        import copy

        bad = copy.deepcopy(net)
        with torch.no_grad():
            bad.units[-1].classifier.bias.add_(0.01)  # type: ignore[index, union-attr, operator]
        real.write(bad, path)  # type: ignore[arg-type]

    register_format(ArtefactFormat("perturbed_test", ".safetensors", real.runtime,
                                   real.tolerance, "a buggy writer", write, real.verify))
    yield "perturbed_test"
    unregister_format("perturbed_test")


def test_verification_failure_leaves_no_artefact(checkpoint: Path, tmp_path: Path,
                                                 perturbed_format: str) -> None:
    out = tmp_path / "out"
    with pytest.raises(VerificationError, match=r"differs from the PyTorch subnet by 0\.01"):
        export(checkpoint, ARCH, perturbed_format, out)
    assert list(out.iterdir()) == []


def test_card_holds_no_absolute_path(checkpoint: Path, tmp_path: Path) -> None:
    """The card is served by ``GET /exports/<id>``: the checkpoint is named relative to the
    workspace, never by this host's absolute path (issue 20)."""
    import shutil

    ws = Workspace(tmp_path / "ws")
    ws.supernet_dir.mkdir(parents=True)
    shutil.copyfile(checkpoint, ws.checkpoint)
    result = export(ws.checkpoint.resolve(), ARCH, "state_dict", ws.exports_dir / "e1",
                    workspace=ws.root.resolve(), measure=False)
    assert result.card["supernet"]["checkpoint"] == "supernet/checkpoint.pt"
    text = (ws.exports_dir / "e1" / CARD_JSON).read_text()
    assert str(tmp_path) not in text and str(tmp_path.resolve()) not in text
    assert str(tmp_path.resolve()) not in (ws.exports_dir / "e1" / CARD_MARKDOWN).read_text()


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_unwritable_output_is_refused_before_any_work(checkpoint: Path, tmp_path: Path,
                                                      where: str) -> None:
    from ofa_search.atomic import OutputPathError

    blocker = tmp_path / "afile"
    blocker.write_text("keep me")
    out = blocker if where == "file" else blocker / "sub" / "out"
    lines: list[str] = []
    with pytest.raises(OutputPathError, match=r"export folder .*(is a file|lies under)"):
        export(checkpoint, ARCH, "onnx", out, echo=lines.append)
    assert lines == []  # refused before loading the checkpoint (nothing extracted)
    assert blocker.read_text() == "keep me"
