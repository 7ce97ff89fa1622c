"""Supernet benchmark: do subnets with inherited weights rank (and score) like the same
subnets trained from scratch?

For each training strategy at roughly equal compute, train a supernet, then measure the
BN-recalibrated test accuracy of its largest, smallest and ``n_random`` random subnets
(inherited weights). Train ``n_standalone`` of those subnets alone (strategy
``standalone``) with several seeds, and report Kendall's τ between inherited and
stand-alone accuracy next to the seed-to-seed τ of the stand-alone runs (the noise floor).

Compute is counted in *subnet-epochs* (one forward/backward of one subnet over the train
split): a sandwich step trains 2 + ``n_random`` subnets, single path one, and progressive
shrinking's default phases 1, 2, 2, 4, 4 — so for a budget of B subnet-epochs the
sandwich runs B / 4 epochs, single path B epochs and each shrinking phase B / 13 epochs.
A stand-alone run gets as many epochs as the sandwich run (the passes that the sandwich's
largest and smallest subnets receive).

Every run lives in its own folder under ``out_dir`` and resumes; evaluations are cached
in ``evaluations.json`` beside each checkpoint. ``standalone_from`` takes the stand-alone
accuracies from an earlier record of the same settings instead of training them again
(to rerun one strategy's row).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ofa_search.arch import Arch
from ofa_search.atomic import atomic_write_json
from ofa_search.data import DatasetSplits, load_dataset
from ofa_search.metrics import kendall_tau
from ofa_search.space import get_space
from ofa_search.train.bn_calibration import evaluate_arch
from ofa_search.train.checkpoint import load_supernet
from ofa_search.train.loop import TrainConfig, TrainingError, train
from ofa_search.train.strategies import default_phases
from ofa_search.units import count_macs

SUBNETS_PER_STEP = {"sandwich": 4, "spos": 1}  # sandwich with the default n_random = 2


@dataclass(frozen=True)
class SupernetBenchConfig:
    """Settings of one benchmark (see the module docstring for the compute rule)."""

    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    space: str = "mbv3_small28"
    strategies: tuple[str, ...] = ("sandwich", "spos", "ps")
    budget: int = 26  # subnet-epochs per strategy
    steps_per_epoch: int | None = None  # cap, for quick runs
    batch_size: int = 128
    lr: float = 0.1
    warmup_epochs: int = 1
    n_random: int = 16
    n_standalone: int = 6
    standalone_seeds: tuple[int, ...] = (0, 1)
    eval_split: str = "test"
    seed: int = 0  # picks the subnets; the strategies train with it unless train_seed
    train_seed: int | None = None  # the strategies' training runs (None: ``seed``)

    def epochs_for(self, strategy: str) -> int:
        """Epochs of a strategy's run (per phase for ``ps``)."""
        if strategy == "ps":
            per_step = sum(p.subnets_per_step for p in default_phases(self.space))
            return max(1, round(self.budget / per_step))
        return max(1, round(self.budget / SUBNETS_PER_STEP[strategy]))

    def standalone_epochs(self) -> int:
        return self.epochs_for("sandwich")


def bench_archs(config: SupernetBenchConfig) -> list[Arch]:
    """Largest, smallest and ``n_random`` seeded random subnets (the first
    ``n_standalone`` of this list are also trained from scratch)."""
    space = get_space(config.space)
    rng = np.random.default_rng(config.seed + 7919)
    archs = [Arch.largest(space), Arch.smallest(space)]
    while len(archs) < 2 + config.n_random:
        arch = Arch.sample(space, rng)
        if arch not in archs:
            archs.append(arch)
    return archs


