"""Accuracy predictors: top-1 accuracy (a fraction in [0, 1]) of a subnet from
``Arch.encode()`` features.

* :class:`MlpAccuracyPredictor` — once-for-all's predictor: an MLP with three hidden layers
  of 400 ReLU units, Adam, on the standardised accuracy. Its :meth:`predict_std` is a
  constant: the RMSE of a twin fitted on 80 % of the data, measured on the other 20 %.
* :class:`EnsembleAccuracyPredictor` — a deep ensemble of smaller MLPs, each fitted on a
  bootstrap resample with its own initialisation; the mean is the prediction and the
  spread of the members the (per-arch) uncertainty.
* :class:`~predictors.accuracy_gp.GpAccuracyPredictor` — a Gaussian process (kept for
  comparison; slower to predict on big batches).

Prediction is vectorised: :func:`~predictors.accuracy_features.encode_batch` plus one
numpy matmul per layer. :func:`predictors.loading.load_accuracy_predictor` reads any of them.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from ofa_search.arch import Arch
from ofa_search.space import get_space
from predictors.accuracy_features import encode_batch, n_features
from predictors.accuracy_mlp import Layers, layers_from_state, layers_to_state, mlp_forward
from predictors.accuracy_mlp import train_mlp as _train
from predictors.base import Predictor


class AccuracyPredictor(Predictor):
    """Base of accuracy predictors of one search space.

    ``predict(archs)`` returns predicted top-1 accuracy as a fraction; ``predict_std(archs)``
    an uncertainty in the same units. Both take batches (thousands at once are cheap) and
    raise :class:`~ofa_search.errors.InvalidArchError` for archs of another space.
    """

    def __init__(self, space: str) -> None:
        self.space = get_space(space).name
        self._memo: tuple[tuple[Arch, ...], dict[str, np.ndarray]] | None = None

    def _cached(self, archs: Sequence[Arch]) -> dict[str, np.ndarray]:
        """A scratch dict shared by calls on the very same arch objects (a search asks
        ``predict`` then ``predict_std`` of one batch: features are encoded once)."""
        memo = self._memo
        if memo is not None and len(memo[0]) == len(archs) and all(
                a is b for a, b in zip(memo[0], archs, strict=True)):
            return memo[1]
        self._memo = (tuple(archs), {})
        return self._memo[1]

    def features(self, archs: Sequence[Arch]) -> np.ndarray:
        """``Arch.encode()`` rows of ``archs`` (float32)."""
        cache = self._cached(archs)
        if "x" not in cache:
            cache["x"] = encode_batch(archs, self.space)
        return cache["x"]

    def _xy(self, archs: Sequence[Arch], targets: Sequence[float] | np.ndarray,
            minimum: int = 2) -> tuple[np.ndarray, np.ndarray]:
        self._memo = None  # predictions cached for the old fit are stale
        y = np.asarray(targets, dtype=float).ravel()
        if len(archs) != y.size:
            raise ValueError(f"{len(archs)} archs but {y.size} targets")
        if y.size < minimum:
            raise ValueError(f"need at least {minimum} archs to fit, got {y.size}")
        if not np.all(np.isfinite(y)) or np.any((y < 0) | (y > 1)):
            raise ValueError("accuracy targets must be fractions in [0, 1]")
        return self.features(archs), y

    @abstractmethod
    def predict_std(self, archs: Sequence[Arch]) -> np.ndarray:
        """Uncertainty of each prediction (a standard deviation, as a fraction)."""

    def _check_state_space(self, state: dict[str, Any]) -> None:
        if int(state["n_features"]) != n_features(self.space):
            raise ValueError(f"predictor has {state['n_features']} features, space "
                             f"{self.space!r} encodes {n_features(self.space)}")


def _scale(y: np.ndarray) -> tuple[float, float]:
    mean, std = float(y.mean()), float(y.std())
    return mean, std if std > 1e-12 else 1.0


class MlpAccuracyPredictor(AccuracyPredictor):
    """once-for-all's accuracy predictor: MLP ``hidden`` (3 × 400), ReLU, Adam.

    ``predict_std`` is constant over archs: the held-out RMSE measured while fitting (a
    twin network is trained on ``1 - holdout`` of the data and scored on the rest; the
    returned network is then trained on all of it). ``seed`` seeds the owned
    ``torch.Generator`` (initialisation, batches, the held-out draw).
    """

    kind: ClassVar[str] = "accuracy_mlp"
    format_version: ClassVar[int] = 1

    def __init__(self, space: str, *, hidden: Sequence[int] = (400, 400, 400),
                 epochs: int = 150, min_steps: int = 600, lr: float = 1e-3,
                 weight_decay: float = 1e-5, batch_size: int = 128, holdout: float = 0.2,
                 seed: int = 0) -> None:
        super().__init__(space)
        if not hidden or min(hidden) < 1:
            raise ValueError(f"hidden must list positive layer widths, got {hidden=}")
        if not 0.0 <= holdout < 1.0:
            raise ValueError(f"holdout must be in [0, 1), got {holdout=}")
        self.hidden = tuple(int(h) for h in hidden)
        self.epochs, self.min_steps, self.lr = int(epochs), int(min_steps), float(lr)
        self.weight_decay, self.batch_size = float(weight_decay), int(batch_size)
        self.holdout, self.seed = float(holdout), int(seed)
        self.layers: Layers = []
        self.y_mean, self.y_scale = 0.0, 1.0
        self.residual_std = float("nan")

    def _fit_net(self, x: np.ndarray, y: np.ndarray, gen: torch.Generator
                 ) -> tuple[Layers, float, float]:
        mean, scale = _scale(y)
        layers = _train(x, (y - mean) / scale, self.hidden, epochs=self.epochs,
                        min_steps=self.min_steps, lr=self.lr, weight_decay=self.weight_decay,
                        batch_size=self.batch_size, generator=gen)
        return layers, mean, scale

    def fit(self, archs: Sequence[Arch], targets: Sequence[float] | np.ndarray
            ) -> MlpAccuracyPredictor:
        """Fit to accuracies (fractions); sets the held-out residual std first."""
        x, y = self._xy(archs, targets)
        gen = torch.Generator().manual_seed(self.seed)
        n_out = round(self.holdout * y.size)
        if n_out >= 2 and y.size - n_out >= 2:
            order = torch.randperm(y.size, generator=gen).numpy()
            out, keep = order[:n_out], order[n_out:]
            layers, mean, scale = self._fit_net(x[keep], y[keep], gen)
            pred = mlp_forward(layers, x[out]) * scale + mean
            self.residual_std = float(np.sqrt(np.mean((pred - y[out]) ** 2)))
        self.layers, self.y_mean, self.y_scale = self._fit_net(x, y, gen)
        if not np.isfinite(self.residual_std):  # no hold-out: the training RMSE
            pred = mlp_forward(self.layers, x) * self.y_scale + self.y_mean
            self.residual_std = float(np.sqrt(np.mean((pred - y) ** 2)))
        return self

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        """Predicted accuracies (fractions)."""
        if not self.layers:
            raise RuntimeError("predictor is not fitted")
        out = mlp_forward(self.layers, self.features(archs)) * self.y_scale + self.y_mean
        return out.astype(float)

    def predict_std(self, archs: Sequence[Arch]) -> np.ndarray:
        """The constant held-out RMSE, one value per arch (see the class docstring)."""
        if not self.layers:
            raise RuntimeError("predictor is not fitted")
        return np.full(len(archs), max(self.residual_std, 1e-6))

    def state(self) -> dict[str, Any]:
        return {"space": self.space, "n_features": n_features(self.space),
                "hidden": list(self.hidden), "epochs": self.epochs, "min_steps": self.min_steps,
                "lr": self.lr, "weight_decay": self.weight_decay, "batch_size": self.batch_size,
                "holdout": self.holdout, "seed": self.seed, "y_mean": self.y_mean,
                "y_scale": self.y_scale, "residual_std": self.residual_std,
                "layers": layers_to_state(self.layers)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> MlpAccuracyPredictor:
        pred = cls(str(state["space"]), hidden=state["hidden"], epochs=state["epochs"],
                   min_steps=state["min_steps"], lr=state["lr"],
                   weight_decay=state["weight_decay"], batch_size=state["batch_size"],
                   holdout=state["holdout"], seed=state["seed"])
        pred._check_state_space(state)
        pred.layers = layers_from_state(state["layers"], n_features(pred.space))
        pred.y_mean, pred.y_scale = float(state["y_mean"]), float(state["y_scale"])
        pred.residual_std = float(state["residual_std"])
        return pred


class EnsembleAccuracyPredictor(AccuracyPredictor):
    """Deep ensemble: ``n_members`` MLPs (``hidden``), member ``m`` fitted on a bootstrap
    resample (member 0 on the data as given) from its own initialisation. ``predict`` is
    the members' mean, ``predict_std`` their standard deviation (an uncertainty that grows
    away from the data; like any ensemble spread it tends to be too small, so treat it as
    a relative signal)."""

    kind: ClassVar[str] = "accuracy_ensemble"
    format_version: ClassVar[int] = 1

    def __init__(self, space: str, *, n_members: int = 5, hidden: Sequence[int] = (128, 128),
                 epochs: int = 150, min_steps: int = 400, lr: float = 1e-3,
                 weight_decay: float = 1e-5, batch_size: int = 128, seed: int = 0) -> None:
        super().__init__(space)
        if n_members < 2:
            raise ValueError(f"an ensemble needs n_members >= 2, got {n_members=}")
        if not hidden or min(hidden) < 1:
            raise ValueError(f"hidden must list positive layer widths, got {hidden=}")
        self.n_members = int(n_members)
        self.hidden = tuple(int(h) for h in hidden)
        self.epochs, self.min_steps, self.lr = int(epochs), int(min_steps), float(lr)
        self.weight_decay, self.batch_size, self.seed = float(weight_decay), int(batch_size), \
            int(seed)
        self.members: list[Layers] = []
        self.y_mean, self.y_scale = 0.0, 1.0

    def fit(self, archs: Sequence[Arch], targets: Sequence[float] | np.ndarray
            ) -> EnsembleAccuracyPredictor:
        """Fit every member to accuracies (fractions)."""
        x, y = self._xy(archs, targets)
        gen = torch.Generator().manual_seed(self.seed)
        self.y_mean, self.y_scale = _scale(y)
        z = (y - self.y_mean) / self.y_scale
        self.members = []
        for m in range(self.n_members):
            idx = (np.arange(y.size) if m == 0
                   else torch.randint(0, y.size, (y.size,), generator=gen).numpy())
            self.members.append(_train(x[idx], z[idx], self.hidden, epochs=self.epochs,
                                       min_steps=self.min_steps, lr=self.lr,
                                       weight_decay=self.weight_decay,
                                       batch_size=self.batch_size, generator=gen))
        return self

    def predict_members(self, archs: Sequence[Arch]) -> np.ndarray:
        """``(n_members, len(archs))`` predicted accuracies."""
        if not self.members:
            raise RuntimeError("predictor is not fitted")
        cache = self._cached(archs)
        if "members" not in cache:
            x = self.features(archs)
            out = np.stack([mlp_forward(layers, x) for layers in self.members])
            cache["members"] = (out * self.y_scale + self.y_mean).astype(float)
        return cache["members"]

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        """Mean of the members (fractions)."""
        return self.predict_members(archs).mean(axis=0)

    def predict_std(self, archs: Sequence[Arch]) -> np.ndarray:
        """Standard deviation of the members (fractions), floored at 1e-6."""
        return np.maximum(self.predict_members(archs).std(axis=0), 1e-6)

    def state(self) -> dict[str, Any]:
        return {"space": self.space, "n_features": n_features(self.space),
                "n_members": self.n_members, "hidden": list(self.hidden),
                "epochs": self.epochs, "min_steps": self.min_steps, "lr": self.lr,
                "weight_decay": self.weight_decay, "batch_size": self.batch_size,
                "seed": self.seed, "y_mean": self.y_mean, "y_scale": self.y_scale,
                "members": [layers_to_state(m) for m in self.members]}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EnsembleAccuracyPredictor:
        pred = cls(str(state["space"]), n_members=state["n_members"], hidden=state["hidden"],
                   epochs=state["epochs"], min_steps=state["min_steps"], lr=state["lr"],
                   weight_decay=state["weight_decay"], batch_size=state["batch_size"],
                   seed=state["seed"])
        pred._check_state_space(state)
        members = state["members"]
        if not isinstance(members, list) or len(members) != pred.n_members:
            raise ValueError(f"expected {pred.n_members} members")
        pred.members = [layers_from_state(m, n_features(pred.space)) for m in members]
        pred.y_mean, pred.y_scale = float(state["y_mean"]), float(state["y_scale"])
        return pred
