"""ONNX export of static subnets: checker, ONNX Runtime parity, both exporters."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from supernet_helpers import calibrated_supernet

from ofa_search.arch import Arch
from ofa_search.nn import extract
from ofa_search.onnx_export import (
    export_onnx,
    max_abs_diff_vs_torch,
    run_onnxruntime,
    save_onnx,
)


@pytest.mark.parametrize(("space", "seeds"), [("mbv3_small28", range(4)), ("ofa_mbv3", range(2))])
def test_onnxruntime_matches_torch(space: str, seeds: range) -> None:
    net = calibrated_supernet(space)
    for seed in seeds:
        arch = Arch.sample(space, seed, width_mult=net.width_mult)
        static = extract(net, arch).eval()
        model = export_onnx(static, static.input_shape())
        assert model.opset_import[0].version >= 17
        (inp,) = model.graph.input
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        assert dims == [1, net.space.in_channels, arch.resolution, arch.resolution]
        x = torch.randn(1, net.space.in_channels, arch.resolution, arch.resolution,
                        generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            assert static(x).abs().max() > 1e-2
        assert max_abs_diff_vs_torch(model, static, x) <= 1e-4


def test_exporters_agree(tmp_path) -> None:  # type: ignore[no-untyped-def]
    net = calibrated_supernet("mbv3_small28")
    arch = Arch.sample("mbv3_small28", 11)
    static = extract(net, arch).eval()
    x = np.random.default_rng(0).standard_normal(static.input_shape()).astype(np.float32)
    a = export_onnx(static, static.input_shape(), exporter="torchscript")
    b = export_onnx(static, static.input_shape(), exporter="dynamo")
    np.testing.assert_allclose(run_onnxruntime(a, x), run_onnxruntime(b, x), atol=1e-5)
    path = save_onnx(a, tmp_path / "sub" / "net.onnx")
    reloaded = onnx.load(str(path))
    onnx.checker.check_model(reloaded)
    np.testing.assert_array_equal(run_onnxruntime(reloaded, x), run_onnxruntime(a, x))
    assert static.training is False
    with pytest.raises(ValueError, match="unknown exporter 'tf'"):
        export_onnx(static, static.input_shape(), exporter="tf")  # type: ignore[arg-type]


def test_export_restores_training_mode() -> None:
    net = calibrated_supernet("mbv3_small28")
    static = extract(net, Arch.smallest("mbv3_small28")).train()
    export_onnx(static, static.input_shape())
    assert static.training


def test_exports_from_two_threads_at_once_both_succeed() -> None:
    """torch.onnx.export keeps process-wide state: without the module's lock, a second
    thread's export fails with "GLOBALS.in_onnx_export must be False"."""
    from concurrent.futures import ThreadPoolExecutor

    from ofa_search.arch import Arch
    from ofa_search.nn import build_static
    from ofa_search.onnx_export import export_onnx

    arch = Arch.smallest("mbv3_small28")
    nets = [build_static(arch) for _ in range(2)]
    shape = (1, 1, arch.resolution, arch.resolution)
    with ThreadPoolExecutor(max_workers=2) as pool:
        models = list(pool.map(lambda net: [export_onnx(net, shape) for _ in range(4)], nets))
    assert all(len(m.graph.node) > 0 for batch in models for m in batch)
