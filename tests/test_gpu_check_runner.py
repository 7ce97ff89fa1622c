"""``scripts/gpu_check.py`` on the CPU: a stage that runs out of time is killed together
with the processes it started, and the run goes on; the Fashion-MNIST stage's command
trains with the sandwich rule at 28 px in ``mbv3_small28_lite`` by default (run here on a
tiny Fashion-MNIST), with progressive shrinking in ``mbv3_small28`` on request."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from script_helpers import SCRIPTS, load_script, script_env
from test_data import write_fashion

# a stage that starts a grandchild which would outlive it, writes its pid, then hangs
HANG = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open(sys.argv[1], "w").write(str(child.pid))
print("started", flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a killed child of an exited parent is reaped by init; until then it is a zombie
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


def test_a_stage_out_of_time_is_killed_with_its_children(tmp_path: Path) -> None:
    runner = load_script("gpu_check").Runner(tmp_path, budget=60.0)
    pid_file = tmp_path / "grandchild.pid"
    output = runner.stage("hang", [sys.executable, "-c", HANG, str(pid_file)], limit=3.0,
                          min_time=0.0)
    assert "started" in output
    assert runner.stages[-1]["status"] == "timed out"
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(grandchild)

    runner.stage("next", [sys.executable, "-c", "print('ok')"], limit=30.0, min_time=0.0)
    assert runner.stages[-1]["status"] == "ok"


def _stage_args(tmp_path: Path, **overrides: object) -> argparse.Namespace:
    return argparse.Namespace(**{"fmnist_strategy": "sandwich", "fmnist_epochs": None,
                                 "quick": False, "device": "cuda",
                                 "fmnist_data": tmp_path / "data", **overrides})


def test_the_fmnist_stage_trains_the_sandwich_rule_at_28_px_by_default(tmp_path: Path) -> None:
    command = load_script("gpu_check").fmnist_command
    full = command(_stage_args(tmp_path), tmp_path / "r.json", 200, tmp_path / "run")
    assert full[full.index("--epochs") + 1] == "12" and full[full.index("--amp") + 1] == "bf16"
    assert full[full.index("--space") + 1] == "mbv3_small28_lite"
    assert full[full.index("--resolutions") + 1] == "28"
    assert full[full.index("--random-subnets") + 1] == "8"
    ps = command(_stage_args(tmp_path, fmnist_strategy="ps"), tmp_path / "r.json", 200,
                 tmp_path / "run")
    assert ps[ps.index("--strategy") + 1] == "ps" and ps[ps.index("--epochs") + 1] == "3"
    assert "--all-resolutions" in ps and "--space" not in ps and "--resolutions" not in ps
    longer = command(_stage_args(tmp_path, fmnist_epochs=25), tmp_path / "r.json", 200,
                     tmp_path / "run")
    assert longer[longer.index("--epochs") + 1] == "25"
    # a bad --fmnist-epochs is refused before any stage runs
    proc = subprocess.run([sys.executable, str(SCRIPTS / "gpu_check.py"), str(tmp_path / "out"),
                           "--fmnist-epochs", "0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and not (tmp_path / "out").exists()
    assert proc.stderr.strip().endswith("error: --fmnist-epochs must be >= 1, got 0")

    # the quick dry run's command, run on a tiny Fashion-MNIST (45 training images)
    write_fashion(tmp_path / "data")
    record = tmp_path / "quick.json"
    quick = command(_stage_args(tmp_path, quick=True, device="cpu"), record, 300,
                    tmp_path / "run")
    proc = subprocess.run([sys.executable, *quick, "--batch-size", "16"], cwd=SCRIPTS.parent,
                          env=script_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(record.read_text())
    assert result["config"]["strategy"] == "sandwich"
    assert result["config"]["resolutions"] == [28] and result["checkpoint_epoch"] == 1
    subnets = result["subnets"]
    assert list(subnets) == ["largest", "smallest", "random_0"]
    assert all(s["arch"].startswith("r28_") for s in subnets.values())
    assert subnets["smallest"]["params"] == 97_866  # the lite space's: under 100K
