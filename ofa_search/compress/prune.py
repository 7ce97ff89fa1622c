"""``prune``: structured or unstructured pruning of a searched subnet, fine-tuned, measured.

:func:`prune` extracts the subnet (BN recalibrated), prunes it one-shot or iteratively
(prune → fine-tune → prune …, the fine-tuning step budget split evenly between the
iterations, the cumulative ratio after iteration ``i`` of ``k`` being
``1 - (1 - ratio)^(i/k)``), recalibrates BN after every pruning step and at the end,
evaluates it on the test split, writes it through a verified export format with a model
card, and measures it.

- ``method="channel"`` (:mod:`ofa_search.compress.channels`): hidden widths cut by the L2
  (or L1) norm of the weights that read each channel. The network gets smaller and
  faster; its widths are outside the space's choices, so it is priced by measuring it on
  the device's backend (and by the table only where every unit of it is in the table).
  ``target_latency_ms`` instead of ``ratio`` searches the ratio whose pruned network
  measures at most that latency (:func:`ratio_for_latency`).
- ``method="magnitude"`` (:mod:`ofa_search.compress.magnitude`): weights zeroed by
  magnitude, over all layers (``scope="global"``) or per layer; sparsity is reported per
  layer. The model is exported dense: ONNX Runtime has no sparse kernels for these convs
  on CPU, so it runs as fast as the unpruned one (measured and reported), and what
  shrinks is the compressed artefact (``model.onnx.gz``, sizes reported beside the
  unpruned model's).

Fine-tuning distils from a teacher (``teacher="subnet"``: the unpruned subnet;
``"largest"``: the supernet's largest subnet at the same resolution; ``"none"``) and is
resumable from ``state.pt`` in the output folder.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ofa_search.arch import Arch
from ofa_search.atomic import check_writable_dir, remove_stale_temps
from ofa_search.compress._context import SubnetContext, load_subnet
from ofa_search.compress.artefacts import (
    base_card,
    check_format,
    gzip_size,
    params_of,
    write_compressed_card,
    write_gzip,
    write_verified,
)
from ofa_search.compress.channels import (
    CRITERIA,
    Criterion,
    PrunedSubnet,
    prunable_units,
    prune_channels,
    rebuild,
)
from ofa_search.compress.errors import CompressError, check_positive, check_ratio
from ofa_search.compress.finetune import (
    STATE_NAME,
    FinetuneConfig,
    Trainer,
    check_resume,
    distillation_loss,
    load_state,
    progress_bar,
    save_state,
)
from ofa_search.compress.latency import (
    Target,
    UnitPrice,
    measure_models,
    module_onnx,
    price_units,
    resolve_target,
)
from ofa_search.compress.magnitude import (
    SCOPES,
    Masks,
    Scope,
    apply_masks,
    magnitude_masks,
    sparsity_report,
    total_sparsity,
)
from ofa_search.data import DatasetSplits, iterate_batches
from ofa_search.export import get_format
from ofa_search.nn import StaticSubnet
from ofa_search.onnx_export import export_onnx
from ofa_search.profiling.measure import MEASURE_ROUNDS
from ofa_search.profiling.timing import TimingConfig
from ofa_search.train import calibrated_subnet
from ofa_search.units import arch_units

Method = Literal["channel", "magnitude"]
METHODS: tuple[str, ...] = ("channel", "magnitude")
Schedule = Literal["one-shot", "iterative"]
SCHEDULES: tuple[str, ...] = ("one-shot", "iterative")
Teacher = Literal["subnet", "largest", "none"]
TEACHERS: tuple[str, ...] = ("subnet", "largest", "none")
VERIFY_SAMPLES = 16
MAX_FIT_RATIO = 0.95
"""Largest ratio :func:`ratio_for_latency` tries."""


def schedule_ratios(ratio: float, schedule: Schedule, iterations: int) -> list[float]:
    """Cumulative ratio after each pruning step: ``[ratio]`` one-shot, else
    ``1 - (1 - ratio)^(i/k)`` for ``i = 1 … k`` (each step removes the same share of
    what is left)."""
    check_ratio(ratio)
    if schedule == "one-shot":
        return [ratio]
    return [1.0 - (1.0 - ratio) ** (i / iterations) for i in range(1, iterations + 1)]


def split_steps(total: int, parts: int) -> list[int]:
    """``total`` steps over ``parts`` segments, evenly, the remainder on the last ones."""
    base, extra = divmod(total, parts)
    return [base + (1 if i >= parts - extra else 0) for i in range(parts)]


@dataclass(frozen=True)
class LatencyFit:
    """The ratio :func:`ratio_for_latency` found, the latency measured there, whether it
    meets the target, and every ``(ratio, ms)`` probe."""

    ratio: float
    measured_ms: float
    feasible: bool
    probes: tuple[tuple[float, float], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "measured_ms": self.measured_ms, "feasible": self.feasible,
                "probes": [list(p) for p in self.probes]}


def ratio_for_latency(net: StaticSubnet, target_ms: float, target: Target, *,
                      criterion: Criterion = "l2", probes: int = 8,
                      rounds: int = 1, timing: TimingConfig | None = None) -> LatencyFit:
    """The smallest channel-pruning ratio (to about ``2^-probes``) whose pruned ``net``
    measures at most ``target_ms`` on ``target``, by bisection over measured latencies
    (weights do not matter to latency; the pruned copies are thrown away). When even
    :data:`MAX_FIT_RATIO` is too slow, that ratio with ``feasible=False``."""
    shape = net.input_shape(1)
    seen: list[tuple[float, float]] = []

    def measure(ratio: float) -> float:
        pruned = prune_channels(net, ratio, criterion=criterion)
        (stats,) = measure_models(target, [module_onnx(pruned, shape)], rounds=rounds,
                                  timing=timing)
        seen.append((ratio, stats.median_ms))
        return stats.median_ms

    if (ms := measure(0.0)) <= target_ms:
        return LatencyFit(0.0, ms, True, tuple(seen))
    lo, hi = 0.0, MAX_FIT_RATIO
    hi_ms = measure(hi)
    if hi_ms > target_ms:
        return LatencyFit(hi, hi_ms, False, tuple(seen))
    for _ in range(probes):
        mid = 0.5 * (lo + hi)
        mid_ms = measure(mid)
        if mid_ms <= target_ms:
            hi, hi_ms = mid, mid_ms
        else:
            lo = mid
    return LatencyFit(hi, hi_ms, True, tuple(seen))


@dataclass(frozen=True)
class PruneResult:
    """What :func:`prune` did (``to_dict`` is the CLI's JSON). ``finished`` is False when
    ``stop_after_steps`` ended fine-tuning early (resume with ``resume=True``); then only
    ``out_dir``, ``steps`` and the options are set."""

    out_dir: Path
    finished: bool
    steps: int
    method: str
    ratio: float
    schedule: str
    iterations: int
    options: dict[str, Any]
    accuracy_before: float | None = None
    accuracy: float | None = None
    history: tuple[dict[str, Any], ...] = ()
    widths: dict[int, int] | None = None
    full_widths: dict[int, int] | None = None
    layers: tuple[dict[str, Any], ...] = ()
    sparsity: float | None = None
    macs: int | None = None
    params: int | None = None
    nonzero_params: int | None = None
    latency: dict[str, Any] | None = None
    sizes: dict[str, int] | None = None
    latency_fit: LatencyFit | None = None
    artefact: Path | None = None
    compressed_artefact: Path | None = None
    verification_max_abs_diff: float | None = None
    card_json: Path | None = None
    card_markdown: Path | None = None
    net: nn.Module | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        def path(p: Path | None) -> str | None:
            return None if p is None else str(p)

        return {
            "out_dir": str(self.out_dir), "finished": self.finished, "steps": self.steps,
            "method": self.method, "ratio": self.ratio, "schedule": self.schedule,
            "iterations": self.iterations, "options": self.options,
            "accuracy_before": self.accuracy_before, "accuracy": self.accuracy,
            "history": list(self.history),
            "widths": None if self.widths is None else {str(k): v for k, v in self.widths.items()},
            "full_widths": (None if self.full_widths is None
                            else {str(k): v for k, v in self.full_widths.items()}),
            "layers": list(self.layers), "sparsity": self.sparsity, "macs": self.macs,
            "params": self.params, "nonzero_params": self.nonzero_params,
            "latency": self.latency, "sizes": self.sizes,
            "latency_fit": None if self.latency_fit is None else self.latency_fit.to_dict(),
            "artefact": path(self.artefact), "compressed_artefact": path(self.compressed_artefact),
            "verification_max_abs_diff": self.verification_max_abs_diff,
            "card_json": path(self.card_json), "card_markdown": path(self.card_markdown)}


def _teacher(ctx: SubnetContext, kind: str) -> nn.Module | None:
    if kind == "none":
        return None
    if kind == "subnet":
        return copy.deepcopy(ctx.net).eval()
    largest = Arch.largest(ctx.arch.space, ctx.arch.width_mult).replace(
        resolution=ctx.arch.resolution)
    return calibrated_subnet(ctx.supernet, largest, ctx.data, calib_batches=ctx.calib_batches,
                             seed=ctx.seed).eval()


class _Run:
    """The pruning loop's state: the network, its masks, where the schedule is."""

    def __init__(self, ctx: SubnetContext, method: str, criterion: Criterion, scope: Scope,
                 ratios: list[float], steps: list[int], config: FinetuneConfig,
                 teacher: nn.Module | None, folder: Path, options: dict[str, Any]) -> None:
        self.ctx, self.method, self.criterion, self.scope = ctx, method, criterion, scope
        self.ratios, self.steps, self.config, self.teacher = ratios, steps, config, teacher
        self.folder, self.options = folder, options
        self.net: StaticSubnet = copy.deepcopy(ctx.net)
        self.masks: Masks | None = None
        self.iteration, self.step, self.pruned = 0, 0, False
        self.finished = False
        self.history: list[dict[str, Any]] = []
        self.optimizer_state: dict[str, Any] | None = None

    def restore(self, path: Path) -> None:
        state = load_state(path, "prune")
        saved = state.get("options") or {}
        diff = sorted(k for k in set(saved) | set(self.options)
                      if saved.get(k) != self.options.get(k))
        if diff:
            raise CompressError(f"{path} was written with other options ({', '.join(diff)}); "
                                "resume with the same options or choose another output "
                                "folder")
        if state["widths"] is not None:
            self.net = rebuild(self.ctx.arch, {int(i): int(w) for i, w in state["widths"]})
        self.net.load_state_dict(state["model"])
        self.masks = state["masks"]
        self.iteration, self.step = int(state["iteration"]), int(state["step"])
        self.pruned, self.finished = True, bool(state["finished"])
        self.history = list(state["history"])
        self.optimizer_state = state["optimizer"] or None

    def save(self, optimizer: torch.optim.Optimizer | None) -> None:
        widths = (sorted(self.net.widths.items()) if isinstance(self.net, PrunedSubnet)
                  else None)
        save_state(self.folder / STATE_NAME, {
            "kind": "prune", "options": self.options, "iteration": self.iteration,
            "step": self.step, "finished": self.finished, "history": self.history,
            "widths": None if widths is None else [list(w) for w in widths],
            "masks": self.masks, "model": self.net.state_dict(),
            "optimizer": {} if optimizer is None else optimizer.state_dict()})

    def prune_step(self) -> None:
        ratio = self.ratios[self.iteration]
        if self.method == "channel":
            self.net = prune_channels(self.net, ratio, criterion=self.criterion)
        else:
            self.masks = magnitude_masks(self.net, ratio, scope=self.scope)
            apply_masks(self.net, self.masks)
        self.ctx.recalibrate(self.net)
        self.history.append({"iteration": self.iteration, "ratio": ratio,
                             "test_accuracy_after_prune": self.ctx.accuracy(self.net)})
        self.pruned, self.step = True, 0

    def done_steps(self) -> int:
        return sum(self.steps[:self.iteration]) + self.step

    def run(self, stop_after: int | None, every: int, bar: Any) -> None:
        while not self.finished:
            if self.iteration >= len(self.ratios):
                self.ctx.recalibrate(self.net)
                self.finished = True
                self.save(None)
                return
            if not self.pruned:
                self.prune_step()
                self.save(None)
            total = self.steps[self.iteration]
            budget = total if stop_after is None else min(
                total, self.step + max(0, stop_after - self.done_steps()))
            if self.step < budget:
                self._finetune(total, budget, every, bar)
            if self.step < total:
                return  # stopped early: resumable
            self.iteration, self.step, self.pruned = self.iteration + 1, 0, False
            self.optimizer_state = None

    def _finetune(self, total: int, stop: int, every: int, bar: Any) -> None:
        def after_step() -> None:
            if self.masks is not None:
                apply_masks(self.net, self.masks)

        loss = distillation_loss(self.net, self.teacher, self.config)
        trainer = Trainer(self.net, loss, self.ctx.data.train, self.ctx.arch.resolution,
                          self.config, seed=self.ctx.seed + 1000 * self.iteration, total=total,
                          after_step=after_step)
        if self.optimizer_state:
            trainer.optimizer.load_state_dict(self.optimizer_state)

        def checkpoint(done: int) -> None:
            self.step = done
            self.save(trainer.optimizer)

        trainer.run(self.step, stop, bar=bar, checkpoint=checkpoint, every=every)
        self.optimizer_state = trainer.optimizer.state_dict()


def prune(checkpoint: str | os.PathLike[str], arch: str | Arch, out_dir: str | os.PathLike[str],
          *, method: Method = "channel", ratio: float | None = None,
          target_latency_ms: float | None = None, criterion: Criterion = "l2",
          scope: Scope = "global", schedule: Schedule = "one-shot", iterations: int = 3,
          finetune_steps: int = 0, batch_size: int = 64, lr: float = 0.01,
          kd_ratio: float = 1.0, teacher: Teacher = "subnet", augment: bool = True,
          device: str | None = None, workspace: str | os.PathLike[str] | None = None,
          data: DatasetSplits | None = None, data_dir: str | os.PathLike[str] | None = None,
          calib_batches: int = 16, seed: int = 0, format: str = "onnx", measure: bool = True,
          rounds: int = MEASURE_ROUNDS, timing: TimingConfig | None = None,
          checkpoint_every: int = 50, stop_after_steps: int | None = None,
          resume: bool = False, quiet: bool = False,
          say: Callable[[str], None] | None = None) -> PruneResult:
    """Prune subnet ``arch`` of ``checkpoint``'s supernet (see the module docstring);
    artefact, compressed artefact, state and card go to ``out_dir``.

    ``ratio`` (in [0, 1)) is the share of hidden channels (``channel``) or of weights
    (``magnitude``) removed; ``target_latency_ms`` (``channel`` only) finds it by
    measurement instead. Latencies are measured on ``device``'s backend (default: ONNX
    Runtime, 1 thread, on this host).

    Raises (before any work): :class:`~ofa_search.compress.errors.PruningRatioError`,
    ``CompressError`` for other options, an unknown device, or an output folder that
    cannot be written.
    """
    say = say or (lambda _: None)
    folder = Path(out_dir)
    options = _check_options(method, ratio, target_latency_ms, criterion, scope, schedule,
                             iterations, finetune_steps, teacher, format, rounds,
                             checkpoint_every, stop_after_steps)
    config = FinetuneConfig(batch_size=batch_size, lr=lr, kd_ratio=kd_ratio, augment=augment)
    check_writable_dir(folder, "output folder")
    resume_from = check_resume(folder, resume)
    target = resolve_target(device, workspace) if (measure or target_latency_ms) else None

    ctx = load_subnet(checkpoint, arch, data=data, data_dir=data_dir,
                      calib_batches=calib_batches, seed=seed, say=say,
                      check=prunable_units)  # fp32 only, for both methods
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder)
    fit = None
    if target_latency_ms is not None and resume_from is not None:
        # the ratio is the one the interrupted run found (measuring again would move it)
        ratio = float(load_state(resume_from, "prune")["options"]["ratio"])
    elif target_latency_ms is not None:
        assert target is not None
        say(f"searching the ratio that measures <= {target_latency_ms} ms on {target.device}")
        fit = ratio_for_latency(ctx.net, target_latency_ms, target, criterion=criterion,
                                timing=timing)
        ratio = fit.ratio
        say(f"ratio {fit.ratio:.3f} measures {fit.measured_ms:.4f} ms"
            + ("" if fit.feasible else " (the target is out of reach)"))
    assert ratio is not None
    n_iter = 1 if schedule == "one-shot" else iterations
    options.update(arch=ctx.arch.to_string(), ratio=ratio, seed=seed,
                   calib_batches=calib_batches, **config.to_dict())
    say(f"test accuracy before pruning: {(before := ctx.accuracy(ctx.net)):.4f}")
    run = _Run(ctx, method, criterion, scope, schedule_ratios(ratio, schedule, n_iter),
               split_steps(finetune_steps, n_iter), config, _teacher(ctx, teacher), folder,
               options)
    if resume_from is not None:
        run.restore(resume_from)
    bar = progress_bar(finetune_steps - run.done_steps(), "fine-tuning", quiet)
    try:
        run.run(stop_after_steps, checkpoint_every, bar)
    finally:
        if bar is not None:
            bar.close()
    common: dict[str, Any] = {"method": method, "ratio": ratio, "schedule": schedule,
                              "iterations": n_iter, "options": options}
    if not run.finished:
        say(f"stopped after {run.done_steps()} of {finetune_steps} steps; resume with --resume")
        return PruneResult(folder, False, run.done_steps(), latency_fit=fit, **common)
    return _finish(ctx, run, folder, format, target if measure else None, rounds, timing,
                   before, fit, workspace, common, finetune_steps, say)


