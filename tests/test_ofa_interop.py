"""once-for-all's files in and out, proven against once-for-all's own code (PyPI ``ofa``).

once-for-all's networks and predictors are built with random weights (nothing is
downloaded), saved the way once-for-all saves them, imported, and compared subnet by
subnet (dynamic and extracted, float64), MAC by MAC (its own counter) and prediction by
prediction.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from ofa_search.arch import Arch
from ofa_search.cli import main
from ofa_search.errors import FileFormatError, InvalidArchError, OfaSearchError
from ofa_search.interop import import_ofa_supernet, ours_to_ofa
from ofa_search.interop.reference import ofa_module
from ofa_search.nn import extract
from ofa_search.search import QueryEngine, build_front
from ofa_search.train import load_checkpoint, load_supernet
from ofa_search.units import count_macs
from ofa_search.workspace import Workspace
from predictors.accuracy_ofa import OfaAccuracyPredictor, load_ofa_accuracy_predictor
from predictors.loading import load_accuracy_predictor

RESOLUTIONS = (128, 144, 160, 176, 192, 208, 224)


def ofa_supernet(width: float, seed: int = 0) -> Any:
    """once-for-all's OFAMobileNetV3 with random weights and random BN statistics."""
    networks = ofa_module("imagenet_classification.elastic_nn.networks")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = networks.OFAMobileNetV3(n_classes=1000, dropout_rate=0, width_mult=width,
                                      ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6],
                                      depth_list=[2, 3, 4])
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif name.endswith(("running_mean", "bn.bias", "bn.bn.bias")):
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1)
            elif name.endswith(("bn.weight", "bn.bn.weight")):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
    return net.eval()


@pytest.fixture(scope="module")
def ofa_w10(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    net = ofa_supernet(1.0)
    path = tmp_path_factory.mktemp("ofa") / "ofa_mbv3_d234_e346_k357_w1.0"
    torch.save({"state_dict": net.state_dict()}, path)  # as once-for-all's model zoo saves
    return net, path


@pytest.fixture(scope="module")
def imported_w10(ofa_w10: tuple[Any, Path], tmp_path_factory: pytest.TempPathFactory
                 ) -> Path:
    target = tmp_path_factory.mktemp("ws") / "supernet" / "checkpoint.pt"
    report = import_ofa_supernet(ofa_w10[1], target)
    assert report.width_mult == 1.0 and report.tensors == 475
    return target


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_twenty_subnets_match_once_for_all(ofa_w10: tuple[Any, Path], imported_w10: Path
                                           ) -> None:
    ofa_net, _ = ofa_w10
    ofa_net = ofa_net.double()
    ours, meta = load_supernet(imported_w10)
    ours = ours.double()
    assert meta["space"] == "ofa_mbv3" and meta["strategy"]["name"] == "imported"
    rng = np.random.default_rng(7)
    gen = torch.Generator().manual_seed(3)
    # mostly the smallest resolution (float64 on 2 cores); two others exercise the resize
    archs = [Arch.sample("ofa_mbv3", rng, width_mult=1.0).replace(resolution=r)
             for r in [132, 144] + [128] * 18]
    archs[2] = Arch.largest("ofa_mbv3", 1.0).replace(resolution=128)
    archs[3] = Arch.smallest("ofa_mbv3", 1.0)
    ofa_utils = ofa_module("utils.pytorch_utils")
    for i, arch in enumerate(archs):
        d = arch.to_ofa_dict()
        ofa_net.set_active_subnet(ks=d["ks"], e=d["e"], d=d["d"])
        x = torch.randn(1, 3, arch.resolution, arch.resolution, generator=gen,
                        dtype=torch.float64)
        with torch.no_grad():
            reference = ofa_net(x)
            assert _relative(ours(x, arch), reference) <= 1e-6, arch.to_string()
            ofa_static = ofa_net.get_active_subnet(preserve_weight=True).double().eval()
            ours_static = extract(ours, arch).double().eval()
            assert _relative(ours_static(x), ofa_static(x)) <= 1e-6, arch.to_string()
        if i < 5:  # MACs as once-for-all's own counter counts them
            flops = ofa_utils.count_net_flops(ofa_static.float(),
                                              (1, 3, arch.resolution, arch.resolution))
            assert count_macs(arch) == flops


def test_width_is_detected_and_old_spellings_load(tmp_path: Path) -> None:
    net = ofa_supernet(1.2, seed=5)
    state = net.state_dict()
    legacy = {}
    for key, value in state.items():  # once-for-all's older names for the same tensors
        key = key.replace(".conv.", ".mobile_inverted_conv.", 1) if key.startswith(
            "blocks.") else key
        legacy[key.replace(".bn.bn.", ".bn.").replace(".conv.conv.weight", ".conv.weight")] \
            = value
    del legacy["first_conv.bn.num_batches_tracked"]  # optional counters
    source = tmp_path / "legacy.pth"
    torch.save(legacy, source)  # a bare state dict
    target = tmp_path / "ckpt.pt"
    assert import_ofa_supernet(source, target).width_mult == 1.2
    ours, _ = load_supernet(target)
    for key, value in ours.state_dict().items():
        if key != "stem.1.num_batches_tracked":
            assert torch.equal(value, state[ours_to_ofa(key)]), key


def test_export_loads_in_once_for_all(imported_w10: Path, ofa_w10: tuple[Any, Path],
                                      tmp_path: Path) -> None:
    out = tmp_path / "exported.pth"
    assert main(["export", "ofa-supernet", str(out), "--checkpoint", str(imported_w10)]) \
        is None
    state = torch.load(out, map_location="cpu", weights_only=True)["state_dict"]
    fresh = ofa_supernet(1.0, seed=9)
    assert set(state) == set(fresh.state_dict())
    torch.nn.Module.load_state_dict(fresh, state, strict=True)  # today's names, exactly
    for key, value in ofa_w10[0].float().state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


class _Payload:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, ("touch pwned-by-checkpoint",))


