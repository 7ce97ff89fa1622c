"""``ofa-search run`` on binary packages and ONNX files (on a fresh typer app, so the test
does not depend on ofa_search.cli registering the command)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from binary_helpers import binary_arch, eval_net
from typer.testing import CliRunner

from ofa_search.binary import write_binary_package
from ofa_search.cli import run as cli_run
from ofa_search.errors import FileFormatError, OfaSearchError
from ofa_search.onnx_export import export_onnx, save_onnx


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    application = typer.Typer()

    @application.callback()
    def main() -> None:
        """Test app."""

    application.add_typer(cli_run.app)
    return application


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("run")
    net = eval_net(binary_arch(("binary", "fp32", "binary", "fp32")).replace(resolution=28), 4)
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        np.save(folder / "logits.npy", net(x).numpy())
    np.save(folder / "x.npy", x.numpy())
    np.save(folder / "one.npy", x[0].numpy())
    fp32 = eval_net(binary_arch(("fp32",) * 4).replace(resolution=28), 5)
    return {"package": write_binary_package(net, folder / "m.ofab"),
            "onnx": save_onnx(export_onnx(fp32, fp32.input_shape(1)), folder / "m.onnx"),
            "x": folder / "x.npy", "one": folder / "one.npy", "logits": folder / "logits.npy",
            "folder": folder}


def test_predictions_from_npy_text_and_json(app: typer.Typer, files: dict[str, Path]) -> None:
    runner = CliRunner()
    text = runner.invoke(app, ["run", str(files["package"]), "--input", str(files["x"])])
    assert text.exit_code == 0, text.output
    expected = np.load(files["logits"])
    lines = text.output.strip().splitlines()
    assert [line.split()[2] for line in lines] == [str(k) for k in expected.argmax(1)]
    data = json.loads(runner.invoke(app, ["run", str(files["package"]), "--input",
                                          str(files["x"]), "--json", "--backend", "numpy"]
                                    ).output)
    assert data["kind"] == "binary-package" and data["backend"] == "numpy"
    assert data["arch"].startswith("r28_")
    assert np.abs(np.asarray(data["logits"]) - expected).max() < 1e-3
    one = runner.invoke(app, ["run", str(files["package"]), "-i", str(files["one"])])
    assert one.exit_code == 0 and one.output.startswith("0: class ")


@pytest.mark.parametrize("kind", ["package", "onnx"])
def test_accuracy_on_digits(app: typer.Typer, files: dict[str, Path], kind: str) -> None:
    result = CliRunner().invoke(app, ["run", str(files[kind]), "--data", "digits", "--n", "40",
                                      "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["samples"] == 40 and len(data["predictions"]) == 40
    assert data["accuracy"] == pytest.approx(
        np.mean(np.asarray(data["predictions"]) == np.asarray(data["labels"])))
    text = CliRunner().invoke(app, ["run", str(files[kind]), "--data", "digits", "--n", "10"])
    assert "accuracy" in text.output and "(" in text.output and "digits test" in text.output


@pytest.mark.parametrize(("args", "error", "message"), [
    (["--input", "X", "--data", "digits"], OfaSearchError, "give --input X.npy or --data"),
    ([], OfaSearchError, "give --input X.npy or --data"),
    (["--data", "digits", "--backend", "cuda"], OfaSearchError, "backend must be one of"),
])
def test_argument_errors(app: typer.Typer, files: dict[str, Path], args: list[str],
                         error: type[Exception], message: str) -> None:
    result = CliRunner().invoke(app, ["run", str(files["package"]), *args])
    assert isinstance(result.exception, error) and message in str(result.exception)


def test_bad_files_are_clear_errors(app: typer.Typer, files: dict[str, Path]) -> None:
    runner = CliRunner()
    foreign = files["folder"] / "notes.ofab"
    foreign.write_text("hello")
    result = runner.invoke(app, ["run", str(foreign), "--data", "digits"])
    assert isinstance(result.exception, FileFormatError)
    assert "not a zip archive" in str(result.exception)
    wrong = files["folder"] / "wrong.npy"
    np.save(wrong, np.zeros((2, 3, 28, 28), np.float32))
    result = runner.invoke(app, ["run", str(files["package"]), "--input", str(wrong)])
    assert isinstance(result.exception, OfaSearchError)
    assert "inputs must be [N, 1, 28, 28]" in str(result.exception)
    missing = runner.invoke(app, ["run", str(files["folder"] / "none.ofab"), "-i", str(wrong)])
    assert "no such file" in str(missing.exception)
