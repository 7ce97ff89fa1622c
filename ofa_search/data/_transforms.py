"""Batch transforms on float images in ``[0, 1]``: resize, augment, normalise.

All randomness comes from an explicit ``torch.Generator``; the same generator state and
input give the same output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from ofa_search.data._errors import DatasetError

AugmentKind = Literal["none", "shift", "random_resized_crop"]


@dataclass(frozen=True, kw_only=True)
class AugmentPolicy:
    """A dataset's training augmentation.

    Attributes:
        kind: ``"shift"`` — zero-pad by ``pad`` pixels and crop back at a random offset
            (a random translation by up to ``pad`` pixels each way), at native size;
            ``"random_resized_crop"`` — a random box of ``min_area``–100 % of the image
            with aspect ratio in ``[3/4, 4/3]``, resized straight to the output resolution
            (bilinear, one ``grid_sample`` for the whole batch); ``"none"``.
        pad: maximal shift in pixels (``"shift"`` only).
        flip: mirror left–right with probability 1/2.
        min_area: smallest crop area as a fraction of the image (``"random_resized_crop"``).
        erase: probability of random erasing, applied last, at the output resolution: a
            box of 2–40 % of the image with aspect ratio in ``[0.3, 1/0.3]`` is filled with
            uniform noise in ``[0, 1]`` (Zhong et al., "Random Erasing Data Augmentation",
            AAAI 2020, arXiv:1708.04896: their default setting, with ``erase=0.5``, which
            took a WRN-28-10 on Fashion-MNIST from 4.01 % to 3.65 % top-1 error). A box
            wider or taller than the image is clipped to it.
    """

    kind: AugmentKind = "none"
    pad: int = 0
    flip: bool = False
    min_area: float = 0.25
    erase: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("none", "shift", "random_resized_crop"):
            raise DatasetError(f"unknown augmentation kind {self.kind!r}")
        if self.pad < 0:
            raise DatasetError(f"pad must be >= 0, got {self.pad=}")
        if not 0.0 < self.min_area <= 1.0:
            raise DatasetError(f"min_area must lie in (0, 1], got {self.min_area=}")
        if not 0.0 <= self.erase <= 1.0:
            raise DatasetError(f"erase must lie in [0, 1], got {self.erase=}")


def check_resolution(resolution: int) -> int:
    """``resolution`` if it is a positive int, else a :class:`DatasetError`."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise DatasetError(f"resolution must be a positive int, got {resolution=}")
    return resolution


