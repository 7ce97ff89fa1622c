"""The main job on the embedded default: what a new user runs first.

Today: build a supernet of the small space, sample archs, extract one exactly, export it
to ONNX, check ONNX Runtime against PyTorch, and say what was done. Later issues extend it
with training, profiling, predictors, search and queries.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ofa_search.arch import Arch
from ofa_search.atomic import atomic_write_json
from ofa_search.nn import Supernet, extract
from ofa_search.onnx_export import export_onnx, max_abs_diff_vs_torch, save_onnx
from ofa_search.units import count_macs, count_params


def run_demo(workspace: Path, *, space: str = "mbv3_small28", seed: int = 0,
             echo: Callable[[str], None] = print) -> dict[str, object]:
    """Run the demo into ``workspace``; returns a summary (also written as JSON there)."""
    start = time.perf_counter()
    workspace.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    supernet = Supernet(space, generator=generator).eval()
    n_params = sum(p.numel() for p in supernet.parameters())
    echo(f"[1/4] built supernet of space {space!r}: {n_params / 1e6:.2f} M parameters, "
         f"{supernet.space.size():.3e} subnets")
    archs = [Arch.sample(space, rng) for _ in range(5)]
    echo(f"[2/4] sampled 5 archs (seed {seed}):")
    for arch in archs:
        echo(f"      {arch}  {count_macs(arch) / 1e6:6.2f} M MACs  "
             f"{count_params(arch) / 1e6:.3f} M params")
    arch = archs[0]
    static = extract(supernet, arch).eval()
    x = torch.randn(4, supernet.space.in_channels, arch.resolution, arch.resolution,
                    generator=generator)
    with torch.no_grad():
        gap = float((static(x) - supernet(x, arch)).abs().max())
    echo(f"[3/4] extracted {arch}: static net == supernet to {gap:.1e} max-abs")
    model = export_onnx(static, static.input_shape())
    path = save_onnx(model, workspace / "exports" / "demo_subnet.onnx")
    ort_gap = max_abs_diff_vs_torch(model, static, x[:1])
    echo(f"[4/4] exported {path} ({path.stat().st_size / 1e3:.0f} kB); ONNX Runtime vs "
         f"PyTorch: {ort_gap:.1e} max-abs")
    summary: dict[str, object] = {
        "space": space, "seed": seed, "archs": [a.to_string() for a in archs],
        "exported": {"arch": arch.to_string(), "path": str(path), "extract_gap": gap,
                     "onnxruntime_gap": ort_gap},
        "seconds": round(time.perf_counter() - start, 2),
    }
    atomic_write_json(workspace / "demo_summary.json", summary)
    echo(f"done in {summary['seconds']} s; summary in {workspace / 'demo_summary.json'}")
    return summary
