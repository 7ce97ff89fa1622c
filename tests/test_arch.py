"""Arch: validation, string and dict round trips, encoding, seeded sampling, genetics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ofa_search.arch import Arch, feature_names, parse_arch
from ofa_search.errors import InvalidArchError
from ofa_search.space import get_space, list_spaces

SPACES = ["ofa_mbv3", "mbv3_small28"]


@st.composite
def archs(draw: st.DrawFn, space_name: str | None = None) -> Arch:
    name = space_name or draw(st.sampled_from(SPACES))
    space = get_space(name)
    depths = [draw(st.sampled_from(space.depths)) for _ in space.stages]
    return Arch(
        space=name,
        resolution=draw(st.sampled_from(space.resolutions)),
        width_mult=draw(st.sampled_from(space.width_mults)),
        depths=tuple(depths),
        kernels=tuple(tuple(draw(st.sampled_from(space.kernel_sizes)) for _ in range(d))
                      for d in depths),
        expands=tuple(tuple(draw(st.sampled_from(space.expand_ratios)) for _ in range(d))
                      for d in depths),
    )


@settings(max_examples=200, deadline=None)
@given(archs())
def test_string_round_trip(arch: Arch) -> None:
    text = arch.to_string()
    assert Arch.parse(text, arch.space) == arch
    assert parse_arch(text, arch.space) == arch
    assert hash(Arch.parse(text, arch.space)) == hash(arch)


@settings(max_examples=100, deadline=None)
@given(archs())
def test_dict_and_json_round_trip(arch: Arch) -> None:
    data = json.loads(json.dumps(arch.to_dict()))
    assert Arch.from_dict(data) == arch
    assert parse_arch(json.dumps(data), arch.space) == arch


@settings(max_examples=100, deadline=None)
@given(archs("ofa_mbv3"))
def test_ofa_dict_round_trip(arch: Arch) -> None:
    ofa = arch.to_ofa_dict()
    assert len(ofa["ks"]) == len(ofa["e"]) == 20 and len(ofa["d"]) == 5
    assert Arch.from_ofa_dict(ofa) == arch
    assert parse_arch(json.dumps(ofa), "ofa_mbv3") == arch


def test_string_example_from_docs() -> None:
    text = "r28_w1.0_k3e4-k5e6_k3e3-k3e3-k7e6_k5e4-k5e4_k3e6-k3e6-k3e6-k3e6"
    arch = Arch.parse(text, "mbv3_small28")
    assert arch.depths == (2, 3, 2, 4)
    assert arch.kernels[1] == (3, 3, 7) and arch.expands[0] == (4, 6)
    assert arch.precisions == ("fp32",) * 4
    assert arch.to_string() == text


def test_ofa_dict_ignores_inactive_slots_and_accepts_image_size() -> None:
    ks = [7] * 20
    ks[2] = ks[3] = 3  # inactive in stage 0 with depth 2: must not matter
    data = {"ks": ks, "e": [6] * 20, "d": [2, 4, 4, 4, 4], "image_size": [192], "w": 1.2}
    a = Arch.from_ofa_dict(data)
    b = Arch.from_ofa_dict({**data, "ks": [7] * 20})
    assert a == b and a.resolution == 192 and a.width_mult == 1.2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("r28_w1.0_k3e3", "has 3 '_'-separated fields; expected r<res>_w<width> and 4 stages"),
        ("x28_w1.0_k3e3-k3e3_k3e3-k3e3_k3e3-k3e3_k3e3-k3e3", "bad resolution token 'x28'"),
        ("r28_wide_k3e3-k3e3_k3e3-k3e3_k3e3-k3e3_k3e3-k3e3", "bad width token 'wide'"),
        ("r28_w1.0_k3e3-k3x3_k3e3-k3e3_k3e3-k3e3_k3e3-k3e3", "bad block token 'k3x3' in stage 0"),
        ("r29_w1.0_k3e3-k3e3_k3e3-k3e3_k3e3-k3e3_k3e3-k3e3",
         r"resolution=29 is not allowed in space 'mbv3_small28'; choices: 16, 20, 24, 28, 32"),
        ("r28_w1.2_k3e3-k3e3_k3e3-k3e3_k3e3-k3e3_k3e3-k3e3", r"width_mult=1.2 is not allowed"),
        ("r28_w1.0_k4e3-k3e3_k3e3-k3e3_k3e3-k3e3_k3e3-k3e3",
         r"kernels\[0\]\[0\]=4 is not allowed .*choices: 3, 5, 7"),
        ("r28_w1.0_k3e3-k3e3_k3e3-k3e5_k3e3-k3e3_k3e3-k3e3",
         r"expands\[1\]\[1\]=5 is not allowed .*choices: 3, 4, 6"),
        ("r28_w1.0_k3e3_k3e3-k3e3_k3e3-k3e3_k3e3-k3e3", r"depths\[0\]=1 is not allowed"),
        ("r28_w1.0_k3e3-k3e3-k3e3-k3e3-k3e3_k3e3-k3e3_k3e3-k3e3_k3e3-k3e3",
         r"depths\[0\]=5 is not allowed .*choices: 2, 3, 4"),
        ("r28_w1.0_k3e3-k3e3@int3_k3e3-k3e3_k3e3-k3e3_k3e3-k3e3",
         r"precisions\[0\]='int3' is not allowed"),
    ],
)
def test_parse_errors_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(InvalidArchError, match=message):
        Arch.parse(text, "mbv3_small28")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kernels": ((3, 3), (3, 3), (3, 3), (3,))}, r"kernels\[3\] has 1 blocks but depths"),
        ({"depths": (2, 2, 2)}, "depths has 3 stages, space 'mbv3_small28' has 4"),
        ({"resolution": 28.0}, "resolution=28.0 is not allowed"),
        ({"resolution": True}, "resolution=True is not allowed"),
        ({"kernels": "k3"}, "kernels must be a list"),
        ({"space": "nope"}, "unknown search space 'nope'"),
    ],
)
def test_construction_errors(change: dict, message: str) -> None:
    base = Arch.smallest("mbv3_small28")
    with pytest.raises(ValueError, match=message):
        base.replace(**change)


def test_precisions_per_stage_round_trip_and_are_checked_against_the_space() -> None:
    arch = Arch.smallest("mbv3_small28_mp").replace(
        precisions=("int8", "fp32", "binary", "fp32"))
    text = arch.to_string()
    assert "@int8" in text and "@binary" in text
    assert Arch.parse(text, "mbv3_small28_mp") == arch
    assert Arch.from_dict(arch.to_dict()) == arch
    with pytest.raises(InvalidArchError, match=r"precisions\[0\]"):
        Arch.smallest("mbv3_small28").replace(precisions=("int8", "fp32", "fp32", "fp32"))


def test_from_dict_rejects_unknown_and_missing_fields() -> None:
    data = Arch.smallest("mbv3_small28").to_dict()
    with pytest.raises(InvalidArchError, match=r"unknown arch field\(s\) \['kernel'\]"):
        Arch.from_dict({**data, "kernel": 3})
    del data["depths"]
    with pytest.raises(InvalidArchError, match=r"missing field\(s\) \['depths'\]"):
        Arch.from_dict(data)
    with pytest.raises(InvalidArchError, match="expected 'ofa_mbv3'"):
        Arch.from_dict(Arch.smallest("mbv3_small28").to_dict(), "ofa_mbv3")


def test_bad_json_arch() -> None:
    with pytest.raises(InvalidArchError, match="looks like JSON but does not parse"):
        parse_arch("{ks: 1}", "ofa_mbv3")
    with pytest.raises(InvalidArchError, match="'ks' has 3 entries; expected 20"):
        parse_arch('{"ks": [3,3,3], "e": [3], "d": [2,2,2,2,2], "r": 224}', "ofa_mbv3")


@pytest.mark.parametrize("name", list_spaces())
def test_encode_is_fixed_length_and_stable(name: str) -> None:
    rng = np.random.default_rng(0)
    space = get_space(name)
    n = len(feature_names(space))
    vectors = {}
    for _ in range(50):
        arch = Arch.sample(space, rng)
        v = arch.encode()
        assert v.shape == (n,) and v.dtype == np.float32
        assert set(np.unique(v)) <= {0.0, 1.0}
        # one resolution, one width, per stage one depth and one precision, per active block
        # one kernel and one expand
        assert v.sum() == 2 + 2 * space.num_stages + 2 * arch.num_blocks
        np.testing.assert_array_equal(v, Arch.parse(arch.to_string(), space).encode())
        vectors[arch] = v
    assert len({v.tobytes() for v in vectors.values()}) == len(vectors)


def test_encode_ignores_nothing_active() -> None:
    a = Arch.smallest("mbv3_small28")
    b = a.replace(kernels=((5, 3), (3, 3), (3, 3), (3, 3)))
    assert not np.array_equal(a.encode(), b.encode())


@pytest.mark.parametrize("name", SPACES)
def test_seeded_sampling_reproducible(name: str) -> None:
    first = [Arch.sample(name, np.random.default_rng(7)) for _ in range(3)]
    again = [Arch.sample(name, np.random.default_rng(7)) for _ in range(3)]
    assert first == again
    rng = np.random.default_rng(1)
    many = {Arch.sample(name, rng) for _ in range(200)}
    assert len(many) == 200
    assert Arch.sample(name, 3) == Arch.sample(name, 3)


def test_sampling_is_uniform_per_choice() -> None:
    rng = np.random.default_rng(0)
    samples = [Arch.sample("mbv3_small28", rng) for _ in range(3000)]
    res = np.array([a.resolution for a in samples])
    for r in (16, 20, 24, 28, 32):
        assert abs((res == r).mean() - 0.2) < 0.03
    depth0 = np.array([a.depths[0] for a in samples])
    for d in (2, 3, 4):
        assert abs((depth0 == d).mean() - 1 / 3) < 0.04


def test_largest_and_smallest() -> None:
    big, small = Arch.largest("ofa_mbv3"), Arch.smallest("ofa_mbv3")
    assert big.resolution == 224 and big.width_mult == 1.2 and big.depths == (4,) * 5
    assert all(k == 7 for ks in big.kernels for k in ks)
    assert small.resolution == 128 and small.width_mult == 1.0 and small.depths == (2,) * 5
    assert Arch.largest("ofa_mbv3", 1.0).width_mult == 1.0


def test_mutate_and_crossover_stay_valid_and_seeded() -> None:
    rng = np.random.default_rng(0)
    parent = Arch.sample("ofa_mbv3", rng, width_mult=1.0)
    other = Arch.sample("ofa_mbv3", rng, width_mult=1.0)
    assert parent.mutate(np.random.default_rng(1), 0.0) == parent
    changed = [parent.mutate(np.random.default_rng(s), 0.5) for s in range(20)]
    assert sum(c != parent for c in changed) >= 18
    assert parent.mutate(np.random.default_rng(5), 0.3) == parent.mutate(
        np.random.default_rng(5), 0.3)
    children = [parent.crossover(other, np.random.default_rng(s)) for s in range(20)]
    for child in children:
        assert child.width_mult == 1.0
        assert child.resolution in (parent.resolution, other.resolution)
        for s, d in enumerate(child.depths):
            assert d in (parent.depths[s], other.depths[s])
    assert parent.crossover(parent, 3) == parent
    with pytest.raises(ValueError, match="prob must be in"):
        parent.mutate(rng, 1.5)
    with pytest.raises(ValueError, match="different spaces/widths"):
        parent.crossover(Arch.smallest("mbv3_small28"), rng)
