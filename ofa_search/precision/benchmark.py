"""The precision benchmark's model table: one arch at fp32, int8 (QAT and PTQ) and binary.

For each base arch, four deployable artefacts from trained supernets:

- ``fp32``: the fp32 subnet of the mixed-precision supernet, as fp32 ONNX;
- ``int8-qat``: every stage int8, learned scales (:func:`ofa_search.quant.qdq.export_int8`);
- ``int8-ptq``: every stage int8 with the weights of the fp32 supernet *before* low-
  precision fine-tuning, quantised after training by ONNX Runtime
  (:func:`ofa_search.quant.ptq.export_int8_ptq`);
- ``binary``: every stage binary, as a bit-packed package (:mod:`ofa_search.binary`).

Each row: PyTorch test accuracy (BN and activation ranges recalibrated), the artefact's own
accuracy on the first ``n_eval`` test images run by its runtime, its size on disk and its
measured latency (batch 1, ``threads``), with the speed-up over the fp32 artefact.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ofa_search.arch import Arch
from ofa_search.binary.package import write_binary_package
from ofa_search.binary.runtime import BinaryPackage
from ofa_search.data import DatasetSplits, iterate_batches
from ofa_search.export import train_batches
from ofa_search.nn import StaticSubnet, Supernet
from ofa_search.onnx_export import export_onnx
from ofa_search.ort_options import exact_int8
from ofa_search.profiling.timing import TimingConfig, callable_sampler, time_sampler
from ofa_search.quant.ptq import export_int8_ptq
from ofa_search.quant.qdq import export_int8
from ofa_search.train.bn_calibration import calibrated_subnet, evaluate
from ofa_search.train.checkpoint import load_init_weights, load_supernet

VARIANTS = ("fp32", "int8-qat", "int8-ptq", "binary")
TIMING = TimingConfig(warmup=5, min_runs=20, max_runs=2000, time_cap_s=3.0)


def _ort_runner(model_bytes: bytes, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort  # deferred: ONNX Runtime is a heavy import

    options = exact_int8(ort.SessionOptions())
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(session.run(None, {name: x[i:i + 1]})[0])
                               for i in range(x.shape[0])])

    return run


def _artefact(variant: str, net: StaticSubnet, calib: list[np.ndarray], folder: Path,
              threads: int) -> tuple[Path, Callable[[np.ndarray], np.ndarray]]:
    """Write ``net`` as ``variant``'s artefact under ``folder``; its path and a runner."""
    if variant == "binary":
        path = write_binary_package(net, folder / "model.ofab")
        package = BinaryPackage.load(path, threads=threads)
        return path, package.run
    if variant == "fp32":
        model = export_onnx(net, net.input_shape(1))
    elif variant == "int8-qat":
        model = export_int8(net, calib)
    else:
        model = export_int8_ptq(net, calib)
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path, _ort_runner(path.read_bytes(), threads)


def _bind(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> Callable[[], object]:
    return lambda: run(x)


def model_rows(checkpoint: str | os.PathLike[str], fp32_checkpoint: str | os.PathLike[str],
               archs: Sequence[Arch], data: DatasetSplits, *, n_eval: int = 2000,
               threads: int = 1, log: Callable[[str], None] | None = None
               ) -> list[dict[str, Any]]:
    """One row per (arch, variant); see the module docstring. ``checkpoint``: the
    mixed-precision supernet; ``fp32_checkpoint``: the fp32 supernet it was fine-tuned
    from (the PTQ baseline's weights)."""
    supernet, _ = load_supernet(checkpoint)
    before = Supernet(supernet.space, supernet.width_mult)
    load_init_weights(before, fp32_checkpoint)
    before.eval()
    n = supernet.space.num_stages
    rows: list[dict[str, Any]] = []
    for arch in archs:
        x_eval, y_eval = next(iterate_batches(data.test, n_eval, shuffle=False,
                                              resolution=arch.resolution))
        x_np, y_np = x_eval.numpy(), y_eval.numpy()
        calib = train_batches(data, arch.resolution, 8)
        fp32_ms: float | None = None
        for variant in VARIANTS:
            precision = {"fp32": "fp32", "int8-qat": "int8", "int8-ptq": "int8",
                         "binary": "binary"}[variant]
            source = before if variant == "int8-ptq" else supernet
            variant_arch = arch.replace(precisions=(precision,) * n)
            net = calibrated_subnet(source, variant_arch, data).eval()
            torch_acc = evaluate(net, data.test, arch.resolution)
            with tempfile.TemporaryDirectory() as tmp:
                path, run = _artefact(variant, net, calib, Path(tmp), threads)
                size = path.stat().st_size
                logits = np.concatenate([run(x_np[i:i + 250]) for i in range(0, len(x_np), 250)])
                acc = float((logits.argmax(1) == y_np).mean())
                stats = time_sampler(callable_sampler(_bind(run, x_np[:1])), TIMING)
            if variant == "fp32":
                fp32_ms = stats.median_ms
            row = {"arch": arch.to_string(), "variant": variant,
                   "torch_test_accuracy": torch_acc, "artefact_accuracy": acc,
                   "artefact_samples": len(y_np), "size_bytes": size,
                   "latency_ms": stats.median_ms, "latency_iqr_ms": stats.iqr_ms,
                   "speedup_vs_fp32": (fp32_ms / stats.median_ms) if fp32_ms else None}
            rows.append(row)
            if log is not None:
                log(f"{arch.to_string()} {variant}: torch {100 * torch_acc:.2f} %, artefact "
                    f"{100 * acc:.2f} % on {len(y_np)}, {size / 1024:.0f} KiB, "
                    f"{stats.median_ms:.3f} ms")
    return rows
