"""Optional dependencies: the extras of the ``ofa-search`` distribution and the one-line error
that names the extra when one of its modules is missing.

The core install (torch, numpy, scipy, scikit-learn, Optuna, ONNX, ONNX Runtime, Typer…)
trains, profiles with ONNX Runtime, fits predictors, searches, queries and exports. The
extras add:

=========  =========================================  ======================================
extra      modules                                    for
=========  =========================================  ======================================
tvm        tvm, tvm_ffi (apache-tvm), tornado         the TVM latency backend (local / RPC)
                                                      and the TVM binary kernels
serve      fastapi, uvicorn, httpx, limits, pydantic  ``ofa-search serve``
plot       matplotlib                                 the demo's front plot, benchmark plots
xgboost    xgboost                                    the ``xgboost`` latency predictor model
gpu        pynvml (nvidia-ml-py)                      GPU clocks, temperature and throttling
                                                      recorded with tables (optional: none
                                                      is recorded without it)
dev        pytest, ruff, mypy, … and every extra      the checks and tests
=========  =========================================  ======================================
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ofa_search.errors import OfaSearchError

EXTRAS: dict[str, tuple[str, ...]] = {
    "tvm": ("tvm", "tvm_ffi", "tornado"),
    "serve": ("fastapi", "uvicorn", "httpx", "limits", "pydantic"),
    "plot": ("matplotlib",),
    "xgboost": ("xgboost",),
    "gpu": ("pynvml",),
}


class MissingExtraError(OfaSearchError, ImportError):
    """A module of an optional extra that is not installed."""


def install_hint(extra: str) -> str:
    """``pip install 'ofa-search[EXTRA]'``."""
    return f"pip install 'ofa-search[{extra}]'"


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` of ``extra`` for ``what`` (e.g. ``"ofa-search serve"``), or raise
    :class:`MissingExtraError`: ``WHAT needs the 'EXTRA' extra: pip install
    'ofa-search[EXTRA]' (cannot import MODULE)``."""
    if extra not in EXTRAS or module not in EXTRAS[extra]:
        raise ValueError(f"module {module!r} is not part of extra {extra!r}")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(f"{what} needs the {extra!r} extra: {install_hint(extra)} "
                                f"(cannot import {module}: {exc})") from None
