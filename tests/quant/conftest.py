"""Fixtures of the int8 export tests: digits batches and small calibrated int8 subnets
(session-scoped: building and calibrating them is the slow part)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from quant_helpers import INT8_ARCH, MIXED_ARCH, RESOLUTION, calibrated_net

from ofa_search.data import DatasetSplits, iterate_batches, load_dataset
from ofa_search.nn import StaticSubnet


@pytest.fixture(scope="session")
def torch_one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits(torch_one_thread: None) -> DatasetSplits:
    return load_dataset("digits", in_channels=1, resolution=RESOLUTION)


@pytest.fixture(scope="session")
def train_batches(digits: DatasetSplits) -> list[np.ndarray]:
    gen = torch.Generator().manual_seed(0)
    batches = iterate_batches(digits.train, 64, shuffle=True, generator=gen,
                              resolution=RESOLUTION)
    return [x.numpy() for x, _ in itertools.islice(batches, 4)]


@pytest.fixture(scope="session")
def test_images(digits: DatasetSplits) -> torch.Tensor:
    x, _ = next(iterate_batches(digits.test, 48, shuffle=False, resolution=RESOLUTION))
    return x


@pytest.fixture(scope="session")
def int8_net(train_batches: list[np.ndarray]) -> StaticSubnet:
    return calibrated_net(INT8_ARCH, train_batches)


@pytest.fixture(scope="session")
def mixed_net(train_batches: list[np.ndarray]) -> StaticSubnet:
    return calibrated_net(MIXED_ARCH, train_batches, seed=1)
