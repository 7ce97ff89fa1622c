"""Fit one precision mode's overhead into a table profiled earlier, on the table's time base.

    python scripts/fit_mode_overhead.py TABLE_JSON [--mode mixed|binary+int8head|…] [--n 20]
        [--rounds 4] [--references 5] [--seed 1000003] [--out PATH]

A table profiled before a mode had an overhead of its own (``mixed``: int8 and binary
stages in one package, priced with the ``binary`` overhead until 2026-12-07) gets one
without profiling its units again: ``--n`` seeded subnets of the mode (the overhead fit's
seed by default) are measured on the table's profile with ``--references`` of its reference
subnets in every round (:func:`ofa_search.profiling.validate.validate_modes`), so each
round is divided by the host's speed in it and the times are on the table's time base,
however the host has drifted since profiling. The mode's overhead is the median of
(normalised time − network sum), as the profile's own fit computes it; the samples, the
host's speed and the noise floor go to ``meta["overhead"]``. Writes the table atomically to
``--out`` (default: in place) and prints the old and new prices of the measured subnets.

A mode with its head's precision (``--mode binary+int8head``; tables of ``head_int8``
spaces such as ``ofa_mbv3_mp_int8head``) measures only the mode's subnets whose head runs
in that precision, and prices them apart from the others (``lut.head_mode``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

import ofa_search.binary  # registers the timing of binary units
import ofa_search.quant  # noqa: F401  (registers the timing of int8 units)
from ofa_search.arch import Arch
from ofa_search.errors import OfaSearchError
from ofa_search.metrics import mape
from ofa_search.profiling.builder import OVERHEAD_SEED
from ofa_search.profiling.lut import MIXED_MODE, LatencyTable, now_iso
from ofa_search.profiling.validate import validate_modes

MODES = ("int8", "binary", MIXED_MODE,
         *(f"{m}+{h}head" for m in ("int8", "binary", MIXED_MODE) for h in ("fp32", "int8")))
"""A mode, or a mode with its head's precision (tables of ``head_int8`` spaces price the
two heads' artefacts apart: ``lut.head_mode``)."""


def fit(table: LatencyTable, mode: str, n: int, rounds: int, references: int,
        seed: int = OVERHEAD_SEED, progress: bool = True) -> dict[str, float | None]:
    """Measure ``n`` subnets of ``mode`` on ``table``'s time base and set the mode's overhead
    (in place); returns the old and new MAPE of the table on them, and the noise floor."""
    (report,) = validate_modes(table, (mode,), n, seed, rounds=rounds, references=references,
                               progress=progress)
    archs = [Arch.parse(row["arch"], table.space) for row in report.rows]
    measured = [float(row["measured_ms"]) for row in report.rows]
    before = [table.predict(a) for a in archs]
    gaps = [ms - table.network_sum(a) for a, ms in zip(archs, measured, strict=True)]
    old = table.overhead_by_mode.get(mode, table.mode_overhead(archs[0]))
    table.overhead_by_mode[mode] = float(np.median(gaps))
    after = [table.predict(a) for a in archs]
    ratios = [r for row in report.rows for r in row.get("host_ratio", [])]
    overhead = table.meta.setdefault("overhead", {})
    overhead[f"gaps_ms_{mode}"] = gaps
    overhead[f"fit_{mode}"] = {
        "created": now_iso(), "n": n, "seed": seed, "rounds": rounds,
        "references": references, "replaced_ms": old,
        "host_ratio_median": statistics.median(ratios) if ratios else None,
        "noise_mape": report.noise_mape, "load_avg": report.load_avg,
        "method": "scripts/fit_mode_overhead.py: median of (time normalised by the "
                  "reference subnets' speed in each round − network sum)"}
    table.meta["updated"] = now_iso()
    return {"mape_before": mape(before, measured), "mape_after": mape(after, measured),
            "noise_mape": report.noise_mape, "overhead_before_ms": old,
            "overhead_after_ms": table.overhead_by_mode[mode]}


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", type=Path)
    parser.add_argument("--mode", choices=MODES, default=MIXED_MODE)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--references", type=int, default=5)
    parser.add_argument("--seed", type=int, default=OVERHEAD_SEED)
    parser.add_argument("--out", type=Path, default=None, help="default: TABLE itself")
    args = parser.parse_args(argv)
    if min(args.n, args.rounds, args.references) < 1:
        parser.error("--n, --rounds and --references must be >= 1")
    try:
        table = LatencyTable.load(args.table)
        result = fit(table, args.mode, args.n, args.rounds, args.references, args.seed)
    except OfaSearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = table.save(args.out or args.table)
    old = result["overhead_before_ms"]
    print(f"{table.device_id}: {args.mode} overhead "
          f"{'none' if old is None else format(old, '.4f')} -> "
          f"{result['overhead_after_ms']:.4f} ms; MAPE on the {args.n} measured subnets "
          f"{result['mape_before']:.2%} -> {result['mape_after']:.2%} (noise floor "
          f"{'-' if result['noise_mape'] is None else format(result['noise_mape'], '.2%')})")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
