"""Load a script of ``scripts/`` as a module, to test its functions in process, or run it in
a child process with this repository importable (:func:`script_env`)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` imported as module ``name`` (not added to ``sys.modules``);
    ``scripts/`` goes on ``sys.path``, as for a script run, for its shared ``_*.py``."""
    if str(SCRIPTS) not in sys.path:
        sys.path.append(str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def script_env() -> dict[str, str]:
    """This process's environment with the repository first on ``PYTHONPATH``, for running
    a script in a child process without installing the package."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(SCRIPTS.parent), os.environ.get("PYTHONPATH", "")])}