def resize_batch(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Resize a float batch ``[B, C, H, W]`` to ``[B, C, resolution, resolution]``.

    Bilinear, antialiased when shrinking; returns ``x`` itself when it already has that size.
    Cheap enough to call every step when the training loop samples a resolution per batch.
    """
    check_resolution(resolution)
    if x.ndim != 4:
        raise DatasetError(f"resize_batch needs a [B, C, H, W] batch, got {tuple(x.shape)}")
    height, width = x.shape[-2:]
    if (height, width) == (resolution, resolution):
        return x
    shrinking = resolution < height or resolution < width
    return F.interpolate(
        x, size=(resolution, resolution), mode="bilinear", align_corners=False,
        antialias=shrinking,
    )


def normalize_batch(
    x: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """``(x - mean) / std`` per channel for a batch ``[B, C, H, W]``."""
    mean_t = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


def _random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def _random_shift(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by an integer offset in ``[-pad, pad]``², filling with zeros
    (zero-pad, then one ``gather`` of each image's window from the padded batch)."""
    batch, channels, height, width = x.shape
    padded = F.pad(x, (pad, pad, pad, pad)).reshape(batch, channels, -1)
    padded_width = width + 2 * pad
    off_y = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
    off_x = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
    window = torch.arange(height).view(-1, 1) * padded_width + torch.arange(width).view(1, -1)
    flat = window.view(1, -1) + (off_y * padded_width + off_x).view(-1, 1)  # [B, H*W]
    picked = torch.gather(padded, 2, flat.unsqueeze(1).expand(batch, channels, -1))
    return picked.view(batch, channels, height, width)


ERASE_AREA = (0.02, 0.4)
"""Random erasing's box area, as a fraction of the image (Zhong et al.'s s_l, s_h)."""
ERASE_ASPECT = 0.3
"""Random erasing's box aspect ratio lies in ``[ERASE_ASPECT, 1 / ERASE_ASPECT]``."""


def _random_erase(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Fill one random box per image with uniform noise, each image with probability ``p``.

    Batched: every image draws its box, and the draws do not depend on which images are
    erased (one mask from broadcast comparisons, one ``where``).
    """
    batch, _, height, width = x.shape
    erased = torch.rand(batch, generator=generator) < p
    low, high = ERASE_AREA
    area = (low + (high - low) * torch.rand(batch, generator=generator)) * height * width
    log_ratio = (torch.rand(batch, generator=generator) * 2 - 1) * math.log(1 / ERASE_ASPECT)
    box_h = torch.sqrt(area * torch.exp(log_ratio)).round().clamp(1, height).long()
    box_w = torch.sqrt(area / torch.exp(log_ratio)).round().clamp(1, width).long()
    top = (torch.rand(batch, generator=generator) * (height - box_h + 1)).long()
    left = (torch.rand(batch, generator=generator) * (width - box_w + 1)).long()
    rows = torch.arange(height).view(1, -1, 1)
    cols = torch.arange(width).view(1, 1, -1)
    inside = ((rows >= top.view(-1, 1, 1)) & (rows < (top + box_h).view(-1, 1, 1))
              & (cols >= left.view(-1, 1, 1)) & (cols < (left + box_w).view(-1, 1, 1)))
    mask = (inside & erased.view(-1, 1, 1)).unsqueeze(1)  # [B, 1, H, W]
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype)
    return torch.where(mask, noise, x)


def _random_resized_crop(
    x: torch.Tensor, policy: AugmentPolicy, resolution: int, generator: torch.Generator
) -> torch.Tensor:
    """Crop a random box per image and resample it to ``resolution`` (and flip), batched."""
    batch = x.shape[0]
    area = policy.min_area + (1.0 - policy.min_area) * torch.rand(batch, generator=generator)
    log_ratio = (torch.rand(batch, generator=generator) * 2 - 1) * math.log(4 / 3)
    half_w = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)  # in units of the width
    half_h = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=1.0)
    centre_x = (torch.rand(batch, generator=generator) * 2 - 1) * (1 - half_w)
    centre_y = (torch.rand(batch, generator=generator) * 2 - 1) * (1 - half_h)
    sign = torch.ones(batch)
    if policy.flip:
        sign = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0] = half_w * sign
    theta[:, 0, 2] = centre_x
    theta[:, 1, 1] = half_h
    theta[:, 1, 2] = centre_y
    size = [batch, x.shape[1], resolution, resolution]
    grid = F.affine_grid(theta.to(x.dtype), size, align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment_batch(
    x: torch.Tensor, policy: AugmentPolicy, *, generator: torch.Generator, resolution: int
) -> torch.Tensor:
    """Apply ``policy`` to a float batch ``[B, C, H, W]`` in ``[0, 1]``; the result has
    ``resolution``² pixels. Deterministic given ``generator``'s state."""
    check_resolution(resolution)
    if policy.kind == "random_resized_crop":
        x = _random_resized_crop(x, policy, resolution, generator)
    else:
        if policy.kind == "shift" and policy.pad > 0:
            x = _random_shift(x, policy.pad, generator)
        if policy.flip:
            x = _random_flip(x, generator)
        x = resize_batch(x, resolution)
    if policy.erase > 0:
        x = _random_erase(x, policy.erase, generator)
    return x
