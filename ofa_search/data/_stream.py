"""Image folders streamed from disk: decoded one image at a time, never held in memory.

For ImageNet-scale folders (the other sources hold every image in memory as uint8). The
layout is once-for-all's: ``root/train/<wnid>/…`` and ``root/val/<wnid>/…``; a folder that
is directly ``root/<class>/…`` is accepted too and then serves as both splits. Classes are
the sorted sub-folders of the training folder; label ``i`` is the ``i``-th. Files are
found recursively below each class folder (the extensions of the ``imagefolder`` source).

Every sample gets once-for-all's evaluation preprocessing (:func:`eval_transform`): RGB,
shorter side resized to ``ceil(resolution / 0.875)`` (bilinear), centre crop
``resolution``, float CHW in [0, 1] normalised with the ImageNet mean and std — the same
operations, rounding included, as torchvision's ``Resize``, ``CenterCrop``, ``ToTensor``
and ``Normalize``, which once-for-all uses (torchvision itself is not needed).

:func:`stream_loader` batches a seeded random subset of a stream through a ``DataLoader``
with worker processes; an unreadable image there is a one-line :class:`DatasetError`
naming the file, whichever process decoded it.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Subset

from ofa_search.data._errors import DatasetError
from ofa_search.data._imagefolder import image_files, visible_dirs
from ofa_search.data._transforms import check_resolution

IMAGENET = "imagenet"
"""The dataset name of checkpoints whose data is streamed (imported once-for-all supernets)."""
STREAMED_DATASETS: frozenset[str] = frozenset({IMAGENET})
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
CROP_FRACTION = 0.875
"""once-for-all's evaluation crop: the resize target is ``ceil(resolution / 0.875)``."""
OFA_CALIB_IMAGES = 2000
"""once-for-all's BN recalibration set: 2,000 random training images."""
DEFAULT_EVAL_IMAGES = 10_000
"""Default cap on the validation images an accuracy is measured on (ImageNet has 50,000)."""
STREAM_BATCH_SIZE = 100
"""Batch size of BN recalibration and evaluation over a stream (2,000 images make 20
batches of equal size, so the recalibrated means are exact)."""

Batch = tuple[torch.Tensor, torch.Tensor]
Layout = Literal["imagenet", "flat"]


def is_streamed_dataset(name: str) -> bool:
    """Whether dataset ``name`` is read through :func:`open_image_stream`, not
    :func:`~ofa_search.data.load_dataset`."""
    return name in STREAMED_DATASETS


def resize_size(resolution: int) -> int:
    """The shorter side images are resized to before the centre crop of ``resolution``."""
    return math.ceil(check_resolution(resolution) / CROP_FRACTION)


