"""The int8 head of ``head_int8`` spaces: the space's rule, exact extraction, the units a
table prices, verified QDQ and binary-package exports, and a table derived from one of
the fp32-head space (real ONNX Runtime timings)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from script_helpers import load_script
from supernet_helpers import (
    calibrated_supernet,
    extracted_after_observing,
    save_untrained_checkpoint,
)
from table_helpers import write_synthetic_table

from ofa_search.arch import Arch
from ofa_search.binary import BinaryPackage
from ofa_search.errors import FileFormatError, OfaSearchError
from ofa_search.export import export
from ofa_search.nn import Supernet, extract
from ofa_search.nn.quant import QConv2d
from ofa_search.profiling.builder import enumerate_units
from ofa_search.profiling.derive import derive_table, missing_units
from ofa_search.space import OFA_MBV3_MP, get_space
from ofa_search.train.checkpoint import load_init_weights
from ofa_search.units import HeadUnit, arch_units, uses_int8
from ofa_search.workspace import Workspace

MP, MPH = "mbv3_small28_mp", "mbv3_small28_mp_int8head"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _head(arch: Arch) -> HeadUnit:
    unit = arch_units(arch)[-1]
    assert isinstance(unit, HeadUnit)
    return unit


@pytest.mark.parametrize(("precisions", "head"), [
    (("fp32",) * 4, "fp32"), (("int8", "int8", "int8", "fp32"), "fp32"),
    (("fp32", "fp32", "fp32", "int8"), "int8"), (("fp32", "binary", "binary", "binary"), "int8"),
])
def test_the_head_follows_the_last_stage_only_in_head_int8_spaces(
        precisions: tuple[str, ...], head: str) -> None:
    arch = Arch.smallest(MPH).replace(precisions=precisions)
    assert _head(arch).precision == head
    assert _head(arch).key.endswith(f":{head}")
    assert uses_int8(arch) == ("int8" in precisions or head == "int8")
    # the same stages in the fp32-head space keep an fp32 head, and its table's keys
    assert _head(Arch.smallest(MP).replace(precisions=precisions)).precision == "fp32"
    bits = {layer.bits for layer in _head(arch).layers()}
    assert bits == {8 if head == "int8" else 32}


def test_head_int8_needs_int8_among_the_precisions() -> None:
    with pytest.raises(ValueError, match="head_int8 needs 'int8' among the precisions"):
        dataclasses.replace(OFA_MBV3_MP, name="bad", precisions=("binary", "fp32"),
                            head_int8=True)
    assert get_space("ofa_mbv3_mp_int8head").summary()["head_int8"] is True


def test_tables_of_head_int8_spaces_list_the_int8_head_units() -> None:
    heads = {u.key for u in enumerate_units(MPH, 1.0, (28,), "binary")
             if isinstance(u, HeadUnit)}
    assert [k.rsplit(":", 1)[1] for k in heads] == ["int8"]
    fp32 = {u.key for u in enumerate_units(MPH, 1.0, (28,), "fp32") if isinstance(u, HeadUnit)}
    assert [k.rsplit(":", 1)[1] for k in fp32] == ["fp32"]
    # every other unit is the fp32-head space's, key for key
    others = {u.key for u in enumerate_units(MPH, 1.0, (28,), "int8")} - heads - fp32
    assert others <= {u.key for u in enumerate_units(MP, 1.0, (28,), "int8")}


@pytest.mark.parametrize("precisions", [("fp32", "fp32", "int8", "int8"),
                                        ("int8", "fp32", "binary", "binary")])
def test_int8_head_extraction_is_exact(precisions: tuple[str, ...]) -> None:
    net = calibrated_supernet(MPH)
    rng = np.random.default_rng(1)
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        arch = Arch.sample(MPH, rng).replace(precisions=precisions)
        static = extracted_after_observing(net, arch, gen)  # the head's ranges observed too
        head = static.units[-1]
        assert all(isinstance(m, QConv2d) for m in (head.final_expand[0],
                                                    head.feature_mix[0], head.classifier))
        assert int(head.classifier.input_quant.count) > 0
    # the supernet's fp32 head is untouched by it: an fp32 arch extracts a Linear classifier
    fp32 = extract(net, Arch.smallest(MPH)).units[-1]
    assert isinstance(fp32.classifier, torch.nn.Linear)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_untrained_checkpoint(MPH, tmp_path_factory.mktemp("ckpt") / "supernet.pt")


def test_int8_head_exports_quantised_in_qdq_and_in_a_binary_package(
        checkpoint: Path, tmp_path: Path) -> None:
    int8 = Arch.smallest(MPH).replace(precisions=("fp32", "fp32", "fp32", "int8"))
    result = export(checkpoint, int8.to_string(), "auto", tmp_path / "int8", calib_batches=2,
                    measure=False)
    assert result.card["artefact"]["format"] == "onnx_int8"
    assert result.card["verification"]["passed"]
    model = onnx.load(str(result.artefact))
    # the head's three convs (the last three) read int8 inputs and weights; the first
    # stage's convs (fp32) do not
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    produced = {o: n.op_type for n in model.graph.node for o in n.output}
    assert all(produced.get(n.input[0]) == produced.get(n.input[1]) == "DequantizeLinear"
               for n in convs[-3:])
    assert produced.get(convs[0].input[0]) != "DequantizeLinear"
    # post-training quantisation takes the same convs, the head's among them
    ptq = export(checkpoint, int8.to_string(), "onnx_int8_ptq", tmp_path / "ptq",
                 calib_batches=2, measure=False)
    assert ptq.card["verification"]["passed"]
    model = onnx.load(str(ptq.artefact))
    produced = {o: n.op_type for n in model.graph.node for o in n.output}
    assert all(produced.get(n.input[0]) == "DequantizeLinear"
               for n in [n for n in model.graph.node if n.op_type == "Conv"][-3:])
    binary = Arch.smallest(MPH).replace(precisions=("fp32", "binary", "fp32", "binary"))
    packaged = export(checkpoint, binary.to_string(), "auto", tmp_path / "binary",
                      calib_batches=2, measure=False)
    assert packaged.card["artefact"]["format"] == "binary"
    assert packaged.card["verification"]["passed"]
    program = BinaryPackage.load(packaged.artefact, backend="numpy").program
    assert b"QuantizeLinear" in program.segments[-1]  # the head's segment is int8
    assert all(b"QuantizeLinear" not in s for s in program.segments[:-1])


def test_a_table_is_derived_for_the_int8_head_space_on_its_time_base(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    table = write_synthetic_table(ws, "cpu-synth", MP, ("fp32", "int8", "binary"), (16,))
    missing = missing_units(table, MPH)
    assert [u.key for u in missing] == [u.key for u in enumerate_units(MPH, 1.0, (16,), "int8")
                                        if isinstance(u, HeadUnit)]
    derived = derive_table(table, MPH, "cpu-synth-h8", rounds=2)
    assert derived.space == MPH and derived.device_id == "cpu-synth-h8"
    assert derived.device["id"] == "cpu-synth-h8" and table.space == MP  # source unchanged
    (unit,) = missing
    entry = derived.entries[unit.key]
    twin = table.entries[entry["twin"]]["median_ms"]
    # priced at the twin's table price times the measured ratio, whatever the host's speed
    assert entry["median_ms"] == pytest.approx(twin * entry["twin_ratio"])
    assert len(entry["twin_ratios"]) == 2 and 0.05 < entry["twin_ratio"] < 5
    assert derived.meta["derived"]["from"] == "cpu-synth"
    arch = Arch.smallest(MPH).replace(precisions=("fp32", "fp32", "fp32", "binary"),
                                      resolution=16)
    assert derived.predict(arch) > 0
    shared = Arch.smallest(MPH).replace(resolution=16)
    assert derived.network_sum(shared) == pytest.approx(
        table.network_sum(Arch.smallest(MP).replace(resolution=16)))
    with pytest.raises(OfaSearchError, match="already prices space"):
        derive_table(table, MP, "x")
    wider = dataclasses.replace(get_space(MPH), name="wider-head", final_expand=200)
    with pytest.raises(OfaSearchError, match=r"differs from .* in more than precisions"):
        missing_units(table, wider)
    with pytest.raises(OfaSearchError, match=r"has no resolutions \[16\]"):
        missing_units(table, "ofa_mbv3_mp_int8head")


def test_weights_of_the_fp32_head_space_start_an_int8_head_supernet(tmp_path: Path) -> None:
    source = save_untrained_checkpoint(MP, tmp_path / "mp.pt")
    net = Supernet(MPH, generator=torch.Generator().manual_seed(5))
    load_init_weights(net, source)  # the head's quantisers are new; everything else loads
    assert net.head_quant is not None
    assert all(int(q.count) == 0 for q in net.head_quant.values())
    mp = calibrated_supernet(MP, seed=2)
    arch = Arch.smallest(MPH)  # fp32: the same function in both spaces
    x = torch.randn(2, 1, arch.resolution, arch.resolution)
    with torch.no_grad():
        assert torch.equal(net.eval()(x, arch), mp(x, Arch.smallest(MP)))
    with pytest.raises(FileFormatError, match="only the precisions and the int8 head may differ"):
        load_init_weights(Supernet("ofa_mbv3_mp_int8head"), source)


def test_the_accuracy_bench_scores_both_heads_on_the_same_weights(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_script("bench_int8_head_accuracy")
    source = save_untrained_checkpoint(MP, tmp_path / "mp.pt")
    out = tmp_path / "acc.json"
    assert bench.main([str(source), str(out), "--data", "digits", "--n", "1",
                       "--calib-batches", "1"]) == 0
    report = json.loads(out.read_text())
    assert report["int8_head_space"] == MPH and report["space"] == MP
    (row,) = report["rows"]
    for variant in ("last-int8", "all-int8"):
        scores = row[variant]
        assert 0 <= scores["int8_head"] <= 1 and 0 <= scores["fp32_head"] <= 1
        assert scores["cost_points"] == pytest.approx(
            100 * (scores["fp32_head"] - scores["int8_head"]))
    assert report["summary"]["noise_floor_points"]["max"] >= 0
    assert bench.main([str(source), str(tmp_path / "x.json"), "--space", MPH]) == 2
    assert "must offer int8 stages and keep its head fp32" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_modes_split_by_the_head_precision_in_sampling_and_pricing() -> None:
    from ofa_search.profiling.builder import mode_archs
    from ofa_search.profiling.lut import head_mode, split_mode

    assert split_mode("binary+int8head") == ("binary", "int8")
    assert split_mode("mixed") == ("mixed", None)
    for head in ("fp32", "int8"):
        archs = mode_archs(MPH, 6, 11, 1.0, (16,), f"binary+{head}head")
        assert len(archs) == 6
        assert all("binary" in a.precisions and head_mode(a) == f"binary+{head}head"
                   for a in archs)
    with pytest.raises(OfaSearchError, match="has an int8 head"):
        mode_archs(MP, 2, 11, 1.0, (16,), "binary+int8head")
    with pytest.raises(OfaSearchError, match="no fp32 subnet"):
        mode_archs(MPH, 2, 11, 1.0, (16,), "fp32+int8head")


def test_a_head_mode_overhead_prices_its_subnets_and_others_fall_back(tmp_path: Path) -> None:
    table = write_synthetic_table(Workspace(tmp_path / "ws"), "mph", MPH,
                                  ("fp32", "int8", "binary"), (16,))
    base = Arch.smallest(MPH).replace(resolution=16)
    int8_head = base.replace(precisions=("fp32", "binary", "fp32", "binary"))
    fp32_head = base.replace(precisions=("fp32", "binary", "binary", "fp32"))
    mixed = base.replace(precisions=("int8", "binary", "fp32", "binary"))
    table.overhead_by_mode = {"binary": 0.5, "binary+int8head": -0.25}
    assert table.mode_overhead(int8_head) == -0.25
    assert table.mode_overhead(fp32_head) == 0.5  # no binary+fp32head: the mode's
    assert table.mode_overhead(mixed) == 0.5  # no mixed+int8head, no mixed: binary's
    assert table.predict(int8_head) == pytest.approx(table.network_sum(int8_head) - 0.25)
    table.overhead_by_mode["mixed+int8head"] = 0.125
    assert table.mode_overhead(mixed) == 0.125
