"""The CLI starts without torch and onnx (about 0.6 s instead of 3 s): the packages that
time int8 and binary units register loaders and are imported only when such a unit is
timed (issue 19)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


ARCH = "r28_w1.0_k3e3-k3e3_k3e3-k3e3_k3e3-k3e3_k3e3-k3e3"
BAD_LINES = [  # one per command that checks its input before loading its library parts
    (["profile", "--device", "x", "--backend", "tensorrt"], "unknown backend 'tensorrt'"),
    (["profile", "--device", "x", "--tuning-trials", "8"], "apply to --backend tvm only"),
    (["profile", "pack-db", "--device", "nope"], "no latency table for device 'nope'"),
    (["profile", "merge-db", "db", "--out", "a-file"], "a-file is a file"),
    (["profile", "import-ofa", "missing.json", "--device", "x"], "no such file"),
    (["latency", "--device", "nope", ARCH], "no latency table for device 'nope'"),
    (["latency", "--device", "cpu-ort-1t", "--predictor", "nn", ARCH],
     "--predictor must be one of lut, learned"),
    (["check-device", "--device", "nope"], "no latency table for device 'nope'"),
    (["query", "--device", "cpu-ort-1t", "--latency-ms", "1", "--workspace", "missing"],
     "workspace missing does not exist"),
    (["search", "--device", "cpu-ort-1t", "--budgets", "0.2,x"], "--budgets must be"),
    (["calibrate", "--device", "cpu-ort-1t", "--latency-predictor", "nn"],
     "--latency-predictor must be one of"),
    (["fit-predictors", "--checkpoint", "missing.pt"], "missing.pt is not a file"),
    (["eval", "-c", "missing.pt", "--arch", ARCH, "--split", "train"],
     "--split must be val or test"),
    (["arch", "export", ARCH, "--space", "mbv3_small28", "--out", "a-file/x.onnx"],
     "a-file is a file"),
    (["export", "ofa-supernet", "a-file/x.pth"], "a-file is a file"),
    (["import", "ofa-supernet", "missing.pth", "--workspace", "a-file"], "a-file is a file"),
    (["demo", "--workspace", "a-file"], "a-file is a file"),
]


def test_bad_input_is_refused_before_torch_is_loaded(tmp_path: Path) -> None:
    """A mistyped option costs a fraction of a second, not the seconds that loading torch,
    scikit-learn or TVM takes: each command checks what it can first. (The entry point
    itself imports Optuna, about 0.1 s, to quieten its logger.)"""
    (tmp_path / "a-file").write_text("not a folder")
    code = ("import json, sys\n"
            "from typer.testing import CliRunner\n"
            "from ofa_search.cli import main\n"
            "seen = []\n"
            "for args in json.loads(sys.argv[1]):\n"
            "    with CliRunner().isolation() as (out, err, _):\n"
            "        try:\n"
            "            main(args)\n"
            "            code = 0\n"
            "        except SystemExit as exc:\n"
            "            code = exc.code\n"
            "        seen.append([code, (out.getvalue() + err.getvalue()).decode()])\n"
            "heavy = ('torch', 'sklearn', 'tvm', 'onnxruntime', 'onnx')\n"
            "print(json.dumps([seen, sorted(m for m in heavy if m in sys.modules)]))")
    lines = [args for args, _ in BAD_LINES]
    out = subprocess.run([sys.executable, "-c", code, json.dumps(lines)],
                         capture_output=True, text=True, check=True, cwd=tmp_path)
    seen, loaded = json.loads(out.stdout.strip().splitlines()[-1])
    for (args, message), (exit_code, output) in zip(BAD_LINES, seen, strict=True):
        assert exit_code == 2 and message in output, (args, exit_code, output)
    assert loaded == []
