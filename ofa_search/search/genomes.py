"""Archs of an encoding as arrays of choice indices, so that a search samples, mutates,
crosses and (where the latency model is a table) prices a whole generation at once — the
working form of :class:`~ofa_search.search.evolution_sampler.OFAEvolutionSampler`.

A generation of ``N`` genomes is a :class:`Genomes`: resolution, width and per-stage depth
and precision indices, and kernel and expand indices for every block slot — slots past a
stage's depth included (they carry no information until a deeper depth activates them, as
in once-for-all's finder). :class:`GenomeCodec` holds the operators with once-for-all's
semantics (uniform sampling; mutation resamples each gene with a probability; uniform
crossover) and turns genomes into :class:`~ofa_search.arch.Arch` es and into the Optuna
parameters of the encoding (and back).

:class:`TablePrices` prices genomes as the table's latency predictor does, by gathering
block prices (``block_prices`` of the predictor) — exact, and checked against the
predictor's own ``predict`` when built. :class:`GenomeLatency` prices genomes with any
latency model: by :class:`TablePrices` where the model is such a table, else through the
model's ``predict`` on the decoded archs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ofa_search.arch import Arch
from ofa_search.search.encoding import ArchEncoding
from ofa_search.search.evaluator import LatencyModel


@dataclass(frozen=True)
class Genomes:
    """``N`` archs as choice indices (see the module docstring)."""

    res: np.ndarray  # [N]
    width: np.ndarray  # [N]
    depth: np.ndarray  # [N, S]
    prec: np.ndarray  # [N, S]
    kernel: np.ndarray  # [N, S, M]
    expand: np.ndarray  # [N, S, M]

    def __len__(self) -> int:
        return int(self.res.shape[0])

    def take(self, index: np.ndarray | Sequence[int]) -> Genomes:
        idx = np.asarray(index, dtype=np.int64)
        return Genomes(*(getattr(self, f)[idx] for f in _FIELDS))

    def put(self, index: np.ndarray, other: Genomes) -> None:
        """Overwrite rows ``index`` with ``other``'s rows (in place)."""
        for name in _FIELDS:
            getattr(self, name)[index] = getattr(other, name)

    @staticmethod
    def concat(parts: Sequence[Genomes]) -> Genomes:
        return Genomes(*(np.concatenate([getattr(p, f) for p in parts]) for f in _FIELDS))


_FIELDS = ("res", "width", "depth", "prec", "kernel", "expand")


