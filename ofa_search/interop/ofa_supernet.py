"""once-for-all's ``OFAMobileNetV3`` checkpoints in and out of a workspace.

once-for-all (Cai et al., ICLR 2020; PyPI ``ofa``) saves its supernets as ``torch.save``-d
dicts ``{"state_dict": {...}}`` (or bare state dicts) whose tensor names follow its module
tree: ``first_conv``, ``blocks.0`` (the fixed first block), ``blocks.1…20`` (5 stages × 4
elastic blocks), ``final_expand_layer``, ``feature_mix_layer``, ``classifier``. The same
function is :class:`~ofa_search.nn.Supernet` ``("ofa_mbv3", w)`` under other names, so an
import is a name mapping plus checks (shapes, no unknown or missing tensor); the tests
prove it against once-for-all's own code, subnet by subnet.

Older once-for-all files use other spellings of the same tensors (``.mobile_inverted_conv.``
for ``.conv.``, ``.bn.`` for ``.bn.bn.``, ``.conv.weight`` for ``.conv.conv.weight``,
``.linear.linear.`` for ``.linear.``); once-for-all's own ``load_state_dict`` accepts them,
and so does :func:`ofa_to_ours`. :func:`ours_to_ofa` writes the names that
``OFAMobileNetV3.state_dict()`` has today, so a plain strict ``load_state_dict`` takes them.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ofa_search.atomic import atomic_write_bytes
from ofa_search.errors import FileFormatError, OfaSearchError
from ofa_search.export import sha256_file
from ofa_search.nn import Supernet
from ofa_search.space import SearchSpace, get_space
from ofa_search.torch_files import read_state_dict
from ofa_search.train.checkpoint import load_supernet, save_checkpoint

SPACE = "ofa_mbv3"
OFA_FORMAT_NOTE = ("a torch.save-d dict {'state_dict': {name: tensor}} (or a bare state "
                   "dict) of once-for-all's OFAMobileNetV3")

_BN = "weight|bias|running_mean|running_var|num_batches_tracked"
# (once-for-all name, ofa-search name) in once-for-all's collapsed spelling (see _collapse);
# {n} is a block index of blocks.1…20, {s}.{b} its stage and index in the stage.
_RULES: tuple[tuple[str, str], ...] = (
    ("first_conv.conv.weight", "stem.0.weight"),
    ("first_conv.bn.{p}", "stem.1.{p}"),
    ("blocks.0.conv.depth_conv.conv.weight", "first_block.depthwise.0.weight"),
    ("blocks.0.conv.depth_conv.bn.{p}", "first_block.depthwise.1.{p}"),
    ("blocks.0.conv.point_linear.conv.weight", "first_block.project.0.weight"),
    ("blocks.0.conv.point_linear.bn.{p}", "first_block.project.1.{p}"),
    ("blocks.{n}.conv.inverted_bottleneck.conv.weight", "stages.{s}.{b}.expand_conv.weight"),
    ("blocks.{n}.conv.inverted_bottleneck.bn.{p}", "stages.{s}.{b}.expand_bn.{p}"),
    ("blocks.{n}.conv.depth_conv.conv.weight", "stages.{s}.{b}.depthwise.weight"),
    ("blocks.{n}.conv.depth_conv.conv.{m}_matrix", "stages.{s}.{b}.depthwise.transforms.{m}"),
    ("blocks.{n}.conv.depth_conv.bn.{p}", "stages.{s}.{b}.depthwise_bn.{p}"),
    ("blocks.{n}.conv.depth_conv.se.fc.{f}.{q}", "stages.{s}.{b}.se.{f}.{q}"),
    ("blocks.{n}.conv.point_linear.conv.weight", "stages.{s}.{b}.project.weight"),
    ("blocks.{n}.conv.point_linear.bn.{p}", "stages.{s}.{b}.project_bn.{p}"),
    ("final_expand_layer.conv.weight", "head.final_expand.0.weight"),
    ("final_expand_layer.bn.{p}", "head.final_expand.1.{p}"),
    ("feature_mix_layer.conv.weight", "head.feature_mix.0.weight"),
    ("classifier.linear.{q}", "head.classifier.{q}"),
)
_FIELDS = {"n": r"[1-9]\d*", "s": r"\d+", "b": r"\d+", "p": _BN, "m": r"\dto\d",
           "f": "reduce|expand", "q": "weight|bias"}


def _compile(template: str) -> re.Pattern[str]:
    pattern = re.escape(template)
    for name, body in _FIELDS.items():
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>{body})")
    return re.compile(pattern + r"\Z")


_FORWARD = tuple((_compile(ofa), ours) for ofa, ours in _RULES)
_BACKWARD = tuple((_compile(ours), ofa) for ofa, ours in _RULES)


def _collapse(key: str) -> str:
    """once-for-all's name of a tensor in one spelling (the one :data:`_RULES` use)."""
    key = key.removeprefix("module.")  # saved from a DataParallel / DDP wrapper
    return (key.replace(".mobile_inverted_conv.", ".conv.").replace(".bn.bn.", ".bn.")
            .replace(".conv.conv.weight", ".conv.weight")
            .replace(".linear.linear.", ".linear."))


