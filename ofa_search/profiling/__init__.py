"""Device profiling: device profiles, host facts, robust timing and latency backends.

The backends (:mod:`ofa_search.profiling.backends`) import ONNX Runtime or TVM only when
a profile asks for them.
"""

from __future__ import annotations

from ofa_search.profiling.device import SCHEMA_VERSION, DeviceProfile
from ofa_search.profiling.host import host_info
from ofa_search.profiling.timing import TimingConfig, TimingStats, time_callable

__all__ = [
    "SCHEMA_VERSION",
    "DeviceProfile",
    "TimingConfig",
    "TimingStats",
    "host_info",
    "time_callable",
]
