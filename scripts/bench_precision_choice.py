"""Low precision where the table says it wins: each stage's precision chosen by the table,
measured end to end against the same subnet in fp32.

    python scripts/bench_precision_choice.py [OUT_JSON] [--table PATH] [--n 20]
        [--rounds 4] [--references 5] [--seed 2000011] [--variants int8 binary any]

``--n`` seeded random fp32 subnets of the table's space, width and resolutions (each at
one of them). For each, and for each variant, the table's cheapest precision per stage
(:meth:`LatencyTable.cheapest_precisions`, every assignment priced whole with its mode's
overhead):

- ``int8``: each stage fp32 or int8;
- ``binary``: each stage fp32 or binary;
- ``any``: each stage fp32, int8 or binary (int8 and binary stages in one package).

A pick may be the fp32 subnet itself; the table then turned low precision down, and
``<variant>-forced`` is the cheapest assignment with a low-precision stage, to check that
refusal. ``all-int8`` and ``all-binary`` (every stage in one precision, as
``bench_precision_mbv3.py`` runs them) are the whole-mode baselines. Every distinct subnet
is then exported as the table prices it (fp32 ONNX, QDQ int8, a binary package;
``prepare_arch``) and timed on the table's own profile in interleaved rounds, a few subnets
at a time with each one's fp32 twin in the same rounds. With ``--references K`` the table's
reference subnets are timed beside them and each round is divided by that round's host
speed, as ``bench_latency.py --references`` does, so the host's drift since the table was
profiled cancels out.

Reported per variant (picks, forced picks, whole modes): how many subnets are not all fp32
and their stages by precision, the speed-up over fp32 the table predicts and the one
measured (median, min, max, the share measured faster), and the picks' measured / predicted
over their fp32 twin's: a table that underprices some precision's units picks them too
often and its answers then run over their prices. The noise floor is the MAPE between the
first and the last half of every timed subnet's rounds. Prints a table and writes the JSON
atomically (default ``results/bench_precision_choice.json``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _record import sanitized_command

import ofa_search.binary  # registers the timing of binary units
import ofa_search.quant  # noqa: F401  (registers the timing of int8 units)
from ofa_search.arch import Arch
from ofa_search.atomic import atomic_write_json
from ofa_search.errors import OfaSearchError
from ofa_search.metrics import mape
from ofa_search.profiling.backends import get_backend
from ofa_search.profiling.builder import mode_archs
from ofa_search.profiling.device import DeviceProfile
from ofa_search.profiling.lut import LatencyTable, now_iso
from ofa_search.profiling.measure import FAST_TIMING, measure_many_rounds, prepare_arch
from ofa_search.profiling.timing import TimingStats
from ofa_search.profiling.validate import first_references, host_ratios, round_times
from ofa_search.space import get_space

VARIANTS = {"int8": ("fp32", "int8"), "binary": ("fp32", "binary"),
            "any": ("fp32", "int8", "binary")}
DEFAULT_TABLE = (Path(__file__).resolve().parents[1] / "ofa_search" / "hw_profiles"
                 / "cpu-ort-1t-ofa-mp-vnni.json")
SEED = 2_000_011
"""Seed of the subnets (distinct from the tables' overhead fit and validation seeds)."""
GROUP = 3
"""Subnets (with all their variants) timed in the same rounds."""


def picks(table: LatencyTable, geometries: list[Arch], variants: list[str],
          fp32_head_space: str | None = None) -> list[dict[str, Arch]]:
    """Per subnet: ``fp32``; each variant's cheapest precision per stage; where that pick is
    the fp32 subnet itself, ``<variant>-forced``, the cheapest with a low-precision stage
    (what the table turned down); and ``all-<precision>``, every stage in one precision
    that a variant may choose, as a whole-mode baseline. With ``fp32_head_space``, each
    pick and whole mode whose head is int8 also gets ``<name>-fp32-head``: the same stages
    in that space, whose head stays fp32 (what the int8 head gains, in the same rounds)."""
    whole = [p for p in ("int8", "binary") if any(p in VARIANTS[v] for v in variants)]
    out = []
    for g in geometries:
        row = {"fp32": g}
        for v in variants:
            row[v] = table.cheapest_precisions(g, VARIANTS[v])
            if set(row[v].precisions) == {"fp32"}:
                row[f"{v}-forced"] = table.cheapest_precisions(g, VARIANTS[v],
                                                               low_precision=True)
        for p in whole:
            row[f"all-{p}"] = g.replace(precisions=(p,) * g.search_space.num_stages)
        if fp32_head_space is not None:
            for name in [n for n in row if not n.endswith("-forced") and n != "fp32"]:
                arch = row[name]
                if arch.search_space.head_precision(arch.precisions) == "int8":
                    row[f"{name}-fp32-head"] = Arch.parse(arch.to_string(), fp32_head_space)
        out.append(row)
    return out


def _key(arch: Arch) -> str:
    """An arch's identity across spaces (the fp32-head twins share the picks' strings)."""
    return f"{arch.space}:{arch.to_string()}"


def time_together(backend: Any, profile: DeviceProfile, archs: list[Arch],
                  ref_archs: list[Arch], rounds: int
                  ) -> tuple[list[list[TimingStats]], list[list[TimingStats]]]:
    """``archs`` and ``ref_archs`` prepared at once and timed in the same interleaved rounds:
    each one's rounds."""
    items = [*archs, *ref_archs]
    samples = measure_many_rounds(
        list(range(len(items))),
        lambda i: prepare_arch(backend, items[i], profile.batch_size, profile),
        rounds=rounds, chunk=len(items))
    return samples[:len(archs)], samples[len(archs):]


def measure(table: LatencyTable, chosen: list[dict[str, Arch]], rounds: int,
            references: int, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Every distinct arch of ``chosen`` timed on the table's profile, ``GROUP`` subnets per
    chunk of interleaved rounds: arch string → measured ms (normalised by the references'
    host speed when ``references`` > 0), raw ms and the two halves of its rounds."""
    profile = table.profile()
    if profile is None:
        raise OfaSearchError(f"table {table.device_id!r} was imported, not measured here")
    ref_archs, ref_ms = first_references(table, references)
    backend = get_backend(profile, timing=FAST_TIMING)
    out: dict[str, dict[str, Any]] = {}
    try:
        for start in range(0, len(chosen), GROUP):
            group = chosen[start:start + GROUP]
            archs = list({_key(a): a for row in group for a in row.values()}.values())
            samples, ref_rounds = time_together(backend, profile, archs, ref_archs, rounds)
            ratios = host_ratios(ref_rounds, ref_ms) if ref_archs else None
            for arch, rounds_of in zip(archs, samples, strict=True):
                t = round_times(rounds_of, ratios)
                out[_key(arch)] = {
                    "measured_ms": t.measured_ms, "measured_raw_ms": t.raw_ms,
                    "first_ms": t.first_ms, "last_ms": t.last_ms,
                    "host_ratio": None if ratios is None else [float(r) for r in ratios]}
            if progress:
                print(f"[{min(start + GROUP, len(chosen))}/{len(chosen)}] "
                      f"{len(archs)} subnets timed", flush=True)
    finally:
        close = getattr(backend, "close", None)
        if close is not None:
            close()
    return out


def rows_of(table: LatencyTable, chosen: list[dict[str, Arch]],
            measured: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per subnet: each variant's arch, predicted and measured ms and speed-ups."""
    rows = []
    for i, row in enumerate(chosen):
        out: dict[str, Any] = {"subnet": i, "resolution": row["fp32"].resolution}
        for name, arch in row.items():
            m = measured[_key(arch)]
            # the fp32-head twins belong to another space: the table does not price them
            priced = arch.space == table.space
            out[name] = {"arch": arch.to_string(), "precisions": list(arch.precisions),
                         "predicted_ms": table.predict(arch) if priced else None, **m}
        for name in row:
            if name != "fp32":
                v, f = out[name], out["fp32"]
                v["measured_speedup"] = f["measured_ms"] / v["measured_ms"]
                if v["predicted_ms"] is None:
                    # what the int8 head gains: the fp32-head twin's time over the pick's
                    v["int8_head_gain"] = v["measured_ms"] / out[
                        name.removesuffix("-fp32-head")]["measured_ms"]
                    continue
                v["predicted_speedup"] = f["predicted_ms"] / v["predicted_ms"]
                # the pick's measured / predicted, over its fp32 twin's
                v["error_vs_fp32"] = ((v["measured_ms"] / v["predicted_ms"])
                                      / (f["measured_ms"] / f["predicted_ms"]))
        rows.append(out)
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant (the picks, the forced picks, the whole modes): how many subnets have a
    low-precision stage, stages by precision, predicted and measured speed-ups of those;
    the noise floor of every timed subnet (first half of its rounds against the last)."""
    summary: dict[str, Any] = {}
    names = list(dict.fromkeys(k for r in rows for k in r
                               if isinstance(r[k], dict) and k != "fp32"))
    for v in names:
        entries = [r[v] for r in rows if v in r]
        low = [x for x in entries if set(x["precisions"]) != {"fp32"}]
        entry: dict[str, Any] = {
            "subnets": len(entries), "low_precision_picks": len(low),
            "stages": dict(Counter(p for x in entries for p in x["precisions"]))}
        for key in ("predicted_speedup", "measured_speedup", "error_vs_fp32",
                    "int8_head_gain"):
            values = [x[key] for x in low if key in x]
            entry[key] = ({"median": statistics.median(values), "min": min(values),
                           "max": max(values)} if values else None)
        if low:
            entry["measured_faster"] = sum(x["measured_speedup"] > 1 for x in low) / len(low)
            priced = [x for x in low if x["predicted_ms"] is not None]
            entry["mape_of_picks"] = (mape([x["predicted_ms"] for x in priced],
                                           [x["measured_ms"] for x in priced])
                                      if priced else None)
        summary[v] = entry
    timed = {r[k]["arch"]: r[k] for r in rows for k in r if isinstance(r[k], dict)}
    halves = [(t["first_ms"], t["last_ms"]) for t in timed.values()
              if t["first_ms"] is not None]
    summary["noise_mape"] = (mape([a for a, _ in halves], [b for _, b in halves])
                             if halves else None)
    summary["fp32_mape"] = mape([r["fp32"]["predicted_ms"] for r in rows],
                                [r["fp32"]["measured_ms"] for r in rows])
    return summary


def _f(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def print_report(rows: list[dict[str, Any]], summary: dict[str, Any],
                 variants: list[str]) -> None:
    whole = [k for k in rows[0] if k.startswith("all-")] if rows else []
    print(f"\n{'#':>3} {'res':>4} {'fp32 ms':>8}" + "".join(
        f" {v + ' pick':>12} {'pred x':>7} {'meas x':>7}" for v in variants)
        + "".join(f" {k + ' x':>14}" for k in whole))
    short = {"fp32": "f", "int8": "8", "binary": "b"}
    for r in rows:
        print(f"{r['subnet']:>3} {r['resolution']:>4} {r['fp32']['measured_ms']:>8.2f}" + "".join(
            f" {''.join(short[p] for p in r[v]['precisions']):>12} "
            f"{r[v]['predicted_speedup']:>7.2f} {r[v]['measured_speedup']:>7.2f}"
            for v in variants) + "".join(f" {_f(r[k]['measured_speedup'] if k in r else None):>14}"
                                         for k in whole))
    print("\nper variant (subnets with a low-precision stage): speed-up over fp32, "
          "median [min, max]")
    for v in [k for k in summary if isinstance(summary[k], dict)]:
        s = summary[v]
        p, m, e = s["predicted_speedup"], s["measured_speedup"], s["error_vs_fp32"]
        if not s["low_precision_picks"]:
            print(f"  {v:<13} no pick has a low-precision stage; stages {s['stages']}")
            continue
        if p is None:
            g = s["int8_head_gain"]
            print(f"  {v:<13} {s['low_precision_picks']} subnets with an fp32 head: measured "
                  f"{m['median']:.2f}x [{m['min']:.2f}, {m['max']:.2f}] over fp32; the int8 "
                  f"head makes them {g['median']:.2f}x faster [{g['min']:.2f}, "
                  f"{g['max']:.2f}]")
            continue
        print(f"  {v:<13} {s['low_precision_picks']}/{s['subnets']} picks, stages "
              f"{s['stages']}; predicted {p['median']:.2f}x, measured {m['median']:.2f}x "
              f"[{m['min']:.2f}, {m['max']:.2f}], faster {s['measured_faster']:.0%}; "
              f"measured/predicted over fp32's {e['median']:.3f} "
              f"[{e['min']:.3f}, {e['max']:.3f}], MAPE {_f(s['mape_of_picks'], '.2%')}")
    print(f"  fp32 MAPE {summary['fp32_mape']:.2%}; noise floor (halves of the rounds) "
          f"{_f(summary['noise_mape'], '.2%')}")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", type=Path,
                        default=Path("results/bench_precision_choice.json"))
    parser.add_argument("--table", type=Path, default=DEFAULT_TABLE)
    parser.add_argument("--n", type=int, default=20, help="random subnets")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--references", type=int, default=5,
                        help="reference subnets timed beside, to divide out the host's speed")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                        default=list(VARIANTS))
    parser.add_argument("--fp32-head-space", default=None,
                        help="for a table of a head_int8 space: time each pick with an int8 "
                             "head beside the same stages in this space (its head fp32)")
    args = parser.parse_args(argv)
    if min(args.n, args.rounds) < 1 or args.references < 0:
        parser.error("--n and --rounds must be >= 1, --references >= 0")
    try:
        table = LatencyTable.load(args.table)
        variants = [v for v in args.variants if set(VARIANTS[v]) <= set(table.precisions)]
        if not variants:
            raise OfaSearchError(f"table {table.device_id!r} prices precisions "
                                 f"{list(table.precisions)}: none of the variants "
                                 f"{args.variants} can be chosen from it")
        geometries = mode_archs(table.space, args.n, args.seed, table.width_mult,
                                table.resolutions)
        if args.fp32_head_space is not None:
            head_space = get_space(args.fp32_head_space)
            if head_space.head_int8 or not get_space(table.space).head_int8:
                raise OfaSearchError(
                    f"--fp32-head-space needs a table of a head_int8 space (table: "
                    f"{table.space!r}) and a space whose head stays fp32 (got "
                    f"{head_space.name!r})")
        chosen = picks(table, geometries, variants, args.fp32_head_space)
        started = time.perf_counter()
        measured = measure(table, chosen, args.rounds, args.references)
    except OfaSearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = rows_of(table, chosen, measured)
    summary = summarize(rows)
    print_report(rows, summary, variants)
    skipped = [v for v in args.variants if v not in variants]
    report = {
        "benchmark": "precision_choice", "created": now_iso(),
        "command": sanitized_command("bench_precision_choice.py",
                                     sys.argv[1:] if argv is None else argv),
        "table": table.device_id, "table_created": table.created,
        "table_updated": table.meta.get("updated"),
        "table_overheads_ms": {"fp32": table.overhead_ms, **table.overhead_by_mode},
        "space": table.space,
        "width_mult": table.width_mult, "n": args.n, "seed": args.seed,
        "rounds": args.rounds, "references": args.references, "variants": variants,
        "fp32_head_space": args.fp32_head_space,
        "variants_skipped": skipped, "wall_s": time.perf_counter() - started,
        "host": _host(), "summary": summary, "rows": rows,
    }
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


def _host() -> dict[str, Any]:
    from ofa_search.profiling.host import host_info

    return host_info()


if __name__ == "__main__":
    sys.exit(main())
