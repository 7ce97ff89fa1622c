"""Supernet checkpoints: versioned, written atomically, read with ``weights_only=True``.

A checkpoint is a ``torch.save``-d dict of tensors and plain types only::

    format           "ofa-search-supernet"
    format_version   CHECKPOINT_VERSION
    space, width_mult
    strategy         {"name", "epoch", "rng" (numpy bit-generator state as JSON), ...}
    epoch            completed epochs;  step: completed optimizer steps
    epoch_step       steps done in the current epoch (0 at an epoch end; optional, 0)
    finished         whether training ran to its end
    model            supernet state dict;  teacher: frozen teacher state dict or None
    ema              weight EMA (``AveragedModel`` state dict: ``module.*``, ``n_averaged``)
                     or None (optional)
    optimizer        optimizer state dict;  scheduler: {"step": int}
    scaler           fp16 gradient-scaler state or None (optional)
    rng              {"data": uint8 tensor, "dropout": uint8 tensor, "dropout_cuda": uint8
                     tensor or None} (torch generator states; "data" is the state at the
                     start of the current epoch when ``epoch_step`` > 0)
    config           the TrainConfig as plain data;  dataset: DatasetSplits.describe()
"""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path
from typing import Any

import torch

from ofa_search.arch import Arch, parse_arch
from ofa_search.atomic import atomic_write_bytes
from ofa_search.errors import FileFormatError, InvalidArchError
from ofa_search.nn import Supernet
from ofa_search.space import SearchSpace, get_space
from ofa_search.versioning import require_version

CHECKPOINT_FORMAT = "ofa-search-supernet"
CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("space", "width_mult", "strategy", "epoch", "step", "model", "optimizer",
                 "scheduler", "rng", "config")


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` (format and version are added) atomically to ``path``."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **state},
               buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a checkpoint written by :func:`save_checkpoint`.

    Raises:
        FileFormatError: missing, truncated or foreign file, another format version, or
            missing fields — the message names the file and the problem.
    """
    target = Path(path)
    if not target.is_file():
        raise FileFormatError(f"checkpoint {target} does not exist")
    try:
        data = torch.load(target, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler raises many types on foreign bytes
        raise FileFormatError(
            f"{target} is not a readable ofa-search checkpoint (truncated or foreign file; "
            f"{type(exc).__name__})"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise FileFormatError(f"{target} is not an ofa-search supernet checkpoint "
                              f"(no format={CHECKPOINT_FORMAT!r} field)")
    require_version(data, key="format_version", expected=CHECKPOINT_VERSION,
                    what="supernet checkpoint", source=str(target))
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise FileFormatError(f"{target} lacks checkpoint field(s) {missing}")
    return data


def served_weights(data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Which weights a loaded checkpoint serves, and their supernet state dict: the weight
    EMA (``"ema"``) when the run kept one, else the trained weights (``"model"``)."""
    if data.get("ema") is None:
        return "model", data["model"]
    return "ema", {k.removeprefix("module."): v for k, v in data["ema"].items()
                   if k.startswith("module.")}


def load_supernet(checkpoint: str | os.PathLike[str]) -> tuple[Supernet, dict[str, Any]]:
    """The trained supernet of ``checkpoint`` (in eval mode) and its metadata (everything
    but model, EMA, teacher and optimizer state; ``weights`` says which were loaded).

    A run with a weight EMA (``ema_decay``) serves the EMA weights, as BigNAS evaluates.
    """
    data = load_checkpoint(checkpoint)
    with torch.random.fork_rng(devices=[]):  # module construction draws global numbers
        net = Supernet(data["space"], data["width_mult"], generator=torch.Generator())
    if (data.get("config") or {}).get("binary_weights", "shared") == "own":
        try:
            net.set_binary_weights(True)
        except ValueError as exc:
            raise FileFormatError(f"{checkpoint}: {exc}") from None
    weights, state = served_weights(data)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise FileFormatError(f"{checkpoint}: model weights do not fit space "
                              f"{data['space']!r}: {exc}") from exc
    meta = {k: v for k, v in data.items()
            if k not in ("model", "ema", "teacher", "optimizer", "scaler")}
    meta["weights"] = weights
    ablation = (meta.get("config") or {}).get("binary_ablation") or ()
    try:
        net.set_binary_ablation(ablation)
    except ValueError as exc:
        raise FileFormatError(f"{checkpoint}: {exc}") from None
    return net.eval(), meta


def load_supernet_arch(checkpoint: str | os.PathLike[str], arch: str | Arch
                       ) -> tuple[Supernet, dict[str, Any], Arch]:
    """:func:`load_supernet`, and ``arch`` parsed in the checkpoint's space and checked
    against the supernet (an :class:`InvalidArchError` for an arch of another space or
    outside its choices)."""
    supernet, meta = load_supernet(checkpoint)
    parsed = arch if isinstance(arch, Arch) else parse_arch(arch, meta["space"])
    if parsed.space != meta["space"]:
        raise InvalidArchError(f"arch is of space {parsed.space!r}; the checkpoint's is "
                               f"{meta['space']!r}")
    supernet.check_arch(parsed)
    return supernet, meta, parsed


LOW_PRECISION_ONLY = (".quant.", ".binary_", "head_quant.")
"""Substrings of the state-dict keys of layers that only int8 / binary stages use."""


def _structure(space: SearchSpace) -> SearchSpace:
    """``space`` without what weights do not depend on: name, precisions, the int8 head."""
    return dataclasses.replace(space, name="x", description="", precisions=("fp32",),
                               head_int8=False)


def load_init_weights(net: Supernet, checkpoint: str | os.PathLike[str]) -> None:
    """Load the served weights of ``checkpoint`` (:func:`served_weights`) into ``net`` to
    start a new run from them.

    The checkpoint's space may differ from ``net``'s in name, precisions and the int8 head
    only (e.g. an fp32 ``mbv3_small28`` supernet into ``mbv3_small28_mp`` or
    ``mbv3_small28_mp_int8head``); keys that only low-precision
    layers have may be missing and keep their fresh values, except the binary convs' own
    latent weights (:meth:`Supernet.set_binary_weights`), which start as copies of the
    loaded fp32 ones. Anything else that does not fit is a :class:`FileFormatError`
    naming the keys.
    """
    data = load_checkpoint(checkpoint)
    source = get_space(data["space"])
    if (_structure(source) != _structure(net.space)
            or float(data["width_mult"]) != net.width_mult):
        raise FileFormatError(f"{checkpoint}: a supernet of {source.name}/w{data['width_mult']}"
                              f" does not fit {net.space.name}/w{net.width_mult} (only the "
                              "precisions and the int8 head may differ)")
    result = net.load_state_dict(served_weights(data)[1], strict=False)
    missing = [k for k in result.missing_keys if not any(s in k for s in LOW_PRECISION_ONLY)]
    if missing or result.unexpected_keys:
        raise FileFormatError(f"{checkpoint}: weights do not fit {net.space.name}: missing "
                              f"{missing[:5]}, unexpected {result.unexpected_keys[:5]}")
    if any(".binary_expand_conv." in k for k in result.missing_keys):
        net.copy_binary_weights()  # own binary weights start from the fp32 ones
