"""Low-precision fine-tuning: the precision strategy's phases and archs, starting from an
fp32 checkpoint, and resuming it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from ofa_search.errors import FileFormatError
from ofa_search.nn import Supernet
from ofa_search.train import TrainConfig, run_training
from ofa_search.train.checkpoint import load_init_weights
from ofa_search.train.strategies import (
    PrecisionPhase,
    PrecisionStrategy,
    default_precision_phases,
)

MP = "mbv3_small28_mp"
FP32 = TrainConfig(space="mbv3_small28", dataset="digits", batch_size=16, resolutions=(16,),
                   epochs=1, steps_per_epoch=2, lr=0.05, quiet=True, seed=1, n_random=1)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_default_phases_int8_then_two_stage_binary() -> None:
    phases = default_precision_phases(MP, epochs=2, lr=0.01)
    assert [(p.name, p.precisions, p.binary_activations) for p in phases] == [
        ("int8", ("fp32", "int8"), True),
        ("binary-weights", ("fp32", "int8", "binary"), False),
        ("binary", ("fp32", "int8", "binary"), True)]
    assert all(p.epochs == 2 and p.lr == 0.01 for p in phases)
    with pytest.raises(ValueError, match="offers no low precision"):
        default_precision_phases("mbv3_small28")


def test_precision_strategy_samples_phase_precisions_under_an_fp32_teacher() -> None:
    strategy = PrecisionStrategy(MP, n_random=3, seed=0)
    seen: dict[str, set[str]] = {}
    for epoch, phase in enumerate(strategy.phases):
        strategy.begin_epoch(epoch)
        assert strategy.binary_activations == phase.binary_activations
        for _ in range(30):
            tasks = strategy.step()
            assert tasks[0].loss == "labels" and set(tasks[0].arch.precisions) == {"fp32"}
            assert tasks[0].arch == strategy.largest
            assert all(t.loss == "inplace" for t in tasks[1:]) and len(tasks) == 5
            for task in tasks[1:]:
                seen.setdefault(phase.name, set()).update(task.arch.precisions)
    assert seen == {"int8": {"fp32", "int8"}, "binary-weights": {"fp32", "int8", "binary"},
                    "binary": {"fp32", "int8", "binary"}}


def test_binary_share_sets_how_often_a_stage_is_binary_and_distill_the_loss() -> None:
    strategy = PrecisionStrategy(MP, n_random=3, seed=0, binary_share=1.0, distill=False)
    for epoch, phase in enumerate(strategy.phases):
        strategy.begin_epoch(epoch)
        for _ in range(20):
            tasks = strategy.step()
            assert tasks[0].loss == "labels" and set(tasks[0].arch.precisions) == {"fp32"}
            assert all(t.loss == "labels" for t in tasks[1:])
            seen = {p for t in tasks[1:] for p in t.arch.precisions}
            # int8 has no binary, so the share does not apply: its precisions stay uniform
            assert seen == ({"binary"} if "binary" in phase.precisions else {"fp32", "int8"})
    never = PrecisionStrategy(MP, n_random=3, seed=0, binary_share=0.0)
    never.begin_epoch(2)
    assert all("binary" not in t.arch.precisions for _ in range(20) for t in never.step())
    half = PrecisionStrategy(MP, n_random=3, seed=0, binary_share=0.5)
    half.begin_epoch(2)
    draws = [p for _ in range(200) for t in half.step()[1:] for p in t.arch.precisions]
    assert 0.45 < draws.count("binary") / len(draws) < 0.55
    assert half.precision_weights() == (0.25, 0.25, 0.5)
    with pytest.raises(ValueError, match="binary_share must be in"):
        PrecisionStrategy(MP, binary_share=1.5)
    kept = PrecisionStrategy(MP, n_random=2, seed=0, binary_share=1.0, fp32_smallest=True)
    kept.begin_epoch(2)
    for _ in range(10):
        _, smallest, *random = kept.step()
        assert smallest.arch == kept.smallest and set(smallest.arch.precisions) == {"fp32"}
        assert all(set(t.arch.precisions) == {"binary"} for t in random)
    top = PrecisionStrategy(MP, n_random=2, seed=0, binary_share=1.0, binary_largest=True)
    all_binary = top.largest.replace(precisions=("binary",) * top.space.num_stages)
    top.begin_epoch(0)  # the int8 phase offers no binary: two random subnets, as before
    assert [t.arch for t in top.step()[2:]] != [all_binary] and len(top.step()) == 4
    top.begin_epoch(2)
    for _ in range(5):
        tasks = top.step()
        assert len(tasks) == 4 and tasks[2].arch == all_binary and tasks[2].loss == "inplace"
        assert tasks[3].arch != all_binary and set(tasks[3].arch.precisions) == {"binary"}
    with pytest.raises(ValueError, match="needs n_random >= 1, got 0"):
        PrecisionStrategy(MP, n_random=0, binary_largest=True)
    with pytest.raises(ValueError, match="needs a space with binary stages"):
        PrecisionStrategy("mbv3_small28_int8", binary_largest=True)


def test_precision_phase_validation() -> None:
    with pytest.raises(ValueError, match="precisions must be a non-empty subset"):
        PrecisionStrategy(MP, phases=[PrecisionPhase("x", ("int4",), True, 1, 0.1)])


def test_fine_tuning_starts_from_fp32_weights_and_resumes_bit_for_bit(tmp_path: Path) -> None:
    fp32 = run_training(dataclasses.replace(FP32, out_dir=str(tmp_path / "fp32")))
    config = dataclasses.replace(FP32, space=MP, strategy="precision", lr=0.01,
                                 init_checkpoint=str(fp32.checkpoint))
    straight = run_training(dataclasses.replace(config, out_dir=str(tmp_path / "a")))
    assert straight.epoch == 3  # one epoch per phase
    run_training(dataclasses.replace(config, out_dir=str(tmp_path / "b"), stop_after_epochs=1))
    resumed = run_training(dataclasses.replace(config, out_dir=str(tmp_path / "b"),
                                               resume=True))
    a, b = straight.supernet.state_dict(), resumed.supernet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the quantisers observed ranges, the binary BNs trained, the fp32 weights moved
    assert int(a["stages.0.0.quant.expand.count"]) > 0
    assert not torch.equal(a["stages.0.0.binary_project_bn.weight"],
                           torch.ones_like(a["stages.0.0.binary_project_bn.weight"]))
    start = fp32.supernet.state_dict()
    assert not torch.equal(a["head.classifier.weight"], start["head.classifier.weight"])


def test_init_weights_refuse_another_structure(tmp_path: Path) -> None:
    fp32 = run_training(dataclasses.replace(FP32, out_dir=str(tmp_path / "fp32"),
                                            steps_per_epoch=1))
    with pytest.raises(FileFormatError, match="does not fit ofa_mbv3"):
        load_init_weights(Supernet("ofa_mbv3"), fp32.checkpoint)
    net = Supernet(MP)
    load_init_weights(net, fp32.checkpoint)
    assert torch.equal(net.head.classifier.weight, fp32.supernet.head.classifier.weight)


def test_precision_schedule_text_sets_phases_in_order() -> None:
    from ofa_search.train.strategies import parse_precision_schedule

    phases = parse_precision_schedule("binary-weights:2, binary:3@0.005", MP, lr=0.01)
    assert [(p.name, p.epochs, p.lr, p.binary_activations) for p in phases] == [
        ("binary-weights", 2, 0.01, False), ("binary", 3, 0.005, True)]
    assert phases[0].precisions == ("fp32", "int8", "binary")
    assert [p.name for p in parse_precision_schedule("int8:1", "mbv3_small28_int8",
                                                     lr=0.1)] == ["int8"]
    for bad, message in [
        ("int8", r"'int8': expected NAME:EPOCHS\[@LR\] .*\(int8, binary-weights, binary\)"),
        ("int4:1", r"'int4:1': expected NAME:EPOCHS"),
        ("binary:1", r"phases of this space \(int8\)"),  # an int8-only space
        ("int8:x", "EPOCHS must be an integer and LR a number"),
        ("int8:1@fast", "EPOCHS must be an integer and LR a number"),
        ("int8:0", "needs EPOCHS >= 1 and a finite LR > 0"),
        ("int8:1@nan", "needs EPOCHS >= 1 and a finite LR > 0"),
        ("int8:1,int8:2", "phase 'int8' is given twice"),
    ]:
        space = "mbv3_small28_int8" if bad == "binary:1" else MP
        with pytest.raises(ValueError, match=message):
            parse_precision_schedule(bad, space, lr=0.01)


def test_cli_precision_schedule_trains_the_phases_given(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from typer.testing import CliRunner

    from ofa_search.cli import app, main
    from ofa_search.train import load_supernet

    fp32 = run_training(dataclasses.replace(FP32, out_dir=str(tmp_path / "fp32"),
                                            steps_per_epoch=1))
    base = ["train", "--space", MP, "--strategy", "precision", "--init",
            str(fp32.checkpoint), "--out", str(tmp_path / "run"), "-r", "16",
            "--steps-per-epoch", "1", "--batch-size", "16", "--quiet"]
    out = CliRunner().invoke(app, [*base, "--precision-schedule", "int8:1,binary:1@0.002",
                                   "--binary-share", "0.75", "--no-distill",
                                   "--fp32-smallest", "--binary-largest", "--optimizer", "adamw",
                                   "--weight-decay", "0", "--binary-ablation",
                                   "expand_shortcut", "--random-subnets", "1",
                                   "--depthwise-lr-scale", "0.5", "--binary-weights", "own"])
    assert out.exit_code == 0, out.output
    _, meta = load_supernet(tmp_path / "run" / "checkpoint.pt")
    assert meta["epoch"] == 2
    assert [(p["name"], p["epochs"], p["lr"]) for p in meta["config"]["precision_phases"]] \
        == [("int8", 1, 0.05), ("binary", 1, 0.002)]
    assert meta["config"]["binary_share"] == 0.75
    assert meta["config"]["precision_distill"] is False
    assert meta["config"]["precision_fp32_smallest"] is True
    assert meta["config"]["precision_binary_largest"] is True
    assert (meta["config"]["optimizer"], meta["config"]["weight_decay"]) == ("adamw", 0.0)
    assert meta["config"]["binary_ablation"] == ["expand_shortcut"]
    assert meta["config"]["n_random"] == 1
    assert meta["config"]["depthwise_lr_scale"] == 0.5
    assert meta["config"]["binary_weights"] == "own"
    # trained without the expand convs' shortcuts (and with binary weights of their own),
    # its binary subnets export as trained
    import json
    import zipfile

    from ofa_search.arch import Arch
    from ofa_search.export import export

    arch = Arch.largest(MP).replace(resolution=16, precisions=("binary",) * 4)
    result = export(tmp_path / "run" / "checkpoint.pt", arch, "binary", tmp_path / "pkg",
                    measure=False, verify_samples=4)
    with zipfile.ZipFile(result.artefact) as archive:
        layers = json.loads(archive.read("manifest.json"))["layers"]
    # expand then project in every block: the expand without its shortcut, the project with
    assert [entry.get("shortcut", True) for entry in layers] == [False, True] * (
        len(layers) // 2) and layers
    for args, message in [
        (["--precision-schedule", "int8:0"], "error: --precision-schedule: precision schedule "
                                              "entry 'int8:0': needs EPOCHS >= 1"),
        (["--strategy", "sandwich", "--precision-schedule", "int8:1"],
         "error: --precision-schedule applies to --strategy precision only"),
        (["--strategy", "sandwich", "--binary-share", "0.5"],
         "error: --binary-share, --no-distill, --fp32-smallest, --binary-largest and "
         "--binary-ablation apply to --strategy precision only"),
        (["--strategy", "sandwich", "--binary-largest"],
         "error: --binary-share, --no-distill, --fp32-smallest, --binary-largest and "
         "--binary-ablation apply to --strategy precision only"),
        (["--strategy", "sandwich", "--binary-ablation", "scale"],
         "error: --binary-share, --no-distill, --fp32-smallest, --binary-largest and "
         "--binary-ablation apply to --strategy precision only"),
        (["--binary-ablation", "scales"], "error: binary_ablation: unknown binary "
         "ingredient(s) scales; known: scale, shortcut, threshold, expand_shortcut, "
         "project_shortcut"),
        (["--binary-largest", "--random-subnets", "0"], "error: --binary-largest takes a "
         "random subnet's place: it needs --random-subnets >= 1"),
        (["--strategy", "sandwich", "--binary-weights", "own"],
         "error: --binary-weights applies to --strategy precision only"),
        (["--binary-weights", "separate"],
         "error: --binary-weights must be one of shared, own, got 'separate'"),
        (["--strategy", "spos", "--random-subnets", "1"],
         "error: --random-subnets applies to --strategy sandwich and precision only"),
        (["--optimizer", "adam"], "error: --optimizer must be one of sgd, adamw, got 'adam'"),
        (["--weight-decay", "inf"], "error: --weight-decay must be a finite number, got inf"),
        (["--depthwise-lr-scale", "1.5"],
         "error: --depthwise-lr-scale must be in (0, 1], got 1.5"),
    ]:
        with pytest.raises(SystemExit) as exited:
            main([*base, *args])
        assert exited.value.code == 2
        assert message in capsys.readouterr().err


def test_binary_ablation_is_validated_kept_in_the_checkpoint_and_checked_on_resume(
        tmp_path: Path) -> None:
    from ofa_search.train import TrainingError, load_supernet

    with pytest.raises(TrainingError, match=r"unknown binary ingredient.*scales"):
        dataclasses.replace(FP32, space=MP, strategy="precision", binary_ablation=("scales",))
    with pytest.raises(TrainingError, match="needs a space with binary stages"):
        dataclasses.replace(FP32, binary_ablation=("shortcut",))
    fp32 = run_training(dataclasses.replace(FP32, out_dir=str(tmp_path / "fp32"),
                                            steps_per_epoch=1))
    config = dataclasses.replace(FP32, space=MP, strategy="precision", lr=0.01,
                                 init_checkpoint=str(fp32.checkpoint),
                                 binary_ablation=("threshold", "shortcut"),
                                 out_dir=str(tmp_path / "abl"), stop_after_epochs=1)
    assert config.binary_ablation == ("shortcut", "threshold")
    result = run_training(config)
    net, meta = load_supernet(result.checkpoint)
    assert meta["config"]["binary_ablation"] == ["shortcut", "threshold"]
    assert {frozenset(b.binary_ablated) for b in net.elastic_blocks()} == {
        frozenset({"shortcut", "threshold"})}
    with pytest.raises(TrainingError, match="binary_ablation"):
        run_training(dataclasses.replace(config, binary_ablation=(), resume=True,
                                         stop_after_epochs=None))
    run_training(dataclasses.replace(config, resume=True, stop_after_epochs=None))


def test_depthwise_lr_scale_runs_the_depthwise_convs_slower_and_resumes_only_as_run(
        tmp_path: Path) -> None:
    from ofa_search.nn.dynamic import DynamicDepthwiseConv2d
    from ofa_search.train import TrainingError, param_groups
    from ofa_search.train.checkpoint import load_checkpoint

    net = Supernet("mbv3_small28", generator=torch.Generator().manual_seed(0))
    assert len(param_groups(net, 0.1)) == 2  # no third group at scale 1
    decay, no_decay, depthwise = param_groups(net, 0.1, depthwise_lr_scale=0.25)
    expected = {id(p) for m in net.modules() if isinstance(m, DynamicDepthwiseConv2d)
                for p in m.parameters()} | {id(net.first_block.depthwise[0].weight)}
    assert expected and {id(p) for p in depthwise["params"]} == expected
    assert (depthwise["lr_scale"], depthwise["weight_decay"]) == (0.25, 0.1)
    # the stem conv (1 input channel, so 1 channel per group too) is not a depthwise conv
    assert any(p.ndim == 4 and p.shape[1] == 1 for p in decay["params"])
    assert sum(len(g["params"]) for g in (decay, no_decay, depthwise)) == len(
        list(net.parameters()))

    config = dataclasses.replace(FP32, out_dir=str(tmp_path / "run"), steps_per_epoch=2,
                                 epochs=1, depthwise_lr_scale=0.5)
    run_training(config)
    groups = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["optimizer"]["param_groups"]
    assert [g.get("lr_scale") for g in groups] == [None, None, 0.5]
    assert groups[2]["lr"] == pytest.approx(0.5 * groups[0]["lr"]) and groups[0]["lr"] > 0
    with pytest.raises(TrainingError, match=r"is a run with depthwise_lr_scale 0\.5, not 1\.0"):
        run_training(dataclasses.replace(config, depthwise_lr_scale=1.0, epochs=2,
                                         resume=True))
    for bad in (0.0, 1.5, -1.0):
        with pytest.raises(TrainingError, match="depthwise_lr_scale must be in"):
            dataclasses.replace(FP32, depthwise_lr_scale=bad)


def test_own_binary_weights_start_from_the_init_and_are_kept_apart(tmp_path: Path) -> None:
    from ofa_search.train import TrainingError, load_supernet
    from ofa_search.train.checkpoint import load_checkpoint

    fp32 = run_training(dataclasses.replace(FP32, out_dir=str(tmp_path / "fp32")))
    start = load_checkpoint(fp32.checkpoint)["model"]
    # the init loads the fp32 weights and copies them into the binary convs' own ones
    net = Supernet(MP, generator=torch.Generator().manual_seed(5))
    net.set_binary_weights(True)
    load_init_weights(net, fp32.checkpoint)
    state = net.state_dict()
    own = [k for k in state if ".binary_expand_conv." in k or ".binary_project." in k]
    assert own and all(
        torch.equal(state[k], start[k.replace("binary_expand_conv", "expand_conv")
                                    .replace("binary_project", "project")]) for k in own)
    config = TrainConfig(space=MP, dataset="digits", strategy="precision", batch_size=16,
                         resolutions=(16,), epochs=1, steps_per_epoch=2, lr=0.01, quiet=True,
                         n_random=1, precision_phases=None, binary_share=1.0,
                         init_checkpoint=str(fp32.checkpoint), binary_weights="own",
                         out_dir=str(tmp_path / "run"))
    result = run_training(config)
    tuned, meta = load_supernet(result.checkpoint)
    assert meta["config"]["binary_weights"] == "own"
    block = tuned.elastic_blocks()[0]
    assert block.binary_expand_conv is not None  # trained apart: no longer equal
    assert not torch.equal(block.binary_expand_conv.weight, block.expand_conv.weight)
    with pytest.raises(TrainingError, match="is a run with binary_weights 'own', not 'shared'"):
        run_training(dataclasses.replace(config, binary_weights="shared", epochs=2,
                                         resume=True))
    for bad, message in [({"binary_weights": "separate"}, "binary_weights must be one of "
                          "shared, own, got 'separate'"),
                         ({"binary_weights": "own", "space": "mbv3_small28"},
                          "binary_weights 'own' needs a space with binary stages")]:
        with pytest.raises(TrainingError, match=message):
            dataclasses.replace(FP32, **bad)
