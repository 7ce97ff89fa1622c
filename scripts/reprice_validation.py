"""Price the measured subnets of one validation run with other tables: how well each table
predicts the same measurements, raw and after a host-speed rescale.

    python scripts/reprice_validation.py RUN_DIR TABLE.json [TABLE.json ...] [--json OUT]

``RUN_DIR`` holds the records of one ``scripts/bench_latency.py`` run
(``latency_validation_<device>[_<mode>].json``; best its modes measured together, its
default, so that every mode saw the same host). Each table prices each record's subnets
(its space must be the records'). Per mode and table the script prints:

- the table's error as it stands (MAPE, share within ±10 %, Kendall τ) and the median
  measured / predicted (how much faster or slower the host runs than when the table was
  profiled);
- the error after rescaling by the *fp32* mode's median ratio: one speed ratio for every
  precision, as ``ofa-search check-device --rescale`` stores from fp32 reference subnets;
- the error after rescaling each mode by its own median ratio (the table's shape alone);
- the record's noise floor (``noise_mape``: its first against its last rounds), where the
  record has one.

Writes the same numbers as JSON with ``--json`` (atomically).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from ofa_search.arch import Arch
from ofa_search.atomic import atomic_write_json
from ofa_search.metrics import report
from ofa_search.profiling.lut import LatencyTable

MODES = ("fp32", "int8", "binary", "mixed")


def records(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The run's validation records by precision mode."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(run_dir.glob("latency_validation_*.json")):
        data = json.loads(path.read_text())
        if "rows" not in data:
            raise SystemExit(f"{path} is not a validation record of scripts/bench_latency.py")
        mode = data.get("mode", "fp32")
        if mode in found:
            raise SystemExit(f"{run_dir} holds two {mode} records (of two devices?): "
                             f"give a folder with one run")
        found[mode] = data
    if "fp32" not in found:
        raise SystemExit(f"{run_dir} has no fp32 validation record "
                         f"(latency_validation_<device>.json)")
    return found


def _errors(pred: list[float], meas: list[float], scale: float) -> dict[str, float]:
    m = report([p * scale for p in pred], meas)
    return {"mape": m["mape"], "within_10pct": m["within_10pct"]}


def reprice(runs: dict[str, dict[str, Any]], table: LatencyTable) -> dict[str, Any]:
    """Each mode's errors under ``table`` (see the module's description)."""
    priced: dict[str, tuple[list[float], list[float]]] = {}
    for mode, data in runs.items():
        if data["space"] != table.space:
            raise SystemExit(f"table {table.device_id!r} prices {table.space!r}, the "
                             f"records are of {data['space']!r}")
        archs = [Arch.parse(row["arch"], data["space"]) for row in data["rows"]]
        priced[mode] = ([table.predict(a) for a in archs],
                        [float(row["measured_ms"]) for row in data["rows"]])
    ratio = {mode: statistics.median(m / p for p, m in zip(*priced[mode], strict=True))
             for mode in priced}
    out: dict[str, Any] = {}
    for mode in sorted(priced, key=lambda m: MODES.index(m) if m in MODES else len(MODES)):
        pred, meas = priced[mode]
        raw = report(pred, meas)
        out[mode] = {"n": len(pred), "measured_over_predicted": ratio[mode],
                     "raw": {"mape": raw["mape"], "within_10pct": raw["within_10pct"],
                             "kendall_tau": raw["kendall_tau"]},
                     "fp32_rescaled": _errors(pred, meas, ratio["fp32"]),
                     "mode_rescaled": _errors(pred, meas, ratio[mode]),
                     "noise_mape": runs[mode].get("noise_mape")}
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("tables", type=Path, nargs="+")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    runs = records(args.run_dir)
    result: dict[str, Any] = {"run": args.run_dir.name, "tables": {}}
    header = (f"{'mode':<8}{'meas/pred':>10}{'MAPE':>8}{'±10 %':>7}{'τ':>7}"
              f"{'fp32-scaled':>13}{'±10 %':>7}{'own-scaled':>12}{'±10 %':>7}{'noise':>9}")
    for path in args.tables:
        rows = reprice(runs, LatencyTable.load(path))
        result["tables"][str(path)] = rows
        print(f"{path}\n{header}")
        for mode, r in rows.items():
            noise = "–" if r["noise_mape"] is None else f"{100 * r['noise_mape']:.2f}%"
            print(f"{mode:<8}{r['measured_over_predicted']:>10.3f}"
                  f"{100 * r['raw']['mape']:>7.2f}%{100 * r['raw']['within_10pct']:>6.0f}%"
                  f"{r['raw']['kendall_tau']:>7.3f}"
                  f"{100 * r['fp32_rescaled']['mape']:>12.2f}%"
                  f"{100 * r['fp32_rescaled']['within_10pct']:>6.0f}%"
                  f"{100 * r['mode_rescaled']['mape']:>11.2f}%"
                  f"{100 * r['mode_rescaled']['within_10pct']:>6.0f}%{noise:>9}")
    if args.json is not None:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
