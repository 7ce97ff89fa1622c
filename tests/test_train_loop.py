from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from test_data import write_fashion

from ofa_search.arch import Arch
from ofa_search.errors import FileFormatError
from ofa_search.nn import Supernet
from ofa_search.train import (
    CHECKPOINT_VERSION,
    Phase,
    TrainConfig,
    TrainingError,
    load_checkpoint,
    load_supernet,
    run_training,
    save_checkpoint,
    train,
)

TINY = TrainConfig(space="mbv3_small28", dataset="digits", batch_size=32, resolutions=(16,),
                   epochs=2, steps_per_epoch=2, lr=0.05, quiet=True, seed=3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _weights(net: Supernet) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


@pytest.mark.parametrize(("strategy", "epochs", "steps", "split_at", "total"), [
    ("sandwich", 2, 1, 1, None),   # in-place distillation, cosine across the break
    ("ps", 1, 1, 2, 3),            # full → kernel (teacher frozen) | depth: teacher resumed
])
def test_resume_is_bit_for_bit(tmp_path: Path, strategy: str, epochs: int, steps: int,
                               split_at: int, total: int | None) -> None:
    config = dataclasses.replace(TINY, strategy=strategy, epochs=epochs, steps_per_epoch=steps,
                                 n_random=0, stop_after_epochs=total,
                                 eval_each_epoch=strategy == "sandwich")
    straight = run_training(dataclasses.replace(config, out_dir=str(tmp_path / "a")))
    split_dir = str(tmp_path / "b")
    first = run_training(dataclasses.replace(config, out_dir=split_dir,
                                             stop_after_epochs=split_at))
    assert first.epoch == split_at
    resumed = run_training(dataclasses.replace(config, out_dir=split_dir, resume=True))
    assert (resumed.epoch, resumed.step) == (straight.epoch, straight.step)
    a, b = _weights(straight.supernet), _weights(resumed.supernet)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["head.classifier.weight"], first.supernet.head.classifier.weight)
    rows = {run: [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text()
                  .splitlines()] for run in ("a", "b")}
    assert [r["loss"] for r in rows["a"]] == [r["loss"] for r in rows["b"]]
    if config.eval_each_epoch:
        ends = [r for r in rows["b"] if r.get("event") == "epoch_end"]
        assert len(ends) == 2 and all(0 <= r["val_acc_smallest"] <= 1 for r in ends)


def test_checkpoint_contents_and_load_supernet(tmp_path: Path) -> None:
    config = dataclasses.replace(TINY, strategy="spos", epochs=1, out_dir=str(tmp_path))
    path = train(config)
    assert path == tmp_path / "checkpoint.pt"
    ckpt = load_checkpoint(path)
    assert ckpt["format_version"] == CHECKPOINT_VERSION
    assert (ckpt["space"], ckpt["width_mult"], ckpt["epoch"], ckpt["step"]) == (
        "mbv3_small28", 1.0, 1, 2)
    assert ckpt["finished"] and ckpt["strategy"]["name"] == "spos"
    assert ckpt["config"]["resolutions"] == [16]
    net, meta = load_supernet(path)
    assert not net.training and "model" not in meta and meta["dataset"]["name"] == "digits"
    # a finished run resumes to itself
    again = run_training(dataclasses.replace(config, resume=True))
    assert again.step == 2
    with pytest.raises(TrainingError, match="exists; resume it"):
        train(config)
    with pytest.raises(TrainingError, match="space/width/strategy"):
        train(dataclasses.replace(config, strategy="sandwich", resume=True))
    other = config.seed + 1  # it would also split the data differently
    with pytest.raises(TrainingError, match=f"is a run with seed {config.seed}, not {other}"):
        train(dataclasses.replace(config, seed=other, resume=True))
    # so would another batch size (a mid-epoch position counts batches), augmentation,
    # resolutions or dataset; nothing is written
    write_fashion(tmp_path / "fashion")
    stamp = path.stat().st_mtime_ns
    for change, message in [({"batch_size": config.batch_size * 2},
                              f"batch_size {config.batch_size}, not {config.batch_size * 2}"),
                             ({"augment": not config.augment}, f"augment {config.augment}, not"),
                             ({"random_erasing": 0.5}, "random_erasing 0.0, not 0.5"),
                             ({"resolutions": (16, 20)}, r"resolutions \[16\], not \[16, 20\]"),
                             ({"dataset": "fashion-mnist", "data_dir": str(tmp_path / "fashion")},
                              "dataset 'digits', not 'fashion-mnist'")]:
        with pytest.raises(TrainingError, match=f"is a run with {message}"):
            train(dataclasses.replace(config, resume=True, **change))
    assert path.stat().st_mtime_ns == stamp
    # a stand-alone run resumed with another arch would train another model
    alone = dataclasses.replace(config, strategy="standalone", out_dir=str(tmp_path / "alone"),
                                arch=Arch.smallest("mbv3_small28").to_string())
    train(alone)
    bigger = dataclasses.replace(alone, resume=True,
                                 arch=alone.arch.replace("k3e3", "k5e3", 1))
    with pytest.raises(TrainingError, match=f"is a run with arch '{alone.arch}', not "):
        train(bigger)


