"""Pareto fronts: the non-dominated (predicted accuracy, predicted latency) archs of one
device and precision, precomputed so that a query is a lookup.

File ``Workspace.front(device, precision)`` (JSON, written atomically)::

    {"format": "ofa-search-front", "format_version": 1, "space", "device", "precision",
     "latency_predictor", "latency_identity", "accuracy_predictor", "accuracy_identity",
     "checkpoint", "created", "search": {...},
     "points": [{"arch", "predicted_accuracy", "accuracy_std", "predicted_latency_ms",
                 "macs_m", "params_m"}, ...]}          # sorted by latency, accuracy rising
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ofa_search.arch import Arch
from ofa_search.atomic import atomic_write_json
from ofa_search.errors import FileFormatError
from ofa_search.profiling.lut import now_iso
from ofa_search.search.context import DeviceContext, load_context
from ofa_search.search.engines import DEFAULT_ENGINE, SearchResult, run_search
from ofa_search.search.evaluator import AccuracyModel, Evaluation
from ofa_search.search.jobs import stored_search
from ofa_search.units import count_macs, count_params
from ofa_search.versioning import require_version
from ofa_search.workspace import Workspace

FRONT_FORMAT = "ofa-search-front"
FRONT_VERSION = 1
_IDENTITY_KEYS = ("space", "device", "precision", "latency_predictor", "latency_identity",
                  "accuracy_predictor", "accuracy_identity", "checkpoint")


@dataclass(frozen=True)
class FrontPoint:
    """One non-dominated arch."""

    arch: Arch
    predicted_accuracy: float
    accuracy_std: float
    predicted_latency_ms: float
    macs_m: float
    params_m: float

    @classmethod
    def of(cls, ev: Evaluation) -> FrontPoint:
        return cls(ev.arch, ev.accuracy, ev.accuracy_std, ev.latency_ms,
                   count_macs(ev.arch) / 1e6, count_params(ev.arch) / 1e6)

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch.to_string(), "predicted_accuracy": self.predicted_accuracy,
                "accuracy_std": self.accuracy_std,
                "predicted_latency_ms": self.predicted_latency_ms, "macs_m": self.macs_m,
                "params_m": self.params_m}


def pareto_front(evaluations: Iterable[Evaluation]) -> list[Evaluation]:
    """The non-dominated evaluations (max accuracy, min latency), one per arch, sorted by
    latency with strictly rising accuracy."""
    unique = {ev.arch: ev for ev in evaluations}
    ordered = sorted(unique.values(), key=lambda e: (e.latency_ms, -e.accuracy))
    front: list[Evaluation] = []
    for ev in ordered:
        if not front or ev.accuracy > front[-1].accuracy:
            front.append(ev)
    return front


@dataclass(frozen=True)
class Front:
    """A loaded front: :attr:`points` sorted by latency, :attr:`meta` the file's header."""

    points: tuple[FrontPoint, ...]
    meta: dict[str, Any]
    latencies: tuple[float, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "latencies",
                           tuple(p.predicted_latency_ms for p in self.points))

    def best_under(self, budget_ms: float) -> int | None:
        """Index of the most accurate point within ``budget_ms`` (binary search: accuracy
        rises with latency along a front), or ``None`` when none fits."""
        i = bisect.bisect_right(self.latencies, budget_ms)
        return i - 1 if i > 0 else None

    @property
    def min_latency_ms(self) -> float:
        return self.latencies[0]

    def identity(self) -> dict[str, Any]:
        return {k: self.meta.get(k) for k in _IDENTITY_KEYS}

    def to_dict(self) -> dict[str, Any]:
        return {"format": FRONT_FORMAT, "format_version": FRONT_VERSION, **self.meta,
                "points": [p.to_dict() for p in self.points]}

    def save(self, path: str | os.PathLike[str]) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Front:
        """Read a front file; a foreign, truncated or other-version file is a
        :class:`FileFormatError`."""
        source = os.fspath(path)
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FileFormatError(f"{source}: cannot read front: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != FRONT_FORMAT:
            raise FileFormatError(f"{source}: not an ofa-search front")
        require_version(data, key="format_version", expected=FRONT_VERSION, what="front",
                        source=source)
        try:
            space = str(data["space"])
            points = tuple(
                FrontPoint(Arch.parse(p["arch"], space), float(p["predicted_accuracy"]),
                           float(p["accuracy_std"]), float(p["predicted_latency_ms"]),
                           float(p["macs_m"]), float(p["params_m"]))
                for p in data["points"])
        except (KeyError, TypeError, ValueError) as exc:
            raise FileFormatError(f"{source}: malformed front: {exc}") from exc
        if not points or any(a.predicted_latency_ms > b.predicted_latency_ms
                             for a, b in itertools.pairwise(points)):
            raise FileFormatError(f"{source}: front points are missing or not sorted")
        meta = {k: v for k, v in data.items() if k not in ("format", "format_version",
                                                           "points")}
        return cls(points, meta)


def make_front(ctx: DeviceContext, evaluations: Iterable[Evaluation],
               search: dict[str, Any]) -> Front:
    """The front of ``evaluations`` with ``ctx``'s identity in its header."""
    points = tuple(FrontPoint.of(ev) for ev in pareto_front(evaluations))
    meta = {**ctx.identity(), "created": now_iso(), "search": search}
    return Front(points, meta)


def build_front(workspace: Workspace, device: str, precision: str = "fp32", *,
                accuracy: AccuracyModel | None = None, accuracy_name: str | None = None,
                latency_kind: str | None = None, **kwargs: Any
                ) -> tuple[Front, list[SearchResult]]:
    """Load ``device``'s context from ``workspace`` (the workspace's accuracy predictor
    unless ``accuracy`` is given) and run :func:`build_front_for` (``kwargs`` are its
    keyword arguments)."""
    ctx = load_context(workspace, device, precision, accuracy=accuracy,
                       accuracy_name=accuracy_name, latency_kind=latency_kind)
    return build_front_for(ctx, **kwargs)


def build_front_for(ctx: DeviceContext, *, n_trials: int = 3000, seed: int = 0,
                budgets: Sequence[float] = (), budget_engine: str = DEFAULT_ENGINE,
                budget_trials: int = 2000, budget_restarts: int = 1,
                storage: str | os.PathLike[str] | None = None,
                progress: Callable[[int], None] | None = None, store: bool = True,
                write: bool = True) -> tuple[Front, list[SearchResult]]:
    """Run the multi-objective NSGA-II search of ``ctx`` (and a constrained search at each
    of ``budgets``, whose archs fill the front between NSGA-II's points), store the
    studies (unless ``store`` is false), and write the front of everything priced to
    ``Workspace.front`` atomically (unless ``write`` is false). Returns the front and the
    search results (multi-objective first). ``budget_restarts`` splits each constrained
    search into independent runs (see :func:`~ofa_search.search.engines.run_search`)."""
    start = time.perf_counter()

    def one(budget: float | None, engine: str, trials: int) -> SearchResult:
        restarts = budget_restarts if budget is not None and engine == "evolution" else 1
        if not store:
            return run_search(ctx.encoding, ctx.evaluator(), budget_ms=budget, engine=engine,
                              n_trials=trials, seed=seed, progress=progress,
                              record_trials=False, restarts=restarts)
        return stored_search(ctx, budget_ms=budget, engine=engine, n_trials=trials, seed=seed,
                             storage=storage, progress=progress, restarts=restarts)[0]

    results = [one(None, "nsga2", n_trials)]
    results += [one(budget, budget_engine, budget_trials) for budget in budgets]
    pool = [ev for r in results for ev in r.evaluations]
    search = {"engine": "nsga2", "n_trials": n_trials, "seed": seed,
              "budgets": list(budgets), "budget_engine": budget_engine,
              "budget_trials": budget_trials, "budget_restarts": budget_restarts,
              "wall_s": round(time.perf_counter() - start, 3)}
    front = make_front(ctx, pool, search)
    if write:
        front.save(ctx.workspace.front(ctx.device, ctx.precision))
    return front, results