class GenomeCodec:
    """Operators on the genomes of ``encoding`` (every draw from the caller's generator)."""

    def __init__(self, encoding: ArchEncoding) -> None:
        spec = encoding.space
        self.encoding = encoding
        self.n, self.m = spec.num_stages, spec.max_depth
        self.choices: dict[str, tuple[Any, ...]] = {
            "res": tuple(encoding.resolutions), "width": tuple(encoding.width_mults),
            "depth": tuple(spec.depths), "prec": tuple(encoding.precisions),
            "kernel": tuple(spec.kernel_sizes), "expand": tuple(spec.expand_ratios)}
        self._shape = {"res": (), "width": (), "depth": (self.n,), "prec": (self.n,),
                       "kernel": (self.n, self.m), "expand": (self.n, self.m)}
        self._params = _param_slots(encoding, self.n, self.m)
        self._values = {f: np.asarray(c, dtype=object) for f, c in self.choices.items()}
        self._index = {f: {v: i for i, v in enumerate(c)} for f, c in self.choices.items()}

    def sample(self, rng: np.random.Generator, size: int) -> Genomes:
        """``size`` uniformly random genomes."""
        return Genomes(*(rng.integers(len(self.choices[f]), size=(size, *self._shape[f]))
                         for f in _FIELDS))

    def mutate(self, parents: Genomes, rng: np.random.Generator, prob: float) -> Genomes:
        """Each gene but the width resampled with probability ``prob`` (once-for-all's
        mutation; a stage's precision only when there is a choice)."""
        fresh = self.sample(rng, len(parents))
        out = []
        for name in _FIELDS:
            old, new = getattr(parents, name), getattr(fresh, name)
            hit = rng.random(old.shape) < prob
            if name == "width" or (name == "prec" and len(self.choices["prec"]) == 1):
                hit[...] = False
            out.append(np.where(hit, new, old))
        return Genomes(*out)

    def crossover(self, a: Genomes, b: Genomes, rng: np.random.Generator) -> Genomes:
        """Every gene from either parent with probability 1/2 (the width from ``a``)."""
        out = []
        for name in _FIELDS:
            x, y = getattr(a, name), getattr(b, name)
            out.append(x if name == "width" else np.where(rng.random(x.shape) < 0.5, x, y))
        return Genomes(*out)

    def refill(self, g: Genomes, rng: np.random.Generator) -> Genomes:
        """``g`` with the kernel and expand genes of inactive slots drawn afresh (as
        :meth:`Arch.mutate` does: a block that a deeper depth switches on is random, not a
        copy of what a converged population happens to carry there)."""
        fresh = self.sample(rng, len(g))
        active = self.active(g)
        return Genomes(g.res, g.width, g.depth, g.prec,
                       np.where(active, g.kernel, fresh.kernel),
                       np.where(active, g.expand, fresh.expand))

    def from_archs(self, archs: Sequence[Arch], rng: np.random.Generator) -> Genomes:
        """Genomes of ``archs`` (inside the encoding); slots past a depth are random."""
        g = self.sample(rng, len(archs))
        index = {f: {c: i for i, c in enumerate(self.choices[f])} for f in _FIELDS}
        for row, arch in enumerate(archs):
            g.res[row] = index["res"][arch.resolution]
            g.width[row] = index["width"][arch.width_mult]
            for s in range(self.n):
                g.depth[row, s] = index["depth"][arch.depths[s]]
                g.prec[row, s] = index["prec"][arch.precisions[s]]
                for b in range(arch.depths[s]):
                    g.kernel[row, s, b] = index["kernel"][arch.kernels[s][b]]
                    g.expand[row, s, b] = index["expand"][arch.expands[s][b]]
        return g

    def to_archs(self, g: Genomes) -> list[Arch]:
        """The archs of ``g`` (built from the encoding's own choices: no re-validation)."""
        c = self.choices
        name = self.encoding.space.name
        depth_v = np.asarray(c["depth"])[g.depth].tolist()
        kernel_v = np.asarray(c["kernel"])[g.kernel].tolist()
        expand_v = np.asarray(c["expand"])[g.expand].tolist()
        res_v = [c["res"][i] for i in g.res.tolist()]
        width_v = [c["width"][i] for i in g.width.tolist()]
        prec_v = g.prec.tolist()
        out = []
        for i in range(len(g)):
            depths = tuple(depth_v[i])
            out.append(Arch.trusted(
                name, res_v[i], width_v[i], depths,
                tuple(tuple(kernel_v[i][s][:d]) for s, d in enumerate(depths)),
                tuple(tuple(expand_v[i][s][:d]) for s, d in enumerate(depths)),
                tuple(c["prec"][p] for p in prec_v[i])))
        return out

    def to_params(self, g: Genomes) -> list[dict[str, Any]]:
        """The Optuna parameters of every genome (:meth:`ArchEncoding.distributions`'
        names and order; blocks past a stage's depth carry their genes)."""
        columns = [self._values[f][getattr(g, f)[(slice(None), *at)]].tolist()
                   for _, f, at in self._params]
        names = [name for name, _, _ in self._params]
        return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]

    def from_params(self, params: Sequence[Mapping[str, Any]]) -> Genomes:
        """Genomes of full parameter dicts of the encoding (:meth:`to_params`' inverse);
        a missing parameter or a value outside its choices is a ``ValueError``."""
        g = Genomes(*(np.zeros((len(params), *self._shape[f]), dtype=np.int64)
                      for f in _FIELDS))
        for name, f, at in self._params:
            index = self._index[f]
            column = []
            for p in params:
                if name not in p:
                    raise ValueError(f"parameter {name!r} is missing ({len(p)} given)")
                if p[name] not in index:
                    raise ValueError(f"parameter {name!r} = {p[name]!r} is not one of "
                                     f"{list(self.choices[f])}")
                column.append(index[p[name]])
            getattr(g, f)[(slice(None), *at)] = column
        return g

    def active(self, g: Genomes) -> np.ndarray:
        """``[N, S, M]``: which block slots the depths switch on."""
        depth = np.asarray(self.choices["depth"])[g.depth]
        return np.arange(self.m)[None, None, :] < depth[:, :, None]


