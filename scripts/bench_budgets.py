"""Do answers stay under their budget? Honour rate of calibrated queries, measured.

    python scripts/bench_budgets.py --workspace W --device D [--budgets 20] [--seeds 0,1,2]
        [--confidence 0.9] [--coverage-archs 100] [--rounds 5] [--proxy-accuracy]
        [--calibrate-answers 40] [--front-seed 99] [--no-rescale]
        [--out results/bench_budgets_<space>.json]

1. A fresh drift check of the device (``ofa-search check-device``); beyond ±10 % its ratio
   is stored as the device's scale (``--rescale``), as the product advises (the previous
   scale file is put back at the end).
   With ``--calibrate-answers N`` (default 40; 0 skips it) the device's front is then built
   with ``--front-seed`` (a seed no answer uses) and N of its members are measured as
   ``ofa-search calibrate`` does: queries then bound answers by answer scores (this writes
   the workspace's front and calibration file).
2. ``--budgets`` budgets spread geometrically over the range of bounds, each answered
   once per seed, by bound at ``--confidence`` and by point estimate (the bound answer of
   a budget ``B`` is the point answer of ``B / factor``, so the point answer of ``B`` is
   the bound answer of ``B · factor``). ``--answers front`` (the default, what queries do
   in production) builds a front per seed and answers from it, budgets spanning the
   first seed's front; ``--answers cold`` answers each query by its own search (no front),
   budgets reaching the largest subnet.
3. Every answer, plus ``--coverage-archs`` random subnets drawn with a seed that no
   calibration used, is measured end to end as export emits it (the static subnet's ONNX
   / QDQ / binary package, randomly initialised: the same graph as the exported model), in
   interleaved rounds, in two passes: the agreement of the two passes is the noise floor.

Reported: share of answers measured ≤ budget (each pass), median overshoot of those over,
predicted accuracy given up against the point answers, and the bound's coverage on the
random subnets. ``--proxy-accuracy`` replaces the workspace's accuracy predictor by a MACs
proxy (for workspaces without a trained supernet, e.g. an ``ofa_mbv3`` table alone; its
"accuracy" means nothing, only which subnets get chosen).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ofa_search.arch import Arch
from ofa_search.atomic import atomic_write_json
from ofa_search.profiling.backends import get_backend
from ofa_search.profiling.builder import sample_archs
from ofa_search.profiling.drift import (
    check_drift,
    measure_with_references,
    save_scale,
    scale_path,
)
from ofa_search.profiling.host import host_info
from ofa_search.profiling.lut import find_table, now_iso, precision_mode
from ofa_search.profiling.measure import FAST_TIMING
from ofa_search.search import QueryEngine, build_front
from ofa_search.search.calibrate import calibrate_answers
from ofa_search.search.front import Front
from ofa_search.units import count_macs
from ofa_search.workspace import Workspace

COVERAGE_SEED = 3_000_017
"""Seed of the random subnets of the coverage check (tables and calibration use others)."""


class MacsProxy:
    """``0.6 + 0.03 · ln(MACs / 1e6) + 0.0005 · resolution``: a monotone stand-in for an
    accuracy predictor (not a model of any network)."""

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        return np.array([0.6 + 0.03 * np.log(count_macs(a) / 1e6) + 0.0005 * a.resolution
                         for a in archs])

    def predict_std(self, archs: Sequence[Arch]) -> np.ndarray:
        return np.full(len(archs), 0.01)


class ColdEngine(QueryEngine):
    """Answers every query with its own search (no front), seeded."""

    def front(self, device: str, precision: str | None = None) -> Front | None:
        return None


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workspace", type=Path, required=True)
    ap.add_argument("--device", required=True)
    ap.add_argument("--budgets", type=int, default=20)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--confidence", type=float, default=0.9)
    ap.add_argument("--coverage-archs", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=20, help="subnets per interleaved chunk")
    ap.add_argument("--chunk-refs", type=int, default=5,
                    help="reference subnets timed with every chunk (its drift check)")
    ap.add_argument("--proxy-accuracy", action="store_true")
    ap.add_argument("--calibrate-answers", type=int, default=40,
                    help="front members to measure for the answers' bound (0: skip)")
    ap.add_argument("--front-seed", type=int, default=99)
    ap.add_argument("--answers", choices=("front", "cold"), default="front")
    ap.add_argument("--front-trials", type=int, default=3000)
    ap.add_argument("--no-rescale", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    ws = Workspace(args.workspace)
    table = find_table(args.device, workspace=ws.root)
    profile = table.profile()
    if profile is None:
        sys.exit(f"device {args.device!r} is an imported table: nothing to measure here")
    started = time.perf_counter()

    # 1. drift check, rescale as the product advises
    scale_file = scale_path(ws, args.device)
    saved_scale = scale_file.read_bytes() if scale_file.is_file() else None
    drift = check_drift(table, rounds=args.rounds)
    print(drift.summary())
    rescaled = drift.drifted and not args.no_rescale
    if rescaled:
        save_scale(ws, table, drift)
    try:
        calibrated = _calibrate_answers(ws, args) if args.calibrate_answers > 0 else None
        answers = _answer(ws, args, seeds)
    finally:
        if rescaled:
            if saved_scale is None:
                scale_file.unlink(missing_ok=True)
            else:
                scale_file.write_bytes(saved_scale)
    query_s = time.perf_counter() - started

    # 3. measure answers and random subnets, two passes of interleaved rounds
    coverage = sample_archs(table.space, args.coverage_archs, COVERAGE_SEED, table.width_mult,
                            table.resolutions)
    unique = list(dict.fromkeys([*(a["bound"]["arch"] for a in answers),
                                 *(a["point"]["arch"] for a in answers), *coverage]))
    order = np.random.default_rng(0).permutation(len(unique))  # answers and random mixed
    unique = [unique[i] for i in order]
    passes, ratios = [], []
    with get_backend(profile, timing=FAST_TIMING) as backend:
        for number in range(2):
            def said(chunk: list[tuple[Arch, float, float]], number: int = number) -> None:
                print(f"pass {number + 1}: {len(chunk)} measured, host at {chunk[0][2]:.3f}x "
                      "the table", flush=True)

            results = measure_with_references(table, backend, unique, chunk=args.chunk,
                                              n_refs=args.chunk_refs, rounds=args.rounds,
                                              on_chunk=said)
            passes.append({a: ms for a, (ms, _) in zip(unique, results, strict=True)})
            ratios.append({a: r for a, (_, r) in zip(unique, results, strict=True)})
    report = _report(args, table, drift, rescaled, answers, coverage, passes, ratios, ws)
    report.update(query_s=query_s, wall_s=time.perf_counter() - started,
                  answer_calibration=None if calibrated is None else calibrated.to_dict())
    out = args.out or Path("results") / f"bench_budgets_{table.space}.json"
    atomic_write_json(out, report)
    _print(report)
    print(f"wrote {out}")
    return report


def _options(args: argparse.Namespace) -> dict[str, Any]:
    if args.proxy_accuracy:
        return {"accuracy": MacsProxy(), "accuracy_name": "macs-proxy"}
    return {}


def _calibrate_answers(ws: Workspace, args: argparse.Namespace) -> Any:
    """1b. a front with a seed no answer uses, and the answers' bound measured on it."""
    build_front(ws, args.device, n_trials=args.front_trials, seed=args.front_seed,
                **_options(args))
    result = calibrate_answers(ws, args.device, n=args.calibrate_answers, chunk=args.chunk,
                               log=print, **_options(args))
    print(f"answer calibration: {result.factors}", flush=True)
    return result


