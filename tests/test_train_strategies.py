from __future__ import annotations

import pytest

from ofa_search.arch import Arch
from ofa_search.train import (
    ProgressiveShrinking,
    SandwichStrategy,
    SinglePathStrategy,
    cosine_lr,
    default_phases,
    make_strategy,
)
from ofa_search.train.strategies import Segment

SPACE = "mbv3_small28"


def test_sandwich_yields_largest_then_smallest_then_random() -> None:
    strategy = SandwichStrategy(SPACE, n_random=3, seed=1)
    tasks = strategy.step()
    assert [t.loss for t in tasks] == ["labels", "inplace", "inplace", "inplace", "inplace"]
    assert tasks[0].arch == Arch.largest(SPACE)
    assert tasks[1].arch == Arch.smallest(SPACE)
    assert len({t.arch for t in tasks[2:]}) == 3


def test_sandwich_restricted_resolutions() -> None:
    strategy = SandwichStrategy(SPACE, resolutions=(20, 16), seed=0)
    tasks = strategy.step()
    assert tasks[0].arch.resolution == 20 and tasks[1].arch.resolution == 16
    assert all(t.arch.resolution in (16, 20) for t in tasks)


@pytest.mark.parametrize("cls", [SandwichStrategy, SinglePathStrategy, ProgressiveShrinking])
def test_state_dict_resumes_same_archs(cls: type[SandwichStrategy]) -> None:
    a = cls(SPACE, seed=7)
    a.begin_epoch(0)
    a.step()
    state = a.state_dict()
    expected = [a.step() for _ in range(3)]
    b = cls(SPACE, seed=123)
    b.load_state_dict(state)
    assert [b.step() for _ in range(3)] == expected


def test_state_dict_of_another_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match="state of strategy 'spos', expected 'sandwich'"):
        SandwichStrategy(SPACE).load_state_dict(SinglePathStrategy(SPACE).state_dict())


def test_spos_is_uniform_over_the_space() -> None:
    strategy = SinglePathStrategy(SPACE, seed=0)
    archs = [strategy.step()[0].arch for _ in range(300)]
    assert {a.resolution for a in archs} == {16, 20, 24, 28, 32}
    assert {d for a in archs for d in a.depths} == {2, 3, 4}
    assert {k for a in archs for ks in a.kernels for k in ks} == {3, 5, 7}


def test_progressive_shrinking_phase_restrictions() -> None:
    strategy = ProgressiveShrinking(SPACE, phases=default_phases(SPACE, epochs=1), seed=0)
    expected = {  # phase: (kernels, depths, expands, subnets per step, loss)
        0: ({7}, {4}, {6}, 1, "labels"),
        1: ({3, 5, 7}, {4}, {6}, 1, "teacher"),
        2: ({3, 5, 7}, {3, 4}, {6}, 2, "teacher"),
        3: ({3, 5, 7}, {2, 3, 4}, {6}, 2, "teacher"),
        4: ({3, 5, 7}, {2, 3, 4}, {4, 6}, 4, "teacher"),
        5: ({3, 5, 7}, {2, 3, 4}, {3, 4, 6}, 4, "teacher"),
    }
    events = {}
    for epoch, (kernels, depths, expands, n, loss) in expected.items():
        events[epoch] = strategy.begin_epoch(epoch)
        steps = [strategy.step() for _ in range(60)]
        assert all(len(tasks) == n for tasks in steps)
        archs = [t.arch for tasks in steps for t in tasks]
        assert all(t.loss == loss for tasks in steps for t in tasks)
        assert {k for a in archs for ks in a.kernels for k in ks} == kernels
        assert {d for a in archs for d in a.depths} == depths
        assert {e for a in archs for es in a.expands for e in es} == expands
        assert {a.resolution for a in archs} == {16, 20, 24, 28, 32}  # elastic everywhere
    assert events == {0: [], 1: ["freeze_teacher"], 2: [], 3: [], 4: ["sort_channels"],
                      5: ["sort_channels"]}


def test_progressive_shrinking_multi_epoch_phases() -> None:
    strategy = ProgressiveShrinking(SPACE, phases=default_phases(SPACE, epochs=2))
    assert strategy.total_epochs == 12
    assert [strategy.phase_index(e) for e in range(12)] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert strategy.begin_epoch(2) == ["freeze_teacher"]
    assert strategy.begin_epoch(3) == []


def test_bad_options_are_reported() -> None:
    with pytest.raises(ValueError, match="unknown strategy 'bogus'; known: sandwich, spos, ps"):
        make_strategy("bogus", SPACE)
    with pytest.raises(ValueError, match="resolutions must be a non-empty subset"):
        SandwichStrategy(SPACE, resolutions=(17,))
    with pytest.raises(ValueError, match="n_random must be >= 0"):
        SandwichStrategy(SPACE, n_random=-1)
    with pytest.raises(ValueError, match="subnets_per_step needs 6 entries"):
        default_phases(SPACE, subnets_per_step=(1, 2))


def test_cosine_lr_warmup_and_segments() -> None:
    segments = [Segment(2, 1.0), Segment(1, 0.5)]
    lrs = [cosine_lr(s, segments, steps_per_epoch=4, warmup_epochs=1) for s in range(13)]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0)
    assert lrs[7] < lrs[5] < lrs[4]
    assert lrs[8:12] == pytest.approx([0.125, 0.25, 0.375, 0.5])
    assert lrs[12] == 0.0
