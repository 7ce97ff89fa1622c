"""Reading state dicts that users bring (once-for-all's checkpoints and predictors).

Every file is read with ``torch.load(weights_only=True)``: a pickle that holds code or
objects beyond tensors is refused, never run.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from ofa_search.errors import FileFormatError


def read_state_dict(path: str | os.PathLike[str], what: str) -> dict[str, torch.Tensor]:
    """The tensors of ``path``: a state dict, or a dict holding one under ``"state_dict"``.

    ``what`` names the expected content in errors (e.g. ``"a once-for-all checkpoint"``).

    Raises:
        FileFormatError: a missing file; bytes that are no torch file (truncated, text,
            another format); a pickle that refers to code (refused by ``weights_only``);
            a structure that is not a non-empty ``{name: tensor}`` dict.
    """
    source = Path(path)
    if not source.is_file():
        raise FileFormatError(f"{source}: no such file")
    try:
        data = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc):  # the unpickler met a reference to code or a class
            raise FileFormatError(f"{source}: refused by torch.load(weights_only=True): it "
                                  f"refers to code or objects beyond tensors, so it is not "
                                  f"{what}") from exc
        raise FileFormatError(f"{source}: not a readable torch file (truncated or foreign "
                              f"bytes), so not {what}") from exc
    except Exception as exc:  # truncated zip archives and foreign bytes raise many types
        raise FileFormatError(f"{source}: not a readable torch file (truncated or foreign "
                              f"bytes; {type(exc).__name__}), so not {what}") from exc
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if (not isinstance(data, Mapping) or not data
            or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                       for k, v in data.items())):
        raise FileFormatError(f"{source}: not {what} (expected a state dict of tensors, or "
                              f"a dict with one under 'state_dict')")
    return dict(data)
