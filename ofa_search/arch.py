"""``Arch``: one subnet of a search space, the currency between every part of ofa-search.

An ``Arch`` lists only the blocks it uses: stage ``s`` has ``depths[s]`` blocks, and
``kernels[s]`` / ``expands[s]`` have exactly that many entries. Blocks past a stage's
depth do not exist in an ``Arch``, so two archs that differ only there cannot be told
apart (they are the same subnet) — equality, hashing and the string form agree with that.

Compact string grammar (round-trips through :meth:`Arch.to_string` / :meth:`Arch.parse`)::

    arch      := "r" RESOLUTION "_w" WIDTH_MULT ( "_" stage ){number of stages}
    stage     := block ( "-" block )* [ "@" PRECISION ]
    block     := "k" KERNEL "e" EXPAND

``@PRECISION`` is omitted for ``fp32``. Example (``mbv3_small28``, four stages)::

    r28_w1.0_k3e4-k5e6_k3e3-k3e3-k7e6_k5e4-k5e4_k3e6-k3e6-k3e6-k3e6
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ofa_search.errors import InvalidArchError
from ofa_search.space import SearchSpace, get_space

RandomLike = np.random.Generator | int | None


def as_generator(rng: RandomLike) -> np.random.Generator:
    """A ``numpy.random.Generator`` from a generator, a seed, or ``None`` (fresh entropy)."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


_BLOCK_RE = re.compile(r"^k(\d+)e(\d+)$")
_HEAD_RE = re.compile(r"^r(\d+)$")
_WIDTH_RE = re.compile(r"^w(\d+(?:\.\d+)?)$")


def _fmt_width(width_mult: float) -> str:
    text = f"{width_mult:.3f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


