"""Fit and compare latency predictors for one device on measured subnets.

    python scripts/bench_latency_predictor.py RESULTS_DIR --device cpu-ort-1t
        [--n-train 200] [--n-sizes 50 100] [--time-cap 0.5] [--seed 3000017]

Measures end to end (cached, resumable, in ``RESULTS_DIR/latency_measurements_<device>.json``)
up to ``--n-train`` training subnets drawn with a seed distinct from validation's, and the
100 held-out validation subnets (the very archs of
:func:`~ofa_search.profiling.validate.validate_table`; never trained on). Then fits the
table-only predictor, its overhead refit and the learned models, prints RMSE, MAPE, ±5 %,
±10 % and Kendall τ on the held-out set, writes ``RESULTS_DIR/latency_predictors_<device>
.json`` atomically and saves the refit table and the best learned predictor (lowest
held-out MAPE at the full training size) next to it as ``<device>-latency-<name>.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ofa_search.arch import Arch
from ofa_search.atomic import atomic_write_json
from ofa_search.metrics import report
from ofa_search.profiling.builder import sample_archs
from ofa_search.profiling.lut import LatencyTable, find_table, now_iso
from ofa_search.profiling.measure import measure_many, prepare_arch
from ofa_search.profiling.timing import TimingConfig, TimingStats
from ofa_search.profiling.validate import VALIDATION_SEED
from predictors.base import Predictor
from predictors.latency import LearnedLatencyPredictor, LutLatencyPredictor

TRAIN_SEED = 3_000_017
"""Seed of the training subnets (distinct from validation's and the overhead fit's)."""


def _load_cache(path: Path) -> dict[str, dict[str, float]]:
    import json

    if path.is_file():
        data = json.loads(path.read_text())
        return {"train": dict(data.get("train", {})), "heldout": dict(data.get("heldout", {}))}
    return {"train": {}, "heldout": {}}


def measure_all(table: LatencyTable, groups: dict[str, list[Arch]], cache_path: Path,
                timing: TimingConfig, rounds: int = 3) -> dict[str, dict[str, float]]:
    """Measure every arch of every group not yet in the cache, each in ``rounds``
    interleaved rounds; save every 10 archs."""
    cache = _load_cache(cache_path)
    todo = [(g, a) for g, archs in groups.items() for a in archs
            if a.to_string() not in cache[g]]
    if not todo:
        return cache
    from ofa_search.profiling.backends import get_backend

    profile = table.profile()
    if profile is None:
        raise SystemExit(f"table {table.device_id!r} was imported; cannot measure here")
    backend = get_backend(profile, timing=timing)
    start = time.perf_counter()
    count = [0]

    def done(item: tuple[str, Arch], stats: TimingStats) -> None:
        cache[item[0]][item[1].to_string()] = stats.median_ms
        count[0] += 1
        if count[0] % 10 == 0 or count[0] == len(todo):
            atomic_write_json(cache_path, {"device_id": table.device_id, **cache})
            print(f"  measured {count[0]}/{len(todo)} ({time.perf_counter() - start:.0f} s)",
                  flush=True)

    try:
        measure_many(todo, lambda item: prepare_arch(backend, item[1], profile.batch_size),
                     rounds=rounds, chunk=10, on_result=done)
    finally:
        close = getattr(backend, "close", None)
        if close is not None:
            close()
    return cache


def _row(name: str, n_train: int, pred: np.ndarray, true: np.ndarray) -> dict[str, Any]:
    return {"predictor": name, "n_train": n_train, **report(pred, true)}


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results_dir")
    parser.add_argument("--device", required=True)
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--n-sizes", type=int, nargs="*", default=[50, 100],
                        help="smaller training sizes also reported (prefixes of the set)")
    parser.add_argument("--n-heldout", type=int, default=100)
    parser.add_argument("--time-cap", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=TRAIN_SEED)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved measurement rounds per arch (default 3); use a "
                        "fresh RESULTS_DIR when changing it, as cached archs are reused")
    args = parser.parse_args(argv)
    if args.seed == VALIDATION_SEED:
        parser.error("the training seed must differ from the validation seed")
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = find_table(args.device)
    train = sample_archs(table.space, args.n_train, args.seed, table.width_mult,
                         table.resolutions)
    heldout = sample_archs(table.space, args.n_heldout, VALIDATION_SEED, table.width_mult,
                           table.resolutions)
    held_keys = {a.to_string() for a in heldout}
    train = [a for a in train if a.to_string() not in held_keys]
    timing = TimingConfig(warmup=3, min_runs=7, max_runs=200, time_cap_s=args.time_cap)
    cache = measure_all(table, {"heldout": heldout, "train": train},
                        out / f"latency_measurements_{args.device}.json", timing, args.rounds)
    y_train = np.array([cache["train"][a.to_string()] for a in train])
    y_held = np.array([cache["heldout"][a.to_string()] for a in heldout])

    rows = [_row("table", 0, LutLatencyPredictor(table).predict(heldout), y_held)]
    sizes = sorted({n for n in [*args.n_sizes, len(train)] if 2 <= n <= len(train)})
    fitted: dict[str, Predictor] = {}
    for n in sizes:
        xs, ys = train[:n], y_train[:n]
        candidates: dict[str, Predictor] = {
            "table+refit": LutLatencyPredictor(table),
            "ridge": LearnedLatencyPredictor(table, "ridge", n_members=args.members),
            "xgb": LearnedLatencyPredictor(table, "xgb", n_members=args.members),
        }
        for name, model in candidates.items():
            model.fit(xs, ys)
            rows.append(_row(name, n, model.predict(heldout), y_held))
            if n == len(train):
                fitted[name] = model
    header = (f"{'predictor':<13}{'n_train':>8}{'RMSE ms':>10}{'MAPE %':>8}{'±5 %':>8}"
              f"{'±10 %':>8}{'tau':>7}{'rho':>7}")
    lines = [f"device {args.device}: {len(heldout)} held-out archs "
             f"(seed {VALIDATION_SEED}), mean {y_held.mean():.4f} ms", header]
    for r in rows:
        lines.append(f"{r['predictor']:<13}{r['n_train']:>8}{r['rmse']:>10.4f}"
                     f"{100 * r['mape']:>8.2f}{100 * r['within_5pct']:>8.1f}"
                     f"{100 * r['within_10pct']:>8.1f}{r['kendall_tau']:>7.3f}"
                     f"{r['spearman_rho']:>7.3f}")
    print("\n".join(lines))
    learned = [r for r in rows if r["n_train"] == len(train) and r["predictor"] != "table"]
    best = min(learned, key=lambda r: r["mape"])["predictor"] if learned else None
    keep = {"table+refit", best}  # the best learned model and the refit table
    saved = {name: str(model.save(out / f"{args.device}-latency-{name.replace('+', '-')}.json"))
             for name, model in fitted.items() if name in keep}
    result = {"device_id": args.device, "space": table.space, "date": now_iso(),
              "train_seed": args.seed, "heldout_seed": VALIDATION_SEED, "rounds": args.rounds,
              "n_train": len(train), "n_heldout": len(heldout),
              "mean_heldout_ms": float(y_held.mean()), "best": best, "rows": rows,
              "models": saved}
    print(f"best: {best}; wrote "
          f"{atomic_write_json(out / f'latency_predictors_{args.device}.json', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
