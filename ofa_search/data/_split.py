"""Deterministic, stratified hold-out splits and seed derivation."""

from __future__ import annotations

import numpy as np
import torch

from ofa_search.data._errors import DatasetError


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (e.g. a user seed and an epoch) by ``SeedSequence``.

    Unlike ``seed + epoch``, different tuples give unrelated seeds.
    """
    if any(part < 0 for part in parts):
        raise DatasetError(f"seed parts must be >= 0, got {parts=}")
    state = np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0]
    return int(state) >> 1


def _per_class_quota(counts: torch.Tensor, fraction: float) -> torch.Tensor:
    """How many samples of each class to hold out: largest-remainder rounding of
    ``fraction * counts``, so the total is ``round(fraction * N)`` (less where a class would
    lose its last sample) and every class is within one sample of its exact share."""
    exact = counts.double() * fraction
    quota = exact.floor().long()
    missing = round(float(counts.sum()) * fraction) - int(quota.sum())
    if missing > 0:
        remainders = exact - quota.double()
        # stable descending sort: ties go to the lower class index, deterministically
        order = torch.sort(remainders, descending=True, stable=True).indices
        quota[order[:missing]] += 1
    return torch.minimum(quota, (counts - 1).clamp(min=0))


def stratified_split(
    labels: torch.Tensor, fraction: float, *, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split sample indices into ``(kept, held_out)``, stratified by label and seeded.

    Each class contributes ``fraction`` of its samples to ``held_out`` (within ±1 sample;
    every class keeps at least one sample). The result depends only on ``labels``,
    ``fraction`` and ``seed``; both index tensors are sorted ascending.
    """
    if not 0.0 <= fraction < 1.0:
        raise DatasetError(f"a hold-out fraction must lie in [0, 1), got {fraction=}")
    if labels.ndim != 1:
        raise DatasetError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    generator = torch.Generator().manual_seed(derive_seed(seed))
    classes, counts = torch.unique(labels, return_counts=True)
    quotas = _per_class_quota(counts, fraction)
    held: list[torch.Tensor] = []
    for cls, quota in zip(classes.tolist(), quotas.tolist(), strict=True):
        members = torch.nonzero(labels == cls).flatten()
        picked = torch.randperm(len(members), generator=generator)[:quota]
        held.append(members[picked])
    held_idx = torch.sort(torch.cat(held)).values if held else torch.empty(0, dtype=torch.long)
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[held_idx] = False
    return torch.nonzero(mask).flatten(), held_idx
