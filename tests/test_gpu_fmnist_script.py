"""``scripts/gpu_fmnist.py`` (the GPU check's Fashion-MNIST stage), run on the CPU on a
tiny Fashion-MNIST: a run that finishes is scored; one stopped before its first
checkpoint says so and fails; ``--resume`` continues a run, and a run that fails (a
second run into the same folder without it) is not scored; ``--score`` scores checkpoints
without training (``--all-resolutions``: the largest and the smallest at every
resolution); a run trained at some resolutions only (``--resolutions``) is scored at
them; a stand-alone run scores its one arch; a SIGTERM to the script ends the
training it started."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from script_helpers import SCRIPTS, script_env
from test_data import write_fashion

SCRIPT = SCRIPTS / "gpu_fmnist.py"


def _run(tmp_path: Path, name: str, *args: str) -> tuple[int, dict]:
    out = tmp_path / f"{name}.json"
    env = script_env()
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out), "--data-dir",
                           str(tmp_path / "data"), "--device", "cpu", "--amp", "off",
                           "--batch-size", "16", "--run-dir", str(tmp_path / name), *args],
                          capture_output=True, text=True, timeout=600, env=env)
    return proc.returncode, json.loads(out.read_text())


def test_finished_failed_resumed_and_stopped_runs(tmp_path: Path) -> None:
    write_fashion(tmp_path / "data")  # 45 train images: 3 steps per epoch
    code, record = _run(tmp_path, "done", "--epochs", "1", "--train-limit", "300")
    assert code == 0 and record["exit_code"] == 0 and not record["stopped_at_limit"]
    assert record["config"]["seed"] == 0
    assert record["total_epochs"] == 6 and record["checkpoint_epoch"] == 6
    largest, smallest = record["subnets"]["largest"], record["subnets"]["smallest"]
    assert largest["params"] > smallest["params"] == 132_266
    assert all(0.0 <= s["test_accuracy"] <= 1.0 for s in (largest, smallest))

    # the same folder again without --resume: training refuses it, nothing is scored
    code, record = _run(tmp_path, "done", "--epochs", "1", "--train-limit", "300")
    assert code == 1 and record["exit_code"] != 0 and not record["stopped_at_limit"]
    assert "subnets" not in record

    # with --resume the finished run is picked up and scored again, with a random subnet
    code, record = _run(tmp_path, "done", "--epochs", "1", "--train-limit", "300", "--resume",
                        "--random-subnets", "1")
    assert code == 0 and record["exit_code"] == 0 and record["config"]["resume"]
    assert record["checkpoint_epoch"] == 6 and record["subnets"]["smallest"]["params"] == 132_266
    assert set(record["subnets"]) == {"largest", "smallest", "random_0"}

    # --score: checkpoints scored without training; a missing one is a one-line error
    code, record = _run(tmp_path, "scores", "--score", str(tmp_path / "done" / "checkpoint.pt"))
    assert code == 0 and [s["checkpoint"] for s in record["scored"]] == ["checkpoint.pt"]
    assert record["scored"][0]["checkpoint_epoch"] == 6
    assert set(record["scored"][0]["subnets"]) == {"largest", "smallest"}
    # --all-resolutions: the two also at the space's other resolutions, same parameters
    code, record = _run(tmp_path, "scores", "--score", str(tmp_path / "done" / "checkpoint.pt"),
                        "--all-resolutions")
    subnets = record["scored"][0]["subnets"]
    assert code == 0 and list(subnets) == [
        "largest", "smallest", *(f"largest_r{r}" for r in (16, 20, 24, 28)),
        *(f"smallest_r{r}" for r in (20, 24, 28, 32))]
    assert subnets["smallest_r24"]["params"] == subnets["smallest"]["params"] == 132_266
    assert subnets["smallest_r24"]["arch"] == "r24" + subnets["smallest"]["arch"][3:]
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "x.json"), "--score",
                           str(tmp_path / "nowhere.pt")], capture_output=True, text=True,
                          timeout=120, env=script_env())
    assert proc.returncode == 2 and not (tmp_path / "x.json").exists()
    assert proc.stderr.strip() == f"error: no checkpoint at {tmp_path / 'nowhere.pt'}"

    # --resolutions: trained at 28 px only; the two are scored there, random ones too
    code, record = _run(tmp_path, "at28", "--strategy", "sandwich", "--epochs", "1",
                        "--train-limit", "300", "--resolutions", "28", "--random-subnets", "2")
    assert code == 0 and record["config"]["resolutions"] == [28]
    subnets = record["subnets"]
    assert list(subnets) == ["largest", "smallest", "random_0", "random_1"]
    assert all(s["arch"].startswith("r28_") for s in subnets.values())
    assert subnets["smallest"]["params"] == 132_266

    # stopped long before the child has imported torch: nothing to score
    code, record = _run(tmp_path, "stopped", "--train-limit", "0.01", "--seed", "1")
    assert code == 1 and record["stopped_at_limit"] and "subnets" not in record
    assert record["config"]["seed"] == 1


def test_a_standalone_run_trains_and_scores_its_one_arch(tmp_path: Path) -> None:
    write_fashion(tmp_path / "data")
    code, record = _run(tmp_path, "alone", "--strategy", "standalone", "--arch", "smallest",
                        "--epochs", "2", "--train-limit", "300", "--random-erasing", "0.5",
                        "--space", "mbv3_small28_lite")
    assert code == 0 and record["total_epochs"] == 2 and record["checkpoint_epoch"] == 2
    assert record["config"]["random_erasing"] == 0.5
    assert record["config"]["space"] == "mbv3_small28_lite"
    # only the trained subnet is scored: the others share untrained weights
    assert list(record["subnets"]) == ["smallest"]
    assert record["subnets"]["smallest"]["params"] == 97_866  # mbv3_small28's: 132,266
    assert record["config"]["arch"] == record["subnets"]["smallest"]["arch"]
    code, record = _run(tmp_path, "scores", "--score", str(tmp_path / "alone" / "checkpoint.pt"),
                        "--all-resolutions")  # trained at one resolution: scored at that one
    assert code == 0 and list(record["scored"][0]["subnets"]) == ["smallest"]

    for args, message in [
            (["--strategy", "standalone"], "--arch goes with --strategy standalone"),
            (["--arch", "largest"], "--arch goes with --strategy standalone"),
            (["--strategy", "standalone", "--arch", "r99_w1.0"], "arch string 'r99_w1.0'"),
            (["--random-erasing", "2"], "random_erasing must be in [0, 1], got 2.0"),
            (["--strategy", "standalone", "--arch", "largest", "--random-subnets", "2"],
             "--random-subnets must be >= 0, and 0 with --strategy standalone"),
            (["--random-subnets", "-1"], "--random-subnets must be >= 0"),
            (["--strategy", "standalone", "--arch", "smallest", "--all-resolutions"],
             "--all-resolutions does not go with --strategy standalone"),
            (["--strategy", "standalone", "--arch", "smallest", "--resolutions", "28"],
             "--resolutions does not go with --strategy standalone"),
            (["--resolutions", "28", "30"],
             "--resolutions 28 30: space mbv3_small28 has resolutions 16, 20, 24, 28, 32")]:
        proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "x.json"), *args],
                              capture_output=True, text=True, timeout=120, env=script_env())
        assert proc.returncode == 2 and not (tmp_path / "x.json").exists()
        assert proc.stderr.startswith(f"error: {message}") and proc.stderr.count("\n") == 1


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    return [int(c) for task in tasks.iterdir()
            for c in (task / "children").read_text().split()] if tasks.exists() else []


def test_a_terminated_script_ends_its_training(tmp_path: Path) -> None:
    write_fashion(tmp_path / "data")
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(tmp_path / "run.json"),
                             "--data-dir", str(tmp_path / "data"), "--device", "cpu",
                             "--amp", "off", "--epochs", "1000", "--train-limit", "600"],
                            env=script_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    children: list[int] = []
    while len(children) < 2 and time.monotonic() < deadline:  # resource tracker, training
        time.sleep(0.2)
        children = _children(proc.pid)
    assert len(children) >= 2
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    # the training child ends with the script; the resource tracker a moment later
    deadline = time.monotonic() + 20
    while any(_running(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_running(pid) for pid in children)


def _running(pid: int) -> bool:
    """A process that exists and is no zombie (an exited orphan waits for init to reap it)."""
    try:
        return not Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z")
    except FileNotFoundError:
        return False
