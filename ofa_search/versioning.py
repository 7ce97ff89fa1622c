"""The one check every versioned file format makes: is this a version we read?"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ofa_search.errors import FileFormatError


def require_version(data: Mapping[str, Any], *, key: str, expected: int, what: str,
                    source: str | None = None) -> None:
    """Raise :class:`FileFormatError` unless ``data[key] == expected``; the message names
    ``what`` was read (and from where), the version found and the one this release reads."""
    version = data.get(key)
    if version != expected:
        prefix = f"{source}: " if source else ""
        raise FileFormatError(f"{prefix}unsupported {what} {key} {version!r}; this "
                              f"ofa-search reads version {expected}")
