"""Small multilayer perceptrons for accuracy predictors: trained with torch (owned
``torch.Generator`` for init and batching), stored as numpy arrays, evaluated with one
``torch.addmm`` per layer without autograd.

A network is a list of ``(weight [in, out], bias [out])`` float32 arrays; ReLU between
layers, a linear output of one unit.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

Layers = list[tuple[np.ndarray, np.ndarray]]


@torch.no_grad()
def mlp_forward(layers: Layers, x: np.ndarray) -> np.ndarray:
    """Outputs ``[N]`` (float32) of the network on ``x [N, in]`` float32: one fused
    ``addmm`` per layer through torch (honours ``torch.set_num_threads``; faster than
    numpy's BLAS on a busy host)."""
    h = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    for i, (w, b) in enumerate(layers):
        h = torch.addmm(torch.from_numpy(b), h, torch.from_numpy(w))
        if i < len(layers) - 1:
            h = torch.relu_(h)
    return h[:, 0].numpy()


def train_mlp(x: np.ndarray, y: np.ndarray, hidden: Sequence[int], *, epochs: int,
              min_steps: int, lr: float, weight_decay: float, batch_size: int,
              generator: torch.Generator) -> Layers:
    """Fit an MLP to ``y`` (already standardised) by mean squared error with Adam and a
    cosine learning-rate decay over ``max(epochs × batches, min_steps)`` steps (just
    ``epochs`` steps when the data is smaller than one batch)."""
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
    sizes = [xt.shape[1], *hidden, 1]
    params: list[torch.Tensor] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        bound = 1.0 / math.sqrt(fan_in)  # torch.nn.Linear's default range
        params.append(((torch.rand(fan_in, fan_out, generator=generator) * 2 - 1) * bound)
                      .requires_grad_())
        params.append(((torch.rand(fan_out, generator=generator) * 2 - 1) * bound)
                      .requires_grad_())
    n = xt.shape[0]
    batch = min(batch_size, n)
    per_epoch = math.ceil(n / batch)
    # small data sets get at least min_steps updates; a toy set (< one batch) just epochs
    steps = epochs * per_epoch if n < batch_size else max(epochs * per_epoch, min_steps)
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step / steps, 1.0))))
    step = 0
    while step < steps:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            out = _torch_forward(params, xt[idx])
            loss = torch.mean((out - yt[idx]) ** 2)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if step >= steps:
                break
    return [(params[i].detach().numpy().copy(), params[i + 1].detach().numpy().copy())
            for i in range(0, len(params), 2)]


def _torch_forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    h = x
    for i in range(0, len(params), 2):
        h = h @ params[i] + params[i + 1]
        if i < len(params) - 2:
            h = torch.relu(h)
    return h[:, 0]


def layers_to_state(layers: Layers) -> list[dict[str, Any]]:
    """JSON-ready weights (nested lists, float32 values rounded-trip exactly)."""
    return [{"w": w.tolist(), "b": b.tolist()} for w, b in layers]


def layers_from_state(state: Any, n_in: int) -> Layers:
    """Inverse of :func:`layers_to_state`; checks that the shapes chain from ``n_in`` to 1."""
    if not isinstance(state, list) or not state:
        raise ValueError("network has no layers")
    layers: Layers = []
    width = n_in
    for i, layer in enumerate(state):
        w = np.asarray(layer["w"], dtype=np.float32)
        b = np.asarray(layer["b"], dtype=np.float32)
        if w.ndim != 2 or w.shape[0] != width or b.shape != (w.shape[1],):
            raise ValueError(f"layer {i} has shapes {w.shape}, {b.shape}; expected "
                             f"({width}, k) and (k,)")
        layers.append((w, b))
        width = w.shape[1]
    if width != 1:
        raise ValueError(f"network outputs {width} values, expected 1")
    return layers
