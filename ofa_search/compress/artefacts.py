"""Verified artefacts and model cards of compressed networks.

A compressed network is written through the export formats of :mod:`ofa_search.export`
(ONNX by default), to a temporary name, verified from that file against the PyTorch
network on real test images within the format's tolerance, then renamed; the model card
(:mod:`ofa_search.model_card`) is written last, with a ``compression`` section that says
what was done, and its Markdown rendering gets that section appended.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ofa_search import formats
from ofa_search.atomic import atomic_write_bytes, host_tag
from ofa_search.compress.errors import CompressError
from ofa_search.export import (
    card_path,
    get_format,
    sha256_file,
    tool_versions,
)
from ofa_search.model_card import (
    write_card,
)
from ofa_search.nn import StaticSubnet
from ofa_search.profiling.lut import now_iso
from ofa_search.workspace import Workspace

PRUNED_FORMATS: tuple[str, ...] = ("onnx", "torchscript")
"""Formats a pruned network can be written in (``state_dict`` artefacts are rebuilt from
their arch string alone, which does not hold pruned widths)."""


def check_format(name: str) -> str:
    """``name`` if a pruned network can be written in it (:class:`CompressError` else)."""
    if name not in PRUNED_FORMATS:
        raise CompressError(f"compressed networks are written as {' or '.join(PRUNED_FORMATS)}"
                            f", not {name!r}")
    return name


def pending_path(final: Path) -> Path:
    """Temporary name of an artefact until it is verified (an atomic write's temporary
    name, so one left by a killed run is removed by the next write into the folder)."""
    return final.parent / f".{final.name}.{os.getpid()}-{host_tag()}.unverified.tmp"


def write_verified(net: StaticSubnet, folder: Path, fmt_name: str, x: torch.Tensor
                   ) -> tuple[Path, float]:
    """Write ``net`` as ``folder/model<suffix>`` in format ``fmt_name``, verified on
    ``x`` (:func:`ofa_search.formats.write_verified`); the path and the largest
    difference found."""
    return formats.write_verified(get_format(check_format(fmt_name)), net, folder, x,
                                  what="network")


def gzip_size(data: bytes) -> int:
    """Bytes of ``data`` gzip-compressed at level 9 (no timestamp)."""
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def write_gzip(path: Path) -> Path:
    """``path`` gzip-compressed (level 9) beside it as ``<name>.gz``, written atomically."""
    return atomic_write_bytes(path.with_name(path.name + ".gz"),
                              gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))


def base_card(*, checkpoint: Path, meta: Mapping[str, Any], arch: Any, macs: int, params: int,
              input_shape: tuple[int, ...], mean: tuple[float, ...], std: tuple[float, ...],
              dataset: dict[str, Any], device: dict[str, Any] | None, artefact: Path,
              fmt: dict[str, Any], verification: dict[str, Any], compression: dict[str, Any],
              workspace: str | os.PathLike[str] | None) -> dict[str, Any]:
    """A model card (the fields of :mod:`ofa_search.model_card`) for a compressed network;
    ``arch`` is the subnet it was compressed from, ``compression`` what was done."""
    ws = Workspace(workspace)
    return {
        "created": now_iso(),
        "arch": {"string": arch.to_string(), "space": arch.space,
                 "resolution": arch.resolution, "width_mult": arch.width_mult,
                 "dict": arch.to_dict()},
        "macs_m": macs / 1e6,
        "params_m": params / 1e6,
        "input": {"shape": list(input_shape), "dtype": "float32", "layout": "NCHW",
                  "mean": list(mean), "std": list(std), "value_range": [0.0, 1.0]},
        "supernet": {"checkpoint": card_path(checkpoint, ws), "sha256": sha256_file(checkpoint),
                     "epoch": meta.get("epoch"),
                     "strategy": (meta.get("strategy") or {}).get("name")},
        "dataset": dataset,
        "device": device,
        "artefact": {**fmt, "file": artefact.name, "bytes": artefact.stat().st_size,
                     "sha256": sha256_file(artefact)},
        "verification": verification,
        "compression": compression,
        "versions": tool_versions(),
    }


def write_compressed_card(folder: Path, card: dict[str, Any]) -> tuple[Path, Path]:
    """Write the card with :func:`~ofa_search.model_card.write_card` (its Markdown renders
    the ``compression`` section's ``summary`` lines)."""
    return write_card(folder, card)


def params_of(net: torch.nn.Module, *, nonzero: bool = False) -> int:
    """Trainable parameters of ``net`` (only the non-zero ones with ``nonzero``)."""
    if nonzero:
        return int(sum(int((p != 0).sum()) for p in net.parameters()))
    return int(sum(p.numel() for p in net.parameters()))
