"""Pruning: channel pruning is exact slicing, magnitude masks keep their sparsity, fine-tuning
resumes bit for bit, artefacts are verified with ONNX Runtime, bad options fail first."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from compress_helpers import FAST, SPACE, TINY, untrained_checkpoint
from supernet_helpers import calibrated_supernet

from ofa_search.arch import Arch
from ofa_search.compress import (
    CompressError,
    PruningRatioError,
    apply_masks,
    channel_importance,
    magnitude_masks,
    prunable_units,
    prune,
    prune_channels,
    ratio_for_latency,
    rebuild,
    resolve_target,
    schedule_ratios,
    sparsity_report,
    total_sparsity,
)
from ofa_search.compress.finetune import STATE_NAME, load_state
from ofa_search.model_card import read_card
from ofa_search.nn import extract
from ofa_search.nn.static import Head, MBConv

ARCH = Arch.sample(SPACE, np.random.default_rng(3)).replace(resolution=16)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return untrained_checkpoint(tmp_path_factory.mktemp("ck"))


@pytest.fixture(scope="module")
def subnet() -> torch.nn.Module:
    return extract(calibrated_supernet(SPACE, seed=1), ARCH).eval()


# -- errors, before any work ------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, math.nan, math.inf, True, "0.5"])
def test_bad_ratio_is_one_line_before_any_work(tmp_path: Path, ratio: object) -> None:
    with pytest.raises(PruningRatioError, match=r"^ratio must be in \[0, 1\) .*got") as info:
        prune(tmp_path / "missing.pt", ARCH, tmp_path / "out", ratio=ratio)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("options", "message"), [
    ({"ratio": None}, "exactly one of ratio and target_latency_ms"),
    ({"ratio": 0.5, "target_latency_ms": 1.0}, "exactly one of ratio and target_latency_ms"),
    ({"ratio": None, "target_latency_ms": 1.0, "method": "magnitude"}, "needs method 'channel'"),
    ({"ratio": None, "target_latency_ms": -1.0}, "target_latency_ms must be a number > 0"),
    ({"method": "svd"}, "method must be one of channel, magnitude"),
    ({"criterion": "l3"}, "criterion must be one of l2, l1"),
    ({"method": "magnitude", "scope": "row"}, "scope must be one of global, layer"),
    ({"schedule": "iterative", "iterations": 1}, "iterations must be an integer >= 2"),
    ({"finetune_steps": -1}, "finetune_steps must be an integer >= 0"),
    ({"format": "state_dict"}, "written as onnx or torchscript"),
    ({"lr": 0.0}, "lr must be a finite number > 0"),
    ({"resume": True}, "cannot resume"),
])
def test_bad_options_fail_before_any_work(tmp_path: Path, options: dict[str, object],
                                          message: str) -> None:
    kwargs: dict[str, object] = {"ratio": 0.5, **options}
    with pytest.raises(CompressError, match=message):
        prune(tmp_path / "missing.pt", ARCH, tmp_path / "out", **kwargs)  # type: ignore[arg-type]


def test_existing_state_needs_resume(tmp_path: Path) -> None:
    (tmp_path / STATE_NAME).write_bytes(b"x")
    with pytest.raises(CompressError, match="exists; resume it"):
        prune(tmp_path / "missing.pt", ARCH, tmp_path, ratio=0.5)


# -- channel pruning ---------------------------------------------------------------------------
def _masked_copy(net: torch.nn.Module, pruned: torch.nn.Module) -> torch.nn.Module:
    """``net`` with the dropped hidden channels cut off by zeroing the weights that read
    them (project conv or feature mix, and the SE reduce conv)."""
    import copy

    out = copy.deepcopy(net)
    for i, width in pruned.widths.items():  # type: ignore[union-attr]
        module = out.units[i]  # type: ignore[index]
        importance = channel_importance(net.units[i])  # type: ignore[index]
        dropped = torch.argsort(importance, descending=True, stable=True)[width:]
        with torch.no_grad():
            if isinstance(module, MBConv):
                module.project[0].weight[:, dropped] = 0  # type: ignore[index]
                if module.se is not None:
                    module.se.reduce.weight[:, dropped] = 0
            else:
                assert isinstance(module, Head)
                module.feature_mix[0].weight[:, dropped] = 0
    return out


def test_channel_pruning_equals_masking_the_dropped_channels(subnet: torch.nn.Module) -> None:
    pruned = prune_channels(subnet, 0.5)
    full = prunable_units(ARCH)
    assert pruned.widths == {i: max(1, round(w * 0.5)) for i, w in full.items()}
    assert [u.mid_channels for i, u in enumerate(pruned.unit_specs)
            if i in full and u.kind == "mbconv"] == [w for i, w in pruned.widths.items()
                                                     if i != len(pruned.unit_specs) - 1]
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, expected = pruned.eval()(x), _masked_copy(subnet, pruned).eval()(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert pruned.macs() < sum(u.macs() for u in subnet.unit_specs)
    with torch.no_grad():  # ratio 0 keeps the function; the subnet itself is untouched
        torch.testing.assert_close(prune_channels(subnet, 0.0).eval()(x), subnet(x))


def test_l1_and_l2_keep_the_channels_of_largest_norm(subnet: torch.nn.Module) -> None:
    i = next(iter(prunable_units(ARCH)))
    weight = subnet.units[i].project[0].weight  # type: ignore[index]
    for criterion, norm in (("l2", weight.pow(2).sum((0, 2, 3)).sqrt()),
                            ("l1", weight.abs().sum((0, 2, 3)))):
        torch.testing.assert_close(channel_importance(subnet.units[i], criterion), norm)
        kept = prune_channels(subnet, 0.5, criterion=criterion)  # type: ignore[arg-type]
        top = torch.sort(torch.argsort(norm, descending=True)[:kept.widths[i]]).values
        torch.testing.assert_close(kept.units[i].project[0].weight,
                                   weight[:, top])  # type: ignore[index]


def test_rebuild_from_widths_loads_the_state(subnet: torch.nn.Module) -> None:
    pruned = prune_channels(prune_channels(subnet, 0.3), 0.6)  # iterative: cumulative ratio
    skeleton = rebuild(ARCH, pruned.widths)
    skeleton.load_state_dict(pruned.state_dict())
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(skeleton.eval()(x), pruned.eval()(x))


def test_schedule_ratios_compound_to_the_ratio() -> None:
    assert schedule_ratios(0.5, "one-shot", 3) == [0.5]
    steps = schedule_ratios(0.75, "iterative", 2)
    assert steps == pytest.approx([0.5, 0.75])
    assert (1 - steps[0]) ** 2 == pytest.approx(1 - steps[1])


# -- magnitude pruning ------------------------------------------------------------------------
def test_magnitude_masks_per_layer_and_global(subnet: torch.nn.Module) -> None:
    import copy

    layer = copy.deepcopy(subnet)
    apply_masks(layer, magnitude_masks(layer, 0.6, scope="layer"))
    for entry in sparsity_report(layer):
        assert entry.zeros == int(0.6 * entry.weights)
    glob = copy.deepcopy(subnet)
    masks = magnitude_masks(glob, 0.6, scope="global")
    apply_masks(glob, masks)
    report = sparsity_report(glob)
    total = sum(e.weights for e in report)
    assert total_sparsity(report) == pytest.approx(int(0.6 * total) / total)
    assert len({round(e.sparsity, 2) for e in report}) > 1  # one threshold, shares differ
    weights = {n: p.detach() for n, p in subnet.named_parameters()}
    smallest_kept = min(float(weights[n].abs()[m].min()) for n, m in masks.items() if m.any())
    largest_dropped = max(float(weights[n].abs()[~m].max())
                          for n, m in masks.items() if (~m).any())
    assert largest_dropped <= smallest_kept


# -- the command ------------------------------------------------------------------------------
def test_iterative_channel_pruning_resumes_bit_for_bit(checkpoint: Path, tmp_path: Path
                                                       ) -> None:
    options = {"ratio": 0.5, "schedule": "iterative", "iterations": 2, "finetune_steps": 4,
               "checkpoint_every": 1, "measure": False, **FAST}
    whole = prune(checkpoint, ARCH, tmp_path / "whole", **options)  # type: ignore[arg-type]
    part = prune(checkpoint, ARCH, tmp_path / "part", stop_after_steps=3,
                 **options)  # type: ignore[arg-type]
    assert (part.finished, part.steps, part.artefact) == (False, 3, None)
    state = load_state(tmp_path / "part" / STATE_NAME, "prune")
    assert (state["iteration"], state["step"]) == (1, 1)  # mid second fine-tuning segment
    with pytest.raises(CompressError, match="other options"):
        prune(checkpoint, ARCH, tmp_path / "part", resume=True,
              **{**options, "lr": 0.02})  # type: ignore[arg-type]
    resumed = prune(checkpoint, ARCH, tmp_path / "part", resume=True,
                    **options)  # type: ignore[arg-type]
    assert resumed.finished and whole.finished
    a = load_state(tmp_path / "whole" / STATE_NAME, "prune")["model"]
    b = load_state(tmp_path / "part" / STATE_NAME, "prune")["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed.widths == whole.widths == {
        i: max(1, round(w * 0.5)) for i, w in prunable_units(ARCH).items()}
    assert [h["ratio"] for h in resumed.history] == pytest.approx([1 - 0.5**0.5, 0.5])


def test_channel_prune_exports_verified_onnx_measured_with_a_card(checkpoint: Path,
                                                                  tmp_path: Path) -> None:
    import onnxruntime as ort

    result = prune(checkpoint, ARCH, tmp_path, ratio=0.5, finetune_steps=2,
                   device="cpu-ort-1t", **FAST)  # type: ignore[arg-type]
    assert result.verification_max_abs_diff is not None
    assert result.verification_max_abs_diff <= 1e-4
    session = ort.InferenceSession(str(result.artefact), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 1, 16, 16)
    assert result.net is not None
    with torch.no_grad():
        expected = result.net.eval()(x).numpy()
    np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], expected, atol=1e-4)
    lat = result.latency
    assert lat is not None and lat["measured_ms"] > 0 and lat["unpruned_measured_ms"] > 0
    assert lat["target"]["device"] == "cpu-ort-1t" and lat["unpruned_table_ms"] > 0
    assert lat["table"]["units"] == sum(ARCH.depths) + 3  # stem, first block, head
    sizes = result.sizes
    assert sizes is not None and sizes["onnx_bytes"] < sizes["unpruned_onnx_bytes"]
    card = read_card(result.card_json)  # type: ignore[arg-type]
    assert card["compression"]["method"] == "channel-pruning"
    assert card["verification"]["passed"] and card["device"]["measured_latency_ms"] > 0
    assert "## Compression" in result.card_markdown.read_text()  # type: ignore[union-attr]
    assert result.to_dict()["widths"] == {str(k): v for k, v in result.widths.items()}  # type: ignore[union-attr]


def test_magnitude_prune_is_dense_sparse_and_compresses(checkpoint: Path, tmp_path: Path
                                                        ) -> None:
    result = prune(checkpoint, ARCH, tmp_path, method="magnitude", ratio=0.7, scope="layer",
                   finetune_steps=2, measure=False, **FAST)  # type: ignore[arg-type]
    assert result.sparsity is not None and result.sparsity >= 0.69  # masks held through SGD
    assert all(layer["sparsity"] >= 0.69 for layer in result.layers)
    sizes = result.sizes
    assert sizes is not None
    assert sizes["onnx_bytes"] == pytest.approx(sizes["unpruned_onnx_bytes"], rel=0.02)  # dense
    assert sizes["onnx_gzip_bytes"] < 0.7 * sizes["unpruned_onnx_gzip_bytes"]
    assert result.compressed_artefact is not None
    assert result.compressed_artefact.stat().st_size == sizes["onnx_gzip_bytes"]
    card = read_card(result.card_json)  # type: ignore[arg-type]
    assert "no sparse speed-up" in " ".join(card["compression"]["summary"])


def test_ratio_for_latency_bounds(subnet: torch.nn.Module) -> None:
    target = resolve_target(None)
    easy = ratio_for_latency(subnet, 1e3, target, timing=TINY)  # type: ignore[arg-type]
    assert (easy.ratio, easy.feasible, len(easy.probes)) == (0.0, True, 1)
    hard = ratio_for_latency(subnet, 1e-6, target, timing=TINY)  # type: ignore[arg-type]
    assert not hard.feasible and hard.ratio == pytest.approx(0.95)