def _train_run(config: SupernetBenchConfig, out: Path, strategy: str, *, seed: int,
               arch: Arch | None = None, quiet: bool = True) -> Path:
    epochs = config.standalone_epochs() if arch is not None else config.epochs_for(strategy)
    run = TrainConfig(space=config.space, dataset=config.dataset, data_dir=config.data_dir,
                      strategy=strategy, epochs=epochs, batch_size=config.batch_size,
                      lr=config.lr, warmup_epochs=min(config.warmup_epochs, epochs - 1),
                      steps_per_epoch=config.steps_per_epoch, seed=seed, out_dir=str(out),
                      resume=(out / "checkpoint.pt").is_file(), quiet=quiet,
                      arch=None if arch is None else arch.to_string())
    return train(run)


def _evaluate_cached(checkpoint: Path, archs: Sequence[Arch], split: str,
                     data_cache: dict[int, DatasetSplits], data_args: dict[str, Any]
                     ) -> dict[str, float]:
    cache_path = checkpoint.parent / "evaluations.json"
    cache: dict[str, float] = {}
    if cache_path.is_file():
        stored = json.loads(cache_path.read_text())
        if stored.get("checkpoint_mtime") == checkpoint.stat().st_mtime_ns:
            cache = dict(stored["accuracy"])
    missing = [a for a in archs if a.to_string() not in cache]
    if missing:
        net, _ = load_supernet(checkpoint)
        for arch in missing:
            data = data_cache.get(arch.resolution)
            if data is None:
                data = data_cache[arch.resolution] = load_dataset(
                    resolution=arch.resolution, **data_args)
            cache[arch.to_string()] = evaluate_arch(net, arch, data, split=split)
        atomic_write_json(cache_path, {"checkpoint_mtime": checkpoint.stat().st_mtime_ns,
                                       "split": split, "accuracy": cache})
    return {a.to_string(): cache[a.to_string()] for a in archs}


# Settings that decide the stand-alone runs: a record taken with others cannot stand in.
_STANDALONE_KEYS = ("dataset", "space", "batch_size", "lr", "warmup_epochs", "steps_per_epoch",
                    "n_standalone", "standalone_seeds", "eval_split", "seed")


def _recorded_standalone(config: SupernetBenchConfig, archs: Sequence[Arch],
                         record: dict[str, Any]) -> dict[int, list[float]]:
    """The stand-alone accuracies of an earlier record, checked against ``config``."""
    try:
        recorded, standalone = record["config"], record["standalone"]
        accuracy = standalone["accuracy"]
        epochs = standalone["epochs"]
        recorded_archs = record["archs"]
    except (KeyError, TypeError) as exc:
        raise TrainingError(f"stand-alone record lacks {exc}: it is not a supernet "
                            "benchmark record") from None
    ours = dataclasses.asdict(config)
    for key in _STANDALONE_KEYS:
        theirs = recorded.get(key)
        theirs = list(theirs) if isinstance(theirs, (list, tuple)) else theirs
        mine = list(ours[key]) if isinstance(ours[key], tuple) else ours[key]
        if theirs != mine:
            raise TrainingError(f"stand-alone record was taken with {key}={theirs!r}, "
                                f"this benchmark has {key}={mine!r}")
    if epochs != config.standalone_epochs():
        raise TrainingError(f"stand-alone record trained {epochs} epochs, this benchmark's "
                            f"budget gives {config.standalone_epochs()}")
    wanted = [a.to_string() for a in archs[: config.n_standalone]]
    if list(recorded_archs[: config.n_standalone]) != wanted:
        raise TrainingError("stand-alone record's subnets differ from this benchmark's")
    found: dict[int, list[float]] = {}
    for seed in config.standalone_seeds:
        values = accuracy.get(str(seed)) if isinstance(accuracy, dict) else None
        try:
            found[seed] = [float(a) for a in values]  # type: ignore[union-attr]
        except (TypeError, ValueError):
            found[seed] = []
        if len(found[seed]) != config.n_standalone:
            raise TrainingError(f"stand-alone record lacks the {config.n_standalone} "
                                f"accuracies of seed {seed}")
    return found


def _tau(a: Sequence[float], b: Sequence[float]) -> float | None:
    value = kendall_tau(a, b)
    return None if math.isnan(value) else value


