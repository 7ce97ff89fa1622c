"""``query``: the most accurate subnet whose latency on a device fits a budget — its
calibrated upper bound at a confidence (:mod:`predictors.calibration`) where the device is
calibrated, else its point estimate.

With a precomputed front (``ofa-search search --front``) a query is a binary search over a
few hundred points (microseconds) and, with ``refine``, a few hundred mutations of the
chosen point priced in one batch. Without a front (or with a stale one: computed with
other predictors) it runs a short constrained search in memory (~1 s).

A :class:`QueryEngine` keeps the loaded tables, predictors and fronts of one workspace,
so a service answers repeated queries without reloading; :func:`query` is a thin wrapper.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ofa_search.arch import Arch
from ofa_search.errors import InfeasibleBudgetError, OfaSearchError
from ofa_search.profiling.lut import find_table, overhead_mode, precision_mode
from ofa_search.search.context import DEFAULT_PRECISION, DeviceContext, load_context
from ofa_search.search.encoding import ANY_PRECISION, PRECISION_MODES
from ofa_search.search.engines import best_feasible, run_search
from ofa_search.search.evaluator import AccuracyModel, Evaluation
from ofa_search.search.front import Front
from ofa_search.space import get_space
from ofa_search.units import count_macs, count_params
from ofa_search.workspace import Workspace
from predictors.calibration import CalibrationError, check_confidence

COLD_ENGINE = "evolution"
COLD_TRIALS = 16_000
"""Cold-search trials when the latency model is a table (generations priced as arrays)."""
COLD_TRIALS_PREDICTOR = 2000
"""Cold-search trials when the latency model prices each arch itself (a learned one)."""
COLD_RESTARTS = 4
REFINE_CANDIDATES = 300
REFINE_MUTATE_PROB = 0.1
SOURCES = ("front", "search")


@dataclass(frozen=True)
class QueryResult:
    """The answer to one query (``to_dict`` is the JSON of the CLI and the service)."""

    arch: Arch
    space: str
    device: str
    precision: str
    predicted_accuracy: float
    accuracy_std: float
    predicted_latency_ms: float
    macs_m: float
    params_m: float
    source: str
    latency_predictor: str
    found_in_s: float
    latency_upper_ms: float | None = None
    confidence: float | None = None
    latency_scale: float = 1.0
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch.to_string(), "space": self.space, "device": self.device,
                "precision": self.precision, "predicted_accuracy": self.predicted_accuracy,
                "accuracy_std": self.accuracy_std,
                "predicted_latency_ms": self.predicted_latency_ms,
                "latency_upper_ms": self.latency_upper_ms, "confidence": self.confidence,
                "latency_scale": self.latency_scale, "macs_m": self.macs_m,
                "params_m": self.params_m, "source": self.source,
                "latency_predictor": self.latency_predictor, "found_in_s": self.found_in_s,
                "warnings": list(self.warnings)}


class QueryEngine:
    """Loaded state of one workspace for repeated queries (thread-safe: lookups in fronts
    run concurrently, searches and refinements one at a time).

    Args:
        workspace: the workspace (fronts, accuracy predictor, device tables).
        accuracy: an accuracy model to use instead of the workspace's predictor.
        accuracy_name: its name (recorded in fronts; default: its class name).
        latency_kind: ``"lut"``, ``"learned"`` or ``None`` (learned when fitted).
        cold_trials, cold_engine: the search run when there is no front (default trials:
            :data:`COLD_TRIALS` in :data:`COLD_RESTARTS` runs on a table, whose generations
            are priced as arrays; :data:`COLD_TRIALS_PREDICTOR` on a learned latency
            predictor, which prices arch by arch).
        seed: seed of cold searches and refinements (the same query gives the same answer).
        cold_guard: called with the device's context before a query runs a search (no
            front, or none under the budget); it may raise to refuse (the HTTP service
            keeps searches off its request threads this way).
    """

    def __init__(self, workspace: Workspace | str | os.PathLike[str], *,
                 accuracy: AccuracyModel | None = None, accuracy_name: str | None = None,
                 latency_kind: str | None = None, cold_trials: int | None = None,
                 cold_engine: str = COLD_ENGINE, seed: int = 0,
                 cold_guard: Callable[[DeviceContext], None] | None = None) -> None:
        self.workspace = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
        self._accuracy = accuracy
        self._accuracy_name = accuracy_name
        self.latency_kind = latency_kind
        self.cold_trials = cold_trials
        self.cold_engine = cold_engine
        self.seed = seed
        self.cold_guard = cold_guard
        self._contexts: dict[tuple[str, str], DeviceContext] = {}
        self._fronts: dict[tuple[str, str], tuple[int, Front | None]] = {}
        self._fastest: dict[tuple[str, str], tuple[Arch, float]] = {}
        self._modes: dict[str, list[str]] = {}
        self._lock = threading.RLock()
        self._predict_lock = threading.Lock()  # predictors need not be thread-safe

    # -- loaded state --------------------------------------------------------------------
    def context(self, device: str, precision: str | None = None) -> DeviceContext:
        """The device's loaded context (cached)."""
        key = (device, precision or DEFAULT_PRECISION)
        with self._lock:
            ctx = self._contexts.get(key)
            if ctx is None:
                ctx = load_context(self.workspace, device, key[1], accuracy=self._accuracy,
                                   accuracy_name=self._accuracy_name,
                                   latency_kind=self.latency_kind)
                self._contexts[key] = ctx
            return ctx

    def loaded(self, device: str, precision: str | None = None) -> bool:
        """Whether the device's context at ``precision`` is loaded (``"any"``: never, it
        spans several)."""
        return (device, precision or DEFAULT_PRECISION) in self._contexts

    def front(self, device: str, precision: str | None = None) -> Front | None:
        """The device's front if one was computed with the current predictors (reloaded
        when its file changes); ``None`` otherwise."""
        ctx = self.context(device, precision)
        path = self.workspace.front(ctx.device, ctx.precision)
        key = (ctx.device, ctx.precision)
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        with self._lock:
            cached = self._fronts.get(key)
            if cached is not None and cached[0] == mtime:
                return cached[1]
            front: Front | None = Front.load(path)
            if front is not None and not _matches(front, ctx):
                front = None
            self._fronts[key] = (mtime, front)
            return front

    def min_latency_ms(self, device: str, precision: str | None = None) -> float:
        """The lowest predicted latency of any subnet on ``device`` (see :meth:`fastest`),
        or the front's fastest point if that is lower."""
        low = self.fastest(device, precision)[1]
        front = self.front(device, precision)
        return min(low, front.min_latency_ms) if front is not None else low

    def fastest(self, device: str, precision: str | None = None) -> tuple[Arch, float]:
        """The fastest subnet and its predicted latency: a descent on predicted latency
        from the smallest arch at each resolution, moving to the fastest arch one choice
        away until none is faster (for a table the smallest arch is already the minimum;
        a learned predictor can prefer a neighbour)."""
        ctx = self.context(device, precision)
        key = (ctx.device, ctx.precision)
        with self._lock:
            if key not in self._fastest:
                self._fastest[key] = _descend_latency(ctx)
            return self._fastest[key]

    # -- the query -----------------------------------------------------------------------
    def query(self, device: str, latency_ms: float, precision: str | None = None, *,
              refine: bool = False, confidence: float | None = None) -> QueryResult:
        """The most accurate subnet whose latency on ``device`` fits ``latency_ms``.

        "Fits" means its calibrated upper bound at ``confidence`` does (the default,
        ``None``, is :data:`~predictors.calibration.DEFAULT_CONFIDENCE` on a calibrated
        device and the point estimate, with a warning, on one without calibration data).
        Predictions apply the device's stored speed scale, if any.

        Raises ``UnknownDeviceError`` (with ``.known``), :class:`InfeasibleBudgetError`
        (with ``.min_latency_ms``), :class:`~predictors.calibration.CalibrationError`
        for a confidence outside (0, 1) or one the device cannot give, and
        :class:`OfaSearchError` for an unsupported precision or a missing accuracy
        predictor.
        """
        if isinstance(latency_ms, bool) or not np.isfinite(latency_ms) or latency_ms <= 0:
            raise OfaSearchError(f"latency budget must be a positive number of ms, got "
                                 f"{latency_ms!r}")
        if confidence is not None:
            check_confidence(confidence)
        if precision == ANY_PRECISION:
            return self._query_any(device, latency_ms, refine, confidence)
        ctx = self.context(device, precision)  # loaded once per engine, not timed
        level, factor, warnings = ctx.bound_factor(confidence)
        scale = ctx.scale()
        budget = latency_ms / (factor * scale)  # what the point estimate may reach
        low = self.min_latency_ms(device, precision)
        start = time.perf_counter()
        if budget < low:
            what = ("predicted" if level is None
                    else f"bounded at confidence {level:g}")
            raise InfeasibleBudgetError(
                f"no subnet fits {latency_ms:g} ms on device {device!r}: the fastest one is "
                f"{what} at {low * factor * scale:.4g} ms (minimum achievable latency)",
                min_latency_ms=low * factor * scale)
        front = self.front(device, precision)
        index = front.best_under(budget) if front is not None else None
        if front is not None and index is not None:
            point = front.points[index]
            found = Evaluation(point.arch, point.predicted_accuracy, point.accuracy_std,
                               point.predicted_latency_ms)
            if refine:
                with self._predict_lock:
                    found = self._refine(ctx, front, index, budget, found)
            source = "front"
        else:
            ctx.accuracy()  # loaded once per engine, not timed
            start = time.perf_counter()
            with self._predict_lock:
                found = self._cold_search(ctx, budget)
            source = "search"
        return _result(ctx, found, source, level, scale, warnings, start)

    def price(self, device: str, arch: Arch, *, confidence: float | None = None
              ) -> QueryResult:
        """The predictions for one given ``arch`` on ``device`` (accuracy, latency and its
        bound), as a query answering it would state them; ``source`` is ``"given"``.

        Raises :class:`OfaSearchError` for an arch of another space, or one whose
        precisions or units the device's table does not price.
        """
        if confidence is not None:
            check_confidence(confidence)
        ctx = self.context(device, precision_mode(arch))
        if arch.space != ctx.space:
            raise OfaSearchError(f"arch of space {arch.space!r} cannot be priced on device "
                                 f"{device!r}, whose table is of space {ctx.space!r}")
        level, _, warnings = ctx.bound_factor(confidence)
        start = time.perf_counter()
        with self._predict_lock:
            found = ctx.evaluator().evaluate([arch])[0]
        return _result(ctx, found, "given", level, ctx.scale((overhead_mode(arch),)), warnings,
                       start)

    def modes(self, device: str) -> list[str]:
        """The precision modes whose units ``device``'s table holds (read once per
        engine)."""
        with self._lock:
            if device not in self._modes:
                table = find_table(device, workspace=self.workspace.root)
                self._modes[device] = [
                    mode for mode, precs in PRECISION_MODES.items()
                    if all(p in table.precisions and p in get_space(table.space).precisions
                           for p in precs)]
            return list(self._modes[device])

    def _query_any(self, device: str, latency_ms: float, refine: bool,
                   confidence: float | None) -> QueryResult:
        """The most accurate answer over every precision mode the device offers; where some
        modes' answers have a calibrated latency bound and others not, only the bounded
        ones compete (a warning names the others)."""
        start = time.perf_counter()
        answers: list[QueryResult] = []
        lows: list[float] = []
        unbounded: list[CalibrationError] = []
        for mode in self.modes(device):
            try:
                answers.append(self.query(device, latency_ms, mode, refine=refine,
                                          confidence=confidence))
            except InfeasibleBudgetError as exc:
                if exc.min_latency_ms is not None:
                    lows.append(exc.min_latency_ms)
            except CalibrationError as exc:  # this mode cannot be bounded: the others can
                unbounded.append(exc)
        if not answers and unbounded:
            raise unbounded[0]
        if not answers:
            low = min(lows, default=float("nan"))
            raise InfeasibleBudgetError(
                f"no subnet fits {latency_ms:g} ms on device {device!r} at any precision: the "
                f"fastest one needs {low:.4g} ms", min_latency_ms=low)
        skipped = tuple(f"{exc}; that precision was left out" for exc in unbounded)
        bounded = [a for a in answers if a.confidence is not None]
        if bounded and len(bounded) < len(answers):
            # an answer held to its budget by a calibrated bound beats one that is not
            skipped += tuple(
                f"{a.precision} answers have no calibrated latency bound on device "
                f"{device!r}; that precision was left out"
                for a in answers if a.confidence is None)
            answers = bounded
        best = max(answers, key=lambda r: r.predicted_accuracy)
        return dataclasses.replace(best, found_in_s=time.perf_counter() - start,
                                   warnings=best.warnings + skipped)

    def _cold_search(self, ctx: DeviceContext, budget_ms: float) -> Evaluation:
        if self.cold_guard is not None:
            self.cold_guard(ctx)
        evaluator = ctx.evaluator()
        table = callable(getattr(ctx.latency, "block_prices", None))
        trials = self.cold_trials or (COLD_TRIALS if table else COLD_TRIALS_PREDICTOR)
        restarts = COLD_RESTARTS if table and self.cold_engine == "evolution" else 1
        result = run_search(ctx.encoding, evaluator, budget_ms=budget_ms,
                            engine=self.cold_engine, n_trials=trials, seed=self.seed,
                            record_trials=False, restarts=restarts)
        if result.best is not None:
            return result.best
        # nothing the search priced fits, but the fastest subnet does (budget >= minimum)
        return evaluator.evaluate([self.fastest(ctx.device, ctx.precision)[0]])[0]

    def _refine(self, ctx: DeviceContext, front: Front, index: int, budget_ms: float,
                found: Evaluation) -> Evaluation:  # found_in_s includes loading the model
        """Mutations of the chosen point and of the next (too slow, more accurate) one,
        priced in one batch; the best that fits wins (the front point if none beats it)."""
        rng = np.random.default_rng(self.seed)
        parents = [front.points[index].arch]
        if index + 1 < len(front.points):
            parents.append(front.points[index + 1].arch)
        candidates = [ctx.encoding.project(parents[i % len(parents)].mutate(
            rng, REFINE_MUTATE_PROB), rng) for i in range(REFINE_CANDIDATES)]
        best = best_feasible([found, *ctx.evaluator().evaluate(candidates)], budget_ms)
        return best if best is not None and best.accuracy > found.accuracy else found


