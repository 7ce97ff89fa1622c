"""``ofa-search search`` (run and store searches and fronts) and ``ofa-search query``."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from ofa_search.atomic import check_writable_file
from ofa_search.cli.options import (
    DeviceOpt,
    JsonOpt,
    LatencyKindOpt,
    PrecisionOpt,
    WorkspaceOpt,
    emit_json,
)
from ofa_search.errors import OfaSearchError
from ofa_search.workspace import Workspace, check_device_id, check_workspace

app = typer.Typer()


def _parse_budgets(text: str | None) -> list[float]:
    if not text:
        return []
    try:
        budgets = [float(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise OfaSearchError(f"--budgets must be comma-separated ms, e.g. 0.2,0.3; got "
                             f"{text!r}") from None
    bad = [b for b in budgets if not (b > 0 and math.isfinite(b))]
    if bad:
        raise OfaSearchError(f"--budgets must be positive finite numbers, got {bad}")
    return budgets


def _check_latency_kind(kind: str | None) -> None:
    from predictors.base import LATENCY_KINDS  # deferred (CLI start-up); numpy only

    if kind is not None and kind not in LATENCY_KINDS:
        raise OfaSearchError(f"--latency-predictor must be one of {', '.join(LATENCY_KINDS)}, "
                             f"got {kind!r}")


@app.command("query")
def query_cmd(
    workspace: WorkspaceOpt,
    device: DeviceOpt,
    latency_ms: Annotated[float, typer.Option("--latency-ms", help="latency budget, ms")],
    precision: PrecisionOpt = None,
    refine: Annotated[bool, typer.Option(
        "--refine", help="also try a few hundred mutations of the front point")] = False,
    latency_kind: LatencyKindOpt = None,
    confidence: Annotated[float | None, typer.Option(
        "--confidence", help="the answer's calibrated latency bound at this confidence "
        "must fit the budget (default 0.9 where the device is calibrated; "
        "`fit-predictors --device` calibrates it)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The most accurate subnet whose latency on DEVICE fits LATENCY_MS."""
    _check_latency_kind(latency_kind)
    check_device_id(device)
    check_workspace(workspace)
    # deferred until the cheap checks pass: each command imports only the library parts it
    # runs (CLI start-up)
    import optuna

    from ofa_search.search.query import QueryEngine

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    result = QueryEngine(workspace, latency_kind=latency_kind).query(
        device, latency_ms, precision, refine=refine, confidence=confidence)
    if as_json:
        emit_json(result.to_dict())
        return
    typer.echo(f"arch:       {result.arch.to_string()}")
    spread = (f"± {100 * result.accuracy_std:.2f} " if result.accuracy_std > 0
              else "")  # an imported predictor may declare no error
    typer.echo(f"accuracy:   {100 * result.predicted_accuracy:.2f} % {spread}(predicted)")
    typer.echo(f"latency:    {result.predicted_latency_ms:.4f} ms predicted on "
               f"{result.device} ({result.latency_predictor}), budget {latency_ms:g} ms")
    if result.latency_upper_ms is not None:
        typer.echo(f"bound:      {result.latency_upper_ms:.4f} ms at confidence "
                   f"{result.confidence:g} (calibrated on measured subnets)")
    typer.echo(f"MACs:       {result.macs_m:.2f} M   params: {result.params_m:.3f} M")
    typer.echo(f"found by:   {result.source} in {1000 * result.found_in_s:.1f} ms "
               f"({result.space}, {result.precision})")
    for warning in result.warnings:
        typer.echo(f"note:       {warning}")

