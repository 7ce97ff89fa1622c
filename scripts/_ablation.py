"""Shared by the ablation benchmarks (``bench_bignas.py``, ``bench_binary_training.py``):
named training variants run in a process pool, each result kept as
``OUT_DIR/<variant>.json`` so that an interrupted benchmark resumes."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

RunOne = Callable[[str, Any, str], dict[str, Any]]


def kept_result(out_dir: str | Path, name: str) -> dict[str, Any] | None:
    """The kept result of variant ``name``, or ``None`` when it has not finished."""
    path = Path(out_dir) / f"{name}.json"
    if not path.exists():
        return None
    result: dict[str, Any] = json.loads(path.read_text())
    return result


def run_variants(run_one: RunOne, runs: Mapping[str, Any], out_dir: str | Path, jobs: int,
                 tag: str) -> dict[str, dict[str, Any]]:
    """``run_one(name, config, out_dir)`` for every variant, ``jobs`` at a time; results
    by name, in the order of ``runs``."""
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {name: pool.submit(run_one, name, config, str(out_dir))
                   for name, config in runs.items()}
        results = {}
        for name, future in futures.items():
            results[name] = future.result()
            print(f"[{tag}] {name} done", file=sys.stderr, flush=True)
    return results
