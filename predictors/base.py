"""The predictor interface: fit on archs and targets, predict batches, save and load JSON."""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ofa_search.arch import Arch
from ofa_search.atomic import atomic_write_json
from ofa_search.errors import FileFormatError

LATENCY_KINDS = ("lut", "learned")
"""The latency predictors a device can have: its table (``lut``) or one fitted on measured
subnets (``learned``). Here, not in :mod:`predictors.loading`, so the CLI can check the
name without loading scikit-learn and torch."""


class Predictor(ABC):
    """A model of one scalar property of subnets (latency, accuracy, ...).

    Subclasses set :attr:`kind` and :attr:`format_version`, implement :meth:`fit`,
    :meth:`predict`, :meth:`state` and :meth:`from_state`; :meth:`save` / :meth:`load`
    wrap the state in a versioned JSON envelope written atomically.
    """

    kind: ClassVar[str] = "predictor"
    format_version: ClassVar[int] = 1

    @abstractmethod
    def fit(self, archs: Sequence[Arch], targets: Sequence[float] | np.ndarray) -> Predictor:
        """Fit to ``targets`` (one per arch); returns ``self``."""

    @abstractmethod
    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        """One prediction per arch, as a float array."""

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """JSON-ready state that :meth:`from_state` restores."""

    @classmethod
    @abstractmethod
    def from_state(cls, state: dict[str, Any]) -> Predictor:
        """Rebuild a predictor from :meth:`state`'s output (raise ``KeyError``,
        ``TypeError`` or ``ValueError`` on malformed input)."""

    def identity(self) -> str:
        """``sha256:<16 hex digits>`` of :meth:`state`: which fitted predictor this is
        (fronts and calibrations computed with another one are stale)."""
        text = json.dumps(self.state(), sort_keys=True, default=str)
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``{"kind", "format_version", "state"}`` to ``path`` atomically."""
        return atomic_write_json(path, {"kind": self.kind, "format_version": self.format_version,
                                        "state": self.state()})

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Predictor:
        """Read a file written by :meth:`save`.

        Raises :class:`FileFormatError` for unreadable or truncated JSON, another kind, an
        unknown ``format_version`` or a malformed state.
        """
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FileFormatError(f"{path}: cannot read predictor file: {exc}") from exc
        if not isinstance(data, dict):
            raise FileFormatError(f"{path}: predictor file is not a JSON object")
        if data.get("kind") != cls.kind:
            raise FileFormatError(f"{path}: holds a {data.get('kind')!r} predictor, "
                                  f"not {cls.kind!r}")
        if data.get("format_version") != cls.format_version:
            raise FileFormatError(f"{path}: unknown format_version "
                                  f"{data.get('format_version')!r} (expected "
                                  f"{cls.format_version})")
        try:
            return cls.from_state(data["state"])
        except (KeyError, TypeError, ValueError) as exc:
            raise FileFormatError(f"{path}: malformed predictor state: {exc}") from exc
