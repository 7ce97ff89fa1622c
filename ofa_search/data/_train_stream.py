"""Supernet training over a streamed image folder: random augmentation, decoded per sample.

:func:`train_transform` is once-for-all's training preprocessing of one image
(``RandomResizedCrop`` with scale ``(0.08, 1)`` and ratio ``(3/4, 4/3)``, bilinear;
``RandomHorizontalFlip``; ``ToTensor``; ``Normalize`` with the ImageNet mean and std),
implemented with Pillow and torch and drawing every random number from an explicit
``torch.Generator``, in the same order and with the same arithmetic as torchvision's
transforms (which are not needed). once-for-all's optional colour jitter is not applied.

:class:`TrainStream` serves an :class:`~ofa_search.data.ImageFolderStream`'s files with that
augmentation, seeded per sample and epoch; :func:`train_stream_loader` batches one epoch of
it, in a seeded order sharded across ranks, through ``DataLoader`` worker processes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

from ofa_search.data._errors import DatasetError
from ofa_search.data._loader import ShardSampler
from ofa_search.data._split import derive_seed
from ofa_search.data._stream import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageFolderStream,
    StreamLoader,
    default_num_workers,
    read_rgb,
    to_normalised_tensor,
)
from ofa_search.data._transforms import check_resolution

CROP_SCALE: tuple[float, float] = (0.08, 1.0)
"""once-for-all's ``RandomResizedCrop`` area range, as a fraction of the image
(its ``resize_scale``)."""
CROP_RATIO: tuple[float, float] = (3 / 4, 4 / 3)
"""``RandomResizedCrop``'s aspect-ratio (width / height) range."""
CROP_ATTEMPTS = 10
"""Boxes drawn before :func:`random_crop_box` falls back to a centre crop."""
AUGMENT_SEED_TAG = 0x4F464147
"""Last part of every sample's augmentation seed, ``derive_seed(seed, epoch, index, TAG)``.

Without it sample 0 would share the epoch order's seed: ``derive_seed`` pads with zeros, so
``derive_seed(seed, epoch, 0) == derive_seed(seed, epoch)``, which :class:`ShardSampler`
uses."""


def _check_range(name: str, bounds: Sequence[float]) -> tuple[float, float]:
    low, high = (float(b) for b in bounds)
    if not 0.0 < low <= high:
        raise DatasetError(f"{name} must be (low, high) with 0 < low <= high, got {bounds!r}")
    return low, high


def _uniform(low: float, high: float, generator: torch.Generator) -> float:
    """One float32 draw from ``U(low, high)``."""
    return float(torch.empty(1, dtype=torch.float32).uniform_(low, high, generator=generator))


def random_crop_box(width: int, height: int, generator: torch.Generator, *,
                    scale: Sequence[float] = CROP_SCALE,
                    ratio: Sequence[float] = CROP_RATIO) -> tuple[int, int, int, int]:
    """``RandomResizedCrop``'s box in a ``width × height`` image: ``(left, top, w, h)``.

    Up to :data:`CROP_ATTEMPTS` times: draw an area ``U(scale) · width · height`` and an
    aspect ratio ``exp(U(log ratio))`` (float32 draws), round ``w = √(area · ratio)`` and
    ``h = √(area / ratio)``; if the box fits, draw ``top`` then ``left`` uniformly and
    return it. Otherwise the centre crop: the whole image, narrowed to the nearest
    allowed aspect ratio when it is wider or taller than ``ratio`` allows (offsets floored).
    """
    scale_lo, scale_hi = _check_range("scale", scale)
    ratio_lo, ratio_hi = _check_range("ratio", ratio)
    if width < 1 or height < 1:
        raise DatasetError(f"cannot crop an empty image ({width}x{height})")
    # float32 draws and log bounds, as torchvision's
    log_lo, log_hi = torch.log(torch.tensor([ratio_lo, ratio_hi], dtype=torch.float32)).tolist()
    image_area = width * height
    for _ in range(CROP_ATTEMPTS):
        target = image_area * _uniform(scale_lo, scale_hi, generator)
        log_ratio = torch.tensor(_uniform(log_lo, log_hi, generator), dtype=torch.float32)
        aspect = float(torch.exp(log_ratio))  # exp in float32, as torchvision
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return left, top, w, h
    image_ratio = width / height
    if image_ratio < ratio_lo:  # too tall: full width, the tallest allowed box
        w, h = width, round(width / ratio_lo)
    elif image_ratio > ratio_hi:  # too wide: full height, the widest allowed box
        w, h = round(height * ratio_hi), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def train_transform(image: Image.Image, resolution: int, generator: torch.Generator,
                    mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD, *,
                    scale: Sequence[float] = CROP_SCALE) -> torch.Tensor:
    """once-for-all's training preprocessing of one image: float32 ``[3, R, R]``.

    RGB; the :func:`random_crop_box` box (``scale``, ratio ``(3/4, 4/3)``) cut out and
    resized to ``R × R`` (Pillow bilinear, which antialiases when shrinking); mirrored
    left–right when ``torch.rand(1) < 0.5`` (drawn after the box); divided by 255;
    ``(x - mean) / std`` per channel. The output is a function of the image and
    ``generator``'s state alone; ``generator`` is advanced.
    """
    check_resolution(resolution)
    rgb = image.convert("RGB")
    left, top, w, h = random_crop_box(rgb.width, rgb.height, generator, scale=scale)
    crop = rgb.crop((left, top, left + w, top + h))
    if crop.size != (resolution, resolution):
        crop = crop.resize((resolution, resolution), Image.Resampling.BILINEAR)
    x = to_normalised_tensor(crop, mean, std)
    if float(torch.rand(1, generator=generator)) < 0.5:
        x = x.flip(-1)
    return x


