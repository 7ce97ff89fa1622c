"""Sign bits packed into ``uint64`` words along the channel axis (NHWC order).

Bit meaning: a set bit is ``-1`` (the value is negative), a clear bit is ``+1`` (the
value is ``>= 0``; ``sign(0) = +1``, as :func:`ofa_search.nn.binary.binary_sign`).
Channel ``c`` is bit ``c mod 64`` (least significant first) of word ``c // 64``.

Channel counts that are not a multiple of 64 leave *pad bits* in the last word. They are
always clear, in activations and in weights alike, so their XOR is 0 and they never reach a
popcount: a dot product of ``K`` real ±1 pairs is exactly ``K - 2 * popcount(a ^ b)``,
whatever the padding to whole words.

Layouts: activations ``[N, H, W, words]`` (from NCHW floats), weights
``[O, kh, kw, words]`` (from ``[O, C, kh, kw]`` floats). For storage, :func:`pack_bits_dense`
packs a sign tensor with no pad bits at all (32× smaller than fp32, up to one byte).
"""

from __future__ import annotations

import numpy as np

WORD_BITS = 64
"""Bits (channels) per packed word."""


def num_words(channels: int) -> int:
    """Words that hold ``channels`` sign bits (``ceil(channels / 64)``)."""
    if isinstance(channels, bool) or not isinstance(channels, int | np.integer) or channels < 1:
        raise ValueError(f"channels must be a positive integer, got {channels=}")
    return (int(channels) + WORD_BITS - 1) // WORD_BITS


def pack_signs(values: np.ndarray) -> np.ndarray:
    """Pack the signs of ``values`` along its last axis into ``uint64`` words.

    ``values[..., c] < 0`` sets bit ``c mod 64`` of word ``c // 64``; pad bits are clear.
    Returns ``[..., num_words(C)]`` (C-contiguous, native byte order).
    """
    values = np.asarray(values)
    if values.ndim < 1 or values.shape[-1] < 1:
        raise ValueError(f"pack_signs needs a last (channel) axis of length >= 1, got shape "
                         f"{values.shape}")
    channels = values.shape[-1]
    words = num_words(channels)
    packed = np.packbits(values < 0, axis=-1, bitorder="little")
    pad = words * 8 - packed.shape[-1]
    if pad:
        packed = np.concatenate(
            [packed, np.zeros((*packed.shape[:-1], pad), dtype=np.uint8)], axis=-1)
    packed = np.ascontiguousarray(packed)
    return packed.view("<u8").astype(np.uint64, copy=False).reshape(*values.shape[:-1], words)


def unpack_signs(words: np.ndarray, channels: int, dtype: np.dtype | type = np.float32
                 ) -> np.ndarray:
    """Inverse of :func:`pack_signs`: ``[..., words]`` → ±1 values ``[..., channels]``.

    Raises ``ValueError`` if ``words`` has the wrong width for ``channels`` or a pad bit set.
    """
    words = np.asarray(words)
    if words.dtype != np.uint64:
        raise ValueError(f"packed words must be uint64, got {words.dtype}")
    expected = num_words(channels)
    if words.ndim < 1 or words.shape[-1] != expected:
        raise ValueError(f"{channels} channels take {expected} word(s) on the last axis, got "
                         f"shape {words.shape}")
    as_bytes = np.ascontiguousarray(words).astype("<u8", copy=False).view(np.uint8)
    bits = np.unpackbits(as_bytes, axis=-1, bitorder="little")
    if bits[..., channels:].any():
        raise ValueError("packed words have pad bits set (beyond the channel count)")
    return (1 - 2 * bits[..., :channels].astype(np.int8)).astype(dtype)


def pack_activations(x: np.ndarray) -> np.ndarray:
    """NCHW floats ``[N, C, H, W]`` → packed signs ``[N, H, W, words]``."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"activations must be [N, C, H, W], got shape {x.shape}")
    return pack_signs(x.transpose(0, 2, 3, 1))


def pack_weights(weight: np.ndarray) -> np.ndarray:
    """Conv weights ``[O, C, kh, kw]`` → packed signs ``[O, kh, kw, words]``."""
    weight = np.asarray(weight)
    if weight.ndim != 4:
        raise ValueError(f"weights must be [O, C, kh, kw], got shape {weight.shape}")
    return pack_signs(weight.transpose(0, 2, 3, 1))


def sign_word(channels: int, value: int) -> np.ndarray:
    """The packed words of a pixel whose ``channels`` values all equal ``value`` (+1 or -1).

    ``+1`` is all-clear words; ``-1`` sets every channel bit and leaves pad bits clear.
    """
    if value not in (1, -1):
        raise ValueError(f"value must be +1 or -1, got {value=}")
    return pack_signs(np.full(channels, float(value), dtype=np.float32))


def pack_bits_dense(signs: np.ndarray) -> bytes:
    """All signs of ``signs`` (C order), one bit each, no pad bits: set bit = negative.

    This is the storage form: ``ceil(size / 8)`` bytes, 32× less than fp32.
    """
    signs = np.asarray(signs)
    return np.packbits((signs < 0).reshape(-1), bitorder="little").tobytes()


def unpack_bits_dense(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`pack_bits_dense`: ±1 ``float32`` values of ``shape``."""
    count = int(np.prod(shape, dtype=np.int64))
    expected = (count + 7) // 8
    if len(data) != expected:
        raise ValueError(f"{count} signs take {expected} bytes, got {len(data)}")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little", count=count)
    return (1.0 - 2.0 * bits.astype(np.float32)).reshape(shape)
