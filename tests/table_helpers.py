"""A device table whose unit latencies are a known function of MACs and precision, for
tests of search and export on spaces that no committed table prices."""

from __future__ import annotations

from collections.abc import Sequence

from ofa_search.profiling.builder import table_units
from ofa_search.profiling.device import DeviceProfile
from ofa_search.profiling.lut import LatencyTable
from ofa_search.space import get_space
from ofa_search.workspace import Workspace

SPEED = {"fp32": 1.0, "int8": 0.5, "binary": 0.25}
"""Latency per MAC, relative to fp32."""


def write_synthetic_table(ws: Workspace, device: str, space: str,
                          precisions: Sequence[str], resolutions: Sequence[int] = (16, 20)
                          ) -> LatencyTable:
    """``ws``'s table for ``device``: each unit costs ``0.01 + 1e-6 · MACs · SPEED`` ms, under
    the profile of ONNX Runtime at 1 thread on this host (so it can also be measured)."""
    profile = DeviceProfile.local_onnxruntime(1, id=device)
    profile = DeviceProfile.from_dict({**profile.to_dict(), "precisions": list(precisions)})
    table = LatencyTable(device_id=device, device=profile.to_dict(), space=space,
                         width_mult=1.0, resolutions=tuple(resolutions),
                         fingerprint=profile.fingerprint())
    for unit in table_units(get_space(space), 1.0, resolutions, precisions):
        ms = 0.01 + 1e-6 * unit.macs() * SPEED[unit.precision]
        table.entries[unit.key] = {"median_ms": ms, "iqr_ms": 0.0, "count": 1}
    table.save(ws.hw_profiles_dir / f"{device}.json")
    return table
