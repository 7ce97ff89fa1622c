"""The main job on the embedded default: what a new user runs first.

Today: train a small supernet on scikit-learn's digits (sandwich rule), evaluate a few of
its subnets with BN recalibration, price them with this machine's shipped latency table
and measure them with ONNX Runtime, then export one to ONNX and check ONNX Runtime against
PyTorch. Later issues extend it with profiling, predictors, search and queries.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ofa_search.arch import Arch
from ofa_search.atomic import atomic_write_json
from ofa_search.data import load_dataset
from ofa_search.onnx_export import export_onnx, max_abs_diff_vs_torch, save_onnx
from ofa_search.profiling import TimingConfig
from ofa_search.profiling.backends import get_backend
from ofa_search.profiling.builder import measure_arch
from ofa_search.profiling.lut import find_table
from ofa_search.train import TrainConfig, calibrated_subnet, evaluate, load_supernet, train
from ofa_search.units import count_macs

DEMO_DEVICE = "cpu-ort-1t"


def run_demo(workspace: Path, *, space: str = "mbv3_small28", seed: int = 0,
             epochs: int = 8, echo: Callable[[str], None] = print) -> dict[str, object]:
    """Run the demo into ``workspace``; returns a summary (also written as JSON there).

    Training is resumable: running the demo again on the same workspace continues (or
    reuses) ``workspace/supernet/checkpoint.pt``.
    """
    start = time.perf_counter()
    workspace.mkdir(parents=True, exist_ok=True)
    run_dir = workspace / "supernet"
    checkpoint = run_dir / "checkpoint.pt"
    echo(f"[1/3] training a supernet of {space!r} on digits (sandwich rule, {epochs} epochs)")
    config = TrainConfig(space=space, dataset="digits", strategy="sandwich", epochs=epochs,
                         batch_size=64, lr=0.1, warmup_epochs=1, seed=seed,
                         out_dir=str(run_dir), resume=checkpoint.exists())
    train(config)
    supernet, meta = load_supernet(checkpoint)
    data = load_dataset("digits", seed=seed, in_channels=supernet.space.in_channels)

    rng = np.random.default_rng(seed)
    archs = [Arch.largest(space), Arch.smallest(space)]
    archs += [Arch.sample(space, rng) for _ in range(3)]
    table = find_table(DEMO_DEVICE, workspace=workspace)
    profile = table.profile()
    assert profile is not None
    timing = TimingConfig(warmup=5, min_runs=20, max_runs=400, time_cap_s=1.0)
    echo(f"[2/3] evaluating {len(archs)} subnets (BN recalibrated) and timing them on "
         f"{DEMO_DEVICE}")
    rows = []
    with get_backend(profile, timing=timing) as backend:
        for arch in archs:
            net = calibrated_subnet(supernet, arch, data, seed=seed)
            accuracy = evaluate(net, data.split("test"), arch.resolution, 128)
            rows.append({
                "arch": arch.to_string(), "macs_m": count_macs(arch) / 1e6,
                "test_accuracy": accuracy, "predicted_ms": table.predict(arch),
                "measured_ms": measure_arch(backend, arch).median_ms,
            })
    echo(f"      {'test acc':>8} {'MACs(M)':>8} {'pred ms':>8} {'meas ms':>8}  arch")
    for row in rows:
        echo(f"      {row['test_accuracy']:8.3f} {row['macs_m']:8.2f} {row['predicted_ms']:8.3f} "
             f"{row['measured_ms']:8.3f}  {row['arch']}")

    arch = archs[2]
    static = calibrated_subnet(supernet, arch, data, seed=seed).eval()
    x = torch.randn(1, supernet.space.in_channels, arch.resolution, arch.resolution,
                    generator=torch.Generator().manual_seed(seed))
    model = export_onnx(static, static.input_shape())
    path = save_onnx(model, workspace / "exports" / "demo_subnet.onnx")
    ort_gap = max_abs_diff_vs_torch(model, static, x)
    echo(f"[3/3] exported {path} ({path.stat().st_size / 1e3:.0f} kB); ONNX Runtime vs "
         f"PyTorch: {ort_gap:.1e} max-abs")
    summary: dict[str, object] = {
        "space": space, "seed": seed, "checkpoint": str(checkpoint), "epoch": meta["epoch"],
        "device": DEMO_DEVICE, "subnets": rows,
        "exported": {"arch": arch.to_string(), "path": str(path), "onnxruntime_gap": ort_gap},
        "seconds": round(time.perf_counter() - start, 2),
    }
    atomic_write_json(workspace / "demo_summary.json", summary)
    echo(f"done in {summary['seconds']} s; summary in {workspace / 'demo_summary.json'}")
    return summary
