"""Streamed image folders (ImageNet layout): preprocessing, labels, seeded subsets, workers
and one-line errors."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ofa_search.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetError,
    eval_transform,
    open_image_stream,
    resize_size,
    stream_loader,
)

CLASSES = ("n01", "n02", "n03")
SIZES = ((40, 30), (33, 50), (64, 48), (29, 29))  # width x height, in turn


def write_imagenet(root: Path, train: int = 4, val: int = 2, seed: int = 0) -> Path:
    """A tiny ImageNet-layout tree of random RGB JPEGs and PNGs of assorted sizes:
    ``root/train/<class>/`` (``train`` each, one in a sub-folder) and ``root/val/<class>/``."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for c, name in enumerate(CLASSES):
            for i in range(count):
                folder = root / split / name / ("sub" if i == 1 else "")
                folder.mkdir(parents=True, exist_ok=True)
                width, height = SIZES[(c + i) % len(SIZES)]
                pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
                suffix = ".JPEG" if i % 2 else ".png"
                Image.fromarray(pixels).save(folder / f"{name}_{i}{suffix}")
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_imagenet(tmp_path_factory.mktemp("imagenet"))


def _normalised(pixels: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.array(pixels)).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return (x - mean) / std


def test_eval_transform_resizes_crops_and_normalises() -> None:
    assert resize_size(224) == 256 and resize_size(128) == 147 and resize_size(16) == 19
    rng = np.random.default_rng(1)
    # already at the resize size (shorter side 19): no resampling, so the crop is exact;
    # offsets round half to even as torchvision's CenterCrop: (19-16)/2 -> 2, (25-16)/2 -> 4
    pixels = rng.integers(0, 256, (25, 19, 3), dtype=np.uint8)
    x = eval_transform(Image.fromarray(pixels), 16)
    assert x.dtype == torch.float32 and x.shape == (3, 16, 16)
    torch.testing.assert_close(x, _normalised(pixels[4:20, 2:18]), rtol=0, atol=1e-6)
    # a flat colour stays flat through resizing; grey images become RGB
    flat = eval_transform(Image.new("RGB", (70, 41), (200, 10, 90)), 16)
    expected = _normalised(np.broadcast_to(np.array([200, 10, 90], np.uint8), (16, 16, 3)))
    torch.testing.assert_close(flat, expected, rtol=0, atol=1e-6)
    grey = eval_transform(Image.new("L", (20, 40), 128), 16)
    assert grey.shape == (3, 16, 16)


def test_layout_labels_and_samples(tree: Path) -> None:
    data = open_image_stream(tree, 16)
    assert data.layout == "imagenet" and data.class_names == CLASSES
    assert (len(data.train), len(data.val)) == (12, 6)
    assert data.train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert data.val.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert data.train.path(3) == tree / "train" / "n01" / "sub" / "n01_1.JPEG"  # sorted
    x, label = data.val[3]
    assert x.shape == (3, 16, 16) and label == 1
    with Image.open(data.val.path(3)) as image:
        torch.testing.assert_close(x, eval_transform(image, 16))
    assert data.with_resolution(20).val[0][0].shape == (3, 20, 20)
    # a folder that is directly <class>/… serves as both splits
    flat = open_image_stream(tree / "val", 16)
    assert flat.layout == "flat" and flat.train is flat.val and len(flat.val) == 6