@dataclass(frozen=True)
class Arch:
    """One subnet of the registered space ``space``; validated on construction.

    Attributes:
        space: name of a registered :class:`~ofa_search.space.SearchSpace`.
        resolution: input height = width in pixels.
        width_mult: width multiplier (selects the supernet family).
        depths: active blocks per stage.
        kernels: per stage, the kernel size of each active block.
        expands: per stage, the expand ratio of each active block.
        precisions: per stage, ``fp32``, ``int8`` or ``binary`` (among the space's); empty
            means all ``fp32``.
    """

    space: str
    resolution: int
    width_mult: float
    depths: tuple[int, ...]
    kernels: tuple[tuple[int, ...], ...]
    expands: tuple[tuple[int, ...], ...]
    precisions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        space = get_space(self.space)
        n = space.num_stages
        # normalise containers to tuples (callers may pass lists, e.g. from JSON)
        set_ = object.__setattr__

        def as_tuple(name: str, value: Any) -> tuple[Any, ...]:
            if isinstance(value, str) or not isinstance(value, Sequence):
                raise InvalidArchError(f"{name} must be a list, got {value!r}")
            return tuple(value)

        set_(self, "depths", as_tuple("depths", self.depths))
        set_(self, "kernels", tuple(as_tuple(f"kernels[{i}]", k)
                                    for i, k in enumerate(as_tuple("kernels", self.kernels))))
        set_(self, "expands", tuple(as_tuple(f"expands[{i}]", e)
                                    for i, e in enumerate(as_tuple("expands", self.expands))))
        precisions = self.precisions or ("fp32",) * n
        set_(self, "precisions", as_tuple("precisions", precisions))

        def bad(field_: str, value: Any, allowed: Iterable[Any]) -> InvalidArchError:
            choices = ", ".join(str(a) for a in allowed)
            return InvalidArchError(
                f"{field_}={value!r} is not allowed in space {space.name!r}; choices: {choices}"
            )

        if not _is_int(self.resolution) or self.resolution not in space.resolutions:
            raise bad("resolution", self.resolution, space.resolutions)
        if isinstance(self.width_mult, bool) or not isinstance(self.width_mult, int | float) \
                or float(self.width_mult) not in space.width_mults:
            raise bad("width_mult", self.width_mult, space.width_mults)
        set_(self, "width_mult", float(self.width_mult))
        for name in ("depths", "kernels", "expands", "precisions"):
            if len(getattr(self, name)) != n:
                raise InvalidArchError(
                    f"{name} has {len(getattr(self, name))} stages, space {space.name!r} has {n}"
                )
        for s in range(n):
            depth = self.depths[s]
            if not _is_int(depth) or depth not in space.depths:
                raise bad(f"depths[{s}]", depth, space.depths)
            for name, choices in (("kernels", space.kernel_sizes),
                                  ("expands", space.expand_ratios)):
                values = getattr(self, name)[s]
                if len(values) != depth:
                    raise InvalidArchError(
                        f"{name}[{s}] has {len(values)} blocks but depths[{s}]={depth}"
                    )
                for b, value in enumerate(values):
                    if not _is_int(value) or value not in choices:
                        raise bad(f"{name}[{s}][{b}]", value, choices)
            precision = self.precisions[s]
            if precision not in space.precisions:
                raise bad(f"precisions[{s}]", precision, space.precisions)

    @classmethod
    def trusted(cls, space: str, resolution: int, width_mult: float,
                depths: tuple[int, ...], kernels: tuple[tuple[int, ...], ...],
                expands: tuple[tuple[int, ...], ...], precisions: tuple[str, ...]) -> Arch:
        """An ``Arch`` built without validation, for code that assembles it from a space's
        own choices as plain ints, floats, strs and tuples (a search builds thousands per
        second; validation would cost more than pricing them). Anything else must use the
        validating constructor."""
        arch = object.__new__(cls)
        for name, value in (("space", space), ("resolution", resolution),
                            ("width_mult", width_mult), ("depths", depths),
                            ("kernels", kernels), ("expands", expands),
                            ("precisions", precisions)):
            object.__setattr__(arch, name, value)
        return arch

    # -- views -------------------------------------------------------------------------
    @property
    def search_space(self) -> SearchSpace:
        return get_space(self.space)

    @property
    def num_blocks(self) -> int:
        """Active elastic blocks."""
        return sum(self.depths)

    def blocks(self) -> list[tuple[int, int, int, int]]:
        """``(stage, index_in_stage, kernel, expand)`` of every active block, in order."""
        return [
            (s, b, self.kernels[s][b], self.expands[s][b])
            for s in range(len(self.depths))
            for b in range(self.depths[s])
        ]

    # -- serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data; :meth:`from_dict` is its inverse."""
        return {
            "space": self.space,
            "resolution": self.resolution,
            "width_mult": self.width_mult,
            "depths": list(self.depths),
            "kernels": [list(k) for k in self.kernels],
            "expands": [list(e) for e in self.expands],
            "precisions": list(self.precisions),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], space: str | SearchSpace | None = None) -> Arch:
        """Inverse of :meth:`to_dict`; unknown keys are an error (typos are not swallowed)."""
        if not isinstance(data, Mapping):
            raise InvalidArchError(f"an arch must be a JSON object, got {type(data).__name__}")
        allowed = {"space", "resolution", "width_mult", "depths", "kernels", "expands",
                   "precisions"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise InvalidArchError(f"unknown arch field(s) {unknown}; allowed: {sorted(allowed)}")
        name = data.get("space") or (get_space(space).name if space is not None else None)
        if name is None:
            raise InvalidArchError("arch has no 'space' field and no space was given")
        if space is not None and get_space(space).name != name:
            expected = get_space(space).name
            raise InvalidArchError(f"arch is of space {name!r}, expected {expected!r}")
        missing = [k for k in ("resolution", "depths", "kernels", "expands") if k not in data]
        if missing:
            raise InvalidArchError(f"arch is missing field(s) {missing}")
        return cls(
            space=name,
            resolution=data["resolution"],
            width_mult=data.get("width_mult", 1.0),
            depths=data["depths"],
            kernels=data["kernels"],
            expands=data["expands"],
            precisions=data.get("precisions") or (),
        )

    def to_string(self) -> str:
        """The compact form (see the module docstring)."""
        stages = []
        for s in range(len(self.depths)):
            blocks = "-".join(f"k{k}e{e}" for k, e in zip(self.kernels[s], self.expands[s],
                                                          strict=True))
            precision = self.precisions[s]
            stages.append(blocks if precision == "fp32" else f"{blocks}@{precision}")
        return "_".join([f"r{self.resolution}", f"w{_fmt_width(self.width_mult)}", *stages])

    def __str__(self) -> str:
        return self.to_string()

    @classmethod
    def parse(cls, text: str, space: str | SearchSpace) -> Arch:
        """Parse the compact form; errors name the offending token."""
        spec = get_space(space)
        text = text.strip()
        tokens = text.split("_")
        if len(tokens) != 2 + spec.num_stages:
            raise InvalidArchError(
                f"arch string {text!r} has {len(tokens)} '_'-separated fields; expected "
                f"r<res>_w<width> and {spec.num_stages} stages for space {spec.name!r}"
            )
        head = _HEAD_RE.match(tokens[0])
        if head is None:
            raise InvalidArchError(f"bad resolution token {tokens[0]!r}; expected e.g. 'r28'")
        width = _WIDTH_RE.match(tokens[1])
        if width is None:
            raise InvalidArchError(f"bad width token {tokens[1]!r}; expected e.g. 'w1.0'")
        kernels, expands, precisions = [], [], []
        for s, token in enumerate(tokens[2:]):
            blocks_text, _, precision = token.partition("@")
            precisions.append(precision or "fp32")
            ks, es = [], []
            for block in blocks_text.split("-"):
                m = _BLOCK_RE.match(block)
                if m is None:
                    raise InvalidArchError(
                        f"bad block token {block!r} in stage {s}; expected e.g. 'k3e4'"
                    )
                ks.append(int(m.group(1)))
                es.append(int(m.group(2)))
            kernels.append(tuple(ks))
            expands.append(tuple(es))
        return cls(
            space=spec.name,
            resolution=int(head.group(1)),
            width_mult=float(width.group(1)),
            depths=tuple(len(k) for k in kernels),
            kernels=tuple(kernels),
            expands=tuple(expands),
            precisions=tuple(precisions),
        )

    # -- once-for-all interop ----------------------------------------------------------
    @classmethod
    def from_ofa_dict(cls, data: Mapping[str, Any], space: str | SearchSpace = "ofa_mbv3") -> Arch:
        """Convert once-for-all's ``{"ks": [...], "e": [...], "d": [...], "r": [int]}`` (``r``
        or ``image_size``, an int or a one-element list; optional ``"w"`` width multiplier,
        default 1.0). Slots past a
        stage's depth are ignored, as once-for-all ignores them."""
        spec = get_space(space)
        for key in ("ks", "e", "d"):
            if key not in data:
                raise InvalidArchError(f"once-for-all arch is missing {key!r}")
        res = data.get("r", data.get("image_size"))
        if res is None:
            raise InvalidArchError("once-for-all arch is missing 'r' (or 'image_size')")
        if isinstance(res, list | tuple):
            if len(res) != 1:
                raise InvalidArchError(f"'r' must be one resolution, got {res!r}")
            res = res[0]
        if "r" in data and "image_size" in data and data["image_size"] not in (res, [res]):
            raise InvalidArchError(f"'r' ({data['r']!r}) and 'image_size' "
                                   f"({data['image_size']!r}) disagree")
        d = list(data["d"])
        if len(d) != spec.num_stages:
            raise InvalidArchError(f"'d' has {len(d)} entries, space {spec.name!r} has "
                                   f"{spec.num_stages} stages")
        slots = spec.num_slots
        for key in ("ks", "e"):
            if len(data[key]) != slots:
                raise InvalidArchError(f"{key!r} has {len(data[key])} entries; expected {slots}")
        m = spec.max_depth
        kernels = tuple(tuple(data["ks"][s * m: s * m + d[s]]) for s in range(len(d)))
        expands = tuple(tuple(data["e"][s * m: s * m + d[s]]) for s in range(len(d)))
        return cls(space=spec.name, resolution=res, width_mult=data.get("w", 1.0),
                   depths=tuple(d), kernels=kernels, expands=expands)

    def to_ofa_dict(self) -> dict[str, Any]:
        """once-for-all's dict form, as its code reads it: ``ks``/``e`` (20 slots; inactive
        ones filled with the smallest choices), ``d``, ``r`` as a one-element list (its
        tutorial's predictor and latency table read ``r[0]``), ``image_size`` (what its
        ``MobileNetArchEncoder`` reads) and ``w`` (the width multiplier)."""
        spec = self.search_space
        ks: list[int] = []
        es: list[int] = []
        for s, depth in enumerate(self.depths):
            pad = spec.max_depth - depth
            ks += list(self.kernels[s]) + [spec.kernel_sizes[0]] * pad
            es += list(self.expands[s]) + [spec.expand_ratios[0]] * pad
        return {"ks": ks, "e": es, "d": list(self.depths), "r": [self.resolution],
                "image_size": self.resolution, "w": self.width_mult}

    # -- construction ------------------------------------------------------------------
    @classmethod
    def largest(cls, space: str | SearchSpace, width_mult: float | None = None) -> Arch:
        """Every choice at its maximum (at the largest width unless one is given)."""
        spec = get_space(space)
        n, d = spec.num_stages, spec.max_depth
        return cls(space=spec.name, resolution=spec.resolutions[-1],
                   width_mult=spec.width_mults[-1] if width_mult is None else width_mult,
                   depths=(d,) * n, kernels=((spec.kernel_sizes[-1],) * d,) * n,
                   expands=((spec.expand_ratios[-1],) * d,) * n)

    @classmethod
    def smallest(cls, space: str | SearchSpace, width_mult: float | None = None) -> Arch:
        """Every choice at its minimum (at the smallest width unless one is given)."""
        spec = get_space(space)
        n, d = spec.num_stages, spec.depths[0]
        return cls(space=spec.name, resolution=spec.resolutions[0],
                   width_mult=spec.width_mults[0] if width_mult is None else width_mult,
                   depths=(d,) * n, kernels=((spec.kernel_sizes[0],) * d,) * n,
                   expands=((spec.expand_ratios[0],) * d,) * n)

    @classmethod
    def sample(cls, space: str | SearchSpace, rng: RandomLike = None, *,
               width_mult: float | None = None, resolution: int | None = None) -> Arch:
        """A uniformly random arch (each choice independently uniform), seeded by ``rng``."""
        spec = get_space(space)
        gen = as_generator(rng)
        genes = _random_genes(spec, gen)
        if width_mult is not None:
            genes["width_mult"] = width_mult
        if resolution is not None:
            genes["resolution"] = resolution
        return _from_genes(spec, genes)

    def mutate(self, rng: RandomLike = None, prob: float = 0.1) -> Arch:
        """once-for-all's mutation: resolution, each block's kernel and expand, each stage's
        depth (and precision) are resampled independently with probability ``prob``.
        Blocks that a deeper depth activates take the values of the random fill."""
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob=}")
        spec = self.search_space
        gen = as_generator(rng)
        genes = self._genes(gen)
        fresh = _random_genes(spec, gen)
        if gen.random() < prob:
            genes["resolution"] = fresh["resolution"]
        for s in range(spec.num_stages):
            if gen.random() < prob:
                genes["depths"][s] = fresh["depths"][s]
            if gen.random() < prob and len(spec.precisions) > 1:
                genes["precisions"][s] = fresh["precisions"][s]
            for b in range(spec.max_depth):
                if gen.random() < prob:
                    genes["kernels"][s][b] = fresh["kernels"][s][b]
                if gen.random() < prob:
                    genes["expands"][s][b] = fresh["expands"][s][b]
        return _from_genes(spec, genes)

    def crossover(self, other: Arch, rng: RandomLike = None) -> Arch:
        """Uniform crossover: every gene from either parent with probability 1/2."""
        if other.space != self.space or other.width_mult != self.width_mult:
            raise ValueError(
                f"cannot cross archs of different spaces/widths: {self.space}/w{self.width_mult}"
                f" and {other.space}/w{other.width_mult}"
            )
        spec = self.search_space
        gen = as_generator(rng)
        a, b = self._genes(gen), other._genes(gen)

        def pick(x: Any, y: Any) -> Any:
            return x if gen.random() < 0.5 else y

        child = {
            "resolution": pick(a["resolution"], b["resolution"]),
            "width_mult": self.width_mult,
            "depths": [pick(x, y) for x, y in zip(a["depths"], b["depths"], strict=True)],
            "precisions": [pick(x, y) for x, y in zip(a["precisions"], b["precisions"],
                                                      strict=True)],
            "kernels": [[pick(x, y) for x, y in zip(ka, kb, strict=True)]
                        for ka, kb in zip(a["kernels"], b["kernels"], strict=True)],
            "expands": [[pick(x, y) for x, y in zip(ea, eb, strict=True)]
                        for ea, eb in zip(a["expands"], b["expands"], strict=True)],
        }
        return _from_genes(spec, child)

    def replace(self, **changes: Any) -> Arch:
        """A copy with fields changed (validated)."""
        return replace(self, **changes)

    def _genes(self, gen: np.random.Generator) -> dict[str, Any]:
        """Full-slot genes: inactive slots filled at random (they carry no information)."""
        spec = self.search_space
        fill = _random_genes(spec, gen)
        kernels = [list(self.kernels[s]) + fill["kernels"][s][self.depths[s]:]
                   for s in range(spec.num_stages)]
        expands = [list(self.expands[s]) + fill["expands"][s][self.depths[s]:]
                   for s in range(spec.num_stages)]
        return {"resolution": self.resolution, "width_mult": self.width_mult,
                "depths": list(self.depths), "kernels": kernels, "expands": expands,
                "precisions": list(self.precisions)}

    # -- features ----------------------------------------------------------------------
    def encode(self) -> np.ndarray:
        """A fixed-length float32 vector for predictors (see :func:`feature_names`)."""
        spec = self.search_space
        out: list[float] = []
        out += _one_hot(self.resolution, spec.resolutions)
        out += _one_hot(self.width_mult, spec.width_mults)
        for s in range(spec.num_stages):
            out += _one_hot(self.depths[s], spec.depths)
            out += _one_hot(self.precisions[s], spec.precisions)
            for b in range(spec.max_depth):
                active = b < self.depths[s]
                out += _one_hot(self.kernels[s][b] if active else None, spec.kernel_sizes)
                out += _one_hot(self.expands[s][b] if active else None, spec.expand_ratios)
        return np.asarray(out, dtype=np.float32)


