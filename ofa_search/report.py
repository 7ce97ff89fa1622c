"""Human- and machine-readable descriptions of an architecture."""

from __future__ import annotations

from typing import Any

from ofa_search.arch import Arch
from ofa_search.units import HeadUnit, MBConvUnit, StemUnit, arch_units


def arch_report(arch: Arch) -> dict[str, Any]:
    """Resolution, depths, MACs and params (in millions) and one row per unit."""
    rows = []
    for i, unit in enumerate(arch_units(arch)):
        row: dict[str, Any] = {"index": i, "kind": unit.kind, "in_size": unit.in_size,
                               "out_size": unit.out_size, "macs_m": unit.macs() / 1e6,
                               "params_m": unit.params() / 1e6, "key": unit.key}
        if isinstance(unit, StemUnit):
            row.update(in_ch=unit.in_channels, out_ch=unit.out_channels, kernel=unit.kernel,
                       stride=unit.stride, act=unit.act)
        elif isinstance(unit, MBConvUnit):
            row.update(in_ch=unit.in_channels, out_ch=unit.out_channels, mid=unit.mid_channels,
                       kernel=unit.kernel, stride=unit.stride, act=unit.act,
                       se=unit.se_channels, residual=unit.residual, precision=unit.precision)
        elif isinstance(unit, HeadUnit):
            row.update(in_ch=unit.in_channels, out_ch=unit.num_classes,
                       mid=unit.expand_channels, mix=unit.mix_channels)
        rows.append(row)
    return {
        "arch": arch.to_string(),
        "space": arch.space,
        "resolution": arch.resolution,
        "width_mult": arch.width_mult,
        "depths": list(arch.depths),
        "macs_m": sum(r["macs_m"] for r in rows),
        "params_m": sum(r["params_m"] for r in rows),
        "units": rows,
    }


def format_arch_report(report: dict[str, Any]) -> str:
    """A plain-text rendering of :func:`arch_report`."""
    lines = [
        f"arch        {report['arch']}",
        f"space       {report['space']}",
        f"resolution  {report['resolution']}   width {report['width_mult']}   "
        f"depths {report['depths']}",
        f"MACs        {report['macs_m']:.2f} M",
        f"params      {report['params_m']:.3f} M",
        "",
        f"{'#':>3} {'unit':<7} {'in':>5} {'out':>5} {'mid':>5} {'k':>2} {'s':>2} {'act':<7}"
        f"{'se':>4} {'size':>9} {'MACs(M)':>9}",
    ]
    for r in report["units"]:
        size = f"{r['in_size']}->{r['out_size']}"
        lines.append(
            f"{r['index']:>3} {r['kind']:<7} {r['in_ch']:>5} {r['out_ch']:>5} "
            f"{r.get('mid', ''):>5} {r.get('kernel', ''):>2} {r.get('stride', ''):>2} "
            f"{r.get('act', 'hswish'):<7}{r.get('se', ''):>4} {size:>9} {r['macs_m']:>9.3f}"
        )
    return "\n".join(lines)
