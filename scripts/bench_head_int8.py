"""The fp32 head of every precision mode: its share of a subnet, and what int8 would save.

    python scripts/bench_head_int8.py [OUT_JSON] [--rounds 7] [--runs 100] [--table PATH]

The stem, the first block and the head of ``ofa_mbv3`` stay fp32 in the int8 (QDQ) and
the binary (package) networks. The head ends in two matrix-vector products (feature mix
960→1280 and classifier 1280→1000, about 9.8 MB of fp32 weights read per image), which
a batch of one cannot reuse: memory-bound work that int8 weights make four times
smaller. This times the head alone (``ofa_search.nn.static.Head`` of ``ofa_mbv3`` at
width 1.0, seeded random weights) in ONNX Runtime at one thread, at the input sizes of
160 and 224 px, as:

- ``fp32``: as every mode runs it today;
- ``int8``: all three layers quantised (``quantize_static``, QDQ, per-channel symmetric
  int8 weights, uint8 activations calibrated on 8 seeded inputs);
- ``int8-gemv``: only the feature mix and the classifier (the final expand, a 1×1 conv
  over a 5×5 or 7×7 map, stays fp32);

in interleaved rounds (``_timing.interleaved``: every variant once untimed, then ``--runs``
timed calls per round, their median the round's value; a variant's time is the median over
rounds), with the largest output difference from fp32. With ``--table`` (default: the shipped
``cpu-ort-1t-ofa-mp-vnni`` table) it also reports the head unit's share of the table's
prediction for 20 seeded fp32 subnets at each resolution. Prints a table and writes the
JSON atomically (default ``results/bench_head_int8.json``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from _timing import Runner, interleaved

from ofa_search.arch import Arch
from ofa_search.atomic import atomic_write_json
from ofa_search.nn.static import Head
from ofa_search.onnx_export import export_onnx
from ofa_search.ort_options import exact_int8
from ofa_search.profiling.host import host_info
from ofa_search.profiling.lut import LatencyTable, now_iso
from ofa_search.units import HeadUnit, arch_units

SPACE = "ofa_mbv3"
RESOLUTIONS = (160, 224)
VARIANTS = ("fp32", "int8", "int8-gemv")
DEFAULT_TABLE = (Path(__file__).resolve().parents[1] / "ofa_search" / "hw_profiles"
                 / "cpu-ort-1t-ofa-mp-vnni.json")


def head_unit(resolution: int) -> HeadUnit:
    """The head unit of every ``ofa_mbv3`` subnet at ``resolution`` (width 1.0)."""
    unit = arch_units(Arch.largest(SPACE, 1.0).replace(resolution=resolution))[-1]
    assert isinstance(unit, HeadUnit)
    return unit


def head_models(unit: HeadUnit, seed: int) -> dict[str, onnx.ModelProto]:
    """The head as fp32 ONNX and its two int8 variants."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    torch.manual_seed(seed)
    shape = (1, unit.in_channels, unit.in_size, unit.in_size)
    fp32 = export_onnx(Head(unit), shape)
    rng = np.random.default_rng(seed)
    samples = [rng.standard_normal(shape, dtype=np.float32) for _ in range(8)]

    class Samples(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{fp32.graph.input[0].name: s} for s in samples])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    convs = [n.name for n in fp32.graph.node if n.op_type == "Conv"]
    gemv = [n.name for n in fp32.graph.node if n.op_type in ("Gemm", "MatMul")] + convs[1:]
    out = {"fp32": fp32}
    with tempfile.TemporaryDirectory(prefix="ofa-head-") as tmp:
        src = Path(tmp) / "fp32.onnx"
        onnx.save(fp32, str(src))
        for name, nodes in (("int8", None), ("int8-gemv", gemv)):
            dst = Path(tmp) / f"{name}.onnx"
            quantize_static(str(src), str(dst), Samples(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, nodes_to_quantize=nodes)
            out[name] = onnx.load(str(dst))
    return out


def _session(model: onnx.ModelProto) -> Any:
    import onnxruntime as ort

    options = exact_int8(ort.SessionOptions())
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _runner(session: Any, feed: dict[str, np.ndarray]) -> Runner:
    return lambda: session.run(None, feed)


def table_shares(table: LatencyTable, resolution: int, n: int = 20, seed: int = 0
                 ) -> dict[str, float]:
    """The head unit's price and its median share of ``n`` seeded fp32 subnets' prices."""
    head = float(table.entries[head_unit(resolution).key]["median_ms"])
    rng = np.random.default_rng(seed)
    archs = [Arch.sample(table.space, rng, width_mult=1.0, resolution=resolution)
             for _ in range(n)]
    archs = [a.replace(precisions=("fp32",) * len(a.precisions)) for a in archs]
    predicted = np.array([table.predict(a) for a in archs])
    return {"head_unit_ms": head, "subnet_median_ms": float(np.median(predicted)),
            "head_share_median": float(np.median(head / predicted))}


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", default="results/bench_head_int8.json")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=100, help="timed calls per round")
    parser.add_argument("--table", type=Path, default=DEFAULT_TABLE,
                        help="a latency table of ofa_mbv3 subnets for the head's share "
                             "(--table none: skip)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.runs < 1:
        parser.error("--rounds and --runs must be at least 1")
    table = None
    if str(args.table) != "none":
        table = LatencyTable.load(args.table)
        if table.space not in (SPACE, f"{SPACE}_mp"):
            parser.error(f"--table prices space {table.space!r}, not {SPACE}")
    torch.set_num_threads(1)
    sessions: dict[tuple[int, str], Any] = {}
    feeds: dict[int, dict[str, np.ndarray]] = {}
    for resolution in RESOLUTIONS:
        unit = head_unit(resolution)
        for name, model in head_models(unit, resolution).items():
            sessions[resolution, name] = _session(model)
        shape = (1, unit.in_channels, unit.in_size, unit.in_size)
        feeds[resolution] = {"input": np.random.default_rng(1).standard_normal(
            shape, dtype=np.float32)}
    timed = interleaved({key: _runner(session, feeds[key[0]])
                         for key, session in sessions.items()}, args.rounds, args.runs)
    rows = []
    print(f"{'px':>4} {'map':>4}" + "".join(f"{v:>11}" for v in VARIANTS)
          + "   int8 saves  max |Δ| int8  table head / subnet")
    for resolution in RESOLUTIONS:
        ms = {v: float(timed[resolution, v]["median_ms"]) for v in VARIANTS}
        ref = sessions[resolution, "fp32"].run(None, feeds[resolution])[0]
        diffs = {v: float(np.abs(sessions[resolution, v].run(None, feeds[resolution])[0]
                                 - ref).max()) for v in VARIANTS[1:]}
        row: dict[str, Any] = {"resolution": resolution,
                               "head_input": head_unit(resolution).in_size, "ms": ms,
                               "rounds_ms": {v: timed[resolution, v]["rounds_ms"]
                                             for v in VARIANTS},
                               "max_abs_diff": diffs,
                               "fp32_output_max_abs": float(np.abs(ref).max())}
        if table is not None:
            row["table"] = table_shares(table, resolution)
        rows.append(row)
        share = (f"{row['table']['head_unit_ms']:.3f} / {row['table']['subnet_median_ms']:.2f}"
                 f" ms ({row['table']['head_share_median']:.0%})" if table is not None else "-")
        print(f"{resolution:>4} {row['head_input']:>4}" + "".join(f"{ms[v]:11.3f}"
                                                               for v in VARIANTS)
              + f"   {ms['fp32'] - ms['int8']:7.3f} ms  {diffs['int8']:10.2g}  {share}")
    out = Path(args.out)
    atomic_write_json(out, {"created": now_iso(), "threads": 1, "rounds": args.rounds,
                            "runs": args.runs, "space": SPACE, "host": host_info(),
                            "table": None if table is None else table.device_id,
                            "rows": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
