"""Bad input to the CLI is refused before any work, in one line with exit code 2, and
loses nothing (issue 20): outputs that cannot be written, device ids that are no file
names, options the space does not have, resume without a checkpoint, workspaces that are
files or missing. Run in this process through the console entry point (fast); ``serve``
in a subprocess (a regression would start a server)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from supernet_helpers import save_untrained_checkpoint

from ofa_search.arch import Arch

SPACE = "mbv3_small28"
ARCH = Arch.smallest(SPACE).to_string()


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """The console entry point in this process (as the shell runs it): exit code, stderr."""
    from ofa_search.cli import main

    try:
        main(list(args))
    except SystemExit as exited:
        return int(exited.code or 0), capsys.readouterr().err
    return 0, capsys.readouterr().err


def one_line_error(code: int, err: str, message: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (to show that nothing changed)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A folder with a regular file ``afile``, an empty folder ``empty`` and a workspace
    ``ws`` holding an (untrained) supernet checkpoint."""
    (tmp_path / "afile").write_text("keep me")
    (tmp_path / "empty").mkdir()
    save_untrained_checkpoint(SPACE, tmp_path / "ws" / "supernet" / "checkpoint.pt")
    return tmp_path


CASES = [
    # outputs that cannot be written: refused before the work
    (["train", "--out", "{t}/afile", "--epochs", "1"],
     "output folder {t}/afile is a file, not a folder"),
    (["train", "--out", "{t}/afile/run", "--epochs", "1"],
     "output folder {t}/afile/run lies under {t}/afile, which is a file"),
    (["export", "-w", "{t}/ws", "--arch", ARCH, "--out", "{t}/afile"],
     "export folder {t}/afile is a file, not a folder"),
    (["export", "-w", "{t}/ws", "--arch", ARCH, "--out", "{t}/afile/x"],
     "export folder {t}/afile/x lies under {t}/afile, which is a file"),
    (["arch", "export", "--space", SPACE, ARCH, "--out", "{t}/afile/m.onnx"],
     "--out {t}/afile/m.onnx: its folder {t}/afile is a file, not a folder"),
    (["profile", "-w", "{t}/afile", "-d", "tiny", "-r", "16"],
     "workspace {t}/afile is a file, not a folder"),
    (["fit-predictors", "-w", "{t}/afile", "--skip-accuracy", "-d", "cpu-ort-1t"],
     "workspace {t}/afile is a file, not a folder"),
    (["search", "-w", "{t}/afile", "-d", "cpu-ort-1t", "--budgets", "1"],
     "workspace {t}/afile is a file, not a folder"),
    (["import", "ofa-predictor", "{t}/afile", "-w", "{t}/afile"],
     "workspace {t}/afile is a file, not a folder"),
    # device ids that would leave their folder
    (["profile", "-w", "{t}/ws", "-d", "../../x", "-r", "16"],
     "--device '../../x' is not a valid device id"),
    (["profile", "-w", "{t}/ws", "-d", "My Device", "-r", "16"],
     "--device 'My Device' is not a valid device id"),
    (["fit-predictors", "-w", "{t}/ws", "--skip-accuracy", "-d", "../../x"],
     "--device '../../x' is not a device id"),
    (["latency", "-w", "{t}/ws", "-d", "../x", ARCH], "--device '../x' is not a device id"),
    (["check-device", "-w", "{t}/ws", "-d", "a/b"], "--device 'a/b' is not a device id"),
    (["query", "-w", "{t}/ws", "-d", "..", "--latency-ms", "1"],
     "--device '..' is not a device id"),
    (["export", "-w", "{t}/ws", "--arch", ARCH, "-d", "../x", "--out", "{t}/o"],
     "--device '../x' is not a device id"),
    # options the space does not have: refused before profiling
    (["profile", "-w", "{t}/ws", "-d", "tiny", "-r", "17"],
     "--resolutions: space 'mbv3_small28' has resolutions [16, 20, 24, 28, 32], not [17]"),
    (["profile", "-w", "{t}/ws", "-d", "tiny", "-r", "16", "--width", "1.5"],
     "--width: space 'mbv3_small28' has widths [1.0], not 1.5"),
    (["profile", "-w", "{t}/ws", "-d", "tiny", "-r", "16", "--time-cap", "nan"],
     "--time-cap must be a finite number > 0, got nan"),
    (["train", "--out", "{t}/run", "--lr", "inf"], "--lr must be a finite number > 0, got inf"),
    (["search", "-w", "{t}/ws", "-d", "cpu-ort-1t", "--budgets", "inf"],
     "--budgets must be positive finite numbers, got [inf]"),
    # silent acceptance
    (["train", "--resume", "--out", "{t}/empty", "--epochs", "1"],
     "cannot resume: output folder {t}/empty is empty"),
    (["train", "--resume", "--out", "{t}/nothing", "--epochs", "1"],
     "cannot resume: output folder {t}/nothing does not exist"),
    (["devices", "-w", "{t}/afile"], "workspace {t}/afile is a file, not a folder"),
    (["devices", "-w", "{t}/missing"], "workspace {t}/missing does not exist"),
    (["query", "-w", "{t}/afile", "-d", "cpu-ort-1t", "--latency-ms", "1"],
     "workspace {t}/afile is a file, not a folder"),
    (["query", "-w", "{t}/missing", "-d", "cpu-ort-1t", "--latency-ms", "1"],
     "workspace {t}/missing does not exist"),
    (["latency", "-w", "{t}/afile", "-d", "cpu-ort-1t", ARCH],
     "workspace {t}/afile is a file, not a folder"),
    # the strategies that --help lists, and the value as given
    (["train", "--strategy", "nope", "--out", "{t}/run"],
     "--strategy must be one of ps, sandwich, spos, precision, got 'nope'"),
    (["train", "--strategy", "standalone", "--out", "{t}/run"],
     "--strategy must be one of ps, sandwich, spos, precision, got 'standalone'"),
    # found by the fuzzer (tests/test_cli_fuzz.py): tracebacks before
    (["train", "--strategy", "precision", "--out", "{t}/run"],
     "strategy 'precision': space 'mbv3_small28' offers no low precision"),
    (["train", "-r", "17", "--out", "{t}/run"],
     "--resolutions: space 'mbv3_small28' has resolutions [16, 20, 24, 28, 32], not [17]"),
    (["search", "-w", "{t}/ws", "-d", "cpu-ort-1t", "--budgets", "1", "--storage",
      "{t}/afile/s.log"], "--storage {t}/afile/s.log: its folder {t}/afile is a file"),
    (["train", "--device", "gpu", "--out", "{t}/run"],
     "device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    (["train", "--amp", "fp16", "--device", "cpu", "--out", "{t}/run"],
     "amp 'fp16' needs a CUDA device; use amp 'bf16' on the CPU"),
    (["train", "--seed", "-1", "--out", "{t}/run"], None),
    (["arch", "sample", "--space", SPACE, "--seed", "-1"], None),
    (["train", "--threads", "4294967296", "--out", "{t}/run"], None),
]


