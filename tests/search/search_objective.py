"""The deterministic test objective of the search tests (and nothing else).

``MacsProxy`` is the "accuracy" the search tests optimise: ``0.6 + 0.1·ln(MACs / 1e6) +
0.002·resolution`` (a smooth function, increasing in MACs and resolution; ``predict_std``
is a constant 0.01). It is not a model of any network; it only makes the best arch under a
budget well defined, so that a brute-force oracle can check the search.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ofa_search.arch import Arch
from ofa_search.units import count_macs


class MacsProxy:
    """The test objective (see the module docstring); counts the archs it priced."""

    def __init__(self, space: str = "mbv3_small28") -> None:
        self.space = space
        self.calls = 0

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        self.calls += len(archs)
        return np.array([0.6 + 0.1 * np.log(count_macs(a) / 1e6) + 0.002 * a.resolution
                         for a in archs])

    def predict_std(self, archs: Sequence[Arch]) -> np.ndarray:
        return np.full(len(archs), 0.01)
