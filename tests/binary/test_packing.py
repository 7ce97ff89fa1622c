"""Sign packing: bit meaning, pad bits, round trips."""

from __future__ import annotations

import numpy as np
import pytest

from ofa_search.binary.packing import (
    num_words,
    pack_activations,
    pack_bits_dense,
    pack_signs,
    pack_weights,
    sign_word,
    unpack_bits_dense,
    unpack_signs,
)


@pytest.mark.parametrize("channels", [1, 7, 63, 64, 65, 130, 256])
def test_round_trip_and_clear_pad_bits(channels: int) -> None:
    rng = np.random.default_rng(channels)
    x = rng.standard_normal((3, 2, channels)).astype(np.float32)
    x[0, 0, 0] = 0.0  # sign(0) = +1
    words = pack_signs(x)
    assert words.dtype == np.uint64 and words.shape == (3, 2, num_words(channels))
    signs = unpack_signs(words, channels)
    assert np.array_equal(signs, np.where(x >= 0, 1.0, -1.0))
    assert signs[0, 0, 0] == 1.0
    if channels % 64:
        pad_mask = ~np.uint64((1 << (channels % 64)) - 1)
        assert not (words[..., -1] & pad_mask).any()


def test_bit_layout_is_little_endian_per_word() -> None:
    x = np.ones(130, dtype=np.float32)
    x[[0, 3, 64, 129]] = -1.0
    words = pack_signs(x)
    assert words.tolist() == [0b1001, 1, 1 << 1]


def test_layouts_and_sign_words() -> None:
    rng = np.random.default_rng(0)
    act = rng.standard_normal((2, 70, 5, 4))
    assert pack_activations(act).shape == (2, 5, 4, 2)
    assert np.array_equal(unpack_signs(pack_activations(act), 70),
                          np.where(act >= 0, 1.0, -1.0).transpose(0, 2, 3, 1))
    w = rng.standard_normal((8, 70, 3, 3))
    assert pack_weights(w).shape == (8, 3, 3, 2)
    assert sign_word(70, 1).tolist() == [0, 0]
    assert sign_word(70, -1).tolist() == [2**64 - 1, 0b111111]


def test_dense_storage_is_one_bit_per_sign() -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((24, 48, 1, 1)).astype(np.float32)
    data = pack_bits_dense(w)
    assert len(data) == 24 * 48 // 8
    assert np.array_equal(unpack_bits_dense(data, w.shape), np.where(w >= 0, 1.0, -1.0))


@pytest.mark.parametrize(("call", "message"), [
    (lambda: num_words(0), "channels must be a positive integer"),
    (lambda: pack_signs(np.zeros((2, 0))), "last \\(channel\\) axis"),
    (lambda: unpack_signs(np.zeros((2, 1), np.uint64), 65), "65 channels take 2 word"),
    (lambda: unpack_signs(np.full(1, 2**63, np.uint64), 5), "pad bits set"),
    (lambda: unpack_signs(np.zeros(1, np.int64), 5), "must be uint64"),
    (lambda: pack_activations(np.zeros((2, 3))), "must be \\[N, C, H, W\\]"),
    (lambda: sign_word(3, 0), "must be \\+1 or -1"),
    (lambda: unpack_bits_dense(b"\0", (3, 3)), "take 2 bytes"),
])
def test_errors(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        call()
