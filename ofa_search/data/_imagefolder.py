"""The ``imagefolder`` source: ``root/train/<class>/*.png|jpg…`` (plus ``val/``, ``test/``).

Classes are the sub-folders of ``root/train``, sorted by name; label ``i`` is the ``i``-th.
Files are found recursively below each class folder and read with Pillow as grey (``L``)
or RGB. Images are held in memory at one size: their own, when they all share it, or
``image_size`` (shorter side resized to it, then a centre square crop).

Which folder feeds which split:

- ``train/`` + ``val/`` + ``test/``: each is its own split;
- ``train/`` + ``val/``: ``val/`` is the reported **test** split (the ImageNet convention,
  as once-for-all uses it) and ``val`` is held out of ``train/``;
- ``train/`` alone: both ``test`` and ``val`` are held out of it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ofa_search.data._errors import DatasetError
from ofa_search.data._sources import LoadOptions, Pool, RawDataset
from ofa_search.data._transforms import AugmentPolicy

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
)


def visible_dirs(directory: Path) -> list[Path]:
    """The sub-folders of ``directory`` whose names do not start with a dot, sorted."""
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files(class_dir: Path) -> list[Path]:
    """Every image file (by :data:`IMAGE_EXTENSIONS`, case-insensitive) anywhere below
    ``class_dir``, hidden files excepted, sorted."""
    return sorted(
        path for path in class_dir.rglob("*")
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS
        and not path.name.startswith(".")
    )


def _centre_square(image: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` (bilinear, antialiased), crop the centre square."""
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def _read_image(path: Path, mode: str, image_size: int | None) -> np.ndarray:
    try:
        with Image.open(path) as opened:
            image = opened.convert(mode)
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from exc
    if image_size is not None:
        image = _centre_square(image, image_size)
    array = np.asarray(image, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def _check_same_size(arrays: list[np.ndarray], paths: list[Path]) -> None:
    first = arrays[0].shape[:2]
    for array, path in zip(arrays, paths, strict=True):
        if array.shape[:2] != first:
            raise DatasetError(
                f"images differ in size: {paths[0]} is {first[1]}x{first[0]} but {path} is "
                f"{array.shape[1]}x{array.shape[0]} (width x height); pass image_size to "
                "resize and centre-crop every image to one square size"
            )


def _read_folder(split_dir: Path, classes: tuple[str, ...], mode: str,
                 image_size: int | None) -> Pool:
    """Every image below ``split_dir/<class>/``, labelled by its class's index."""
    index = {name: i for i, name in enumerate(classes)}
    paths: list[Path] = []
    labels: list[int] = []
    for class_dir in visible_dirs(split_dir):
        if class_dir.name not in index:
            raise DatasetError(
                f"{class_dir}: class {class_dir.name!r} is not among the training classes "
                f"({', '.join(classes)})"
            )
        files = image_files(class_dir)
        paths += files
        labels += [index[class_dir.name]] * len(files)
    if not paths:
        raise DatasetError(f"no images found below {split_dir}/<class>/")
    arrays = [_read_image(path, mode, image_size) for path in paths]
    _check_same_size(arrays, paths)
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor(labels, dtype=torch.int64)


def load_imagefolder_raw(options: LoadOptions) -> RawDataset:
    """Read an image-folder tree rooted at ``options.data_dir`` (see the module docstring)."""
    if options.data_dir is None:
        raise DatasetError("dataset 'imagefolder' needs data_dir (--data-dir) set to its root")
    root = options.data_dir
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DatasetError(f"imagefolder: {train_dir} is not a directory (expected "
                           f"{root}/train/<class>/<images>)")
    classes = tuple(path.name for path in visible_dirs(train_dir))
    if not classes:
        raise DatasetError(f"imagefolder: no class folders in {train_dir}")
    empty = [name for name in classes if not image_files(train_dir / name)]
    if empty:
        raise DatasetError(f"imagefolder: class folders without images in {train_dir}: "
                           f"{', '.join(empty)}")
    mode = "L" if options.in_channels == 1 else "RGB"
    pools = {
        name: _read_folder(root / name, classes, mode, options.image_size)
        for name in ("train", "val", "test") if (root / name).is_dir()
    }
    sizes = {tuple(pool[0].shape[2:]) for pool in pools.values()}
    if len(sizes) > 1:
        raise DatasetError(f"imagefolder: splits hold different image sizes {sorted(sizes)}; "
                           "pass image_size")
    has_test = "test" in pools
    return RawDataset(
        train=pools["train"],
        val=pools.get("val") if has_test else None,
        test=pools["test"] if has_test else pools.get("val"),
        class_names=classes,
        augmentation=AugmentPolicy(kind="random_resized_crop", flip=True, min_area=0.35),
    )
