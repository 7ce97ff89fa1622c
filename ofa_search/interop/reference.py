"""once-for-all's reference code (PyPI ``ofa``, code only, the ``dev`` extra) for the
cross-implementation tests and ``scripts/bench_vs_ofa.py``; nothing else imports it.

``ofa`` imports torchvision at import time for its data loaders, which these tests never
use; the torchvision wheel that matches the CPU torch here does not import
(``operator torchvision::nms does not exist``). When torchvision cannot be imported, a
stand-in with the few names ``ofa``'s modules reference at import time is registered
first. Nothing of it runs: the tests use once-for-all's networks, predictor and search.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

from ofa_search.errors import OfaSearchError


def _register_torchvision_stand_in() -> None:
    try:
        importlib.import_module("torchvision")
        return
    except Exception:  # any import failure means: not usable here
        for name in [n for n in sys.modules if n == "torchvision" or
                     n.startswith("torchvision.")]:
            del sys.modules[name]
    root = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    datasets = types.ModuleType("torchvision.datasets")
    # base classes that once-for-all's loaders subclass at import time
    transforms.RandomResizedCrop = type("RandomResizedCrop", (), {})  # type: ignore[attr-defined]
    transforms.RandomCrop = type("RandomCrop", (), {})  # type: ignore[attr-defined]
    transforms.functional = functional  # type: ignore[attr-defined]
    root.transforms = transforms  # type: ignore[attr-defined]
    root.datasets = datasets  # type: ignore[attr-defined]
    sys.modules.update({"torchvision": root, "torchvision.transforms": transforms,
                        "torchvision.transforms.functional": functional,
                        "torchvision.datasets": datasets})


def ofa_module(name: str) -> Any:
    """Import ``ofa.<name>`` (the ``ofa`` package comes with the ``dev`` extra); a one-line
    error names the extra when it is missing."""
    try:
        importlib.import_module("ofa")
    except ImportError:
        raise OfaSearchError("once-for-all's code is not installed: pip install "
                             "'ofa-search[dev]' (or pip install ofa gdown pyyaml)") from None
    _register_torchvision_stand_in()
    return importlib.import_module(f"ofa.{name}")
