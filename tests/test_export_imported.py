"""Subnets of an imported ImageNet supernet (``ofa_mbv3``): BN recalibration and accuracy over
a streamed ImageNet-layout folder, export with a model card, and the CLI around them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_data_stream import write_imagenet

from ofa_search.arch import Arch
from ofa_search.data import IMAGENET_MEAN, IMAGENET_STD, open_image_stream, stream_loader
from ofa_search.export import export
from ofa_search.model_card import read_card
from ofa_search.nn import Supernet, extract
from ofa_search.train import (
    calibrated_subnet_stream,
    evaluate_arch_stream,
    evaluate_stream,
    recalibrate_bn,
    save_checkpoint,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARCH = Arch.smallest("ofa_mbv3", 1.0).replace(resolution=128)


@pytest.fixture(scope="module")
def supernet() -> Supernet:
    return Supernet("ofa_mbv3", 1.0, generator=torch.Generator().manual_seed(0)).eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, supernet: Supernet) -> Path:
    """An imported supernet as the importer writes it (config without a data folder)."""
    return save_checkpoint(tmp_path_factory.mktemp("imported") / "checkpoint.pt", {
        "space": "ofa_mbv3", "width_mult": 1.0, "model": supernet.state_dict(),
        "strategy": {"name": "imported"}, "epoch": 0, "step": 0, "optimizer": {},
        "scheduler": {"step": 0}, "rng": {}, "finished": True,
        "config": {"dataset": "imagenet", "data_dir": None},
        "imported": {"from": "once-for-all"}})


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_imagenet(tmp_path_factory.mktemp("imagenet"))


def _bn_buffers(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in net.state_dict().items()
            if name.endswith(("running_mean", "running_var"))}


def test_stream_recalibration_is_recalibrate_bn_on_the_same_batches(
        supernet: Supernet, tree: Path) -> None:
    data = open_image_stream(tree, ARCH.resolution)
    before = _bn_buffers(extract(supernet, ARCH))
    net = calibrated_subnet_stream(supernet, ARCH, data, calib_images=8, batch_size=4, seed=5,
                                   num_workers=0)
    loader = stream_loader(data.train, batch_size=4, max_images=8, seed=5, num_workers=0)
    reference = recalibrate_bn(extract(supernet, ARCH), [x for x, _ in loader])
    after, expected = _bn_buffers(net), _bn_buffers(reference)
    assert after.keys() == before.keys() and len(after) > 10
    for name, value in after.items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6)
    changed = [name for name in after if not torch.allclose(after[name], before[name])]
    assert len(changed) == len(after)
    assert not net.training
    accuracy = evaluate_stream(net, data, resolution=ARCH.resolution, max_images=5,
                               batch_size=4, num_workers=0)
    assert accuracy in {k / 5 for k in range(6)}


def test_evaluate_arch_stream_reports_its_sample_counts(supernet: Supernet, tree: Path) -> None:
    data = open_image_stream(tree, ARCH.resolution)
    scored = evaluate_arch_stream(supernet, ARCH, data, calib_images=100, max_eval_images=4,
                                  batch_size=6, num_workers=2)
    assert (scored.calib_images, scored.eval_images) == (12, 4)
    assert 0.0 <= scored.accuracy <= 1.0


def test_export_of_an_imported_subnet_streams_imagenet(checkpoint: Path, tree: Path,
                                                       tmp_path: Path) -> None:
    lines: list[str] = []
    result = export(checkpoint, ARCH, "onnx", tmp_path / "out", workspace=tmp_path / "ws",
                    data_dir=tree, calib_images=8, max_eval_images=5, verify_samples=3,
                    num_workers=0, echo=lines.append)
    card = read_card(result.out_dir)
    assert result.artefact == tmp_path / "out" / "model.onnx" and result.artefact.is_file()
    assert card["verification"]["passed"] and card["verification"]["samples"] == 3
    assert card["verification"]["max_abs_diff"] <= card["verification"]["tolerance"]
    data = card["dataset"]
    assert (data["name"], data["split"], data["samples"], data["available_samples"]) == (
        "imagenet", "val", 5, 6)
    assert (data["calib_images"], data["calib_batches"], data["layout"]) == (8, 1, "imagenet")
    assert 0.0 <= data["accuracy"] <= 1.0
    # no absolute path of this host in a card (it is served over HTTP): folders outside
    # the workspace by their name only
    assert data["data_dir"] == tree.name and card["supernet"]["checkpoint"] == checkpoint.name
    assert card["input"]["mean"] == list(IMAGENET_MEAN)
    assert card["input"]["std"] == list(IMAGENET_STD)
    assert card["input"]["shape"] == [1, 3, 128, 128]
    assert (card["input"]["resize_shorter_side"], card["input"]["centre_crop"]) == (147, 128)
    assert card["supernet"]["strategy"] == "imported"
    assert any("on 8 train images" in line for line in lines)
    assert any("on 5 of the 6 images" in line for line in lines)
    assert "on imagenet `val` (5 samples" in result.card_markdown.read_text()


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The console entry point in this process: exit code, stdout, stderr."""
    from ofa_search.cli import main

    code = 0
    try:
        main(list(args))
    except SystemExit as exited:
        code = int(exited.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("command", ["export", "eval"])
def test_cli_needs_a_data_dir_for_imagenet(checkpoint: Path, tmp_path: Path, command: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--checkpoint", str(checkpoint), "--arch", ARCH.to_string()]
    if command == "export":
        args += ["--workspace", str(tmp_path), "--format", "onnx", "--out", str(tmp_path / "o")]
    code, _, err = _main(capsys, command, *args)
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: dataset 'imagenet' is streamed from an ImageNet-layout "
                           "folder") and "--data-dir DIR" in last
    assert not (tmp_path / "o").exists()


def test_cli_eval_streams_imagenet(checkpoint: Path, tree: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _main(capsys, "eval", "--checkpoint", str(checkpoint), "--arch",
                           ARCH.to_string(), "--data-dir", str(tree), "--calib-images", "4",
                           "--max-eval-images", "3", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert (result["dataset"], result["split"], result["samples"]) == ("imagenet", "val", 3)
    assert 0.0 <= result["accuracy"] <= 1.0


def test_service_exports_an_imported_subnet_with_its_data_dir(
        checkpoint: Path, tree: Path, tmp_path: Path) -> None:
    import time

    from fastapi.testclient import TestClient

    from ofa_search.service.app import create_app
    from ofa_search.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    ws.checkpoint.parent.mkdir(parents=True)
    ws.checkpoint.write_bytes(checkpoint.read_bytes())
    with TestClient(create_app(ws, data_dir=tree)) as client:
        accepted = client.post("/exports", json={"arch": ARCH.to_string(), "format": "onnx"})
        assert accepted.status_code == 202, accepted.text
        deadline = time.monotonic() + 120
        while (state := client.get(f"/exports/{accepted.json()['id']}").json())["status"] \
                not in ("done", "failed"):
            assert time.monotonic() < deadline, state
            time.sleep(0.2)
    assert state["status"] == "done", state
    card = state["card"]
    assert card["dataset"]["name"] == "imagenet" and card["input"]["mean"] == list(IMAGENET_MEAN)
