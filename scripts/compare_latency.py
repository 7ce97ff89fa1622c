"""Compare two measurements of the same things: two latency tables unit by unit, or two
end-to-end measurement files arch by arch (the noise floor of a predictor's targets).

    python scripts/compare_latency.py A.json B.json [--group heldout] [--json OUT]

A table (``ofa_search/hw_profiles/<device>.json`` or a workspace's ``hw_profiles/``) is
compared on the units both price; a measurement file (``latency_measurements_<device>.json``
of ``scripts/bench_latency_predictor.py``) on the archs of ``--group`` both hold; a
validation report (``latency_validation_<device>.json`` of ``scripts/bench_latency.py``) on
its measured archs. Prints the quantiles of B / A and,
taking A as the reference, the share within ±2 %, ±5 % and ±10 %, Kendall τ
(``ofa_search.metrics``) and the share where B is faster (by unit kind for tables).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ofa_search.atomic import atomic_write_json
from ofa_search.metrics import report

QUANTILES = (5, 25, 50, 75, 95)


def latencies(path: Path, group: str) -> dict[str, float]:
    """Latency in ms by unit key (a table) or by arch string (a measurement file)."""
    data = json.loads(path.read_text())
    if "entries" in data:
        return {key: float(entry["median_ms"]) for key, entry in data["entries"].items()}
    if "rows" in data:  # a validation report of scripts/bench_latency.py
        return {row["arch"]: float(row["measured_ms"]) for row in data["rows"]}
    if group not in data:
        raise SystemExit(f"{path} is neither a latency table nor has a {group!r} group")
    return {key: float(ms) for key, ms in data[group].items()}


def compare(a: dict[str, float], b: dict[str, float]) -> dict[str, Any]:
    """Agreement of ``b`` with ``a`` on their common keys."""
    keys = sorted(set(a) & set(b))
    if len(keys) < 2:
        raise SystemExit(f"only {len(keys)} common keys; nothing to compare")
    ref = np.array([a[k] for k in keys])
    other = np.array([b[k] for k in keys])
    ratio = other / ref
    metrics = report(other, ref)
    return {"n": len(keys),
            "ratio_quantiles": {f"p{q}": float(np.percentile(ratio, q)) for q in QUANTILES},
            "within_2pct": float(np.mean(np.abs(ratio - 1) <= 0.02)),
            "within_5pct": metrics["within_5pct"], "within_10pct": metrics["within_10pct"],
            "kendall_tau": metrics["kendall_tau"],
            "b_faster": float(np.mean(ratio < 1)),
            "b_faster_by_kind": _faster_by_kind(keys, ratio)}


def _faster_by_kind(keys: list[str], ratio: np.ndarray) -> dict[str, list[int]]:
    """``{kind: [count where B < A, count]}`` for table units (keys ``kind:…``); empty for
    archs."""
    if not all(":" in key for key in keys):
        return {}
    by_kind: dict[str, list[int]] = {}
    for key, value in zip(keys, ratio, strict=True):
        counts = by_kind.setdefault(key.split(":", 1)[0], [0, 0])
        counts[0] += int(value < 1)
        counts[1] += 1
    return by_kind


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path, help="the reference")
    parser.add_argument("b", type=Path)
    parser.add_argument("--group", default="heldout",
                        help="group of a measurement file (default heldout)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    result = compare(latencies(args.a, args.group), latencies(args.b, args.group))
    q = result["ratio_quantiles"]
    print(f"{result['n']} common; B/A quantiles "
          + "  ".join(f"p{k[1:]} {v:.3f}" for k, v in q.items()))
    print(f"within ±2 % {100 * result['within_2pct']:.0f} %   ±5 % "
          f"{100 * result['within_5pct']:.0f} %   ±10 % {100 * result['within_10pct']:.0f} %   "
          f"Kendall τ {result['kendall_tau']:.3f}")
    kinds = ", ".join(f"{kind} {faster}/{n}" for kind, (faster, n) in
                      result["b_faster_by_kind"].items())
    print(f"B faster than A on {100 * result['b_faster']:.0f} %"
          + (f" ({kinds})" if kinds else ""))
    if args.json is not None:
        atomic_write_json(args.json, {"a": args.a.name, "b": args.b.name, **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
