"""Deployable artefacts of one subnet, verified, with a model card.

:func:`export` extracts a subnet from a trained supernet, recalibrates its batch norms on
training batches, measures its test accuracy, writes the artefact in one of the registered
formats and verifies it before it is reported as written: the file is read back by its
own runtime and its outputs on real test images are compared with the PyTorch subnet's
within the format's stated tolerance. A model card (:mod:`ofa_search.model_card`) goes
beside it, with the device's predicted and measured latency when a device is given.

Formats: :mod:`ofa_search.formats` (``onnx``, ``torchscript``, ``state_dict``), int8
(``onnx_int8``, ``onnx_int8_ptq``) and ``binary``; more register with
:func:`~ofa_search.formats.register_format`.

Layout of ``out_dir``: ``model.<suffix>``, ``model_card.json``, ``model_card.md``. The
artefact is written to a temporary name, verified from that file, then renamed; the card
is written last, so a folder with a card holds a complete, verified export.

Supernets of a streamed dataset (``imagenet``: once-for-all's imported supernets) are
recalibrated on a random subset of the training images of an ImageNet-layout folder
(``data_dir``) and evaluated on a random subset of its validation images, read from disk
as they go (:func:`ofa_search.data.open_image_stream`); their card says how many images
each step used and which preprocessing the model expects.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

import ofa_search.binary.formats  # registers the binary format
import ofa_search.quant.formats  # noqa: F401 (registers the int8 formats)
from ofa_search.arch import Arch
from ofa_search.atomic import (
    check_writable_dir,
    remove_stale_temps,
)
from ofa_search.binary.runtime import BinaryPackage
from ofa_search.data import (
    DEFAULT_EVAL_IMAGES,
    OFA_CALIB_IMAGES,
    STREAM_BATCH_SIZE,
    DatasetSplits,
    is_streamed_dataset,
    iterate_batches,
    load_dataset,
    open_image_stream,
    resize_size,
    stream_loader,
)
from ofa_search.errors import AccuracyLossError, OfaSearchError, UnsupportedPrecisionError
from ofa_search.formats import (  # noqa: F401 (part of this module's interface)
    ARTEFACT_STEM,
    AUTO_FORMAT,
    ArtefactFormat,
    UnknownFormatError,
    VerificationError,
    default_format,
    formats_holding,
    get_format,
    list_formats,
    load_state_dict_artefact,
    register_format,
    write_verified,
)
from ofa_search.model_card import write_card
from ofa_search.nn import StaticSubnet, Supernet
from ofa_search.onnx_export import INPUT_NAME
from ofa_search.profiling.backends import get_backend
from ofa_search.profiling.lut import find_table, now_iso
from ofa_search.profiling.measure import FAST_TIMING, measure_arch, time_binary_package
from ofa_search.units import count_macs, count_params
from ofa_search.workspace import Workspace, check_device_id, check_workspace
from predictors.loading import load_latency_predictor

STREAM_QUANT_IMAGES = 256
"""Training images handed to an int8 format's ``calibrated_write`` when the data is
streamed (the first ones of the BN recalibration set; full-size images do not all fit in
memory)."""


# -- the export ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ExportResult:
    """Where an export went and its model card."""

    out_dir: Path
    artefact: Path
    card_json: Path
    card_markdown: Path
    card: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (paths and the card)."""
        return {"out_dir": str(self.out_dir), "artefact": str(self.artefact),
                "card_json": str(self.card_json), "card_markdown": str(self.card_markdown),
                "card": self.card}


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tool_versions() -> dict[str, str]:
    """Versions of the packages that shaped an artefact."""
    out = {"python": platform.python_version()}
    for package in ("torch", "onnx", "onnxruntime", "safetensors", "ofa-search"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def export(checkpoint: str | os.PathLike[str], arch: str | Arch, format: str,
           out_dir: str | os.PathLike[str], *, device: str | None = None,
           workspace: Workspace | str | os.PathLike[str] | None = None,
           data: DatasetSplits | None = None, data_dir: str | os.PathLike[str] | None = None,
           calib_batches: int = 16, verify_samples: int = 16, measure: bool = True,
           seed: int = 0, echo: Callable[[str], None] | None = None,
           calib_images: int = OFA_CALIB_IMAGES, max_eval_images: int = DEFAULT_EVAL_IMAGES,
           num_workers: int | None = None, progress: bool = False,
           max_int8_loss: float | None = None) -> ExportResult:
    """Export subnet ``arch`` of the supernet in ``checkpoint`` as ``format`` to ``out_dir``.

    Args:
        arch: an :class:`Arch` or its string/JSON form, in the checkpoint's space.
        device: a device id; the card then holds its predicted latency (the workspace's
            latency predictor) and its measured one (through the device's backend; an
            imported table cannot be measured here and says so).
        workspace: where device tables and predictors are looked up.
        data: the dataset (default: the checkpoint's training dataset, from ``data_dir``
            or the directory it was trained from). A streamed dataset (``imagenet``) is
            read from ``data_dir``, which it requires.
        calib_batches, seed: BN recalibration (see :func:`ofa_search.train.calibrated_subnet`).
        verify_samples: test images used to verify the written artefact.
        measure: measure the latency on ``device`` (else only predict it).
        echo: receives one line per stage (progress).
        calib_images, max_eval_images, num_workers, progress: streamed datasets only: BN
            recalibration on at most ``calib_images`` random training images, accuracy on
            at most ``max_eval_images`` random validation images (both chosen by ``seed``),
            decoded by ``num_workers`` processes, with tqdm bars when ``progress``.
        max_int8_loss: an arch with int8 stages is also scored with every stage fp32 (its
            fp32 twin, in-memory datasets), and the card holds the loss in test-accuracy
            points; above ``max_int8_loss`` points nothing is written (``None``: report
            only). With weights trained in fp32 only, that is the cost of post-training
            quantisation.

    Raises:
        UnknownFormatError, FileFormatError (checkpoint), InvalidArchError,
        UnknownDeviceError, LutMissError (the device's table cannot price the arch),
        DatasetError (no or a malformed ``data_dir`` for a streamed dataset),
        VerificationError (the artefact's outputs differ beyond tolerance),
        AccuracyLossError (int8 stages lose more than ``max_int8_loss`` points).
    """
    # deferred: keeps `import ofa_search.export` free of the trainer (tqdm)
    from ofa_search.train.checkpoint import load_supernet_arch

    say = echo or (lambda _line: None)
    if format != AUTO_FORMAT:
        get_format(format)  # an unknown name fails before any work
    if max_int8_loss is not None and not (math.isfinite(max_int8_loss)
                                          and max_int8_loss >= 0):
        raise ValueError(f"max_int8_loss must be a finite number of points >= 0, got "
                         f"{max_int8_loss!r}")
    if min(verify_samples, calib_batches, calib_images, max_eval_images) < 1:
        raise ValueError(f"need verify_samples, calib_batches, calib_images and "
                         f"max_eval_images >= 1, got {verify_samples=}, {calib_batches=}, "
                         f"{calib_images=}, {max_eval_images=}")
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    # the outputs are checked before any work (extraction and verification take a while)
    check_workspace(ws.root, must_exist=False)
    if device is not None:
        check_device_id(device)
    folder = check_writable_dir(out_dir, "export folder")
    remove_stale_temps(folder)  # what an export killed mid-write left there
    say(f"loading {checkpoint}")
    supernet, meta, parsed = load_supernet_arch(checkpoint, arch)
    fmt = get_format(default_format(parsed) if format == AUTO_FORMAT else format)
    unfit = sorted(set(parsed.precisions) - set(fmt.precisions))
    if unfit:
        able = formats_holding(parsed.precisions)
        raise UnsupportedPrecisionError(
            f"format {fmt.name!r} cannot hold {', '.join(unfit)} stages (it holds "
            f"{', '.join(fmt.precisions)}); formats for this arch: {', '.join(able)}")
    latency = _predict_latency(ws, device, parsed) if device is not None else None
    config = meta.get("config") or {}
    dataset_name = config.get("dataset", "digits")
    folder_in = data_dir if data_dir is not None else config.get("data_dir")
    folder_path = None if folder_in is None else Path(folder_in)
    if data is None and is_streamed_dataset(dataset_name):
        calibrated = _calibrate_on_stream(
            supernet, parsed, dataset_name, folder_path, calib_images=calib_images,
            max_eval_images=max_eval_images, verify_samples=verify_samples, seed=seed,
            num_workers=num_workers, progress=progress, say=say)
    else:
        if data is None:
            data = load_dataset(dataset_name, data_dir=folder_path,
                                in_channels=supernet.space.in_channels,
                                resolution=parsed.resolution)
        calibrated = _calibrate_in_memory(supernet, parsed, data, calib_batches=calib_batches,
                                          verify_samples=verify_samples, seed=seed, say=say)
    net, x = calibrated.net, calibrated.verify_x
    loss = calibrated.dataset.get("int8_accuracy_loss_points")
    if max_int8_loss is not None and loss is not None and loss > max_int8_loss:
        raise AccuracyLossError(
            f"the int8 stages of {parsed.to_string()} lose {loss:.2f} points of test "
            f"accuracy to its fp32 twin ({100 * calibrated.dataset['accuracy']:.2f} % vs "
            f"{100 * calibrated.dataset['fp32_twin_accuracy']:.2f} %), more than the "
            f"{max_int8_loss:g} allowed; no artefact was written: train int8 (--strategy "
            "precision) or allow more")

    say(f"writing {fmt.name} artefact and verifying it with {fmt.runtime}")
    final, diff = write_verified(
        fmt, net, folder, x, what="subnet", label=f" of {parsed.to_string()}",
        batches=calibrated.quant_batches() if fmt.calibrated_write is not None else None)

    verification: dict[str, Any] = {
        "runtime": fmt.runtime, "max_abs_diff": diff, "tolerance": fmt.tolerance_of(net),
        "samples": int(x.shape[0]), "passed": True}
    if fmt.agreement is not None:
        verification["end_to_end"] = fmt.agreement(final, net, x)

    if latency is not None and measure:
        say(f"measuring latency on {device}")
        latency.update(_measure_latency(ws, latency["id"], parsed, final, fmt))
        drift = latency.get("drift") or {}
        if drift.get("drifted"):
            say(str(drift["summary"]))
    elif latency is not None:
        latency.update(measured_latency_ms=None, not_measured_reason="not requested")

    card: dict[str, Any] = {
        "created": now_iso(),
        "arch": {"string": parsed.to_string(), "space": parsed.space,
                 "resolution": parsed.resolution, "width_mult": parsed.width_mult,
                 "dict": parsed.to_dict()},
        "macs_m": count_macs(parsed) / 1e6,
        "params_m": count_params(parsed) / 1e6,
        "input": {"shape": list(net.input_shape(1)), "dtype": "float32", "layout": "NCHW",
                  "mean": list(calibrated.mean), "std": list(calibrated.std),
                  "value_range": [0.0, 1.0], **calibrated.preprocessing},
        "supernet": {"checkpoint": card_path(checkpoint, ws), "sha256": sha256_file(checkpoint),
                     "epoch": meta.get("epoch"),
                     "strategy": (meta.get("strategy") or {}).get("name")},
        "dataset": {k: card_path(v, ws) if k == "data_dir" else v
                    for k, v in calibrated.dataset.items()},
        "device": latency,
        "artefact": {"format": fmt.name, "file": final.name, "bytes": final.stat().st_size,
                     "sha256": sha256_file(final), "description": fmt.description},
        "verification": verification,
        "versions": tool_versions(),
    }
    card_json, card_md = write_card(folder, card)
    say(f"wrote {final} and {card_json.name}")
    return ExportResult(folder, final, card_json, card_md, card)


def card_path(path: str | os.PathLike[str], workspace: Workspace) -> str:
    """How a card names a file it refers to: relative to the workspace when inside it,
    else by its name only (a card is served over HTTP: no absolute path of the host goes
    in it; the checkpoint's sha256 identifies it)."""
    target = Path(path).resolve()
    try:
        return target.relative_to(workspace.root.resolve()).as_posix()
    except ValueError:
        return target.name


@dataclass(frozen=True)
class _Calibrated:
    """A BN-recalibrated subnet on the CPU, and what its card says about the data.

    ``verify_x``: real inputs the artefact is verified on; ``dataset``: the card's dataset
    section (accuracy and sample counts); ``preprocessing``: extra fields of its input
    section; ``quant_batches()``: the training batches an int8 format calibrates on.
    """

    net: StaticSubnet
    verify_x: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dataset: dict[str, Any]
    preprocessing: dict[str, Any]
    quant_batches: Callable[[], Sequence[np.ndarray]]


def _calibrate_in_memory(supernet: Supernet, arch: Arch, data: DatasetSplits, *,
                         calib_batches: int, verify_samples: int, seed: int,
                         say: Callable[[str], None]) -> _Calibrated:
    """BN recalibration on ``calib_batches`` train batches, accuracy on the whole test split."""
    # deferred: keeps `import ofa_search.export` free of the trainer (tqdm)
    from ofa_search.train import calibrated_subnet, evaluate

    say(f"recalibrating BN of {arch.to_string()} on {calib_batches} batches")
    net = calibrated_subnet(supernet, arch, data, calib_batches=calib_batches, seed=seed)
    say("measuring test accuracy")
    accuracy = evaluate(net, data.test, arch.resolution)
    scored: dict[str, Any] = {"accuracy": accuracy}
    if "int8" in arch.precisions:
        twin = arch.replace(precisions=("fp32",) * len(arch.precisions))
        say("measuring the test accuracy of its fp32 twin (the int8 stages' loss)")
        twin_net = calibrated_subnet(supernet, twin, data, calib_batches=calib_batches,
                                     seed=seed)
        twin_accuracy = evaluate(twin_net, data.test, arch.resolution)
        scored.update(fp32_twin_accuracy=twin_accuracy,
                      int8_accuracy_loss_points=100 * (twin_accuracy - accuracy))
    x, _ = next(iterate_batches(data.test, verify_samples, shuffle=False,
                                resolution=arch.resolution))
    return _Calibrated(
        net=net, verify_x=x, mean=data.mean, std=data.std,
        dataset={"name": data.name, "split": "test", "samples": len(data.test),
                 **scored, "calib_batches": calib_batches, "calib_seed": seed},
        preprocessing={},
        quant_batches=lambda: train_batches(data, arch.resolution, calib_batches, seed))


def _calibrate_on_stream(supernet: Supernet, arch: Arch, name: str, data_dir: Path | None, *,
                         calib_images: int, max_eval_images: int, verify_samples: int,
                         seed: int, num_workers: int | None, progress: bool,
                         say: Callable[[str], None]) -> _Calibrated:
    """BN recalibration on at most ``calib_images`` random train images of the folder
    ``data_dir`` and accuracy on at most ``max_eval_images`` random val images, streamed
    (on CUDA when available); the artefact is verified on the first val images of the
    accuracy subset."""
    # deferred: keeps `import ofa_search.export` free of the trainer (tqdm)
    from ofa_search.train import calibrated_subnet_stream, evaluate_stream

    streams = open_image_stream(data_dir, arch.resolution, name=name)
    n_calib = min(calib_images, len(streams.train))
    n_eval = min(max_eval_images, len(streams.val))
    compute = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    say(f"recalibrating BN of {arch.to_string()} on {n_calib} train images of "
        f"{streams.train.folder} ({compute.type})")
    net = calibrated_subnet_stream(supernet, arch, streams, calib_images=calib_images,
                                   seed=seed, num_workers=num_workers, device=compute,
                                   progress=progress)
    say(f"measuring accuracy on {n_eval} of the {len(streams.val)} images of "
        f"{streams.val.folder}")
    accuracy = evaluate_stream(net, streams, resolution=arch.resolution,
                               max_images=max_eval_images, seed=seed,
                               num_workers=num_workers, progress=progress)
    net.cpu()
    x, _ = next(iter(stream_loader(streams.val, batch_size=verify_samples,
                                   max_images=verify_samples, seed=seed, num_workers=0,
                                   pin_memory=False)))

    def quant_batches() -> list[np.ndarray]:
        loader = stream_loader(streams.train, batch_size=STREAM_BATCH_SIZE,
                               max_images=min(calib_images, STREAM_QUANT_IMAGES), seed=seed,
                               num_workers=num_workers, pin_memory=False)
        return [batch.numpy() for batch, _ in loader]

    return _Calibrated(
        net=net, verify_x=x, mean=streams.mean, std=streams.std,
        dataset={"name": name, "split": "val", "samples": n_eval,
                 "available_samples": len(streams.val), "accuracy": accuracy,
                 "calib_images": n_calib, "calib_batches": math.ceil(n_calib / STREAM_BATCH_SIZE),
                 "calib_split": "train", "calib_seed": seed, "streamed": True,
                 "data_dir": str(streams.root), "layout": streams.layout},
        preprocessing={"resize_shorter_side": resize_size(arch.resolution),
                       "centre_crop": arch.resolution, "interpolation": "bilinear",
                       "color": "RGB"},
        quant_batches=quant_batches)


def train_batches(data: DatasetSplits, resolution: int, n: int, seed: int = 0
                  ) -> list[np.ndarray]:
    """The ``n`` train batches that :func:`~ofa_search.train.calibrated_subnet` recalibrates
    BN on (same generator seed and default batch size), as arrays."""
    gen = torch.Generator().manual_seed(seed)
    batches = iterate_batches(data.train, 128, shuffle=True, generator=gen,
                              resolution=resolution)
    return [x.numpy() for x, _ in itertools.islice(batches, n)]


def _predict_latency(ws: Workspace, device: str, arch: Arch) -> dict[str, Any]:
    predictor, kind = load_latency_predictor(ws, device)
    predicted = float(predictor.predict([arch])[0])
    return {"id": device, "predicted_latency_ms": predicted, "latency_predictor": kind}


def _measure_latency(ws: Workspace, device: str, arch: Arch, artefact: Path,
                     fmt: ArtefactFormat) -> dict[str, Any]:
    """Measured latency of ``arch`` on ``device``, or ``None`` with the reason why it cannot
    be measured from here. An ONNX artefact is timed itself through the device's backend,
    a binary package through its runtime on this host; other formats of an fp32 arch are
    timed as its fp32 ONNX export (what the latency table prices)."""
    table = find_table(device, workspace=ws.root)
    profile = table.profile()
    if profile is None:
        return {"measured_latency_ms": None, "not_measured_reason":
                "imported table: the device cannot be measured from this host"}
    low = set(arch.precisions) - {"fp32"}
    if fmt.name == "binary":
        if profile.backend != "onnxruntime":
            return {"measured_latency_ms": None, "not_measured_reason":
                    f"binary packages run on this host, not on {profile.backend!r}"}

        stats = time_binary_package(
            BinaryPackage.load(artefact, threads=profile.intra_op_threads), profile.batch_size)
        return {"measured_latency_ms": stats.median_ms, "measured_iqr_ms": stats.iqr_ms,
                "measured_runs": stats.count, "batch_size": profile.batch_size,
                "not_measured_reason": None}
    own = fmt.suffix == ".onnx" and profile.batch_size == 1  # ONNX artefacts are batch 1
    if low and not own:
        return {"measured_latency_ms": None, "not_measured_reason":
                f"{', '.join(sorted(low))} stages are timed as their batch-1 deployable "
                f"artefact (format {default_format(arch)!r}), not as {fmt.name!r} at batch "
                f"{profile.batch_size}"}
    try:
        with get_backend(profile, timing=FAST_TIMING) as backend:
            drift = _drift(table, backend)
            if own:
                model = onnx.load(str(artefact))
                shape = (profile.batch_size, arch.search_space.in_channels, arch.resolution,
                         arch.resolution)
                x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
                stats = backend.measure(model, {INPUT_NAME: x})
            else:
                stats = measure_arch(backend, arch, profile.batch_size, profile)
    except (OfaSearchError, OSError) as exc:
        return {"measured_latency_ms": None,
                "not_measured_reason": f"backend {profile.backend!r} unavailable: {exc}"}
    return {"measured_latency_ms": stats.median_ms, "measured_iqr_ms": stats.iqr_ms,
            "measured_runs": stats.count, "batch_size": profile.batch_size,
            "not_measured_reason": None, "drift": drift}


def _drift(table: Any, backend: Any) -> dict[str, Any]:
    """The device's drift check on the open backend (its reference subnets re-timed), so
    that a measured latency comes with this host's speed against the table."""
    # deferred: the drift check loads the table builder (tqdm)
    from ofa_search.profiling.drift import NotMeasurableError, check_drift

    try:
        report = check_drift(table, backend=backend)
    except NotMeasurableError as exc:
        return {"ratio": None, "reason": str(exc)}
    return {"ratio": report.ratio, "low": report.low, "high": report.high,
            "drifted": report.drifted, "summary": report.summary()}