def feature_names(space: str | SearchSpace) -> list[str]:
    """Names of the columns of :meth:`Arch.encode` for ``space``; inactive blocks are
    all-zero in their kernel and expand columns, so they cannot distort a predictor."""
    spec = get_space(space)
    names = [f"res={r}" for r in spec.resolutions] + [f"w={w}" for w in spec.width_mults]
    for s in range(spec.num_stages):
        names += [f"s{s}.depth={d}" for d in spec.depths]
        names += [f"s{s}.prec={p}" for p in spec.precisions]
        for b in range(spec.max_depth):
            names += [f"s{s}.b{b}.k={k}" for k in spec.kernel_sizes]
            names += [f"s{s}.b{b}.e={e}" for e in spec.expand_ratios]
    return names


def parse_arch(text: str, space: str | SearchSpace) -> Arch:
    """Parse what a user may hand us: the compact string, a JSON ``Arch.to_dict`` object,
    or once-for-all's ``{"ks", "e", "d", "r"}`` dict (JSON text)."""
    spec = get_space(space)
    text = text.strip()
    if not text.startswith("{"):
        return Arch.parse(text, spec)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArchError(f"arch looks like JSON but does not parse: {exc}") from None
    if isinstance(data, dict) and "ks" in data:
        return Arch.from_ofa_dict(data, spec)
    return Arch.from_dict(data, spec)


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _one_hot(value: Any, choices: Sequence[Any]) -> list[float]:
    return [1.0 if value == c else 0.0 for c in choices]


