"""``ofa-search demo``, ``train`` and ``eval``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ofa_search.arch import parse_arch
from ofa_search.cli.options import (
    DEFAULT_SPACE,
    CalibImagesOpt,
    JsonOpt,
    MaxEvalImagesOpt,
    SeedOpt,
    SpaceOpt,
    WorkspaceOpt,
    check_finite,
    emit_json,
)
from ofa_search.errors import OfaSearchError
from ofa_search.space import get_space
from ofa_search.workspace import check_workspace

app = typer.Typer()


@app.command("demo")
def demo(workspace: WorkspaceOpt,
         space: Annotated[str, typer.Option("--space", "-s")] = "mbv3_small28_int8",
         seed: SeedOpt = 0,
         epochs: Annotated[int, typer.Option("--epochs", min=1)] = 6,
         n_archs: Annotated[int, typer.Option(
             "--n-archs", min=10, help="subnets evaluated for the accuracy predictor")] = 150,
         n_latency: Annotated[int, typer.Option(
             "--n-latency", min=5, help="end-to-end latency measurements")] = 40,
         resolutions: Annotated[list[int] | None, typer.Option(
             "--resolutions", "-r", help="profile only these (default: all)")] = None,
         quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
         ) -> None:
    """The main job on digits: train, profile, fit, front, three queries, export, plot."""
    check_workspace(workspace, must_exist=False, writable=True)
    # deferred until the cheap checks pass: each command imports only the library parts it
    # runs (CLI start-up)
    from ofa_search.demo.run import run_demo

    run_demo(workspace, space=space, seed=seed, epochs=epochs, n_archs=n_archs,
             n_latency=n_latency, resolutions=resolutions, echo=typer.echo,
             progress=not quiet)


# -- train / eval ------------------------------------------------------------------------
@app.command("train")
def train_cmd(
    space: SpaceOpt = DEFAULT_SPACE,
    data: Annotated[str, typer.Option("--data", "-d", help="dataset name")] = "digits",
    strategy: Annotated[str, typer.Option(
        "--strategy", help="ps, sandwich, spos, or precision (int8/binary fine-tuning of a "
        "trained supernet given by --init)")] = "sandwich",
    epochs: Annotated[int, typer.Option("--epochs", min=1,
                                        help="epochs (ps, precision: per phase)")] = 5,
    out: Annotated[Path, typer.Option("--out", "-o", help="run folder")] = Path(
        "ofa-workspace/supernet"),
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    lr: Annotated[float, typer.Option("--lr")] = 0.05,
    optimizer: Annotated[str, typer.Option(
        "--optimizer", help="sgd (Nesterov momentum 0.9; once-for-all's) or adamw (Adam "
        "with decoupled weight decay, as binary networks are trained)")] = "sgd",
    weight_decay: Annotated[float, typer.Option(
        "--weight-decay", min=0.0, help="on weights, not on BN parameters and "
        "biases")] = 3e-5,
    depthwise_lr_scale: Annotated[float, typer.Option(
        "--depthwise-lr-scale", help="the depthwise convs learn at the learning rate times "
        "this scale in (0, 1] (e.g. 0.2 to keep the fp32 subnets' shared depthwise weights "
        "from drifting under binary training)")] = 1.0,
    warmup_epochs: Annotated[int, typer.Option("--warmup-epochs", min=0)] = 0,
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
    seed: SeedOpt = 0,
    threads: Annotated[int | None, typer.Option("--threads", min=1, max=1024,
                                                help="torch intra-op threads")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue OUT/checkpoint.pt")] = False,
    init: Annotated[Path | None, typer.Option(
        "--init", help="start from this checkpoint's weights (e.g. an fp32 supernet of the "
        "same structure for --strategy precision)")] = None,
    steps_per_epoch: Annotated[int | None, typer.Option(
        "--steps-per-epoch", min=1, help="cap on optimizer steps per epoch (default: one "
        "pass over the train split)")] = None,
    resolutions: Annotated[list[int] | None, typer.Option(
        "--resolutions", "-r", help="sample only these resolutions (repeat for several; "
        "default: all of the space's)")] = None,
    device: Annotated[str, typer.Option(
        "--device", help="auto (a CUDA GPU when there is one), cpu, cuda or cuda:N")] = "auto",
    amp: Annotated[str, typer.Option(
        "--amp", help="autocast: off, bf16, or fp16 (CUDA only)")] = "off",
    cudnn_benchmark: Annotated[bool, typer.Option(
        "--cudnn-benchmark/--no-cudnn-benchmark", help="CUDA: let cuDNN pick the fastest "
        "conv algorithms by timing them (once-for-all's setting)")] = True,
    checkpoint_every: Annotated[int | None, typer.Option(
        "--checkpoint-every", min=1, help="also checkpoint every N optimizer steps (a run "
        "killed mid-epoch resumes from there with --resume)")] = None,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=0, help="decoding processes of a streamed dataset (--data imagenet; "
        "default: one per core, at most 4)")] = None,
    recipe: Annotated[str, typer.Option(
        "--recipe", help="ofa (cosine decay, dropout in every subnet) or bignas (zero-γ "
        "residual init, exponential decay with a constant ending, dropout in the largest "
        "subnet only, weight EMA; sandwich only)")] = "ofa",
    random_erasing: Annotated[float, typer.Option(
        "--random-erasing", min=0.0, max=1.0, help="also erase a random box of each "
        "training image with this probability (Zhong et al.: 0.5); in-memory datasets "
        "only")] = 0.0,
    ema_decay: Annotated[float | None, typer.Option(
        "--ema-decay", help="keep an EMA of the weights with this per-step decay (bignas: "
        "0.9998, warmed up over the first updates); checkpoints then serve the EMA "
        "weights")] = None,
    precision_schedule: Annotated[str | None, typer.Option(
        "--precision-schedule", help="precision only: phases as NAME:EPOCHS[@LR],… in "
        "order, e.g. int8:1,binary-weights:3,binary:6@0.005 (default: every phase of the "
        "space, --epochs and --lr each)")] = None,
    binary_share: Annotated[float | None, typer.Option(
        "--binary-share", min=0.0, max=1.0, help="precision only: probability that a "
        "sampled stage is binary in the phases that offer binary (default: every "
        "precision of the phase equally likely)")] = None,
    distill: Annotated[bool, typer.Option(
        "--distill/--no-distill", help="precision only: the sampled subnets learn from "
        "the fp32 largest subnet's output (default) or from the labels")] = True,
    fp32_smallest: Annotated[bool, typer.Option(
        "--fp32-smallest", help="precision only: the sandwich's smallest subnet stays fp32 "
        "(only the random subnets take low precisions)")] = False,
    binary_largest: Annotated[bool, typer.Option(
        "--binary-largest", help="precision only: in the binary phases the largest subnet "
        "with every stage binary takes one random subnet's place in each step")] = False,
    binary_ablation: Annotated[list[str] | None, typer.Option(
        "--binary-ablation", help="precision only, repeatable: switch off one ingredient "
        "of every binary conv (scale, shortcut, threshold, or expand_shortcut / "
        "project_shortcut: the shortcut of each block's expand / project conv only); "
        "subnets trained so are exported only where the binary kernels hold them")] = None,
    binary_weights: Annotated[str, typer.Option(
        "--binary-weights", help="precision only: shared (the binary 1×1 convs binarize "
        "the fp32 convs' weights) or own (latent weights of their own, started as copies "
        "of the fp32 ones, so that binary training leaves those to the fp32 subnets)")
    ] = "shared",
    random_subnets: Annotated[int | None, typer.Option(
        "--random-subnets", min=0, help="sandwich and precision: random subnets per step "
        "beside the largest and the smallest (default 2; --binary-largest takes one of "
        "them, so --random-subnets 1 with it trains no random binary subnet)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Train a supernet (under torchrun for several processes); writes OUT/checkpoint.pt."""
    # deferred: each command imports only the library parts it runs (CLI start-up)
    from ofa_search.train import (
        BINARY_WEIGHTS,
        OPTIMIZERS,
        SUPERNET_STRATEGIES,
        TrainConfig,
        train,
        with_recipe,
    )
    from ofa_search.train.strategies import parse_precision_schedule

    if strategy not in SUPERNET_STRATEGIES:
        raise OfaSearchError(f"--strategy must be one of {', '.join(SUPERNET_STRATEGIES)}, got "
                             f"{strategy!r}")
    check_finite(lr, "--lr")
    check_finite(weight_decay, "--weight-decay", positive=False)
    check_finite(depthwise_lr_scale, "--depthwise-lr-scale")
    if depthwise_lr_scale > 1:
        raise OfaSearchError(f"--depthwise-lr-scale must be in (0, 1], got "
                             f"{depthwise_lr_scale!r}")
    if optimizer not in OPTIMIZERS:
        raise OfaSearchError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got "
                             f"{optimizer!r}")
    if resolutions:
        offered = get_space(space).resolutions
        bad = sorted({r for r in resolutions if r not in offered})
        if bad:
            raise OfaSearchError(f"--resolutions: space {space!r} has resolutions "
                                 f"{list(offered)}, not {bad}")
    if strategy != "precision" and (binary_share is not None or not distill or fp32_smallest
                                    or binary_largest or binary_ablation):
        raise OfaSearchError("--binary-share, --no-distill, --fp32-smallest, "
                             "--binary-largest and --binary-ablation apply to --strategy "
                             "precision only")
    if binary_weights not in BINARY_WEIGHTS:
        raise OfaSearchError(f"--binary-weights must be one of {', '.join(BINARY_WEIGHTS)}, "
                             f"got {binary_weights!r}")
    if binary_weights != "shared" and strategy != "precision":
        raise OfaSearchError("--binary-weights applies to --strategy precision only")
    if random_subnets is not None and strategy not in ("sandwich", "precision"):
        raise OfaSearchError("--random-subnets applies to --strategy sandwich and precision "
                             "only")
    if binary_largest and random_subnets == 0:
        raise OfaSearchError("--binary-largest takes a random subnet's place: it needs "
                             "--random-subnets >= 1")
    phases = None
    if precision_schedule is not None:
        if strategy != "precision":
            raise OfaSearchError("--precision-schedule applies to --strategy precision only")
        try:
            phases = parse_precision_schedule(precision_schedule, space, lr=lr)
        except ValueError as exc:
            raise OfaSearchError(f"--precision-schedule: {exc}") from None
    if threads is not None:
        import torch  # deferred: torch only with --threads

        torch.set_num_threads(threads)
    config = TrainConfig(space=space, dataset=data, data_dir=None if data_dir is None
                         else str(data_dir), strategy=strategy, epochs=epochs,
                         batch_size=batch_size, lr=lr, optimizer=optimizer,
                         weight_decay=weight_decay, depthwise_lr_scale=depthwise_lr_scale,
                         warmup_epochs=warmup_epochs, seed=seed,
                         out_dir=str(out), resume=resume, quiet=quiet,
                         init_checkpoint=None if init is None else str(init),
                         steps_per_epoch=steps_per_epoch, device=device, amp=amp,
                         cudnn_benchmark=cudnn_benchmark,
                         checkpoint_every=checkpoint_every, ema_decay=ema_decay,
                         random_erasing=random_erasing,
                         num_workers=workers, precision_phases=phases,
                         binary_share=binary_share, precision_distill=distill,
                         precision_fp32_smallest=fp32_smallest,
                         precision_binary_largest=binary_largest,
                         binary_ablation=tuple(binary_ablation or ()),
                         binary_weights=binary_weights,
                         n_random=(TrainConfig.n_random if random_subnets is None
                                   else random_subnets),
                         resolutions=tuple(dict.fromkeys(resolutions)) if resolutions else None)
    path = train(with_recipe(config, recipe))
    if not quiet:
        typer.echo(f"wrote {path}")


