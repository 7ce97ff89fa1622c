"""The distribution: a wheel built from this tree, installed into a fresh virtual environment,
finds its shipped device tables and predictors (package data); a missing optional extra is
one line naming it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from ofa_search.extras import EXTRAS, MissingExtraError, require

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {"cpu-ort-1t", "cpu-ort-2t", "cpu-ort-1t-ofa", "note10-tflite"}


def test_wheel_in_a_fresh_venv_lists_the_shipped_devices(tmp_path: Path) -> None:
    # built from a copy: setuptools leaves build/ and *.egg-info in the source folder
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".*", "build", "*.egg-info", "ofa-workspace", "tests", "docs", "results", "scripts",
        "site", "__pycache__"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "--wheel-dir", str(wheels), str(source)],
                   check=True, capture_output=True, timeout=600)
    wheel = next(wheels.glob("ofa_search-*.whl"))
    env = tmp_path / "venv"
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; "
                                "print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-index", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    # the dependencies come from this venv; its own (editable) ofa_search does not: .pth
    # files of a folder added this way are not processed
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    ws = tmp_path / "ws"
    ws.mkdir()
    code = ("import json, ofa_search, predictors; "
            "from ofa_search.cli import main; "
            "print(json.dumps([ofa_search.__file__, predictors.__file__])); "
            f"main(['devices', '--workspace', {str(ws)!r}, '--json'])")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only the wheel's
    out = subprocess.run([str(python), "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr
    first, rest = out.stdout.split("\n", 1)
    assert all(Path(f).is_relative_to(site) for f in json.loads(first))  # the wheel's
    devices = {d["device_id"] for d in json.loads(rest)}
    assert devices >= SHIPPED, devices
    # the learned predictor shipped beside the tables is found too
    code = ("from predictors.loading import REPO_PREDICTOR_DIR; "
            "print(sorted(p.name for p in REPO_PREDICTOR_DIR.glob('*-latency-ridge.json')))")
    out = subprocess.run([str(python), "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600, env=env)
    assert "cpu-ort-1t-latency-ridge.json" in out.stdout, out.stderr


def test_missing_extra_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now fails
    with pytest.raises(MissingExtraError, match=r"the demo's plot needs the 'plot' extra: "
                       r"pip install 'ofa-search\[plot\]' \(cannot import matplotlib"):
        require("matplotlib", "plot", "the demo's plot")
    with pytest.raises(ValueError, match="not part of extra"):
        require("numpy", "plot", "x")
    assert set(EXTRAS) == {"tvm", "serve", "plot", "xgboost", "gpu"}


def test_serve_without_its_extra_is_one_line(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['fastapi'] = None; "
            "from ofa_search.cli import main; "
            f"main(['serve', '--workspace', {str(tmp_path)!r}, '--port', '0'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "error: ofa-search serve needs the 'serve' extra: pip install 'ofa-search[serve]' "
        "(cannot import fastapi: import of fastapi halted; None in sys.modules)"]