def _batches(loader: torch.utils.data.DataLoader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(loader)


GLOBAL_RNG_UNTOUCHED = """if True:
    import sys, torch
    from ofa_search.data import open_image_stream, stream_loader
    train = open_image_stream(sys.argv[1], 16).train
    state = torch.get_rng_state()
    for workers in (0, 2):
        list(stream_loader(train, batch_size=4, max_images=7, seed=3, num_workers=workers))
    assert torch.equal(torch.get_rng_state(), state), "the global generator was drawn from"
"""


def test_loader_workers_start_from_a_fork_server_while_other_threads_run(tree: Path) -> None:
    # a worker forked beside a running thread can inherit a lock that thread holds and
    # hang; such a loader hung the suite (a service test's event-loop thread was alive)
    train = open_image_stream(tree, 16).train
    expected = _batches(stream_loader(train, batch_size=4, max_images=7, seed=3,
                                      num_workers=0))
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, daemon=True)
    other.start()
    try:
        loader = stream_loader(train, batch_size=4, max_images=7, seed=3, num_workers=2)
        batches = _batches(loader)
        assert loader.multiprocessing_context.get_start_method() == "forkserver"
    finally:
        stop.set()
        other.join()
    for (x1, y1), (x2, y2) in zip(expected, batches, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    if threading.active_count() == 1:  # no thread of an earlier test left in this process
        _batches(loader)
        assert loader.multiprocessing_context is None  # forked, as PyTorch does by default
    # a context the caller sets is kept, threads or not
    chosen = stream_loader(train, batch_size=4, max_images=7, seed=3, num_workers=2)
    chosen.multiprocessing_context = "spawn"
    chosen._choose_context()
    assert chosen.multiprocessing_context.get_start_method() == "spawn"

def test_loader_subset_is_seeded_capped_and_independent_of_workers(tree: Path) -> None:
    train = open_image_stream(tree, 16).train
    loader = stream_loader(train, batch_size=4, max_images=7, seed=3, num_workers=0)
    assert len(loader.dataset) == 7 and len(loader) == 2  # type: ignore[arg-type]
    batches = _batches(loader)
    assert [tuple(x.shape) for x, _ in batches] == [(4, 3, 16, 16), (3, 3, 16, 16)]
    assert all(x.dtype == torch.float32 and y.dtype == torch.int64 for x, y in batches)
    labels = torch.cat([y for _, y in batches])
    assert len(set(loader.dataset.indices)) == 7  # type: ignore[attr-defined]
    assert labels.tolist() == [int(train.labels[i])
                               for i in loader.dataset.indices]  # type: ignore[attr-defined]
    again = _batches(stream_loader(train, batch_size=4, max_images=7, seed=3, num_workers=2))
    for (x1, y1), (x2, y2) in zip(batches, again, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # the global generator is untouched: checked in a fresh process, since in a worker of
    # the suite a thread left running by an earlier test may draw from it meanwhile
    check = subprocess.run([sys.executable, "-c", GLOBAL_RNG_UNTOUCHED, str(tree)],
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr[-2000:]
    # a smaller cap is a prefix of a larger one; another seed picks another order
    prefix = _batches(stream_loader(train, batch_size=3, max_images=3, seed=3, num_workers=0))
    assert torch.equal(prefix[0][0], batches[0][0][:3])
    other = stream_loader(train, batch_size=4, max_images=7, seed=4, num_workers=0)
    assert other.dataset.indices != loader.dataset.indices  # type: ignore[attr-defined]
    everything = stream_loader(train, batch_size=5, seed=0, num_workers=0)
    assert len(everything.dataset) == 12  # type: ignore[arg-type]
    assert stream_loader(train, batch_size=5, max_images=100, num_workers=0).pin_memory is (
        torch.cuda.is_available())


def _build(root: Path, entries: tuple[str, ...]) -> None:
    """Create ``entries`` below ``root``: a name ending in ``/`` is an empty folder, any
    other a small PNG."""
    for entry in entries:
        path = root / entry
        if entry.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (12, 10), (1, 2, 3)).save(path)


@pytest.mark.parametrize(("entries", "message"), [
    (None, r"data does not exist or is not a directory"),
    (("train/",), r"no class folders in .*train"),
    (("train/a/", "train/b/x.png", "val/"), r"class folders without images in .*train: a$"),
    (("train/a/x.png", "val/zebra/y.png"),
     r"val: class folder\(s\) zebra not among the training classes \(a\)$"),
    (("train/a/x.png", "val/"), r"no class folders in .*val"),
    (("train/a/x.png", "val/a/"), r"no images found below .*val/<class>/"),
    (("train/a/x.png",), r"val does not exist; pass .*train itself"),
    (("val/a/x.png",), r"has val/ but no train/"),
])
def test_layout_errors(tmp_path: Path, entries: tuple[str, ...] | None, message: str) -> None:
    root = tmp_path / "data"
    if entries is not None:
        _build(root, entries)
    with pytest.raises(DatasetError, match=message) as caught:
        open_image_stream(root, 16)
    assert "\n" not in str(caught.value)


def test_data_dir_required_and_bad_options(tree: Path) -> None:
    with pytest.raises(DatasetError, match=r"'imagenet' is streamed .*\(--data-dir DIR"):
        open_image_stream(None, 128)
    train = open_image_stream(tree, 16).train
    for kwargs, message in (({"max_images": 0}, "max_images must be >= 1"),
                            ({"batch_size": 0}, "batch_size must be >= 1"),
                            ({"num_workers": -1}, "num_workers must be >= 0")):
        options = {"batch_size": 2, **kwargs}
        with pytest.raises(DatasetError, match=message):
            stream_loader(train, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("loader", ["eval", "train"])
def test_unreadable_image_is_one_line_naming_the_file(tmp_path: Path, workers: int,
                                                      loader: str) -> None:
    """Through the evaluation loader and the training loader alike."""
    from ofa_search.data import train_stream_loader

    root = write_imagenet(tmp_path, train=2, val=1)
    bad = root / "train" / "n02" / "broken.JPEG"
    bad.write_bytes(b"not a jpeg")
    train = open_image_stream(root, 16).train
    with pytest.raises(DatasetError) as caught:
        if loader == "eval":
            _batches(stream_loader(train, batch_size=3, num_workers=workers))
        else:
            list(train_stream_loader(train, batch_size=7, seed=0, epoch=0,
                                     num_workers=workers))
    text = str(caught.value)
    assert text.startswith(f"cannot read image {bad}:") and "\n" not in text
    # the failed loader's workers are stopped at once, not when its iterator is collected
    assert multiprocessing.active_children() == []
