"""Count the distinct MetaSchedule workloads of a space's units: the tuning cost of a TVM
table is about this count times the cost of tuning one workload.

    python scripts/count_tvm_workloads.py [--space mbv3_small28] [-r 28 ...]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from ofa_search.profiling.builder import enumerate_units
from ofa_search.profiling.device import default_llvm_target
from ofa_search.profiling.measure import unit_onnx


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="mbv3_small28")
    parser.add_argument("-r", "--resolutions", type=int, nargs="*", default=None)
    args = parser.parse_args(argv)
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    from ofa_search.profiling.backends.tvm_tuning import workload_keys

    target = tvm.target.Target(default_llvm_target(1))
    units = enumerate_units(args.space, None, args.resolutions)
    workloads: dict[str, str] = {}
    for unit in units:
        model, inputs = unit_onnx(unit)
        mod = from_onnx(model, shape_dict={k: list(v.shape) for k, v in inputs.items()})
        workloads.update(workload_keys(mod, target))
    kinds = Counter(name.split("_")[0] for name in workloads.values())
    print(f"{args.space} at {args.resolutions or 'all resolutions'}: {len(units)} units, "
          f"{len(workloads)} distinct workloads ({dict(kinds)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
