"""CLI fuzzing (issue 20): Hypothesis draws arch strings, numbers, device ids and paths for
the commands that parse user input, and runs each command line in this process through the
console entry point (:func:`ofa_search.cli.main`, inside typer's ``CliRunner`` isolation,
which captures stdout and stderr). Every run must end with exit code 0 (it worked) or 2
(one line naming the bad input), never with another code or a traceback.

The workspace is real and small (an untrained supernet, a fitted MLP accuracy predictor,
a front, a complete synthetic device table, a finished tiny training run). Inputs that
would start real work are steered to its cheap form (a finished run resumed, a complete
table resumed, an export without measurement), so that the examples stay fast; example
counts are fixed per command (``derandomize``: the same examples on every run of this file;
within the whole suite Hypothesis has drawn others, so a command whose valid lines are rare
also runs explicit valid examples) and the whole file runs in about a minute on 2 cores.
``FUZZ_SCALE=4`` multiplies the counts; ``FUZZ_RANDOM=1`` draws new examples on every run
(to explore; a failure prints the command line to add to ``tests/test_cli_errors.py``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import traceback
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from supernet_helpers import save_proxy_accuracy_predictor, save_untrained_checkpoint
from table_helpers import write_synthetic_table
from typer.testing import CliRunner

from ofa_search.arch import Arch
from ofa_search.workspace import Workspace

SPACE = "mbv3_small28"
DEVICE = "cpu-ort-1t"
TABLE_DEVICE = "fuzz-dev"  # a complete synthetic table of this host's ORT profile
SCALE = max(1, int(os.environ.get("FUZZ_SCALE", "1")))
RANDOM = bool(os.environ.get("FUZZ_RANDOM"))  # new examples on every run (exploration)


def fuzz(n: int) -> settings:
    return settings(max_examples=n * SCALE, deadline=None, derandomize=not RANDOM,
                    database=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])


# -- running the CLI -----------------------------------------------------------------------
def invoke(args: list[str]) -> tuple[int, str]:
    """``main(args)`` in typer's CliRunner isolation: exit code and everything printed.
    An exception that escapes ``main`` is a failure (its traceback is what a user sees)."""
    from ofa_search.cli import main

    runner = CliRunner()
    escaped = ""
    with runner.isolation() as (out, err, _):
        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # the very thing this test looks for
            code, escaped = -1, traceback.format_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        output = out.getvalue().decode("utf-8", "replace") + err.getvalue().decode(
            "utf-8", "replace")
    return code, output + escaped


def check(args: list[str]) -> int:
    """Run ``args``; exit code 0 or 2 and no traceback, else fail naming the command line."""
    threads = torch.get_num_threads()
    try:
        code, output = invoke(args)
    finally:
        torch.set_num_threads(threads)  # train --threads sets it for the process
    assert code in (0, 2) and "Traceback" not in output, (
        f"ofa-search {' '.join(map(repr, args))} -> exit {code}:\n{output[-3000:]}")
    if code == 2:
        errors = [line for line in output.splitlines() if line.startswith("error: ")]
        usage = "Usage:" in output  # click's usage errors (a box with the message)
        assert usage or len(errors) == 1, output[-2000:]
        REFUSALS[errors[0] if errors else "usage error"] += 1
        REFUSED.append((args, output))
    return code


REFUSALS: Counter[str] = Counter()
"""The refusals seen by the running test, by message: what a test that hit only errors
reports."""


REFUSED: list[tuple[list[str], str]] = []
"""The running test's refused command lines with their output."""


@pytest.fixture(autouse=True)
def _fresh_refusals() -> None:
    REFUSALS.clear()
    REFUSED.clear()


