"""Elastic layers: one set of maximal weights, any active size sliced out of it.

Each layer takes the active configuration as forward arguments (no mutable "active"
state) and can emit its static twin with copied weights (``to_static``), which is how
:func:`ofa_search.nn.extract.extract` builds an exact subnet.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ofa_search.nn.static import SqueezeExcite


class DynamicPointwiseConv2d(nn.Conv2d):
    """1×1 conv (no bias) whose input channels follow the input and whose output channels
    are the first ``out_channels`` of the maximal weight."""

    def __init__(self, max_in: int, max_out: int) -> None:
        super().__init__(max_in, max_out, 1, bias=False)

    def active_weight(self, out_channels: int, in_channels: int) -> torch.Tensor:
        return self.weight[:out_channels, :in_channels]

    def forward(
        self, x: torch.Tensor, out_channels: int | None = None
    ) -> torch.Tensor:
        out = self.out_channels if out_channels is None else out_channels
        return F.conv2d(x, self.active_weight(out, x.shape[1]))

    def to_static(self, out_channels: int, in_channels: int) -> nn.Conv2d:
        conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        with torch.no_grad():
            conv.weight.copy_(self.active_weight(out_channels, in_channels))
        return conv


class DynamicDepthwiseConv2d(nn.Conv2d):
    """Depthwise conv with elastic kernel size and channel count (once-for-all).

    The maximal kernel is stored; a smaller kernel is the centre of the next larger
    (transformed) kernel multiplied by a learned ``k²×k²`` kernel-transformation matrix,
    shared by all channels of this layer and initialised to the identity (7×7 centre →
    5×5 through a 25×25 matrix, 5×5 centre → 3×3 through a 9×9 one).
    """

    def __init__(self, max_channels: int, kernel_sizes: tuple[int, ...], stride: int) -> None:
        kmax = max(kernel_sizes)
        super().__init__(max_channels, max_channels, kmax, (stride, stride), padding=kmax // 2,
                         groups=max_channels, bias=False)
        self.kernel_sizes = tuple(sorted(kernel_sizes))
        self.transforms = nn.ParameterDict()
        for small, big in zip(self.kernel_sizes[:-1], self.kernel_sizes[1:], strict=True):
            self.transforms[f"{big}to{small}"] = nn.Parameter(torch.eye(small * small))

    def active_weight(self, kernel: int, channels: int) -> torch.Tensor:
        if kernel not in self.kernel_sizes:
            raise ValueError(f"kernel {kernel} not in {self.kernel_sizes}")
        weight = self.weight[:channels]
        sizes = self.kernel_sizes
        for i in range(len(sizes) - 1, 0, -1):
            big, small = sizes[i], sizes[i - 1]
            if big == kernel:
                break
            start = (big - small) // 2
            centre = weight[:, :, start:start + small, start:start + small]
            flat = centre.reshape(channels, small * small)
            weight = F.linear(flat, self.transforms[f"{big}to{small}"]).reshape(
                channels, 1, small, small
            )
        return weight

    def forward(
        self, x: torch.Tensor, kernel: int | None = None
    ) -> torch.Tensor:
        k = self.kernel_sizes[-1] if kernel is None else kernel
        channels = x.shape[1]
        return F.conv2d(x, self.active_weight(k, channels), None, self.stride, k // 2, 1,
                        channels)

    def to_static(self, kernel: int, channels: int) -> nn.Conv2d:
        conv = nn.Conv2d(channels, channels, kernel, self.stride[0], padding=kernel // 2,
                         groups=channels, bias=False)
        with torch.no_grad():
            conv.weight.copy_(self.active_weight(kernel, channels))
        return conv


class DynamicBatchNorm2d(nn.BatchNorm2d):
    """Batch norm over the first ``C`` channels of the maximal statistics and affine
    parameters, where ``C`` is the input's channel count. In training the running
    statistics of exactly those channels are updated."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        assert self.running_mean is not None and self.running_var is not None
        return F.batch_norm(
            x, self.running_mean[:c], self.running_var[:c], self.weight[:c], self.bias[:c],
            self.training, self.momentum if self.momentum is not None else 0.1, self.eps,
        )

    def to_static(self, channels: int) -> nn.BatchNorm2d:
        bn = nn.BatchNorm2d(channels, eps=self.eps, momentum=self.momentum)
        assert self.running_mean is not None and self.running_var is not None
        with torch.no_grad():
            bn.weight.copy_(self.weight[:channels])
            bn.bias.copy_(self.bias[:channels])
            bn.running_mean.copy_(self.running_mean[:channels])  # type: ignore[union-attr]
            bn.running_var.copy_(self.running_var[:channels])  # type: ignore[union-attr]
        return bn


class DynamicSqueezeExcite(nn.Module):
    """Squeeze-and-excite on the first ``C`` channels; the squeeze width for ``C`` channels
    comes from ``squeeze_for(C)`` (the space's rounding rule)."""

    def __init__(self, max_channels: int, max_squeeze: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(max_channels, max_squeeze, 1, bias=True)
        self.expand = nn.Conv2d(max_squeeze, max_channels, 1, bias=True)

    def _biases(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.reduce.bias is not None and self.expand.bias is not None
        return self.reduce.bias, self.expand.bias

    def forward(self, x: torch.Tensor, squeeze: int) -> torch.Tensor:
        c = x.shape[1]
        reduce_bias, expand_bias = self._biases()
        s = x.mean((2, 3), keepdim=True)
        s = F.relu(F.conv2d(s, self.reduce.weight[:squeeze, :c], reduce_bias[:squeeze]))
        s = F.conv2d(s, self.expand.weight[:c, :squeeze], expand_bias[:c])
        return x * F.hardsigmoid(s)

    def to_static(self, channels: int, squeeze: int) -> SqueezeExcite:
        se = SqueezeExcite(channels, squeeze)
        reduce_bias, expand_bias = self._biases()
        static_reduce_bias, static_expand_bias = se.reduce.bias, se.expand.bias
        assert static_reduce_bias is not None and static_expand_bias is not None
        with torch.no_grad():
            se.reduce.weight.copy_(self.reduce.weight[:squeeze, :channels])
            static_reduce_bias.copy_(reduce_bias[:squeeze])
            se.expand.weight.copy_(self.expand.weight[:channels, :squeeze])
            static_expand_bias.copy_(expand_bias[:channels])
        return se
