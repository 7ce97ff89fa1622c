"""Binary conv kernels (TVM, NumPy) against ONNX Runtime's fp32 Conv, batch 1.

    python scripts/bench_binary_kernels.py [--out results/bench_binary_kernels.json]
        [--threads 1] [--tiny]

Prints a table and writes rows plus notes (CPU flags, TVM target and instructions, which
kernels ONNX Runtime runs) as JSON, atomically. ``--tiny`` runs one small shape (a smoke
test). The logic lives in :mod:`ofa_search.binary.benchmark`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench_binary_kernels.json"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="one small shape only")
    args = parser.parse_args()
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))  # before TVM starts its pool
    import torch

    from ofa_search.atomic import atomic_write_json
    from ofa_search.binary.benchmark import SHAPES, KernelShape, format_rows, run_benchmark

    torch.set_num_threads(args.threads)
    shapes = (KernelShape("3x3 64->32 @6x6", 64, 32, 3, 6),) if args.tiny else SHAPES
    result = run_benchmark(args.threads, shapes)
    atomic_write_json(args.out, result)
    print(format_rows(result["rows"]))
    notes = result["notes"]
    flags = ", ".join(f for f, on in notes["cpu_flags"].items() if on)
    print(f"cpu: {notes['cpu']} ({flags})")
    if notes["tvm"]:
        print(f"tvm: {notes['tvm']['target']}, vpopcntq zmm: "
              f"{notes['tvm']['kernel_uses_vpopcntq_zmm']}")
    for graph in notes["onnxruntime_graphs"]:
        print(f"onnxruntime {graph['shape']}: {' -> '.join(graph['optimized_graph'])}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