# -- the workspace ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Tree:
    root: Path
    ws: Workspace          # checkpoint, accuracy predictor, front, synthetic table
    search_ws: Workspace   # a copy that search may write to
    run: Path              # a finished training run (resuming it does nothing)

    def path(self, kind: str) -> str:
        return str({
            "ws": self.ws.root, "file": self.root / "afile",
            "under_file": self.root / "afile" / "sub", "missing": self.root / "missing" / "x",
            "empty": self.root / "empty", "dangling": self.root / "dangling",
            "long": self.root / ("n" * 300), "run": self.run,
        }[kind])


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tree]:
    from ofa_search.search.front import build_front
    from ofa_search.train import TrainConfig, run_training

    root = tmp_path_factory.mktemp("fuzz")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cwd = Path.cwd()
    os.chdir(root)  # relative paths that the fuzzer makes up land here
    try:
        ws = Workspace(root / "ws")
        save_untrained_checkpoint(SPACE, ws.checkpoint)
        save_proxy_accuracy_predictor(SPACE, ws.accuracy_predictor)
        build_front(ws, DEVICE, n_trials=60)
        table = write_synthetic_table(ws, TABLE_DEVICE, SPACE, ["fp32"], resolutions=(16, 20))
        table.meta["overhead"] = {"archs": 0}  # fitted: resuming the table measures nothing
        table.save(ws.hw_profiles_dir / f"{TABLE_DEVICE}.json")
        run = root / "run"
        # the CLI's default batch size and resolutions: a resume with others is refused
        run_training(TrainConfig(space=SPACE, dataset="digits", strategy="spos", epochs=1,
                                 steps_per_epoch=1, out_dir=str(run), quiet=True))
        search_ws = Workspace(root / "search-ws")
        shutil.copytree(ws.root, search_ws.root)
        (root / "afile").write_text("a file")
        _run_inputs(root / "run-inputs")
        (root / "empty").mkdir()
        (root / "dangling").symlink_to(root / "nowhere")
        yield Tree(root, ws, search_ws, run)
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)


