"""Per-layer precision summary of an arch, in the manner of Larq's ``models.summary``.

Every weight layer with its precision, its weight count by bit width (1 / 8 / 32), its
memory and its MACs; totals with the memory of the same network in fp32, the compression
ratio and the share of MACs per precision. Biases, batch-norm affine parameters and the
per-channel scales of quantised layers count as 32-bit; MACs are counted as
:mod:`ofa_search.units` counts them.
"""

from __future__ import annotations

from typing import Any

from ofa_search.arch import Arch
from ofa_search.units import arch_units

BITS = (1, 8, 32)
_NAMES = {1: "binary", 8: "int8", 32: "fp32"}


def precision_summary(arch: Arch) -> dict[str, Any]:
    """Rows per weight layer and totals (see the module docstring). Memory in bytes."""
    rows: list[dict[str, Any]] = []
    weights = dict.fromkeys(BITS, 0)
    macs = dict.fromkeys(BITS, 0)
    memory = fp32_memory = 0.0
    for i, unit in enumerate(arch_units(arch)):
        for layer in unit.layers():
            counts = dict.fromkeys(BITS, 0)
            counts[layer.bits] += layer.weights
            counts[32] += layer.extra
            layer_memory = sum(n * bits / 8 for bits, n in counts.items())
            rows.append({"unit": i, "layer": layer.name if unit.kind != "mbconv"
                         else f"unit{i}.{layer.name}", "precision": _NAMES[layer.bits],
                         "weights_1bit": counts[1], "weights_8bit": counts[8],
                         "weights_32bit": counts[32], "memory_bytes": layer_memory,
                         "macs": layer.macs})
            for bits in BITS:
                weights[bits] += counts[bits]
            macs[layer.bits] += layer.macs
            memory += layer_memory
            fp32_memory += 4 * (layer.weights + layer.extra)
    total_macs = sum(macs.values())
    return {
        "arch": arch.to_string(),
        "layers": rows,
        "weights": {f"{b}bit": weights[b] for b in BITS},
        "memory_bytes": memory,
        "fp32_memory_bytes": fp32_memory,
        "compression": fp32_memory / memory,
        "macs": {_NAMES[b]: macs[b] for b in BITS},
        "macs_share": {_NAMES[b]: macs[b] / total_macs for b in BITS},
    }


def format_precision_summary(summary: dict[str, Any]) -> str:
    """A plain-text table of :func:`precision_summary`."""
    head = (f"{'layer':<22} {'prec':<7} {'1-bit':>8} {'8-bit':>8} {'32-bit':>8} "
            f"{'memory':>10} {'MACs':>11}")
    lines = [f"arch {summary['arch']}", "", head, "-" * len(head)]
    for r in summary["layers"]:
        lines.append(f"{r['layer']:<22} {r['precision']:<7} {r['weights_1bit']:>8} "
                     f"{r['weights_8bit']:>8} {r['weights_32bit']:>8} "
                     f"{_kib(r['memory_bytes']):>10} {r['macs']:>11,}")
    w, share = summary["weights"], summary["macs_share"]
    lines += ["-" * len(head),
              f"{'total':<30} {w['1bit']:>8} {w['8bit']:>8} {w['32bit']:>8} "
              f"{_kib(summary['memory_bytes']):>10} {sum(summary['macs'].values()):>11,}",
              "",
              f"memory {_kib(summary['memory_bytes'])} (fp32: "
              f"{_kib(summary['fp32_memory_bytes'])}), compression "
              f"{summary['compression']:.2f}x",
              "MACs by precision: " + ", ".join(f"{name} {share[name]:.1%}"
                                                for name in ("binary", "int8", "fp32"))]
    return "\n".join(lines)


def _kib(n: float) -> str:
    return f"{n / 1024:.2f} KiB"
