"""Fault injection (issue 20): real CLI commands run as subprocesses are killed with
SIGKILL at seeded points, rerun to completion, and must leave the result of an
uninterrupted run (or, where timing makes results differ, a valid and complete one) and no
torn or stray file (``*.tmp``, half-written artefacts).

The kill points: each command is killed a few times in a chain (kill, rerun, kill, ...,
then a last run to completion). The first kill waits for the command's first durable
output (so that it lands in the middle of the work); the others are drawn by a seeded
``random.Random`` among events of the command's folder: a temporary file of an atomic
write appearing (killed mid-write), an output file growing or being replaced (killed
between two writes, e.g. after training's metrics rows and before its checkpoint), or a
random time into the run. Only the results are asserted, never a duration.

``train`` and ``profile``, ``search`` and ``export`` run by default (about two minutes on 2
cores); ``fit-predictors`` (several times longer) with ``OFA_FAULTS_ALL=1``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from supernet_helpers import save_proxy_accuracy_predictor, save_untrained_checkpoint

from ofa_search.arch import Arch
from ofa_search.atomic import (
    LEGACY_STALE_AFTER_S,
    TEMP_RE,
    atomic_write_bytes,
    host_tag,
    remove_stale_temps,
    stale_temps,
)
from ofa_search.workspace import Workspace

SPACE = "mbv3_small28"
DEVICE = "cpu-ort-1t"
SEED = 20  # the number: the kill points of every run of this file
POLL_S = 0.002
TIMEOUT_S = 600
heavy = pytest.mark.skipif(not os.environ.get("OFA_FAULTS_ALL"),
                           reason="several minutes on 2 cores: set OFA_FAULTS_ALL=1")


# -- the harness -----------------------------------------------------------------------------
def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ofa_search.cli", *args]


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OFA_SEARCH_WORKSPACE"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    return env


Trigger = Callable[[], bool]


def tmp_appears(folder: Path) -> Trigger:
    """A temporary file (an atomic write, or an export's unverified artefact) exists
    anywhere under ``folder``."""
    def fired() -> bool:
        for _, _, names in os.walk(folder):
            if any(name.endswith(".tmp") for name in names):
                return True
        return False
    return fired


def changes(path: Path) -> Trigger:
    """``path`` appears, grows or is replaced."""
    def signature() -> tuple[int, int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    before = signature()
    return lambda: signature() != before


def after(seconds: float) -> Trigger:
    start = time.perf_counter()
    return lambda: time.perf_counter() - start >= seconds


def run_until(args: list[str], trigger: Trigger | None, delay_s: float = 0.0
              ) -> tuple[bool, subprocess.CompletedProcess[str] | None]:
    """Run ``args``; when ``trigger`` fires (polled every ``POLL_S``), wait ``delay_s`` and
    SIGKILL it. Returns (killed, the completed process when it ran to its end)."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=environment())
    deadline = time.perf_counter() + TIMEOUT_S
    while proc.poll() is None and time.perf_counter() < deadline:
        if trigger is not None and trigger():
            time.sleep(delay_s)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.communicate()  # reaps it: its pid is then no live process
                return True, None
            break
        time.sleep(POLL_S)
    if proc.poll() is None:  # pragma: no cover - a hang
        proc.kill()
        proc.communicate()
        pytest.fail(f"{' '.join(args)} ran for more than {TIMEOUT_S} s")
    out, err = proc.communicate()
    return False, subprocess.CompletedProcess(args, proc.returncode, out, err)


@dataclass
class Chain:
    """How a command fared: kills made, and the last (completed) run."""

    killed: list[str] = field(default_factory=list)
    last: subprocess.CompletedProcess[str] | None = None


def kill_chain(command: Callable[[], list[str]], first: Callable[[], Trigger],
               events: Sequence[tuple[str, Callable[[], Trigger]]], baseline_s: float,
               seed: int) -> Chain:
    """Run ``command()`` (rebuilt before each start: it may depend on what the folder
    holds) and kill it: at ``first()``, then at each of ``events`` and at a random time
    within ``baseline_s``, in a seeded order, each after a seeded delay of 0-50 ms (half
    of them at once); then run it once more to its end. Runs that end before their kill
    point count as completed runs (and must succeed)."""
    rng = random.Random(seed)
    later = [*events, ("random time", lambda: after(rng.uniform(0.0, baseline_s)))]
    rng.shuffle(later)
    chain = Chain()
    for name, make in [("first output", first), *later]:
        delay = rng.choice([0.0, rng.uniform(0.0, 0.05)])
        killed, done = run_until(command(), make(), delay)
        if killed:
            chain.killed.append(name)
        else:
            assert done is not None and done.returncode == 0, done and done.stderr[-3000:]
    _, chain.last = run_until(command(), None)
    assert chain.last is not None and chain.last.returncode == 0, (
        chain.last and chain.last.stderr[-3000:])
    print(f"{' '.join(command()[3:5])}: killed at {chain.killed or 'no point'}")
    return chain


def stray_files(folder: Path) -> list[str]:
    """Files that no complete result holds: temporary files and unverified artefacts."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.name.endswith((".tmp", ".unverified")))


def timed(args: list[str]) -> tuple[subprocess.CompletedProcess[str], float]:
    """An uninterrupted run and its wall time (used only to draw kill times)."""
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env=environment(),
                          timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return done, time.perf_counter() - start


def files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")
            if p.is_file() and not optuna_lock_leftover(p)}


def optuna_lock_leftover(path: Path) -> bool:
    """Optuna's released journal lock, renamed but not yet unlinked when the run was killed
    (``<journal>.lock<uuid>.rename``): opening the journal removes it once it is stale
    (``remove_stale_lock_leftovers``), so the rerun that follows at once leaves a fresh one."""
    return ".lock" in path.name and path.name.endswith(".rename")


# -- atomic writes killed mid-write ------------------------------------------------------------
def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


KILL_MID_WRITE = """
import os, sys, time
os.fsync = lambda fd: time.sleep(600)  # hold the write open between its bytes and its rename
from ofa_search.atomic import atomic_write_bytes
atomic_write_bytes(sys.argv[1], b"new " * 100_000)
"""


def kill_mid_write(target: Path) -> Path:
    """A real ``atomic_write_bytes`` of ``target`` in a child process, SIGKILLed after its
    temporary file is written and before the rename; returns the temporary file left."""
    proc = subprocess.Popen([sys.executable, "-c", KILL_MID_WRITE, str(target)],
                            env=environment())
    deadline = time.perf_counter() + 120
    while time.perf_counter() < deadline:
        temps = [p for p in target.parent.glob(f".{target.name}.*.tmp")
                 if p.stat().st_size == 400_000]
        if temps:
            break
        time.sleep(POLL_S)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (temp,) = temps
    return temp


def test_a_write_killed_midway_leaves_the_old_file_and_a_recognised_temp(
        tmp_path: Path) -> None:
    target = tmp_path / "table.json"
    target.write_bytes(b"old")
    temp = kill_mid_write(target)
    assert target.read_bytes() == b"old"  # never torn
    match = TEMP_RE.match(temp.name)
    assert match and match["target"] == "table.json" and match["host"] == host_tag()
    assert stale_temps(tmp_path) == [temp]
    atomic_write_bytes(target, b"next")  # the next write of the file clears it
    assert target.read_bytes() == b"next" and not temp.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.json"]


def test_only_temps_of_gone_writers_are_removed(tmp_path: Path) -> None:
    host = host_tag()
    other_host = "0" * 8 if host != "0" * 8 else "1" * 8
    names = {
        "dead": f".a.json.{dead_pid()}-{host}.k2j4x_9q.tmp",
        "live": f".a.json.{os.getpid()}-{host}.k2j4x_9q.tmp",
        "other_host": f".a.json.{dead_pid()}-{other_host}.k2j4x_9q.tmp",
        "legacy_old": ".checkpoint.pt.k2j4x_9q.tmp",
        "legacy_new": ".metrics.jsonl.abcdefgh.tmp",
        "not_ours": "notes.tmp",
        "target": "a.json",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    old = time.time() - LEGACY_STALE_AFTER_S - 60
    os.utime(tmp_path / names["legacy_old"], (old, old))
    removed = remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted([names["dead"], names["legacy_old"]])
    left = {p.name for p in tmp_path.iterdir()}
    assert left == set(names.values()) - {names["dead"], names["legacy_old"]}
    assert remove_stale_temps(tmp_path / "missing") == []


# -- train -------------------------------------------------------------------------------------
TRAIN_ARGS = ("train", "--space", SPACE, "--data", "digits", "--strategy", "spos",
              "--epochs", "3", "--steps-per-epoch", "2", "--batch-size", "32", "-r", "16",
              "--threads", "1", "--quiet")
TIMING_FIELDS = ("seconds", "img_s")


def metrics_rows(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in rows]


def train_state(path: Path) -> dict[str, torch.Tensor]:
    data = torch.load(path, map_location="cpu", weights_only=True)
    assert data["finished"] and data["epoch"] == 3 and data["step"] == 6
    return data["model"]


@pytest.mark.slow
def test_train_killed_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    base = tmp_path / "straight"
    _, wall = timed(cli_command(*TRAIN_ARGS, "--out", str(base)))
    out = tmp_path / "killed"

    def command() -> list[str]:  # as a user reruns it: --resume once there is a checkpoint
        resume = ["--resume"] if (out / "checkpoint.pt").exists() else []
        return cli_command(*TRAIN_ARGS, "--out", str(out), *resume)

    chain = kill_chain(command, first=lambda: changes(out / "checkpoint.pt"), events=[
        ("mid atomic write", lambda: tmp_appears(out)),
        ("after the metrics rows", lambda: changes(out / "metrics.jsonl")),
    ], baseline_s=wall, seed=SEED)
    assert chain.killed, "no run was killed"
    assert stray_files(out) == []
    assert files(out) == files(base) == {"checkpoint.pt", "metrics.jsonl"}
    a, b = train_state(base / "checkpoint.pt"), train_state(out / "checkpoint.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert metrics_rows(out / "metrics.jsonl") == metrics_rows(base / "metrics.jsonl")


# -- profile -----------------------------------------------------------------------------------
PROFILE_ARGS = ("profile", "--space", SPACE, "--device", "tiny-ort", "-r", "16",
                "--time-cap", "0.02", "--overhead-archs", "2", "--rounds", "1")


@pytest.mark.slow
def test_profile_killed_resumes_to_a_complete_table(tmp_path: Path) -> None:
    from ofa_search.profiling.lut import LatencyTable

    base = tmp_path / "straight"
    _, wall = timed(cli_command(*PROFILE_ARGS, "--workspace", str(base)))
    ws = tmp_path / "killed"
    table_path = ws / "hw_profiles" / "tiny-ort.json"
    command = lambda: cli_command(*PROFILE_ARGS, "--workspace", str(ws))  # noqa: E731
    chain = kill_chain(command, first=lambda: changes(table_path), events=[
        ("mid atomic write", lambda: tmp_appears(ws / "hw_profiles")),
        ("after a chunk", lambda: changes(table_path)),
    ], baseline_s=wall, seed=SEED + 1)
    assert chain.killed, "no run was killed"
    # a save of the table killed between its bytes and its rename (a window too short for
    # the poll above), then the command rerun: the table is intact, the temp file removed
    before = table_path.read_bytes()
    temp = kill_mid_write(table_path)
    assert table_path.read_bytes() == before and temp.exists()
    done = subprocess.run(command(), capture_output=True, text=True, env=environment(),
                          timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert stray_files(ws) == [] and files(ws) == files(base) == {"hw_profiles/tiny-ort.json"}
    straight, resumed = (LatencyTable.load(base / "hw_profiles" / "tiny-ort.json"),
                         LatencyTable.load(table_path))
    # latencies are timings (they differ run to run): the same units, all priced, complete
    assert resumed.complete and straight.complete
    assert resumed.entries.keys() == straight.entries.keys()
    assert all(e["median_ms"] > 0 for e in resumed.entries.values())
    assert "overhead" in resumed.meta and len(resumed.meta["overhead"]["gaps_ms"]) == 2
    assert resumed.meta["reference"]["archs"] == straight.meta["reference"]["archs"]
    assert resumed.predict(Arch.sample(SPACE, 0, resolution=16)) > 0


# -- search, export (and fit-predictors) on a small workspace ------------------------------
@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """An untrained supernet and a small MLP accuracy predictor."""

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ws = Workspace(tmp_path_factory.mktemp("faults") / "ws")
        save_untrained_checkpoint(SPACE, ws.checkpoint)
        save_proxy_accuracy_predictor(SPACE, ws.accuracy_predictor)
    finally:
        torch.set_num_threads(threads)
    return ws


def copy_workspace(ws: Workspace, to: Path) -> Workspace:
    shutil.copytree(ws.root, to)
    return Workspace(to)


SEARCH_ARGS = ("search", "--device", DEVICE, "--budgets", "0.25", "--trials", "150",
               "--front-trials", "150", "--json")


@pytest.mark.slow
def test_search_killed_reruns_to_a_valid_complete_front(workspace: Workspace,
                                                        tmp_path: Path) -> None:
    from ofa_search.search.front import Front

    base = copy_workspace(workspace, tmp_path / "straight")
    done, wall = timed(cli_command(*SEARCH_ARGS, "--workspace", str(base.root)))
    straight = json.loads(done.stdout)
    ws = copy_workspace(workspace, tmp_path / "killed")
    command = lambda: cli_command(*SEARCH_ARGS, "--workspace", str(ws.root))  # noqa: E731
    chain = kill_chain(command, first=lambda: changes(ws.studies_journal), events=[
        ("mid atomic write", lambda: tmp_appears(ws.root)),
        ("front written", lambda: changes(ws.front(DEVICE))),
    ], baseline_s=wall, seed=SEED + 2)
    assert chain.killed, "no run was killed"
    assert chain.last is not None
    resumed = json.loads(chain.last.stdout)
    assert stray_files(ws.root) == [] and files(ws.root) == files(base.root)
    # the searches resume their stored studies: each reaches its trial count, the front is
    # written whole and answers like the straight run's
    assert [s["trials"] for s in resumed["searches"]] == [s["trials"] for s in
                                                           straight["searches"]]
    assert resumed["searches"][0]["predicted_latency_ms"] <= 0.25
    front = Front.load(ws.front(DEVICE))
    assert len(front.points) > 0 and front.min_latency_ms == resumed["front"]["min_latency_ms"]
    assert resumed["front"]["points"] == len(front.points)


EXPORT_ARCH = Arch.sample(SPACE, 3).replace(resolution=16).to_string()
EXPORT_ARGS = ("export", "--arch", EXPORT_ARCH, "--format", "onnx", "--no-measure",
               "--threads", "1", "--json")
VARYING_CARD_FIELDS = ("created", "versions")


@pytest.mark.slow
def test_export_killed_reruns_to_the_same_artefact(workspace: Workspace,
                                                   tmp_path: Path) -> None:
    from ofa_search.model_card import read_card

    base = tmp_path / "straight"
    _, wall = timed(cli_command(*EXPORT_ARGS, "--workspace", str(workspace.root), "--out",
                                str(base)))
    out = tmp_path / "killed"
    command = lambda: cli_command(*EXPORT_ARGS, "--workspace", str(workspace.root),  # noqa: E731
                                  "--out", str(out))
    chain = kill_chain(command, first=lambda: tmp_appears(out), events=[
        ("artefact written", lambda: changes(out / "model.onnx")),
        ("card written", lambda: changes(out / "model_card.md")),
    ], baseline_s=wall, seed=SEED + 3)
    assert chain.killed, "no run was killed"
    assert stray_files(out) == [] and files(out) == files(base) == {
        "model.onnx", "model_card.json", "model_card.md"}
    assert (out / "model.onnx").read_bytes() == (base / "model.onnx").read_bytes()
    a, b = read_card(base), read_card(out)
    for key in VARYING_CARD_FIELDS:
        a.pop(key), b.pop(key)
    assert a == b


FIT_ARGS = ("fit-predictors", "--n-archs", "6", "--n-latency", "5", "--max-eval-images", "20",
            "--device", DEVICE, "--threads", "1", "--json")


@heavy
def test_fit_predictors_killed_reruns_to_the_same_accuracy_dataset(workspace: Workspace,
                                                                   tmp_path: Path) -> None:
    from predictors.latency import LearnedLatencyPredictor
    from predictors.loading import load_accuracy_predictor

    def fresh(name: str) -> Workspace:
        ws = copy_workspace(workspace, tmp_path / name)
        ws.accuracy_predictor.unlink()
        return ws

    base = fresh("straight")
    _, wall = timed(cli_command(*FIT_ARGS, "--workspace", str(base.root)))
    ws = fresh("killed")
    dataset = Workspace.accuracy_dataset_for(ws.checkpoint)
    command = lambda: cli_command(*FIT_ARGS, "--workspace", str(ws.root))  # noqa: E731
    chain = kill_chain(command, first=lambda: changes(dataset), events=[
        ("mid atomic write", lambda: tmp_appears(ws.root)),
        ("measurements written", lambda: changes(
            ws.predictors_dir / f"{DEVICE}-latency-measurements.json")),
    ], baseline_s=wall, seed=SEED + 4)
    assert chain.killed, "no run was killed"
    assert stray_files(ws.root) == [] and files(ws.root) == files(base.root)
    rows = [json.loads(line) for line in dataset.read_text().splitlines()]
    expected = [json.loads(line) for line in Workspace.accuracy_dataset_for(
        base.checkpoint).read_text().splitlines()]
    assert rows == expected  # evaluations are deterministic; measurements are timings
    load_accuracy_predictor(ws.accuracy_predictor, space=SPACE)
    LearnedLatencyPredictor.load(ws.latency_predictor(DEVICE))