def eval_transform(image: Image.Image, resolution: int,
                   mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """once-for-all's evaluation preprocessing of one image: float32 ``[3, R, R]``.

    RGB; shorter side resized to :func:`resize_size` (bilinear, the longer side scaled by
    the same factor and truncated); the centre ``R × R`` square (offsets rounded as Python's
    ``round``); divided by 255; ``(x - mean) / std`` per channel.
    """
    side = resize_size(resolution)
    rgb = image.convert("RGB")
    width, height = rgb.size
    if width <= height:
        size = (side, int(side * height / width))
    else:
        size = (int(side * width / height), side)
    if size != rgb.size:
        rgb = rgb.resize(size, Image.Resampling.BILINEAR)
    left = round((size[0] - resolution) / 2.0)  # as torchvision: round half to even
    top = round((size[1] - resolution) / 2.0)
    crop = rgb.crop((left, top, left + resolution, top + resolution))
    return to_normalised_tensor(crop, mean, std)


def to_normalised_tensor(rgb: Image.Image, mean: Sequence[float],
                         std: Sequence[float]) -> torch.Tensor:
    """An RGB image as float32 ``[3, H, W]``: divided by 255 (``ToTensor``), then
    ``(x - mean) / std`` per channel (``Normalize``)."""
    x = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return x.sub_(mean_t).div_(std_t)


def read_rgb(path: Path) -> Image.Image:
    """The image at ``path`` decoded as RGB, or a one-line :class:`DatasetError` naming it."""
    try:
        with Image.open(path) as opened:
            return opened.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from exc


def _name_classes(classes: Sequence[str]) -> str:
    shown = ", ".join(classes[:8])
    return shown if len(classes) <= 8 else f"{shown}, … ({len(classes)} in all)"


@dataclass(frozen=True, eq=False)
class ImageFolderStream(Dataset[tuple[torch.Tensor, int]]):
    """The images below ``folder/<class>/``, decoded with Pillow when indexed.

    Built by :meth:`scan`. Indexing returns ``(x float32 [3, R, R], label)`` after
    :func:`eval_transform` at ``resolution``; an unreadable file raises
    :class:`DatasetError` naming it. File names are kept as one numpy bytes array (no
    Python object per image, so forked ``DataLoader`` workers share it without copying).

    Attributes:
        folder: the split's folder.
        class_names: the label names (label ``i`` is ``class_names[i]``); for a validation
            folder, the training folder's classes.
        resolution: the side of every sample.
        paths: file paths relative to ``folder`` (``os.fsencode``-d), sorted by class
            folder then path.
        labels: int64 label of each path.
    """

    folder: Path
    class_names: tuple[str, ...]
    resolution: int
    paths: np.ndarray
    labels: np.ndarray
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @classmethod
    def scan(cls, folder: str | os.PathLike[str], resolution: int, *,
             classes: Sequence[str] | None = None) -> ImageFolderStream:
        """List the images below ``folder/<class>/``.

        With ``classes`` None the class folders of ``folder`` are the classes, and each must
        hold an image; with ``classes`` given (a validation folder), every class folder must
        be one of them and some must hold images. Raises :class:`DatasetError` (one line)
        when ``folder`` is missing, has no class folders, or breaks those rules.
        """
        check_resolution(resolution)
        root = Path(folder)
        if not root.is_dir():
            raise DatasetError(f"image folder {root} does not exist or is not a directory")
        class_dirs = visible_dirs(root)
        if not class_dirs:
            raise DatasetError(f"no class folders in {root} (expected {root}/<class>/<images>)")
        files = {d.name: image_files(d) for d in class_dirs}
        if classes is None:
            names = tuple(files)
            empty = [name for name, found in files.items() if not found]
            if empty:
                raise DatasetError(f"class folders without images in {root}: "
                                   f"{_name_classes(empty)}")
        else:
            names = tuple(classes)
            unknown = sorted(set(files) - set(names))
            if unknown:
                raise DatasetError(f"{root}: class folder(s) {_name_classes(unknown)} not among "
                                   f"the training classes ({_name_classes(names)})")
            if not any(files.values()):
                raise DatasetError(f"no images found below {root}/<class>/")
        index = {name: i for i, name in enumerate(names)}
        paths = [os.fsencode(path.relative_to(root)) for name in files for path in files[name]]
        labels = [index[name] for name in files for _ in files[name]]
        return cls(folder=root, class_names=names, resolution=resolution,
                   paths=np.array(paths, dtype=np.bytes_),
                   labels=np.array(labels, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.path(index)
        image = read_rgb(path)
        return eval_transform(image, self.resolution, self.mean, self.std), int(self.labels[index])

    def path(self, index: int) -> Path:
        """The file of sample ``index``."""
        return self.folder / os.fsdecode(bytes(self.paths[index]))

    def with_resolution(self, resolution: int) -> ImageFolderStream:
        """The same files served at another resolution (no rescan)."""
        return replace(self, resolution=check_resolution(resolution))


@dataclass(frozen=True)
class ImageStreamSplits:
    """A streamed dataset: ``train`` (for BN recalibration) and ``val`` (for accuracy).

    ``layout`` is ``"imagenet"`` (``root/train`` + ``root/val``) or ``"flat"`` (``root``
    itself is the class folder tree, and ``train`` and ``val`` are the same stream).
    """

    name: str
    root: Path
    layout: Layout
    train: ImageFolderStream
    val: ImageFolderStream

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.train.class_names

    @property
    def mean(self) -> tuple[float, ...]:
        return self.train.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.train.std

    def describe(self) -> dict[str, object]:
        """JSON-ready metadata (for checkpoints), like ``DatasetSplits.describe``."""
        return {
            "name": self.name, "streamed": True, "layout": self.layout,
            "num_classes": len(self.class_names), "in_channels": 3,
            "class_names": list(self.class_names), "mean": list(self.mean),
            "std": list(self.std), "resolution": self.train.resolution,
            "sizes": {"train": len(self.train), "val": len(self.val)},
        }

    def with_resolution(self, resolution: int) -> ImageStreamSplits:
        """The same splits served at another resolution (no rescan)."""
        return replace(self, train=self.train.with_resolution(resolution),
                       val=self.val.with_resolution(resolution))


def open_image_stream(root: str | os.PathLike[str] | None, resolution: int, *,
                      name: str = IMAGENET) -> ImageStreamSplits:
    """The streamed splits of the folder ``root`` at ``resolution``.

    A ``root`` with a ``train/`` sub-folder is read as the ImageNet layout and needs
    ``val/`` beside it, whose class folders must be among ``train/``'s; any other folder is
    read as ``root/<class>/…`` and serves as both splits. ``name`` only labels the data
    and the messages. Raises :class:`DatasetError` (one line) for ``root`` None or missing
    and for folders that break the layout (see :meth:`ImageFolderStream.scan`).
    """
    hint = "DIR/train/<class>/<images> and DIR/val/<class>/<images>"
    if root is None:
        raise DatasetError(f"dataset {name!r} is streamed from an ImageNet-layout folder: "
                           f"pass data_dir (--data-dir DIR, with {hint})")
    folder = Path(root)
    if not folder.is_dir():
        raise DatasetError(f"{name} folder {folder} does not exist or is not a directory "
                           f"(expected {hint.replace('DIR', str(folder))})")
    train_dir, val_dir = folder / "train", folder / "val"
    if not train_dir.is_dir():
        if val_dir.is_dir():
            raise DatasetError(f"{folder} has val/ but no train/ (expected "
                               f"{hint.replace('DIR', str(folder))})")
        flat = ImageFolderStream.scan(folder, resolution)
        return ImageStreamSplits(name=name, root=folder, layout="flat", train=flat, val=flat)
    train = ImageFolderStream.scan(train_dir, resolution)
    if not val_dir.is_dir():
        raise DatasetError(f"{val_dir} does not exist; pass {train_dir} itself to calibrate "
                           "and evaluate on the same images")
    val = ImageFolderStream.scan(val_dir, resolution, classes=train.class_names)
    return ImageStreamSplits(name=name, root=folder, layout="imagenet", train=train, val=val)


def default_num_workers() -> int:
    """``min(4, usable CPUs)``: the loader's worker processes unless told otherwise."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return min(4, cpus)


def subset_indices(n: int, max_images: int | None, seed: int) -> torch.Tensor:
    """The first ``min(n, max_images)`` entries of a permutation of ``range(n)`` drawn from a
    ``torch.Generator`` seeded by ``seed``: the same seed always gives the same subset in
    the same order, and a smaller cap gives a prefix of a larger one's."""
    if max_images is not None and max_images < 1:
        raise DatasetError(f"max_images must be >= 1 or None, got {max_images=}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order if max_images is None else order[:max_images]


class StreamLoader(DataLoader[tuple[torch.Tensor, int]]):
    """A ``DataLoader`` whose workers' :class:`DatasetError` exceptions arrive with their own
    one-line message (PyTorch re-raises them with the worker's traceback in the text).

    Its workers are forked (PyTorch's default on Linux) while this process runs one Python
    thread, and started from a fork server while it runs more (an HTTP service, a client's
    event loop): a child forked beside a running thread can inherit a lock that thread
    held and wait on it forever, which hung a loader of the test suite. The batches are the
    same either way. A ``multiprocessing_context`` set by the caller is kept.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._auto_context: Any = None  # the context this class chose last, if any
        super().__init__(*args, **kwargs)

    def __iter__(self) -> Iterator[Batch]:  # type: ignore[override]
        self._choose_context()
        return _one_line_errors(super().__iter__())

    def _choose_context(self) -> None:
        if self.num_workers > 0 and self.multiprocessing_context is self._auto_context:
            self._auto_context = (multiprocessing.get_context("forkserver")
                                  if threading.active_count() > 1 and _has_forkserver()
                                  else None)
            self.multiprocessing_context = self._auto_context


def _has_forkserver() -> bool:
    return "forkserver" in multiprocessing.get_all_start_methods()


def _one_line_errors(batches: Iterator[Batch]) -> Iterator[Batch]:
    try:
        yield from batches
    except DatasetError as exc:
        text = str(exc)
        if not text.startswith("Caught "):
            raise
        last = text.rstrip().splitlines()[-1]
        raise DatasetError(last.split(f"{type(exc).__name__}: ", 1)[-1]) from None
    finally:
        # an error, or a consumer that stops early, leaves PyTorch's iterator alive (the
        # exception's traceback holds it) with its workers running and registered with
        # PyTorch's SIGCHLD check, which then fails whatever runs in the main thread when
        # one of them exits: stop them now (exhausted iterators have already)
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def stream_loader(dataset: Dataset[tuple[torch.Tensor, int]], *, batch_size: int,
                  max_images: int | None = None, seed: int = 0,
                  num_workers: int | None = None,
                  pin_memory: bool | None = None) -> StreamLoader:
    """Batches ``(x float32 [B, 3, R, R], y int64 [B])`` of at most ``max_images`` samples
    of ``dataset`` (all when None), chosen and ordered by :func:`subset_indices` with
    ``seed``. ``loader.dataset`` is that subset (its ``len`` is the number of samples).

    ``num_workers`` decoding processes (default :func:`default_num_workers`; 0 decodes in
    this process); the batches do not depend on it. ``pin_memory`` defaults to whether
    CUDA is available. The global random state is never used.
    """
    if batch_size < 1:
        raise DatasetError(f"batch_size must be >= 1, got {batch_size=}")
    workers = default_num_workers() if num_workers is None else num_workers
    if workers < 0:
        raise DatasetError(f"num_workers must be >= 0, got {num_workers=}")
    indices = subset_indices(len(dataset), max_images, seed)  # type: ignore[arg-type]
    return StreamLoader(
        Subset(dataset, indices.tolist()), batch_size=batch_size, shuffle=False,
        num_workers=workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        # the loader draws its workers' base seed even with no shuffling: from this
        # generator, not from the global one
        generator=torch.Generator().manual_seed(seed))
