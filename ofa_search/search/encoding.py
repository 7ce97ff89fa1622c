"""An :class:`~ofa_search.arch.Arch` as Optuna categorical parameters.

Parameters (``mbv3_small28``: 1 + 4 + 4·4·2 = 37 of them)::

    res                 input resolution (only those the device table covers)
    w                   width multiplier (only when more than one is allowed)
    s{S}.d              depth of stage S
    s{S}.p              precision of stage S (only when more than one is allowed)
    s{S}.b{B}.k         kernel of block B of stage S, for every B < the space's max depth
    s{S}.b{B}.e         expand ratio of block B of stage S, likewise

Every trial suggests *all* max-depth blocks, also those past its stage's depth, so every
trial has the same fixed set of distributions. NSGA-II needs that: its crossover and
mutation act on the intersection of the trials' search spaces, and a parameter that
appears only in some trials (a conditional space) would be sampled independently at
random instead of being inherited. Decoding then ignores the blocks past a stage's depth
(``Arch`` has no such blocks), so they cannot distort the objective: two trials that
differ only there decode to the same ``Arch`` and are priced once (see
:class:`~ofa_search.search.evaluator.CachedEvaluator`). They are "dormant genes": a later
mutation of the depth activates them with values that evolution has carried along.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from optuna.distributions import CategoricalDistribution

from ofa_search.arch import Arch
from ofa_search.errors import OfaSearchError, UnsupportedPrecisionError
from ofa_search.space import SUPPORTED_PRECISIONS, SearchSpace, get_space

PRECISION_MODES: dict[str, tuple[str, ...]] = {
    "fp32": ("fp32",),
    "int8": ("fp32", "int8"),
    "binary": ("fp32", "binary"),
    "mixed": ("fp32", "int8", "binary"),
}
"""What a query's precision allows per stage: ``fp32`` only fp32 stages; ``int8`` and
``binary`` let the search choose, stage by stage, between fp32 and that precision (a
searched ``s{S}.p`` parameter); ``mixed`` between all three, so one network can hold int8
and binary stages. ``any`` (:data:`ANY_PRECISION`) is the best answer of every mode the
device's table prices. Every answer exports as one artefact: fp32 ONNX, an int8 QDQ
model, or a binary package (which holds int8 segments beside its binary layers)."""

ANY_PRECISION = "any"


def mode_precisions(mode: str) -> tuple[str, ...]:
    """The per-stage precisions of precision mode ``mode``."""
    try:
        return PRECISION_MODES[mode]
    except KeyError:
        raise UnsupportedPrecisionError(
            f"unknown precision {mode!r}; choose one of "
            f"{', '.join([*PRECISION_MODES, ANY_PRECISION])}") from None


@dataclass(frozen=True)
class ArchEncoding:
    """The categorical parameters of one space, restricted to what a device can price.

    Attributes:
        space: the search space.
        resolutions: allowed input resolutions (default: the space's).
        width_mults: allowed width multipliers (default: the space's).
        precisions: allowed per-stage precisions (default: ``("fp32",)``). A ``s{S}.p``
            parameter exists only when more than one is allowed.
    """

    space: SearchSpace
    resolutions: tuple[int, ...]
    width_mults: tuple[float, ...]
    precisions: tuple[str, ...]

    def __init__(self, space: str | SearchSpace, *, resolutions: Sequence[int] | None = None,
                 width_mults: Sequence[float] | None = None,
                 precisions: Sequence[str] | None = None) -> None:
        spec = get_space(space)
        res = tuple(spec.resolutions if resolutions is None else sorted(set(resolutions)))
        widths = tuple(spec.width_mults if width_mults is None
                       else sorted({float(w) for w in width_mults}))
        precs = tuple(("fp32",) if precisions is None else precisions)
        bad_res = [r for r in res if r not in spec.resolutions]
        bad_w = [w for w in widths if w not in spec.width_mults]
        if not res or bad_res:
            raise OfaSearchError(f"resolutions {list(res)} are not a non-empty subset of space "
                                 f"{spec.name!r}'s {list(spec.resolutions)}")
        if not widths or bad_w:
            raise OfaSearchError(f"width multipliers {list(widths)} are not a non-empty subset "
                                 f"of space {spec.name!r}'s {list(spec.width_mults)}")
        for p in precs:
            if p not in spec.precisions or p not in SUPPORTED_PRECISIONS:
                raise UnsupportedPrecisionError(
                    f"precision {p!r} is not supported for space {spec.name!r}; supported: "
                    f"{[q for q in spec.precisions if q in SUPPORTED_PRECISIONS]}")
        object.__setattr__(self, "space", spec)
        object.__setattr__(self, "resolutions", res)
        object.__setattr__(self, "width_mults", widths)
        object.__setattr__(self, "precisions", precs)

    @classmethod
    def for_table(cls, space: str | SearchSpace, *, resolutions: Sequence[int],
                  width_mult: float, precision: str = "fp32") -> ArchEncoding:
        """The encoding for a device table covering ``resolutions`` at ``width_mult``, in a
        precision mode of :data:`PRECISION_MODES`."""
        spec = get_space(space)
        usable = [r for r in spec.resolutions if r in set(resolutions)]
        return cls(spec, resolutions=usable, width_mults=(width_mult,),
                   precisions=mode_precisions(precision))

    # -- parameters -------------------------------------------------------------------
    def distributions(self) -> dict[str, CategoricalDistribution]:
        """Every parameter and its categorical distribution, in a fixed order."""
        spec = self.space
        out = {"res": CategoricalDistribution(self.resolutions)}
        if len(self.width_mults) > 1:
            out["w"] = CategoricalDistribution(self.width_mults)
        for s in range(spec.num_stages):
            out[f"s{s}.d"] = CategoricalDistribution(spec.depths)
            if len(self.precisions) > 1:
                out[f"s{s}.p"] = CategoricalDistribution(self.precisions)
            for b in range(spec.max_depth):
                out[f"s{s}.b{b}.k"] = CategoricalDistribution(spec.kernel_sizes)
                out[f"s{s}.b{b}.e"] = CategoricalDistribution(spec.expand_ratios)
        return out

    def suggest(self, trial: Any) -> Arch:
        """Suggest every parameter on an Optuna ``trial`` and decode them."""
        params = {name: trial.suggest_categorical(name, dist.choices)
                  for name, dist in self.distributions().items()}
        return self.decode(params)

    def decode(self, params: Mapping[str, Any]) -> Arch:
        """The ``Arch`` of a full parameter dict; blocks past a stage's depth are ignored."""
        spec = self.space
        depths, kernels, expands, precisions = [], [], [], []
        for s in range(spec.num_stages):
            d = int(params[f"s{s}.d"])
            depths.append(d)
            kernels.append(tuple(int(params[f"s{s}.b{b}.k"]) for b in range(d)))
            expands.append(tuple(int(params[f"s{s}.b{b}.e"]) for b in range(d)))
            precisions.append(str(params.get(f"s{s}.p", self.precisions[0])))
        return Arch(space=spec.name, resolution=int(params["res"]),
                    width_mult=float(params.get("w", self.width_mults[0])),
                    depths=tuple(depths), kernels=tuple(kernels), expands=tuple(expands),
                    precisions=tuple(precisions))

    def encode(self, arch: Arch, fill: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Full parameters of ``arch``; blocks past a stage's depth take their value from
        ``fill`` (e.g. the parent's parameters) or, without it, the smallest choice."""
        self.check(arch)
        spec = self.space
        params: dict[str, Any] = {"res": arch.resolution}
        if len(self.width_mults) > 1:
            params["w"] = arch.width_mult
        for s in range(spec.num_stages):
            params[f"s{s}.d"] = arch.depths[s]
            if len(self.precisions) > 1:
                params[f"s{s}.p"] = arch.precisions[s]
            for b in range(spec.max_depth):
                for key, values, default in (("k", arch.kernels[s], spec.kernel_sizes[0]),
                                             ("e", arch.expands[s], spec.expand_ratios[0])):
                    name = f"s{s}.b{b}.{key}"
                    if b < arch.depths[s]:
                        params[name] = values[b]
                    else:
                        params[name] = fill[name] if fill is not None else default
        return params

    def check(self, arch: Arch) -> None:
        """Raise :class:`OfaSearchError` when ``arch`` lies outside this encoding."""
        if arch.space != self.space.name:
            raise OfaSearchError(f"arch of space {arch.space!r}, encoding of {self.space.name!r}")
        if arch.resolution not in self.resolutions:
            raise OfaSearchError(f"resolution {arch.resolution} is not among the allowed "
                                 f"{list(self.resolutions)}")
        if arch.width_mult not in self.width_mults:
            raise OfaSearchError(f"width {arch.width_mult} is not among the allowed "
                                 f"{list(self.width_mults)}")
        if any(p not in self.precisions for p in arch.precisions):
            raise OfaSearchError(f"precisions {list(arch.precisions)} are not among the allowed "
                                 f"{list(self.precisions)}")

    # -- archs ------------------------------------------------------------------------
    def project(self, arch: Arch, rng: np.random.Generator) -> Arch:
        """``arch`` with a disallowed resolution, width or precision redrawn from the
        allowed ones (mutation and crossover of ``Arch`` draw from the whole space)."""
        changes: dict[str, Any] = {}
        if arch.resolution not in self.resolutions:
            changes["resolution"] = self.resolutions[int(rng.integers(len(self.resolutions)))]
        if arch.width_mult not in self.width_mults:
            changes["width_mult"] = self.width_mults[int(rng.integers(len(self.width_mults)))]
        if any(p not in self.precisions for p in arch.precisions):
            changes["precisions"] = tuple(
                p if p in self.precisions else self.precisions[0] for p in arch.precisions)
        return arch.replace(**changes) if changes else arch

    def sample(self, rng: np.random.Generator) -> Arch:
        """A uniformly random arch among the allowed choices."""
        res = self.resolutions[int(rng.integers(len(self.resolutions)))]
        width = self.width_mults[int(rng.integers(len(self.width_mults)))]
        arch = Arch.sample(self.space, rng, width_mult=width, resolution=res)
        return self.project(arch, rng)

    def smallest(self) -> list[Arch]:
        """The smallest arch at every allowed resolution (and width): the candidates for
        the fastest subnet."""
        out = []
        for w in self.width_mults:
            base = Arch.smallest(self.space, width_mult=w)
            for r in self.resolutions:
                out.append(base.replace(resolution=r,
                                        precisions=(self.precisions[0],) * len(base.depths)))
        return out

    def neighbours(self, arch: Arch) -> list[Arch]:
        """Every arch one choice away from ``arch`` (resolution, a stage's depth — new
        blocks at the smallest choices —, a stage's precision, or one block's kernel or
        expand ratio)."""
        spec = self.space
        out = [arch.replace(resolution=r) for r in self.resolutions if r != arch.resolution]
        for s in range(spec.num_stages):
            for p in self.precisions:
                if p != arch.precisions[s]:
                    precisions = list(arch.precisions)
                    precisions[s] = p
                    out.append(arch.replace(precisions=tuple(precisions)))
            for d in spec.depths:
                if d == arch.depths[s]:
                    continue
                pad = max(0, d - arch.depths[s])
                kernels = list(arch.kernels)
                expands = list(arch.expands)
                kernels[s] = (tuple(arch.kernels[s]) + (spec.kernel_sizes[0],) * pad)[:d]
                expands[s] = (tuple(arch.expands[s]) + (spec.expand_ratios[0],) * pad)[:d]
                depths = list(arch.depths)
                depths[s] = d
                out.append(arch.replace(depths=tuple(depths), kernels=tuple(kernels),
                                        expands=tuple(expands)))
            for b in range(arch.depths[s]):
                for field_, choices in (("kernels", spec.kernel_sizes),
                                        ("expands", spec.expand_ratios)):
                    values = getattr(arch, field_)
                    for c in choices:
                        if c == values[s][b]:
                            continue
                        stage = list(values[s])
                        stage[b] = c
                        changed = list(values)
                        changed[s] = tuple(stage)
                        out.append(arch.replace(**{field_: tuple(changed)}))
        return out