def _check_non_negative(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DatasetError(f"{name} must be an int >= 0, got {name}={value!r}")


class TrainStream(Dataset[tuple[torch.Tensor, int]]):
    """The samples of ``stream`` with training augmentation, seeded per sample and epoch.

    Item ``i`` is ``(x float32 [3, R, R], label)``: file ``i`` of ``stream`` decoded and put
    through :func:`train_transform` at ``stream.resolution`` with a ``torch.Generator``
    seeded by :meth:`sample_seed` — ``derive_seed(seed, epoch, i, AUGMENT_SEED_TAG)``.
    So a sample's augmentation depends only on ``(seed, epoch, i)``: not on the worker
    process that decodes it, the batch it lands in, the number of ranks or the global
    random state. Call :meth:`set_epoch` for another epoch's augmentation. An unreadable
    file raises a one-line :class:`DatasetError` naming it.
    """

    def __init__(self, stream: ImageFolderStream, seed: int, *, epoch: int = 0) -> None:
        _check_non_negative(seed=seed, epoch=epoch)
        self.stream = stream
        self.seed = seed
        self.epoch = epoch

    def set_epoch(self, epoch: int) -> None:
        """Augment as in epoch ``epoch``."""
        _check_non_negative(epoch=epoch)
        self.epoch = epoch

    def sample_seed(self, index: int) -> int:
        """The seed of sample ``index``'s augmentation in the current epoch."""
        return derive_seed(self.seed, self.epoch, index, AUGMENT_SEED_TAG)

    @property
    def resolution(self) -> int:
        return self.stream.resolution

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.stream.class_names

    def __len__(self) -> int:
        return len(self.stream)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < len(self):  # a negative index would change the seed
            raise IndexError(f"sample {index} out of range for {len(self)} samples")
        image = read_rgb(self.stream.path(index))
        generator = torch.Generator().manual_seed(self.sample_seed(index))
        x = train_transform(image, self.stream.resolution, generator,
                            self.stream.mean, self.stream.std)
        return x, int(self.stream.labels[index])

    def __repr__(self) -> str:
        return (f"TrainStream({self.stream.folder}, {len(self)} samples, "
                f"resolution={self.resolution}, seed={self.seed}, epoch={self.epoch})")


def train_stream_loader(dataset: ImageFolderStream | TrainStream, *, batch_size: int,
                        seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                        start_batch: int = 0, num_workers: int | None = None,
                        pin_memory: bool = False, drop_last: bool = True) -> StreamLoader:
    """One training epoch of ``dataset``: batches ``(x float32 [B, 3, R, R], y int64 [B])``.

    Order: the permutation of epoch ``epoch`` drawn by :class:`ShardSampler` with ``seed``
    (from ``derive_seed(seed, epoch)``), dealt round-robin to ``world_size`` ranks; this
    rank's shard is served. With ``drop_last`` the shards have equal length (the last
    ``N mod world_size`` samples of the order are left out) and the last incomplete batch
    is dropped, so every rank takes the same number of steps. Samples are augmented as
    :class:`TrainStream` with ``seed`` and ``epoch`` (a ``TrainStream`` passed in must have
    that ``seed``; the loader serves its own copy at ``epoch``, so later
    :meth:`TrainStream.set_epoch` calls do not change it).

    ``start_batch`` skips the epoch's first batches without decoding them (the index order
    is sliced), so a run resumed after ``k`` steps of an epoch, with ``start_batch=k``, gets
    exactly the batches it had not yet seen; ``start_batch`` may equal the number of
    batches (nothing left).

    Determinism: the batches — which samples, in which order, and every pixel — depend only
    on the files, ``seed``, ``epoch``, ``batch_size``, ``rank``, ``world_size``,
    ``drop_last`` and ``start_batch``; not on ``num_workers`` (default
    :func:`default_num_workers`; 0 decodes in this process), ``pin_memory`` or the global
    random state, which is never used. Iterating the loader again repeats the epoch.

    ``loader.dataset`` is the :class:`TrainStream`, ``loader.sampler`` the list of its
    indices visited, in order. An unreadable image is a one-line :class:`DatasetError`
    naming the file, whichever process decoded it.
    """
    if isinstance(dataset, TrainStream):
        if dataset.seed != seed:
            raise DatasetError(f"the TrainStream was built with seed={dataset.seed}, but the "
                               f"loader was asked for {seed=}")
        stream = dataset.stream
    else:
        stream = dataset
    if batch_size < 1:
        raise DatasetError(f"batch_size must be >= 1, got {batch_size=}")
    _check_non_negative(seed=seed, epoch=epoch, start_batch=start_batch)
    workers = default_num_workers() if num_workers is None else num_workers
    if workers < 0:
        raise DatasetError(f"num_workers must be >= 0, got {num_workers=}")
    sampler = ShardSampler(len(stream), shuffle=True, seed=seed, rank=rank,
                           world_size=world_size, drop_last=drop_last)
    sampler.set_epoch(epoch)
    order = list(sampler)
    batches = len(order) // batch_size if drop_last else math.ceil(len(order) / batch_size)
    if start_batch > batches:
        raise DatasetError(f"start_batch={start_batch} is past the end of the epoch "
                           f"({batches} batches of {batch_size} on this rank)")
    return StreamLoader(
        TrainStream(stream, seed, epoch=epoch), batch_size=batch_size,
        sampler=order[start_batch * batch_size:], num_workers=workers,
        pin_memory=pin_memory, drop_last=drop_last,
        # the loader draws its workers' base seed (unused here) from this generator, not
        # from the global one
        generator=torch.Generator().manual_seed(derive_seed(seed, epoch)))
