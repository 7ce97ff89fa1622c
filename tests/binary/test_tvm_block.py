"""A whole binary MBConv block as one fused TVM function: same outputs as the PyTorch
block, recognised in stored programs, used by the package runtime and the latency
measurement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from binary_helpers import randomize_bn

from ofa_search.binary import tvm_available
from ofa_search.binary.block import find_blocks, parse_depthwise_segment
from ofa_search.binary.measure import measure_binary_unit, unit_package
from ofa_search.binary.package import build_program
from ofa_search.nn.static import build_unit, init_weights
from ofa_search.profiling.timing import TimingConfig
from ofa_search.units import MBConvUnit

TOLERANCE = 1e-3  # measured ≈ 4e-6

needs_tvm = pytest.mark.skipif(not tvm_available(), reason="TVM is not installed")


def unit(c: int, o: int, m: int, r: int, k: int, s: int, act: str, se: int) -> MBConvUnit:
    return MBConvUnit(c, o, m, r, k, s, act, se, precision="binary")  # type: ignore[arg-type]


UNITS = {
    "s2-relu-28px": unit(16, 16, 48, 28, 3, 2, "relu", 0),
    "s2-k7-se": unit(16, 24, 96, 14, 7, 2, "relu", 24),
    "residual-k5": unit(16, 16, 64, 14, 5, 1, "relu", 0),
    "residual-se-k7": unit(24, 24, 144, 7, 7, 1, "relu", 40),
    "hswish-s2": unit(24, 32, 72, 7, 5, 2, "hswish", 0),
    "hswish-se-widen": unit(32, 48, 192, 4, 3, 1, "hswish", 48),
    "residual-hswish-se-2words": unit(48, 48, 288, 4, 7, 1, "hswish", 72),
    "odd-residual-se": unit(13, 13, 45, 9, 3, 1, "hswish", 11),
    "odd-s2-3words": unit(21, 33, 131, 11, 5, 2, "relu", 17),
    "odd-narrow-mid": unit(70, 35, 67, 5, 3, 1, "relu", 0),  # O < C, C > M
}


def _block(spec: MBConvUnit, seed: int) -> torch.nn.Module:
    module = build_unit(spec)
    init_weights(module, torch.Generator().manual_seed(seed))
    randomize_bn(module, seed + 1)
    return module.eval()


def _program(module: torch.nn.Module, spec: MBConvUnit):  # type: ignore[no-untyped-def]
    return build_program([module], (spec.in_channels, spec.in_size, spec.in_size))


@needs_tvm
@pytest.mark.parametrize("name", list(UNITS))
def test_fused_block_matches_pytorch(name: str) -> None:
    from ofa_search.binary.tvm_block import TvmBlock

    spec = UNITS[name]
    module = _block(spec, seed=len(name))
    plans = find_blocks(_program(module, spec))
    assert len(plans) == 1
    plan = plans[0]
    assert plan.residual == spec.residual
    assert plan.depthwise.stride == spec.stride and plan.depthwise.kernel == spec.kernel
    assert plan.depthwise.se_channels == spec.se_channels and plan.depthwise.act == spec.act
    block = TvmBlock(plan)
    for batch in (1, 3):
        x = torch.randn(batch, spec.in_channels, spec.in_size, spec.in_size,
                        generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = module(x).numpy()
        got = block(x.numpy())
        assert got.shape == expected.shape == (batch, spec.out_channels, spec.out_size,
                                               spec.out_size)
        assert np.abs(got - expected).max() <= TOLERANCE
        assert np.abs(block(x.numpy()) - got).max() == 0.0  # buffers reused, same result


@needs_tvm
@pytest.mark.parametrize("name", ["residual-se-k7", "odd-s2-3words", "odd-narrow-mid"])
@pytest.mark.parametrize("convs", [("expand",), ("expand", "project")])
def test_fused_block_without_shortcuts_matches_pytorch(name: str,
                                                       convs: tuple[str, ...]) -> None:
    """Binary convs trained without their cyclic shortcut (``binary_ablation``) run fused
    without it: no NHWC input copy for the expand, no NCHW copy for the project."""
    from ofa_search.binary.tvm_block import TvmBlock, stage_program

    spec = UNITS[name]
    module = _block(spec, seed=3)
    x = torch.randn(2, spec.in_channels, spec.in_size, spec.in_size,
                    generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = module(x).numpy()
        for conv in convs:
            getattr(module, conv).ablated = frozenset({"shortcut"})
        expected = module(x).numpy()
    (plan,) = find_blocks(_program(module, spec))
    block = TvmBlock(plan)
    bspec = block.spec(tuple(x.shape))
    assert (bspec.expand_shortcut, bspec.project_shortcut) == (False, "project" not in convs)
    got = block(x.numpy())
    assert np.abs(got - expected).max() <= TOLERANCE
    assert np.abs(got - full).max() > 0.1
    if "project" in convs:
        with pytest.raises(ValueError, match="no nchw stage \\(no project shortcut\\)"):
            stage_program(bspec, "nchw")


def test_depthwise_segment_parsed_back() -> None:
    spec = UNITS["residual-se-k7"]
    module = _block(spec, seed=3)
    program = _program(module, spec)
    (plan,) = find_blocks(program)
    dw = plan.depthwise
    conv, bn = module.depthwise[0], module.depthwise[1]  # type: ignore[index]
    factor = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy()
    expected = conv.weight.detach().numpy()[:, 0] * factor[:, None, None]
    assert np.abs(dw.weight - expected).max() < 1e-5
    assert dw.se_reduce is not None and dw.se_expand is not None
    assert np.array_equal(dw.se_reduce, module.se.reduce.weight.detach().numpy()[:, :, 0, 0])  # type: ignore[union-attr]
    assert parse_depthwise_segment(b"not an onnx model") is None


def test_other_segments_are_not_blocks() -> None:
    # a block without expand, and fp32 blocks, are not fused: no plans
    no_expand = MBConvUnit(16, 16, 16, 8, 3, 1, "relu", 0, has_expand=False,
                           precision="binary")
    module = _block(no_expand, seed=0)
    assert find_blocks(_program(module, no_expand)) == []
    fp32 = MBConvUnit(16, 16, 48, 8, 3, 1, "relu", 0)
    assert find_blocks(_program(_block(fp32, seed=0), fp32)) == []


@needs_tvm
def test_package_runs_fused_blocks_like_step_by_step() -> None:
    spec = UNITS["residual-se-k7"]
    fused = unit_package(spec, backend="tvm")
    steps = unit_package(spec, backend="tvm", fuse=False)
    numpy = unit_package(spec, backend="numpy")
    assert fused.fused_blocks == 1 and steps.fused_blocks == 0 and numpy.fused_blocks == 0
    assert unit_package(spec, backend="tvm", threads=2).fused_blocks == 0  # serial code
    x = np.random.default_rng(0).standard_normal((2, *fused.input_shape)).astype(np.float32)
    got = fused.run(x)
    assert np.abs(got - steps.run(x)).max() <= TOLERANCE
    assert np.abs(got - numpy.run(x)).max() <= TOLERANCE


@needs_tvm
@pytest.mark.parametrize("fuse", [True, False])
def test_measure_prices_fused_and_step_by_step(fuse: bool) -> None:
    quick = TimingConfig(warmup=1, min_runs=5, max_runs=20, time_cap_s=0.3)
    stats = measure_binary_unit(UNITS["hswish-s2"], timing=quick, backend="tvm", fuse=fuse)
    assert stats.median_ms > 0 and quick.min_runs <= stats.count <= quick.max_runs


def _depthwise_graph(extra: bool) -> bytes:
    """Conv (no bias) → BatchNormalization → HardSwish, as an exporter without BN folding
    writes it; ``extra``: one more node after it (then it is no block's segment)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    m = 6
    inits = [numpy_helper.from_array(rng.standard_normal((m, 1, 3, 3)).astype(np.float32), "w")]
    for name, value in (("g", 1 + rng.random(m)), ("b", rng.standard_normal(m)),
                        ("mu", rng.standard_normal(m)), ("var", 1 + rng.random(m))):
        inits.append(numpy_helper.from_array(value.astype(np.float32), name))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], group=m, kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "mu", "var"], ["n"],
                              epsilon=1e-3),
             helper.make_node("HardSwish", ["n"], ["h"])]
    out = "h"
    if extra:
        nodes.append(helper.make_node("Relu", ["h"], ["r"]))
        out = "r"
    graph = helper.make_graph(
        nodes, "dw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", m, 8, 8])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits)
    return onnx.helper.make_model(graph).SerializeToString()


