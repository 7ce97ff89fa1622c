"""Shared set-up of the binary tests: one thread everywhere (a shared 2-core machine)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

os.environ.setdefault("TVM_NUM_THREADS", "1")  # before TVM starts its thread pool


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