def _bad_files(tmp_path: Path, good: Path) -> dict[str, tuple[Path, str]]:
    state = torch.load(good, map_location="cpu", weights_only=True)["state_dict"]
    cases: dict[str, tuple[Path, str]] = {}

    def write(name: str, data: Any, match: str) -> None:
        path = tmp_path / name
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            torch.save(data, path)
        cases[name] = (path, match)

    write("text", b"not a checkpoint\n", "not a readable torch file")
    write("truncated", good.read_bytes()[:100_000], "not a readable torch file")
    write("pickle", {"state_dict": _Payload()}, r"weights_only=True\): it refers to code")
    write("list", [1, 2, 3], "not a once-for-all checkpoint")
    write("unknown", {**state, "blocks.21.conv.point_linear.conv.conv.weight":
                      torch.zeros(1)}, r"1 tensor\(s\) that an OFAMobileNetV3 does not have: "
                      r"blocks\.21")
    write("missing", {k: v for k, v in state.items() if "blocks.7.conv.point" not in k},
          r"tensor\(s\) of an OFAMobileNetV3 are missing: blocks\.7\.conv\.point_linear")
    write("predictor", {"0.weight": torch.zeros(400, 128)}, "does not have: 0.weight")
    return cases


def test_bad_supernet_files_are_refused_and_nothing_is_written(
        ofa_w10: tuple[Any, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "ws" / "supernet" / "checkpoint.pt"
    for name, (path, match) in _bad_files(tmp_path, ofa_w10[1]).items():
        with pytest.raises(FileFormatError, match=match):
            import_ofa_supernet(path, target)
        assert not target.exists(), name
    assert not (tmp_path / "pwned-by-checkpoint").exists()
    with pytest.raises(FileFormatError, match=r"width 1.2.*it is a width-1.0 checkpoint "
                       r"\(pass --width 1.0\): first_conv\.conv\.weight"):
        import_ofa_supernet(ofa_w10[1], target, width_mult=1.2)
    assert not target.exists()


def test_cli_bad_input_is_one_line(ofa_w10: tuple[Any, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    ws = tmp_path / "ws"
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00" * 64)
    for args in (["import", "ofa-supernet", str(bad)],
                 ["import", "ofa-supernet", str(ofa_w10[1]), "--width", "1.2"],
                 ["import", "ofa-predictor", str(ofa_w10[1])],
                 ["import", "ofa-predictor", str(tmp_path / "absent.pth")]):
        with pytest.raises(SystemExit) as info:
            main([*args, "--workspace", str(ws)])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not ws.exists()
    main(["import", "ofa-supernet", str(ofa_w10[1]), "--workspace", str(ws)])
    before = (ws / "supernet" / "checkpoint.pt").read_bytes()
    with pytest.raises(SystemExit):
        main(["import", "ofa-supernet", str(ofa_w10[1]), "--workspace", str(ws)])
    assert "pass --force" in capsys.readouterr().err
    assert (ws / "supernet" / "checkpoint.pt").read_bytes() == before


# -- the accuracy predictor ------------------------------------------------------------
def _archs(width: float, n: int, seed: int = 0) -> list[Arch]:
    rng = np.random.default_rng(seed)
    return [Arch.sample("ofa_mbv3", rng, width_mult=width).replace(
        resolution=int(rng.choice(RESOLUTIONS))) for _ in range(n)]


@pytest.fixture(scope="module")
def tutorial_predictor(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    tutorial = ofa_module("tutorial.accuracy_predictor")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        reference = tutorial.AccuracyPredictor(pretrained=False, device="cpu")
    path = tmp_path_factory.mktemp("pred") / "acc_predictor.pth"
    torch.save(reference.model.state_dict(), path)  # as once-for-all publishes it
    return reference, path


def test_tutorial_predictor_predicts_as_once_for_all(tutorial_predictor: tuple[Any, Path],
                                                     tmp_path: Path) -> None:
    reference, path = tutorial_predictor
    ours = load_ofa_accuracy_predictor(path, width_mult=1.2)
    archs = _archs(1.2, 200)
    # our arch dicts are what once-for-all's predictor reads ("r": [int])
    expected = reference.predict_accuracy([a.to_ofa_dict() for a in archs]).numpy().ravel()
    np.testing.assert_allclose(ours.predict(archs), expected, rtol=0, atol=1e-6)
    ours.save(tmp_path / "accuracy.json")
    again = load_accuracy_predictor(tmp_path / "accuracy.json", space="ofa_mbv3")
    assert isinstance(again, OfaAccuracyPredictor)
    np.testing.assert_array_equal(again.predict(archs), ours.predict(archs))
    module = torch.nn.Sequential(*list(reference.model))
    module.load_state_dict(again.to_ofa_state_dict())  # and back to once-for-all's form
    with pytest.raises(InvalidArchError, match=r"knows resolutions 112, 128.*got 132"):
        ours.predict([archs[0].replace(resolution=132)])
    with pytest.raises(InvalidArchError, match=r"w1.2\) cannot price an arch of ofa_mbv3/w1.0"):
        ours.predict(_archs(1.0, 1))


def test_nas_predictor_predicts_as_once_for_all(tmp_path: Path) -> None:
    nas = ofa_module("nas.accuracy_predictor")
    encoder = nas.MobileNetArchEncoder(image_size_list=list(RESOLUTIONS))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(12)
        reference = nas.AccuracyPredictor(encoder, device="cpu")
    with torch.no_grad():
        reference.base_acc.fill_(0.75)
    path = tmp_path / "nas.pth"
    torch.save({"state_dict": reference.state_dict()}, path)
    with pytest.raises(FileFormatError, match="7 resolution columns; give them"):
        load_ofa_accuracy_predictor(path)
    ours = load_ofa_accuracy_predictor(path, width_mult=1.0, resolutions=RESOLUTIONS)
    archs = _archs(1.0, 200, seed=1)
    expected = reference.predict_acc([a.to_ofa_dict() for a in archs]).detach().numpy()
    np.testing.assert_allclose(ours.predict(archs), expected, rtol=0, atol=1e-6)
    assert set(ours.to_ofa_state_dict()) == set(reference.state_dict())


def test_bad_predictor_files(tmp_path: Path, ofa_w10: tuple[Any, Path]) -> None:
    other = tmp_path / "other_space.pth"  # an MLP over another encoding width
    torch.save({"0.weight": torch.zeros(400, 90), "0.bias": torch.zeros(400),
                "2.weight": torch.zeros(1, 400), "2.bias": torch.zeros(1)}, other)
    cases = {other: r"takes 90 features.*a predictor of another space",
             ofa_w10[1]: "not a once-for-all accuracy predictor",
             tmp_path / "missing.pth": "no such file"}
    pickled = tmp_path / "pickled.pth"
    torch.save({"state_dict": _Payload()}, pickled)
    cases[pickled] = "weights_only=True"
    for path, match in cases.items():
        with pytest.raises(FileFormatError, match=match):
            load_ofa_accuracy_predictor(path)


# -- query, fronts and the service on once-for-all's tables ----------------------------
def test_query_search_front_and_service_on_ofa_tables(
        imported_w10: Path, tutorial_predictor: tuple[Any, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    ws = Workspace(tmp_path / "ws")
    ws.checkpoint.parent.mkdir(parents=True)  # the imported supernet
    ws.checkpoint.write_bytes(imported_w10.read_bytes())
    path = tutorial_predictor[1]
    main(["import", "ofa-predictor", str(path), "-w", str(ws.root), "--width", "1.2"])
    capsys.readouterr()
    # the tutorial's phone: Note10 (width 1.2) answers from the imported predictor
    main(["query", "-w", str(ws.root), "--device", "note10-tflite", "--latency-ms", "25",
          "--json"])
    answer = json.loads(capsys.readouterr().out)
    assert answer["predicted_latency_ms"] <= 25
    arch = Arch.parse(answer["arch"], "ofa_mbv3")
    assert answer["predicted_accuracy"] == pytest.approx(
        float(load_ofa_accuracy_predictor(path, width_mult=1.2).predict([arch])[0]), abs=1e-6)
    # a width-1.0 table needs a width-1.0 predictor: a clear error, then it works
    with pytest.raises(SystemExit) as info:
        main(["query", "-w", str(ws.root), "--device", "cpu-ort-1t-ofa", "--latency-ms", "30"])
    assert info.value.code == 2
    assert "describes width-1.2 subnets" in capsys.readouterr().err
    main(["import", "ofa-predictor", str(path), "-w", str(ws.root), "--width", "1.0",
          "--force"])
    build_front(ws, "cpu-ort-1t-ofa", n_trials=150, seed=0)
    engine = QueryEngine(ws)
    result = engine.query("cpu-ort-1t-ofa", 30.0)
    assert result.source == "front" and result.predicted_latency_ms <= 30.0
    from ofa_search.service.app import create_app

    with TestClient(create_app(ws)) as client:
        response = client.post("/query", json={"device": "cpu-ort-1t-ofa", "latency_ms": 30.0})
    assert response.status_code == 200, response.text
    assert response.json()["arch"] == result.arch.to_string()
    assert load_checkpoint(ws.checkpoint)["imported"]["from"] == "once-for-all"


def test_predictor_scope_errors_name_the_fix(tutorial_predictor: tuple[Any, Path],
                                             tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    load_ofa_accuracy_predictor(tutorial_predictor[1], width_mult=1.2).save(
        ws.accuracy_predictor)
    with pytest.raises(OfaSearchError, match=r"import ofa-predictor FILE --width 1.0"):
        QueryEngine(ws).query("cpu-ort-1t-ofa", 30.0)
