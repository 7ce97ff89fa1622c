"""The Python API: the calls of the whole path, re-exported by the top package.

    >>> import ofa_search as ofa
    >>> arch = ofa.Arch.parse("r16_w1.0_k3e3-k3e3_k3e3-k3e3_k3e3-k3e3_k3e3-k3e3",
    ...                       "mbv3_small28")
    >>> arch.resolution, arch.depths
    (16, (2, 2, 2, 2))
    >>> "cpu-ort-1t" in [info.device_id for info in ofa.devices()]
    True
    >>> round(ofa.latency("cpu-ort-1t", arch), 3) > 0
    True

A user's path, each step resumable (the CLI's commands are thin layers over these)::

    ws = ofa.Workspace("ofa-workspace")
    ofa.train_supernet(ofa.TrainConfig(space="mbv3_small28", dataset="digits", epochs=6,
                                       out_dir=str(ws.supernet_dir)))
    ofa.profile(ws, "my-cpu")                      # this host, ONNX Runtime, 1 thread
    ofa.fit_predictors(ws, ["my-cpu"])             # accuracy + latency predictors
    answer = ofa.query(ws, "my-cpu", 0.25)         # best subnet under 0.25 ms
    ofa.export_subnet(ws.checkpoint, answer.arch, "onnx", "out/", device="my-cpu",
                      workspace=ws)

``train_supernet`` and ``export_subnet`` are :func:`ofa_search.train.train` and
:func:`ofa_search.export.export` under names that the subpackages ``ofa_search.train`` and
``ofa_search.export`` cannot shadow.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from ofa_search.arch import Arch
from ofa_search.export import ExportResult
from ofa_search.export import export as export_subnet
from ofa_search.profiling.builder import build_table
from ofa_search.profiling.device import DeviceProfile, check_new_device_id
from ofa_search.profiling.lut import (
    LatencyTable,
    TableInfo,
    find_table,
    list_tables,
    unit_agreement,
)
from ofa_search.search.query import QueryEngine, QueryResult
from ofa_search.train import TrainConfig, supernet_evaluator
from ofa_search.train import train as train_supernet
from ofa_search.workspace import Workspace, check_workspace
from predictors.fit import fit_predictors as _fit_predictors
from predictors.loading import load_latency_predictor

__all__ = ["Arch", "ExportResult", "QueryResult", "TrainConfig", "Workspace", "devices",
           "export_subnet", "fit_predictors", "latency", "profile", "query", "train_supernet"]

WorkspaceLike = Workspace | str | os.PathLike[str]


def _workspace(workspace: WorkspaceLike) -> Workspace:
    return workspace if isinstance(workspace, Workspace) else Workspace(workspace)


def devices(workspace: WorkspaceLike | None = None) -> list[TableInfo]:
    """The device tables visible from ``workspace`` (its ``hw_profiles/``) and the shipped
    ones, sorted by id."""
    root = None if workspace is None else _workspace(workspace).root
    return list_tables(workspace=root)


def profile(workspace: WorkspaceLike, device: str, *, space: str = "mbv3_small28",
            threads: int = 1, resolutions: Sequence[int] | None = None,
            progress: bool = True) -> LatencyTable:
    """Profile this host with ONNX Runtime (``threads`` threads) into the table
    ``WORKSPACE/hw_profiles/DEVICE.json`` (resumed when it exists); ``ofa-search profile``
    offers TVM, remote devices and more options. Warns (``UserWarning``) when the units'
    rounds disagreed as on a busy host (:func:`~ofa_search.profiling.lut.unit_agreement`)."""
    check_new_device_id(device, "device")
    ws = _workspace(workspace)
    check_workspace(ws.root, must_exist=False, writable=True)
    table = build_table(space, DeviceProfile.local_onnxruntime(threads, id=device),
                        resolutions, ws.hw_profiles_dir / f"{device}.json", progress=progress)
    agreement = unit_agreement(table)
    warning = None if agreement is None else agreement.warning(device)
    if warning is not None:
        warnings.warn(warning.removeprefix("warning: "), UserWarning, stacklevel=2)
    return table


def fit_predictors(workspace: WorkspaceLike, devices: Sequence[str] = (),
                   **options: Any) -> dict[str, Any]:
    """Fit the workspace's accuracy predictor (subnets of its supernet scored by
    :func:`ofa_search.train.supernet_evaluator`) and a latency predictor per device; the
    held-out quality report. ``options`` go to :func:`predictors.fit.fit_predictors`."""
    return _fit_predictors(_workspace(workspace), None, devices,
                           evaluator_for=supernet_evaluator, **options)


def latency(device: str, arch: Arch | str, *, workspace: WorkspaceLike | None = None,
            predictor: str | None = None) -> float:
    """Predicted latency (ms) of ``arch`` on ``device``: the device's learned predictor
    when one is fitted (in ``workspace``, default the current folder, or shipped), else
    its table sum."""
    ws = _workspace(workspace if workspace is not None else os.curdir)
    table = find_table(device, workspace=ws.root)
    parsed = arch if isinstance(arch, Arch) else Arch.parse(arch, table.space)
    model, _ = load_latency_predictor(ws, device, predictor)
    return float(model.predict([parsed])[0])


def query(workspace: WorkspaceLike, device: str, latency_ms: float, *,
          precision: str | None = None, confidence: float | None = None,
          engine: Callable[[Workspace], QueryEngine] = QueryEngine) -> QueryResult:
    """The most accurate subnet whose latency on ``device`` fits ``latency_ms`` (its
    calibrated upper bound at ``confidence`` where the device is calibrated), from the
    saved front or by a search. For many queries keep one :class:`QueryEngine` (it
    caches the loaded predictors and fronts); ``engine`` makes it."""
    return engine(_workspace(workspace)).query(device, latency_ms, precision,
                                               confidence=confidence)

