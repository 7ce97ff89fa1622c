"""CLI of training: train a tiny supernet, evaluate a subnet, refuse bad checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import cli

from ofa_search.arch import Arch


@pytest.mark.slow
def test_train_then_eval(tmp_path: Path) -> None:
    out_dir = tmp_path / "run"
    out = cli("train", "--space", "mbv3_small28", "--data", "digits", "--strategy", "spos",
              "--epochs", "1", "--batch-size", "128", "--threads", "1", "--out", str(out_dir),
              "--quiet")
    assert out.returncode == 0, out.stderr
    checkpoint = out_dir / "checkpoint.pt"
    assert checkpoint.exists() and (out_dir / "metrics.jsonl").exists()
    arch = Arch.smallest("mbv3_small28")
    res = cli("eval", "--checkpoint", str(checkpoint), "--arch", arch.to_string(), "--json")
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)
    assert result["arch"] == arch.to_string() and result["epoch"] == 1
    assert 0.0 <= result["accuracy"] <= 1.0 and result["split"] == "test"
    again = cli("train", "--space", "mbv3_small28", "--epochs", "1", "--out", str(out_dir),
                "--quiet")
    assert again.returncode == 2 and "--resume" in again.stderr


def test_eval_rejects_a_foreign_file(tmp_path: Path) -> None:
    bogus = tmp_path / "checkpoint.pt"
    bogus.write_bytes(b"not a checkpoint")
    out = cli("eval", "--checkpoint", str(bogus), "--arch", "x")
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and str(bogus) in out.stderr