def run_supernet_bench(config: SupernetBenchConfig, out_dir: str | Path, *,
                       log: Callable[[str], None] = print,
                       checkpoints: dict[str, Path] | None = None,
                       standalone_from: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or resume) the benchmark into ``out_dir``; returns the results (also written
    to ``out_dir/results.json``). ``checkpoints`` maps a strategy to an already trained
    checkpoint to evaluate instead of training one; ``standalone_from`` is an earlier
    record (``results.json``) of the same settings whose stand-alone accuracies are reused
    (:class:`TrainingError` if its settings or subnets differ)."""
    out = Path(out_dir)
    archs = bench_archs(config)
    space = get_space(config.space)
    data_args: dict[str, Any] = {"name": config.dataset, "data_dir": config.data_dir,
                                 "seed": config.seed, "in_channels": space.in_channels}
    data_cache: dict[int, DatasetSplits] = {}
    standalone_archs = archs[: config.n_standalone]
    results: dict[str, Any] = {
        "config": dataclasses.asdict(config), "archs": [a.to_string() for a in archs],
        "macs_m": [count_macs(a) / 1e6 for a in archs], "strategies": {}, "standalone": {}}

    standalone: dict[int, list[float]] = {}
    if standalone_from is not None:
        standalone = _recorded_standalone(config, archs, standalone_from)
        results["standalone_from_record"] = True
    for seed in config.standalone_seeds:
        if seed in standalone:
            continue
        accs = []
        for i, arch in enumerate(standalone_archs):
            started = time.perf_counter()
            ckpt = _train_run(config, out / "standalone" / f"seed{seed}" / f"arch{i}",
                              "standalone", seed=seed, arch=arch)
            accs.append(_evaluate_cached(ckpt, [arch], config.eval_split, data_cache,
                                         data_args)[arch.to_string()])
            log(f"stand-alone seed {seed} arch {i}: {accs[-1]:.4f} "
                f"({time.perf_counter() - started:.0f} s)")
        standalone[seed] = accs
    mean_standalone = np.mean([standalone[s] for s in config.standalone_seeds], axis=0)
    seeds = list(config.standalone_seeds)
    results["standalone"] = {
        "epochs": config.standalone_epochs(),
        "accuracy": {str(s): standalone[s] for s in seeds},
        "mean_accuracy": mean_standalone.tolist(),
        "seed_to_seed_tau": _tau(standalone[seeds[0]], standalone[seeds[1]])
        if len(seeds) > 1 else None,
    }

    train_seed = config.seed if config.train_seed is None else config.train_seed
    for strategy in config.strategies:
        started = time.perf_counter()
        given = (checkpoints or {}).get(strategy)
        ckpt = given if given is not None else _train_run(
            config, out / strategy, strategy, seed=train_seed)
        trained_s = time.perf_counter() - started
        by_arch = _evaluate_cached(ckpt, archs, config.eval_split, data_cache, data_args)
        inherited = [by_arch[a.to_string()] for a in archs]
        head = inherited[: config.n_standalone]
        gap = np.asarray(head) - mean_standalone
        results["strategies"][strategy] = {
            "checkpoint": str(ckpt), "epochs": config.epochs_for(strategy),
            "train_and_eval_s": trained_s, "accuracy": inherited,
            "largest": inherited[0], "smallest": inherited[1],
            "random_mean": float(np.mean(inherited[2:])) if len(inherited) > 2 else None,
            "inherited_minus_standalone_mean": float(gap.mean()),
            "tau_inherited_vs_standalone": _tau(head, mean_standalone.tolist()),
        }
        log(f"{strategy}: largest {inherited[0]:.4f} smallest {inherited[1]:.4f} "
            f"τ vs stand-alone {results['strategies'][strategy]['tau_inherited_vs_standalone']}")
    atomic_write_json(out / "results.json", results)
    return results
