"""What the search optimises: predictors behind a small protocol, priced once per arch.

The search never imports a concrete predictor: anything with batched ``predict`` (and, for
accuracy, ``predict_std``) will do — the fitted accuracy predictor of a workspace, a
device's latency predictor, or a documented test objective.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from ofa_search.arch import Arch


@runtime_checkable
class AccuracyModel(Protocol):
    """Predicted top-1 accuracy (a fraction) and its uncertainty, batched."""

    def predict(self, archs: Sequence[Arch]) -> np.ndarray: ...

    def predict_std(self, archs: Sequence[Arch]) -> np.ndarray: ...


@runtime_checkable
class LatencyModel(Protocol):
    """Predicted latency in ms, batched."""

    def predict(self, archs: Sequence[Arch]) -> np.ndarray: ...


@dataclass(frozen=True)
class Evaluation:
    """One arch as the predictors see it."""

    arch: Arch
    accuracy: float
    accuracy_std: float
    latency_ms: float


class CachedEvaluator:
    """Prices archs in batches through the predictors, each distinct ``Arch`` once.

    Two trials that differ only in blocks past a stage's depth decode to equal ``Arch``es
    (same hash), so the second is a cache hit: :attr:`predictor_calls` counts distinct
    archs sent to the predictors, :attr:`requests` every arch asked for, and
    :attr:`latency_calls` archs priced for latency alone (:meth:`latency_only`).
    """

    def __init__(self, accuracy: AccuracyModel, latency: LatencyModel) -> None:
        self.accuracy = accuracy
        self.latency = latency
        self.cache: dict[Arch, Evaluation] = {}
        self.predictor_calls = 0
        self.requests = 0
        self.latency_calls = 0
        self._latency: dict[Arch, float] = {}

    def evaluate(self, archs: Sequence[Arch], latencies: Sequence[float] | np.ndarray | None = None
                 ) -> list[Evaluation]:
        """One :class:`Evaluation` per arch, in order (new archs in one predictor batch).

        ``latencies``, when given, are the latency model's own predictions for ``archs``
        computed another way (a search that prices genomes from the table's arrays); the
        latency model is then not asked again.
        """
        self.requests += len(archs)
        new: list[Arch] = []
        known: list[float] = []
        seen: set[Arch] = set()
        for i, arch in enumerate(archs):
            if arch not in self.cache and arch not in seen:
                seen.add(arch)
                new.append(arch)
                if latencies is not None:
                    known.append(float(latencies[i]))
        if new:
            acc = np.asarray(self.accuracy.predict(new), dtype=float)
            std = np.asarray(self.accuracy.predict_std(new), dtype=float)
            lat = (np.asarray(known) if latencies is not None
                   else np.asarray(self.latency.predict(new), dtype=float))
            for i, arch in enumerate(new):
                self.cache[arch] = Evaluation(arch, float(acc[i]), float(std[i]), float(lat[i]))
            self.predictor_calls += len(new)
        return [self.cache[a] for a in archs]

    def latency_only(self, archs: Sequence[Arch]) -> np.ndarray:
        """Predicted latency alone (for rejecting archs over a budget before the accuracy
        predictor sees them); counted in :attr:`latency_calls`, cached like the rest."""
        missing = list({a: None for a in archs if a not in self.cache
                        and a not in self._latency})
        if missing:
            lat = np.asarray(self.latency.predict(missing), dtype=float)
            self._latency.update(zip(missing, lat.tolist(), strict=True))
            self.latency_calls += len(missing)
        return np.array([self.cache[a].latency_ms if a in self.cache else self._latency[a]
                         for a in archs])
