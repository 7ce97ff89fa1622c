"""CUDA parity (issue 21): forward, extraction and one training step on the GPU against
the CPU. Every test here needs a CUDA GPU and skips without one; ``scripts/gpu_check.sh``
runs this file on the GPU host and records the result."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from ofa_search.arch import Arch
from ofa_search.nn import Supernet, extract
from ofa_search.space import get_space, register_space
from ofa_search.train import TrainConfig, run_training

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (torch.cuda.is_available() is False)")

SPACES = ("mbv3_small28", "ofa_mbv3")
STEP = TrainConfig(space="mbv3_small28", dataset="digits", batch_size=32, resolutions=(24,),
                   epochs=1, steps_per_epoch=1, lr=0.05, quiet=True, seed=7, n_random=1,
                   augment=False, channels_last=False)


def _archs(space: str, width: float) -> list[Arch]:
    return [Arch.largest(space, width), Arch.smallest(space, width),
            Arch.sample(space, 0, width_mult=width)]


@pytest.mark.parametrize("space", SPACES)
def test_forward_and_extraction_match_the_cpu(space: str) -> None:
    cpu = Supernet(space, generator=torch.Generator().manual_seed(0)).eval()
    gpu = Supernet(space, generator=torch.Generator().manual_seed(0)).eval().cuda()
    for arch in _archs(space, cpu.width_mult):
        x = torch.randn(4, cpu.space.in_channels, arch.resolution, arch.resolution,
                        generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            want = cpu(x, arch)
            got = gpu(x.cuda(), arch).cpu()
            static = extract(gpu, arch)
            assert next(static.parameters()).is_cuda
            from_static = static.eval()(x.cuda()).cpu()
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(from_static, got, rtol=1e-4, atol=1e-4)


def test_one_training_step_matches_the_cpu(tmp_path: Path) -> None:
    """fp32 with TF32 off: one sandwich step lands on the same weights up to float noise.
    Dropout draws from the device's generator (other numbers on the GPU than on the CPU),
    so the step trains a copy of the space without it (registered here, not at import)."""
    space = register_space(replace(get_space("mbv3_small28"), name="mbv3_small28_nodropout",
                                   dropout=0.0))
    step = dataclasses.replace(STEP, space=space.name)
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        cpu = run_training(dataclasses.replace(step, device="cpu", out_dir=str(tmp_path / "c")))
        gpu = run_training(dataclasses.replace(step, device="cuda",
                                               out_dir=str(tmp_path / "g")))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
    a, b = cpu.supernet.state_dict(), gpu.supernet.state_dict()
    assert all(b[k].is_cuda for k in b)
    for key in a:
        torch.testing.assert_close(b[key].cpu(), a[key], rtol=1e-3, atol=1e-4, msg=key)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_runs_resume_mid_epoch_on_the_gpu(tmp_path: Path, amp: str) -> None:
    config = dataclasses.replace(STEP, device="cuda", amp=amp, epochs=2, steps_per_epoch=3,
                                 checkpoint_every=2, out_dir=str(tmp_path))
    first = run_training(dataclasses.replace(config, stop_after_epochs=1))
    assert first.step == 3
    done = run_training(dataclasses.replace(config, resume=True))
    assert done.step == 6
    assert all(torch.isfinite(v).all() for v in done.supernet.state_dict().values()
               if v.is_floating_point())


@pytest.mark.parametrize("benchmark", [True, False])
def test_cudnn_benchmark_is_set_for_the_run_and_restored(tmp_path: Path,
                                                         benchmark: bool) -> None:
    seen: list[bool] = []
    conv2d = torch.nn.functional.conv2d

    def spy(*args: Any, **kwargs: Any) -> torch.Tensor:
        seen.append(torch.backends.cudnn.benchmark)
        return conv2d(*args, **kwargs)

    before = torch.backends.cudnn.benchmark
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.functional, "conv2d", spy)
        run_training(dataclasses.replace(STEP, device="cuda", cudnn_benchmark=benchmark,
                                         out_dir=str(tmp_path)))
    assert seen and set(seen) == {benchmark}
    assert torch.backends.cudnn.benchmark is before