def _answer(ws: Workspace, args: argparse.Namespace, seeds: list[int]) -> list[dict[str, Any]]:
    """2. the answers by bound and by point, per budget and seed."""
    options = _options(args)
    def engine_for(seed: int) -> QueryEngine:
        if args.answers == "cold":
            return ColdEngine(ws, seed=seed, **options)
        build_front(ws, args.device, n_trials=args.front_trials, seed=seed, **options)
        return QueryEngine(ws, seed=seed, **options)

    first = engine_for(seeds[0])
    ctx = first.context(args.device)
    _, factor, _ = ctx.bound_factor(args.confidence)
    scale = ctx.scale()
    low = first.min_latency_ms(args.device) * factor * scale
    front = first.front(args.device)
    if front is not None:
        high = front.latencies[-1] * factor * scale
    else:
        largest = Arch.largest(ctx.space, width_mult=ctx.encoding.width_mults[0]).replace(
            resolution=max(ctx.encoding.resolutions))
        high = float(ctx.latency.predict([largest])[0]) * factor * scale
    budgets = np.geomspace(low * 1.05, high, args.budgets)
    answers = []
    for seed in seeds:
        engine = first if seed == seeds[0] else engine_for(seed)
        for budget in budgets:
            bound = engine.query(args.device, float(budget), confidence=args.confidence)
            point = engine.query(args.device, float(budget) * factor,
                                 confidence=args.confidence)
            answers.append({"seed": seed, "budget_ms": float(budget),
                            "bound": _answer_dict(bound), "point": _answer_dict(point)})
            print(f"seed {seed} budget {budget:8.4f} ms: bound {bound.latency_upper_ms:.4f} "
                  f"(point {bound.predicted_latency_ms:.4f}), point answer "
                  f"{point.predicted_latency_ms:.4f}", flush=True)
    return answers


