"""Tests of the data layer: registry, splits, IDX parsing, image folders, transforms,
batch iteration and sharding. All on real data (digits, PNG trees and IDX files written
here; the installed Fashion-MNIST when present)."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import DataLoader

from ofa_search.data import (
    FASHION_MNIST_DIR,
    AugmentPolicy,
    DatasetError,
    DatasetSplits,
    ImageSplit,
    ShardSampler,
    augment_batch,
    available_datasets,
    iterate_batches,
    load_dataset,
    parse_idx,
    resize_batch,
    shard_indices,
    stratified_split,
)
from ofa_search.errors import OfaSearchError

# ---------------------------------------------------------------------------- helpers


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """An IDX payload written by hand (independently of the parser under test)."""
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim)
    dims = struct.pack(f">{array.ndim}I", *array.shape)
    return header + dims + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_fashion(directory: Path, *, n_train: int = 50, n_test: int = 20,
                  gz: tuple[bool, bool, bool, bool] = (True, False, True, False)) -> None:
    """Four tiny Fashion-MNIST-shaped IDX files (5 classes' worth of each label)."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for (stem, array), compress in zip(arrays.items(), gz, strict=True):
        payload = idx_bytes(array)
        if compress:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(payload))
        else:
            (directory / stem).write_bytes(payload)


def write_png_tree(root: Path, layout: dict[str, dict[str, int]],
                   size: tuple[int, int] = (12, 10)) -> None:
    """``root/<split>/<class>/<i>.png`` RGB images whose red level encodes the class."""
    for split, classes in layout.items():
        for class_index, (name, count) in enumerate(sorted(classes.items())):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = np.zeros((size[1], size[0], 3), dtype=np.uint8)
                pixels[..., 0] = 40 + 100 * class_index
                pixels[..., 1] = i * 10
                Image.fromarray(pixels).save(folder / f"{i}.png")


def numbered_split(num: int, channels: int = 1, side: int = 4) -> ImageSplit:
    """A split whose label is the sample index, to track samples through loaders."""
    images = (torch.arange(num).view(-1, 1, 1, 1) % 256).to(torch.uint8)
    return ImageSplit(
        images=images.expand(-1, channels, side, side).contiguous(),
        labels=torch.arange(num), mean=(0.5,) * channels, std=(0.25,) * channels,
        resolution=side,
    )


@pytest.fixture(scope="module")
def digits() -> DatasetSplits:
    return load_dataset("digits")


# ---------------------------------------------------------------------------- registry


def test_registry_lists_the_three_datasets() -> None:
    assert available_datasets() == ("digits", "fashion-mnist", "imagefolder")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "cifar10"}, "unknown dataset 'cifar10'; known datasets: digits, fashion-mnist"),
        ({"name": "digits", "val_fraction": 1.0}, "val_fraction must lie in [0, 1)"),
        ({"name": "digits", "val_fraction": -0.1}, "val_fraction must lie in [0, 1)"),
        ({"name": "digits", "in_channels": 2}, "in_channels must be 1 (grey) or 3 (RGB)"),
        ({"name": "digits", "resolution": 0}, "resolution must be a positive int"),
        ({"name": "digits", "data_dir": "/tmp"}, "'digits' is built in and takes no data_dir"),
        ({"name": "digits", "image_size": 8}, "takes no image_size"),
        ({"name": "imagefolder"}, "'imagefolder' needs data_dir (--data-dir)"),
    ],
)
def test_invalid_requests_raise_dataset_error(kwargs: dict, message: str) -> None:
    options = {key: value for key, value in kwargs.items() if key != "name"}
    with pytest.raises(DatasetError) as info:
        load_dataset(kwargs["name"], **options)
    assert message in str(info.value)
    assert isinstance(info.value, OfaSearchError) and isinstance(info.value, ValueError)


# ---------------------------------------------------------------------------- digits


def test_digits_shapes_classes_and_split_sizes(digits: DatasetSplits) -> None:
    assert digits.num_classes == 10 and digits.class_names == tuple("0123456789")
    assert digits.in_channels == 1 and digits.native_size == (8, 8)
    assert (len(digits.train), len(digits.val), len(digits.test)) == (1294, 144, 359)
    x, y = digits.train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and 0 <= y < 10
    for split in (digits.train, digits.val, digits.test):
        assert set(split.labels.tolist()) == set(range(10))
    assert digits.augmentation.flip is False  # digits are not mirror-invariant


