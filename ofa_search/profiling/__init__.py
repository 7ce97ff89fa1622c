"""Device profiling: device profiles, host facts, robust timing and latency backends.

The backends (:mod:`ofa_search.profiling.backends`: ONNX Runtime, TVM, PyTorch on the CPU
or CUDA) import their runtime only when a profile asks for it.
"""

from __future__ import annotations

from ofa_search.profiling.device import SCHEMA_VERSION, DeviceProfile
from ofa_search.profiling.host import host_info
from ofa_search.profiling.lut import (
    LUT_SCHEMA_VERSION,
    LatencyTable,
    TableInfo,
    find_table,
    list_tables,
    table_dirs,
)
from ofa_search.profiling.timing import TimingConfig, TimingStats, time_callable

__all__ = [
    "LUT_SCHEMA_VERSION",
    "SCHEMA_VERSION",
    "DeviceProfile",
    "LatencyTable",
    "TableInfo",
    "TimingConfig",
    "TimingStats",
    "find_table",
    "host_info",
    "list_tables",
    "table_dirs",
    "time_callable",
]