def test_unfolded_batch_norm_is_folded_and_extra_nodes_refused() -> None:
    import onnx
    from onnx import numpy_helper

    data = _depthwise_graph(extra=False)
    dw = parse_depthwise_segment(data)
    assert dw is not None and dw.stride == 2 and dw.kernel == 3 and dw.act == "hswish"
    assert dw.se_channels == 0
    arrays = {i.name: numpy_helper.to_array(i).astype(np.float64)
              for i in onnx.load_from_string(data).graph.initializer}
    factor = arrays["g"] / np.sqrt(arrays["var"] + 1e-3)
    assert np.abs(dw.weight - arrays["w"][:, 0] * factor[:, None, None]).max() < 1e-5
    assert np.abs(dw.bias - (arrays["b"] - arrays["mu"] * factor)).max() < 1e-5
    assert parse_depthwise_segment(_depthwise_graph(extra=True)) is None


@needs_tvm
def test_stage_programs_end_at_each_stage_and_the_last_is_the_block() -> None:
    from ofa_search.binary.tvm_block import STAGES, TvmBlock, stage_program

    spec = UNITS["residual-se-k7"]  # 24 → 144 → 24, k7, SE 40, 7 px
    (plan,) = find_blocks(_program(_block(spec, seed=1), spec))
    block = TvmBlock(plan)
    x = np.random.default_rng(0).standard_normal(
        (1, spec.in_channels, spec.in_size, spec.in_size)).astype(np.float32)
    expected = block(x)
    bspec = block.spec(x.shape)
    outputs = {stage: stage_program(bspec, stage)[1][-1] for stage in STAGES}
    rows = bspec.dw_rows * bspec.out_width  # whole rows covering the padded pixels
    assert outputs == {
        "expand": ((1, max(7 + 6, bspec.dw_rows - 1 + 7), 7 + 6, 144), "float32"),
        "depthwise": ((1, rows, 144), "float32"),
        "squeeze_excite": ((1, 144), "float32"),
        "nchw": ((1, 24, bspec.padded_out_pixels), "float32"),
        "project": ((1, 24, bspec.padded_out_pixels), "float32"),
    }
    # the whole block's prefix is the block: same arguments, same output
    _, _, y_buf, args = block._call_for(x.shape)
    project, shapes = stage_program(bspec, "project")
    assert [tuple(a.shape) for a in args] == [shape for shape, _ in shapes]
    y_buf[...] = 0.0
    project(*args)
    assert np.array_equal(y_buf[..., :49].reshape(expected.shape), expected)
    with pytest.raises(ValueError, match="stage must be one of expand, depthwise"):
        stage_program(bspec, "pack")
    plain = TvmBlock(find_blocks(_program(_block(UNITS["residual-k5"], seed=2),
                                          UNITS["residual-k5"]))[0])
    with pytest.raises(ValueError, match="this block has no squeeze_excite stage"):
        stage_program(plain.spec((1, 16, 14, 14)), "squeeze_excite")
