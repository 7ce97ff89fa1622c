"""Fast in-memory batch iteration, and sharding for multi-process training.

:func:`iterate_batches` slices whole batches out of a split's tensors, far faster than a
``DataLoader`` over per-sample ``__getitem__`` for datasets of this size. For code that
wants a ``DataLoader`` anyway, :class:`ShardSampler` gives every rank a disjoint shard of
each epoch, like ``torch.utils.data.DistributedSampler``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from ofa_search.data._errors import DatasetError
from ofa_search.data._split import derive_seed
from ofa_search.data._splits import ImageSplit


def _check_shard(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise DatasetError(f"need 0 <= rank < world_size, got {rank=}, {world_size=}")


def shard_indices(
    num_samples: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
) -> torch.Tensor:
    """This rank's sample indices for one epoch.

    The epoch order (a permutation drawn from ``generator`` when ``shuffle``, else
    ``0 … N-1``) is dealt round-robin to ``world_size`` ranks, so the shards are disjoint
    and together cover the epoch. All ranks must draw the same order: pass generators in
    the same state. With ``drop_last`` the last ``N mod world_size`` samples of the order are
    dropped so that every shard has the same length; otherwise lengths differ by at most one.
    """
    _check_shard(rank, world_size)
    if shuffle:
        if generator is None:
            raise DatasetError("shuffle=True needs an explicit torch.Generator")
        order = torch.randperm(num_samples, generator=generator)
    else:
        order = torch.arange(num_samples)
    if drop_last:
        order = order[: num_samples - num_samples % world_size]
    return order[rank::world_size]


def _augment_generator(generator: torch.Generator, rank: int) -> torch.Generator:
    """A generator for this rank's augmentation, forked from ``generator`` with one draw
    (so ranks that share ``generator``'s state stay in step but augment differently)."""
    draw = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator().manual_seed(derive_seed(draw, rank))


def iterate_batches(
    split: ImageSplit,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    augment: bool = False,
    resolution: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of ``(x float32 [B, C, R, R], y int64 [B])`` batches from ``split``.

    Args:
        split: the samples.
        batch_size: samples per batch; the last one is smaller unless ``drop_last``.
        shuffle: visit the samples in an order drawn from ``generator``.
        generator: the source of all randomness (order and augmentation); required when
            ``shuffle`` or ``augment``. It is advanced when this function is called, by a
            fixed amount per epoch, not while batches are consumed.
        drop_last: drop the last incomplete batch (and, with ``world_size > 1``, the
            ``N mod world_size`` samples that would make shards uneven). Use it for DDP
            training so that every rank takes the same number of steps.
        augment: apply the split's training augmentation.
        resolution: output side in pixels; defaults to the split's.
        rank, world_size: serve only this rank's shard (see :func:`shard_indices`); every
            rank must pass a generator in the same state.
    """
    if batch_size < 1:
        raise DatasetError(f"batch_size must be >= 1, got {batch_size=}")
    if augment and generator is None:
        raise DatasetError("augment=True needs an explicit torch.Generator")
    order = shard_indices(
        len(split), shuffle=shuffle, generator=generator, rank=rank, world_size=world_size,
        drop_last=drop_last,
    )
    aug_gen = _augment_generator(generator, rank) if augment and generator is not None else None
    return _batches(split, order, batch_size, drop_last, aug_gen, resolution)


def _batches(
    split: ImageSplit,
    order: torch.Tensor,
    batch_size: int,
    drop_last: bool,
    aug_gen: torch.Generator | None,
    resolution: int | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        if drop_last and len(chunk) < batch_size:
            return
        yield split.batch(chunk, augment=aug_gen is not None, generator=aug_gen,
                          resolution=resolution)


class ShardSampler(Sampler[int]):
    """A ``DataLoader`` sampler that gives rank ``rank`` of ``world_size`` a disjoint shard
    of each epoch; call :meth:`set_epoch` before each epoch for a fresh order.

    The order of epoch ``e`` is drawn from a generator seeded by ``(seed, e)`` that the
    sampler owns, so all ranks agree on it without sharing state.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        _check_shard(rank, world_size)
        if num_samples < 0:
            raise DatasetError(f"num_samples must be >= 0, got {num_samples=}")
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the order of epoch ``epoch``."""
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        return shard_indices(
            self.num_samples, shuffle=self.shuffle, generator=generator, rank=self.rank,
            world_size=self.world_size, drop_last=self.drop_last,
        )

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices().tolist())

    def __len__(self) -> int:
        usable = self.num_samples
        if self.drop_last:
            usable -= usable % self.world_size
        return len(range(self.rank, usable, self.world_size))
