from __future__ import annotations

import pytest
import torch
from torch import nn

from ofa_search.arch import Arch
from ofa_search.data import iterate_batches, load_dataset
from ofa_search.nn import StaticSubnet, Supernet, extract
from ofa_search.train import evaluate, recalibrate_bn

SPACE = "mbv3_small28"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _subnet() -> StaticSubnet:
    net = Supernet(SPACE, generator=torch.Generator().manual_seed(0))
    return extract(net, Arch.smallest(SPACE))


def _stem(net: StaticSubnet) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    stem = net.units[0]
    assert isinstance(stem, nn.Sequential)
    conv, bn = stem[0], stem[1]
    assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
    return conv, bn


def test_recalibrate_sets_exact_batch_statistics() -> None:
    net = _subnet()
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(16, 1, 16, 16, generator=gen) for _ in range(2)]
    conv, bn = _stem(net)
    assert bn.running_mean is not None and bn.running_var is not None
    bn.running_mean.fill_(5.0)
    out = recalibrate_bn(net, batches)
    assert out is net and not net.training
    assert bn.momentum == 0.1  # restored
    with torch.no_grad():
        pre = torch.cat([conv(x) for x in batches])  # the stem conv: BN's input
    torch.testing.assert_close(bn.running_mean, pre.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
    per_batch_var = torch.stack([conv(x).detach().var((0, 2, 3)) for x in batches])
    torch.testing.assert_close(bn.running_var, per_batch_var.mean(0), rtol=1e-5, atol=1e-6)


def test_recalibrate_draws_no_global_random_numbers() -> None:
    net = _subnet()
    state = torch.get_rng_state()
    recalibrate_bn(net, [torch.zeros(4, 1, 16, 16)])
    assert torch.equal(torch.get_rng_state(), state)


def test_recalibrate_needs_a_batch() -> None:
    with pytest.raises(ValueError, match="at least one batch"):
        recalibrate_bn(_subnet(), [])


def test_evaluate_matches_a_hand_count() -> None:
    data = load_dataset("digits", resolution=16)
    net = recalibrate_bn(_subnet(), [x for x, _ in iterate_batches(data.val, 64, shuffle=False)])
    acc = evaluate(net, data.val, 16, batch_size=50)
    with torch.no_grad():
        x, y = data.val.batch(torch.arange(len(data.val)))
        expected = (net(x).argmax(1) == y).float().mean().item()
    assert acc == pytest.approx(expected)
    assert 0.0 <= acc <= 1.0
