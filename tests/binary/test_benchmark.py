"""The kernel benchmark's rows and notes (on a tiny shape, to stay fast)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ofa_search.binary import tvm_available
from ofa_search.binary.benchmark import KernelShape, kernel_row, ort_graph_note
from ofa_search.profiling.timing import TimingConfig

TINY = KernelShape("3x3 64->32 @6x6", 64, 32, 3, 6)
QUICK = TimingConfig(warmup=1, min_runs=5, max_runs=10, time_cap_s=0.2)
ROOT = Path(__file__).resolve().parents[2]


def test_kernel_row_times_every_kernel_and_checks_exactness() -> None:
    row = kernel_row(TINY, threads=1, timing=QUICK, numpy_timing=QUICK)
    assert row["shape"] == TINY.name and row["macs"] == 64 * 32 * 9 * 36
    assert row["ort_fp32_ms"] > 0 and row["numpy_binary_ms"] > 0
    assert row["speedup_numpy"] == pytest.approx(row["ort_fp32_ms"] / row["numpy_binary_ms"],
                                                 rel=1e-2)
    if tvm_available():
        assert row["tvm_exact"] is True
        assert row["tvm_binary_ms"] > 0 and row["tvm_pack_and_binary_ms"] > 0
        assert row["speedup_tvm"] == pytest.approx(row["ort_fp32_ms"] / row["tvm_binary_ms"],
                                                   rel=1e-2)


def test_ort_note_names_its_kernels() -> None:
    note = ort_graph_note(TINY)
    assert any(node.endswith(":Conv") for node in note["optimized_graph"])
    assert note["node_kernel_ms_median"]


def test_script_writes_json_and_prints_a_table(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_binary_kernels.py"), "--out", str(out),
         "--tiny"], capture_output=True, text=True, timeout=300,
        env={"TVM_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin"})
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["threads"] == 1 and len(data["rows"]) == 1
    assert "cpu_flags" in data["notes"]
    assert "ort_fp32_ms" in result.stdout
