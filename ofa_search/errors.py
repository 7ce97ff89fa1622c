"""The project's exception tree.

Every error that bad user input can cause derives from :class:`OfaSearchError`, so the
CLI can turn it into one line and exit code 2, and the HTTP service into a 4xx answer.
Most also derive from :class:`ValueError`, so library users can catch them the usual way.
"""

from __future__ import annotations


class OfaSearchError(Exception):
    """Base class of every error raised on purpose by ofa-search."""


class UnknownSpaceError(OfaSearchError, ValueError):
    """A search-space name that is not registered."""


class InvalidArchError(OfaSearchError, ValueError):
    """An architecture that is malformed or lies outside its search space."""


class UnknownDeviceError(OfaSearchError, ValueError):
    """A device id with no latency table; ``known`` lists the ids that have one."""

    def __init__(self, message: str, *, known: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.known = tuple(known)


class InfeasibleBudgetError(OfaSearchError, ValueError):
    """A latency budget below the fastest subnet of the space on that device;
    ``min_latency_ms`` is the lowest achievable predicted latency there."""

    def __init__(self, message: str, *, min_latency_ms: float | None = None) -> None:
        super().__init__(message)
        self.min_latency_ms = min_latency_ms


class UnsupportedPrecisionError(OfaSearchError, ValueError):
    """A precision that a device's space (or the search) does not offer."""


class AccuracyLossError(OfaSearchError, ValueError):
    """An int8 export that loses more test accuracy to its fp32 twin than allowed."""


class LutMissError(OfaSearchError, KeyError):
    """A unit that the device's latency table does not price."""


class FileFormatError(OfaSearchError, ValueError):
    """A table, checkpoint or predictor file that is truncated, foreign or of another version."""
