"""scripts/profile_gpu.sh, run for real with the CPU provider standing in for CUDA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ofa_search.profiling.lut import find_table

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "profile_gpu.sh"
TINY = {"SPACE": "mbv3_small28", "RESOLUTIONS": "16", "N": "4", "ROUNDS": "1",
        "TIME_CAP": "0.02", "OVERHEAD_ARCHS": "0", "PYTHON": sys.executable}


def _run(out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True,
                          env={**os.environ, **TINY, **env}, timeout=600)


@pytest.mark.slow
def test_one_table_and_validation_per_batch_size(tmp_path: Path) -> None:
    done = _run(tmp_path, PROVIDER="CPUExecutionProvider", PREFIX="cpu", BATCHES="1 3")
    assert done.returncode == 0, done.stderr
    for batch in (1, 3):
        device = f"cpu-ort-cuda-b{batch}"
        profile = find_table(device, [tmp_path]).profile()
        assert profile is not None
        assert (profile.batch_size, profile.execution_provider) == (batch,
                                                                     "CPUExecutionProvider")
        report = json.loads((tmp_path / f"latency_validation_{device}.json").read_text())
        assert report["n"] == 4 and len(report["rows"]) == 4
        assert all(row["measured_ms"] > 0 for row in report["rows"])
    assert "== cpu-ort-cuda-b3:" in done.stdout


def test_a_missing_provider_is_one_clear_error(tmp_path: Path) -> None:
    done = _run(tmp_path, PROVIDER="NoSuchExecutionProvider", BATCHES="1")
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: execution provider 'NoSuchExecutionProvider'")
    assert not (tmp_path / "h200-ort-cuda-b1.json").exists()
