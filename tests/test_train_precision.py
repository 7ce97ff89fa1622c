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