def _ofa_spelling(key: str) -> str:
    """Today's ``OFAMobileNetV3.state_dict()`` name of a collapsed name: the elastic blocks
    (``blocks.1…``) wrap their BN and conv once more."""
    if key.startswith("blocks.") and not key.startswith("blocks.0."):
        return key.replace(".bn.", ".bn.bn.").replace(".conv.weight", ".conv.conv.weight")
    return key


def ofa_to_ours(key: str, space: str | SearchSpace = SPACE) -> str | None:
    """The :class:`Supernet` name of once-for-all tensor ``key`` (any of its spellings), or
    ``None`` when ``key`` is no tensor of an ``OFAMobileNetV3``."""
    depth = get_space(space).max_depth
    collapsed = _collapse(key)
    for pattern, template in _FORWARD:
        match = pattern.match(collapsed)
        if match is None:
            continue
        groups = match.groupdict()
        if "n" in groups:
            n = int(groups.pop("n")) - 1
            groups.update(s=str(n // depth), b=str(n % depth))
        return template.format(**groups)
    return None


def ours_to_ofa(key: str, space: str | SearchSpace = SPACE) -> str | None:
    """once-for-all's (today's) name of :class:`Supernet` tensor ``key``, or ``None``."""
    depth = get_space(space).max_depth
    for pattern, template in _BACKWARD:
        match = pattern.match(key)
        if match is None:
            continue
        groups = match.groupdict()
        if "s" in groups:
            groups["n"] = str(int(groups.pop("s")) * depth + int(groups.pop("b")) + 1)
        return _ofa_spelling(template.format(**groups))
    return None


def read_ofa_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a once-for-all checkpoint file, read with ``weights_only=True``
    (see :func:`~ofa_search.torch_files.read_state_dict` for the errors)."""
    return read_state_dict(path, f"a once-for-all checkpoint ({OFA_FORMAT_NOTE})")


@dataclass(frozen=True)
class ImportReport:
    """What :func:`import_ofa_supernet` wrote."""

    source: Path
    source_sha256: str
    checkpoint: Path
    width_mult: float
    tensors: int
    params: int

    def to_dict(self) -> dict[str, Any]:
        return {"source": str(self.source), "source_sha256": self.source_sha256,
                "checkpoint": str(self.checkpoint), "space": SPACE,
                "width_mult": self.width_mult, "tensors": self.tensors, "params": self.params}


def _listing(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" … ({len(names)} in all)" if len(names) > limit else "")


def _fresh_supernet(width: float) -> Supernet:
    with torch.random.fork_rng(devices=[]):  # construction must not touch global RNG
        return Supernet(SPACE, width, generator=torch.Generator().manual_seed(0))


def _shape_mismatches(mapped: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
                      ) -> list[str]:
    return [f"{ours_to_ofa(k) or k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
            for k, v in mapped.items() if k in expected and v.shape != expected[k].shape]


def map_ofa_state_dict(state: Mapping[str, torch.Tensor], width_mult: float | None = None,
                       *, source: str = "checkpoint") -> tuple[Supernet, float]:
    """A :class:`Supernet` of ``ofa_mbv3`` holding once-for-all's tensors ``state``.

    ``width_mult=None`` detects the width (1.0 or 1.2) from the tensor shapes. Missing
    ``num_batches_tracked`` counters are allowed (they do not change the function).

    Raises:
        FileFormatError: unknown or missing tensors (listed), shapes that fit no width (or
            not the one asked for: the message names the width that fits), non-float data.
    """
    spec = get_space(SPACE)
    if width_mult is not None and width_mult not in spec.width_mults:
        raise FileFormatError(f"width {width_mult} is not one of once-for-all's "
                              f"{', '.join(map(str, spec.width_mults))}")
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        ours = ofa_to_ours(key, spec)
        if ours is not None:
            mapped[ours] = tensor
    nets = {width: _fresh_supernet(width) for width in spec.width_mults}
    known = set(nets[spec.width_mults[0]].state_dict())
    extra = [k for k in state if ofa_to_ours(k, spec) not in known]
    if extra:
        raise FileFormatError(f"{source}: {len(extra)} tensor(s) that an OFAMobileNetV3 "
                              f"does not have: {_listing(extra)}")
    bad_dtype = [k for k, v in mapped.items()
                 if not (v.is_floating_point() or k.endswith("num_batches_tracked"))]
    if bad_dtype:
        raise FileFormatError(f"{source}: non-float weights: {_listing(bad_dtype)}")
    widths = [float(width_mult)] if width_mult is not None else list(spec.width_mults)
    fits = {w: _shape_mismatches(mapped, net.state_dict()) for w, net in nets.items()}
    chosen = next((w for w in widths if not fits[w]), None)
    if chosen is None:
        other = [w for w in spec.width_mults if not fits[w]]
        hint = (f"; it is a width-{other[0]} checkpoint (pass --width {other[0]})" if other
                else "")
        width = widths[0]
        raise FileFormatError(f"{source}: tensor shapes do not fit ofa_mbv3 at width {width}"
                              f"{hint}: {_listing(fits[width], 3)}")
    net = nets[chosen]
    expected = net.state_dict()
    missing = [k for k in expected if k not in mapped and not k.endswith("num_batches_tracked")]
    if missing:
        names = [ours_to_ofa(k, spec) or k for k in missing]
        raise FileFormatError(f"{source}: {len(missing)} tensor(s) of an OFAMobileNetV3 are "
                              f"missing: {_listing(names)}")
    full = {k: (mapped[k].to(expected[k].dtype) if k in mapped else expected[k].zero_())
            for k in expected}
    net.load_state_dict(full)
    return net.eval(), chosen


def import_ofa_supernet(path: str | os.PathLike[str], checkpoint: str | os.PathLike[str], *,
                        width_mult: float | None = None, overwrite: bool = False,
                        log: Callable[[str], None] | None = None) -> ImportReport:
    """Import once-for-all checkpoint ``path`` as the supernet checkpoint ``checkpoint``.

    The written checkpoint is an ordinary workspace checkpoint (``strategy`` ``imported``,
    ``config`` ``{"dataset": "imagenet", "data_dir": None}``, ``imported`` naming the source
    file and its sha256); BN statistics are once-for-all's, so subnets should be
    recalibrated on the user's images (``export``/``eval`` with ``--data-dir``).

    Raises:
        OfaSearchError: ``checkpoint`` exists and ``overwrite`` is false (nothing written).
        FileFormatError: see :func:`read_ofa_state_dict` and :func:`map_ofa_state_dict`.
    """
    source, target = Path(path), Path(checkpoint)
    if target.exists() and not overwrite:
        raise OfaSearchError(f"{target} exists; pass --force to replace it")
    say = log or (lambda _line: None)
    state = read_ofa_state_dict(source)
    say(f"read {len(state)} tensors from {source.name}")
    net, width = map_ofa_state_dict(state, width_mult, source=str(source))
    digest = sha256_file(source)
    save_checkpoint(target, {
        "space": SPACE, "width_mult": width, "strategy": {"name": "imported"}, "epoch": 0,
        "step": 0, "finished": True, "model": net.state_dict(), "teacher": None,
        "optimizer": {}, "scheduler": {"step": 0}, "rng": {},
        "config": {"dataset": "imagenet", "data_dir": None},
        "imported": {"from": "once-for-all", "file": source.name, "sha256": digest},
    })
    params = sum(p.numel() for p in net.parameters())
    say(f"wrote {target} (ofa_mbv3 width {width}, {params / 1e6:.2f} M parameters)")
    return ImportReport(source, digest, target, width, len(state), params)


def export_ofa_supernet(checkpoint: str | os.PathLike[str], out: str | os.PathLike[str]
                        ) -> Path:
    """Write the supernet of ``checkpoint`` as once-for-all saves its own: ``torch.save``
    of ``{"state_dict": …}`` with today's ``OFAMobileNetV3`` tensor names (atomically).

    Raises:
        FileFormatError: an unreadable checkpoint.
        OfaSearchError: a supernet of another space than ``ofa_mbv3``.
    """
    net, meta = load_supernet(checkpoint)
    if meta["space"] != SPACE:
        raise OfaSearchError(f"{checkpoint} holds a supernet of space {meta['space']!r}; only "
                             f"{SPACE!r} supernets have once-for-all's form")
    state: dict[str, torch.Tensor] = {}
    for key, tensor in net.state_dict().items():
        name = ours_to_ofa(key)
        if name is None:  # pragma: no cover - every ofa_mbv3 tensor has a rule (tested)
            raise OfaSearchError(f"no once-for-all name for tensor {key!r}")
        state[name] = tensor.detach().clone()
    buffer = io.BytesIO()
    torch.save({"state_dict": state}, buffer)
    return atomic_write_bytes(out, buffer.getvalue())
