"""``ofa-search prune`` and ``ofa-search exits``: one-line errors before any work, and a
small run of each that writes its verified artefact and card (the library's behaviour is
tested in test_compress_prune.py and test_compress_exits.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from supernet_helpers import save_untrained_checkpoint

from ofa_search.arch import Arch
from ofa_search.cli import main

SPACE = "mbv3_small28"
ARCH = Arch.sample(SPACE, np.random.default_rng(3)).replace(resolution=16).to_string()

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ws")
    save_untrained_checkpoint(SPACE, root / "supernet" / "checkpoint.pt")
    return root


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exited:
        code = int(exited.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(("args", "message"), [
    (["prune", "--ratio", "1.5"], "ratio must be in [0, 1)"),
    (["prune", "--ratio", "0.5", "--method", "random"], "method"),
    (["exits", "--after-stages", "3"], "cannot put an exit after stage 3"),
    (["exits", "--after-stages", "one"], "--after-stages must be comma-separated integers"),
    (["exits", "--thresholds", "0,2"], "threshold"),
    (["exits", "--thresholds", "high"], "--thresholds must be comma-separated numbers"),
])
def test_bad_input_is_one_line_and_writes_nothing(workspace: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  args: list[str], message: str) -> None:
    out = tmp_path / "out"
    code, _, err = run([*args, "--workspace", str(workspace), "--arch", ARCH, "--out",
                        str(out)], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_no_checkpoint_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["prune", "--workspace", str(tmp_path), "--arch", ARCH, "--out",
                        str(tmp_path / "out"), "--ratio", "0.5"], capsys)
    assert code == 2 and "no supernet checkpoint" in err, err


def test_prune_and_exits_write_verified_artefacts(workspace: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--workspace", str(workspace), "--arch", ARCH, "--calib-batches", "2",
              "--batch-size", "16", "--rounds", "1", "--quiet", "--json"]
    code, out, err = run(["prune", *common, "--out", str(tmp_path / "pruned"), "--ratio",
                          "0.5", "--no-measure"], capsys)
    assert code == 0, err
    pruned = json.loads(out)
    assert pruned["finished"] and pruned["ratio"] == 0.5 and pruned["method"] == "channel"
    assert Path(pruned["artefact"]).is_file() and Path(pruned["card_json"]).is_file()
    assert "## Compression" in Path(pruned["card_markdown"]).read_text()
    code, out, err = run(["exits", *common, "--out", str(tmp_path / "exits"), "--steps", "2",
                          "--thresholds", "0.9", "--stop-after-steps", "1"], capsys)
    assert code == 0, err
    assert json.loads(out)["finished"] is False  # stopped; the state is kept
    code, out, err = run(["exits", *common, "--out", str(tmp_path / "exits"), "--steps", "2",
                          "--thresholds", "0.9", "--resume"], capsys)
    assert code == 0, err
    done = json.loads(out)
    assert done["finished"] and done["after_stages"] == [0, 1, 2]
    assert Path(done["artefact"]).is_file() and len(done["segments"]) == 4
