"""Errors of pruning and early exits, and the checks that raise them before any work.

Each is one line that names the bad value and the allowed range, so the CLI can print it
as is (exit code 2) and the service can answer 4xx.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ofa_search.errors import OfaSearchError


class CompressError(OfaSearchError, ValueError):
    """A pruning or early-exit run that cannot start or resume as asked."""


class PruningRatioError(CompressError):
    """A pruning ratio outside [0, 1)."""


class ExitStageError(CompressError):
    """An exit after a stage the subnet does not have (or where the final head already is)."""


class ThresholdError(CompressError):
    """A confidence threshold outside (0, 1], or not one per exit."""


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_ratio(ratio: float, name: str = "ratio") -> float:
    """``ratio`` as a float when it lies in [0, 1) (the share of channels or weights to
    remove: 1 would remove them all); :class:`PruningRatioError` otherwise."""
    if not _is_number(ratio) or not math.isfinite(ratio) or not 0.0 <= ratio < 1.0:
        raise PruningRatioError(f"{name} must be in [0, 1) (the share to remove), "
                                f"got {ratio!r}")
    return float(ratio)


def check_exit_stages(after_stages: Sequence[int], num_stages: int) -> tuple[int, ...]:
    """Sorted, unique stage indices in ``[0, num_stages - 2]``: an exit goes after the last
    block of its stage, and after the last stage sits the subnet's own head.
    :class:`ExitStageError` for an empty list, a duplicate or a stage outside that range."""
    stages = list(after_stages)
    if not stages:
        raise ExitStageError("give at least one stage to put an exit after")
    last = num_stages - 1
    for stage in stages:
        if isinstance(stage, bool) or not isinstance(stage, int):
            raise ExitStageError(f"exit stages must be integers, got {stage!r}")
        if stage == last:
            raise ExitStageError(f"cannot put an exit after stage {stage}: the subnet's own "
                                 f"head is there; exits go after stages 0..{last - 1}")
        if not 0 <= stage < last:
            raise ExitStageError(f"the subnet has no stage {stage}: it has stages 0..{last}, "
                                 f"and exits go after stages 0..{last - 1}")
    if len(set(stages)) != len(stages):
        raise ExitStageError(f"exit stages must not repeat, got {stages}")
    return tuple(sorted(stages))


def check_thresholds(thresholds: float | Sequence[float], n_exits: int) -> tuple[float, ...]:
    """One confidence threshold per exit, each in (0, 1]; a single number applies to every
    exit. :class:`ThresholdError` otherwise."""
    if isinstance(thresholds, str):
        raise ThresholdError(f"confidence thresholds must be numbers, got {thresholds!r}")
    values: list[object] = ([thresholds] if isinstance(thresholds, int | float)
                            else list(thresholds))
    if len(values) == 1 and n_exits > 1:
        values = values * n_exits
    if len(values) != n_exits:
        raise ThresholdError(f"give one threshold per exit ({n_exits}), or one for all; "
                             f"got {len(values)}")
    out: list[float] = []
    for value in values:
        if not isinstance(value, int | float) or isinstance(value, bool) \
                or not math.isfinite(value) or not 0.0 < value <= 1.0:
            raise ThresholdError(f"confidence thresholds must be in (0, 1], got {value!r}")
        out.append(float(value))
    return tuple(out)


def check_positive(value: int, name: str, minimum: int = 1) -> int:
    """An integer option that must be ``>= minimum`` (:class:`CompressError` otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CompressError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value