def _result(ctx: DeviceContext, found: Evaluation, source: str, level: float | None,
            scale: float, warnings: list[str], start: float) -> QueryResult:
    """The answer ``found`` as stated on ``ctx``: latency scaled to the host's speed, its
    bound at confidence ``level`` (none without calibration), sizes and warnings."""
    point_ms = found.latency_ms * scale
    upper = (None if level is None
             else point_ms * ctx.answer_factor(precision_mode(found.arch), level))
    if scale != 1.0:
        warnings = [*warnings, f"predictions are scaled by {scale:.3f} (the speed ratio "
                    f"stored by `ofa-search check-device --device {ctx.device} --rescale`)"]
    return QueryResult(
        arch=found.arch, space=ctx.space, device=ctx.device, precision=ctx.precision,
        predicted_accuracy=found.accuracy, accuracy_std=found.accuracy_std,
        predicted_latency_ms=point_ms, macs_m=_macs(found.arch) / 1e6,
        params_m=_params(found.arch) / 1e6, source=source,
        latency_predictor=ctx.latency_name, found_in_s=time.perf_counter() - start,
        latency_upper_ms=upper, confidence=level, latency_scale=scale,
        warnings=tuple(warnings))


# answers repeat (a front has a few hundred points): count each arch once
_macs = functools.lru_cache(maxsize=4096)(count_macs)
_params = functools.lru_cache(maxsize=4096)(count_params)


