"""ONNX Runtime int8 vs fp32 kernels on the same shapes (see ofa_search.quant.benchmark).

    python scripts/bench_int8_kernels.py [RESULTS_DIR] [--threads 1] [--time-cap 2.0]

Prints a table and writes ``RESULTS_DIR/bench_int8_kernels.json`` (default ``results/``)
atomically: the rows, the CPU's int8 flags, package versions and the target (int8 at
least 2× faster than fp32) with, per row, whether it was met.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ofa_search.atomic import atomic_write_json
from ofa_search.profiling.host import host_info
from ofa_search.profiling.lut import now_iso
from ofa_search.quant.benchmark import cpu_int8_support, format_rows, kernel_rows

TARGET_SPEEDUP = 2.0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results_dir", nargs="?", default="results")
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads")
    parser.add_argument("--time-cap", type=float, default=2.0,
                        help="seconds of sampling per model (default 2)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # model building only; timing is ORT's
    rows = kernel_rows(args.threads, time_cap_s=args.time_cap)
    for row in rows:
        row["meets_target"] = row["speedup"] >= TARGET_SPEEDUP
    print(format_rows(rows))
    print(f"CPU int8 flags: {cpu_int8_support()}")
    out = Path(args.results_dir) / "bench_int8_kernels.json"
    atomic_write_json(out, {"created": now_iso(), "threads": args.threads,
                            "target_speedup": TARGET_SPEEDUP, "host": host_info(),
                            "cpu_int8_flags": cpu_int8_support(), "rows": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
