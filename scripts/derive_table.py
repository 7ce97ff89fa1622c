"""Derive a device table for a space that differs from a profiled table's space only in the
precision of some units (an int8 head), measuring just those units.

    python scripts/derive_table.py TABLE_JSON SPACE DEVICE_ID [--rounds 7] [--out PATH]

Every unit the two spaces share is copied; each unit the table lacks is timed on the
table's profile beside its fp32 twin, in ``--rounds`` interleaved rounds, and priced at the
twin's table price times the median ratio (``ofa_search.profiling.derive``). The mode
overheads are copied: refit the modes whose artefacts changed afterwards
(``scripts/fit_mode_overhead.py OUT --mode int8`` and so on). Writes the table atomically
(default: ``DEVICE_ID.json`` beside TABLE_JSON) and prints each new unit's price.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import ofa_search.binary  # registers the timing of binary units
import ofa_search.quant  # noqa: F401  (registers the timing of int8 units)
from ofa_search.errors import OfaSearchError
from ofa_search.profiling.derive import derive_table
from ofa_search.profiling.lut import LatencyTable


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", type=Path)
    parser.add_argument("space")
    parser.add_argument("device_id")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None,
                        help="default: DEVICE_ID.json beside TABLE_JSON")
    args = parser.parse_args(argv)
    out = args.out or args.table.with_name(f"{args.device_id}.json")
    if out.resolve() == args.table.resolve():
        parser.error("--out must not overwrite the source table")
    try:
        table = LatencyTable.load(args.table)
        derived = derive_table(table, args.space, args.device_id, rounds=args.rounds)
    except OfaSearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{'unit':<58} {'ms':>8} {'fp32 twin ms':>13} {'ratio':>7}")
    for row in derived.meta["derived"]["units"]:
        print(f"{row['unit']:<58} {row['ms']:>8.4f} {row['twin_ms']:>13.4f} "
              f"{row['ratio']:>7.3f}")
    host = derived.meta["derived"]["host_ratio_median"]
    print(f"host speed against the table (twins measured / priced): "
          f"{'-' if host is None else format(host, '.3f')}")
    path = derived.save(out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
