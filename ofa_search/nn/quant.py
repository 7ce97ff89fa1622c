"""Int8 fake quantisation (quantisation-aware training) for ``int8`` stages.

The scheme is the one ONNX Runtime's int8 kernels run (QDQ format, VNNI ``u8s8`` on x86):

- weights: per-output-channel symmetric int8 in [-127, 127], scale ``max|w| / 127``
  (computed from the weights on every call, so there is nothing to calibrate);
- activations: per-tensor affine uint8 in [0, 255] over an observed range ``[lo, hi]``
  that always contains 0, so zero (padding, ReLU's floor) is exact.

Both use PyTorch's ``fake_quantize_*`` ops: round-to-nearest in the forward pass, a
straight-through gradient inside the range and zero outside it.

:class:`Int8ActQuant` observes like a batch-norm layer keeps statistics: in training mode
it updates ``lo``/``hi`` with an exponential moving average (``momentum``) or, with
``momentum=None``, a cumulative average — which is how BN recalibration
(:func:`ofa_search.train.bn_calibration.recalibrate_bn`) recomputes it per subnet.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

INT8_WEIGHT_MAX = 127
UINT8_MAX = 255


def int8_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (``[out, …]``) fake-quantised per output channel, symmetric int8."""
    amax = weight.detach().abs().flatten(1).amax(1).clamp_min(1e-8)
    scale = (amax / INT8_WEIGHT_MAX).float()
    zero = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -INT8_WEIGHT_MAX,
                                                  INT8_WEIGHT_MAX)


class Int8ActQuant(nn.Module):
    """Per-tensor uint8 fake quantisation of activations with an observed range.

    Until it has observed a batch (``count == 0``) it passes its input through unchanged.
    """

    lo: torch.Tensor
    hi: torch.Tensor
    count: torch.Tensor

    def __init__(self, momentum: float | None = 0.1) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def reset_running_stats(self) -> None:
        self.lo.zero_()
        self.hi.zero_()
        self.count.zero_()

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        lo, hi = x.min().clamp(max=0.0), x.max().clamp(min=0.0)
        n = int(self.count)
        if n == 0:
            w = 1.0
        elif self.momentum is None:
            w = 1.0 / (n + 1)
        else:
            w = self.momentum
        self.lo.mul_(1 - w).add_(w * lo)
        self.hi.mul_(1 - w).add_(w * hi)
        self.count.add_(1)

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero_point)`` as 0-d float32 / int32 tensors."""
        scale = ((self.hi - self.lo) / UINT8_MAX).clamp_min(1e-8).float()
        zero = torch.round(-self.lo / scale).clamp(0, UINT8_MAX).to(torch.int32)
        return scale, zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.observe(x.detach())
        if int(self.count) == 0:
            return x
        scale, zero = self.qparams()
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, UINT8_MAX)

    def extra_repr(self) -> str:
        return f"momentum={self.momentum}"


class QConv2d(nn.Conv2d):
    """``nn.Conv2d`` on int8 fake-quantised input and weights (the static ``int8`` conv)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.input_quant = Int8ActQuant()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.input_quant(x), int8_weight(self.weight), self.bias, self.stride,
                        self.padding, self.dilation, self.groups)
