from __future__ import annotations

import numpy as np
import optuna
import pytest

from ofa_search.arch import Arch
from ofa_search.errors import UnsupportedPrecisionError
from ofa_search.search import ArchEncoding, CachedEvaluator
from ofa_search.space import get_space


@pytest.mark.parametrize("space", ["mbv3_small28", "ofa_mbv3"])
def test_round_trip(space: str) -> None:
    enc = ArchEncoding(space)
    spec = get_space(space)
    dists = enc.distributions()
    width = 1 if len(spec.width_mults) > 1 else 0
    assert len(dists) == 1 + width + spec.num_stages * (1 + 2 * spec.max_depth)
    rng = np.random.default_rng(0)
    for _ in range(50):
        arch = enc.sample(rng)
        params = enc.encode(arch)
        assert set(params) == set(dists)
        assert all(params[k] in dists[k].choices for k in params)
        assert enc.decode(params) == arch


def test_suggest_on_a_trial_decodes_what_was_suggested() -> None:
    enc = ArchEncoding("mbv3_small28")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    trial = study.ask()
    arch = enc.suggest(trial)
    assert enc.decode(trial.params) == arch
    assert len(trial.params) == 37


def test_inactive_blocks_do_not_make_distinct_evaluations(proxy) -> None:
    enc = ArchEncoding("mbv3_small28")
    arch = Arch.parse("r28_w1.0_k3e4-k5e6_k3e3-k3e3-k7e6_k5e4-k5e4_k3e6-k3e6-k3e6-k3e6",
                      "mbv3_small28")
    a = enc.encode(arch)
    b = dict(a)
    # stage 0 has depth 2: blocks 2 and 3 are inactive; change them
    b["s0.b2.k"], b["s0.b3.e"] = 7, 6
    assert a != b
    assert enc.decode(a) == enc.decode(b) == arch
    evaluator = CachedEvaluator(proxy, proxy)
    first, second = evaluator.evaluate([enc.decode(a), enc.decode(b)])
    assert first == second
    assert evaluator.predictor_calls == 1 and evaluator.requests == 2
    evaluator.evaluate([enc.decode(b)])
    assert evaluator.predictor_calls == 1
    assert proxy.calls == 2  # one arch, priced once as accuracy and once as "latency"


def test_table_restricts_resolutions_and_width() -> None:
    enc = ArchEncoding.for_table("ofa_mbv3", resolutions=(160, 176, 192, 208, 224),
                                 width_mult=1.2)
    dists = enc.distributions()
    assert dists["res"].choices == (160, 176, 192, 208, 224)
    assert "w" not in dists
    rng = np.random.default_rng(0)
    for _ in range(20):
        arch = enc.sample(rng)
        assert arch.resolution in (160, 176, 192, 208, 224) and arch.width_mult == 1.2
        mutated = enc.project(arch.mutate(rng, 1.0), rng)
        assert mutated.resolution in (160, 176, 192, 208, 224)
    assert len(enc.smallest()) == 5


def test_unsupported_precision_is_a_clear_error() -> None:
    with pytest.raises(UnsupportedPrecisionError,
                       match=r"precision 'int8' is not supported.*fp32"):
        ArchEncoding("mbv3_small28", precisions=("int8",))
