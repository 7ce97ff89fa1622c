"""The Python API re-exported by the top package (:mod:`ofa_search.api`): its doctest, and
each call against the library object it wraps."""

from __future__ import annotations

import doctest
import warnings
from pathlib import Path

import pytest
from test_service import DEVICE, MacsAccuracy, build_workspace

import ofa_search as ofa
from ofa_search import api
from ofa_search.errors import OfaSearchError
from ofa_search.search.query import QueryEngine


def test_the_doctest_runs() -> None:
    failed, attempted = doctest.testmod(api, optionflags=doctest.ELLIPSIS)
    assert attempted >= 4 and failed == 0


def test_names_are_the_functions_even_after_the_subpackages_load() -> None:
    import ofa_search.export
    import ofa_search.train  # sets the subpackage attribute

    assert set(ofa.__all__) == set(api.__all__)
    assert ofa.train_supernet is ofa_search.train.train
    assert ofa.export_subnet is ofa_search.export.export
    assert callable(ofa.query) and ofa.Workspace is api.Workspace
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ofa.nope  # noqa: B018


def test_query_devices_latency_and_profile_checks(tmp_path: Path) -> None:
    ws = build_workspace(tmp_path / "ws")

    def engine(workspace: ofa.Workspace) -> QueryEngine:
        return QueryEngine(workspace, accuracy=MacsAccuracy(), accuracy_name="macs-test")

    reference = engine(ws)
    front = reference.front(DEVICE)
    assert front is not None
    budget = front.points[len(front.points) // 2].predicted_latency_ms * 1.2
    answer = ofa.query(ws.root, DEVICE, budget, engine=engine)
    assert answer.arch == reference.query(DEVICE, budget).arch
    assert DEVICE in [info.device_id for info in ofa.devices(ws)]
    assert ofa.latency(DEVICE, answer.arch, workspace=ws) > 0
    with pytest.raises(OfaSearchError, match="not a valid device id"):
        ofa.profile(ws, "../x", progress=False)


def test_profile_warns_when_its_table_was_measured_on_a_busy_host(tmp_path: Path) -> None:
    """A complete table (nothing left to measure) whose units' rounds disagreed by 20 %:
    ``ofa.profile`` returns it with a UserWarning naming the fix; at 2 % it stays quiet."""
    from table_helpers import write_synthetic_table

    ws = ofa.Workspace(tmp_path / "ws")
    table = write_synthetic_table(ws, "busy-cpu", "mbv3_small28", ("fp32",), resolutions=(16,))
    table.complete, table.meta["overhead"] = True, {"archs": 0}
    for entry in table.entries.values():
        entry["ci_halfwidth_ms"] = 0.2 * entry["median_ms"]
    table.save(ws.hw_profiles_dir / "busy-cpu.json")
    with pytest.warns(UserWarning, match=r"busy-cpu was profiled while the host was busy: "
                                         r".* median 20\.0%.* under a new device id"):
        got = ofa.profile(ws, "busy-cpu", resolutions=[16], progress=False)
    assert got.entries == table.entries
    for entry in table.entries.values():
        entry["ci_halfwidth_ms"] = 0.02 * entry["median_ms"]
    table.save(ws.hw_profiles_dir / "busy-cpu.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ofa.profile(ws, "busy-cpu", resolutions=[16], progress=False)
