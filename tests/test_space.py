"""Contract tests run over every registered search-space preset, plus the OFA constants."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import pytest

from ofa_search.arch import Arch
from ofa_search.errors import UnknownSpaceError
from ofa_search.space import (
    SearchSpace,
    StageSpec,
    get_space,
    list_spaces,
    make_divisible,
    register_space,
)
from ofa_search.units import count_macs

DATA = Path(__file__).parent / "data"
SPACES = list_spaces()


def test_presets_are_registered() -> None:
    assert {"ofa_mbv3", "mbv3_small28"} <= set(SPACES)


def test_unknown_space_lists_known_ones() -> None:
    with pytest.raises(UnknownSpaceError, match=r"unknown search space 'nope'; known: .*ofa_mbv3"):
        get_space("nope")


@pytest.mark.parametrize("name", SPACES)
def test_preset_contract(name: str) -> None:
    space = get_space(name)
    assert space.name == name
    with pytest.raises(Exception):  # frozen  # noqa: B017
        space.name = "x"  # type: ignore[misc]
    assert space.size() > 1
    for width in space.width_mults:
        w = space.widths(width)
        assert len(w.stages) == space.num_stages
        assert all(c % space.channel_divisor == 0 for c in w.stages)
        for arch in (Arch.smallest(space, width), Arch.largest(space, width)):
            assert count_macs(arch) > 0
    assert count_macs(Arch.smallest(space)) < count_macs(Arch.largest(space))


@pytest.mark.parametrize(
    ("value", "expected"),
    [(16 * 1.2, 24), (24 * 1.2, 32), (40 * 1.2, 48), (80 * 1.2, 96), (112 * 1.2, 136),
     (160 * 1.2, 192), (960 * 1.2, 1152), (1280 * 1.2, 1536), (16, 16), (3, 8), (16 * 3, 48),
     (24 * 4, 96), (144 // 4, 40), (240 // 4, 64), (13, 16), (11, 16), (4, 8)],
)
def test_make_divisible(value: float, expected: int) -> None:
    assert make_divisible(value, 8) == expected


def test_ofa_mbv3_matches_once_for_all_constants() -> None:
    space = get_space("ofa_mbv3")
    assert space.resolutions == tuple(range(128, 225, 4))
    assert space.width_mults == (1.0, 1.2)
    assert [(s.width, s.stride, s.act, s.se) for s in space.stages] == [
        (24, 2, "relu", False), (40, 2, "relu", True), (80, 2, "hswish", False),
        (112, 1, "hswish", True), (160, 2, "hswish", True)]
    w10, w12 = space.widths(1.0), space.widths(1.2)
    assert (w10.stem, w10.first_block, w10.stages, w10.final_expand, w10.feature_mix) == (
        16, 16, (24, 40, 80, 112, 160), 960, 1280)
    assert (w12.stem, w12.first_block, w12.stages, w12.final_expand, w12.feature_mix) == (
        24, 24, (32, 48, 96, 136, 192), 1152, 1536)
    # stage 2 first block at width 1.0: in 24, e=6 -> mid 144, SE 40 (OFA's table)
    assert space.mid_channels(24, 6) == 144 and space.se_channels(144) == 40
    assert space.mid_channels(40, 3) == 120 and space.se_channels(120) == 32
    # size: 25 resolutions x 2 widths x (9^2 + 9^3 + 9^4)^5
    assert space.size() == 25 * 2 * (81 + 729 + 6561) ** 5


def _released() -> list[dict]:
    return json.loads((DATA / "ofa_released_subnets.json").read_text())["archs"]


@pytest.mark.parametrize("ref", _released(), ids=lambda r: r["name"])
def test_released_ofa_subnet_macs(ref: dict) -> None:
    """All 35 published OFA-MobileNetV3 subnets reproduce once-for-all's MAC counts."""
    resolution = ref["r"]
    # some released subnets use resolutions outside 128-224; count at their own resolution
    arch = Arch.from_ofa_dict({**ref, "r": 224, "w": ref["width_mult"]})
    macs = count_macs(arch, resolution) / 1e6
    assert macs == pytest.approx(ref["macs_recount_M"], abs=5e-4)
    if ref["readme_macs_M"] is not None and ref["name"] != "note10_lat@8ms_top1@71.4_finetune@25":
        # the README rounds (3 entries round x.46-x.47 up; note10@8ms's 79M is a typo)
        assert abs(macs - ref["readme_macs_M"]) <= 0.55


def test_size_counts_distinct_archs_by_enumeration() -> None:
    tiny = register_space(SearchSpace(
        name="tiny_enum", in_channels=1, num_classes=2, stem_width=8, stem_stride=1,
        first_block_width=8, stages=(StageSpec(8, 1, "relu", False), StageSpec(16, 2, "hswish",
                                                                                 True)),
        final_expand=16, feature_mix=16, kernel_sizes=(3, 5), expand_ratios=(3,),
        depths=(1, 2), resolutions=(8, 12)))
    archs = set()
    for res, d0, d1 in itertools.product(tiny.resolutions, tiny.depths, tiny.depths):
        for k0 in itertools.product(tiny.kernel_sizes, repeat=d0):
            for k1 in itertools.product(tiny.kernel_sizes, repeat=d1):
                archs.add(Arch(space="tiny_enum", resolution=res, width_mult=1.0,
                               depths=(d0, d1), kernels=(k0, k1), expands=((3,) * d0, (3,) * d1)))
    assert tiny.size() == len(archs) == 2 * (2 + 4) ** 2


@pytest.mark.parametrize(
    ("change", "message"),
    [({"kernel_sizes": (5, 3)}, "kernel_sizes must be sorted"),
     ({"kernel_sizes": (4,)}, "kernel sizes must be odd"),
     ({"depths": ()}, "depths must not be empty"),
     ({"precisions": ("fp16",)}, "precisions must be among"),
     ({"name": ""}, "name must not be empty")],
)
def test_space_validation(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replace(get_space("mbv3_small28"), **change)


def test_registering_a_different_space_under_a_taken_name_fails() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_space(replace(get_space("mbv3_small28"), num_classes=3))