def _answer_dict(result: Any) -> dict[str, Any]:
    return {"arch": result.arch, "predicted_latency_ms": result.predicted_latency_ms,
            "latency_upper_ms": result.latency_upper_ms,
            "predicted_accuracy": result.predicted_accuracy,
            "latency_scale": result.latency_scale}


def _report(args: argparse.Namespace, table: Any, drift: Any, rescaled: bool,
            answers: list[dict[str, Any]], coverage: list[Arch],
            passes: list[dict[Arch, float]], ratios: list[dict[Arch, float]], ws: Workspace
            ) -> dict[str, Any]:
    """Honour rates raw (as measured) and after each chunk's drift check (measured times the
    scale the answer was chosen with over the host's ratio at that chunk: what a query
    right after a drift check would have faced)."""
    budgets = np.array([a["budget_ms"] for a in answers])
    query_scale = drift.ratio if rescaled else 1.0
    out: dict[str, Any] = {
        "benchmark": "bench_budgets", "created": now_iso(), "host": host_info(),
        # the workspace by its folder name (no machine path in the record)
        "command": "python scripts/bench_budgets.py " + " ".join(
            args.workspace.name if a == str(args.workspace) else a for a in sys.argv[1:]),
        "device": table.device_id, "space": table.space, "confidence": args.confidence,
        "accuracy": "macs-proxy" if args.proxy_accuracy else "workspace predictor",
        "drift": drift.to_dict(), "rescaled": rescaled, "n_answers": len(answers),
        "seeds": args.seeds, "answers_from": args.answers, "rounds": args.rounds,
        "chunk": args.chunk, "chunk_refs": args.chunk_refs,
        "chunk_ratios": [sorted(set(r.values())) for r in ratios]}

    def adjusted(arch: Arch, p: int) -> float:
        return passes[p][arch] * query_scale / ratios[p][arch]

    for kind in ("bound", "point"):
        per_pass = []
        for p in range(len(passes)):
            entry = {}
            for label, get in (("raw", lambda a, p=p: passes[p][a]),
                               ("after_drift_check", lambda a, p=p: adjusted(a, p))):
                ms = np.array([get(a[kind]["arch"]) for a in answers])
                over = ms > budgets
                entry[label] = {
                    "honoured": float(np.mean(~over)),
                    "median_overshoot": float(np.median(ms[over] / budgets[over] - 1))
                    if over.any() else 0.0,
                    "max_overshoot": float(np.max(ms / budgets - 1))}
            per_pass.append(entry)
        out[kind] = {"passes": per_pass,
                     "mean_predicted_accuracy": float(np.mean(
                         [a[kind]["predicted_accuracy"] for a in answers]))}
    out["accuracy_given_up_points"] = 100 * (out["point"]["mean_predicted_accuracy"]
                                             - out["bound"]["mean_predicted_accuracy"])
    # coverage of the bound on random subnets (fp32: the calibration's mode), each measured
    # subnet against the prediction scaled by its chunk's drift ratio
    engine = QueryEngine(ws, accuracy=MacsProxy(), accuracy_name="macs-proxy")
    ctx = engine.context(table.device_id)
    point = np.asarray(ctx.latency.predict(coverage), dtype=float)
    factor = ctx.intervals.factor(precision_mode(coverage[0]), args.confidence) \
        if ctx.intervals is not None else float("nan")
    cover = []
    for p in range(len(passes)):
        ms = np.array([passes[p][a] for a in coverage])
        scaled = point * np.array([ratios[p][a] for a in coverage])
        cover.append({"under_bound": float(np.mean(ms <= scaled * factor)),
                      "point_within_10pct": float(np.mean(np.abs(scaled / ms - 1) <= 0.10))})
    first = np.array([passes[0][a] / ratios[0][a] for a in coverage])
    second = np.array([passes[1][a] / ratios[1][a] for a in coverage])
    raw = np.array([passes[1][a] / passes[0][a] for a in coverage])
    table_ms = np.array([table.predict(a) for a in coverage])
    common = float(np.exp(np.median(np.log(first / table_ms))))
    out["coverage"] = {
        "n_archs": len(coverage), "seed": COVERAGE_SEED, "factor": factor,
        "latency_predictor": ctx.latency_name, "passes": cover,
        "noise_floor_within_5pct": float(np.mean(np.abs(second / first - 1) <= 0.05)),
        "noise_floor_within_10pct": float(np.mean(np.abs(second / first - 1) <= 0.10)),
        "noise_floor_raw_within_10pct": float(np.mean(np.abs(raw - 1) <= 0.10)),
        "kendall_tau_two_passes": _tau(first, second),
        # the table alone, one common scale removed (pass 1, drift-adjusted)
        "table_within_10pct_common_scale": float(np.mean(
            np.abs(table_ms * common / first - 1) <= 0.10)),
        "table_kendall_tau": _tau(table_ms, first), "table_common_scale": common}
    out["answers"] = [{**a, "bound": {**a["bound"], "arch": a["bound"]["arch"].to_string(),
                                      "measured_ms": [p[a["bound"]["arch"]] for p in passes],
                                      "host_ratio": [r[a["bound"]["arch"]] for r in ratios]},
                       "point": {**a["point"], "arch": a["point"]["arch"].to_string(),
                                 "measured_ms": [p[a["point"]["arch"]] for p in passes],
                                 "host_ratio": [r[a["point"]["arch"]] for r in ratios]}}
                      for a in answers]
    return out


