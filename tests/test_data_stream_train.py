"""Training over streamed image folders: once-for-all's training transform, per-sample
seeding, seeded sharded epochs, mid-epoch resumption, workers and one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_data_stream import write_imagenet

import ofa_search.data._train_stream as train_stream_module
from ofa_search.data import (
    AUGMENT_SEED_TAG,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetError,
    ImageFolderStream,
    TrainStream,
    derive_seed,
    open_image_stream,
    random_crop_box,
    train_stream_loader,
    train_transform,
)

Batches = list[tuple[torch.Tensor, torch.Tensor]]


@pytest.fixture(scope="module")
def train(tmp_path_factory: pytest.TempPathFactory) -> ImageFolderStream:
    """12 training images (3 classes × 4) of assorted sizes, served at 16 px."""
    return open_image_stream(write_imagenet(tmp_path_factory.mktemp("imagenet")), 16).train


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _normalised(pixels: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.array(pixels)).permute(2, 0, 1).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return (x - mean) / std


def _equal(a: Batches, b: Batches) -> bool:
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb)
                                    for (xa, ya), (xb, yb) in zip(a, b, strict=True))


def test_train_transform_shape_dtype_and_normalisation() -> None:
    # any crop of a flat colour, resized and flipped or not, is that colour normalised
    x = train_transform(Image.new("RGB", (70, 41), (200, 10, 90)), 16, _gen(0))
    assert x.dtype == torch.float32 and x.shape == (3, 16, 16)
    expected = _normalised(np.broadcast_to(np.array([200, 10, 90], np.uint8), (16, 16, 3)))
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-6)
    assert train_transform(Image.new("L", (20, 40), 128), 12, _gen(0)).shape == (3, 12, 12)
    # the box, then the flip draw: the output is the box resized, mirrored when drawn
    pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    state = torch.get_rng_state()
    flips = set()
    for seed in range(12):
        generator = _gen(seed)
        left, top, w, h = random_crop_box(64, 48, generator)
        flipped = bool(torch.rand(1, generator=generator) < 0.5)
        crop = image.crop((left, top, left + w, top + h)).resize(
            (16, 16), Image.Resampling.BILINEAR)
        manual = _normalised(np.array(crop))
        out = train_transform(image, 16, _gen(seed))
        torch.testing.assert_close(out, manual.flip(-1) if flipped else manual,
                                   rtol=0, atol=1e-6)
        assert torch.equal(out, train_transform(image, 16, _gen(seed)))
        flips.add(flipped)
    assert flips == {True, False}
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is untouched


def test_crop_box_stays_in_bounds_with_scale_and_ratio() -> None:
    areas, ratios = [], []
    for seed in range(300):
        left, top, w, h = random_crop_box(400, 300, _gen(seed))
        assert 0 <= left and left + w <= 400 and 0 <= top and top + h <= 300
        areas.append(w * h / (400 * 300))
        ratios.append(w / h)
    # rounding w and h to pixels moves the area and ratio slightly off their ranges
    assert 0.075 < min(areas) < 0.2 and 0.8 < max(areas) <= 1.0
    assert 0.73 < min(ratios) < 0.8 and 1.25 < max(ratios) < 1.36


def test_crop_box_falls_back_to_a_centre_crop() -> None:
    # every attempt fails on extreme aspect ratios (the box's short side is >= 5 px); the
    # fallback is the widest (tallest) allowed box, centred, after all 10 attempts' draws
    for size, box in (((100, 4), (47, 0, 5, 4)), ((4, 100), (0, 47, 4, 5))):
        for seed in range(5):
            generator = _gen(seed)
            assert random_crop_box(*size, generator) == box
            reference = _gen(seed)
            torch.empty(20).uniform_(generator=reference)
            assert torch.equal(generator.get_state(), reference.get_state())
    # an aspect ratio in range falls back to the whole image (here: boxes never fit)
    assert random_crop_box(40, 30, _gen(0), scale=(2.0, 2.0)) == (0, 0, 40, 30)
    # the transform crops that box: a left/right split image keeps its centre
    pixels = np.zeros((4, 100, 3), np.uint8)
    pixels[:, 50:] = 255
    x = train_transform(Image.fromarray(pixels), 8, _gen(0))
    assert x.shape == (3, 8, 8) and x.min() < 0 < x.max()
    with pytest.raises(DatasetError, match="ratio must be"):
        random_crop_box(10, 10, _gen(0), ratio=(2.0, 1.0))


def test_train_stream_seeds_each_sample_by_seed_epoch_and_index(
        train: ImageFolderStream) -> None:
    data = TrainStream(train, seed=7)
    assert len(data) == 12 and data.resolution == 16 and data.class_names == train.class_names
    x, label = data[5]
    assert label == int(train.labels[5])
    assert data.sample_seed(5) == derive_seed(7, 0, 5, AUGMENT_SEED_TAG)
    with Image.open(train.path(5)) as image:
        expected = train_transform(image, 16, _gen(derive_seed(7, 0, 5, AUGMENT_SEED_TAG)))
    assert torch.equal(x, expected)
    assert torch.equal(data[5][0], x)
    data.set_epoch(1)
    assert not torch.equal(data[5][0], x)
    with pytest.raises(IndexError):
        data[-1]
    with pytest.raises(DatasetError, match="epoch must be an int >= 0"):
        data.set_epoch(-1)


def test_epoch_is_seeded_and_independent_of_workers(train: ImageFolderStream) -> None:
    state = torch.get_rng_state()
    loader = train_stream_loader(train, batch_size=4, seed=5, epoch=0, num_workers=0)
    assert len(loader) == 3 and loader.pin_memory is False
    batches = list(loader)
    assert [tuple(x.shape) for x, _ in batches] == [(4, 3, 16, 16)] * 3
    assert all(x.dtype == torch.float32 and y.dtype == torch.int64 for x, y in batches)
    order = list(loader.sampler)
    assert sorted(order) == list(range(12))
    # every batch is its samples as TrainStream serves them, whatever their position
    reference = TrainStream(train, 5, epoch=0)
    for b, (x, y) in enumerate(batches):
        chunk = order[4 * b: 4 * b + 4]
        assert torch.equal(x, torch.stack([reference[i][0] for i in chunk]))
        assert y.tolist() == [int(train.labels[i]) for i in chunk]
    workers = train_stream_loader(train, batch_size=4, seed=5, epoch=0, num_workers=2)
    assert _equal(list(workers), batches)
    assert _equal(list(loader), batches)  # iterating again repeats the epoch
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is untouched
    # another epoch: another order and other crops of the same samples
    other = train_stream_loader(train, batch_size=4, seed=5, epoch=1, num_workers=0)
    assert list(other.sampler) != order
    x1, _ = TrainStream(train, 5, epoch=1)[order[0]]
    assert not torch.equal(x1, batches[0][0][0])
    # a TrainStream with the same seed serves the same epoch, whatever its own epoch
    stream = TrainStream(train, 5, epoch=9)
    assert _equal(list(train_stream_loader(stream, batch_size=4, seed=5, epoch=0,
                                           num_workers=0)), batches)


def test_start_batch_resumes_mid_epoch_without_decoding_the_skipped(
        train: ImageFolderStream, monkeypatch: pytest.MonkeyPatch) -> None:
    full = list(train_stream_loader(train, batch_size=3, seed=2, epoch=4, num_workers=0))
    assert len(full) == 4
    decoded: list[Path] = []
    real_read = train_stream_module.read_rgb

    def counting_read(path: Path) -> Image.Image:
        decoded.append(path)
        return real_read(path)

    monkeypatch.setattr(train_stream_module, "read_rgb", counting_read)
    tail = train_stream_loader(train, batch_size=3, seed=2, epoch=4, start_batch=3,
                               num_workers=0)
    assert _equal(list(tail), full[3:]) and len(decoded) == 3
    for k in (0, 1, 4):
        resumed = train_stream_loader(train, batch_size=3, seed=2, epoch=4, start_batch=k,
                                      num_workers=0)
        assert len(resumed) == 4 - k
    with pytest.raises(DatasetError, match=r"start_batch=5 is past the end of the epoch"):
        train_stream_loader(train, batch_size=3, seed=2, epoch=4, start_batch=5)


def test_rank_shards_are_disjoint_and_cover_the_epoch(train: ImageFolderStream) -> None:
    def shard(rank: int, world_size: int, drop_last: bool = True) -> list[int]:
        loader = train_stream_loader(train, batch_size=2, seed=1, epoch=3, rank=rank,
                                     world_size=world_size, drop_last=drop_last,
                                     num_workers=0)
        return list(loader.sampler)

    epoch = shard(0, 1)
    halves = [shard(r, 2) for r in range(2)]
    assert [len(h) for h in halves] == [6, 6] and not set(halves[0]) & set(halves[1])
    assert sorted(halves[0] + halves[1]) == list(range(12))
    assert halves[0] == epoch[0::2] and halves[1] == epoch[1::2]
    fifths = [shard(r, 5) for r in range(5)]  # 12 = 5·2 + 2: the last 2 of the order dropped
    assert [len(f) for f in fifths] == [2] * 5
    assert sorted(i for f in fifths for i in f) == sorted(epoch[:10])
    uneven = [shard(r, 5, drop_last=False) for r in range(5)]
    assert [len(u) for u in uneven] == [3, 3, 2, 2, 2]
    assert sorted(i for u in uneven for i in u) == list(range(12))
    # a sample looks the same whichever rank serves it
    x, _ = next(iter(train_stream_loader(train, batch_size=2, seed=1, epoch=3, rank=1,
                                         world_size=2, num_workers=0)))
    assert torch.equal(x[0], TrainStream(train, 1, epoch=3)[halves[1][0]][0])


def test_bad_options(train: ImageFolderStream) -> None:
    for kwargs, message in (({"batch_size": 0}, "batch_size must be >= 1"),
                            ({"num_workers": -1}, "num_workers must be >= 0"),
                            ({"epoch": -1}, "epoch must be an int >= 0"),
                            ({"start_batch": -1}, "start_batch must be an int >= 0"),
                            ({"rank": 2, "world_size": 2}, "need 0 <= rank < world_size")):
        options = {"batch_size": 2, "seed": 0, "epoch": 0, **kwargs}
        with pytest.raises(DatasetError, match=message):
            train_stream_loader(train, **options)  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match=r"built with seed=1, but the loader was asked"):
        train_stream_loader(TrainStream(train, 1), batch_size=2, seed=0, epoch=0)
