"""The NumPy binary conv equals a float conv of ±1 tensors exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ofa_search.binary.kernels import binary_conv2d, conv_geometry
from ofa_search.binary.packing import pack_activations, pack_weights


def sign_conv_reference(x: np.ndarray, w: np.ndarray, stride: int, pad_value: int
                        ) -> np.ndarray:
    """torch conv2d on the ±1 signs ('same' padding filled with ``pad_value``) → NHWC."""
    xs = torch.from_numpy(np.where(x >= 0, 1.0, -1.0))
    ws = torch.from_numpy(np.where(w >= 0, 1.0, -1.0))
    pad = w.shape[-1] // 2
    if pad_value == 0:
        out = F.conv2d(xs, ws, stride=stride, padding=pad)
    else:
        out = F.conv2d(F.pad(xs, (pad,) * 4, value=float(pad_value)), ws, stride=stride)
    return out.permute(0, 2, 3, 1).numpy()


def random_case(seed: int, n: int, c: int, o: int, k: int, size: int
                ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, size, size))
    x[rng.random(x.shape) < 0.05] = 0.0  # exact zeros are +1
    return x, rng.standard_normal((o, c, k, k))


CASES = [(c, k, stride, pad_value)
         for c in (1, 63, 65, 130) for k in (1, 3, 5) for stride in (1, 2)
         for pad_value in (0, 1, -1)]


@pytest.mark.parametrize(("channels", "kernel", "stride", "pad_value"), CASES)
def test_numpy_conv_equals_float_sign_conv(channels: int, kernel: int, stride: int,
                                           pad_value: int) -> None:
    x, w = random_case(channels * 100 + kernel * 10 + stride, 2, channels, 9, kernel, 7)
    got = binary_conv2d(pack_activations(x), pack_weights(w), channels, stride=stride,
                        pad_value=pad_value)
    expected = sign_conv_reference(x, w, stride, pad_value)
    assert got.dtype == np.int32 and got.shape == expected.shape
    assert np.array_equal(got, expected.astype(np.int32))


def test_valid_padding_and_odd_sizes() -> None:
    x, w = random_case(5, 1, 65, 4, 3, 6)
    got = binary_conv2d(pack_activations(x), pack_weights(w), 65, padding="valid", stride=2)
    xs, ws = (torch.from_numpy(np.where(a >= 0, 1.0, -1.0)) for a in (x, w))
    expected = F.conv2d(xs, ws, stride=2).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(got, expected.astype(np.int32))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"pad_value": 2}, "pad_value must be 0, \\+1 or -1"),
    ({"padding": "full"}, "padding must be 'same' or 'valid'"),
    ({"stride": 0}, "stride must be a positive integer"),
])
def test_bad_arguments(kwargs: dict, message: str) -> None:  # type: ignore[type-arg]
    x, w = random_case(0, 1, 8, 2, 3, 4)
    with pytest.raises(ValueError, match=message):
        binary_conv2d(pack_activations(x), pack_weights(w), 8, **kwargs)


def test_operand_mismatch_and_geometry_errors() -> None:
    x, w = random_case(0, 1, 8, 2, 3, 4)
    with pytest.raises(ValueError, match="must be \\[N, H, W, 2\\] for 70 channels"):
        binary_conv2d(pack_activations(x), pack_weights(w), 70)
    with pytest.raises(ValueError, match="odd kernel"):
        conv_geometry(8, 8, 2)
    with pytest.raises(ValueError, match="does not fit"):
        conv_geometry(2, 2, 5, padding="valid")