def test_digits_splits_partition_the_dataset(digits: DatasetSplits) -> None:
    from sklearn.datasets import load_digits

    rows = [split.images.reshape(len(split), -1) for split in (digits.train, digits.val,
                                                              digits.test)]
    ours = sorted(tuple(row) for row in torch.cat(rows).tolist())
    original = np.rint(load_digits().images.reshape(-1, 64) * 255 / 16).astype(int)
    assert ours == sorted(tuple(row) for row in original.tolist())


def test_split_is_deterministic_per_seed_and_test_set_is_fixed(digits: DatasetSplits) -> None:
    again = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    assert torch.equal(again.val.images, digits.val.images)
    assert torch.equal(again.train.labels, digits.train.labels)
    assert not torch.equal(other.val.images, digits.val.images)
    assert torch.equal(other.test.images, digits.test.images)  # reporting set never moves


def test_val_split_is_stratified_within_one_per_class(digits: DatasetSplits) -> None:
    pool = torch.cat([digits.train.labels, digits.val.labels])
    pool_counts = torch.bincount(pool, minlength=10).double()
    val_counts = torch.bincount(digits.val.labels, minlength=10).double()
    assert torch.all((val_counts - 0.1 * pool_counts).abs() <= 1.0)


@settings(max_examples=40, deadline=None)
@given(
    labels=st.lists(st.integers(0, 5), min_size=1, max_size=200),
    fraction=st.floats(0.0, 0.9),
    seed=st.integers(0, 2**32),
)
def test_stratified_split_properties(labels: list[int], fraction: float, seed: int) -> None:
    tensor = torch.tensor(labels)
    kept, held = stratified_split(tensor, fraction, seed=seed)
    assert sorted(kept.tolist() + held.tolist()) == list(range(len(labels)))
    for cls in set(labels):
        total = labels.count(cls)
        in_held = int((tensor[held] == cls).sum())
        assert abs(in_held - fraction * total) <= 1.0 and in_held < total
    again = stratified_split(tensor, fraction, seed=seed)
    assert torch.equal(again[1], held)


def test_digits_as_rgb_repeats_the_grey_channel() -> None:
    rgb = load_dataset("digits", in_channels=3, resolution=16)
    assert rgb.in_channels == 3 and len(rgb.mean) == 3
    x, _ = rgb.train.batch(torch.arange(4))
    assert x.shape == (4, 3, 16, 16)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])


def test_normalised_train_data_has_zero_mean_unit_std(digits: DatasetSplits) -> None:
    x, _ = digits.train.batch(torch.arange(len(digits.train)))
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1.0) < 1e-3


def test_with_resolution_and_describe(digits: DatasetSplits) -> None:
    big = digits.with_resolution(28)
    assert big.resolution == 28 and big.test[0][0].shape == (1, 28, 28)
    assert big.train.images.data_ptr() == digits.train.images.data_ptr()
    meta = json.loads(json.dumps(big.describe()))
    assert meta["sizes"] == {"train": 1294, "val": 144, "test": 359}
    assert meta["resolution"] == 28 and meta["native_size"] == [8, 8]
    with pytest.raises(DatasetError, match="unknown split 'dev'"):
        digits.split("dev")


# ---------------------------------------------------------------------------- IDX files


@pytest.mark.parametrize("type_code", [0x08, 0x0B, 0x0D])
def test_parse_idx_round_trips(type_code: int) -> None:
    dtype = {0x08: np.uint8, 0x0B: np.int16, 0x0D: np.float32}[type_code]
    signed = np.arange(24).reshape(2, 3, 4) - (0 if type_code == 0x08 else 5)
    array = signed.astype(dtype)
    parsed = parse_idx(idx_bytes(array, type_code))
    assert parsed.dtype == dtype and np.array_equal(parsed, array)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x00\x00", "not an IDX file (only 2 bytes)"),
        (b"\x1f\x8b\x08\x03" + bytes(8), "not an IDX file (magic number 1f8b0803)"),
        (b"\x00\x00\x07\x01" + bytes(8), "unknown IDX type code 0x07"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated IDX header"),
        (idx_bytes(np.zeros((3, 2, 2), np.uint8))[:-1], "IDX file truncated"),
        (idx_bytes(np.zeros((3, 2, 2), np.uint8)) + b"\x00", "IDX file has trailing bytes"),
    ],
)
def test_parse_idx_rejects_malformed_payloads(payload: bytes, message: str) -> None:
    with pytest.raises(DatasetError, match=r"^x\.bin: ") as info:
        parse_idx(payload, source="x.bin")
    assert message in str(info.value)


