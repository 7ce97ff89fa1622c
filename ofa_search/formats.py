"""The registry of artefact formats that :func:`ofa_search.export.export` writes, and its
three fp32 formats.

Formats (:func:`list_formats`; more register with :func:`register_format`)::

    onnx         fp32 ONNX (opset 17), batch 1   verified with ONNX Runtime (CPU)  atol 1e-4
    torchscript  torch.jit.trace'd module        verified with torch.jit.load      atol 1e-5
    state_dict   safetensors of the static net   reloaded into a fresh build_static atol 1e-6

The int8 formats (:mod:`ofa_search.quant.formats`) and the binary one
(:mod:`ofa_search.binary.formats`) register themselves when imported; they sit above this
module and :mod:`ofa_search.export` imports them, so every format is known wherever
``export`` is.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ofa_search.arch import Arch, parse_arch
from ofa_search.atomic import atomic_write_bytes, host_tag
from ofa_search.errors import InvalidArchError, OfaSearchError
from ofa_search.nn import StaticSubnet, build_static
from ofa_search.ort_options import exact_int8
from ofa_search.space import PRECISIONS


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
    ``tolerance_for(net)``: the tolerance for this network when it depends on the
    network (a binary package with int8 segments); else ``tolerance``.
    ``agreement(path, net, x)``: for a format whose ``verify`` does not compare the outputs
    end to end (binary packages go piece by piece), the end-to-end facts a card reports
    beside it, ``{"max_abs_diff", "top1_agreement"}``; they are not checked.
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
    tolerance_for: Callable[[StaticSubnet], float] | None = None
    agreement: Callable[[Path, StaticSubnet, torch.Tensor], dict[str, float]] | None = None

    def tolerance_of(self, net: StaticSubnet) -> float:
        """The verification tolerance for ``net``."""
        return self.tolerance if self.tolerance_for is None else self.tolerance_for(net)


_FORMATS: dict[str, ArtefactFormat] = {}


def register_format(fmt: ArtefactFormat, *, replace: bool = False) -> None:
    """Add ``fmt`` to the registry (``replace=True`` to override an existing name)."""
    if fmt.name in _FORMATS and not replace:
        raise ValueError(f"export format {fmt.name!r} is already registered")
    _FORMATS[fmt.name] = fmt


def unregister_format(name: str) -> None:
    """Remove format ``name`` from the registry (for plug-ins and tests)."""
    _FORMATS.pop(name, None)


ARTEFACT_STEM = "model"


def write_verified(fmt: ArtefactFormat, net: StaticSubnet, folder: Path, x: torch.Tensor, *,
                   batches: Sequence[np.ndarray] | None = None, what: str = "network",
                   label: str = "") -> tuple[Path, float]:
    """Write ``net`` as ``folder/model<suffix>`` in ``fmt`` (by ``calibrated_write`` on
    ``batches`` when the format has one), verify the written file on ``x``, then rename it
    into place; ``(path, largest difference)``. The file is written under an atomic
    write's temporary name (writer pid and host), so that one left by a killed run is
    recognised as stale and removed by the next write into the folder; a
    :class:`VerificationError` (``"<format> artefact<label> differs from the PyTorch
    <what> by …"``) leaves nothing behind."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{ARTEFACT_STEM}{fmt.suffix}"
    pending = folder / f".{final.name}.{os.getpid()}-{host_tag()}.unverified.tmp"
    try:
        if fmt.calibrated_write is not None and batches is not None:
            fmt.calibrated_write(net, pending, batches)
        else:
            fmt.write(net, pending)
        diff = fmt.verify(pending, net, x)
        tolerance = fmt.tolerance_of(net)
        if not diff <= tolerance:  # also catches NaN
            raise VerificationError(f"{fmt.name} artefact{label} differs from the PyTorch "
                                    f"{what} by {diff:.3g} > tolerance {tolerance:.3g}")
        os.replace(pending, final)
    finally:
        pending.unlink(missing_ok=True)
    return final, diff


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


def formats_holding(precisions: Sequence[str]) -> list[str]:
    """Names of the registered formats that can hold stages of every one of ``precisions``."""
    return sorted(f.name for f in _FORMATS.values() if set(precisions) <= set(f.precisions))


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
    # deferred: the ONNX exporter loads onnx; other formats do without
    from ofa_search.onnx_export import export_onnx, save_onnx

    save_onnx(export_onnx(net, net.input_shape(1)), path)


def _verify_onnx(path: Path, net: StaticSubnet, x: torch.Tensor) -> float:
    import onnxruntime as ort  # deferred: ONNX Runtime is a heavy import

    options = exact_int8(ort.SessionOptions())
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
    from safetensors.torch import save  # deferred: safetensors only for state_dict artefacts

    tensors = {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
    meta = {"arch": net.arch.to_string(), "space": net.arch.space, "format": "ofa-search"}
    atomic_write_bytes(path, save(tensors, metadata=meta))


def load_state_dict_artefact(path: str | os.PathLike[str]) -> StaticSubnet:
    """Rebuild the static subnet of a ``state_dict`` artefact (its arch is in the file's
    metadata), in eval mode."""
    # deferred: safetensors only for state_dict artefacts
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
