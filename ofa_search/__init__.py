"""ofa-search: hardware-aware neural architecture search over once-for-all supernets.

The Python API (:mod:`ofa_search.api`) is available from here, loaded on first use so that
``import ofa_search`` stays light::

    import ofa_search as ofa
    answer = ofa.query("ofa-workspace", "cpu-ort-1t", 0.25)

Names: ``Workspace``, ``Arch``, ``TrainConfig``, ``train_supernet``, ``profile``,
``devices``, ``fit_predictors``, ``latency``, ``query``, ``export_subnet``, ``QueryResult``,
``ExportResult``.
"""

from __future__ import annotations

from typing import Any

_API = frozenset({"Arch", "ExportResult", "QueryResult", "TrainConfig", "Workspace", "devices",
                  "export_subnet", "fit_predictors", "latency", "profile", "query",
                  "train_supernet"})

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        from ofa_search import api  # deferred: the API imports torch, ONNX and Optuna

        return getattr(api, name)
    raise AttributeError(f"module 'ofa_search' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _API)
