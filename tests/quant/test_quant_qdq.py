"""Learned-scale int8 export: exact int8 weights and activation parameters, numerics close
to the PyTorch fake-quant subnet, and int8 kernels in ONNX Runtime's optimised graph."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from quant_helpers import MP, RESOLUTION, calibrated_net, run_ort, torch_logits

from ofa_search.arch import Arch
from ofa_search.errors import InvalidArchError
from ofa_search.nn import StaticSubnet, build_static
from ofa_search.nn.quant import QConv2d
from ofa_search.onnx_export import export_onnx
from ofa_search.quant.fold import UncalibratedQuantError, fold_network
from ofa_search.quant.formats import INT8_RELATIVE_TOLERANCE, relative_logit_error
from ofa_search.quant.graph import KernelCounts, ort_kernel_counts
from ofa_search.quant.qdq import export_int8


@pytest.fixture(scope="module")
def int8_model(int8_net: StaticSubnet, train_batches: list[np.ndarray]) -> onnx.ModelProto:
    return export_int8(int8_net, train_batches)


def test_weights_and_input_parameters_are_the_learned_ones(int8_net: StaticSubnet,
                                                            int8_model: onnx.ModelProto) -> None:
    folded = fold_network(int8_net, int8_grid=True)
    inits = {t.name: numpy_helper.to_array(t) for t in int8_model.graph.initializer}
    producer = {o: n for n in int8_model.graph.node for o in n.output}
    convs = [n for n in int8_model.graph.node
             if n.op_type == "Conv" and n.input[1] in producer]  # weight from a DQ
    assert len(convs) == len(folded.int8_convs) == 24
    by_shape_and_values = {(c.weight_int8.shape, c.weight_int8.tobytes()): c  # type: ignore[union-attr]
                           for c in folded.int8_convs}
    for node in convs:
        w_dq = producer[node.input[1]]
        ints = inits[w_dq.input[0]]
        assert ints.dtype == np.int8 and np.abs(ints).max() <= 127
        record = by_shape_and_values.pop((ints.shape, ints.tobytes()))  # the QAT integers
        assert record.weight_scale is not None
        np.testing.assert_allclose(inits[w_dq.input[1]], record.weight_scale, rtol=1e-6)
        x_dq = producer[node.input[0]]
        assert float(inits[x_dq.input[1]]) == pytest.approx(record.input_scale, rel=1e-6)
        assert int(inits[x_dq.input[2]]) == record.input_zero_point
        assert inits[x_dq.input[2]].dtype == np.uint8
    assert not by_shape_and_values


def test_folded_integers_are_int8_weight_times_batch_norm(int8_net: StaticSubnet) -> None:
    from ofa_search.nn.quant import int8_weight

    folded = fold_network(int8_net, int8_grid=True)
    modules = dict(int8_net.named_modules())
    for record in folded.int8_convs:
        conv = modules[record.path]
        parent, _, index = record.path.rpartition(".")
        bn = modules[f"{parent}.{int(index) + 1}"]
        assert isinstance(conv, QConv2d) and isinstance(bn, torch.nn.BatchNorm2d)
        assert bn.running_var is not None
        factor = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
        expected = (int8_weight(conv.weight) * factor.view(-1, 1, 1, 1)).detach().numpy()
        np.testing.assert_allclose(record.weight, expected, rtol=1e-5, atol=1e-7)
        assert record.unit is not None and 2 <= record.unit < len(int8_net.units) - 1


def test_numerics_close_to_the_fake_quant_subnet(int8_net: StaticSubnet,
                                                 int8_model: onnx.ModelProto,
                                                 test_images: torch.Tensor) -> None:
    """Whole random-init subnets amplify any rounding difference (the fp32 net without
    fake quantisation is ~0.05 away too); a trained QAT subnet is ~0.01-0.03 away (see
    ofa_search.quant.formats). A wrong weight scale in one conv is far out of tolerance."""
    expected = torch_logits(int8_net, test_images)
    got = run_ort(int8_model, test_images)
    assert relative_logit_error(got, expected) < INT8_RELATIVE_TOLERANCE
    assert np.mean(got.argmax(1) == expected.argmax(1)) >= 0.85
    broken = onnx.ModelProto()
    broken.CopyFrom(int8_model)
    producer = {o: n for n in broken.graph.node for o in n.output}
    conv = next(n for n in broken.graph.node if n.op_type == "Conv" and n.input[1] in producer)
    scale = next(t for t in broken.graph.initializer if t.name == producer[conv.input[1]].input[1])
    scale.CopyFrom(numpy_helper.from_array(1.5 * numpy_helper.to_array(scale), scale.name))
    assert relative_logit_error(run_ort(broken, test_images), expected) > 0.3


def test_ort_runs_every_int8_conv_with_an_int8_kernel(int8_net: StaticSubnet,
                                                       int8_model: onnx.ModelProto) -> None:
    counts = ort_kernel_counts(int8_model)
    n_int8 = sum(isinstance(m, QConv2d) for m in int8_net.modules())
    assert counts.ops.get("QLinearConv", 0) == counts.int8_convs == n_int8 == 24
    # stem, first block (2), SE (2 per SE block), final expand, feature mix stay fp32
    assert counts.fp32_convs == 1 + 2 + 2 * 4 + 2
    fp32_counts = ort_kernel_counts(export_onnx(fold_network(int8_net, int8_grid=False).module,
                                                (1, 1, 20, 20)))
    assert fp32_counts.int8_convs == 0 and fp32_counts.fp32_convs > 0


def test_kernel_counts_totals() -> None:
    counts = KernelCounts({"QLinearConv": 3, "ConvInteger": 1, "Conv": 2, "FusedConv": 1,
                           "QuantizeLinear": 2, "DequantizeLinear": 1, "QLinearAdd": 1,
                           "Mul": 4})
    assert (counts.int8_convs, counts.fp32_convs, counts.quantize_nodes) == (4, 3, 3)
    assert counts.int8_nodes == 5
    assert counts.to_dict()["ops"]["Mul"] == 4


def test_errors(train_batches: list[np.ndarray]) -> None:
    fp32_net = calibrated_net(Arch.smallest(MP).replace(resolution=RESOLUTION), train_batches)
    with pytest.raises(InvalidArchError, match=r"has no int8 stage \(precisions \['fp32'"):
        export_int8(fp32_net, train_batches)
    arch = Arch.smallest(MP).replace(resolution=RESOLUTION, precisions=("fp32", "int8") * 2)
    fresh = build_static(arch, torch.Generator().manual_seed(0))
    with pytest.raises(UncalibratedQuantError, match=r"int8 conv units\.4\.expand\.0 has no "
                                                     r"observed activation range"):
        export_int8(fresh, train_batches)
    net = calibrated_net(arch, train_batches)
    with pytest.raises(ValueError, match="needs at least one calibration image"):
        export_int8(net, [])


@pytest.mark.parametrize(("stride", "cin"), [(2, 16), (1, 24)])
def test_a_block_matches_torch_within_one_quantisation_step(stride: int, cin: int) -> None:
    """An int8 block is the fake-quant block plus one uint8 rounding of its projection
    (which ONNX Runtime needs to fuse QLinearConv); the residual adds the fp32 input."""
    from ofa_search.nn.static import MBConv
    from ofa_search.quant.units import seeded_int8_onnx
    from ofa_search.units import MBConvUnit

    unit = MBConvUnit(cin, 24, 72, 10, kernel=5, stride=stride, act="relu", se_channels=0,
                      precision="int8")
    block = MBConv(unit)
    model = seeded_int8_onnx(block, (1, cin, 10, 10))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    (quant,) = [n for n in model.graph.node if n.op_type == "QuantizeLinear"
                and "project" in getattr(producer.get(n.input[0]), "name", "")]
    scale, zero = float(inits[quant.input[1]]), int(inits[quant.input[2]])
    x = 0.8 * torch.randn(32, cin, 10, 10, generator=torch.Generator().manual_seed(5))
    captured: list[torch.Tensor] = []
    hook = block.project.register_forward_hook(lambda _m, _i, out: captured.append(out))
    with torch.no_grad():
        block.eval()(x)
    hook.remove()
    projected = torch.fake_quantize_per_tensor_affine(captured[0], scale, zero, 0, 255)
    expected = (projected + x if unit.residual else projected).numpy()
    reference, fused = run_ort(model, x, optimise=False), run_ort(model, x)
    assert np.abs(reference - expected).max() <= 1.001 * scale  # upstream rounding ties
    assert np.mean(np.abs(reference - expected) > scale / 2) < 0.05
    assert np.abs(fused - reference).max() <= 1.001 * scale
    assert ort_kernel_counts(model).int8_convs == 3
    adds = [n for n in model.graph.node if n.op_type == "Add"]
    assert [n.input[1] for n in adds] == (["input"] if unit.residual else [])