def _run_inputs(folder: Path) -> None:
    """Models and arrays for ``ofa-search run``: a real ONNX subnet, a foreign one, good,
    misshapen, truncated and pickled arrays."""
    from ofa_search.nn import build_static
    from ofa_search.onnx_export import export_onnx, save_onnx

    folder.mkdir()
    net = build_static(Arch.smallest(SPACE), torch.Generator().manual_seed(0))
    save_onnx(export_onnx(net, net.input_shape()), folder / "model.onnx")
    (folder / "garbage.onnx").write_bytes(bytes(range(256)) * 4)
    (folder / "model.ofab").write_bytes(b"PK\x03\x04 not really")
    np.save(folder / "good.npy", np.zeros((2, 1, 16, 16), np.float32))
    np.save(folder / "one.npy", np.zeros((1, 16, 16), np.float32))
    np.save(folder / "shape.npy", np.zeros((2, 3, 5), np.float32))
    np.save(folder / "ints.npy", np.zeros((2, 1, 16, 16), np.int64))
    np.save(folder / "empty.npy", np.zeros((0, 1, 16, 16), np.float32))
    np.save(folder / "nan.npy", np.full((1, 1, 16, 16), np.nan, np.float32))
    np.save(folder / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (folder / "truncated.npy").write_bytes((folder / "good.npy").read_bytes()[:100])
    (folder / "text.npy").write_text("not an array")
    (folder / "blank.npy").write_bytes(b"")


# -- strategies ------------------------------------------------------------------------------
SLUG = re.compile(r"[a-z0-9][a-z0-9._-]*")
text = st.text(max_size=40)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` nine times in ten, else ``bad`` (so that most command lines get past the
    parsing of their other options)."""
    return st.integers(0, 9).flatmap(lambda i: bad if i == 0 else good)


valid_archs = st.integers(0, 10_000).map(lambda seed: Arch.sample(SPACE, seed).to_string())


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[str]) -> str:
    """A valid string with a few characters replaced, inserted or deleted."""
    chars = list(draw(base))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(chars)))
        op = draw(st.sampled_from(["replace", "insert", "delete"]))
        c = draw(st.sampled_from(list("0123456789_-krewx.{}[]:,\" ")))
        if op == "insert":
            chars.insert(i, c)
        elif chars and i < len(chars):
            if op == "replace":
                chars[i] = c
            else:
                del chars[i]
    return "".join(chars)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | text,
                           lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(text, inner, max_size=4), max_leaves=12)
ofa_dicts = st.fixed_dictionaries({
    "ks": st.lists(st.sampled_from([3, 5, 7, 9, 0, -1]), max_size=20),
    "e": st.lists(st.sampled_from([3, 4, 6, 2, 1.5]), max_size=20),
    "d": st.lists(st.integers(-1, 5), max_size=6),
    "r": st.sampled_from([16, 20, 28, 17, 0, -16, 10**9, 160])}).map(json.dumps)
arch_dicts = valid_archs.map(lambda s: Arch.parse(s, SPACE).to_dict()).flatmap(
    lambda d: st.sampled_from(sorted(d)).flatmap(
        lambda key: json_values.map(lambda v: json.dumps({**d, key: v}))))
archs = st.one_of(valid_archs, mutated(valid_archs), text, ofa_dicts, arch_dicts,
                  json_values.map(json.dumps))

special_numbers = st.sampled_from(["nan", "inf", "-inf", "1e309", "-0", "0", "1e-320", "0x10",
                                   "1_000", " 1", "", "1,5", "0.3", "2", "1e-9"])
numbers = mostly(st.one_of(st.floats().map(repr), st.floats(0.01, 10).map(repr),
                           st.integers(-3, 3).map(str), special_numbers), text)
counts = mostly(st.one_of(st.integers(1, 6).map(str), st.integers(-2, 20).map(str),
                          st.integers().map(str)), text)
device_ids = st.one_of(st.sampled_from([DEVICE, "note10-tflite", TABLE_DEVICE, "nope", "..",
                                        "../../x", "", "a/b", "Dev", "x" * 65]), text)
path_kinds = st.sampled_from(["ws", "ws", "file", "under_file", "missing", "empty", "dangling",
                              "long"])


def opt(name: str, values: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    """Mostly ``[]``, else ``[name, value]``."""
    return st.one_of(st.just([]), st.just([]), values.map(lambda v: [name, v]))


def flag(name: str) -> st.SearchStrategy[list[str]]:
    return st.sampled_from([[], [name]])


def outcomes(codes: list[int], *, need_success: bool = True) -> None:
    """Every command line ended in 0 or 2 (checked one by one); some worked, some not."""
    assert 2 in codes, "no example was refused"
    if need_success:
        shortest = sorted(REFUSED, key=lambda item: len(item[0]))[:3]
        assert 0 in codes, ("no example got past validation (the fuzzer only hit errors); "
                            f"most frequent refusals: {REFUSALS.most_common(5)}; the "
                            "shortest refused command lines and their output:\n" + "\n".join(
                                f"{args}\n{output[-1500:]}" for args, output in shortest))


# -- the commands ----------------------------------------------------------------------------
# Each test runs its Hypothesis examples inside, then checks that the examples both passed
# and failed validation (a fuzzer that only ever hits the first error proves little).

def test_arch_info() -> None:
    codes: list[int] = []

    @fuzz(100)
    @given(arch=archs, space=mostly(st.sampled_from([SPACE, SPACE, "mbv3_small28_mp",
                                                     "ofa_mbv3"]), text),
           extra=st.sampled_from([[], ["--json"], ["--precision-summary"],
                                  ["--json", "--precision-summary"]]))
    def run(arch: str, space: str, extra: list[str]) -> None:
        codes.append(check(["arch", "info", "--space", space, arch, *extra]))

    run()
    outcomes(codes)


def test_latency(tree: Tree) -> None:
    codes: list[int] = []

    @fuzz(50)
    @given(arch=st.one_of(valid_archs, archs),
           device=mostly(st.sampled_from([DEVICE, TABLE_DEVICE]), device_ids),
           ws=mostly(path_kinds.map(tree.path), text),
           predictor=opt("--predictor", mostly(st.sampled_from(["lut", "learned"]), text)),
           confidence=opt("--confidence", numbers),
           space=opt("--space", st.sampled_from([SPACE, "ofa_mbv3", "nope"])),
           json_flag=flag("--json"))
    def run(arch: str, device: str, ws: str, predictor: list[str], confidence: list[str],
            space: list[str], json_flag: list[str]) -> None:
        codes.append(check(["latency", "-w", ws, "-d", device, arch, *predictor, *confidence,
                            *space, *json_flag]))

    run()
    outcomes(codes)


def test_query(tree: Tree) -> None:
    codes: list[int] = []

    @fuzz(50)
    @given(device=mostly(st.just(DEVICE), device_ids), budget=numbers,
           ws=mostly(st.just(tree.path("ws")), st.one_of(path_kinds.map(tree.path), text)),
           confidence=opt("--confidence", numbers),
           precision=opt("--precision", mostly(st.sampled_from(["fp32", "int8"]), text)),
           kind=opt("--latency-predictor", mostly(st.sampled_from(["lut", "learned"]), text)),
           json_flag=flag("--json"))
    def run(device: str, budget: str, ws: str, confidence: list[str], precision: list[str],
            kind: list[str], json_flag: list[str]) -> None:
        codes.append(check(["query", "-w", ws, "-d", device, "--latency-ms", budget,
                            *confidence, *precision, *kind, *json_flag]))

    run()
    outcomes(codes)


def test_profile(tree: Tree) -> None:
    """A valid command line resumes the complete ``fuzz-dev`` table (nothing to measure);
    every other device id drawn is no valid slug (a new table would be measured)."""
    codes: list[int] = []
    none: list[str] = []

    @fuzz(60)
    # valid lines are rare here (13 options, most of them drawn invalid now and then), and
    # in a whole-suite run Hypothesis drew 60 examples without one: two valid lines always run
    @example(device=TABLE_DEVICE, ws="ws", resolutions=["16"], backend=none, threads=none,
             width=none, time_cap=none, rounds=none, overhead=none, precision=none,
             batch=none, provider=none, target=none, tuning=none)
    @example(device=TABLE_DEVICE, ws="ws", resolutions=["16", "20"],
             backend=["--backend", "onnxruntime"], threads=["--threads", "1"], width=none,
             time_cap=none, rounds=none, overhead=none, precision=["--precision", "fp32"],
             batch=none, provider=none, target=none, tuning=none)
    @given(device=mostly(st.just(TABLE_DEVICE), text.filter(
               lambda d: not (SLUG.fullmatch(d) and len(d) <= 64))),
           ws=mostly(st.just("ws"), st.sampled_from(["file", "under_file", "dangling",
                                                     "long"])),
           resolutions=st.lists(mostly(st.sampled_from(["16", "20"]), counts.filter(
               lambda r: r.strip() not in {"24", "28", "32"})), max_size=3),
           backend=opt("--backend", st.sampled_from(["onnxruntime", "tvm", "tensorrt"])),
           threads=opt("--threads", counts), width=opt("--width", numbers),
           time_cap=opt("--time-cap", numbers), rounds=opt("--rounds", counts),
           overhead=opt("--overhead-archs", counts),
           precision=opt("--precision", mostly(st.just("fp32"), text)),
           batch=opt("--batch-size", counts), provider=opt("--provider", text),
           target=opt("--target", st.one_of(text, json_values.map(json.dumps))),
           tuning=opt("--tuning-trials", counts))
    def run(device: str, ws: str, resolutions: list[str], backend: list[str],
            threads: list[str], width: list[str], time_cap: list[str], rounds: list[str],
            overhead: list[str], precision: list[str], batch: list[str], provider: list[str],
            target: list[str], tuning: list[str]) -> None:
        # no -r means every resolution of the space: new units, which would be measured
        res = [arg for r in resolutions or ["16"] for arg in ("-r", r)]
        codes.append(check(["profile", "-w", tree.path(ws), "-d", device, *res, *backend,
                            *threads, *width, *time_cap, *rounds, *overhead, *precision,
                            *batch, *provider, *target, *tuning]))

    run()
    outcomes(codes)


def test_train(tree: Tree) -> None:
    """Only the finished run may be resumed (at its one epoch, with its batch size): every
    other valid command line would train, so new folders are always asked to resume (and
    refused)."""
    codes: list[int] = []

    @fuzz(40)
    @given(out=mostly(st.just("run"), st.sampled_from(["file", "under_file", "empty",
                                                        "missing", "dangling", "run"])),
           strategy=mostly(st.just("spos"), st.one_of(st.sampled_from(
               ["sandwich", "ps", "precision", "standalone"]), text)),
           epochs=counts, space=opt("--space", st.sampled_from([SPACE, "mbv3_small28_mp",
                                                               "nope"])),
           lr=opt("--lr", numbers), batch=opt("--batch-size", counts),
           warmup=opt("--warmup-epochs", counts), seed=opt("--seed", counts),
           erasing=opt("--random-erasing", numbers),
           data_name=opt("--data", st.sampled_from(["digits", "nope", ""])),
           resume=mostly(st.just(["--resume"]), st.just([])),
           init=opt("--init", path_kinds))
    def run(out: str, strategy: str, epochs: str, space: list[str], lr: list[str],
            batch: list[str], warmup: list[str], seed: list[str], erasing: list[str],
            data_name: list[str], resume: list[str], init: list[str]) -> None:
        if out == "run":
            epochs = "1"
        if out in ("empty", "missing"):
            resume = ["--resume"]
        if init:
            init = ["--init", tree.path(init[1])]
        codes.append(check(["train", "--out", tree.path(out), "--strategy", strategy,
                            "--threads", "1", "--quiet", "--epochs", epochs, *space, *lr,
                            *batch, *warmup, *seed, *erasing, *data_name, *resume, *init]))

    run()
    outcomes(codes)


def test_check_device(tree: Tree) -> None:
    """Known devices are only ever cleared (re-timing them would measure)."""
    codes: list[int] = []

    @fuzz(30)
    @given(ws=path_kinds, device=device_ids, rounds=opt("--rounds", counts),
           mode=st.sampled_from([["--clear"], ["--clear"], ["--rescale"],
                                 ["--clear", "--rescale"], []]), json_flag=flag("--json"))
    def run(ws: str, device: str, rounds: list[str], mode: list[str],
            json_flag: list[str]) -> None:
        if device in (DEVICE, TABLE_DEVICE, "note10-tflite"):
            mode = ["--clear"]
        codes.append(check(["check-device", "-w", tree.path(ws), "-d", device, *rounds, *mode,
                            *json_flag]))

    run()
    outcomes(codes)


def test_devices(tree: Tree) -> None:
    codes: list[int] = []

    @fuzz(30)
    @given(ws=st.one_of(path_kinds.map(tree.path), text), json_flag=flag("--json"))
    def run(ws: str, json_flag: list[str]) -> None:
        codes.append(check(["devices", "-w", ws, *json_flag]))

    run()
    outcomes(codes)


def test_fit_predictors(tree: Tree) -> None:
    """Workspaces without a supernet; devices are imported tables (skipped) or made up, so
    nothing is evaluated or measured."""
    codes: list[int] = []

    @fuzz(20)
    @given(ws=st.sampled_from(["empty", "empty", "file", "under_file", "missing", "long"]),
           devices=st.lists(mostly(st.just("note10-tflite"), text), max_size=2),
           n_archs=opt("--n-archs", counts), n_latency=opt("--n-latency", counts),
           max_eval=opt("--max-eval-images", counts),
           skip=mostly(st.just(["--skip-accuracy"]), st.just([])),
           checkpoint=opt("--checkpoint", st.sampled_from(["file", "missing", "empty"])))
    def run(ws: str, devices: list[str], n_archs: list[str], n_latency: list[str],
            max_eval: list[str], skip: list[str], checkpoint: list[str]) -> None:
        if checkpoint:
            checkpoint = ["--checkpoint", tree.path(checkpoint[1])]
        dev = [arg for d in devices for arg in ("-d", d)]
        codes.append(check(["fit-predictors", "-w", tree.path(ws), *dev, *n_archs, *n_latency,
                            *max_eval, *skip, *checkpoint, "--threads", "1", "--json"]))

    run()
    outcomes(codes)


def test_search(tree: Tree) -> None:
    """Into a copy of the workspace, with a handful of trials."""
    codes: list[int] = []

    @fuzz(20)
    @given(budgets=opt("--budgets", mostly(st.lists(
               mostly(st.floats(0.05, 2).map(repr), numbers), min_size=1, max_size=2).map(
               ",".join), text)),
           trials=st.integers(1, 6).map(str),
           engine=opt("--engine", mostly(st.sampled_from(["nsga2", "evolution", "random"]),
                                         text)),
           restarts=opt("--restarts", mostly(st.integers(1, 2).map(str), counts)),
           front=mostly(st.just(["--front", "--front-trials", "4"]), st.just(["--no-front"])),
           device=mostly(st.just(DEVICE), device_ids),
           storage=mostly(st.sampled_from([[], ["--storage", "s.log"],
                                           ["--storage", "sqlite:///s.db"]]),
                          st.sampled_from([["--storage", "nope://x"], ["--storage", "s.txt"],
                                           ["--storage", "afile/s.log"]])),
           precision=opt("--precision", mostly(st.just("fp32"), st.sampled_from(["int8", "x"]))))
    def run(budgets: list[str], trials: str, engine: list[str], restarts: list[str],
            front: list[str], device: str, storage: list[str], precision: list[str]) -> None:
        codes.append(check(["search", "-w", str(tree.search_ws.root), "-d", device, *budgets,
                            "--trials", trials, *engine, *restarts, *front, *storage,
                            *precision, "--json"]))

    run()
    outcomes(codes)


def test_export(tree: Tree) -> None:
    """Exports without measurement, into new folders (a valid one is a real export)."""
    codes: list[int] = []

    @fuzz(10)
    @given(data=st.data(), arch=mostly(valid_archs, archs),
           out=mostly(st.just("new"), st.sampled_from(["file", "under_file", "dangling",
                                                       "long", "ws"])),
           fmt=opt("--format", mostly(st.sampled_from(["state_dict", "torchscript", "auto"]),
                                      text)),
           calib=opt("--calib-images", counts), max_eval=opt("--max-eval-images", counts),
           device=opt("--device", device_ids), by_query=st.integers(0, 3))
    def run(data: st.DataObject, arch: str, out: str, fmt: list[str], calib: list[str],
            max_eval: list[str], device: list[str], by_query: int) -> None:
        folder = (str(tree.root / "exports" / f"e{data.draw(st.integers(0, 10**9))}")
                  if out == "new" else tree.path(out))
        if by_query == 0:  # by a latency budget: query the front first
            query = ["--latency-ms", data.draw(numbers)]
            arch_args = query if device else ["--device", DEVICE, *query]
        else:
            arch_args = ["--arch", arch]
        codes.append(check(["export", "-w", str(tree.ws.root), *arch_args, "--out", folder,
                            *fmt, *calib, *max_eval, *device, "--no-measure", "--threads",
                            "1"]))

    run()
    outcomes(codes)


def test_arch_export(tree: Tree) -> None:
    codes: list[int] = []

    @fuzz(20)
    @given(arch=mostly(valid_archs, archs), out=mostly(st.just("new"), path_kinds),
           space=mostly(st.just(SPACE), st.just("nope")))
    def run(arch: str, out: str, space: str) -> None:
        target = str(tree.root / "onnx" / "m.onnx") if out == "new" else tree.path(out)
        codes.append(check(["arch", "export", "--space", space, arch, "--out", target]))

    run()
    outcomes(codes)


def test_run(tree: Tree) -> None:
    codes: list[int] = []
    inputs = tree.root / "run-inputs"
    models = ["model.onnx", "model.onnx", "garbage.onnx", "model.ofab", "good.npy", "missing"]
    arrays = ["good.npy", "one.npy", "shape.npy", "ints.npy", "empty.npy", "nan.npy",
              "objects.npy", "truncated.npy", "text.npy", "blank.npy", "model.onnx", "missing"]

    @fuzz(30)
    @given(model=st.one_of(st.sampled_from(models).map(lambda m: str(inputs / m)),
                           path_kinds.map(tree.path)),
           source=st.one_of(
               st.sampled_from(arrays).map(lambda a: ["--input", str(inputs / a)]),
               st.tuples(mostly(st.just("digits"), text), counts).map(
                   lambda d: ["--data", d[0], "--n", d[1]]),
               st.just([]), st.sampled_from(arrays).map(
                   lambda a: ["--input", str(inputs / a), "--data", "digits"])),
           backend=opt("--backend", mostly(st.sampled_from(["auto", "numpy", "tvm"]), text)),
           json_flag=flag("--json"))
    def run(model: str, source: list[str], backend: list[str], json_flag: list[str]) -> None:
        codes.append(check(["run", model, *source, *backend, "--threads", "1", *json_flag]))

    run()
    outcomes(codes)
