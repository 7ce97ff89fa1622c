"""The dataset registry and :func:`load_dataset`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ofa_search.data._errors import DatasetError
from ofa_search.data._imagefolder import load_imagefolder_raw
from ofa_search.data._sources import (
    LoadOptions,
    Pool,
    RawDataset,
    load_digits_raw,
    load_fashion_mnist_raw,
)
from ofa_search.data._split import stratified_split
from ofa_search.data._splits import DatasetSplits, ImageSplit
from ofa_search.data._transforms import check_resolution

SourceLoader = Callable[[LoadOptions], RawDataset]

_SOURCES: dict[str, SourceLoader] = {
    "digits": load_digits_raw,
    "fashion-mnist": load_fashion_mnist_raw,
    "imagefolder": load_imagefolder_raw,
}

TEST_FRACTION = 0.2
"""Share of the data carved out as ``test`` by sources without a test set (digits)."""
TEST_SPLIT_SEED = 20_240_601
"""Fixed seed of that carve-out, so the reported test set never depends on ``seed``."""


def available_datasets() -> tuple[str, ...]:
    """Names accepted by :func:`load_dataset`, sorted."""
    return tuple(sorted(_SOURCES))


def _source(name: str) -> SourceLoader:
    try:
        return _SOURCES[name]
    except KeyError:
        raise DatasetError(
            f"unknown dataset {name!r}; known datasets: {', '.join(available_datasets())}"
        ) from None


def _take(pool: Pool, indices: torch.Tensor) -> Pool:
    return pool[0][indices], pool[1][indices]


def _hold_out(pool: Pool, fraction: float, seed: int) -> tuple[Pool, Pool]:
    """``(rest, held_out)`` of ``pool``, stratified and seeded."""
    keep, held = stratified_split(pool[1], fraction, seed=seed)
    return _take(pool, keep), _take(pool, held)


def _assign_splits(raw: RawDataset, val_fraction: float, seed: int) -> tuple[Pool, Pool, Pool]:
    train, val, test = raw.train, raw.val, raw.test
    if test is None:
        train, test = _hold_out(train, TEST_FRACTION, TEST_SPLIT_SEED)
    if val is None:
        train, val = _hold_out(train, val_fraction, seed)
    return train, val, test


def _channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std of uint8 ``images`` in [0, 1], from grey-level counts."""
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    means: list[float] = []
    stds: list[float] = []
    for channel in range(images.shape[1]):
        counts = torch.bincount(images[:, channel].reshape(-1), minlength=256).double()
        total = counts.sum().clamp(min=1.0)
        mean = float((counts * levels).sum() / total)
        var = float((counts * (levels - mean) ** 2).sum() / total)
        means.append(mean)
        stds.append(max(var, 1e-12) ** 0.5)
    return tuple(means), tuple(stds)


def _match_channels(images: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Grey images repeated to ``in_channels`` as a view; other mismatches are errors."""
    channels = images.shape[1]
    if channels == in_channels:
        return images
    if channels == 1:
        return images.expand(-1, in_channels, -1, -1)
    raise DatasetError(f"cannot turn {channels}-channel images into {in_channels} channels")


def _check_options(val_fraction: float, in_channels: int | None, image_size: int | None,
                   resolution: int | None) -> None:
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"val_fraction must lie in [0, 1), got {val_fraction=}")
    if in_channels not in (None, 1, 3):
        raise DatasetError(f"in_channels must be 1 (grey) or 3 (RGB), got {in_channels=}")
    if image_size is not None:
        check_resolution(image_size)
    if resolution is not None:
        check_resolution(resolution)


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    in_channels: int | None = None,
    image_size: int | None = None,
    resolution: int | None = None,
) -> DatasetSplits:
    """Load a registered dataset into memory as train/val/test splits.

    Args:
        name: one of :func:`available_datasets` (``digits``, ``fashion-mnist``,
            ``imagefolder``).
        data_dir: where the files are (Fashion-MNIST: default
            ``/usr/share/datasets/fashion-mnist``; imagefolder: the tree's root, required;
            digits: built in, must be ``None``).
        val_fraction: share of the training data held out as ``val`` (stratified, within
            one sample per class), unless the source has its own validation set.
        seed: seeds the ``val`` hold-out; the same seed gives the same split.
        in_channels: 1 (grey) or 3 (RGB); ``None`` keeps the source's own (imagefolder: 3).
            Grey data asked for 3 channels is repeated across them.
        image_size: imagefolder only: square size every image is resized and cropped to.
        resolution: side every sample is served at; default: the native height.

    Raises:
        DatasetError: unknown name, missing or malformed files, invalid options.
    """
    _check_options(val_fraction, in_channels, image_size, resolution)
    source = _source(name)
    path = Path(data_dir) if data_dir is not None else None
    raw = source(LoadOptions(data_dir=path, in_channels=in_channels, image_size=image_size))
    pools = _assign_splits(raw, val_fraction, seed)
    mean, std = _channel_stats(pools[0][0])
    channels = in_channels if in_channels is not None else pools[0][0].shape[1]
    if channels != len(mean):
        mean, std = mean * channels, std * channels
    native = (int(pools[0][0].shape[2]), int(pools[0][0].shape[3]))
    size = resolution if resolution is not None else native[0]
    train, val, test = (
        ImageSplit(
            images=_match_channels(images, channels), labels=labels, mean=mean, std=std,
            resolution=size, augmentation=raw.augmentation,
        )
        for images, labels in pools
    )
    return DatasetSplits(
        name=name, train=train, val=val, test=test, num_classes=len(raw.class_names),
        in_channels=channels, native_size=native, class_names=raw.class_names, mean=mean,
        std=std, resolution=size, augmentation=raw.augmentation,
    )
