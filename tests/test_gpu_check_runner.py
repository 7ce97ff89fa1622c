"""``scripts/gpu_check.py``'s stage runner, on the CPU: a stage that runs out of time is
killed together with the processes it started, and the run goes on."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from script_helpers import load_script

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
