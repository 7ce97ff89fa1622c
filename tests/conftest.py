from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``scripts/test.sh`` runs one worker per core), each worker and
    the processes it starts compute on one thread: OpenMP pools spin while they wait, and
    two workers with two threads each on two cores ran float64 convolutions 30x slower."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for the test (much faster than two on a shared 2-core machine),
    restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