def _check_options(method: str, ratio: float | None, target_latency_ms: float | None,
                   criterion: str, scope: str, schedule: str, iterations: int,
                   finetune_steps: int, teacher: str, format: str, rounds: int,
                   checkpoint_every: int, stop_after_steps: int | None) -> dict[str, Any]:
    """Every option that does not need the checkpoint, checked; the options recorded in the
    state file (a resumed run must match them)."""
    def one_of(value: str, allowed: Sequence[str], name: str) -> None:
        if value not in allowed:
            raise CompressError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")

    one_of(method, METHODS, "method")
    one_of(schedule, SCHEDULES, "schedule")
    one_of(teacher, TEACHERS, "teacher")
    if (ratio is None) == (target_latency_ms is None):
        raise CompressError("give exactly one of ratio and target_latency_ms")
    if ratio is not None:
        check_ratio(ratio)
    if target_latency_ms is not None:
        if method != "channel":
            raise CompressError("target_latency_ms needs method 'channel': magnitude pruning "
                                "leaves a dense network exactly as fast as before")
        if isinstance(target_latency_ms, bool) or not isinstance(target_latency_ms, int | float) \
                or not math.isfinite(target_latency_ms) or target_latency_ms <= 0:
            raise CompressError(f"target_latency_ms must be a number > 0, "
                                f"got {target_latency_ms!r}")
    if method == "channel":
        one_of(criterion, CRITERIA, "criterion")
    else:
        one_of(scope, SCOPES, "scope")
    check_positive(iterations, "iterations", 2 if schedule == "iterative" else 1)
    check_positive(finetune_steps, "finetune_steps", 0)
    check_positive(checkpoint_every, "checkpoint_every")
    check_positive(rounds, "rounds")
    if stop_after_steps is not None:
        check_positive(stop_after_steps, "stop_after_steps")
    check_format(format)
    return {"method": method, "target_latency_ms": target_latency_ms,
            "criterion": criterion if method == "channel" else None,
            "scope": scope if method == "magnitude" else None, "schedule": schedule,
            "iterations": iterations if schedule == "iterative" else 1,
            "finetune_steps": finetune_steps, "teacher": teacher}


