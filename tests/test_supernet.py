"""The elastic supernet: exact extraction, purity, channel sorting, kernel transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from supernet_helpers import calibrated_supernet
from torch import nn

from ofa_search.arch import Arch
from ofa_search.errors import InvalidArchError
from ofa_search.nn import Supernet, extract
from ofa_search.nn.dynamic import DynamicDepthwiseConv2d

ELASTIC_TYPES = ("DynamicPointwiseConv2d", "DynamicDepthwiseConv2d", "DynamicBatchNorm2d",
                 "DynamicSqueezeExcite", "ElasticMBConv", "Supernet")


@pytest.mark.parametrize(("space", "width"), [("mbv3_small28", 1.0), ("ofa_mbv3", 1.0),
                                              ("ofa_mbv3", 1.2)])
def test_extract_is_exact_for_50_random_archs(space: str, width: float) -> None:
    net = calibrated_supernet(space, width)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = np.random.default_rng(42)
    gen = torch.Generator().manual_seed(1)
    archs = [Arch.smallest(space, width), Arch.largest(space, width)]
    archs += [Arch.sample(space, rng, width_mult=width) for _ in range(48)]
    worst = 0.0
    for arch in archs:
        static = extract(net, arch).eval()
        assert not any(type(m).__name__ in ELASTIC_TYPES for m in static.modules())
        x = torch.randn(2, net.space.in_channels, arch.resolution, arch.resolution,
                        generator=gen)
        with torch.no_grad():
            expected, got = net(x, arch), static(x)
        assert expected.shape == (2, net.space.num_classes)
        assert expected.abs().max() > 1e-2  # outputs have a usable scale
        worst = max(worst, float((expected - got).abs().max()))
    assert worst <= 1e-5
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_extracted_subnet_shares_no_storage() -> None:
    net = calibrated_supernet("mbv3_small28")
    arch = Arch.largest("mbv3_small28")
    static = extract(net, arch)
    pointers = {p.data_ptr() for p in net.parameters()} | {b.data_ptr() for b in net.buffers()}
    assert not any(p.data_ptr() in pointers for p in static.parameters())
    with torch.no_grad():
        for p in static.parameters():
            p.add_(1.0)
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(static.eval()(x), net(x, arch))


@pytest.mark.parametrize("space", ["mbv3_small28", "ofa_mbv3"])
def test_channel_sorting_keeps_the_largest_function(space: str) -> None:
    net = calibrated_supernet(space)
    arch = Arch.largest(space, net.width_mult).replace(resolution=net.space.resolutions[0])
    x = torch.randn(2, net.space.in_channels, arch.resolution, arch.resolution,
                    generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = net(x, arch)
        small_before = net(x, Arch.smallest(space))
        assert net.sort_channels() == len(list(net.elastic_blocks()))
        after = net(x, arch)
        small_after = net(x, Arch.smallest(space))
    assert torch.allclose(before, after, rtol=1e-4, atol=1e-5)  # summation order only
    # sorting must actually reorder something, which changes narrower subnets
    assert not torch.allclose(small_before, small_after)
    for block in net.elastic_blocks():
        importance = block.project.weight.abs().sum(dim=(0, 2, 3))
        assert torch.all(importance[:-1] >= importance[1:])


def test_sorting_leaves_a_binary_space_as_it_is() -> None:
    # the binary convs' shortcuts tie hidden channels to input and output channels by
    # position: a sorted block would compute other binary subnets (it did, before)
    space = "mbv3_small28_mp"
    net = calibrated_supernet(space)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert net.sort_channels() == 0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_sorting_then_extract_is_still_exact() -> None:
    net = calibrated_supernet("mbv3_small28")
    net.sort_channels()
    rng = np.random.default_rng(5)
    for _ in range(5):
        arch = Arch.sample("mbv3_small28", rng)
        x = torch.randn(1, 1, arch.resolution, arch.resolution)
        with torch.no_grad():
            assert torch.allclose(net(x, arch), extract(net, arch).eval()(x), atol=1e-6)


def test_kernel_transform_identity_init_is_centre_crop() -> None:
    conv = DynamicDepthwiseConv2d(8, (3, 5, 7), 1)
    w7 = conv.active_weight(7, 8)
    assert torch.equal(conv.active_weight(5, 8), w7[:, :, 1:6, 1:6])
    assert torch.equal(conv.active_weight(3, 8), w7[:, :, 2:5, 2:5])
    with torch.no_grad():
        conv.transforms["7to5"].mul_(2.0)
    assert torch.allclose(conv.active_weight(5, 8), 2 * w7[:, :, 1:6, 1:6])
    assert torch.allclose(conv.active_weight(3, 8), 2 * w7[:, :, 2:5, 2:5])
    assert set(conv.transforms) == {"7to5", "5to3"}
    assert conv.transforms["7to5"].shape == (25, 25) and conv.transforms["5to3"].shape == (9, 9)


def test_kernel_transforms_get_gradients() -> None:
    net = Supernet("mbv3_small28", generator=torch.Generator().manual_seed(0))
    arch = Arch.smallest("mbv3_small28")
    net.train()
    out = net(torch.randn(4, 1, 16, 16), arch)
    out.sum().backward()
    block = net.stages[0][0]
    assert block.depthwise.transforms["5to3"].grad is not None
    assert block.depthwise.transforms["5to3"].grad.abs().sum() > 0
    # blocks past the depth get no gradient
    assert net.stages[0][3].project.weight.grad is None


def test_supernet_resizes_input_and_rejects_foreign_archs() -> None:
    net = calibrated_supernet("mbv3_small28")
    arch = Arch.smallest("mbv3_small28")  # 16 px
    with torch.no_grad():
        y = net(torch.randn(3, 1, 28, 28), arch)
    assert y.shape == (3, 10)
    with pytest.raises(InvalidArchError, match="does not belong to this supernet"):
        net(torch.randn(1, 3, 128, 128), Arch.smallest("ofa_mbv3"))
    with pytest.raises(InvalidArchError, match=r"width_mult=1.1 is not allowed"):
        Supernet("ofa_mbv3", 1.1)


def test_extract_keeps_training_mode_and_bn_statistics() -> None:
    net = calibrated_supernet("mbv3_small28")
    arch = Arch.smallest("mbv3_small28")
    static = extract(net, arch)
    assert not static.training
    bns = [m for m in static.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(float(m.running_var.mean()) != 1.0 for m in bns)  # type: ignore[arg-type]
    net.train()
    assert extract(net, arch).training
