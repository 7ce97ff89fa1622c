"""Scoring the subnets of a trained supernet for an accuracy dataset: the evaluator that
:func:`predictors.accuracy_data.build_accuracy_dataset` and
:func:`predictors.fit.fit_predictors` are given."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import torch

from ofa_search.arch import Arch
from ofa_search.data import load_dataset
from ofa_search.train.bn_calibration import calibrated_subnet, evaluate
from ofa_search.train.checkpoint import load_supernet
from predictors.accuracy_data import EvalSettings, Evaluator


def supernet_evaluator(checkpoint: str | os.PathLike[str], settings: EvalSettings
                       ) -> tuple[Evaluator, dict[str, Any]]:
    """``(evaluate(arch) -> accuracy, checkpoint meta)`` for a trained supernet: BN
    recalibrated on ``train`` batches, scored on ``settings.split`` (capped, seeded)."""
    net, meta = load_supernet(checkpoint)
    config = meta["config"]
    data = load_dataset(config["dataset"], data_dir=config.get("data_dir"),
                        seed=config.get("seed", 0), in_channels=net.space.in_channels)
    split = data.split(settings.split)
    if settings.max_eval_images is not None and settings.max_eval_images < len(split):
        gen = torch.Generator().manual_seed(settings.seed)
        keep = torch.randperm(len(split), generator=gen)[: settings.max_eval_images]
        keep = keep.sort().values
        split = replace(split, images=split.images[keep], labels=split.labels[keep])

    def evaluate_one(arch: Arch) -> float:
        sub = calibrated_subnet(net, arch, data, calib_batches=settings.calib_batches,
                                batch_size=settings.batch_size, seed=settings.seed)
        return evaluate(sub, split, arch.resolution, settings.batch_size)

    return evaluate_one, meta