def _tau(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def _print(report: dict[str, Any]) -> None:
    print(f"\n{report['device']} ({report['space']}), {report['n_answers']} answers, "
          f"confidence {report['confidence']}, drift ratio {report['drift']['ratio']:.3f}"
          f"{' (rescaled)' if report['rescaled'] else ''}")
    print(f"{'answers by':<10} {'measured as':<18} {'honoured (pass 1 / 2)':>22} "
          f"{'median over':>14} {'mean acc %':>11}")
    for kind in ("bound", "point"):
        for label in ("raw", "after_drift_check"):
            passes = [p[label] for p in report[kind]["passes"]]
            honoured = " / ".join(f"{p['honoured']:.1%}" for p in passes)
            over = " / ".join(f"{100 * p['median_overshoot']:.1f}%" for p in passes)
            print(f"{kind:<10} {label:<18} {honoured:>22} {over:>14} "
                  f"{100 * report[kind]['mean_predicted_accuracy']:>11.2f}")
    cov = report["coverage"]
    if report.get("answer_calibration"):
        cal = report["answer_calibration"]
        factors = ", ".join(f"{m}: x{f['answers']:.3f} (random archs x{f['random']:.3f})"
                            for m, f in cal["factors"].items() if f["answers"] is not None)
        print(f"answers bounded by {cal['n_measured']} measured front members: {factors}")
    print(f"accuracy given up by the bound: {report['accuracy_given_up_points']:.3f} points")
    print(f"coverage of the bound on {cov['n_archs']} random subnets "
          f"({cov['latency_predictor']}, x{cov['factor']:.3f}): "
          + " / ".join(f"{p['under_bound']:.1%}" for p in cov["passes"])
          + "; point within ±10 %: "
          + " / ".join(f"{p['point_within_10pct']:.1%}" for p in cov["passes"]))
    print(f"noise floor (two passes, drift-adjusted): within ±5 % "
          f"{cov['noise_floor_within_5pct']:.1%}, ±10 % {cov['noise_floor_within_10pct']:.1%}, "
          f"tau {cov['kendall_tau_two_passes']:.3f} (raw ±10 %: "
          f"{cov['noise_floor_raw_within_10pct']:.1%})")
    print(f"table alone, one common scale removed: within ±10 % "
          f"{cov['table_within_10pct_common_scale']:.1%}, tau {cov['table_kendall_tau']:.3f}")


if __name__ == "__main__":
    main()