def _random_genes(spec: SearchSpace, gen: np.random.Generator) -> dict[str, Any]:
    def choice(values: Sequence[Any]) -> Any:
        item = values[int(gen.integers(len(values)))]
        return item.item() if isinstance(item, np.generic) else item

    n, m = spec.num_stages, spec.max_depth
    return {
        "resolution": choice(spec.resolutions),
        "width_mult": choice(spec.width_mults),
        "depths": [choice(spec.depths) for _ in range(n)],
        "kernels": [[choice(spec.kernel_sizes) for _ in range(m)] for _ in range(n)],
        "expands": [[choice(spec.expand_ratios) for _ in range(m)] for _ in range(n)],
        "precisions": [choice(spec.precisions) for _ in range(n)],
    }


def _from_genes(spec: SearchSpace, genes: Mapping[str, Any]) -> Arch:
    depths = genes["depths"]
    return Arch(
        space=spec.name,
        resolution=genes["resolution"],
        width_mult=genes["width_mult"],
        depths=tuple(depths),
        kernels=tuple(tuple(k[:d]) for k, d in zip(genes["kernels"], depths, strict=True)),
        expands=tuple(tuple(e[:d]) for e, d in zip(genes["expands"], depths, strict=True)),
        precisions=tuple(genes["precisions"]),
    )
