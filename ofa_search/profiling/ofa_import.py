"""Import once-for-all's Samsung Note10 latency table (TF-Lite) as a :class:`LatencyTable`.

once-for-all ships per-resolution tables (``{"160": {key: {"mean", "std", "count"}}, ...}``)
for OFA-MobileNetV3 at width 1.2, keyed by layer shapes::

    Conv-input:192x192x3-output:96x96x24                               (stem)
    expanded_conv-input:HxWxCin-output:HoxWoxCout-expand:MID-kernel:k-stride:s
        -idskip:{0,1}-se:{0,1}-hs:{0,1}                                (every MBConv)
    Conv_1-…, AvgPool2D-…, Conv_2-…, Logits-…                          (the head: 4 keys)

and predicts a subnet as the sum of the ``mean`` of its keys in the table of its
resolution. Each of our units maps to one key (the head to four, summed). A unit key can
occur at two resolutions (e.g. the head at 6×6 for both 176 and 192 px) with slightly
different once-for-all values; the entry then keeps each in ``by_resolution`` so that
predictions equal once-for-all's exactly. ``median_ms`` holds once-for-all's *mean*.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ofa_search.errors import FileFormatError
from ofa_search.profiling.builder import enumerate_units
from ofa_search.profiling.lut import LatencyTable
from ofa_search.units import HeadUnit, MBConvUnit, StemUnit, Unit

NOTE10_DEVICE_ID = "note10-tflite"
IQR_PER_STD = 1.349
"""Inter-quartile range of a normal distribution in standard deviations."""


def _shape(size: int, channels: int) -> str:
    return f"{size}x{size}x{channels}"


def ofa_keys(unit: Unit) -> list[str]:
    """once-for-all's Note10 table keys that together price ``unit``."""
    if isinstance(unit, StemUnit):
        return [f"Conv-input:{_shape(unit.in_size, unit.in_channels)}"
                f"-output:{_shape(unit.out_size, unit.out_channels)}"]
    if isinstance(unit, MBConvUnit):
        return [f"expanded_conv-input:{_shape(unit.in_size, unit.in_channels)}"
                f"-output:{_shape(unit.out_size, unit.out_channels)}"
                f"-expand:{unit.mid_channels}-kernel:{unit.kernel}-stride:{unit.stride}"
                f"-idskip:{int(unit.residual)}-se:{int(unit.se_channels > 0)}"
                f"-hs:{int(unit.act == 'hswish')}"]
    head: HeadUnit = unit
    r, x, m = head.in_size, head.expand_channels, head.mix_channels
    return [f"Conv_1-input:{_shape(r, head.in_channels)}-output:{_shape(r, x)}",
            f"AvgPool2D-input:{_shape(r, x)}-output:{_shape(1, x)}",
            f"Conv_2-input:{_shape(1, x)}-output:{_shape(1, m)}",
            f"Logits-input:{_shape(1, m)}-output:{head.num_classes}"]


def _combine(stats: list[Mapping[str, Any]]) -> dict[str, Any]:
    mean = sum(float(s["mean"]) for s in stats)
    std = math.sqrt(sum(float(s["std"]) ** 2 for s in stats))
    return {"median_ms": mean, "iqr_ms": IQR_PER_STD * std, "count": min(int(s["count"])
                                                                          for s in stats),
            "std_ms": std}


def import_note10(data: Mapping[str, Any] | str | os.PathLike[str], *,
                  space: str = "ofa_mbv3", width_mult: float = 1.2,
                  device_id: str = NOTE10_DEVICE_ID) -> LatencyTable:
    """Convert once-for-all's Note10 tables (a path or the loaded dict) to a LatencyTable.

    Only resolutions whose every unit is found become covered; missing keys are listed in
    ``meta["missing"]``.
    """
    source = "dict"
    if not isinstance(data, Mapping):
        source = os.fspath(data)
        try:
            data = json.loads(Path(data).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise FileFormatError(f"{source}: not valid JSON: {exc}") from exc
    if not isinstance(data, Mapping) or not data:
        raise FileFormatError(f"{source}: expected {{resolution: {{key: stats}}}}")
    entries: dict[str, dict[str, Any]] = {}
    covered: list[int] = []
    missing: dict[str, list[str]] = {}
    for res_text in sorted(data, key=int):
        table = data[res_text]
        res = int(res_text)
        lost: list[str] = []
        for unit in enumerate_units(space, width_mult, [res]):
            keys = ofa_keys(unit)
            absent = [k for k in keys if k not in table]
            if absent:
                lost += absent
                continue
            value = _combine([table[k] for k in keys])
            entry = entries.setdefault(unit.key, {**value, "by_resolution": {}})
            entry["by_resolution"][str(res)] = value["median_ms"]
        if lost:
            missing[res_text] = lost
        else:
            covered.append(res)
    for entry in entries.values():
        if len(set(entry["by_resolution"].values())) <= 1:
            del entry["by_resolution"]
    return LatencyTable(
        device_id=device_id,
        device={"id": device_id, "backend": "tflite", "device": "Samsung Galaxy Note10",
                "batch_size": 1, "precisions": ["fp32"]},
        space=space, width_mult=width_mult, resolutions=tuple(covered), fingerprint=None,
        overhead_ms=0.0, entries=entries,
        host={"device": "Samsung Galaxy Note10 (measured by the once-for-all authors)"},
        versions={"tflite": "unknown (once-for-all release)"},
        meta={"source": "mit-han-lab/once-for-all Note10 latency tables (f03b267), imported "
                        "from note10_lut_full.json",
              "statistic": "median_ms holds once-for-all's mean; iqr_ms = 1.349 std; "
                           "by_resolution keeps per-resolution means of shared keys",
              "missing": missing},
    )