def _finish(ctx: SubnetContext, run: _Run, folder: Path, fmt: str, target: Target | None,
            rounds: int, timing: TimingConfig | None, before: float, fit: LatencyFit | None,
            workspace: str | os.PathLike[str] | None, common: dict[str, Any],
            finetune_steps: int, say: Callable[[str], None]) -> PruneResult:
    """Evaluate, export (verified), measure and write the card of a finished run."""
    net = run.net.eval()
    accuracy = ctx.accuracy(net)
    say(f"test accuracy after pruning: {accuracy:.4f}")
    x, _ = next(iterate_batches(ctx.data.test, VERIFY_SAMPLES, shuffle=False,
                                resolution=ctx.arch.resolution))
    artefact, diff = write_verified(net, folder, fmt, x)
    shape = net.input_shape(1)
    pruned_bytes = (artefact.read_bytes() if fmt == "onnx"
                    else export_onnx(net, shape).SerializeToString())
    base_bytes = export_onnx(ctx.net, shape).SerializeToString()
    gz = write_gzip(artefact) if fmt == "onnx" else None
    sizes = {"onnx_bytes": len(pruned_bytes), "onnx_gzip_bytes": gzip_size(pruned_bytes),
             "unpruned_onnx_bytes": len(base_bytes),
             "unpruned_onnx_gzip_bytes": gzip_size(base_bytes)}
    units = net.unit_specs if isinstance(net, PrunedSubnet) else arch_units(ctx.arch)
    latency = _latency(ctx, net, units, target, rounds, timing, say) if target else None
    layers = tuple(layer.to_dict() for layer in sparsity_report(net))
    sparsity = total_sparsity(sparsity_report(net))
    widths = net.widths if isinstance(net, PrunedSubnet) else None
    macs = sum(u.macs() for u in units)
    result: dict[str, Any] = dict(
        accuracy_before=before, accuracy=accuracy, history=tuple(run.history),
        widths=widths, full_widths=prunable_units(ctx.arch) if widths is not None else None,
        layers=layers if run.method == "magnitude" else (), sparsity=sparsity, macs=macs,
        params=params_of(net), nonzero_params=params_of(net, nonzero=True), latency=latency,
        sizes=sizes, latency_fit=fit, artefact=artefact, compressed_artefact=gz,
        verification_max_abs_diff=diff)
    card_json, card_md = _write_card(ctx, net, folder, artefact, fmt, diff, result, common,
                                     finetune_steps, workspace)
    return PruneResult(folder, True, finetune_steps, card_json=card_json, card_markdown=card_md,
                       net=net, **common, **result)


