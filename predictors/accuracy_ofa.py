"""once-for-all's accuracy predictor, imported: its MLP and its arch encoding, as ours.

once-for-all (Cai et al., ICLR 2020) ships an MLP that maps a subnet of the
``ofa_mbv3`` space to ImageNet top-1 accuracy (a fraction). Two forms of its code exist,
and both load here:

* ``tutorial`` — ``ofa.tutorial.AccuracyPredictor``, the file its tutorial publishes
  (``acc_predictor.pth``): ``nn.Sequential`` 128 → 400 → 400 → 400 → 1 (ReLU), features =
  kernel one-hot (20 block slots × {3, 5, 7}), expand one-hot (20 × {3, 4, 6}) — slots past
  a stage's depth all zero — and resolution one-hot over ``(r - 112) // 16`` (8 bins,
  112 … 224 px).
* ``nas`` — ``ofa.nas.accuracy_predictor.AccuracyPredictor`` with a
  ``MobileNetArchEncoder``: ``layers.{i}.0`` linear + ReLU blocks, a bias-free output layer
  and a ``base_acc`` offset; features = resolution one-hot over the encoder's
  ``image_size_list``, then kernel, then expand one-hots (20 × 3 each).

The encoding is written out here (no dependency on once-for-all's code); the tests check
that predictions equal once-for-all's own, arch by arch. The predictor knows only the
resolutions its encoding has a column for; it refuses others instead of guessing. It
declares the supernet width its accuracies belong to (once-for-all's tutorial predictor
describes the width-1.2 supernet) and prices only archs of that width.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ofa_search.arch import Arch
from ofa_search.errors import FileFormatError, InvalidArchError
from ofa_search.space import get_space
from ofa_search.torch_files import read_state_dict
from predictors.accuracy import AccuracyPredictor
from predictors.accuracy_mlp import Layers, layers_to_state, mlp_forward

SPACE = "ofa_mbv3"
ENCODINGS = ("tutorial", "nas")
KERNELS, EXPANDS = (3, 5, 7), (3, 4, 6)
TUTORIAL_RESOLUTIONS = tuple(range(112, 225, 16))  # (r - 112) // 16 for 8 bins
_SLOTS = 20  # 5 stages × 4 block slots


class OfaAccuracyPredictor(AccuracyPredictor):
    """once-for-all's accuracy MLP over its own arch encoding (see the module docstring).

    Args:
        encoding: ``"tutorial"`` or ``"nas"``.
        resolutions: the resolutions of the encoding's one-hot columns, in column order.
        width_mult: the supernet width whose accuracies the predictor describes.
        layers: the MLP as ``[(weight [in, out], bias [out]), …]`` (ReLU between layers).
        base_acc: added to the output (``nas`` form; 0 for ``tutorial``).
        residual_std: held-out RMSE of the predictor (a fraction) when known; once-for-all
            publishes none with its file, so :meth:`predict_std` returns 0 until one is given.
        source: where the weights came from (file name, sha256), for the record.
    """

    kind: ClassVar[str] = "accuracy_ofa_mlp"
    format_version: ClassVar[int] = 1

    def __init__(self, *, encoding: str, resolutions: Sequence[int], width_mult: float,
                 layers: Layers, base_acc: float = 0.0, residual_std: float | None = None,
                 source: Mapping[str, Any] | None = None) -> None:
        super().__init__(SPACE)
        spec = get_space(SPACE)
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding=}")
        if float(width_mult) not in spec.width_mults:
            raise ValueError(f"width_mult must be one of {spec.width_mults}, got {width_mult=}")
        res = tuple(int(r) for r in resolutions)
        if not res or len(set(res)) != len(res):
            raise ValueError(f"resolutions must be distinct, got {resolutions=}")
        if encoding == "tutorial" and res != TUTORIAL_RESOLUTIONS:
            raise ValueError(f"the tutorial encoding has resolution columns "
                             f"{TUTORIAL_RESOLUTIONS}, got {res}")
        width = len(res) + 2 * 3 * _SLOTS
        for i, (w, b) in enumerate(layers):
            if w.ndim != 2 or w.shape[0] != width or b.shape != (w.shape[1],):
                raise ValueError(f"layer {i} has shapes {w.shape}, {b.shape}; expected "
                                 f"({width}, k) and (k,)")
            width = w.shape[1]
        if not layers or width != 1:
            raise ValueError("the network must end in one output")
        self.layers: Layers = [(np.asarray(w, np.float32), np.asarray(b, np.float32))
                               for w, b in layers]
        if residual_std is not None and not (np.isfinite(residual_std) and residual_std >= 0):
            raise ValueError(f"residual_std must be a finite fraction >= 0, got {residual_std=}")
        self.encoding, self.resolutions = encoding, res
        self.width_mult, self.base_acc = float(width_mult), float(base_acc)
        self.residual_std = None if residual_std is None else float(residual_std)
        self.source = dict(source or {})
        self._res_col = {r: i for i, r in enumerate(res)}

    # -- the encoding ----------------------------------------------------------------
    def known_resolutions(self) -> tuple[int, ...]:
        """The resolutions of the space that this predictor can price."""
        return tuple(r for r in get_space(SPACE).resolutions if r in self._res_col)

    def ofa_features(self, archs: Sequence[Arch]) -> np.ndarray:
        """once-for-all's feature rows of ``archs`` (float32, ``[N, n_features]``)."""
        n_res = len(self.resolutions)
        # tutorial: [kernels 60][expands 60][resolutions]; nas: [resolutions][kernels][expands]
        r_off, k_off, e_off = ((120, 0, 60) if self.encoding == "tutorial"
                               else (0, n_res, n_res + 60))
        x = np.zeros((len(archs), n_res + 120), dtype=np.float32)
        depth = get_space(SPACE).max_depth
        for row, arch in enumerate(archs):
            if arch.space != SPACE or arch.width_mult != self.width_mult:
                raise InvalidArchError(
                    f"once-for-all's accuracy predictor (imported for {SPACE}/w"
                    f"{self.width_mult}) cannot price an arch of {arch.space}/w{arch.width_mult}")
            col = self._res_col.get(arch.resolution)
            if col is None:
                raise InvalidArchError(
                    f"once-for-all's accuracy predictor knows resolutions "
                    f"{', '.join(map(str, self.resolutions))}; got {arch.resolution}")
            x[row, r_off + col] = 1.0
            for s, d in enumerate(arch.depths):
                for b in range(d):
                    slot = s * depth + b
                    x[row, k_off + 3 * slot + KERNELS.index(arch.kernels[s][b])] = 1.0
                    x[row, e_off + 3 * slot + EXPANDS.index(arch.expands[s][b])] = 1.0
        return x

    # -- the predictor interface -------------------------------------------------------
    def fit(self, archs: Sequence[Arch], targets: Sequence[float] | np.ndarray
            ) -> OfaAccuracyPredictor:
        raise NotImplementedError("an imported once-for-all predictor is not refitted here; "
                                  "fit an ofa-search predictor with `ofa-search fit-predictors`")

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        """Predicted top-1 accuracies (fractions), as once-for-all's predictor gives them."""
        cache = self._cached(archs)
        if "acc" not in cache:
            out = mlp_forward(self.layers, self.ofa_features(archs)) + self.base_acc
            cache["acc"] = out.astype(float)
        return cache["acc"]

    def predict_std(self, archs: Sequence[Arch]) -> np.ndarray:
        """The declared held-out RMSE for every arch (0 when none was declared)."""
        return np.full(len(archs), self.residual_std or 0.0)

    def state(self) -> dict[str, Any]:
        return {"space": self.space, "encoding": self.encoding,
                "resolutions": list(self.resolutions), "width_mult": self.width_mult,
                "base_acc": self.base_acc, "residual_std": self.residual_std,
                "source": self.source, "layers": layers_to_state(self.layers)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> OfaAccuracyPredictor:
        if state["space"] != SPACE:
            raise ValueError(f"an once-for-all predictor prices {SPACE!r}, not {state['space']!r}")
        layers = [(np.asarray(layer["w"], dtype=np.float32),
                   np.asarray(layer["b"], dtype=np.float32)) for layer in state["layers"]]
        return cls(encoding=state["encoding"], resolutions=state["resolutions"],
                   width_mult=state["width_mult"], layers=layers, base_acc=state["base_acc"],
                   residual_std=state["residual_std"], source=state.get("source"))

    # -- once-for-all's files ----------------------------------------------------------
    def to_ofa_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict of once-for-all's predictor module in this predictor's form."""
        out: dict[str, torch.Tensor] = {}
        last = len(self.layers) - 1
        for i, (w, b) in enumerate(self.layers):
            weight, bias = torch.from_numpy(w.T.copy()), torch.from_numpy(b.copy())
            if self.encoding == "tutorial":
                out[f"{2 * i}.weight"], out[f"{2 * i}.bias"] = weight, bias
            elif i < last:
                out[f"layers.{i}.0.weight"], out[f"layers.{i}.0.bias"] = weight, bias
            else:
                out[f"layers.{i}.weight"] = weight
        if self.encoding == "nas":
            out["base_acc"] = torch.tensor([self.base_acc])
        return out


def _layers_from_ofa(state: Mapping[str, torch.Tensor], source: str
                     ) -> tuple[str, Layers, float]:
    """(encoding, layers, base_acc) of once-for-all predictor weights."""
    def arr(t: torch.Tensor) -> np.ndarray:
        return t.detach().to(torch.float32).numpy()

    if "0.weight" in state:
        n = len(state) // 2
        names = [f"{2 * i}.{p}" for i in range(n) for p in ("weight", "bias")]
        if set(state) != set(names):
            raise FileFormatError(f"{source}: not once-for-all's tutorial predictor (expected "
                                  f"tensors {names[:4]}…, got {sorted(state)[:6]})")
        return "tutorial", [(arr(state[f"{2 * i}.weight"]).T.copy(), arr(state[f"{2 * i}.bias"]))
                            for i in range(n)], 0.0
    if "base_acc" in state:
        hidden = sorted({int(k.split(".")[1]) for k in state if k.endswith(".0.weight")})
        out_name = f"layers.{len(hidden)}.weight"
        expected = ({f"layers.{i}.0.{p}" for i in hidden for p in ("weight", "bias")}
                    | {out_name, "base_acc"})
        if hidden != list(range(len(hidden))) or set(state) != expected:
            raise FileFormatError(f"{source}: not once-for-all's nas predictor (tensors "
                                  f"{sorted(state)[:6]}…)")
        layers = [(arr(state[f"layers.{i}.0.weight"]).T.copy(), arr(state[f"layers.{i}.0.bias"]))
                  for i in hidden]
        w_out = arr(state[out_name]).T.copy()
        layers.append((w_out, np.zeros(w_out.shape[1], dtype=np.float32)))
        return "nas", layers, float(arr(state["base_acc"]).reshape(-1)[0])
    raise FileFormatError(f"{source}: not a once-for-all accuracy predictor (no '0.weight' "
                          f"or 'base_acc' tensor; got {sorted(state)[:6]})")


def load_ofa_accuracy_predictor(path: str | os.PathLike[str], *, width_mult: float = 1.2,
                                resolutions: Sequence[int] | None = None,
                                residual_std: float | None = None) -> OfaAccuracyPredictor:
    """Read once-for-all's accuracy-predictor file (``torch.load`` with
    ``weights_only=True``; a bare state dict or ``{"state_dict": …}``).

    ``width_mult`` is the supernet width the predictor describes (the tutorial's file:
    1.2). ``resolutions`` are the ``nas`` encoder's ``image_size_list``; without them a
    one-column encoder means ``[224]`` (once-for-all's default) and others must be given.

    Raises:
        FileFormatError: unreadable file, a pickle with more than tensors (never run),
            tensors of another network, shapes that do not fit the ``ofa_mbv3`` encoding.
    """
    source = Path(path)
    data = read_state_dict(source, "a once-for-all accuracy predictor")
    encoding, layers, base_acc = _layers_from_ofa(data, str(source))
    n_res = layers[0][0].shape[0] - 2 * 3 * _SLOTS
    if encoding == "tutorial":
        res: Sequence[int] = TUTORIAL_RESOLUTIONS
    elif resolutions is not None:
        res = resolutions
    elif n_res == 1:
        res = (224,)
    else:
        raise FileFormatError(f"{source}: its encoder has {n_res} resolution columns; give "
                              "them in order (--resolutions, the encoder's image_size_list)")
    if n_res != len(res):
        raise FileFormatError(f"{source}: the first layer takes {layers[0][0].shape[0]} "
                              f"features; the ofa_mbv3 encoding with {len(res)} resolutions "
                              f"has {len(res) + 120} (a predictor of another space?)")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    try:
        return OfaAccuracyPredictor(encoding=encoding, resolutions=res, width_mult=width_mult,
                                    layers=layers, base_acc=base_acc,
                                    residual_std=residual_std,
                                    source={"from": "once-for-all", "file": source.name,
                                            "sha256": digest})
    except ValueError as exc:
        raise FileFormatError(f"{source}: {exc}") from exc
