"""Latency predictors built on a device latency table.

* :class:`LutLatencyPredictor`: the table's own estimate, unit medians taken to their
  in-network cost plus one overhead (``fit`` refits the overhead as the median gap between
  measured and summed latency).
* :class:`LearnedLatencyPredictor`: a bootstrap ensemble that learns the log-ratio
  ``log(measured / unit_sum)`` from features of the arch's units (table latencies by
  kind and kernel, MACs, parameters, tensor sizes, counts, resolution). The table is
  good at what the units cost; the model learns what isolated timings get wrong (per-call
  costs, cache effects). ``model`` is ``"ridge"`` (standardised ridge regression, saved as
  coefficients) or ``"xgb"`` (gradient-boosted trees, saved as xgboost's JSON model).
  :meth:`LearnedLatencyPredictor.predict_std` is the spread of the ensemble, in ms.

Both save the table inside their JSON, so a loaded predictor is self-contained.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from ofa_search.arch import Arch
from ofa_search.errors import LutMissError
from ofa_search.extras import require
from ofa_search.profiling.lut import LatencyTable
from ofa_search.space import get_space
from ofa_search.units import MBConvUnit, arch_units
from predictors.base import Predictor

FEATURE_NAMES: tuple[str, ...] = (
    "unit_sum_ms", "stem_ms", "mbconv_ms", "head_ms", "k3_ms", "k5_ms", "k7_ms", "se_ms",
    "stride2_ms", "n_units", "n_se", "log_macs", "log_params", "resolution",
    "log_tensor_elems", "mean_unit_ms", "max_unit_ms", "log_unit_sum",
)
"""Names of the columns of :func:`latency_features`."""

MODELS = ("ridge", "xgb")


def _unit_ms(table: LatencyTable, key: str, resolution: int) -> float:
    entry = table.entries[key]
    by_res = entry.get("by_resolution") or {}
    return float(by_res.get(str(resolution), entry["median_ms"]))


def arch_feature_row(table: LatencyTable, arch: Arch) -> np.ndarray:
    """Feature vector of one arch (see :data:`FEATURE_NAMES`); raises ``LutMissError``
    for archs the table does not cover."""
    total = table.unit_sum(arch)  # also checks space, width and resolution
    by_kind = {"stem": 0.0, "mbconv": 0.0, "head": 0.0}
    by_kernel = {3: 0.0, 5: 0.0, 7: 0.0}
    se_ms = stride2_ms = 0.0
    n_se = 0
    macs = params = elems = 0
    times: list[float] = []
    for unit in arch_units(arch):
        ms = _unit_ms(table, unit.key, arch.resolution)
        times.append(ms)
        by_kind[unit.kind] = by_kind.get(unit.kind, 0.0) + ms
        macs += unit.macs()
        params += unit.params()
        if isinstance(unit, MBConvUnit):
            by_kernel[unit.kernel] = by_kernel.get(unit.kernel, 0.0) + ms
            if unit.se_channels:
                se_ms += ms
                n_se += 1
            if unit.stride == 2:
                stride2_ms += ms
            elems += (unit.in_channels * unit.in_size**2 + unit.mid_channels * unit.in_size**2
                      + unit.mid_channels * unit.out_size**2
                      + unit.out_channels * unit.out_size**2)
        else:
            elems += unit.in_channels * unit.in_size**2
    return np.array([
        total, by_kind["stem"], by_kind["mbconv"], by_kind["head"], by_kernel[3],
        by_kernel[5], by_kernel[7], se_ms, stride2_ms, float(len(times)), float(n_se),
        np.log(max(macs, 1)), np.log(max(params, 1)), float(arch.resolution),
        np.log(max(elems, 1)), total / len(times), max(times), np.log(total),
    ], dtype=float)


def latency_features(table: LatencyTable, archs: Sequence[Arch]) -> np.ndarray:
    """``(len(archs), len(FEATURE_NAMES))`` feature matrix."""
    return np.stack([arch_feature_row(table, a) for a in archs]) if archs else np.zeros(
        (0, len(FEATURE_NAMES)))


class LutLatencyPredictor(Predictor):
    """Unit-sum plus overhead: equals ``table.predict`` until :meth:`fit` refits the
    (fp32) overhead on measured archs."""

    kind: ClassVar[str] = "latency_lut"
    format_version: ClassVar[int] = 1

    def __init__(self, table: LatencyTable, overhead_ms: float | None = None) -> None:
        self.table = table
        self.overhead_ms = table.overhead_ms if overhead_ms is None else float(overhead_ms)
        self._prices: dict[tuple[Any, ...], tuple[np.ndarray, np.ndarray]] = {}

    def fit(self, archs: Sequence[Arch], targets: Sequence[float] | np.ndarray
            ) -> LutLatencyPredictor:
        """Set the overhead to the median of ``measured - unit_sum`` (no-op without data)."""
        y = np.asarray(targets, dtype=float)
        if len(archs) != y.size:
            raise ValueError(f"{len(archs)} archs but {y.size} targets")
        if y.size:
            sums = np.array([self.table.network_sum(a) for a in archs])
            self.overhead_ms = float(np.median(y - sums))
        return self

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        """Unit sum plus overhead, in ms (a low-precision mode's own overhead when the table
        has one, see :attr:`LatencyTable.overhead_by_mode`)."""
        return np.array([self.table.network_sum(a) + self._overhead(a) for a in archs],
                        dtype=float)

    def _overhead(self, arch: Arch) -> float:
        own = self.table.mode_overhead(arch)
        return self.overhead_ms if own is None else own

    def block_prices(self, resolutions: Sequence[int], width_mult: float, precision: str
                     ) -> tuple[np.ndarray, np.ndarray]:
        """The table as arrays, for searches that price whole generations at once.

        Returns ``(base [R], block [R, S, M, K, E])`` over ``resolutions`` and the space's
        stages, block slots, kernel sizes and expand ratios, such that ``predict`` of an
        arch at resolution index ``r`` whose stages all run at ``precision`` is
        ``base[r]`` (stem, first block, head and overhead) plus ``block[r, s, b, k, e]``
        over its active blocks. Units the table lacks are ``inf``. Computed once per
        arguments and overhead (a search asks again for every run); treat as read-only.
        """
        key = (tuple(resolutions), float(width_mult), precision, self.overhead_ms,
               self.table.unit_scale, self.table.per_unit_ms)
        if key not in self._prices:
            self._prices[key] = self._block_prices(resolutions, width_mult, precision)
        return self._prices[key]

    def _block_prices(self, resolutions: Sequence[int], width_mult: float, precision: str
                      ) -> tuple[np.ndarray, np.ndarray]:
        spec = get_space(self.table.space)
        n, m = spec.num_stages, spec.max_depth
        kernels, expands = spec.kernel_sizes, spec.expand_ratios
        base = np.zeros(len(resolutions))
        block = np.full((len(resolutions), n, m, len(kernels), len(expands)), np.inf)
        for ri, res in enumerate(resolutions):
            for ki, k in enumerate(kernels):
                for ei, e in enumerate(expands):
                    probe = Arch(space=spec.name, resolution=res, width_mult=width_mult,
                                 depths=(m,) * n, kernels=((k,) * m,) * n,
                                 expands=((e,) * m,) * n, precisions=(precision,) * n)
                    prices = []
                    for unit in arch_units(probe):
                        try:
                            prices.append(self.table.unit_price(unit, res))
                        except LutMissError:
                            prices.append(np.inf)
                    overhead = self._overhead(probe)
                    scale, per_unit = self.table.unit_scale, self.table.per_unit_ms
                    base[ri] = (scale * (prices[0] + prices[1] + prices[-1]) + 3 * per_unit
                                + overhead)
                    block[ri, :, :, ki, ei] = scale * np.reshape(prices[2:-1], (n, m)) + per_unit
        return base, block

    def state(self) -> dict[str, Any]:
        """Table and overhead."""
        return {"table": self.table.to_dict(), "overhead_ms": self.overhead_ms}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LutLatencyPredictor:
        """Inverse of :meth:`state`."""
        return cls(LatencyTable.from_dict(state["table"]), float(state["overhead_ms"]))


class LearnedLatencyPredictor(Predictor):
    """Bootstrap ensemble learning ``log(measured / unit_sum)`` from unit features.

    Args:
        table: the device's latency table (features are its unit latencies).
        model: ``"ridge"`` or ``"xgb"``.
        n_members: ensemble size (each member fits a bootstrap resample; member 0 fits the
            full data set, so predictions with one member are deterministic fits).
        alpha: ridge penalty (on standardised features).
        seed: seed of the generator owned by this predictor (bootstrap draws, xgboost seeds).
        xgb_params: overrides of the xgboost booster parameters.
        num_rounds: boosting rounds for ``"xgb"``.
    """

    kind: ClassVar[str] = "latency_learned"
    format_version: ClassVar[int] = 1

    def __init__(self, table: LatencyTable, model: str = "ridge", *, n_members: int = 8,
                 alpha: float = 1.0, seed: int = 0, xgb_params: dict[str, Any] | None = None,
                 num_rounds: int = 300) -> None:
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; choose one of {MODELS}")
        if n_members < 1:
            raise ValueError("n_members must be at least 1")
        self.table = table
        self.model = model
        self.n_members = n_members
        self.alpha = float(alpha)
        self.seed = seed
        self.num_rounds = num_rounds
        self.xgb_params: dict[str, Any] = {"max_depth": 3, "eta": 0.05, "subsample": 0.8,
                                           "min_child_weight": 2.0, "lambda": 1.0,
                                           "objective": "reg:squarederror"}
        self.xgb_params.update(xgb_params or {})
        self.rng = np.random.default_rng(seed)
        self.members: list[dict[str, Any]] = []
        self._boosters: dict[int, Any] = {}  # loaded xgboost members, by index

    # -- fitting ------------------------------------------------------------------------
    def fit(self, archs: Sequence[Arch], targets: Sequence[float] | np.ndarray
            ) -> LearnedLatencyPredictor:
        """Fit the ensemble to measured latencies (ms, all positive)."""
        y_ms = np.asarray(targets, dtype=float)
        if len(archs) != y_ms.size or y_ms.size < 2:
            raise ValueError(f"need at least 2 archs with one target each "
                             f"(got {len(archs)} archs, {y_ms.size} targets)")
        if np.any(y_ms <= 0):
            raise ValueError("latency targets must be positive")
        x = latency_features(self.table, archs)
        y = np.log(y_ms / x[:, 0])
        self.members = []
        self._boosters = {}
        n = y.size
        for m in range(self.n_members):
            idx = np.arange(n) if m == 0 else self.rng.integers(0, n, n)
            seed = int(self.rng.integers(2**31 - 1))
            self.members.append(self._fit_member(x[idx], y[idx], seed))
        return self

    def _fit_member(self, x: np.ndarray, y: np.ndarray, seed: int) -> dict[str, Any]:
        if self.model == "ridge":
            # deferred: scikit-learn is a heavy import
            from sklearn.linear_model import Ridge
            from sklearn.preprocessing import StandardScaler

            scaler = StandardScaler().fit(x)  # features of unit variance (constant ones: 1)
            ridge = Ridge(alpha=self.alpha).fit(scaler.transform(x), y)
            return {"mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist(),
                    "coef": ridge.coef_.tolist(), "intercept": float(ridge.intercept_)}
        xgb = require("xgboost", "xgboost", "the xgboost latency predictor")

        params = dict(self.xgb_params, seed=seed, nthread=1)
        booster = xgb.train(params, xgb.DMatrix(x, label=y), num_boost_round=self.num_rounds)
        raw = booster.save_raw(raw_format="json")
        return {"booster": json.loads(bytes(raw).decode())}

    # -- predicting ---------------------------------------------------------------------
    def _member_log_ratios(self, x: np.ndarray) -> np.ndarray:
        if not self.members:
            raise RuntimeError("predictor is not fitted")
        out = np.empty((len(self.members), x.shape[0]))
        for i, member in enumerate(self.members):
            if self.model == "ridge":
                z = (x - np.asarray(member["mean"])) / np.asarray(member["scale"])
                out[i] = z @ np.asarray(member["coef"]) + member["intercept"]
            else:
                out[i] = self._booster(i).predict(_dmatrix(x))
        return out

    def _booster(self, i: int) -> Any:
        cache = self._boosters
        if i not in cache:
            xgb = require("xgboost", "xgboost", "the xgboost latency predictor")

            booster = xgb.Booster()
            booster.load_model(bytearray(json.dumps(self.members[i]["booster"]).encode()))
            cache[i] = booster
        return cache[i]

    def predict_members(self, archs: Sequence[Arch]) -> np.ndarray:
        """``(n_members, len(archs))`` predictions in ms, one row per ensemble member."""
        x = latency_features(self.table, archs)
        return np.exp(self._member_log_ratios(x)) * x[:, 0]

    def predict(self, archs: Sequence[Arch]) -> np.ndarray:
        """Ensemble mean of the predicted latency, in ms."""
        if not archs:
            return np.zeros(0)
        return self.predict_members(archs).mean(axis=0)

    def predict_std(self, archs: Sequence[Arch]) -> np.ndarray:
        """Spread (standard deviation) of the ensemble members, in ms: an uncertainty."""
        if not archs:
            return np.zeros(0)
        return self.predict_members(archs).std(axis=0)

    # -- files --------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Settings, fitted members and the table."""
        return {"model": self.model, "n_members": self.n_members, "alpha": self.alpha,
                "seed": self.seed, "num_rounds": self.num_rounds,
                "xgb_params": self.xgb_params, "feature_names": list(FEATURE_NAMES),
                "members": self.members, "table": self.table.to_dict()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LearnedLatencyPredictor:
        """Inverse of :meth:`state`."""
        if list(state["feature_names"]) != list(FEATURE_NAMES):
            raise ValueError("feature set differs from this version's")
        members = state["members"]
        if not isinstance(members, list) or not members:
            raise ValueError("no fitted members")
        pred = cls(LatencyTable.from_dict(state["table"]), str(state["model"]),
                   n_members=int(state["n_members"]), alpha=float(state["alpha"]),
                   seed=int(state["seed"]), xgb_params=dict(state["xgb_params"]),
                   num_rounds=int(state["num_rounds"]))
        pred.members = members
        return pred


def _dmatrix(x: np.ndarray) -> Any:
    xgb = require("xgboost", "xgboost", "the xgboost latency predictor")

    return xgb.DMatrix(x)
