"""The CLI starts without torch and onnx (about 0.6 s instead of 3 s): the packages that
time int8 and binary units register loaders and are imported only when such a unit is
timed (issue 19)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ofa_search.errors import UnsupportedPrecisionError
from ofa_search.profiling import precisions
from ofa_search.profiling.precisions import (
    PrecisionTiming,
    Prepared,
    precision_timing,
    register_precision_timing,
    register_precision_timing_loader,
)


def test_importing_the_cli_imports_neither_torch_nor_onnx() -> None:
    code = ("import sys, ofa_search.cli.app; "
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_a_loader_registers_its_precision_on_first_use(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    monkeypatch.setattr(precisions, "_PRECISION_TIMINGS", {})
    monkeypatch.setattr(precisions, "_PRECISION_LOADERS", {})
    calls = []

    def prepare(*_: object) -> Prepared:
        raise AssertionError("not called here")

    timing = PrecisionTiming("int4", prepare, prepare)

    def load() -> None:
        calls.append(1)
        register_precision_timing(timing)

    register_precision_timing_loader("int4", load)
    assert precision_timing("int4") is timing
    assert precision_timing("int4") is timing and calls == [1]
    register_precision_timing_loader("int2", lambda: None)  # registers nothing
    with pytest.raises(UnsupportedPrecisionError, match="no timing is registered for int2"):
        precision_timing("int2")


def test_the_cli_registers_loaders_for_int8_and_binary() -> None:
    code = ("import sys, ofa_search.cli.app\n"
            "from ofa_search.profiling.precisions import precision_timing\n"
            "assert precision_timing('int8').precision == 'int8'\n"
            "assert precision_timing('binary').precision == 'binary'\n"
            "print('ofa_search.quant' in sys.modules, 'ofa_search.binary' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "True True"