def _latency(ctx: SubnetContext, net: StaticSubnet, units: list[Any], target: Target,
             rounds: int, timing: TimingConfig | None, say: Callable[[str], None]
             ) -> dict[str, Any]:
    say(f"measuring the pruned and the unpruned subnet on {target.device}")
    shape = net.input_shape(1)
    pruned, base = measure_models(target, [module_onnx(net, shape), module_onnx(ctx.net, shape)],
                                  rounds=rounds, timing=timing)
    priced: UnitPrice | None = None
    base_table: float | None = None
    if target.table is not None:
        priced = price_units(target.table, units, ctx.arch.resolution)
        base_table = price_units(target.table, arch_units(ctx.arch), ctx.arch.resolution).ms
    return {"target": target.to_dict(), "measured_ms": pruned.median_ms,
            "measured_iqr_ms": pruned.iqr_ms, "measured_runs": pruned.count,
            "unpruned_measured_ms": base.median_ms, "unpruned_measured_iqr_ms": base.iqr_ms,
            "speedup": base.median_ms / pruned.median_ms,
            "table": None if priced is None else priced.to_dict(),
            "unpruned_table_ms": base_table}


def _write_card(ctx: SubnetContext, net: StaticSubnet, folder: Path, artefact: Path, fmt: str,
                diff: float, result: dict[str, Any], common: dict[str, Any],
                finetune_steps: int, workspace: str | os.PathLike[str] | None
                ) -> tuple[Path, Path]:
    spec = get_format(fmt)
    method, lat, sizes = common["method"], result["latency"], result["sizes"]
    options = common["options"]
    how = (f"hidden channels by {options['criterion'].upper()} norm of the weights reading them"
           if method == "channel" else f"weights by magnitude ({options['scope']} threshold)")
    summary = [
        f"Pruned {common['ratio']:.1%} of the {how}, {common['schedule']}"
        + (f" in {common['iterations']} steps" if common["iterations"] > 1 else "")
        + f", BN recalibrated, {finetune_steps} fine-tuning steps "
        f"(teacher: {options['teacher']})",
        f"Test accuracy {result['accuracy']:.4f} (unpruned {result['accuracy_before']:.4f})",
    ]
    if result["widths"] is not None:
        pairs = ", ".join(f"{result['full_widths'][i]}->{w}" for i, w in result["widths"].items())
        summary.append(f"Hidden widths (unit: full->kept): {pairs}")
    else:
        summary.append(f"Sparsity {result['sparsity']:.1%} of conv/linear weights (per layer "
                       "in model_card.json); exported dense: ONNX Runtime has no sparse "
                       "speed-up on CPU")
    summary.append(f"ONNX {sizes['onnx_bytes']} bytes, gzip {sizes['onnx_gzip_bytes']} bytes "
                   f"(unpruned: {sizes['unpruned_onnx_bytes']}, gzip "
                   f"{sizes['unpruned_onnx_gzip_bytes']})")
    device = None
    if lat is not None:
        table = lat["table"]
        in_table = ("" if table is None else f"; {table['units_in_table']} of "
                    f"{table['units']} units in the device's table")
        summary.append(f"Measured {lat['measured_ms']:.4f} ms vs {lat['unpruned_measured_ms']:.4f}"
                       f" ms unpruned on {lat['target']['device']} ({lat['speedup']:.2f}x)"
                       + in_table)
        predictor = ("none: no device table" if table is None
                     else "table (every unit priced)" if table["table_ms"] is not None
                     else "none: widths outside the table, measured instead")
        device = {"id": lat["target"]["device"],
                  "predicted_latency_ms": None if table is None else table["table_ms"],
                  "latency_predictor": predictor,
                  "measured_latency_ms": lat["measured_ms"],
                  "measured_iqr_ms": lat["measured_iqr_ms"],
                  "measured_runs": lat["measured_runs"], "not_measured_reason": None}
    compression = {**common, "method": f"{method}-pruning", "finetune_steps": finetune_steps,
                   **{k: v for k, v in result.items()
                      if k not in ("artefact", "compressed_artefact", "latency_fit")},
                   "latency_fit": None if result["latency_fit"] is None
                   else result["latency_fit"].to_dict(),
                   "summary": summary}
    if compression["widths"] is not None:
        compression["widths"] = {str(k): v for k, v in compression["widths"].items()}
        compression["full_widths"] = {str(k): v for k, v in compression["full_widths"].items()}
    compression["history"] = list(compression["history"])
    compression["layers"] = list(compression["layers"])
    card = base_card(
        checkpoint=ctx.checkpoint, meta=ctx.meta, arch=ctx.arch, macs=result["macs"],
        params=result["params"], input_shape=net.input_shape(1), mean=ctx.data.mean,
        std=ctx.data.std, dataset=ctx.dataset_card(result["accuracy"]), device=device,
        artefact=artefact, fmt={"format": spec.name, "description": spec.description},
        verification={"runtime": spec.runtime, "max_abs_diff": diff,
                      "tolerance": spec.tolerance, "samples": VERIFY_SAMPLES, "passed": True},
        compression=compression, workspace=workspace)
    return write_compressed_card(folder, card)
