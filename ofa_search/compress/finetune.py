"""Fine-tuning of compressed networks: a step-budgeted SGD loop that resumes exactly.

Each step's batch is drawn from a generator seeded by ``(seed, step)`` (indices without
replacement within the batch, augmentation included), and dropout draws from PyTorch's
default generator re-seeded the same way, so a step depends only on the weights and
optimizer state before it: a run resumed from a checkpoint continues as the uninterrupted
run would (same machine and thread count). The learning rate follows a cosine from
``lr`` to 0 over each fine-tuning segment.

State files (:func:`save_state` / :func:`load_state`) are ``torch.save``-d dicts of
tensors and plain types, written atomically and read back with ``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ofa_search.atomic import atomic_write_bytes
from ofa_search.compress.errors import CompressError
from ofa_search.data import ImageSplit, derive_seed
from ofa_search.errors import FileFormatError
from ofa_search.train.bn_calibration import channels_last
from ofa_search.train.loop import check_optimizer_options, param_groups, soft_cross_entropy
from ofa_search.versioning import require_version

STATE_FORMAT = "ofa-search-compress-state"
STATE_VERSION = 1
STATE_NAME = "state.pt"

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss(x, y)`` of one batch (the trainer calls ``backward`` on it)."""


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """Options of a fine-tuning segment; validated on construction.

    ``kd_ratio`` weights distillation from a teacher's soft labels (the unpruned subnet
    for pruning); ``grad_clip`` is the max global L2 norm of gradients (None: no clip).
    """

    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 3e-5
    label_smoothing: float = 0.1
    kd_ratio: float = 1.0
    augment: bool = True
    grad_clip: float | None = 5.0

    def __post_init__(self) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise CompressError(message)

        check(not isinstance(self.batch_size, bool) and isinstance(self.batch_size, int)
              and self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size!r}")
        check_optimizer_options(check, lr=self.lr, momentum=self.momentum,
                                weight_decay=self.weight_decay,
                                label_smoothing=self.label_smoothing, kd_ratio=self.kd_ratio,
                                grad_clip=self.grad_clip)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def step_batch(split: ImageSplit, batch_size: int, resolution: int, seed: int, step: int,
               augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch of fine-tuning step ``step``: a function of ``(seed, step)`` only."""
    gen = torch.Generator().manual_seed(derive_seed(seed, step))
    idx = torch.randperm(len(split), generator=gen)[:batch_size]
    return split.batch(idx, augment=augment, generator=gen if augment else None,
                       resolution=resolution)


def cosine(step: int, total: int, lr: float) -> float:
    """Learning rate of step ``step`` of ``total``: ``lr`` decayed to 0 by a half cosine."""
    return 0.5 * lr * (1.0 + math.cos(math.pi * step / max(1, total)))


def distillation_loss(student: nn.Module, teacher: nn.Module | None,
                      config: FinetuneConfig) -> LossFn:
    """Cross-entropy on labels (smoothed) plus ``kd_ratio`` × cross-entropy against the
    teacher's (eval mode) softmax, on the same batch."""
    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = student(x)
        out = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
        if teacher is not None and config.kd_ratio > 0:
            with torch.no_grad():
                target = F.softmax(teacher(x), dim=1)
            out = out + config.kd_ratio * soft_cross_entropy(logits, target)
        return out

    return loss


class Trainer:
    """SGD (Nesterov) over ``params`` of ``module`` with ``loss``, one segment of ``total``
    steps; ``after_step`` runs after each optimizer step (e.g. to re-apply pruning masks).

    ``module`` is put in training mode for each step (the caller keeps frozen parts in
    eval mode inside ``loss``); weight decay skips 1-D parameters (BN, biases).
    """

    def __init__(self, module: nn.Module, loss: LossFn, split: ImageSplit, resolution: int,
                 config: FinetuneConfig, *, seed: int, total: int,
                 after_step: Callable[[], None] | None = None,
                 params: Iterable[nn.Parameter] | None = None) -> None:
        self.module, self.loss, self.split = module, loss, split
        self.resolution, self.config, self.seed, self.total = resolution, config, seed, total
        self.after_step = after_step
        groups: list[dict[str, Any]] = (
            param_groups(module, config.weight_decay) if params is None
                  else [{"params": list(params), "weight_decay": config.weight_decay}])
        self.optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                                         nesterov=config.momentum > 0)
        self._params = [p for group in groups for p in group["params"]]

    def run(self, start: int, stop: int, *, bar: Any = None,
            checkpoint: Callable[[int], None] | None = None, every: int = 0) -> float:
        """Steps ``start … stop-1`` of the segment; ``checkpoint(step)`` after every
        ``every``-th step and after the last. Returns the mean loss of these steps."""
        losses: list[float] = []
        with torch.random.fork_rng(devices=[]), channels_last(self.module):
            for step in range(start, stop):
                for group in self.optimizer.param_groups:
                    group["lr"] = cosine(step, self.total, self.config.lr)
                x, y = step_batch(self.split, self.config.batch_size, self.resolution,
                                  self.seed, step, self.config.augment)
                torch.manual_seed(derive_seed(self.seed, step, 1))  # dropout, inside fork_rng
                self.module.train()
                self.optimizer.zero_grad(set_to_none=True)
                loss = self.loss(x.contiguous(memory_format=torch.channels_last), y)
                loss.backward()
                if self.config.grad_clip is not None:
                    nn.utils.clip_grad_norm_(self._params, self.config.grad_clip)
                self.optimizer.step()
                if self.after_step is not None:
                    self.after_step()
                losses.append(float(loss.detach()))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[-1]:.3f}")
                done = step + 1
                if checkpoint is not None and (done == stop or (every and done % every == 0)):
                    checkpoint(done)
        return float(np.mean(losses)) if losses else float("nan")


def progress_bar(total: int, desc: str, quiet: bool) -> Any:
    """A tqdm bar on stderr counting steps, or ``None`` when ``quiet``."""
    if quiet or total <= 0:
        return None
    return tqdm(total=total, desc=desc, unit="step", leave=True, dynamic_ncols=True)


def save_state(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` (format and version are added) atomically to ``path``."""
    buffer = io.BytesIO()
    torch.save({"format": STATE_FORMAT, "format_version": STATE_VERSION, **state}, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_state(path: str | os.PathLike[str], kind: str) -> dict[str, Any]:
    """Read a state written by :func:`save_state` for a run of ``kind`` (``prune``,
    ``exits``); a foreign, truncated or other-kind file is a :class:`FileFormatError`."""
    target = Path(path)
    try:
        data = torch.load(target, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler raises many types on foreign bytes
        raise FileFormatError(f"{target} is not a readable compression state (truncated or "
                              f"foreign file; {type(exc).__name__})") from exc
    if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
        raise FileFormatError(f"{target} is not an ofa-search compression state")
    require_version(data, key="format_version", expected=STATE_VERSION,
                    what="compression state", source=str(target))
    if data.get("kind") != kind:
        raise FileFormatError(f"{target} is the state of a {data.get('kind')!r} run, "
                              f"not {kind!r}")
    return data


def check_resume(out_dir: Path, resume: bool) -> Path | None:
    """The state file to resume from, or ``None`` for a fresh run; refuses (before any
    work) a fresh run over an existing state and ``resume`` without one."""
    path = out_dir / STATE_NAME
    if path.is_file() and not resume:
        raise CompressError(f"{path} exists; resume it (--resume) or choose another output "
                            "folder")
    if resume and not path.is_file():
        raise CompressError(f"cannot resume: {out_dir} has no {STATE_NAME}; start a new run "
                            "there without --resume")
    return path if resume else None