@app.command("search")
def search_cmd(
    workspace: WorkspaceOpt,
    device: DeviceOpt,
    budgets: Annotated[str | None, typer.Option(
        "--budgets", help="comma-separated latency budgets in ms, e.g. 0.2,0.3")] = None,
    trials: Annotated[int, typer.Option("--trials", min=1,
                                        help="trials per search")] = 2000,
    engine: Annotated[str, typer.Option(
        "--engine", help="nsga2, evolution or random (budget searches)")] = "evolution",
    restarts: Annotated[int, typer.Option(
        "--restarts", min=1, help="evolution: split each budget search's trials over "
        "this many independent runs")] = 1,
    storage: Annotated[str | None, typer.Option(
        "--storage", help="SQLAlchemy URL or journal file (default: the workspace's "
        "studies.log)")] = None,
    front: Annotated[bool, typer.Option(
        "--front/--no-front", help="also build the device's Pareto front")] = True,
    front_trials: Annotated[int, typer.Option("--front-trials", min=1)] = 3000,
    precision: PrecisionOpt = None,
    latency_kind: LatencyKindOpt = None,
    seed: Annotated[int, typer.Option("--seed", min=0, max=2**32 - 1)] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Run and store constrained searches (one per budget) and the device's front."""
    _check_latency_kind(latency_kind)
    budget_list = _parse_budgets(budgets)
    if not budget_list and not front:
        raise OfaSearchError("nothing to do: give --budgets and/or --front")
    check_device_id(device)
    check_workspace(workspace, must_exist=False, writable=True)
    if storage is not None and "://" not in storage:  # a journal file: written to
        check_writable_file(Path(storage), "--storage")
    # deferred until the cheap checks pass: each command imports only the library parts it
    # runs (CLI start-up)
    import optuna
    from rich.progress import Progress

    from ofa_search.search.context import load_context
    from ofa_search.search.engines import ENGINES
    from ofa_search.search.front import build_front_for
    from ofa_search.search.jobs import stored_search

    if engine not in ENGINES:
        raise OfaSearchError(f"unknown engine {engine!r}; choose one of {list(ENGINES)}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ctx = load_context(Workspace(workspace), device, precision, latency_kind=latency_kind)
    ctx.accuracy()  # a missing predictor fails here, before any work
    summary: dict[str, Any] = {"device": device, "precision": ctx.precision,
                               "searches": []}
    with Progress(transient=as_json) as bar:

        def advancer(task: Any) -> Callable[[int], None]:
            return lambda n: bar.advance(task, n)

        for budget in budget_list:
            task = bar.add_task(f"{engine} under {budget:g} ms", total=trials)
            result, study = stored_search(
                ctx, budget_ms=budget, engine=engine, n_trials=trials, seed=seed,
                storage=storage, progress=advancer(task),
                restarts=restarts if engine == "evolution" else 1)
            best = result.best
            summary["searches"].append({
                "study": study.study_name, "budget_ms": budget, "trials": result.n_trials,
                "arch": best.arch.to_string() if best else None,
                "predicted_accuracy": best.accuracy if best else None,
                "predicted_latency_ms": best.latency_ms if best else None})
        if front:
            task = bar.add_task("front (nsga2, multi-objective)", total=front_trials)
            built, _ = build_front_for(
                ctx, n_trials=front_trials, seed=seed, storage=storage,
                progress=advancer(task))
            summary["front"] = {"path": str(ctx.workspace.front(ctx.device,
                                                                ctx.precision)),
                                "points": len(built.points),
                                "min_latency_ms": built.min_latency_ms}
    if as_json:
        emit_json(summary)
        return
    for item in summary["searches"]:
        if item["arch"] is None:
            typer.echo(f"{item['budget_ms']:g} ms: nothing fits ({item['study']})")
        else:
            typer.echo(f"{item['budget_ms']:g} ms: {100 * item['predicted_accuracy']:.2f} % "
                       f"at {item['predicted_latency_ms']:.4f} ms  {item['arch']}")
    if front:
        typer.echo(f"front: {summary['front']['points']} points, fastest "
                   f"{summary['front']['min_latency_ms']:.4f} ms")

@app.command("calibrate")
def calibrate_cmd(
    workspace: WorkspaceOpt,
    device: DeviceOpt,
    n: Annotated[int, typer.Option(
        "--n", min=1, help="front members to measure (0.9 needs 9, 0.95 needs 19)")] = 40,
    precision: PrecisionOpt = None,
    latency_kind: LatencyKindOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure members of the device's front end to end and calibrate the bounds of
    query answers on them (after `fit-predictors` and `search`)."""
    _check_latency_kind(latency_kind)
    # deferred until the cheap checks pass: each command imports only the library parts it
    # runs (CLI start-up)
    from ofa_search.search.calibrate import calibrate_answers

    result = calibrate_answers(workspace, device, precision, n=n,
                               latency_kind=latency_kind,
                               log=None if as_json else typer.echo)
    if as_json:
        emit_json(result.to_dict())
        return
    low, mid, high = result.host_speed
    typer.echo(f"{device}: {result.n_measured} of {result.n_front} front members measured "
               f"(host at {mid:.3f}x the table, {low:.3f}-{high:.3f} by chunk)")
    for mode, factors in result.factors.items():
        def pct(f: float | None) -> str:
            return "n/a" if f is None else f"+{100 * (f - 1):.1f} %"
        typer.echo(f"  {mode}: 0.9 bound over the point: {pct(factors['answers'])} for "
                   f"answers (random archs: {pct(factors['random'])})")
