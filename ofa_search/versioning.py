"""The one check every versioned file format makes: is this a version we read?"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
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


def read_format_json(path: Path, *, fmt: str, version: int, what: str) -> dict[str, Any]:
    """The JSON object in ``path`` if it is a ``{"format": fmt, "format_version": version}``
    file; otherwise a one-line :class:`FileFormatError` naming the file by its name."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FileFormatError(f"{path.name}: cannot read {what}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise FileFormatError(f"{path.name} is not a {what} file")
    require_version(data, key="format_version", expected=version, what=what,
                    source=path.name)
    return data


def now_iso() -> str:
    """The current UTC time, ISO 8601, to the second (the timestamp of every record)."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()
