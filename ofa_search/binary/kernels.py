"""Reference binary convolution on packed signs, in NumPy (``np.bitwise_count``).

For ±1 vectors packed as in :mod:`ofa_search.binary.packing`, ``Σ a_i·b_i = K − 2·
popcount(a XOR b)`` with ``K`` the number of real (not pad) bits. A k×k conv sums that
over its ``k²`` taps, so an output is ``C·k² − 2·Σ_taps popcount``: an exact integer.

Padding (``padding="same"``: ``k // 2`` pixels each side, odd kernels only) needs a value:

* ``pad_value=+1`` / ``-1``: the border holds real ±1 pixels, packed like any other;
* ``pad_value=0``: zero padding, as ``torch.nn.functional.conv2d`` on ±1 inputs. A zero is
  not a sign, so the border is packed as +1 and each output then subtracts, exactly, what
  its padded taps added: ``Σ_c sign(w[o, c, r, s])`` for every tap ``(r, s)`` that falls
  outside the image (:func:`zero_padding_correction`, independent of the input).

These functions are the specification the TVM kernels (:mod:`ofa_search.binary.tvm_kernels`)
are tested against, and the fallback where TVM is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ofa_search.binary.packing import num_words, sign_word

Padding = Literal["same", "valid"]
PAD_VALUES: tuple[int, ...] = (0, 1, -1)
_CHUNK_ELEMENTS = 1 << 22  # bound on the [rows, out, words] temporaries of popcount_dot


@dataclass(frozen=True)
class ConvGeometry:
    """Spatial sizes of one conv: input, kernel, stride, padding (each side), output."""

    in_h: int
    in_w: int
    kernel: int
    stride: int
    pad: int

    @property
    def out_h(self) -> int:
        return (self.in_h + 2 * self.pad - self.kernel) // self.stride + 1

    @property
    def out_w(self) -> int:
        return (self.in_w + 2 * self.pad - self.kernel) // self.stride + 1


def conv_geometry(in_h: int, in_w: int, kernel: int, stride: int = 1,
                  padding: Padding = "same") -> ConvGeometry:
    """Validated geometry; ``"same"`` pads ``kernel // 2`` (odd kernels only)."""
    for name, value in (("kernel", kernel), ("stride", stride), ("in_h", in_h), ("in_w", in_w)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {name}={value!r}")
    if padding == "same":
        if kernel % 2 == 0:
            raise ValueError(f"padding='same' needs an odd kernel, got {kernel=}")
        pad = kernel // 2
    elif padding == "valid":
        pad = 0
    else:
        raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
    geo = ConvGeometry(int(in_h), int(in_w), int(kernel), int(stride), pad)
    if geo.out_h < 1 or geo.out_w < 1:
        raise ValueError(f"a {kernel}×{kernel} kernel does not fit a {in_h}×{in_w} input "
                         f"with padding={padding!r}")
    return geo


def check_conv_operands(x_words: np.ndarray, w_words: np.ndarray, channels: int,
                        pad_value: int) -> None:
    """Raise ``ValueError`` unless the packed operands of a conv fit together."""
    if pad_value not in PAD_VALUES:
        raise ValueError(f"pad_value must be 0, +1 or -1, got {pad_value=}")
    words = num_words(channels)
    if x_words.dtype != np.uint64 or w_words.dtype != np.uint64:
        raise ValueError(f"packed operands must be uint64, got {x_words.dtype} and "
                         f"{w_words.dtype}")
    if x_words.ndim != 4 or x_words.shape[-1] != words:
        raise ValueError(f"packed activations must be [N, H, W, {words}] for {channels} "
                         f"channels, got {x_words.shape}")
    if w_words.ndim != 4 or w_words.shape[-1] != words or w_words.shape[1] != w_words.shape[2]:
        raise ValueError(f"packed weights must be [O, k, k, {words}] for {channels} channels, "
                         f"got {w_words.shape}")


def popcount_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``Σ_words popcount(a[m] ^ b[o])`` for ``a [M, words]``, ``b [O, words]`` → int32 [M, O]."""
    rows = max(1, _CHUNK_ELEMENTS // max(1, b.shape[0] * b.shape[1]))
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.int32)
    for start in range(0, a.shape[0], rows):
        chunk = a[start:start + rows, None, :] ^ b[None, :, :]
        out[start:start + rows] = np.bitwise_count(chunk).sum(axis=-1, dtype=np.int32)
    return out


def tap_sign_sums(w_words: np.ndarray, channels: int) -> np.ndarray:
    """``Σ_c sign(w[o, c, r, s])`` per output channel and tap → int32 ``[O, k, k]``."""
    ones = np.bitwise_count(w_words).sum(axis=-1, dtype=np.int32)
    return channels - 2 * ones


def padded_tap_mask(geo: ConvGeometry) -> np.ndarray:
    """``mask[h, w, r, s]``: tap ``(r, s)`` of output ``(h, w)`` reads the padding."""
    def outside(size: int, out: int) -> np.ndarray:
        pos = np.arange(out)[:, None] * geo.stride + np.arange(geo.kernel)[None, :] - geo.pad
        return (pos < 0) | (pos >= size)

    rows, cols = outside(geo.in_h, geo.out_h), outside(geo.in_w, geo.out_w)
    return rows[:, None, :, None] | cols[None, :, None, :]


def zero_padding_correction(w_words: np.ndarray, channels: int, geo: ConvGeometry
                            ) -> np.ndarray:
    """What +1 padding adds over zero padding, per output: int32 ``[out_h, out_w, O]``."""
    mask = padded_tap_mask(geo).astype(np.int32)
    return np.einsum("hwrs,ors->hwo", mask, tap_sign_sums(w_words, channels)).astype(np.int32)


def pad_packed(x_words: np.ndarray, channels: int, pad: int, pad_value: int) -> np.ndarray:
    """``x_words`` with ``pad`` pixels of ``pad_value`` around H and W (0 packs as +1)."""
    if pad == 0:
        return x_words
    n, h, w, words = x_words.shape
    fill = sign_word(channels, -1) if pad_value == -1 else np.zeros(words, dtype=np.uint64)
    out = np.empty((n, h + 2 * pad, w + 2 * pad, words), dtype=np.uint64)
    out[...] = fill
    out[:, pad:pad + h, pad:pad + w] = x_words
    return out


def binary_conv2d(x_words: np.ndarray, w_words: np.ndarray, channels: int, *,
                  stride: int = 1, padding: Padding = "same", pad_value: int = 0
                  ) -> np.ndarray:
    """Binary conv of packed activations ``[N, H, W, words]`` with packed weights
    ``[O, k, k, words]`` (both of ``channels`` real channels) → int32 ``[N, Ho, Wo, O]``,
    each ``Σ sign(x)·sign(w)`` over the window (see the module docstring for padding)."""
    x_words, w_words = np.asarray(x_words), np.asarray(w_words)
    check_conv_operands(x_words, w_words, channels, pad_value)
    n, h, w, words = x_words.shape
    out_ch, kernel = w_words.shape[0], w_words.shape[1]
    geo = conv_geometry(h, w, kernel, stride, padding)
    xp = pad_packed(x_words, channels, geo.pad, pad_value)
    span_h, span_w = stride * (geo.out_h - 1) + 1, stride * (geo.out_w - 1) + 1
    popcounts = np.zeros((n * geo.out_h * geo.out_w, out_ch), dtype=np.int32)
    for r in range(kernel):
        for s in range(kernel):
            patch = xp[:, r:r + span_h:stride, s:s + span_w:stride, :].reshape(-1, words)
            popcounts += popcount_dot(patch, w_words[:, r, s, :])
    dot = (channels * kernel * kernel - 2 * popcounts).reshape(n, geo.out_h, geo.out_w, out_ch)
    if pad_value == 0 and geo.pad > 0:
        dot -= zero_padding_correction(w_words, channels, geo)[None]
    return dot
