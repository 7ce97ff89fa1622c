"""``exits``: early-exit heads on a searched subnet, trained by distillation, measured.

:func:`exits` extracts the subnet (BN recalibrated), adds an exit head after each chosen
stage, trains the heads by distillation from the subnet's own final head with the backbone
frozen (resumable: ``state.pt`` in the output folder), chooses a confidence threshold per
exit on the validation split (or takes the given ones), and reports, on the test split,
the cascade's accuracy, the share of images leaving at each exit and its expected latency
beside the subnet's own. It writes the verified ONNX artefacts
(:mod:`ofa_search.compress.exit_onnx`) and a model card.

Expected latency is reported on two bases (see :mod:`ofa_search.compress.exit_net` for
the formula):

- ``table``: the subnet priced by the device's table as the search prices it, each prefix
  of the backbone its units' share of that price
  (:func:`~ofa_search.compress.latency.prefix_prices`), and each exit head — a unit no
  table holds — measured alone on the device's backend, as table units are, and taken to
  its in-network cost by the same factor (the table's price over the plain sum of the
  subnet's units). This is the cost of a runtime that can stop a graph after any node.
- ``measured``: every segment of the deployed cascade measured end to end on the backend
  (each segment a separate ONNX Runtime call, so each pays the per-call cost the table's
  model removes); the cost of leaving at exit ``k`` is the sum of the segments up to it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from ofa_search.arch import Arch
from ofa_search.atomic import check_writable_dir, remove_stale_temps
from ofa_search.compress._context import SubnetContext, load_subnet
from ofa_search.compress.artefacts import base_card, params_of, write_compressed_card
from ofa_search.compress.errors import (
    CompressError,
    check_exit_stages,
    check_positive,
    check_thresholds,
)
from ofa_search.compress.exit_net import (
    DEFAULT_HEAD_WIDTH,
    CascadeStats,
    EarlyExitNet,
    ExitHead,
    ExitOutputs,
    cascade_stats,
    choose_thresholds,
    collect_outputs,
    exit_costs,
    head_input_channels,
)
from ofa_search.compress.exit_onnx import (
    TOLERANCE,
    export_multi,
    segment_models,
    write_exit_artefacts,
)
from ofa_search.compress.finetune import (
    STATE_NAME,
    FinetuneConfig,
    Trainer,
    check_resume,
    load_state,
    progress_bar,
    save_state,
)
from ofa_search.compress.latency import (
    Model,
    Target,
    measure_models,
    module_onnx,
    prefix_prices,
    price_units,
    resolve_target,
)
from ofa_search.data import DatasetSplits, iterate_batches
from ofa_search.nn.static import init_weights
from ofa_search.onnx_export import INPUT_NAME
from ofa_search.profiling.measure import MEASURE_ROUNDS
from ofa_search.profiling.timing import TimingConfig
from ofa_search.train.bn_calibration import channels_last, recalibrate_bn
from ofa_search.train.loop import soft_cross_entropy
from ofa_search.units import arch_units

Basis = Literal["table", "measured"]
DEFAULT_STAGES = (0, 1, 2)
VERIFY_SAMPLES = 16


@dataclass(frozen=True)
class ExitLatency:
    """Latencies behind the expected latency of a cascade, in ms (see the module
    docstring). ``costs_*``: the cost of leaving at each exit and at the end."""

    full_measured_ms: float
    full_table_ms: float | None
    head_alone_ms: tuple[float, ...]
    head_in_network_ms: tuple[float, ...]
    prefix_table_ms: tuple[float, ...] | None
    segment_ms: tuple[float, ...]
    whole_model_ms: float
    costs_table: tuple[float, ...] | None
    costs_measured: tuple[float, ...]

    def costs(self, basis: Basis) -> tuple[float, ...]:
        if basis == "table":
            if self.costs_table is None:
                raise CompressError("the device's table does not price this subnet's prefixes"
                                    "; use the measured basis")
            return self.costs_table
        return self.costs_measured

    def to_dict(self) -> dict[str, Any]:
        def opt(v: Sequence[float] | None) -> list[float] | None:
            return None if v is None else list(v)

        return {"full_measured_ms": self.full_measured_ms, "full_table_ms": self.full_table_ms,
                "head_alone_ms": list(self.head_alone_ms),
                "head_in_network_ms": list(self.head_in_network_ms),
                "prefix_table_ms": opt(self.prefix_table_ms),
                "segment_ms": list(self.segment_ms), "whole_model_ms": self.whole_model_ms,
                "costs_table": opt(self.costs_table), "costs_measured": list(self.costs_measured)}


@dataclass
class TrainedExits:
    """A subnet with trained exit heads, its exits' outputs on the validation and test
    splits and its latencies: everything needed to choose thresholds and report them."""

    ctx: SubnetContext
    net: EarlyExitNet
    val: ExitOutputs
    test: ExitOutputs
    latency: ExitLatency
    target: Target

    @property
    def default_basis(self) -> Basis:
        return "table" if self.latency.costs_table is not None else "measured"

    def choose(self, *, max_drop_points: float | None = None, target_ms: float | None = None,
               basis: Basis | None = None) -> tuple[CascadeStats, bool]:
        """Thresholds chosen on the validation split (see
        :func:`~ofa_search.compress.exit_net.choose_thresholds`); ``max_drop_points`` in
        accuracy points. Returns the validation stats and whether the constraint was met."""
        costs = self.latency.costs(basis or self.default_basis)
        return choose_thresholds(
            self.val, costs, max_ms=target_ms,
            max_drop=None if max_drop_points is None else max_drop_points / 100.0)

    def report(self, thresholds: Sequence[float]) -> dict[str, Any]:
        """Test-split accuracy, shares and expected latency of the cascade (both bases)
        beside the subnet without exits."""
        lat = self.latency
        measured = cascade_stats(self.test, thresholds, lat.costs_measured)
        table = (cascade_stats(self.test, thresholds, lat.costs_table)
                 if lat.costs_table is not None else None)
        full_acc = float(self.test.correct[-1].mean())
        out: dict[str, Any] = {
            "thresholds": list(measured.thresholds),
            "accuracy": measured.accuracy, "accuracy_without_exits": full_acc,
            "accuracy_loss_points": 100 * (full_acc - measured.accuracy),
            "shares": list(measured.shares),
            "exit_accuracy": [float(c.mean()) for c in self.test.correct[:-1]],
            "expected_measured_ms": measured.expected_ms,
            "full_measured_ms": lat.full_measured_ms,
            "reduction_measured": 1 - measured.expected_ms / lat.full_measured_ms,
            "expected_table_ms": None if table is None else table.expected_ms,
            "full_table_ms": lat.full_table_ms,
            "reduction_table": (None if table is None or not lat.full_table_ms
                                else 1 - table.expected_ms / lat.full_table_ms),
        }
        return out


@dataclass(frozen=True)
class ExitsResult:
    """What :func:`exits` did (``to_dict`` is the CLI's JSON). ``finished`` is False when
    ``stop_after_steps`` ended training early (resume with ``resume=True``); then there
    are no artefacts or reports. ``trained`` (not serialised) lets a caller choose other
    thresholds for the same heads."""

    out_dir: Path
    finished: bool
    steps: int
    after_stages: tuple[int, ...]
    threshold_source: str | None = None
    constraint_met: bool | None = None
    report: dict[str, Any] | None = None
    latency: ExitLatency | None = None
    artefact: Path | None = None
    segments: tuple[Path, ...] = ()
    verification: dict[str, float] | None = None
    card_json: Path | None = None
    card_markdown: Path | None = None
    trained: TrainedExits | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        def path(p: Path | None) -> str | None:
            return None if p is None else str(p)

        return {"out_dir": str(self.out_dir), "finished": self.finished, "steps": self.steps,
                "after_stages": list(self.after_stages),
                "threshold_source": self.threshold_source,
                "constraint_met": self.constraint_met, "report": self.report,
                "latency": None if self.latency is None else self.latency.to_dict(),
                "artefact": path(self.artefact), "segments": [str(s) for s in self.segments],
                "verification": self.verification, "card_json": path(self.card_json),
                "card_markdown": path(self.card_markdown)}


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(
        value)


def _exit_loss(net: EarlyExitNet, temperature: float, label_weight: float
               ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Distillation of every head from the final head (softened by ``temperature``, scaled
    by its square as Hinton et al. do) plus ``label_weight`` × cross-entropy on labels."""
    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            final, feats = net.features(x)
            target = F.softmax(final / temperature, dim=1)
        total = torch.zeros(())
        for head, feat in zip(net.heads, feats, strict=True):
            logits = head(feat)
            total = total + temperature**2 * soft_cross_entropy(logits / temperature, target)
            if label_weight > 0:
                total = total + label_weight * F.cross_entropy(logits, y)
        return total

    return loss


class _HeadsOnFeatures(torch.nn.Module):
    """The heads fed by a frozen backbone that is not a submodule (so BN recalibration
    recomputes the heads' statistics only)."""

    def __init__(self, net: EarlyExitNet) -> None:
        super().__init__()
        self.heads = net.heads
        self._net = (net,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, feats = self._net[0].features(x)
        for head, feat in zip(self.heads, feats, strict=True):
            head(feat)
        return x


def new_exit_net(ctx: SubnetContext, after_stages: Sequence[int], head_width: int,
                 seed: int) -> EarlyExitNet:
    """The calibrated subnet of ``ctx`` with freshly initialised heads (seeded)."""
    arch = ctx.arch
    gen = torch.Generator().manual_seed(seed)
    heads = []
    for channels in head_input_channels(arch, after_stages):
        head = ExitHead(channels, head_width, arch.search_space.num_classes)
        init_weights(head, gen)
        heads.append(head)
    net = EarlyExitNet(ctx.net, after_stages, heads)
    for param in net.backbone.parameters():
        param.requires_grad_(False)
    return net


def train_exit_heads(ctx: SubnetContext, net: EarlyExitNet, out_dir: Path, *, steps: int,
                     config: FinetuneConfig, temperature: float, label_weight: float,
                     options: dict[str, Any], resume_from: Path | None, checkpoint_every: int,
                     stop_after_steps: int | None, quiet: bool) -> tuple[bool, int]:
    """Train ``net``'s heads for ``steps`` steps (resumable from ``resume_from``); returns
    whether training finished and the steps done."""
    trainer = Trainer(net.heads, _exit_loss(net, temperature, label_weight), ctx.data.train,
                      ctx.arch.resolution, config, seed=ctx.seed, total=steps)
    start = 0
    if resume_from is not None:
        state = load_state(resume_from, "exits")
        _check_options(resume_from, state, options)
        net.heads.load_state_dict(state["heads"])
        if state.get("optimizer"):
            trainer.optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
    stop = steps if stop_after_steps is None else min(steps, stop_after_steps)

    def checkpoint(done: int) -> None:
        save_state(out_dir / STATE_NAME, {
            "kind": "exits", "options": options, "step": done, "steps": steps,
            "finished": done >= steps, "heads": net.heads.state_dict(),
            "optimizer": trainer.optimizer.state_dict()})

    if start < stop:
        net.backbone.eval()
        bar = progress_bar(stop - start, "training exits", quiet)
        with channels_last(net.backbone):
            trainer.run(start, stop, bar=bar, checkpoint=checkpoint, every=checkpoint_every)
        if bar is not None:
            bar.close()
    elif start == 0:
        checkpoint(0)
    done = max(start, stop)
    if done >= steps:
        recalibrate_bn(_HeadsOnFeatures(net), ctx.calib_inputs())
    net.eval()
    return done >= steps, done


def _check_options(path: Path, state: dict[str, Any], options: dict[str, Any]) -> None:
    saved = state.get("options") or {}
    diff = sorted(k for k in set(saved) | set(options) if saved.get(k) != options.get(k))
    if diff:
        raise CompressError(f"{path} was written with other options ({', '.join(diff)}); "
                            "resume with the same options or choose another output folder")


def _outputs(net: EarlyExitNet, data: DatasetSplits, split: str, resolution: int
             ) -> ExitOutputs:
    with channels_last(net):
        batches = ((x.contiguous(memory_format=torch.channels_last), y) for x, y in
                   iterate_batches(data.split(split), 256, shuffle=False,
                                   resolution=resolution))
        return collect_outputs(net, batches)


def measure_exits(ctx: SubnetContext, net: EarlyExitNet, target: Target, *,
                  rounds: int = MEASURE_ROUNDS, timing: TimingConfig | None = None
                  ) -> ExitLatency:
    """Measure the subnet, each head alone, each segment and the whole multi-output model
    (interleaved rounds) and price the prefixes by the table (see the module docstring)."""
    rng = np.random.default_rng(0)
    shapes = net.segment_input_shapes(1)

    def seeded(model: Any, shape: tuple[int, ...]) -> Model:
        return model, {INPUT_NAME: rng.standard_normal(shape).astype(np.float32)}

    n = len(net.cuts)
    models: list[Model] = [module_onnx(ctx.net, ctx.net.input_shape(1))]
    models += [module_onnx(head, shapes[k + 1]) for k, head in enumerate(net.heads)]
    models += [seeded(m, s) for m, s in zip(segment_models(net), shapes, strict=True)]
    models.append(seeded(export_multi(net, net.input_shape(1), net.output_names), shapes[0]))
    stats = [s.median_ms for s in measure_models(target, models, rounds=rounds, timing=timing)]
    full, heads, segments, whole = stats[0], stats[1:1 + n], stats[1 + n:2 + 2 * n], stats[-1]
    priced = (None if target.table is None else
              prefix_prices(target.table, arch_units(ctx.arch), ctx.arch.resolution, net.cuts))
    prefix: list[float] | None = None
    in_net = list(heads)
    full_table = None
    if priced is not None:
        full_table = priced.full_ms
        prefix = [*priced.prefix_ms, priced.full_ms]
        in_net = [priced.factor * h for h in heads]
    seg_cum = np.cumsum(segments).tolist()
    costs_measured = [seg_cum[k] for k in range(n)] + [seg_cum[-1]]
    return ExitLatency(
        full_measured_ms=full, full_table_ms=full_table, head_alone_ms=tuple(heads),
        head_in_network_ms=tuple(in_net),
        prefix_table_ms=None if prefix is None else tuple(prefix),
        segment_ms=tuple(segments), whole_model_ms=whole,
        costs_table=None if prefix is None else tuple(exit_costs(prefix, in_net)),
        costs_measured=tuple(costs_measured))


def exits(checkpoint: str | os.PathLike[str], arch: str | Arch, out_dir: str | os.PathLike[str],
          *, after_stages: Sequence[int] = DEFAULT_STAGES,
          thresholds: float | Sequence[float] | None = None,
          max_accuracy_drop: float | None = None, target_latency_ms: float | None = None,
          basis: Basis | None = None, head_width: int = DEFAULT_HEAD_WIDTH, steps: int = 300,
          batch_size: int = 64, lr: float = 0.05, temperature: float = 1.0,
          label_weight: float = 0.0, augment: bool = True, device: str | None = None,
          workspace: str | os.PathLike[str] | None = None, data: DatasetSplits | None = None,
          data_dir: str | os.PathLike[str] | None = None, calib_batches: int = 16,
          seed: int = 0, rounds: int = MEASURE_ROUNDS, timing: TimingConfig | None = None,
          checkpoint_every: int = 50, stop_after_steps: int | None = None,
          resume: bool = False, quiet: bool = False,
          say: Callable[[str], None] | None = None) -> ExitsResult:
    """Early exits after ``after_stages`` of subnet ``arch`` of ``checkpoint``'s supernet
    (see the module docstring); artefacts, state and card go to ``out_dir``.

    Thresholds: ``thresholds`` (one per exit, or one for all, each in (0, 1]) as given;
    else chosen on the validation split, ``target_latency_ms`` for the most accurate
    cascade with at most that expected latency, or ``max_accuracy_drop`` (points, default
    0.5) for the fastest within that accuracy loss; ``basis`` says which expected latency
    (``table``, the default when the device's table prices the subnet, or ``measured``).
    Latencies are measured on ``device``'s backend (default: ONNX Runtime, 1 thread).
    Heads: ``head_width`` channels of 1×1 conv before pooling (0: pooling and a linear
    layer only); trained for ``steps`` steps on distillation at ``temperature`` plus
    ``label_weight`` × cross-entropy on labels (0: distillation only).

    Raises (before any work): :class:`~ofa_search.compress.errors.ExitStageError`,
    :class:`~ofa_search.compress.errors.ThresholdError`, ``CompressError`` for other
    options, an unknown device or an output folder that cannot be written.
    """
    say = say or (lambda _: None)
    folder = Path(out_dir)
    n_stages = (arch.search_space.num_stages if isinstance(arch, Arch) else None)
    if n_stages is not None:
        check_exit_stages(after_stages, n_stages)
    n_exits = len(list(after_stages))
    taus = None if thresholds is None else check_thresholds(thresholds, n_exits)
    chosen = sum(v is not None for v in (thresholds, max_accuracy_drop, target_latency_ms))
    if chosen > 1:
        raise CompressError("give at most one of thresholds, max_accuracy_drop and "
                            "target_latency_ms")
    if max_accuracy_drop is not None and not (
            _is_real(max_accuracy_drop) and 0 <= max_accuracy_drop < 100):
        raise CompressError(f"max_accuracy_drop must be in [0, 100) points, "
                            f"got {max_accuracy_drop!r}")
    if target_latency_ms is not None and not (
            _is_real(target_latency_ms) and target_latency_ms > 0):
        raise CompressError(f"target_latency_ms must be a number > 0, "
                            f"got {target_latency_ms!r}")
    if basis not in (None, "table", "measured"):
        raise CompressError(f"basis must be 'table' or 'measured', got {basis!r}")
    check_positive(head_width, "head_width", 0)
    check_positive(steps, "steps", 0)
    check_positive(checkpoint_every, "checkpoint_every")
    check_positive(rounds, "rounds")
    if stop_after_steps is not None:
        check_positive(stop_after_steps, "stop_after_steps")
    if not (_is_real(temperature) and temperature > 0 and _is_real(label_weight)
            and label_weight >= 0):
        raise CompressError(f"temperature must be > 0 and label_weight >= 0, got "
                            f"{temperature=}, {label_weight=}")
    config = FinetuneConfig(batch_size=batch_size, lr=lr, augment=augment, kd_ratio=0.0,
                            label_smoothing=0.0)
    check_writable_dir(folder, "output folder")
    resume_from = check_resume(folder, resume)
    target = resolve_target(device, workspace)
    if basis == "table" and target.table is None:
        raise CompressError("basis 'table' needs a device with a latency table (--device)")

    ctx = load_subnet(checkpoint, arch, data=data, data_dir=data_dir,
                      calib_batches=calib_batches, seed=seed, say=say,
                      check=lambda a: check_exit_stages(after_stages, a.search_space.num_stages))
    if basis == "table" and target.table is not None and price_units(
            target.table, arch_units(ctx.arch), ctx.arch.resolution).ms is None:
        raise CompressError(f"device {target.device!r} has no table pricing "
                            f"{ctx.arch.to_string()}; use basis 'measured'")
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder)
    stages = check_exit_stages(after_stages, ctx.arch.search_space.num_stages)
    options = {"arch": ctx.arch.to_string(), "after_stages": list(stages),
               "head_width": head_width, "steps": steps, "temperature": temperature,
               "label_weight": label_weight, "seed": seed, "calib_batches": calib_batches,
               **config.to_dict()}
    net = new_exit_net(ctx, stages, head_width, seed)
    say(f"training {len(stages)} exit heads for {steps} steps")
    finished, done = train_exit_heads(
        ctx, net, folder, steps=steps, config=config, temperature=temperature,
        label_weight=label_weight, options=options, resume_from=resume_from,
        checkpoint_every=checkpoint_every, stop_after_steps=stop_after_steps, quiet=quiet)
    if not finished:
        say(f"stopped after {done} of {steps} steps; resume with --resume")
        return ExitsResult(folder, False, done, stages)

    say("evaluating exits on the validation and test splits")
    val = _outputs(net, ctx.data, "val", ctx.arch.resolution)
    test = _outputs(net, ctx.data, "test", ctx.arch.resolution)
    say(f"measuring latencies on {target.device}")
    latency = measure_exits(ctx, net, target, rounds=rounds, timing=timing)
    trained = TrainedExits(ctx, net, val, test, latency, target)
    met: bool | None = None
    if taus is not None:
        source = "given"
    elif target_latency_ms is not None:
        stats, met = trained.choose(target_ms=target_latency_ms, basis=basis)
        taus, source = stats.thresholds, f"validation: expected latency <= {target_latency_ms}"
    else:
        drop = 0.5 if max_accuracy_drop is None else max_accuracy_drop
        stats, met = trained.choose(max_drop_points=drop, basis=basis)
        taus, source = stats.thresholds, f"validation: accuracy loss <= {drop} points"
    report = trained.report(taus)

    x, _ = next(iterate_batches(ctx.data.test, VERIFY_SAMPLES, shuffle=False,
                                resolution=ctx.arch.resolution))
    say("writing the early-exit ONNX model and its segments, verified with onnxruntime")
    model_path, segment_paths, diffs = write_exit_artefacts(net, folder, x)
    card_json, card_md = _write_card(trained, folder, model_path, segment_paths, diffs,
                                     report, source, workspace, done)
    return ExitsResult(folder, True, done, stages, source, met, report, latency, model_path,
                       tuple(segment_paths), diffs, card_json, card_md, trained)


def _write_card(trained: TrainedExits, folder: Path, model: Path, segments: Sequence[Path],
                diffs: dict[str, float], report: dict[str, Any], source: str,
                workspace: str | os.PathLike[str] | None, steps: int) -> tuple[Path, Path]:
    ctx, net, lat = trained.ctx, trained.net, trained.latency
    macs = sum(u.macs() for u in arch_units(ctx.arch))
    for head, shape in zip(net.heads, net.segment_input_shapes(1)[1:], strict=True):
        assert isinstance(head, ExitHead)
        macs += head.macs(shape[2])
    shares = ", ".join(f"{s:.1%}" for s in report["shares"])
    table_line = ("n/a (the table does not price this subnet)"
                  if report["expected_table_ms"] is None else
                  f"{report['expected_table_ms']:.4f} ms vs {report['full_table_ms']:.4f} ms "
                  f"({report['reduction_table']:.1%} less)")
    compression = {
        "method": "early-exits", "after_stages": list(net.after_stages),
        "exit_outputs": net.output_names[1:], "segments": [p.name for p in segments],
        "threshold_source": source, "steps": steps, "report": report,
        "latency": lat.to_dict(), "latency_target": trained.target.to_dict(),
        "summary": [
            f"Early exits after stages {list(net.after_stages)} (outputs "
            f"{', '.join(net.output_names[1:])}), heads distilled from the final head for "
            f"{steps} steps with the backbone frozen",
            f"Thresholds {report['thresholds']} ({source}); shares leaving at each exit and "
            f"at the end: {shares}",
            f"Test accuracy {report['accuracy']:.4f} vs {report['accuracy_without_exits']:.4f}"
            f" without exits ({report['accuracy_loss_points']:+.2f} points lost)",
            f"Expected latency (table prefixes + measured heads): {table_line}",
            f"Expected latency (segments measured on {trained.target.device}): "
            f"{report['expected_measured_ms']:.4f} ms vs {report['full_measured_ms']:.4f} ms "
            f"({report['reduction_measured']:.1%} less)",
            f"`model.onnx` holds every exit as an output (measured {lat.whole_model_ms:.4f} ms:"
            " it runs them all); the saving needs the segments "
            f"{', '.join(p.name for p in segments)}, run in turn",
        ]}
    device = {"id": trained.target.device, "predicted_latency_ms": report["expected_table_ms"],
              "latency_predictor": "expected: table prefixes + measured heads",
              "measured_latency_ms": report["expected_measured_ms"],
              "measured_iqr_ms": None, "measured_runs": None, "not_measured_reason": None}
    card = base_card(
        checkpoint=ctx.checkpoint, meta=ctx.meta, arch=ctx.arch, macs=int(macs),
        params=params_of(net), input_shape=net.input_shape(1), mean=ctx.data.mean,
        std=ctx.data.std, dataset=ctx.dataset_card(report["accuracy"]), device=device,
        artefact=model, fmt={"format": "onnx-early-exit",
                             "description": "fp32 ONNX, opset 17, batch 1, exits as outputs"},
        verification={"runtime": "onnxruntime", "max_abs_diff": max(diffs.values()),
                      "tolerance": TOLERANCE, "samples": VERIFY_SAMPLES, "passed": True,
                      "by_artefact": diffs},
        compression=compression, workspace=workspace)
    return write_compressed_card(folder, card)
