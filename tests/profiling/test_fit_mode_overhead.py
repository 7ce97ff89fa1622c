"""scripts/fit_mode_overhead.py: a mode's overhead fitted into an existing table on the
table's time base (real ONNX Runtime and binary-package timings)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from script_helpers import load_script
from table_helpers import write_synthetic_table

from ofa_search.arch import Arch
from ofa_search.profiling.lut import MIXED_MODE, LatencyTable, overhead_mode
from ofa_search.workspace import Workspace

MP = "mbv3_small28_mp"


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return load_script("fit_mode_overhead")


def _table(tmp_path: Path, precisions: tuple[str, ...]) -> LatencyTable:
    table = write_synthetic_table(Workspace(tmp_path / "ws"), "mp-fit", MP, precisions,
                                  resolutions=(16,))
    refs = [Arch.smallest(MP).replace(resolution=16), Arch.largest(MP).replace(resolution=16)]
    table.meta["reference"] = {"archs": [a.to_string() for a in refs],
                               "measured_ms": [table.predict(a) for a in refs]}
    table.overhead_by_mode = {"binary": 0.05}
    assert table.path is not None
    table.save(table.path)
    return table


def test_mixed_overhead_is_fitted_on_the_tables_time_base(script: ModuleType,
                                                          tmp_path: Path) -> None:
    table = _table(tmp_path, ("fp32", "int8", "binary"))
    assert table.path is not None
    out = tmp_path / "fitted.json"
    assert script.main([str(table.path), "--n", "2", "--rounds", "2", "--references", "2",
                        "--out", str(out)]) == 0
    assert MIXED_MODE not in LatencyTable.load(table.path).overhead_by_mode  # untouched
    fitted = LatencyTable.load(out)
    fit = fitted.meta["overhead"][f"fit_{MIXED_MODE}"]
    gaps = fitted.meta["overhead"][f"gaps_ms_{MIXED_MODE}"]
    assert len(gaps) == 2 and fit["n"] == 2 and fit["references"] == 2
    assert fit["replaced_ms"] == 0.05  # the binary overhead mixed subnets took before
    assert fitted.overhead_by_mode[MIXED_MODE] == pytest.approx(float(np.median(gaps)))
    assert fitted.overhead_by_mode["binary"] == 0.05  # the other modes keep theirs
    assert fit["host_ratio_median"] > 0 and fit["noise_mape"] is not None
    mixed = Arch.largest(MP).replace(resolution=16, precisions=("int8", "binary") * 2)
    assert overhead_mode(mixed) == MIXED_MODE
    assert fitted.predict(mixed) == pytest.approx(
        fitted.network_sum(mixed) + fitted.overhead_by_mode[MIXED_MODE])


def test_a_mode_the_table_lacks_is_one_line_and_writes_nothing(
        script: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = _table(tmp_path, ("fp32", "int8"))
    assert table.path is not None
    before = table.path.read_bytes()
    assert script.main([str(table.path), "--mode", "mixed", "--n", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "'binary'" in err and "\n" not in err
    assert table.path.read_bytes() == before
