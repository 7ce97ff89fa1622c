"""Profile (if asked) and validate a device latency table.

    python scripts/bench_latency.py RESULTS_DIR --device cpu-ort-1t [--profile --threads 1]
        [--space mbv3_small28] [--resolutions 16 20 ...] [--n 100] [--time-cap 0.5]
        [--provider CUDAExecutionProvider] [--batch-size 64] [--tables-dir DIR]
        [--backend torch --torch-device cuda --torch-dtype fp16 --cuda-graphs]
        [--precision fp32 int8 binary] [--modes mixed] [--separate-modes] [--references 5]

Profiles with ONNX Runtime (any execution provider it has) or PyTorch (CPU or CUDA) into
``--tables-dir`` (default: the shipped tables, ``ofa_search/hw_profiles/``), then writes
``RESULTS_DIR/latency_validation_<device>.json`` atomically and prints a summary. A table
with int8 or binary units (``--precision``, a space with a precision per stage) is
validated per precision mode, one record each (``…_<device>_<mode>.json``), the modes'
subnets measured in the same interleaved rounds (``--separate-modes``: one mode after
another); ``--modes mixed`` validates subnets with int8 and binary stages in one network.
Each record has its noise floor: the MAPE between the first and the last half of its
rounds (``--rounds 4`` gives two rounds a half). ``--references K`` times K of the table's
reference subnets in every round and divides each round by the host's speed in it, so a
shared host's slow spells (and its drift since profiling) cancel out; each record then
keeps its raw times and noise floor beside the normalised ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import ofa_search.binary  # registers the timing of binary units
import ofa_search.quant  # noqa: F401  (registers the timing of int8 units)
from ofa_search.errors import OfaSearchError
from ofa_search.profiling.builder import build_table
from ofa_search.profiling.device import DeviceProfile
from ofa_search.profiling.lut import REPO_TABLE_DIR, find_table, unit_agreement
from ofa_search.profiling.measure import MEASURE_ROUNDS
from ofa_search.profiling.timing import TimingConfig
from ofa_search.profiling.validate import VALIDATION_SEED, validate_modes


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results_dir")
    parser.add_argument("--device", required=True, help="device id, e.g. cpu-ort-1t")
    parser.add_argument("--profile", action="store_true",
                        help="build (or resume) the table first, with ONNX Runtime on this host")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--space", default="mbv3_small28")
    parser.add_argument("--resolutions", type=int, nargs="*", default=None)
    parser.add_argument("--time-cap", type=float, default=0.5,
                        help="seconds of sampling per measurement (default 0.5)")
    parser.add_argument("--n", type=int, default=100, help="held-out archs (default 100)")
    parser.add_argument("--seed", type=int, default=VALIDATION_SEED)
    parser.add_argument("--provider", default="CPUExecutionProvider",
                        help="ONNX Runtime execution provider of a new profile")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=MEASURE_ROUNDS,
                        help="interleaved measurements of each model (median kept)")
    parser.add_argument("--overhead-archs", type=int, default=10)
    parser.add_argument("--backend", choices=("onnxruntime", "torch"), default="onnxruntime")
    parser.add_argument("--torch-device", default="cpu", help="torch backend: cpu, cuda[:N]")
    parser.add_argument("--torch-dtype", default="fp32", help="torch backend: fp32, fp16, bf16")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="torch backend on CUDA: time CUDA-graph replays")
    parser.add_argument("--precision", nargs="+", default=None,
                        help="precisions a new table prices (default fp32) and the modes "
                             "validated (default: every precision the table prices)")
    parser.add_argument("--modes", nargs="+", default=None,
                        help="precision modes to validate instead (fp32, int8, binary, or "
                             "mixed: int8 and binary stages in one subnet)")
    parser.add_argument("--separate-modes", action="store_true",
                        help="validate the precision modes one after another instead of "
                             "in the same interleaved rounds")
    parser.add_argument("--references", type=int, default=0,
                        help="reference subnets of the table timed in every round, whose "
                             "speed divides that round's times (default 0: raw times)")
    parser.add_argument("--tables-dir", type=Path, default=REPO_TABLE_DIR,
                        help="where the table is written and looked up")
    args = parser.parse_args(argv)
    timing = TimingConfig(warmup=3, min_runs=7, max_runs=200, time_cap_s=args.time_cap)
    if args.profile:
        if args.backend == "torch":
            profile = DeviceProfile.local_torch(
                args.threads, device=args.torch_device, dtype=args.torch_dtype,
                cuda_graphs=args.cuda_graphs, id=args.device, batch_size=args.batch_size)
        else:
            profile = DeviceProfile.local_onnxruntime(
                args.threads, id=args.device, execution_provider=args.provider,
                batch_size=args.batch_size)
        if args.precision:
            profile = dataclasses.replace(profile, precisions=tuple(args.precision))
        start = time.perf_counter()
        table = build_table(args.space, profile, args.resolutions,
                            args.tables_dir / f"{args.device}.json", timing=timing,
                            rounds=args.rounds, overhead_archs=args.overhead_archs)
        print(f"profiled {len(table.entries)} units in {time.perf_counter() - start:.1f} s "
              f"(overhead {table.overhead_ms:.4f} ms)")
        agreement = unit_agreement(table)
        if agreement is not None:
            print(agreement.summary())
            if agreement.noisy:
                print(agreement.warning(table.device_id))
    table = find_table(args.device, [args.tables_dir])
    modes = args.modes or args.precision or table.precisions
    if args.separate_modes:  # one mode after another (how the older records were taken)
        reports = [report for mode in modes for report in validate_modes(
            table, (mode,), args.n, args.seed, timing=timing, rounds=args.rounds,
            progress=True, references=args.references)]
    else:
        reports = validate_modes(table, modes, args.n, args.seed, timing=timing,
                                 rounds=args.rounds, progress=True,
                                 references=args.references)
    for report in reports:
        print("\n".join(report.summary_lines()))
        print(f"wrote {report.save(args.results_dir)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except OfaSearchError as exc:  # bad input: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
