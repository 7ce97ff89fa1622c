"""The accuracy dataset: (arch, val accuracy) pairs of one trained supernet, cached on disk.

:func:`build_accuracy_dataset` samples archs (:func:`dataset_archs`: round-robin over
resolutions; uniform draws mixed with draws biased towards small or large
depth/expand/kernel so that MACs cover the range), evaluates each subnet after BN
recalibration on the held-out ``val`` split, and appends one JSON line per arch to
``Workspace.accuracy_dataset_for(checkpoint)`` (beside the checkpoint)::

    {"format": "ofa-search-accuracy-dataset", "format_version": 1, "space": ...,
     "checkpoint": {"sha256", "size", "epoch"}, "eval": {...}}          header
    {"arch": "r28_w1.0_...", "accuracy": 0.91, "macs": 1234567, "resolution": 28}
    ...

The arch sequence is a pure function of the seed, so a larger ``n_archs`` evaluates only
the archs still missing. A torn last line (a crash mid-write) is dropped with a warning;
a file made from another checkpoint or with other evaluation settings is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ofa_search.arch import Arch
from ofa_search.atomic import atomic_write_text
from ofa_search.errors import FileFormatError, OfaSearchError
from ofa_search.space import SearchSpace, get_space
from ofa_search.units import count_macs
from ofa_search.workspace import Workspace

DATASET_FORMAT = "ofa-search-accuracy-dataset"
DATASET_VERSION = 1
SIZE_MODES = ("uniform", "small", "uniform", "large")
"""Cycle of size biases of :func:`dataset_archs` (half uniform, a quarter each extreme)."""
_BIAS = {"small": (0.6, 0.3, 0.1), "large": (0.1, 0.3, 0.6)}


@dataclass(frozen=True)
class AccuracyRecord:
    """One evaluated subnet: compact arch string, top-1 accuracy (fraction), MACs."""

    arch: str
    accuracy: float
    macs: int
    resolution: int

    def to_json(self) -> str:
        return json.dumps({"arch": self.arch, "accuracy": self.accuracy, "macs": self.macs,
                           "resolution": self.resolution})


@dataclass(frozen=True)
class AccuracyDataset:
    """The records of one cache file (file order) and its header."""

    path: Path
    header: dict[str, Any]
    records: tuple[AccuracyRecord, ...]
    n_evaluated: int = 0
    """Archs evaluated by the call that returned this (0 when only read)."""
    torn: bool = False
    """Whether the file ended in a torn line (dropped from ``records``)."""

    @property
    def space(self) -> str:
        return str(self.header["space"])

    def archs(self) -> list[Arch]:
        return [Arch.parse(r.arch, self.space) for r in self.records]

    def accuracies(self) -> np.ndarray:
        return np.array([r.accuracy for r in self.records], dtype=float)

    def __len__(self) -> int:
        return len(self.records)


@dataclass(frozen=True, kw_only=True)
class EvalSettings:
    """How each subnet is scored; recorded in the header (a cache never mixes settings).

    ``max_eval_images`` caps the ``val`` images (a fixed, seeded subset; ``None``: all);
    ``calib_batches`` × ``batch_size`` training images recalibrate BN, drawn with ``seed``.
    """

    split: str = "val"
    max_eval_images: int | None = None
    calib_batches: int = 16
    batch_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_eval_images is not None and self.max_eval_images < 1:
            raise ValueError(f"max_eval_images must be >= 1 or None, got "
                             f"{self.max_eval_images=}")
        if self.calib_batches < 1 or self.batch_size < 1:
            raise ValueError(f"calib_batches and batch_size must be >= 1, got "
                             f"{self.calib_batches=}, {self.batch_size=}")

    def to_dict(self) -> dict[str, Any]:
        return {"split": self.split, "max_eval_images": self.max_eval_images,
                "calib_batches": self.calib_batches, "batch_size": self.batch_size,
                "seed": self.seed}


# -- arch sampling -------------------------------------------------------------------------
def _biased_arch(spec: SearchSpace, gen: np.random.Generator, mode: str, resolution: int,
                 width_mult: float) -> Arch:
    if mode == "uniform":
        return Arch.sample(spec, gen, width_mult=width_mult, resolution=resolution)
    probs = _BIAS[mode]

    def pick(choices: Sequence[int]) -> int:
        p = np.interp(np.linspace(0, 2, len(choices)), [0, 1, 2], probs)
        return int(choices[int(gen.choice(len(choices), p=p / p.sum()))])

    depths = tuple(pick(spec.depths) for _ in range(spec.num_stages))
    return Arch(space=spec.name, resolution=resolution, width_mult=width_mult, depths=depths,
                kernels=tuple(tuple(pick(spec.kernel_sizes) for _ in range(d)) for d in depths),
                expands=tuple(tuple(pick(spec.expand_ratios) for _ in range(d))
                              for d in depths))


def dataset_archs(space: str | SearchSpace, n: int, seed: int = 0,
                  width_mult: float | None = None) -> list[Arch]:
    """``n`` distinct archs, stratified: arch ``i`` has resolution ``i mod R`` of the space's
    ``R`` resolutions and size bias ``SIZE_MODES[i mod 4]``. Prefix-stable: the first ``m``
    of ``dataset_archs(..., n)`` are ``dataset_archs(..., m)``."""
    spec = get_space(space)
    width = spec.width_mults[-1] if width_mult is None else width_mult
    gen = np.random.default_rng(seed)
    out: list[Arch] = []
    seen: set[Arch] = set()
    for i in range(n):
        res = spec.resolutions[i % len(spec.resolutions)]
        mode = SIZE_MODES[i % len(SIZE_MODES)]
        for _ in range(1000):
            arch = _biased_arch(spec, gen, mode, res, width)
            if arch not in seen:
                break
        else:
            raise OfaSearchError(f"could not draw {n} distinct archs from space {spec.name!r}")
        seen.add(arch)
        out.append(arch)
    return out


# -- the cache file ------------------------------------------------------------------------
def checkpoint_identity(checkpoint: str | os.PathLike[str], epoch: int | None = None
                        ) -> dict[str, Any]:
    """``{"sha256", "size", "epoch"}`` of a checkpoint file."""
    digest = hashlib.sha256()
    with open(checkpoint, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return {"sha256": digest.hexdigest(), "size": Path(checkpoint).stat().st_size,
            "epoch": epoch}


def read_accuracy_dataset(path: str | os.PathLike[str]) -> AccuracyDataset:
    """Read a cache file (read only). A torn last line is dropped with a
    :class:`RuntimeWarning` (``torn`` is set; the builder cuts it before appending); any
    other malformed line, a missing or foreign header, or another format version raise
    :class:`FileFormatError`."""
    target = Path(path)
    try:
        text = target.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"{target}: cannot read accuracy dataset: {exc}") from exc
    lines = text.split("\n")
    torn = lines[-1] != ""  # every complete line ends with a newline
    complete, last = lines[:-1], lines[-1]
    if not complete:
        raise FileFormatError(f"{target}: empty or truncated accuracy dataset (no header)")
    try:
        header = json.loads(complete[0])
    except json.JSONDecodeError as exc:
        raise FileFormatError(f"{target}: header is not JSON: {exc}") from exc
    if not isinstance(header, dict) or header.get("format") != DATASET_FORMAT:
        raise FileFormatError(f"{target} is not an accuracy dataset (no format="
                              f"{DATASET_FORMAT!r} header)")
    if header.get("format_version") != DATASET_VERSION:
        raise FileFormatError(f"{target}: unknown format_version "
                              f"{header.get('format_version')!r} (expected {DATASET_VERSION})")
    records = []
    for number, line in enumerate(complete[1:], start=2):
        try:
            row = json.loads(line)
            records.append(AccuracyRecord(str(row["arch"]), float(row["accuracy"]),
                                          int(row["macs"]), int(row["resolution"])))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise FileFormatError(f"{target}:{number}: malformed record: {exc}") from exc
    if torn:
        warnings.warn(f"{target}: dropped a torn last line ({len(last)} bytes; an "
                      "interrupted write)", RuntimeWarning, stacklevel=2)
    return AccuracyDataset(target, header, tuple(records), torn=torn)


def _start(path: Path, header: dict[str, Any]) -> AccuracyDataset:
    if not path.exists():
        atomic_write_text(path, json.dumps(header) + "\n")
        return AccuracyDataset(path, header, ())
    data = read_accuracy_dataset(path)
    for key, what in (("checkpoint", "checkpoint"), ("space", "space"),
                      ("eval", "evaluation settings")):
        if data.header.get(key) != header[key]:
            raise FileFormatError(
                f"{path} was built from another {what} ({data.header.get(key)!r}, now "
                f"{header[key]!r}); it cannot be extended. Delete it or keep the same "
                f"{what}.")
    if data.torn:  # cut the torn tail so that appended lines start on a fresh line
        atomic_write_text(path, "\n".join([json.dumps(data.header),
                                           *(r.to_json() for r in data.records)]) + "\n")
    return data


# -- evaluation ----------------------------------------------------------------------------
Evaluator = Callable[[Arch], float]


EvaluatorFactory = Callable[[str | os.PathLike[str], EvalSettings],
                            tuple[Evaluator, dict[str, Any]]]
"""``(checkpoint, settings) -> (evaluate(arch) -> accuracy, checkpoint meta)``: how the
subnets of a trained supernet are scored
(:func:`ofa_search.train.supernet_evaluator`; this layer never imports the trainer)."""


def build_accuracy_dataset(checkpoint: str | os.PathLike[str], n_archs: int, *,
                           settings: EvalSettings | None = None, seed: int = 0,
                           path: str | os.PathLike[str] | None = None,
                           show_progress: bool = True,
                           log: Callable[[str], None] | None = None,
                           evaluator_for: EvaluatorFactory) -> AccuracyDataset:
    """Evaluate the first ``n_archs`` of :func:`dataset_archs` that the cache lacks, each
    by the evaluator that ``evaluator_for(checkpoint, settings)`` makes.

    Returns every record of the cache file (those of earlier runs included), with
    ``n_evaluated`` set. ``path`` defaults to ``Workspace.accuracy_dataset_for(checkpoint)``.
    """
    if n_archs < 1:
        raise ValueError(f"n_archs must be >= 1, got {n_archs=}")
    settings = settings or EvalSettings()
    target = Path(path) if path is not None else Workspace.accuracy_dataset_for(checkpoint)
    evaluate_one, meta = evaluator_for(checkpoint, settings)
    header = {"format": DATASET_FORMAT, "format_version": DATASET_VERSION,
              "space": meta["space"], "width_mult": meta["width_mult"],
              "checkpoint": checkpoint_identity(checkpoint, meta.get("epoch")),
              "eval": settings.to_dict()}
    data = _start(target, header)
    done = {r.arch for r in data.records}
    todo = [a for a in dataset_archs(meta["space"], n_archs, seed, meta["width_mult"])
            if a.to_string() not in done]
    if log is not None:
        log(f"accuracy dataset {target}: {len(done)} cached, {len(todo)} to evaluate")
    records = list(data.records)
    with progress_bar(show_progress and bool(todo)) as progress, open(target, "a") as handle:
        task = progress.add_task("evaluating subnets", total=len(todo))
        for arch in todo:
            record = AccuracyRecord(arch.to_string(), float(evaluate_one(arch)),
                                    count_macs(arch), arch.resolution)
            handle.write(record.to_json() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
            records.append(record)
            progress.advance(task)
    return AccuracyDataset(target, data.header, tuple(records), n_evaluated=len(todo))


def progress_bar(show: bool) -> Any:
    """A rich progress bar with counts, elapsed time and ETA (no-op when not ``show``)."""
    # deferred: rich only when a progress bar is made
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), disable=not show,
                    transient=False)
