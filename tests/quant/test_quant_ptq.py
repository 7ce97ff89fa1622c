"""Post-training int8 export: only the convs of int8 stages are quantised, found by weight
whatever the exporter; numerics close to the PyTorch subnet."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from quant_helpers import MP, RESOLUTION, calibrated_net, run_ort, torch_logits

from ofa_search.arch import Arch
from ofa_search.errors import InvalidArchError
from ofa_search.nn import StaticSubnet
from ofa_search.onnx_export import export_onnx
from ofa_search.quant.fold import fold_network
from ofa_search.quant.formats import INT8_RELATIVE_TOLERANCE, relative_logit_error
from ofa_search.quant.graph import find_conv_nodes, ort_kernel_counts
from ofa_search.quant.ptq import export_int8_ptq


@pytest.fixture(scope="module")
def ptq_model(mixed_net: StaticSubnet, train_batches: list[np.ndarray]) -> onnx.ModelProto:
    return export_int8_ptq(mixed_net, train_batches)


def stage_of_unit(net: StaticSubnet) -> list[int | None]:
    """Stage index of each unit (``None`` for stem, first block and head)."""
    depths = net.arch.depths
    return [None, None, *[s for s, d in enumerate(depths) for _ in range(d)], None]


def test_only_the_convs_of_int8_stages_are_quantised(mixed_net: StaticSubnet,
                                                     ptq_model: onnx.ModelProto) -> None:
    folded = fold_network(mixed_net, int8_grid=False)
    stages = stage_of_unit(mixed_net)
    inits = {t.name: numpy_helper.to_array(t) for t in ptq_model.graph.initializer}
    producer = {o: n for n in ptq_model.graph.node for o in n.output}
    quantised, plain = [], []
    for node in (n for n in ptq_model.graph.node if n.op_type == "Conv"):
        if node.input[1] in producer:
            dq = producer[node.input[1]]
            assert inits[dq.input[0]].dtype == np.int8
            scale = inits[dq.input[1]].reshape(-1, 1, 1, 1)
            quantised.append((inits[dq.input[0]] * scale, scale))
        else:
            plain.append(inits[node.input[1]])
    int8_records = folded.int8_convs
    assert len(quantised) == len(int8_records) == 3 * sum(mixed_net.arch.depths[s] for s in (1, 3))
    assert {stages[c.unit] for c in int8_records} == {1, 3}  # type: ignore[index]
    for record in int8_records:  # each int8-stage conv: its weight, rounded per channel
        assert sum(w.shape == record.weight.shape
                   and bool(np.all(np.abs(w - record.weight) <= s / 2 + 1e-7))
                   for w, s in quantised) == 1
    fp32_records = [c for c in folded.convs if not c.int8]
    for record in fp32_records:  # fp32 stages, or squeeze-excite (fp32 in every stage)
        assert stages[record.unit] in (None, 0, 2) or ".se." in record.path  # type: ignore[index]
    assert len(plain) == len(fp32_records)
    for record in fp32_records:  # every other conv: its fp32 weight, untouched
        assert sum(np.array_equal(w, record.weight) for w in plain) == 1


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.export's own deprecations
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_convs_are_found_by_weight_whatever_the_exporter(mixed_net: StaticSubnet,
                                                         exporter: str) -> None:
    folded = fold_network(mixed_net, int8_grid=False)
    model = export_onnx(folded.module, mixed_net.input_shape(1),
                        exporter=exporter)  # type: ignore[arg-type]
    found = find_conv_nodes(model, {c.path: c.weight for c in folded.convs})
    assert len({n.name for n in found.values()}) == len(folded.convs)
    with pytest.raises(ValueError, match=r"conv 'missing': 0 Conv nodes"):
        find_conv_nodes(model, {"missing": np.zeros((3, 3, 1, 1), np.float32)})


def test_numerics_and_kernels(mixed_net: StaticSubnet, ptq_model: onnx.ModelProto,
                              test_images: torch.Tensor) -> None:
    expected = torch_logits(mixed_net, test_images)
    got = run_ort(ptq_model, test_images)
    assert relative_logit_error(got, expected) < INT8_RELATIVE_TOLERANCE
    assert np.mean(got.argmax(1) == expected.argmax(1)) >= 0.85
    counts = ort_kernel_counts(ptq_model)
    assert counts.int8_convs == len(fold_network(mixed_net, int8_grid=False).int8_convs)


def test_an_arch_without_int8_stage_is_refused(train_batches: list[np.ndarray]) -> None:
    arch = Arch.smallest(MP).replace(resolution=RESOLUTION,
                                     precisions=("fp32", "binary", "fp32", "fp32"))
    net = calibrated_net(arch, train_batches)
    with pytest.raises(InvalidArchError, match=r"has no int8 stage .*'binary'"):
        export_int8_ptq(net, train_batches)
