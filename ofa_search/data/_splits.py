"""In-memory dataset splits: :class:`ImageSplit` and :class:`DatasetSplits`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch.utils.data import Dataset

from ofa_search.data._errors import DatasetError
from ofa_search.data._transforms import (
    AugmentPolicy,
    augment_batch,
    check_resolution,
    normalize_batch,
    resize_batch,
)

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True, eq=False)
class ImageSplit(Dataset[tuple[torch.Tensor, int]]):
    """One split held in memory, usable directly or through a ``DataLoader``.

    ``images`` are uint8 ``[N, C, H, W]`` at native size (a grey dataset asked for three
    channels holds an expanded view, not a copy); ``labels`` are int64 ``[N]``. Indexing
    returns ``(image float32 [C, R, R], label)`` resized to ``resolution`` and normalised,
    without augmentation; :meth:`batch` is the vectorised path with optional augmentation.
    """

    images: torch.Tensor
    labels: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resolution: int
    augmentation: AugmentPolicy = field(default_factory=AugmentPolicy)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise DatasetError(
                f"images must be uint8 [N, C, H, W], got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise DatasetError(
                f"labels must be int64 [{self.images.shape[0]}], got {self.labels.dtype} "
                f"{tuple(self.labels.shape)}"
            )
        channels = self.images.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise DatasetError(
                f"mean and std need {channels} entries, got {self.mean=}, {self.std=}"
            )
        check_resolution(self.resolution)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        images, labels = self.batch(torch.tensor([index]))
        return images[0], int(labels[0])

    def batch(
        self,
        indices: torch.Tensor,
        *,
        augment: bool = False,
        generator: torch.Generator | None = None,
        resolution: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``indices`` as ``(x float32 [B, C, R, R], y int64 [B])``, normalised.

        ``resolution`` defaults to the split's; ``augment=True`` applies the split's
        augmentation policy and needs ``generator``.
        """
        size = self.resolution if resolution is None else check_resolution(resolution)
        x = self.images[indices].float().div_(255.0)
        if augment:
            if generator is None:
                raise DatasetError("augment=True needs an explicit torch.Generator")
            x = augment_batch(x, self.augmentation, generator=generator, resolution=size)
        else:
            x = resize_batch(x, size)
        return normalize_batch(x, self.mean, self.std), self.labels[indices]

    def with_resolution(self, resolution: int) -> ImageSplit:
        """The same samples, served at another resolution (no copy of the images)."""
        return replace(self, resolution=check_resolution(resolution))


@dataclass(frozen=True, eq=False, kw_only=True)
class DatasetSplits:
    """A loaded dataset: its ``train``/``val``/``test`` splits and metadata.

    ``val`` is held out of the training data (stratified, seeded) for BN recalibration,
    model selection and accuracy-predictor data; ``test`` is only for reporting.

    Attributes:
        name: registry name.
        train, val, test: the splits.
        num_classes: number of classes; labels are ``0 … num_classes-1``.
        in_channels: image channels (1 grey, 3 RGB).
        native_size: ``(height, width)`` of the stored images.
        class_names: one name per label.
        mean, std: per-channel normalisation constants, from the ``train`` split in [0, 1].
        resolution: the side every sample is served at unless a call asks otherwise.
        augmentation: the training augmentation policy.
    """

    name: str
    train: ImageSplit
    val: ImageSplit
    test: ImageSplit
    num_classes: int
    in_channels: int
    native_size: tuple[int, int]
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resolution: int
    augmentation: AugmentPolicy

    def split(self, name: str) -> ImageSplit:
        """The split called ``name`` (``"train"``, ``"val"`` or ``"test"``)."""
        if name not in SPLIT_NAMES:
            raise DatasetError(f"unknown split {name!r}; known: {', '.join(SPLIT_NAMES)}")
        split: ImageSplit = getattr(self, name)
        return split

    def with_resolution(self, resolution: int) -> DatasetSplits:
        """The same dataset served at ``resolution`` (no copy of the images)."""
        check_resolution(resolution)
        return replace(
            self,
            resolution=resolution,
            train=self.train.with_resolution(resolution),
            val=self.val.with_resolution(resolution),
            test=self.test.with_resolution(resolution),
        )

    def describe(self) -> dict[str, Any]:
        """JSON-ready metadata (for checkpoints and model cards): everything but the data."""
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "native_size": list(self.native_size),
            "class_names": list(self.class_names),
            "mean": list(self.mean),
            "std": list(self.std),
            "resolution": self.resolution,
            "sizes": {name: len(self.split(name)) for name in SPLIT_NAMES},
        }
