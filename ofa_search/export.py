"""Deployable artefacts of one subnet, verified, with a model card.

:func:`export` extracts a subnet from a trained supernet, recalibrates its batch norms on
training batches, measures its test accuracy, writes the artefact in one of the registered
formats and verifies it before it is reported as written: the file is read back by its
own runtime and its outputs on real test images are compared with the PyTorch subnet's
within the format's stated tolerance. A model card (:mod:`ofa_search.model_card`) goes
beside it, with the device's predicted and measured latency when a device is given.

Formats (:func:`list_formats`; more register with :func:`register_format`)::

    onnx         fp32 ONNX (opset 17), batch 1   verified with ONNX Runtime (CPU)  atol 1e-4
    torchscript  torch.jit.trace'd module        verified with torch.jit.load      atol 1e-5
    state_dict   safetensors of the static net   reloaded into a fresh build_static atol 1e-6

Layout of ``out_dir``: ``model.<suffix>``, ``model_card.json``, ``model_card.md``. The
artefact is written to a temporary name, verified from that file, then renamed; the card
is written last, so a folder with a card holds a complete, verified export.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import platform
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ofa_search.arch import Arch, parse_arch
from ofa_search.atomic import atomic_write_bytes
from ofa_search.data import DatasetSplits, iterate_batches, load_dataset
from ofa_search.errors import InvalidArchError, OfaSearchError, UnsupportedPrecisionError
from ofa_search.model_card import write_card
from ofa_search.nn import StaticSubnet, build_static
from ofa_search.space import PRECISIONS
from ofa_search.workspace import Workspace

ARTEFACT_STEM = "model"


class UnknownFormatError(OfaSearchError, ValueError):
    """An export format that is not registered."""


class VerificationError(OfaSearchError):
    """An artefact whose reloaded outputs differ from the PyTorch subnet's beyond tolerance."""


@dataclass(frozen=True)
class ArtefactFormat:
    """One way to write a static subnet, and to check the written file.

    ``write(net, path)`` writes ``net`` (in eval mode) to ``path`` atomically;
    ``verify(path, net, x)`` reloads ``path`` with ``runtime`` and returns the largest
    absolute difference between its outputs and ``net(x)`` on the real inputs ``x`` (or
    the format's documented measure of it, e.g. relative to the logit range for int8).
    Formats that need training images to write (int8 quantisation) set
    ``calibrated_write(net, path, batches)``: :func:`export` calls it instead of ``write``,
    with the un-augmented training batches of the BN recalibration (``[N, C, r, r]``
    float32 arrays). ``precisions``: the stage precisions an artefact can hold.
    """

    name: str
    suffix: str
    runtime: str
    tolerance: float
    description: str
    write: Callable[[StaticSubnet, Path], None]
    verify: Callable[[Path, StaticSubnet, torch.Tensor], float]
    calibrated_write: Callable[[StaticSubnet, Path, Sequence[np.ndarray]], None] | None = None
    precisions: tuple[str, ...] = ("fp32",)


_FORMATS: dict[str, ArtefactFormat] = {}


def register_format(fmt: ArtefactFormat, *, replace: bool = False) -> None:
    """Add ``fmt`` to the registry (``replace=True`` to override an existing name)."""
    if fmt.name in _FORMATS and not replace:
        raise ValueError(f"export format {fmt.name!r} is already registered")
    _FORMATS[fmt.name] = fmt


AUTO_FORMAT = "auto"


def default_format(arch: Arch) -> str:
    """The artefact format an arch exports to by default (``--format auto``): ``binary`` when
    it has binary stages, ``onnx_int8`` when it has int8 stages, else ``onnx``."""
    if "binary" in arch.precisions:
        return "binary"
    if "int8" in arch.precisions:
        return "onnx_int8"
    return "onnx"


def list_formats() -> list[str]:
    """Names of the registered export formats."""
    return sorted(_FORMATS)


