"""What a binary package holds, in memory: a straight-line program over named values.

A :class:`BinaryProgram` runs a network as steps, each reading named values and writing
one: ``input`` is the network's input, the last step writes ``output`` (the logits).

* :class:`OnnxStep` — a full-precision segment (ONNX, run by ONNX Runtime): everything
  between two binary convs, such as a depthwise conv and squeeze-excite, or the stem, the
  fp32 stages and the head;
* :class:`BinaryStep` — one packed binary 1×1 conv block
  (:class:`~ofa_search.binary.layer.PackedPointwise`);
* :class:`AddStep` — the residual add of a binary MBConv block.

Steps convert to and from plain dicts (the JSON manifest); the conversion is allow-listed
and raises :class:`~ofa_search.errors.FileFormatError` on anything unexpected.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ofa_search.binary.layer import PackedPointwise
from ofa_search.errors import FileFormatError

INPUT = "input"
OUTPUT = "output"


@dataclass(frozen=True)
class OnnxStep:
    """Run ONNX segment ``segment`` on ``input``."""

    segment: int
    input: str
    output: str
    op = "onnx"

    def inputs(self) -> tuple[str, ...]:
        return (self.input,)


@dataclass(frozen=True)
class BinaryStep:
    """Run packed binary layer ``layer`` on ``input``."""

    layer: int
    input: str
    output: str
    op = "binary"

    def inputs(self) -> tuple[str, ...]:
        return (self.input,)


@dataclass(frozen=True)
class AddStep:
    """``output = left + right``."""

    left: str
    right: str
    output: str
    op = "add"

    def inputs(self) -> tuple[str, ...]:
        return (self.left, self.right)


Step = OnnxStep | BinaryStep | AddStep
_STEP_TYPES: dict[str, type[OnnxStep] | type[BinaryStep] | type[AddStep]] = {
    "onnx": OnnxStep, "binary": BinaryStep, "add": AddStep}
_STEP_FIELDS: dict[str, dict[str, type]] = {
    "onnx": {"segment": int, "input": str, "output": str},
    "binary": {"layer": int, "input": str, "output": str},
    "add": {"left": str, "right": str, "output": str},
}


def step_to_dict(step: Step) -> dict[str, Any]:
    """The manifest form of ``step``."""
    fields = _STEP_FIELDS[step.op]
    return {"op": step.op, **{name: getattr(step, name) for name in fields}}


def step_from_dict(data: Any) -> Step:
    """Inverse of :func:`step_to_dict`; raises :class:`FileFormatError`."""
    if not isinstance(data, Mapping) or data.get("op") not in _STEP_TYPES:
        raise FileFormatError(f"bad step {data!r}: expected an object with op in "
                              f"{sorted(_STEP_TYPES)}")
    op = data["op"]
    fields = _STEP_FIELDS[op]
    if set(data) != {"op", *fields}:
        raise FileFormatError(f"step {op!r} must have exactly the keys "
                              f"{sorted({'op', *fields})}, got {sorted(data)}")
    for name, kind in fields.items():
        value = data[name]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise FileFormatError(f"step {op!r}: {name} must be {kind.__name__}, got {value!r}")
    return _STEP_TYPES[op](**{name: data[name] for name in fields})


@dataclass(frozen=True, eq=False)
class BinaryProgram:
    """A network as steps over ONNX segments and packed binary layers (see module doc).

    Attributes:
        input_shape: the shape of one sample, ``(C, H, W)``; the batch is free.
        steps: in execution order.
        segments: serialised ONNX models (batch dimension symbolic).
        layers: packed binary 1×1 conv blocks.
        arch: the arch string of the network, when it is a whole subnet.
        space: its search space.
        unit: the priced unit key, when the program is one block (latency measurement).
    """

    input_shape: tuple[int, ...]
    steps: tuple[Step, ...]
    segments: tuple[bytes, ...]
    layers: tuple[PackedPointwise, ...]
    arch: str | None = None
    space: str | None = None
    unit: str | None = None

    def __post_init__(self) -> None:
        if len(self.input_shape) != 3 or not all(
                isinstance(d, int) and not isinstance(d, bool) and d > 0
                for d in self.input_shape):
            raise FileFormatError(f"input_shape must be three positive integers (C, H, W), got "
                                  f"{self.input_shape!r}")
        if not self.steps:
            raise FileFormatError("a program needs at least one step")
        defined = {INPUT}
        for index, step in enumerate(self.steps):
            missing = [name for name in step.inputs() if name not in defined]
            if missing:
                raise FileFormatError(f"step {index} ({step.op}) reads undefined value(s) "
                                      f"{missing}")
            if isinstance(step, OnnxStep) and not 0 <= step.segment < len(self.segments):
                raise FileFormatError(f"step {index} uses segment {step.segment}; the package "
                                      f"has {len(self.segments)}")
            if isinstance(step, BinaryStep) and not 0 <= step.layer < len(self.layers):
                raise FileFormatError(f"step {index} uses binary layer {step.layer}; the "
                                      f"package has {len(self.layers)}")
            defined.add(step.output)
        if self.steps[-1].output != OUTPUT:
            raise FileFormatError(f"the last step must write {OUTPUT!r}, it writes "
                                  f"{self.steps[-1].output!r}")

    def binary_weight_bits(self) -> int:
        """Sign bits of all binary layers (one per weight)."""
        return sum(layer.out_channels * layer.in_channels for layer in self.layers)
