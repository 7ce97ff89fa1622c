"""A Gaussian-process accuracy predictor (scikit-learn) on ``Arch.encode()`` features.

Kernel: ``constant × RBF(one length scale) + white noise``, hyperparameters fitted by
maximum marginal likelihood on the standardised accuracy. The saved state holds the
training features (as bit strings), targets and fitted hyperparameters; loading refits
with those hyperparameters fixed (one Cholesky factorisation, deterministic). Prediction
costs O(n_train²) per arch for the std, so it is slower than the MLPs on big batches.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from ofa_search.arch import Arch
from predictors.accuracy import AccuracyPredictor
from predictors.accuracy_features import n_features


def _kernel(length_scale: float = 3.0, constant: float = 1.0, noise: float = 0.1) -> Any:
    # deferred: scikit-learn is a heavy import
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

    return (ConstantKernel(constant, (1e-3, 1e4)) * RBF(length_scale, (0.1, 100.0))
            + WhiteKernel(noise, (1e-8, 1.0)))


class GpAccuracyPredictor(AccuracyPredictor):
    """Gaussian process regression; ``predict_std`` is the posterior std of the latent
    accuracy plus the fitted noise (fractions). ``seed`` seeds the optimiser's restarts."""

    kind: ClassVar[str] = "accuracy_gp"
    format_version: ClassVar[int] = 1

    def __init__(self, space: str, *, n_restarts: int = 1, seed: int = 0) -> None:
        super().__init__(space)
        self.n_restarts, self.seed = int(n_restarts), int(seed)
        self.gp: Any = None
        self.x_train = np.zeros((0, n_features(self.space)), dtype=np.float32)
        self.y_train = np.zeros(0)
        self.y_mean, self.y_scale = 0.0, 1.0

    def _fit_gp(self, kernel: Any, optimizer: Any) -> None:
        # deferred: scikit-learn is a heavy import
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor

        z = (self.y_train - self.y_mean) / self.y_scale
        gp = GaussianProcessRegressor(
            kernel, optimizer=optimizer, n_restarts_optimizer=self.n_restarts,
            random_state=np.random.RandomState(self.seed), normalize_y=False)
        with warnings.catch_warnings():  # hyperparameters at a bound are fine here
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.gp = gp.fit(self.x_train.astype(float), z)

    def fit(self, archs: Sequence[Arch], targets: Sequence[float] | np.ndarray
            ) -> GpAccuracyPredictor:
        """Fit hyperparameters and the posterior to accuracies (fractions)."""
        self.x_train, self.y_train = self._xy(archs, targets)
        self.y_mean = float(self.y_train.mean())
        std = float(self.y_train.std())
        self.y_scale = std if std > 1e-12 else 1.0
        self._fit_gp(_kernel(), "fmin_l_bfgs_b")
        return self

    def _posterior(self, archs: Sequence[Arch]) -> tuple[np.ndarray, np.ndarray]:
        if self.gp is None:
            raise RuntimeError("predictor is not fitted")
        mean, std = self.gp.predict(self.features(archs).astype(float), return_std=True)
        return mean * self.y_scale + self.y_mean, std * self.y_scale

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        """Posterior mean accuracies (fractions)."""
        return self._posterior(archs)[0]

    def predict_std(self, archs: Sequence[Arch]) -> np.ndarray:
        """Posterior predictive std (fractions), floored at 1e-6."""
        return np.maximum(self._posterior(archs)[1], 1e-6)

    def state(self) -> dict[str, Any]:
        if self.gp is None:
            raise RuntimeError("predictor is not fitted")
        rows = ["".join("1" if v else "0" for v in row) for row in self.x_train]
        return {"space": self.space, "n_features": n_features(self.space),
                "n_restarts": self.n_restarts, "seed": self.seed,
                "theta": self.gp.kernel_.theta.tolist(), "y_mean": self.y_mean,
                "y_scale": self.y_scale, "x_train": rows, "y_train": self.y_train.tolist()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> GpAccuracyPredictor:
        pred = cls(str(state["space"]), n_restarts=state["n_restarts"], seed=state["seed"])
        pred._check_state_space(state)
        width = n_features(pred.space)
        rows = state["x_train"]
        if not rows or any(len(r) != width or set(r) - {"0", "1"} for r in rows):
            raise ValueError(f"x_train must be non-empty bit strings of length {width}")
        pred.x_train = np.array([[c == "1" for c in r] for r in rows], dtype=np.float32)
        pred.y_train = np.asarray(state["y_train"], dtype=float)
        if pred.y_train.shape != (len(rows),):
            raise ValueError("y_train does not match x_train")
        pred.y_mean, pred.y_scale = float(state["y_mean"]), float(state["y_scale"])
        kernel = _kernel().clone_with_theta(np.asarray(state["theta"], dtype=float))
        pred._fit_gp(kernel, None)
        return pred