def get_format(name: str) -> ArtefactFormat:
    """The registered format ``name``; :class:`UnknownFormatError` lists the known ones."""
    try:
        return _FORMATS[name]
    except KeyError:
        raise UnknownFormatError(f"unknown export format {name!r}; known formats: "
                                 f"{', '.join(list_formats())}") from None


def _reference(net: StaticSubnet, x: torch.Tensor) -> np.ndarray:
    net.eval()
    with torch.no_grad():
        return net(x).numpy()


# -- onnx ----------------------------------------------------------------------------------
def _write_onnx(net: StaticSubnet, path: Path) -> None:
    from ofa_search.onnx_export import export_onnx, save_onnx

    save_onnx(export_onnx(net, net.input_shape(1)), path)


def _verify_onnx(path: Path, net: StaticSubnet, x: torch.Tensor) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    got = np.concatenate([np.asarray(session.run(None, {name: x[i:i + 1].numpy()})[0])
                          for i in range(x.shape[0])])  # the graph's batch is fixed at 1
    return float(np.max(np.abs(got - _reference(net, x))))


# -- torchscript ---------------------------------------------------------------------------
def _write_torchscript(net: StaticSubnet, path: Path) -> None:
    net.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # TorchScript is deprecated, and still what runtimes load
        warnings.simplefilter("ignore", category=DeprecationWarning)
        traced = torch.jit.trace(net, torch.zeros(net.input_shape(1)), check_trace=False)
        torch.jit.save(traced, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _verify_torchscript(path: Path, net: StaticSubnet, x: torch.Tensor) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        loaded = torch.jit.load(str(path), map_location="cpu")
    loaded.eval()
    with torch.no_grad():
        got = loaded(x).numpy()
    return float(np.max(np.abs(got - _reference(net, x))))


# -- state_dict (safetensors) --------------------------------------------------------------
def _write_state_dict(net: StaticSubnet, path: Path) -> None:
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
    meta = {"arch": net.arch.to_string(), "space": net.arch.space, "format": "ofa-search"}
    atomic_write_bytes(path, save(tensors, metadata=meta))


def load_state_dict_artefact(path: str | os.PathLike[str]) -> StaticSubnet:
    """Rebuild the static subnet of a ``state_dict`` artefact (its arch is in the file's
    metadata), in eval mode."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    if "arch" not in meta or "space" not in meta:
        raise InvalidArchError(f"{path}: safetensors file has no ofa-search arch metadata")
    net = build_static(parse_arch(meta["arch"], meta["space"]))
    net.load_state_dict(load_file(str(path)), strict=True)
    return net.eval()


def _verify_state_dict(path: Path, net: StaticSubnet, x: torch.Tensor) -> float:
    loaded = load_state_dict_artefact(path)
    with torch.no_grad():
        got = loaded(x).numpy()
    return float(np.max(np.abs(got - _reference(net, x))))


register_format(ArtefactFormat("onnx", ".onnx", "onnxruntime", 1e-4,
                               "fp32 ONNX, opset 17, batch 1", _write_onnx, _verify_onnx))
register_format(ArtefactFormat("torchscript", ".pt", "torch.jit", 1e-5,
                               "TorchScript (traced)", _write_torchscript, _verify_torchscript,
                               precisions=PRECISIONS))
register_format(ArtefactFormat("state_dict", ".safetensors", "safetensors+torch", 1e-6,
                               "weights of the static subnet (safetensors)",
                               _write_state_dict, _verify_state_dict, precisions=PRECISIONS))


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
           seed: int = 0, echo: Callable[[str], None] | None = None) -> ExportResult:
    """Export subnet ``arch`` of the supernet in ``checkpoint`` as ``format`` to ``out_dir``.

    Args:
        arch: an :class:`Arch` or its string/JSON form, in the checkpoint's space.
        device: a device id; the card then holds its predicted latency (the workspace's
            latency predictor) and its measured one (through the device's backend; an
            imported table cannot be measured here and says so).
        workspace: where device tables and predictors are looked up.
        data: the dataset (default: the checkpoint's training dataset, from ``data_dir``
            or the directory it was trained from).
        calib_batches, seed: BN recalibration (see :func:`ofa_search.train.calibrated_subnet`).
        verify_samples: test images used to verify the written artefact.
        measure: measure the latency on ``device`` (else only predict it).
        echo: receives one line per stage (progress).

    Raises:
        UnknownFormatError, FileFormatError (checkpoint), InvalidArchError,
        UnknownDeviceError, LutMissError (the device's table cannot price the arch),
        VerificationError (the artefact's outputs differ beyond tolerance).
    """
    from ofa_search.train import calibrated_subnet, evaluate, load_supernet
    from ofa_search.units import count_macs, count_params

    say = echo or (lambda _line: None)
    if format != AUTO_FORMAT:
        get_format(format)  # an unknown name fails before any work
    if verify_samples < 1 or calib_batches < 1:
        raise ValueError(f"need verify_samples >= 1 and calib_batches >= 1, got "
                         f"{verify_samples=}, {calib_batches=}")
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    say(f"loading {checkpoint}")
    supernet, meta = load_supernet(checkpoint)
    parsed = arch if isinstance(arch, Arch) else parse_arch(arch, meta["space"])
    if parsed.space != meta["space"]:
        raise InvalidArchError(f"arch is of space {parsed.space!r}; the checkpoint's is "
                               f"{meta['space']!r}")
    supernet.check_arch(parsed)
    fmt = get_format(default_format(parsed) if format == AUTO_FORMAT else format)
    unfit = sorted(set(parsed.precisions) - set(fmt.precisions))
    if unfit:
        able = [f.name for f in _FORMATS.values() if set(parsed.precisions) <= set(f.precisions)]
        raise UnsupportedPrecisionError(
            f"format {fmt.name!r} cannot hold {', '.join(unfit)} stages (it holds "
            f"{', '.join(fmt.precisions)}); formats for this arch: {', '.join(able)}")
    latency = _predict_latency(ws, device, parsed) if device is not None else None
    if data is None:
        config = meta.get("config", {})
        folder_in = data_dir if data_dir is not None else config.get("data_dir")
        data = load_dataset(config.get("dataset", "digits"),
                            data_dir=None if folder_in is None else Path(folder_in),
                            in_channels=supernet.space.in_channels, resolution=parsed.resolution)
    say(f"recalibrating BN of {parsed.to_string()} on {calib_batches} batches")
    net = calibrated_subnet(supernet, parsed, data, calib_batches=calib_batches, seed=seed)
    say("measuring test accuracy")
    accuracy = evaluate(net, data.test, parsed.resolution)
    x, _ = next(iterate_batches(data.test, verify_samples, shuffle=False,
                                resolution=parsed.resolution))

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{ARTEFACT_STEM}{fmt.suffix}"
    pending = folder / f".{final.name}.unverified"
    say(f"writing {fmt.name} artefact and verifying it with {fmt.runtime}")
    try:
        if fmt.calibrated_write is not None:
            fmt.calibrated_write(net, pending, train_batches(data, parsed.resolution,
                                                             calib_batches, seed))
        else:
            fmt.write(net, pending)
        diff = fmt.verify(pending, net, x)
        if not diff <= fmt.tolerance:  # also catches NaN
            raise VerificationError(f"{fmt.name} artefact of {parsed.to_string()} differs from "
                                    f"the PyTorch subnet by {diff:.3g} > tolerance "
                                    f"{fmt.tolerance:.0e}")
        os.replace(pending, final)
    finally:
        pending.unlink(missing_ok=True)

    if latency is not None and measure:
        say(f"measuring latency on {device}")
        latency.update(_measure_latency(ws, latency["id"], parsed, final, fmt))
    elif latency is not None:
        latency.update(measured_latency_ms=None, not_measured_reason="not requested")

    from ofa_search.profiling.lut import now_iso

    card: dict[str, Any] = {
        "created": now_iso(),
        "arch": {"string": parsed.to_string(), "space": parsed.space,
                 "resolution": parsed.resolution, "width_mult": parsed.width_mult,
                 "dict": parsed.to_dict()},
        "macs_m": count_macs(parsed) / 1e6,
        "params_m": count_params(parsed) / 1e6,
        "input": {"shape": list(net.input_shape(1)), "dtype": "float32", "layout": "NCHW",
                  "mean": list(data.mean), "std": list(data.std), "value_range": [0.0, 1.0]},
        "supernet": {"checkpoint": str(checkpoint), "sha256": sha256_file(checkpoint),
                     "epoch": meta.get("epoch"),
                     "strategy": (meta.get("strategy") or {}).get("name")},
        "dataset": {"name": data.name, "split": "test", "samples": len(data.test),
                    "accuracy": accuracy, "calib_batches": calib_batches, "calib_seed": seed},
        "device": latency,
        "artefact": {"format": fmt.name, "file": final.name, "bytes": final.stat().st_size,
                     "sha256": sha256_file(final), "description": fmt.description},
        "verification": {"runtime": fmt.runtime, "max_abs_diff": diff,
                         "tolerance": fmt.tolerance, "samples": int(x.shape[0]),
                         "passed": True},
        "versions": tool_versions(),
    }
    card_json, card_md = write_card(folder, card)
    say(f"wrote {final} and {card_json.name}")
    return ExportResult(folder, final, card_json, card_md, card)


def train_batches(data: DatasetSplits, resolution: int, n: int, seed: int = 0
                  ) -> list[np.ndarray]:
    """The ``n`` train batches that :func:`~ofa_search.train.calibrated_subnet` recalibrates
    BN on (same generator seed and default batch size), as arrays."""
    gen = torch.Generator().manual_seed(seed)
    batches = iterate_batches(data.train, 128, shuffle=True, generator=gen,
                              resolution=resolution)
    return [x.numpy() for x, _ in itertools.islice(batches, n)]


def _predict_latency(ws: Workspace, device: str, arch: Arch) -> dict[str, Any]:
    from predictors.loading import load_latency_predictor

    predictor, kind = load_latency_predictor(ws, device)
    predicted = float(predictor.predict([arch])[0])
    return {"id": device, "predicted_latency_ms": predicted, "latency_predictor": kind}


def _measure_latency(ws: Workspace, device: str, arch: Arch, artefact: Path,
                     fmt: ArtefactFormat) -> dict[str, Any]:
    """Measured latency of ``arch`` on ``device``, or ``None`` with the reason why it cannot
    be measured from here. An ONNX artefact is timed itself through the device's backend,
    a binary package through its runtime on this host; other formats of an fp32 arch are
    timed as its fp32 ONNX export (what the latency table prices)."""
    import onnx

    from ofa_search.profiling.backends import get_backend
    from ofa_search.profiling.lut import find_table
    from ofa_search.profiling.measure import FAST_TIMING, measure_arch, time_binary_package

    profile = find_table(device, workspace=ws.root).profile()
    if profile is None:
        return {"measured_latency_ms": None, "not_measured_reason":
                "imported table: the device cannot be measured from this host"}
    low = set(arch.precisions) - {"fp32"}
    if fmt.name == "binary":
        if profile.backend != "onnxruntime":
            return {"measured_latency_ms": None, "not_measured_reason":
                    f"binary packages run on this host, not on {profile.backend!r}"}
        from ofa_search.binary.runtime import BinaryPackage

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
            if own:
                from ofa_search.onnx_export import INPUT_NAME

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
            "not_measured_reason": None}


# formats defined elsewhere register themselves on import (they import this module)
import ofa_search.binary.formats  # noqa: E402
import ofa_search.quant.formats  # noqa: E402, F401