def _descend_latency(ctx: DeviceContext, max_steps: int = 30) -> tuple[Arch, float]:
    """Steepest descent on predicted latency from each of the smallest archs; the best
    end point."""
    found: list[tuple[float, Arch]] = []
    for start in ctx.encoding.smallest():
        best, best_ms = start, float(np.asarray(ctx.latency.predict([start]))[0])
        for _ in range(max_steps):
            near = ctx.encoding.neighbours(best)
            lat = np.asarray(ctx.latency.predict(near), dtype=float)
            if lat.min() >= best_ms:
                break
            best, best_ms = near[int(np.argmin(lat))], float(lat.min())
        found.append((best_ms, best))
    best_ms, best = min(found, key=lambda item: item[0])
    return best, best_ms


def _matches(front: Front, ctx: DeviceContext) -> bool:
    """Whether ``front`` was computed with ``ctx``'s predictors (a front computed before
    the accuracy predictor was refitted is stale)."""
    meta = front.identity()
    if meta["space"] != ctx.space or meta["latency_identity"] != ctx.latency_identity:
        return False
    if ctx.accuracy_identity is None:  # nothing to compare with: the front is all we have
        return True
    return bool(meta["accuracy_identity"] == ctx.accuracy_identity)


_ENGINES: dict[str, QueryEngine] = {}
_ENGINES_LOCK = threading.Lock()


def query(workspace: Workspace | str | os.PathLike[str], device: str, latency_ms: float,
          precision: str | None = None, *, refine: bool = False,
          latency_kind: str | None = None, confidence: float | None = None) -> QueryResult:
    """:meth:`QueryEngine.query` on a per-workspace engine kept between calls."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    key = f"{ws.root.resolve()}|{latency_kind}"
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = _ENGINES[key] = QueryEngine(ws, latency_kind=latency_kind)
    return engine.query(device, latency_ms, precision, refine=refine, confidence=confidence)

