"""int8 and binary layers: quantiser values and gradients, exact extraction of mixed-precision
subnets, recalibration of activation ranges."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from supernet_helpers import calibrated_supernet, extracted_after_observing

from ofa_search.arch import Arch
from ofa_search.binary.layer import PackedPointwise
from ofa_search.nn import extract
from ofa_search.nn.binary import (
    BINARY_INGREDIENTS,
    BinaryPointwise,
    binary_sign,
    binary_weight,
    cyclic_channels,
)
from ofa_search.nn.quant import Int8ActQuant, QConv2d, int8_weight
from ofa_search.nn.static import MBConv
from ofa_search.train.bn_calibration import recalibrate_bn

MP = "mbv3_small28_mp"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_binary_sign_maps_zero_to_plus_one_with_clipped_identity_gradient() -> None:
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], requires_grad=True)
    y = binary_sign(x)
    assert y.tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]
    y.sum().backward()
    assert x.grad is not None and x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    # the boundary of the clip passes the gradient, and values are exactly ±1 (no
    # rounding residue from a straight-through sum) at any magnitude
    x = torch.tensor([-1.0, 1.0, 1e-30, -3e7, 0.1 + 0.2], requires_grad=True)
    y = binary_sign(x)
    assert y.tolist() == [-1.0, 1.0, 1.0, -1.0, 1.0]
    y.backward(torch.tensor([2.0, 3.0, 4.0, 5.0, 6.0]))
    assert x.grad is not None and x.grad.tolist() == [2.0, 3.0, 4.0, 0.0, 6.0]


def test_binary_weight_is_sign_times_mean_abs_per_output_channel() -> None:
    w = torch.tensor([[[[0.5]], [[-1.5]]], [[[0.0]], [[0.2]]]])  # [2, 2, 1, 1]
    got = binary_weight(w)
    assert torch.allclose(got.flatten(), torch.tensor([1.0, -1.0, 0.1, 0.1]))


def test_cyclic_shortcut_repeats_and_truncates_channels() -> None:
    x = torch.arange(3.0).reshape(1, 3, 1, 1)
    assert cyclic_channels(x, 7).flatten().tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert cyclic_channels(x, 2).flatten().tolist() == [0, 1]
    # a channel repeated r times gets the sum of its r copies' gradients
    x = torch.randn(2, 3, 4, 4).to(memory_format=torch.channels_last).requires_grad_()
    assert cyclic_channels(x, 6).is_contiguous(memory_format=torch.channels_last)
    y = cyclic_channels(x, 7)
    y.backward(torch.ones_like(y))
    assert x.grad is not None
    assert x.grad[:, :, 0, 0].tolist() == [[3.0, 2.0, 2.0], [3.0, 2.0, 2.0]]


def test_int8_weight_lies_on_a_per_channel_127_level_grid() -> None:
    w = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    q = int8_weight(w)
    scale = w.abs().flatten(1).amax(1) / 127
    levels = q / scale.view(-1, 1, 1, 1)
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert levels.abs().max() <= 127 + 1e-4
    assert (q - w).abs().max() <= scale.max() / 2 + 1e-6


def test_int8_act_quant_observes_ranges_and_quantises_to_256_levels() -> None:
    quant = Int8ActQuant(momentum=None)
    x = torch.linspace(-1.0, 3.0, 1000)
    assert torch.equal(quant.eval()(x), x)  # nothing observed yet: identity
    quant.train()(x)
    quant(x * 0.5)
    assert float(quant.lo) == pytest.approx(-0.75) and float(quant.hi) == pytest.approx(2.25)
    scale, zero = quant.qparams()
    y = quant.eval()(x)
    assert len(torch.unique(y)) <= 256
    assert (y - x.clamp(-0.75, 2.25)).abs().max() <= float(scale) / 2 + 1e-6
    assert 0 <= int(zero) <= 255 and float((y == 0).sum()) >= 1  # zero is exact


def test_recalibration_resets_activation_ranges() -> None:
    conv = QConv2d(2, 2, 1, bias=False)
    conv.train()(torch.full((1, 2, 2, 2), 100.0))
    assert float(conv.input_quant.hi) == pytest.approx(100.0)
    recalibrate_bn(conv, [torch.ones(1, 2, 2, 2), 3 * torch.ones(1, 2, 2, 2)])
    assert float(conv.input_quant.hi) == pytest.approx(2.0)  # cumulative mean of 1 and 3
    assert int(conv.input_quant.count) == 2 and not conv.training


@pytest.mark.parametrize("precisions", [("int8",) * 4, ("binary",) * 4,
                                        ("fp32", "int8", "binary", "int8"),
                                        ("binary", "fp32", "fp32", "int8")])
def test_mixed_precision_extraction_is_exact(precisions: tuple[str, ...]) -> None:
    net = calibrated_supernet(MP)
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(2)
    for _ in range(4):
        arch = Arch.sample(MP, rng).replace(precisions=precisions)
        static = extracted_after_observing(net, arch, gen)
        kinds = {type(m).__name__ for m in static.modules()}
        assert ("QConv2d" in kinds) == ("int8" in precisions)
        assert ("BinaryPointwise" in kinds) == ("binary" in precisions)


def test_binary_activations_switch_reaches_extracted_blocks() -> None:
    net = calibrated_supernet(MP)
    arch = Arch.largest(MP).replace(precisions=("binary",) * 4)
    x = torch.randn(2, 1, arch.resolution, arch.resolution)
    with torch.no_grad():
        on = net(x, arch)
        net.set_binary_activations(False)
        off = net(x, arch)
        static = extract(net, arch).eval()
    assert not torch.allclose(on, off)
    blocks = [m for m in static.modules() if isinstance(m, BinaryPointwise)]
    assert blocks and not any(b.binary_activations for b in blocks)
    with torch.no_grad():
        assert torch.allclose(static(x), off, atol=1e-5)


def test_low_precision_stages_need_a_space_that_offers_them() -> None:
    net = calibrated_supernet("mbv3_small28")
    with pytest.raises(ValueError, match="has no int8 precision"):
        net.block(0, 0)(torch.randn(1, 16, 8, 8), 3, 3, "int8")


def test_binary_input_bn_thresholds_relu_outputs_into_both_signs() -> None:
    layer = BinaryPointwise(8, 16).train()
    x = torch.relu(torch.randn(4, 8, 5, 5, generator=torch.Generator().manual_seed(0)))
    assert bool((binary_sign(x) > 0).all())  # sign alone: +1 everywhere after a ReLU
    with torch.no_grad():
        signs = binary_sign(layer.in_bn(x))
    assert 0.3 < float((signs > 0).float().mean()) < 0.7


def test_binary_ablation_switches_each_ingredient_off_in_supernet_and_extraction() -> None:
    net = calibrated_supernet(MP)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # thresholds away from 0, so that the input BNs change signs
        for name, module in net.named_modules():
            if name.endswith("_in_bn"):
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen))
    arch = Arch.largest(MP).replace(precisions=("binary",) * 4)
    x = torch.randn(2, 1, arch.resolution, arch.resolution, generator=gen)
    with torch.no_grad():
        full = net(x, arch)
    outputs = {}
    for ingredient in BINARY_INGREDIENTS:
        net.set_binary_ablation([ingredient])
        static = extract(net, arch).eval()
        blocks = [m for m in static.modules() if isinstance(m, BinaryPointwise)]
        if ingredient in ("expand_shortcut", "project_shortcut"):  # one conv of each block
            mbconvs = [m for m in static.modules()
                       if isinstance(m, MBConv) and isinstance(m.expand, BinaryPointwise)]
            loses, keeps = ("expand", "project")[::1 if ingredient == "expand_shortcut" else -1]
            assert mbconvs and all(getattr(m, loses).ablated == {"shortcut"}
                                   and getattr(m, keeps).ablated == set() for m in mbconvs)
            blocks = [getattr(m, loses) for m in mbconvs]
        off = "shortcut" if ingredient.endswith("_shortcut") else ingredient
        assert blocks and all(b.ablated == {off} for b in blocks)
        with torch.no_grad():
            outputs[ingredient] = net(x, arch)
            # the extracted subnet computes what the supernet computes, ablated
            assert float((static(x) - outputs[ingredient]).abs().max()) <= 1e-5
        assert not torch.allclose(outputs[ingredient], full)
        if off == "shortcut":  # deployable: the packed layer leaves the shortcut out
            packed = PackedPointwise.from_module(blocks[0])
            assert packed.shortcut is False
            layer_in = torch.randn(1, blocks[0].in_channels, 3, 3, generator=gen)
            with torch.no_grad():
                expected = blocks[0](layer_in).numpy()
            assert np.abs(packed.run(layer_in.numpy()) - expected).max() <= 1e-4
        else:
            with pytest.raises(ValueError, match=f"has {off} switched off"):
                PackedPointwise.from_module(blocks[0])
    # without only the expand (or project) convs' shortcuts: neither the full set, nor no
    # shortcut at all, nor each other
    for one in ("expand_shortcut", "project_shortcut"):
        assert not torch.allclose(outputs[one], outputs["shortcut"])
    assert not torch.allclose(outputs["expand_shortcut"], outputs["project_shortcut"])
    net.set_binary_ablation(())
    with torch.no_grad():
        assert torch.equal(net(x, arch), full)
    with pytest.raises(ValueError, match="unknown binary ingredient"):
        net.set_binary_ablation(["scales"])


def test_binary_pointwise_ablations_compute_what_they_name() -> None:
    layer = BinaryPointwise(4, 8).eval()
    with torch.no_grad():
        layer.in_bn.bias.fill_(5.0)  # a threshold that makes every input sign +1
        layer.conv.weight.mul_(3.0)
    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        layer.ablated = frozenset({"shortcut"})
        no_shortcut = layer(x)
        signs = torch.ones_like(x)
        w = layer.conv.weight
        alpha = w.abs().mean(dim=(1, 2, 3), keepdim=True)
        expected = layer.bn(torch.nn.functional.conv2d(signs, alpha * torch.sign(w)))
        assert torch.allclose(no_shortcut, expected, atol=1e-6)
        layer.ablated = frozenset({"shortcut", "scale"})
        expected = layer.bn(torch.nn.functional.conv2d(signs, torch.sign(w)))
        assert torch.allclose(layer(x), expected, atol=1e-6)
        layer.ablated = frozenset({"shortcut", "threshold"})  # sign of x itself
        expected = layer.bn(torch.nn.functional.conv2d(binary_sign(x), alpha * torch.sign(w)))
        assert torch.allclose(layer(x), expected, atol=1e-6)
    assert "ablated=['shortcut', 'threshold']" in repr(layer)


def test_own_binary_weights_start_as_copies_then_part_from_the_fp32_ones() -> None:
    net = calibrated_supernet(MP)
    gen = torch.Generator().manual_seed(4)
    binary = Arch.largest(MP).replace(precisions=("binary",) * 4)
    fp32 = Arch.largest(MP)
    x = torch.randn(2, 1, binary.resolution, binary.resolution, generator=gen)
    with torch.no_grad():
        before = {"binary": net(x, binary), "fp32": net(x, fp32)}
    shared = len(net.state_dict())
    net.set_binary_weights(True)
    blocks = net.elastic_blocks()
    assert all(b.binary_expand_conv is not None and b.binary_project is not None
               for b in blocks)
    assert len(net.state_dict()) == shared + 2 * len(blocks)
    with torch.no_grad():  # copies: nothing computes differently yet
        assert torch.equal(net(x, binary), before["binary"])
        # the binary convs' own weights move: binary subnets change, fp32 ones do not
        for block in blocks:
            assert block.binary_project is not None
            block.binary_project.weight.neg_()
        moved = net(x, binary)
        assert not torch.allclose(moved, before["binary"])
        assert torch.equal(net(x, fp32), before["fp32"])
        # ... and the other way round
        for block in blocks:
            block.project.weight.mul_(0.5)
        assert torch.equal(net(x, binary), moved)
        assert not torch.allclose(net(x, fp32), before["fp32"])
        # the extracted binary subnet holds the own weights
        assert float((extract(net, binary).eval()(x) - moved).abs().max()) <= 1e-5
        net.copy_binary_weights()
        assert all(torch.equal(b.binary_project.weight, b.project.weight)  # type: ignore[union-attr]
                   for b in blocks)
    net.set_binary_weights(False)
    assert len(net.state_dict()) == shared and blocks[0].binary_project is None
    with pytest.raises(ValueError, match="space 'mbv3_small28' has no binary precision"):
        calibrated_supernet("mbv3_small28").set_binary_weights(True)
