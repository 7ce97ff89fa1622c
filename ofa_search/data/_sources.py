"""The built-in dataset sources: each reads raw pools of uint8 images and int64 labels.

A source returns a :class:`RawDataset`; :func:`ofa_search.data.load_dataset` turns it into
train/val/test splits. Sources return their native channels (1 for grey data) unless they
can convert themselves (image folders).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ofa_search.data._errors import DatasetError
from ofa_search.data._idx import read_idx
from ofa_search.data._transforms import AugmentPolicy

Pool = tuple[torch.Tensor, torch.Tensor]
"""``(images uint8 [N, C, H, W], labels int64 [N])``."""

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_IDX_UBYTE = 0x08


@dataclass(frozen=True, kw_only=True)
class LoadOptions:
    """What the caller asked of a source; each source rejects options it cannot honour."""

    data_dir: Path | None = None
    in_channels: int | None = None
    image_size: int | None = None


@dataclass(frozen=True, kw_only=True)
class RawDataset:
    """A source's pools. A missing ``test`` is carved out of ``train`` (with a fixed seed,
    so it never depends on the caller's seed); a missing ``val`` is carved out of what is
    left of ``train`` with the caller's ``val_fraction`` and ``seed``."""

    train: Pool
    class_names: tuple[str, ...]
    augmentation: AugmentPolicy
    val: Pool | None = None
    test: Pool | None = None


def _reject(name: str, options: LoadOptions, *, data_dir: bool, image_size: bool) -> None:
    if not data_dir and options.data_dir is not None:
        raise DatasetError(f"dataset {name!r} is built in and takes no data_dir")
    if not image_size and options.image_size is not None:
        raise DatasetError(f"dataset {name!r} has a fixed image size and takes no image_size")


def load_digits_raw(options: LoadOptions) -> RawDataset:
    """scikit-learn's bundled 8×8 digits (1797 images, grey levels 0–16 scaled to 0–255)."""
    from sklearn.datasets import load_digits  # deferred: scikit-learn is a heavy import

    _reject("digits", options, data_dir=False, image_size=False)
    bunch = load_digits()
    pixels = np.rint(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0))
    images = torch.from_numpy(pixels.astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    return RawDataset(
        train=(images, labels),
        class_names=tuple(str(digit) for digit in range(10)),
        # digits are not mirror-invariant: one-pixel shifts only
        augmentation=AugmentPolicy(kind="shift", pad=1, flip=False),
    )


def _find_idx_files(directory: Path) -> dict[str, Path]:
    """The four Fashion-MNIST files in ``directory`` (raw or ``.gz``), or an error that
    names every missing one and how to get them."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for key, stem in FASHION_MNIST_FILES.items():
        candidates = [directory / stem, directory / f"{stem}.gz"]
        path = next((cand for cand in candidates if cand.is_file()), None)
        if path is None:
            missing.append(f"{stem}[.gz]")
        else:
            found[key] = path
    if missing:
        raise DatasetError(
            f"Fashion-MNIST not found: {', '.join(missing)} missing from directory "
            f"{directory}. Install the Debian package {FASHION_MNIST_PACKAGE} "
            f"(`apt-get install {FASHION_MNIST_PACKAGE}`, files go to {FASHION_MNIST_DIR}) "
            "or pass --data-dir (data_dir=...) pointing to a directory with the four IDX files"
        )
    return found


def _read_idx_pool(images_path: Path, labels_path: Path) -> Pool:
    images = read_idx(images_path, expect_type=_IDX_UBYTE, expect_ndim=3)
    labels = read_idx(labels_path, expect_type=_IDX_UBYTE, expect_ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels"
        )
    if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise DatasetError(f"{labels_path}: label {int(labels.max())} outside 0–9")
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def load_fashion_mnist_raw(options: LoadOptions) -> RawDataset:
    """Fashion-MNIST from its four IDX files in ``options.data_dir`` (default
    ``/usr/share/datasets/fashion-mnist``, where Debian's ``dataset-fashion-mnist`` puts them)."""
    _reject("fashion-mnist", options, data_dir=True, image_size=False)
    directory = options.data_dir if options.data_dir is not None else FASHION_MNIST_DIR
    files = _find_idx_files(directory)
    train = _read_idx_pool(files["train_images"], files["train_labels"])
    test = _read_idx_pool(files["test_images"], files["test_labels"])
    if train[0].shape[1:] != test[0].shape[1:]:
        raise DatasetError(
            f"train images are {tuple(train[0].shape[2:])} but test images are "
            f"{tuple(test[0].shape[2:])} in {directory}"
        )
    return RawDataset(
        train=train,
        test=test,
        class_names=FASHION_MNIST_CLASSES,
        augmentation=AugmentPolicy(kind="shift", pad=2, flip=True),
    )