def _param_slots(encoding: ArchEncoding, n: int, m: int
                 ) -> list[tuple[str, str, tuple[int, ...]]]:
    """``(parameter name, genome field, index within a row)`` for every parameter of
    ``encoding``, in :meth:`ArchEncoding.distributions`' order."""
    slots: list[tuple[str, str, tuple[int, ...]]] = [("res", "res", ())]
    if len(encoding.width_mults) > 1:
        slots.append(("w", "width", ()))
    for s in range(n):
        slots.append((f"s{s}.d", "depth", (s,)))
        if len(encoding.precisions) > 1:
            slots.append((f"s{s}.p", "prec", (s,)))
        for b in range(m):
            slots.append((f"s{s}.b{b}.k", "kernel", (s, b)))
            slots.append((f"s{s}.b{b}.e", "expand", (s, b)))
    return slots


class TablePrices:
    """Exact latency of genomes through a latency model's ``block_prices`` (see
    :meth:`predictors.latency.LutLatencyPredictor.block_prices`)."""

    def __init__(self, codec: GenomeCodec, base: np.ndarray, block: np.ndarray) -> None:
        self.codec, self.base, self.block = codec, base, block
        n, m = codec.n, codec.m
        self._s = np.arange(n)[None, :, None]
        self._b = np.arange(m)[None, None, :]

    @classmethod
    def of(cls, codec: GenomeCodec, latency: Any, rng: np.random.Generator,
           check: int = 16) -> TablePrices | None:
        """Prices for ``latency`` when it is a table (one width, one precision), checked
        against its ``predict`` on ``check`` random archs; ``None`` otherwise."""
        enc = codec.encoding
        block_prices = getattr(latency, "block_prices", None)
        if not callable(block_prices) or len(enc.width_mults) != 1 or len(enc.precisions) != 1:
            return None
        base, block = block_prices(enc.resolutions, enc.width_mults[0], enc.precisions[0])
        prices = cls(codec, np.asarray(base, dtype=float), np.asarray(block, dtype=float))
        probe = codec.sample(rng, check)
        fast = prices.latency(probe)
        ok = np.isfinite(fast)
        if ok.any():
            slow = np.asarray(latency.predict(codec.to_archs(probe.take(np.flatnonzero(ok)))))
            if not np.allclose(fast[ok], slow, rtol=1e-9, atol=1e-12):
                return None  # not the additive table it claims to be: use predict
        return prices

    def latency(self, g: Genomes) -> np.ndarray:
        """Predicted latency (ms) of every genome; ``inf`` when a unit is not in the table."""
        prices = self.block[g.res[:, None, None], self._s, self._b, g.kernel, g.expand]
        active = self.codec.active(g)
        return self.base[g.res] + np.where(active, prices, 0.0).sum(axis=(1, 2))


class GenomeLatency:
    """Predicted latency (ms) of genomes under ``model``: gathered by :class:`TablePrices`
    when the model is an additive table (exact, ~10× cheaper than building the archs), else
    ``model.predict`` on the decoded archs. The table's check draws its probe archs from a
    generator of its own (``check_seed``), so pricing never consumes a search's draws."""

    def __init__(self, codec: GenomeCodec, model: LatencyModel, *, check_seed: int = 0
                 ) -> None:
        self.codec, self.model = codec, model
        self.table = TablePrices.of(codec, model, np.random.default_rng(check_seed))

    def __call__(self, g: Genomes) -> np.ndarray:
        if self.table is not None:
            return self.table.latency(g)
        return np.asarray(self.model.predict(self.codec.to_archs(g)), dtype=float)
