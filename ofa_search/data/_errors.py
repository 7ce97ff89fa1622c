"""The data layer's exception."""

from __future__ import annotations

from ofa_search.errors import OfaSearchError


class DatasetError(OfaSearchError, ValueError):
    """A dataset that is unknown, missing, malformed, or asked for with invalid options."""
