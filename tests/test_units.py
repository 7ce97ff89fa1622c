"""MAC and parameter counting: hand-computed cases and agreement with the real modules."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from ofa_search.arch import Arch
from ofa_search.nn import build_static
from ofa_search.units import HeadUnit, MBConvUnit, StemUnit, arch_units, count_macs, count_params


def hooked_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """once-for-all's counting rule, applied with forward hooks on the real layers."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += m.in_channels * out.numel() * kh * kw // m.groups

    def linear_hook(m: nn.Linear, _inp: tuple, _out: torch.Tensor) -> None:
        nonlocal total
        total += m.in_features * m.out_features

    handles = []
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    module.eval()
    with torch.no_grad():
        module(torch.zeros(input_shape))
    for h in handles:
        h.remove()
    return total


def test_stem_by_hand() -> None:
    unit = StemUnit(3, 16, 224, 2, "hswish")
    assert unit.out_size == 112
    assert unit.macs() == 3 * 16 * 9 * 112 * 112
    assert unit.params() == 3 * 16 * 9 + 2 * 16


def test_mbconv_by_hand() -> None:
    # in 8 -> out 8, mid 24, 5x5, stride 1, SE 8, 6x6 input
    unit = MBConvUnit(8, 8, 24, 6, kernel=5, stride=1, act="relu", se_channels=8)
    expand = 8 * 24 * 36
    depthwise = 24 * 25 * 36
    se = 24 * 8 + 8 * 24
    project = 24 * 8 * 36
    assert unit.macs() == expand + depthwise + se + project
    assert unit.residual
    assert unit.params() == (8 * 24 + 48) + (24 * 25 + 48) + (24 * 8 + 8 + 8 * 24 + 24) + (
        24 * 8 + 16)
    strided = MBConvUnit(8, 16, 24, 7, kernel=3, stride=2, act="hswish", se_channels=0)
    assert strided.out_size == 4 and not strided.residual
    assert strided.macs() == 8 * 24 * 49 + 24 * 9 * 16 + 24 * 16 * 16


def test_head_by_hand() -> None:
    unit = HeadUnit(48, 192, 256, 10, 4)
    assert unit.macs() == 48 * 192 * 16 + 192 * 256 + 256 * 10
    assert unit.params() == 48 * 192 + 2 * 192 + 192 * 256 + 256 * 10 + 10


@pytest.mark.parametrize("space", ["mbv3_small28", "ofa_mbv3"])
def test_analytic_counts_equal_module_counts(space: str) -> None:
    rng = np.random.default_rng(0)
    for _ in range(4):
        arch = Arch.sample(space, rng)
        net = build_static(arch)
        assert count_params(arch) == sum(p.numel() for p in net.parameters())
        assert count_macs(arch) == hooked_macs(net, net.input_shape())


def test_units_chain_shapes() -> None:
    arch = Arch.sample("ofa_mbv3", 4)
    units = arch_units(arch)
    assert units[0].kind == "stem" and units[-1].kind == "head"
    assert len(units) == 3 + arch.num_blocks
    for prev, nxt in itertools.pairwise(units):
        assert nxt.in_size == prev.out_size
    assert units[-1].in_size == -(-arch.resolution // 32)  # 5 stride-2 stages after the stem
    keys = [u.key for u in units]
    assert all(":" in k for k in keys)


def test_count_at_other_resolution() -> None:
    arch = Arch.largest("ofa_mbv3", 1.0)
    assert count_macs(arch, 224) == count_macs(arch)
    assert count_macs(arch, 160) < count_macs(arch)


def test_build_static_is_reproducible_with_a_generator() -> None:
    arch = Arch.sample("mbv3_small28", 2)
    a = build_static(arch, torch.Generator().manual_seed(5))
    b = build_static(arch, torch.Generator().manual_seed(5))
    c = build_static(arch, torch.Generator().manual_seed(6))
    pairs = list(zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert all(torch.equal(x, y) for x, y in pairs)
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                      c.state_dict().values(), strict=True))