def test_fashion_mnist_from_raw_and_gz_idx_files(tmp_path: Path) -> None:
    write_fashion(tmp_path)
    data = load_dataset("fashion-mnist", data_dir=tmp_path, seed=3)
    assert (len(data.train), len(data.val), len(data.test)) == (45, 5, 20)
    assert data.num_classes == 10 and data.class_names[-1] == "Ankle boot"
    assert data.native_size == (28, 28) and data.train.images.shape[1:] == (1, 28, 28)
    assert data.augmentation.flip and data.augmentation.pad in (2, 3, 4)
    raw = np.frombuffer(gzip.decompress((tmp_path / "t10k-images-idx3-ubyte.gz")
                                        .read_bytes())[16:], np.uint8)
    assert np.array_equal(data.test.images.numpy().reshape(-1), raw)


def test_fashion_mnist_truncated_file_error_names_it(tmp_path: Path) -> None:
    write_fashion(tmp_path, gz=(False,) * 4)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DatasetError, match="truncated") as info:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    assert str(path) in str(info.value)


def test_fashion_mnist_truncated_gzip_error(tmp_path: Path) -> None:
    write_fashion(tmp_path, gz=(True,) * 4)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(DatasetError, match="corrupt or truncated gzip"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_fashion_mnist_wrong_file_error(tmp_path: Path) -> None:
    write_fashion(tmp_path, gz=(False,) * 4)
    labels = (tmp_path / "train-labels-idx1-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(labels)  # labels where images belong
    with pytest.raises(DatasetError, match="1 dimensions, expected 3"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_fashion_mnist_missing_files_error_explains_how_to_get_them(tmp_path: Path) -> None:
    write_fashion(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError) as info:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    text = str(info.value)
    assert "t10k-labels-idx1-ubyte[.gz]" in text and "train-images" not in text
    assert str(tmp_path) in text
    assert "apt-get install dataset-fashion-mnist" in text and "--data-dir" in text


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(),
                    reason=f"{FASHION_MNIST_DIR} absent (apt-get install dataset-fashion-mnist)")
def test_installed_fashion_mnist_loads() -> None:
    data = load_dataset("fashion-mnist")
    assert (len(data.train), len(data.val), len(data.test)) == (54000, 6000, 10000)
    assert data.num_classes == 10 and data.in_channels == 1
    assert torch.equal(torch.bincount(data.val.labels), torch.full((10,), 600))
    assert abs(data.mean[0] - 0.286) < 0.01 and abs(data.std[0] - 0.353) < 0.01


# ---------------------------------------------------------------------------- image folders


def test_imagefolder_train_and_val_dirs(tmp_path: Path) -> None:
    write_png_tree(tmp_path, {"train": {"dog": 10, "cat": 10}, "val": {"cat": 2, "dog": 3}})
    data = load_dataset("imagefolder", data_dir=tmp_path, val_fraction=0.2)
    assert data.class_names == ("cat", "dog") and data.num_classes == 2
    assert data.in_channels == 3 and data.native_size == (10, 12)
    # val/ is the reported test set; val is held out of train/
    assert (len(data.train), len(data.val), len(data.test)) == (16, 4, 5)
    assert data.test.labels.tolist() == [0, 0, 1, 1, 1]
    red = data.train.images[:, 0, 0, 0]
    assert torch.equal(red, 40 + 100 * data.train.labels.to(torch.uint8))
    assert data.augmentation.kind == "random_resized_crop" and data.augmentation.flip


def test_imagefolder_with_test_dir_grey_and_resized(tmp_path: Path) -> None:
    write_png_tree(tmp_path, {"train": {"a": 4, "b": 4}, "val": {"a": 1, "b": 1},
                              "test": {"a": 2, "b": 2}})
    data = load_dataset("imagefolder", data_dir=tmp_path, in_channels=1, image_size=8,
                        resolution=6)
    assert (len(data.train), len(data.val), len(data.test)) == (8, 2, 4)
    assert data.train.images.shape == (8, 1, 8, 8) and data.native_size == (8, 8)
    assert data.train[0][0].shape == (1, 6, 6)


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="train is not a directory"):
        load_dataset("imagefolder", data_dir=tmp_path)
    write_png_tree(tmp_path, {"train": {"a": 2}, "val": {"zebra": 1}})
    with pytest.raises(DatasetError, match="class 'zebra' is not among the training"):
        load_dataset("imagefolder", data_dir=tmp_path)
    other = tmp_path / "sizes"
    write_png_tree(other, {"train": {"a": 2}})
    write_png_tree(other, {"train": {"b": 2}}, size=(9, 9))
    with pytest.raises(DatasetError, match=r"images differ in size.*pass image_size"):
        load_dataset("imagefolder", data_dir=other)
    assert load_dataset("imagefolder", data_dir=other, image_size=9).native_size == (9, 9)
    (other / "train" / "a" / "0.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"cannot read image .*0\.png"):
        load_dataset("imagefolder", data_dir=other, image_size=9)


# ---------------------------------------------------------------------------- transforms


@pytest.mark.parametrize(
    "policy",
    [
        AugmentPolicy(),
        AugmentPolicy(kind="shift", pad=1),
        AugmentPolicy(kind="shift", pad=2, flip=True),
        AugmentPolicy(kind="random_resized_crop", flip=True),
        AugmentPolicy(erase=0.5),
        AugmentPolicy(kind="random_resized_crop", flip=True, erase=1.0),
    ],
)
@pytest.mark.parametrize("resolution", [8, 12])
def test_augmentation_is_deterministic_and_keeps_shape(policy: AugmentPolicy,
                                                       resolution: int) -> None:
    x = torch.rand(16, 3, 12, 12, generator=torch.Generator().manual_seed(5))
    first = augment_batch(x, policy, generator=torch.Generator().manual_seed(1),
                          resolution=resolution)
    again = augment_batch(x, policy, generator=torch.Generator().manual_seed(1),
                          resolution=resolution)
    other = augment_batch(x, policy, generator=torch.Generator().manual_seed(2),
                          resolution=resolution)
    assert first.shape == (16, 3, resolution, resolution) and first.dtype == torch.float32
    assert torch.equal(first, again)
    assert torch.equal(first, other) == (policy == AugmentPolicy())


def test_random_erasing_fills_one_box_per_erased_image() -> None:
    x = torch.zeros(400, 3, 20, 20)
    out = augment_batch(x, AugmentPolicy(erase=1.0), generator=torch.Generator().manual_seed(0),
                        resolution=20)
    for image in out:
        box = image[0] != 0
        assert torch.equal(box.expand(3, -1, -1), image != 0)  # the same box in every channel
        rows, cols = box.any(1).nonzero().flatten(), box.any(0).nonzero().flatten()
        # one filled rectangle of 2-40 % of the image (up to the rounding of its sides)
        assert int(box.sum()) == len(rows) * len(cols)
        assert torch.equal(rows, torch.arange(int(rows[0]), int(rows[-1]) + 1))
        assert torch.equal(cols, torch.arange(int(cols[0]), int(cols[-1]) + 1))
        assert 0.01 <= float(box.float().mean()) <= 0.45
        assert float(image.min()) >= 0 and float(image.max()) <= 1  # uniform noise in [0, 1]
    half = augment_batch(x, AugmentPolicy(erase=0.5), generator=torch.Generator().manual_seed(0),
                         resolution=20)
    assert 0.4 < float((half != 0).flatten(1).any(1).float().mean()) < 0.6
    with pytest.raises(DatasetError, match="erase must lie in"):
        AugmentPolicy(erase=1.5)


def test_shift_translates_by_at_most_pad_pixels() -> None:
    x = torch.rand(32, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    out = augment_batch(x, AugmentPolicy(kind="shift", pad=2),
                        generator=torch.Generator().manual_seed(0), resolution=6)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for sample, shifted in zip(padded, out, strict=True):
        windows = [sample[:, dy:dy + 6, dx:dx + 6] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(shifted, window) for window in windows)


def test_resize_batch_shapes() -> None:
    x = torch.rand(5, 3, 28, 28)
    assert resize_batch(x, 28) is x
    assert resize_batch(x, 16).shape == (5, 3, 16, 16)
    assert resize_batch(x, 40).shape == (5, 3, 40, 40)
    assert resize_batch(torch.rand(2, 1, 8, 10), 8).shape == (2, 1, 8, 8)
    constant = torch.full((1, 1, 28, 28), 0.3)
    assert torch.allclose(resize_batch(constant, 12), torch.full((1, 1, 12, 12), 0.3))
    with pytest.raises(DatasetError, match="needs a \\[B, C, H, W\\] batch"):
        resize_batch(torch.rand(3, 8, 8), 4)
    with pytest.raises(DatasetError, match="resolution must be a positive int"):
        resize_batch(x, -1)


# ---------------------------------------------------------------------------- loaders


@pytest.mark.parametrize("shuffle", [False, True])
def test_loader_covers_every_sample_once_per_epoch(shuffle: bool) -> None:
    split = numbered_split(103)
    batches = list(iterate_batches(split, 10, shuffle=shuffle,
                                   generator=torch.Generator().manual_seed(0)))
    assert [len(y) for _, y in batches] == [10] * 10 + [3]
    seen = torch.cat([y for _, y in batches])
    assert sorted(seen.tolist()) == list(range(103))
    assert (seen.tolist() == list(range(103))) != shuffle
    x, y = batches[0]
    assert x.shape == (10, 1, 4, 4) and x.dtype == torch.float32 and y.dtype == torch.int64
    dropped = list(iterate_batches(split, 10, shuffle=False, drop_last=True))
    assert len(dropped) == 10


def test_loader_is_deterministic_and_needs_a_generator(digits: DatasetSplits) -> None:
    def epoch(seed: int) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        return [x for x, _ in iterate_batches(digits.train, 64, shuffle=True, generator=gen,
                                              augment=True, resolution=12)]

    first, again, other = epoch(0), epoch(0), epoch(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])
    assert first[0].shape == (64, 1, 12, 12)
    with pytest.raises(DatasetError, match=r"shuffle=True needs an explicit torch\.Generator"):
        iterate_batches(digits.train, 8, shuffle=True)
    with pytest.raises(DatasetError, match=r"augment=True needs an explicit torch\.Generator"):
        iterate_batches(digits.train, 8, shuffle=False, augment=True)
    with pytest.raises(DatasetError, match="batch_size must be >= 1"):
        iterate_batches(digits.train, 0, shuffle=False)


@pytest.mark.parametrize("drop_last", [False, True])
def test_shards_are_disjoint_across_ranks(drop_last: bool) -> None:
    split, world = numbered_split(103), 3
    shards = []
    for rank in range(world):
        gen = torch.Generator().manual_seed(7)  # every rank in the same state
        labels = [y for _, y in iterate_batches(split, 8, shuffle=True, generator=gen,
                                                rank=rank, world_size=world,
                                                drop_last=drop_last)]
        shards.append(set(torch.cat(labels).tolist()))
    assert all(not (a & b) for i, a in enumerate(shards) for b in shards[i + 1:])
    union = set().union(*shards)
    if drop_last:
        assert [len(shard) for shard in shards] == [32, 32, 32]  # 34 each, last batch dropped
    else:
        assert union == set(range(103))
    with pytest.raises(DatasetError, match="need 0 <= rank < world_size"):
        shard_indices(10, shuffle=False, rank=3, world_size=3)


def test_ranks_augment_differently_but_stay_in_step(digits: DatasetSplits) -> None:
    outputs, states = [], []
    for rank in range(2):
        gen = torch.Generator().manual_seed(0)
        batches = iterate_batches(digits.train, 32, shuffle=False, generator=gen,
                                  augment=True, rank=rank, world_size=2)
        outputs.append(next(batches)[0])
        states.append(gen.get_state())
    assert torch.equal(states[0], states[1])
    assert not torch.equal(outputs[0], outputs[1])


def test_split_works_with_dataloader_and_shard_sampler(digits: DatasetSplits) -> None:
    samplers = [ShardSampler(len(digits.val), seed=4, rank=r, world_size=2, drop_last=True)
                for r in range(2)]
    assert [len(s) for s in samplers] == [72, 72]
    shards = [set(iter(s)) for s in samplers]
    assert not shards[0] & shards[1] and len(shards[0] | shards[1]) == 144
    first_order = list(samplers[0])
    samplers[0].set_epoch(1)
    assert list(samplers[0]) != first_order
    loader = DataLoader(digits.val, batch_size=16, sampler=samplers[1])
    x, y = next(iter(loader))
    assert x.shape == (16, 1, 8, 8) and y.dtype == torch.int64
    expected, _ = digits.val.batch(torch.tensor(list(samplers[1])[:16]))
    assert torch.allclose(x, expected)
