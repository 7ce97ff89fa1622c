"""Export formats onnx_int8 and onnx_int8_ptq: registered, written from calibration batches
and verified end to end through ofa_search.export.export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from supernet_helpers import save_untrained_checkpoint

import ofa_search.quant.formats as int8_formats
from ofa_search.arch import parse_arch
from ofa_search.errors import InvalidArchError
from ofa_search.export import VerificationError, export, get_format, list_formats
from ofa_search.nn import StaticSubnet
from ofa_search.quant.graph import ort_kernel_counts

MP = "mbv3_small28_mp"
ARCH = "r16_w1.0_k3e4-k5e3_k3e3-k3e4@int8_k5e3-k3e3_k3e4-k3e3@int8"


@pytest.fixture(scope="module")
def mp_checkpoint(tmp_path_factory: pytest.TempPathFactory, torch_one_thread: None) -> Path:
    """An untrained mbv3_small28_mp supernet (BN statistics from one batch) as a checkpoint."""
    return save_untrained_checkpoint(MP, tmp_path_factory.mktemp("ckpt") / "supernet.pt")


def test_formats_are_registered() -> None:
    assert {"onnx_int8", "onnx_int8_ptq"} <= set(list_formats())
    for name in ("onnx_int8", "onnx_int8_ptq"):
        fmt = get_format(name)
        assert fmt.suffix == ".onnx" and fmt.calibrated_write is not None
        assert fmt.tolerance == int8_formats.INT8_RELATIVE_TOLERANCE


def test_plain_write_asks_for_calibration(int8_net: StaticSubnet, tmp_path: Path) -> None:
    with pytest.raises(int8_formats.CalibrationRequiredError, match="quantises from training"):
        get_format("onnx_int8").write(int8_net, tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("fmt", ["onnx_int8", "onnx_int8_ptq"])
def test_export_writes_a_verified_int8_artefact(mp_checkpoint: Path, tmp_path: Path,
                                                fmt: str) -> None:
    result = export(mp_checkpoint, ARCH, fmt, tmp_path / "out", calib_batches=2,
                    measure=False)
    assert result.artefact == tmp_path / "out" / "model.onnx"
    ver = result.card["verification"]
    assert ver["passed"] and 0 < ver["max_abs_diff"] <= ver["tolerance"] == 0.15
    assert result.card["artefact"]["format"] == fmt
    model = onnx.load(str(result.artefact))
    assert ort_kernel_counts(model).int8_convs == 3 * 4  # two int8 stages of depth 2
    assert [i.name for i in model.graph.input] == ["input"]


def test_export_refuses_an_arch_without_int8_stage(mp_checkpoint: Path, tmp_path: Path) -> None:
    fp32 = parse_arch(ARCH.replace("@int8", ""), MP)
    with pytest.raises(InvalidArchError, match="has no int8 stage"):
        export(mp_checkpoint, fp32, "onnx_int8", tmp_path / "out", calib_batches=1)
    assert not any((tmp_path / "out").iterdir())


def test_verify_rejects_wrong_numbers_and_fp32_kernels(int8_net: StaticSubnet,
                                                       train_batches: list[np.ndarray],
                                                       test_images: object,
                                                       tmp_path: Path) -> None:
    import torch
    from onnx import numpy_helper

    from ofa_search.onnx_export import export_onnx, save_onnx
    from ofa_search.quant.fold import fold_network

    assert isinstance(test_images, torch.Tensor)
    fmt = get_format("onnx_int8")
    assert fmt.calibrated_write is not None
    good = tmp_path / "good.onnx"
    fmt.calibrated_write(int8_net, good, train_batches)
    assert fmt.verify(good, int8_net, test_images[:16]) <= fmt.tolerance
    model = onnx.load(str(good))  # a converter bug: one conv's int8 weights negated
    producer = {o: n for n in model.graph.node for o in n.output}
    conv = next(n for n in model.graph.node if n.op_type == "Conv" and n.input[1] in producer)
    ints = next(t for t in model.graph.initializer if t.name == producer[conv.input[1]].input[0])
    ints.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(ints), ints.name))
    save_onnx(model, tmp_path / "bad.onnx")
    assert fmt.verify(tmp_path / "bad.onnx", int8_net, test_images[:16]) > fmt.tolerance
    fp32 = export_onnx(fold_network(int8_net, int8_grid=False).module, int8_net.input_shape(1))
    save_onnx(fp32, tmp_path / "fp32.onnx")
    with pytest.raises(VerificationError, match=r"runs 0 of the subnet's 24 int8 convs"):
        fmt.verify(tmp_path / "fp32.onnx", int8_net, test_images[:16])
