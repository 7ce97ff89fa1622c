"""Shared set-up of the compression tests: the space, fast timing and settings, and an
untrained checkpoint."""

from __future__ import annotations

from pathlib import Path

from supernet_helpers import save_untrained_checkpoint

from ofa_search.profiling.timing import TimingConfig

SPACE = "mbv3_small28"
TINY = TimingConfig(warmup=1, min_runs=3, max_runs=5, time_cap_s=0.05)
FAST = {"calib_batches": 2, "batch_size": 16, "rounds": 1, "timing": TINY, "quiet": True}


def untrained_checkpoint(folder: Path) -> Path:
    """``folder/checkpoint.pt``: an untrained, BN-calibrated supernet of :data:`SPACE`."""
    return save_untrained_checkpoint(SPACE, folder / "checkpoint.pt")
