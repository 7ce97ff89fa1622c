"""Batch-norm recalibration of extracted subnets, and accuracy evaluation.

A subnet shares its BN statistics with every other subnet of the supernet, so they fit
none exactly; once-for-all recomputes them on a few training batches before evaluating.

In-memory datasets (:class:`~ofa_search.data.DatasetSplits`) go through
:func:`calibrated_subnet` and :func:`evaluate`; streamed ones (ImageNet,
:class:`~ofa_search.data.ImageStreamSplits`) through :func:`calibrated_subnet_stream`
(once-for-all's 2,000 random training images by default) and :func:`evaluate_stream`
(a capped random subset of the validation images), both with a progress bar.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ofa_search.arch import Arch
from ofa_search.data import (
    DEFAULT_EVAL_IMAGES,
    OFA_CALIB_IMAGES,
    STREAM_BATCH_SIZE,
    DatasetSplits,
    ImageFolderStream,
    ImageSplit,
    ImageStreamSplits,
    iterate_batches,
    stream_loader,
)
from ofa_search.nn import StaticSubnet, Supernet, extract
from ofa_search.nn.bn import channels_last, recalibrate_bn


def _device_of(net: nn.Module) -> torch.device:
    first = next(net.parameters(), None)
    return torch.device("cpu") if first is None else first.device


@torch.no_grad()
def evaluate_batches(net: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
                     ) -> float:
    """Top-1 accuracy (a fraction in [0, 1]) of ``net``, in eval mode, on ``batches`` of
    ``(x [B, C, R, R], y [B])`` (moved to the device of ``net``'s parameters). Raises
    ``ValueError`` when ``batches`` hold no sample."""
    net.eval()
    device = _device_of(net)
    correct = total = 0
    with channels_last(net):
        for x, y in batches:
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            logits = net(x)
            correct += int((logits.argmax(1) == y.to(logits.device)).sum())
            total += int(y.numel())
    if total == 0:
        raise ValueError("cannot evaluate on an empty split")
    return correct / total


@torch.no_grad()
def evaluate(net: nn.Module, split: ImageSplit, resolution: int, batch_size: int = 256) -> float:
    """Top-1 accuracy (a fraction in [0, 1]) of ``net`` on ``split`` at ``resolution``, in
    eval mode, without augmentation. ``net`` maps ``[B, C, R, R]`` to logits."""
    return evaluate_batches(
        net, iterate_batches(split, batch_size, shuffle=False, resolution=resolution))


def calibrated_subnet(supernet: Supernet, arch: Arch, data: DatasetSplits, *,
                      calib_batches: int = 16, batch_size: int = 128,
                      seed: int = 0) -> StaticSubnet:
    """``extract(supernet, arch)`` with BN statistics recomputed on ``calib_batches``
    shuffled, un-augmented ``train`` batches drawn from a generator seeded by ``seed``."""
    net = extract(supernet, arch)
    gen = torch.Generator().manual_seed(seed)
    batches = iterate_batches(data.train, batch_size, shuffle=True, generator=gen,
                              resolution=arch.resolution)
    xs = (x for x, _ in itertools.islice(batches, calib_batches))
    recalibrate_bn(net, xs)
    return net


def evaluate_arch(supernet: Supernet, arch: Arch, data: DatasetSplits, *, split: str = "val",
                  calib_batches: int = 16, batch_size: int = 128, seed: int = 0) -> float:
    """Accuracy of subnet ``arch`` on ``data``'s ``split`` after BN recalibration."""
    net = calibrated_subnet(supernet, arch, data, calib_batches=calib_batches,
                            batch_size=batch_size, seed=seed)
    return evaluate(net, data.split(split), arch.resolution, batch_size)


# -- streamed datasets (ImageNet) ----------------------------------------------------------
def _inputs(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device
            ) -> Iterator[torch.Tensor]:
    for x, _ in batches:
        yield x.to(device, non_blocking=True)


def _progress(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], total: int, desc: str,
              progress: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``batches`` unchanged, with a tqdm bar (on stderr) counting their images."""
    with tqdm(total=total, desc=desc, unit="img", disable=not progress,
              dynamic_ncols=True) as bar:
        for x, y in batches:
            yield x, y
            bar.update(int(y.numel()))


@dataclass(frozen=True)
class StreamAccuracy:
    """Accuracy of one subnet on a streamed dataset and the sample counts behind it."""

    accuracy: float
    eval_images: int
    calib_images: int


def calibrated_subnet_stream(supernet: Supernet, arch: Arch,
                             train: ImageFolderStream | ImageStreamSplits, *,
                             calib_images: int = OFA_CALIB_IMAGES,
                             batch_size: int = STREAM_BATCH_SIZE, seed: int = 0,
                             num_workers: int | None = None,
                             device: torch.device | str | None = None,
                             progress: bool = False) -> StaticSubnet:
    """``extract(supernet, arch)`` with BN statistics recomputed (by :func:`recalibrate_bn`)
    on at most ``calib_images`` training images of a stream, chosen and ordered by ``seed``
    (see :func:`~ofa_search.data.stream_loader`), at ``arch.resolution``.

    ``train`` is a stream or the splits holding it. The subnet is moved to ``device``
    (default: where ``supernet`` is) and stays there. ``progress`` shows a tqdm bar.
    """
    stream = (train.train if isinstance(train, ImageStreamSplits) else train
              ).with_resolution(arch.resolution)
    if calib_images < 1:
        raise ValueError(f"calib_images must be >= 1, got {calib_images=}")
    net = extract(supernet, arch)
    net.to(_device_of(supernet) if device is None else torch.device(device))
    loader = stream_loader(stream, batch_size=batch_size, max_images=calib_images, seed=seed,
                           num_workers=num_workers)
    batches = _progress(loader, len(loader.dataset),  # type: ignore[arg-type]
                        f"recalibrating BN ({arch.resolution} px)", progress)
    recalibrate_bn(net, _inputs(batches, _device_of(net)))
    return net


def evaluate_stream(net: nn.Module, val: ImageFolderStream | ImageStreamSplits, *,
                    resolution: int, max_images: int | None = None,
                    batch_size: int = STREAM_BATCH_SIZE, seed: int = 0,
                    num_workers: int | None = None, progress: bool = False) -> float:
    """Top-1 accuracy of ``net`` (on its own device) on at most ``max_images`` images of a
    validation stream (all when None), chosen by ``seed``, at ``resolution``. The number of
    images is ``min(max_images, len(stream))``."""
    stream = (val.val if isinstance(val, ImageStreamSplits) else val
              ).with_resolution(resolution)
    loader = stream_loader(stream, batch_size=batch_size, max_images=max_images, seed=seed,
                           num_workers=num_workers)
    return evaluate_batches(net, _progress(loader, len(loader.dataset),  # type: ignore[arg-type]
                                           f"evaluating ({resolution} px)", progress))


def evaluate_arch_stream(supernet: Supernet, arch: Arch, data: ImageStreamSplits, *,
                         calib_images: int = OFA_CALIB_IMAGES,
                         max_eval_images: int | None = DEFAULT_EVAL_IMAGES,
                         batch_size: int = STREAM_BATCH_SIZE, seed: int = 0,
                         num_workers: int | None = None,
                         device: torch.device | str | None = None,
                         progress: bool = False) -> StreamAccuracy:
    """Accuracy of subnet ``arch`` on ``data.val`` (at most ``max_eval_images``) after BN
    recalibration on ``data.train`` (at most ``calib_images``); see
    :func:`calibrated_subnet_stream` and :func:`evaluate_stream`."""
    net = calibrated_subnet_stream(supernet, arch, data, calib_images=calib_images,
                                   batch_size=batch_size, seed=seed, num_workers=num_workers,
                                   device=device, progress=progress)
    accuracy = evaluate_stream(net, data, resolution=arch.resolution,
                               max_images=max_eval_images, batch_size=batch_size, seed=seed,
                               num_workers=num_workers, progress=progress)
    return StreamAccuracy(accuracy=accuracy,
                          eval_images=_capped(len(data.val), max_eval_images),
                          calib_images=_capped(len(data.train), calib_images))


def _capped(n: int, cap: int | None) -> int:
    return n if cap is None else min(n, cap)
