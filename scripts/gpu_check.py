"""The prepared GPU check (issue 21): one run on a GPU host, at most ``--budget`` seconds
(default 480), everything written as JSON under OUT_DIR.

    python scripts/gpu_check.py OUT_DIR [--budget 480] [--quick]

Stages, each a subprocess with its own time limit (a stage that fails or runs out of time
is recorded and the next one runs; stages that no longer fit the budget are skipped):

1. ``tests``: the CUDA tests (``tests/test_cuda.py``: forward, extraction and one training
   step against the CPU; ``tests/profiling/test_torch_backend.py``: the PyTorch latency
   backend, fp16/bf16 and CUDA graphs against the CPU).
2. ``train_step``: ``scripts/bench_train_step.py`` on ``ofa_mbv3`` at 224 px, batch 256,
   the sandwich step in bf16 channels-last with cuDNN's benchmark mode on and off, after
   30 warm-up steps, with a profile of the top ops.
3. ``table_b1`` and ``table_b64``: ``scripts/bench_latency.py`` with the PyTorch backend
   (fp16, CUDA graphs) profiling ``<gpu>-torch-fp16-b{1,64}`` for ``ofa_mbv3`` w1.0 at a
   few resolutions and validating it on 30 held-out subnets.
4. ``fmnist`` (with ``--fmnist-data DIR``): ``scripts/gpu_fmnist.py``, a Fashion-MNIST
   supernet trained (bf16) for at most ``--fmnist-limit`` seconds, then its largest and
   smallest subnets scored on the test split. ``--fmnist-strategy sandwich`` (the
   default): ``mbv3_small28_lite`` with the sandwich rule at 28 px only, ``--fmnist-epochs``
   in all (default 12), 8 random subnets scored too; ``ps``: ``mbv3_small28`` with
   progressive shrinking, ``--fmnist-epochs`` per phase (default 3), the two scored at
   every resolution of the space (not with ``--quick``), as in the first H200 run.
5. ``train_step_compile``: the ``torch.compile`` variant of the step (compile time counted).

Writes ``OUT_DIR/gpu_check.json`` (host, versions, each stage's status, time and output
tail, the test counts), ``gpu_train_step.json``, ``gpu_train_step_compile.json``,
``gpu_fmnist.json``, and the tables and validation reports (8 files at most: the run
folder of the Fashion-MNIST supernet is a temporary one). Needs only torch, numpy, onnx,
pytest and this package's core (no optuna, typer or TVM). ``--quick`` shrinks every stage
(a dry run on the CPU: ``--device cpu``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _gpu_name() -> tuple[str, str]:
    import torch

    if not torch.cuda.is_available():
        return "cpu", platform.processor() or platform.machine()
    name = torch.cuda.get_device_name(0)
    match = re.search(r"\b([A-Z]\d{2,4}[A-Z]?)\b", name)
    return (match.group(1).lower() if match else "gpu"), name


def _versions() -> dict[str, Any]:
    import numpy
    import onnx
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "numpy": numpy.__version__, "onnx": onnx.__version__,
                            "cuda": torch.version.cuda, "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    sm=f"{props.major}.{props.minor}", cudnn=torch.backends.cudnn.version())
    return info


class Runner:
    """Runs stages under one deadline and records them."""

    def __init__(self, out: Path, budget: float) -> None:
        self.out, self.deadline = out, time.monotonic() + budget
        self.stages: list[dict[str, Any]] = []

    def stage(self, name: str, cmd: list[str], limit: float, min_time: float = 20.0) -> str:
        left = self.deadline - time.monotonic()
        if left < min_time:
            self.stages.append({"stage": name, "status": "skipped",
                                "why": f"{left:.0f} s left of the budget"})
            return ""
        timeout = min(limit, left)
        print(f"== {name} (limit {timeout:.0f} s): {' '.join(cmd)}", flush=True)
        start = time.monotonic()
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}"
               f"{os.environ.get('PYTHONPATH', '')}"}
        # a session of its own: a stage out of time is killed with everything it started
        # (training children, compile workers), which would hold the GPU otherwise
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=timeout)
            status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            status = "timed out"
        seconds = time.monotonic() - start
        print(output[-3000:], flush=True)
        print(f"== {name}: {status} in {seconds:.0f} s", flush=True)
        self.stages.append({"stage": name, "status": status, "seconds": round(seconds, 1),
                            "command": " ".join(cmd), "output_tail": output[-4000:]})
        return output


def _test_counts(output: str) -> dict[str, int]:
    counts = {}
    for number, word in re.findall(r"(\d+) (passed|failed|skipped|error|errors)", output):
        counts[word.rstrip("s") if word == "errors" else word] = int(number)
    return counts


def fmnist_command(args: argparse.Namespace, record: Path, limit: int,
                   run_dir: Path) -> list[str]:
    """The Fashion-MNIST stage's ``scripts/gpu_fmnist.py`` arguments (``--fmnist-strategy``).

    ``sandwich`` is the recipe that did best on the CPU (docs/stages/train.md, "The sandwich
    rule at 28 px"): ``mbv3_small28_lite``, whose smallest subnet has under 100K parameters,
    trained at Fashion-MNIST's own 28 px only. ``ps`` is the first H200 run's."""
    sandwich = args.fmnist_strategy == "sandwich"
    default = 12 if sandwich else 3
    epochs = 1 if args.quick else default if args.fmnist_epochs is None else args.fmnist_epochs
    command = ["scripts/gpu_fmnist.py", str(record), "--data-dir", str(args.fmnist_data),
               "--device", args.device, "--amp", "off" if args.device == "cpu" else "bf16",
               "--epochs", str(epochs), "--train-limit", str(limit),
               "--checkpoint-every", "5" if args.quick else "100", "--run-dir", str(run_dir)]
    if sandwich:
        return [*command, "--strategy", "sandwich", "--space", "mbv3_small28_lite",
                "--resolutions", "28", "--random-subnets", "1" if args.quick else "8"]
    # 3-5 s a subnet on the H200, minutes on a CPU (--quick)
    return [*command, "--strategy", "ps", *([] if args.quick else ["--all-resolutions"])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--budget", type=float, default=480.0)
    parser.add_argument("--quick", action="store_true", help="tiny stages (a dry run)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--fmnist-data", type=Path, default=None,
                        help="Fashion-MNIST's IDX files: also train and score a supernet "
                        "on them (scripts/gpu_fmnist.py)")
    parser.add_argument("--fmnist-strategy", default="sandwich", choices=("sandwich", "ps"),
                        help="sandwich: mbv3_small28_lite at 28 px only (the CPU's best "
                        "recipe); ps: mbv3_small28, progressive shrinking")
    parser.add_argument("--fmnist-epochs", type=int, default=None,
                        help="sandwich: epochs in all (default 12); ps: epochs per phase "
                        "(default 3)")
    parser.add_argument("--fmnist-limit", type=float, default=200.0,
                        help="seconds of Fashion-MNIST training before it is stopped and "
                        "scored")
    args = parser.parse_args(argv)
    if args.fmnist_epochs is not None and args.fmnist_epochs < 1:
        parser.error(f"--fmnist-epochs must be >= 1, got {args.fmnist_epochs}")
    out = args.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    short, gpu = _gpu_name()
    runner = Runner(out, args.budget)
    record: dict[str, Any] = {"check": "gpu_check", "started": time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "gpu": gpu, "versions": _versions()}

    tests = runner.stage("tests", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                   "tests/test_cuda.py",
                                   "tests/profiling/test_torch_backend.py"], limit=120)
    record["tests"] = _test_counts(tests)

    res, batch, steps, warmup = (("128", "2", "1", "3") if args.quick
                                 else ("224", "256", "10", "30"))
    step_args = ["--device", args.device, "--space", "ofa_mbv3", "--resolution", res,
                 "--batch-size", batch, "--steps", steps, "--warmup", warmup]
    # bf16 autocast on a CPU without bf16 units is very slow: the CPU dry run stays in fp32.
    # The first H200 run (2026-12-05) stepped at 3.2 s (bf16) and 2.5 s (fp32) after 2-3
    # warm-up steps, without cuDNN's benchmark mode. Random subnets keep meeting conv
    # shapes not seen before for their first tens of steps, so the warm-up is now 30 steps
    # (each one's time recorded), and benchmark mode is compared on and off
    half = "fp32" if args.device == "cpu" else "bf16"
    runner.stage("train_step", [py, "scripts/bench_train_step.py",
                                str(out / "gpu_train_step.json"), *step_args, "--variants",
                                f"{half}-cl", f"{half}-cl-nobench",
                                "--profile", "--profile-steps", "1"],
                 limit=240)
    resolutions = ["128"] if args.quick else ["160", "224"]
    for batch_size in ("1", "2") if args.quick else ("1", "64"):
        device_id = f"{short}-torch-fp16-b{batch_size}"
        dtype = "fp32" if args.device == "cpu" else "fp16"
        runner.stage(f"table_b{batch_size}", [
            py, "scripts/bench_latency.py", str(out), "--device", device_id, "--profile",
            "--backend", "torch", "--torch-device", args.device, "--torch-dtype", dtype,
            *(["--cuda-graphs"] if args.device != "cpu" else []),
            "--batch-size", batch_size, "--space", "ofa_mbv3", "--resolutions", *resolutions,
            "--n", "3" if args.quick else "30", "--time-cap", "0.02", "--rounds", "2",
            "--overhead-archs", "2" if args.quick else "5", "--tables-dir", str(out)],
            limit=160)

    if args.fmnist_data is not None:
        # the training stops in time for its scoring (~60 s) to fit the budget
        left = runner.deadline - time.monotonic() - 70
        limit = round(min(20.0 if args.quick else args.fmnist_limit, left))
        run_dir = Path(tempfile.mkdtemp(prefix="gpu_fmnist_"))
        runner.stage("fmnist", [py, *fmnist_command(args, out / "gpu_fmnist.json", limit,
                                                    run_dir)],
                     limit=limit + 90, min_time=90)
    runner.stage("train_step_compile", [py, "scripts/bench_train_step.py",
                                        str(out / "gpu_train_step_compile.json"), *step_args,
                                        "--variants", f"{half}-cl-compile"], limit=120,
                 min_time=60)

    record["stages"] = runner.stages
    record["seconds"] = round(args.budget - (runner.deadline - time.monotonic()), 1)
    path = out / "gpu_check.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    print(f"wrote {path}: " + ", ".join(f"{s['stage']} {s['status']}" for s in runner.stages))
    return 0 if all(s["status"] == "ok" for s in runner.stages) else 1


if __name__ == "__main__":
    raise SystemExit(main())