@pytest.mark.parametrize(("args", "message"), CASES, ids=[" ".join(a[:2]) + f"-{i}"
                                                          for i, (a, _) in enumerate(CASES)])
def test_refused_in_one_line_and_nothing_changes(tree: Path, capsys: pytest.CaptureFixture[str],
                                                 args: list[str], message: str | None) -> None:
    before = snapshot(tree)
    code, err = run_main(capsys, *[a.replace("{t}", str(tree)) for a in args])
    if message is None:  # refused by the option's range: click's usage error
        assert code == 2 and "Traceback" not in err and "Invalid value for" in err, err
    else:
        one_line_error(code, err, message.replace("{t}", str(tree)))
    assert snapshot(tree) == before
    assert sorted(p.name for p in tree.iterdir()) == ["afile", "empty", "ws"]


def test_train_strategies_match_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    from ofa_search.cli import main
    from ofa_search.train import SUPERNET_STRATEGIES as TRAIN_STRATEGIES

    try:
        main(["train", "--help"])
    except SystemExit as exited:
        assert not exited.code
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in TRAIN_STRATEGIES) and "standalone" not in text


def test_devices_without_a_workspace_lists_the_shipped_tables(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The implicit ./ofa-workspace may be missing (a first run); a chosen one may not."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OFA_SEARCH_WORKSPACE", raising=False)
    code, err = run_main(capsys, "devices")
    assert code == 0 and err == "" and not (tmp_path / "ofa-workspace").exists()
    monkeypatch.setenv("OFA_SEARCH_WORKSPACE", str(tmp_path / "chosen"))
    code, err = run_main(capsys, "devices")
    one_line_error(code, err, f"workspace {tmp_path / 'chosen'} does not exist")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_export_folder_is_refused(tree: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    locked = tree / "locked"
    locked.mkdir(mode=0o555)
    try:
        code, err = run_main(capsys, "export", "-w", str(tree / "ws"), "--arch", ARCH, "--out",
                             str(locked / "x"))
        one_line_error(code, err, f"export folder {locked / 'x'} lies under {locked}, not "
                                  "writable")
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize(("name", "message"), [("afile", "is a file, not a folder"),
                                               ("missing", "does not exist")])
def test_serve_refuses_a_workspace_that_is_no_folder(tree: Path, name: str,
                                                     message: str) -> None:
    out = subprocess.run([sys.executable, "-m", "ofa_search.cli", "serve", "--workspace",
                          str(tree / name), "--port", "0"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == f"error: workspace {tree / name} {message}" + (
        " (create it, or give --workspace the folder of your runs)" if name == "missing"
        else "")


def test_run_on_a_file_that_is_no_array(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """numpy's reader raises EOFError on an empty file, which click turned into "aborted"
    (exit 130)."""
    import torch

    from ofa_search.nn import build_static
    from ofa_search.onnx_export import export_onnx, save_onnx

    net = build_static(Arch.parse(ARCH, SPACE), torch.Generator().manual_seed(0))
    model = save_onnx(export_onnx(net, net.input_shape()), tree / "m.onnx")
    (tree / "blank.npy").write_bytes(b"")
    code, err = run_main(capsys, "run", str(model), "--input", str(tree / "blank.npy"))
    one_line_error(code, err, f"cannot read {tree / 'blank.npy'} as a .npy array")