@app.command("eval")
def eval_cmd(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="checkpoint.pt")],
    arch: Annotated[str, typer.Option("--arch", help="arch string or JSON (its space is the "
                                      "checkpoint's)")],
    data: Annotated[str | None, typer.Option("--data", "-d",
                                             help="dataset (default: the training one)")] = None,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="the dataset's folder; ImageNet supernets (imported from "
        "once-for-all) need an ImageNet-layout folder DIR/train/<wnid>/…, "
        "DIR/val/<wnid>/…")] = None,
    split: Annotated[str, typer.Option("--split", help="val or test (ImageNet: its val/ "
                                       "folder either way)")] = "test",
    calib_images: CalibImagesOpt = 2000,
    max_eval_images: MaxEvalImagesOpt = 10_000,
    as_json: JsonOpt = False,
) -> None:
    """Accuracy of one subnet of a trained supernet, after BN recalibration."""
    if split not in ("val", "test"):
        raise OfaSearchError(f"--split must be val or test, got {split!r}")
    # deferred until the cheap checks pass: each command imports only the library parts it
    # runs (CLI start-up)
    from ofa_search.data import is_streamed_dataset, load_dataset, open_image_stream
    from ofa_search.train import evaluate_arch, evaluate_arch_stream, load_supernet

    net, meta = load_supernet(checkpoint)
    parsed = parse_arch(arch, meta["space"])
    config = meta.get("config") or {}
    name = data or config["dataset"]
    samples: int | None = None
    if is_streamed_dataset(name):
        folder = data_dir if data_dir is not None else config.get("data_dir")
        scored = evaluate_arch_stream(
            net, parsed, open_image_stream(folder, parsed.resolution, name=name),
            calib_images=calib_images, max_eval_images=max_eval_images, progress=True)
        accuracy, samples, split = scored.accuracy, scored.eval_images, "val"
    else:
        dataset = load_dataset(name, data_dir=data_dir, in_channels=net.space.in_channels,
                               resolution=parsed.resolution)
        accuracy = evaluate_arch(net, parsed, dataset, split=split)
    result = {"arch": parsed.to_string(), "dataset": name, "split": split,
              "accuracy": accuracy, "checkpoint": str(checkpoint), "epoch": meta["epoch"]}
    if samples is not None:
        result["samples"] = samples
    if as_json:
        emit_json(result)
    else:
        typer.echo(f"{parsed.to_string()}: {split} accuracy {accuracy:.4f} on {name}"
                   + ("" if samples is None else f" ({samples} images)"))
