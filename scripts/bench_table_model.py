"""How close is the table alone to end-to-end measurements? Plain sum vs network model.

    python scripts/bench_table_model.py --workspace W --device D [--out FILE]

Takes the device's table from the workspace and the end-to-end measurements of
``fit-predictors`` (``W/predictors/<device>-latency-measurements.json``, each divided by
the host's speed ratio recorded beside it), and prices the measured subnets two ways:

* ``plain``: the sum of the unit medians plus one overhead (the median gap on the
  table's 10 reference subnets), as tables were priced before the network model;
* ``network``: ``unit_scale · sum + per_unit_ms · units + overhead``, fitted on the same
  10 reference subnets (:func:`ofa_search.profiling.drift.refit_network_model`).

Neither sees the measured subnets (another seed), so both are held-out scores. Nothing is
timed. Reported: share within ±10 % as is and with one common scale removed (the median
ratio), Kendall τ, MAPE.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import kendalltau

from ofa_search.arch import Arch
from ofa_search.atomic import atomic_write_json
from ofa_search.profiling.drift import refit_network_model
from ofa_search.profiling.host import host_info
from ofa_search.profiling.lut import find_table, now_iso
from ofa_search.workspace import Workspace
from predictors.latency_fit import measurements_path


def _scores(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    common = float(np.exp(np.median(np.log(true / pred))))
    return {"within_10pct": float(np.mean(np.abs(pred / true - 1) <= 0.10)),
            "within_10pct_common_scale": float(np.mean(np.abs(pred * common / true - 1)
                                                       <= 0.10)),
            "common_scale": common, "kendall_tau": float(kendalltau(pred, true).statistic),
            "mape": float(np.mean(np.abs(pred / true - 1)))}


def main() -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workspace", type=Path, required=True)
    ap.add_argument("--device", required=True)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    ws = Workspace(args.workspace)
    table = find_table(args.device, workspace=ws.root)
    data = json.loads(measurements_path(ws, args.device).read_text())
    archs = [Arch.parse(s, table.space) for s in data["measured_ms"]]
    ratio = data.get("ratio") or {}
    true = np.array([data["measured_ms"][a.to_string()] / ratio.get(a.to_string(), 1.0)
                     for a in archs])
    plain = copy.deepcopy(table)
    plain.unit_scale, plain.per_unit_ms = 1.0, 0.0
    refs = plain.meta.get("reference") or {}
    network = copy.deepcopy(plain)
    refit_network_model(network)
    if refs:  # the plain overhead: the median gap on the same reference subnets
        ref_archs = [Arch.parse(s, table.space) for s in refs["archs"]]
        plain.overhead_ms = float(np.median([m - plain.unit_sum(a) for a, m in
                                             zip(ref_archs, refs["measured_ms"], strict=True)]))
    report: dict[str, Any] = {
        "benchmark": "bench_table_model", "created": now_iso(), "host": host_info(),
        "command": f"python scripts/bench_table_model.py --workspace {args.workspace.name} "
                   f"--device {args.device}",
        "device": args.device, "space": table.space, "n_measured": len(archs),
        "network_model": {"unit_scale": network.unit_scale,
                          "per_unit_ms": network.per_unit_ms,
                          "overhead_ms": network.overhead_ms},
        "plain": _scores(np.array([plain.predict(a) for a in archs]), true),
        "network": _scores(np.array([network.predict(a) for a in archs]), true)}
    print(f"{args.device} ({table.space}), {len(archs)} measured subnets; network model: "
          f"{network.unit_scale:.3f} x sum {1000 * network.per_unit_ms:+.2f} µs/unit "
          f"{network.overhead_ms:+.4f} ms")
    print(f"{'table priced as':<16} {'±10 %':>7} {'±10 % (1 scale)':>16} {'tau':>6} {'MAPE':>6}")
    for name in ("plain", "network"):
        s = report[name]
        print(f"{name:<16} {s['within_10pct']:>7.1%} {s['within_10pct_common_scale']:>16.1%} "
              f"{s['kendall_tau']:>6.3f} {s['mape']:>6.1%}")
    out = args.out or Path("results") / f"bench_table_model_{table.space}.json"
    atomic_write_json(out, report)
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
