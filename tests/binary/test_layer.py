"""Packed binary 1×1 blocks equal PyTorch's BinaryPointwise (eval mode)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from binary_helpers import randomize_bn
from torch import nn

from ofa_search.binary import PackedPointwise, tvm_available
from ofa_search.nn.binary import BinaryPointwise

CASES = [(16, 48, nn.ReLU()), (48, 144, nn.Hardswish()), (144, 24, None), (65, 130, nn.ReLU()),
         (1, 3, None), (130, 65, nn.Hardswish())]


def make_layer(c: int, o: int, act: nn.Module | None, seed: int) -> BinaryPointwise:
    layer = BinaryPointwise(c, o, act)
    with torch.no_grad():
        layer.conv.weight.normal_(generator=torch.Generator().manual_seed(seed))
    randomize_bn(layer, seed)
    return layer.eval()


@pytest.mark.parametrize(("c", "o", "act"), CASES)
@pytest.mark.parametrize("backend", ["numpy", "tvm"])
def test_packed_block_matches_torch(c: int, o: int, act: nn.Module | None,
                                    backend: str) -> None:
    if backend == "tvm" and not tvm_available():
        pytest.skip("TVM is not installed")
    module = make_layer(c, o, act, seed=c + o)
    x = torch.randn(2, c, 9, 7, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = module(x).numpy()
    packed = PackedPointwise.from_module(module)
    if backend == "tvm":
        from ofa_search.binary.tvm_pointwise import TvmPointwise

        run = TvmPointwise(packed)
    else:
        run = packed.run
    got = run(x.numpy())
    assert got.shape == expected.shape and got.dtype == np.float32
    assert np.abs(got - expected).max() < 1e-4
    assert np.array_equal(run(x.numpy()), got)  # reused buffers do not leak between calls


@pytest.mark.parametrize(("c", "o", "act"), [CASES[0], CASES[3]])
@pytest.mark.parametrize("backend", ["numpy", "tvm"])
def test_layer_trained_without_its_shortcut_packs_without_it(
        c: int, o: int, act: nn.Module | None, backend: str) -> None:
    if backend == "tvm" and not tvm_available():
        pytest.skip("TVM is not installed")
    module = make_layer(c, o, act, seed=c)
    x = torch.randn(2, c, 5, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        with_shortcut = module(x).numpy()
        module.ablated = frozenset({"shortcut"})
        expected = module(x).numpy()
    packed = PackedPointwise.from_module(module)
    assert packed.shortcut is False
    if backend == "tvm":
        from ofa_search.binary.tvm_pointwise import TvmPointwise

        got = TvmPointwise(packed)(x.numpy())
    else:
        got = packed.run(x.numpy())
    assert np.abs(got - expected).max() < 1e-4
    assert np.abs(got - with_shortcut).max() > 0.1
    module.ablated = frozenset({"shortcut", "scale"})
    with pytest.raises(ValueError, match="has scale, shortcut switched off"):
        PackedPointwise.from_module(module)


def test_input_bn_sets_the_sign_threshold() -> None:
    """The input BN decides the signs: a shift moves them, the scale's sign flips them."""
    module = make_layer(16, 16, None, 0)
    x = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    outputs = []
    for shift, factor in ((0.0, 1.0), (5.0, 1.0), (0.0, -1.0)):
        with torch.no_grad():
            module.in_bn.running_mean.zero_()
            module.in_bn.running_var.fill_(1.0)
            module.in_bn.weight.fill_(factor)
            module.in_bn.bias.fill_(shift)
            expected = module(x).numpy()
        packed = PackedPointwise.from_module(module)
        got = packed.run(x.numpy())
        assert np.abs(got - expected).max() < 1e-4
        outputs.append(got)
    assert np.abs(outputs[0] - outputs[1]).max() > 0.1
    assert np.abs(outputs[0] - outputs[2]).max() > 0.1


def test_packing_refuses_training_mode_and_real_inputs() -> None:
    module = make_layer(8, 8, None, 0)
    with pytest.raises(ValueError, match="eval mode"):
        PackedPointwise.from_module(module.train())
    module.eval().binary_activations = False
    with pytest.raises(ValueError, match="binary_activations=False"):
        PackedPointwise.from_module(module)
    with pytest.raises(TypeError, match="expected a BinaryPointwise"):
        PackedPointwise.from_module(nn.Conv2d(1, 1, 1))  # type: ignore[arg-type]


def test_invalid_fields_and_inputs() -> None:
    packed = PackedPointwise.from_module(make_layer(8, 4, None, 0))
    with pytest.raises(ValueError, match="input must be \\[N, 8, H, W\\]"):
        packed.run(np.zeros((1, 7, 2, 2), np.float32))
    u, v = packed.input_scale, packed.input_shift
    with pytest.raises(ValueError, match="scale must be float32 \\[4\\]"):
        PackedPointwise(packed.weights, 8, packed.scale[:3], packed.bias, None, u, v)
    with pytest.raises(ValueError, match="input_shift must be float32 \\[8\\]"):
        PackedPointwise(packed.weights, 8, packed.scale, packed.bias, None, u, v[:4])
    with pytest.raises(ValueError, match="weights must be uint64 \\[O, 1, 1, 1\\]"):
        PackedPointwise(packed.weights.astype(np.int64), 8, packed.scale, packed.bias, None,
                        u, v)
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        PackedPointwise(packed.weights, 8, packed.scale, packed.bias, "gelu", u, v)
    with pytest.raises(ValueError, match="shortcut must be a bool, got 0"):
        PackedPointwise(packed.weights, 8, packed.scale, packed.bias, None, u, v, 0)  # type: ignore[arg-type]