def test_bad_checkpoints_raise_file_format_error(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"space": "mbv3_small28"})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(FileFormatError, match=r"truncated\.pt is not a readable ofa-search "
                                              r"checkpoint \(truncated or foreign file; "):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(FileFormatError, match="not an ofa-search supernet checkpoint"):
        load_checkpoint(foreign)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(FileFormatError, match="not a readable ofa-search checkpoint"):
        load_checkpoint(text)
    pickled = tmp_path / "object.pt"
    torch.save({"format": "ofa-search-supernet", "x": object()}, pickled)
    with pytest.raises(FileFormatError, match="not a readable"):
        load_checkpoint(pickled)
    other = tmp_path / "v99.pt"
    torch.save({"format": "ofa-search-supernet", "format_version": 99}, other)
    with pytest.raises(FileFormatError, match=f"format_version 99; this ofa-search reads "
                                              f"version {CHECKPOINT_VERSION}"):
        load_checkpoint(other)
    with pytest.raises(FileFormatError, match="lacks checkpoint field"):
        load_checkpoint(good)
    with pytest.raises(FileFormatError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_loss_decreases_for_the_largest_arch(tmp_path: Path) -> None:
    # the first progressive-shrinking phase trains only the full network on labels
    config = dataclasses.replace(TINY, strategy="ps", epochs=1, steps_per_epoch=20,
                                 stop_after_epochs=1, lr=0.1, label_smoothing=0.0,
                                 augment=False, out_dir=str(tmp_path))
    result = run_training(config)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "event" not in r]
    assert len(losses) == 20
    assert sum(losses[-6:]) / 6 < 0.8 * sum(losses[:6]) / 6
    assert result.step == 20


def test_global_rng_is_untouched(tmp_path: Path) -> None:
    state = torch.get_rng_state()
    train(dataclasses.replace(TINY, strategy="spos", epochs=1, steps_per_epoch=1,
                              out_dir=str(tmp_path)))
    assert torch.equal(torch.get_rng_state(), state)


def test_config_validation() -> None:
    with pytest.raises(TrainingError, match=r"strategy must be one of sandwich, spos, ps.*, "
                                            r"got 'random'$"):
        TrainConfig(strategy="random")
    with pytest.raises(TrainingError, match=r"epochs must be >= 1, got 0$"):
        TrainConfig(epochs=0)
    with pytest.raises(TrainingError, match=r"lr must be a finite number > 0, got inf$"):
        TrainConfig(lr=float("inf"))
    for bad in (-0.1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(TrainingError, match=r"random_erasing must be in \[0, 1\], got "):
            TrainConfig(random_erasing=bad)  # type: ignore[arg-type]
    with pytest.raises(TrainingError, match=r"random_erasing is part of the training "
                                            r"augmentation: it needs augment on$"):
        TrainConfig(random_erasing=0.5, augment=False)
    with pytest.raises(TrainingError, match="random_erasing applies to in-memory datasets; "
                                            "'imagenet' is streamed"):
        TrainConfig(random_erasing=0.5, dataset="imagenet")


def test_random_erasing_changes_what_a_run_trains_on(tmp_path: Path) -> None:
    config = dataclasses.replace(TINY, strategy="spos", epochs=1, steps_per_epoch=1)
    runs = {p: run_training(dataclasses.replace(config, random_erasing=p,
                                                out_dir=str(tmp_path / str(p))))
            for p in (0.0, 1.0)}
    plain, erased = _weights(runs[0.0].supernet), _weights(runs[1.0].supernet)
    # same seed, same subnet and batch order: only the erased pixels differ
    assert not torch.equal(plain["head.classifier.weight"], erased["head.classifier.weight"])
    assert load_checkpoint(tmp_path / "1.0" / "checkpoint.pt")["config"]["random_erasing"] == 1.0


def test_custom_progressive_shrinking_phases(tmp_path: Path) -> None:
    phases = (Phase("full", (7,), (4,), (6,), 1, epochs=1, lr=0.05),
              Phase("small", (3, 5, 7), (2, 3, 4), (3, 4, 6), 2, epochs=1, lr=0.01,
                    sort_channels=True))
    config = dataclasses.replace(TINY, strategy="ps", ps_phases=phases, steps_per_epoch=1,
                                 out_dir=str(tmp_path))
    ckpt = load_checkpoint(train(config))
    assert (ckpt["epoch"], ckpt["step"], ckpt["finished"]) == (2, 2, True)
    assert ckpt["teacher"] is not None
    assert ckpt["config"]["ps_phases"][1]["expands"] == [3, 4, 6]
    with pytest.raises(TrainingError, match="ps_phases needs strategy='ps'"):
        dataclasses.replace(config, strategy="spos")


def test_the_frozen_teacher_normalises_with_each_batch_statistics() -> None:
    """Progressive shrinking's teacher runs as once-for-all's does: batch norms normalise
    with the batch's statistics (running ones mixed over all resolutions mispredict at the
    rarest), leave the running statistics as they are, and dropout is off."""
    from ofa_search.arch import Arch
    from ofa_search.train.loop import _frozen_copy

    net = Supernet("mbv3_small28", generator=torch.Generator().manual_seed(0))
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:  # running statistics unlike any batch's
        bn.running_mean.fill_(3.0)
        bn.running_var.fill_(0.05)
    teacher = _frozen_copy(net)
    assert not any(p.requires_grad for p in teacher.parameters())
    arch = Arch.largest("mbv3_small28").replace(resolution=16)
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    with torch.no_grad():
        out, again = teacher(x, arch), teacher(x, arch)
        reference = net.train()
        reference.set_dropout(False)
        batch_stats = reference(x, arch)
        running_stats = net.eval()(x, arch)
    torch.testing.assert_close(out, batch_stats)
    torch.testing.assert_close(out, again)  # no dropout, no drift
    assert not torch.allclose(out, running_stats, atol=1e-2)
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
