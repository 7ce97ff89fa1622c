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
    """A device id with no latency table."""


class InfeasibleBudgetError(OfaSearchError, ValueError):
    """A latency budget below the fastest subnet of the space on that device."""


class LutMissError(OfaSearchError, KeyError):
    """A unit that the device's latency table does not price."""


class FileFormatError(OfaSearchError, ValueError):
    """A table, checkpoint or predictor file that is truncated, foreign or of another version."""
