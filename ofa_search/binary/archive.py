"""The binary package file: one zip archive (suffix ``.ofab``) of a :class:`BinaryProgram`.

Members:

* ``manifest.json`` — ``format`` (``ofa-search-binary-package``), ``format_version``,
  ``arch`` / ``space`` / ``unit``, ``input_shape`` (one sample, ``[C, H, W]``), the
  ``steps``, and the file names of the segments and layers below;
* ``segments/<i>.onnx`` — the non-binary segments, fp32 or QDQ int8 (batch dimension ``N``);
* ``layers/<i>.bits`` — binary weight signs, ``[O, C]`` in C order, one bit each, least
  significant bit first, set = −1 (see :func:`~ofa_search.binary.packing.pack_bits_dense`):
  ``ceil(O·C / 8)`` bytes, 32× less than fp32;
* ``layers/<i>.affine`` — ``float32`` little-endian ``[2, O]``: per-output-channel scale
  (XNOR-Net's ``mean |w|`` times the folded BN factor) and bias (the folded BN shift);
* ``layers/<i>.input_affine`` — ``float32`` little-endian ``[2, C]``: the folded input BN
  (factor, shift) whose sign the layer takes (see :mod:`ofa_search.binary.layer`).

A layer entry holds ``"shortcut": false`` for a layer without its cyclic shortcut, and no
``shortcut`` key otherwise, so packages of complete layers keep their bytes (and a reader
that predates the key refuses a package that needs it, naming the key).

Reading is strict: anything that is not a zip, lacks the manifest, names another format or
version, has unknown keys, or whose members are missing, damaged (zip CRC) or of the wrong
size raises :class:`~ofa_search.errors.FileFormatError`.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from ofa_search.binary.layer import PackedPointwise
from ofa_search.binary.packing import (
    pack_bits_dense,
    pack_weights,
    unpack_bits_dense,
    unpack_signs,
)
from ofa_search.binary.program import BinaryProgram, step_from_dict, step_to_dict
from ofa_search.errors import FileFormatError
from ofa_search.versioning import require_version

FORMAT = "ofa-search-binary-package"
FORMAT_VERSION = 1
SUFFIX = ".ofab"
MANIFEST = "manifest.json"
SIGN_BITS = "lsb-first, set=-1, clear=+1 (x >= 0)"
_KEYS = {"format", "format_version", "arch", "space", "unit", "input_shape", "sign_bits",
         "segments", "layers", "steps"}
_LAYER_KEYS = {"in_channels", "out_channels", "act", "bits", "affine", "input_affine"}
_OPTIONAL_LAYER_KEYS = {"shortcut"}


_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
"""Every member's timestamp (ZIP's earliest): the same program gives the same bytes, whenever
it is written."""


def _zip_entry(name: str, compress_type: int = zipfile.ZIP_STORED) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.compress_type = compress_type
    info.external_attr = 0o644 << 16  # rw-r--r-- where an unzip tool extracts it
    return info


def program_to_bytes(program: BinaryProgram) -> bytes:
    """The package archive of ``program`` (deterministic: no write time in it)."""
    segments = [f"segments/{i}.onnx" for i in range(len(program.segments))]
    layers: list[dict[str, Any]] = []
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, model in zip(segments, program.segments, strict=True):
            archive.writestr(_zip_entry(name), model)
        for i, layer in enumerate(program.layers):
            names = {key: f"layers/{i}.{key}" for key in ("bits", "affine", "input_affine")}
            signs = unpack_signs(layer.weights.reshape(layer.out_channels, -1),
                                 layer.in_channels)
            archive.writestr(_zip_entry(names["bits"]), pack_bits_dense(signs))
            archive.writestr(_zip_entry(names["affine"]), _floats(layer.scale, layer.bias))
            archive.writestr(_zip_entry(names["input_affine"]),
                             _floats(layer.input_scale, layer.input_shift))
            layers.append({"in_channels": layer.in_channels, "out_channels": layer.out_channels,
                           "act": layer.act, **names,
                           **({} if layer.shortcut else {"shortcut": False})})
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "arch": program.arch,
            "space": program.space, "unit": program.unit,
            "input_shape": list(program.input_shape), "sign_bits": SIGN_BITS,
            "segments": segments, "layers": layers,
            "steps": [step_to_dict(step) for step in program.steps],
        }
        archive.writestr(_zip_entry(MANIFEST, zipfile.ZIP_DEFLATED),
                         json.dumps(manifest, indent=1) + "\n")
    return buffer.getvalue()


def _floats(*rows: np.ndarray) -> bytes:
    return np.stack(rows).astype("<f4").tobytes()


def program_from_bytes(data: bytes, source: str = "binary package") -> BinaryProgram:
    """Inverse of :func:`program_to_bytes`; ``source`` names the file in error messages."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise FileFormatError(f"{source}: not an ofa-search binary package (not a zip "
                              "archive)") from None
    with archive:
        if MANIFEST not in archive.namelist():
            raise FileFormatError(f"{source}: not an ofa-search binary package (no {MANIFEST})")
        try:
            manifest = json.loads(_member(archive, MANIFEST, source).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FileFormatError(f"{source}: {MANIFEST} is not valid JSON ({exc})") from None
        _check_manifest(manifest, source)
        segments = tuple(_member(archive, _name(n, source), source)
                         for n in _list(manifest, "segments", source))
        layers = tuple(_read_layer(archive, entry, source)
                       for entry in _list(manifest, "layers", source))
    steps = tuple(step_from_dict(step) for step in _list(manifest, "steps", source))
    try:
        return BinaryProgram(
            input_shape=tuple(_list(manifest, "input_shape", source)), steps=steps,
            segments=segments, layers=layers, arch=manifest["arch"], space=manifest["space"],
            unit=manifest["unit"])
    except FileFormatError as exc:
        raise FileFormatError(f"{source}: {exc}") from None


def _check_manifest(manifest: Any, source: str) -> None:
    if not isinstance(manifest, Mapping):
        raise FileFormatError(f"{source}: {MANIFEST} must hold a JSON object")
    if manifest.get("format") != FORMAT:
        raise FileFormatError(f"{source}: not an ofa-search binary package (format "
                              f"{manifest.get('format')!r}, expected {FORMAT!r})")
    require_version(manifest, key="format_version", expected=FORMAT_VERSION,
                    what="binary package", source=source)
    if set(manifest) != _KEYS:
        raise FileFormatError(f"{source}: {MANIFEST} keys differ: missing "
                              f"{sorted(_KEYS - set(manifest))}, unknown "
                              f"{sorted(set(manifest) - _KEYS)}")
    if manifest["sign_bits"] != SIGN_BITS:
        raise FileFormatError(f"{source}: unknown sign bit convention "
                              f"{manifest['sign_bits']!r}")
    for key in ("arch", "space", "unit"):
        if manifest[key] is not None and not isinstance(manifest[key], str):
            raise FileFormatError(f"{source}: {key} must be a string or null")


def _list(manifest: Mapping[str, Any], key: str, source: str) -> list[Any]:
    value = manifest[key]
    if not isinstance(value, list):
        raise FileFormatError(f"{source}: {key} must be a list, got {type(value).__name__}")
    return value


def _name(value: Any, source: str) -> str:
    if not isinstance(value, str):
        raise FileFormatError(f"{source}: member names must be strings, got {value!r}")
    return value


def _member(archive: zipfile.ZipFile, name: str, source: str) -> bytes:
    try:
        return archive.read(name)
    except KeyError:
        raise FileFormatError(f"{source}: member {name!r} is missing") from None
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise FileFormatError(f"{source}: member {name!r} is damaged ({exc})") from None


def _read_layer(archive: zipfile.ZipFile, entry: Any, source: str) -> PackedPointwise:
    if not isinstance(entry, Mapping) or not _LAYER_KEYS <= set(entry) \
            or set(entry) - _LAYER_KEYS - _OPTIONAL_LAYER_KEYS:
        raise FileFormatError(f"{source}: a layer entry must have the keys "
                              f"{sorted(_LAYER_KEYS)} and may have {sorted(_OPTIONAL_LAYER_KEYS)}"
                              f", got {entry!r}")
    shortcut = entry.get("shortcut", True)
    if not isinstance(shortcut, bool):
        raise FileFormatError(f"{source}: a layer's shortcut must be true or false, got "
                              f"{shortcut!r}")
    c, o = entry["in_channels"], entry["out_channels"]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (c, o)):
        raise FileFormatError(f"{source}: bad layer channels in={c!r} out={o!r}")
    bits = _member(archive, _name(entry["bits"], source), source)
    scale, bias = _read_floats(archive, entry["affine"], o, source)
    input_scale, input_shift = _read_floats(archive, entry["input_affine"], c, source)
    try:
        signs = unpack_bits_dense(bits, (o, c, 1, 1))
        return PackedPointwise(weights=pack_weights(signs), in_channels=c, scale=scale,
                               bias=bias, act=entry["act"], input_scale=input_scale,
                               input_shift=input_shift, shortcut=shortcut)
    except ValueError as exc:
        raise FileFormatError(f"{source}: bad binary layer {entry['bits']}: {exc}") from None


def _read_floats(archive: zipfile.ZipFile, name: Any, channels: int, source: str
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Two float32 rows of ``channels`` values from member ``name``."""
    data = _member(archive, _name(name, source), source)
    if len(data) != 2 * channels * 4:
        raise FileFormatError(f"{source}: {name} has {len(data)} bytes, expected "
                              f"{2 * channels * 4} for {channels} channels")
    rows = np.frombuffer(data, dtype="<f4").astype(np.float32).reshape(2, channels)
    return rows[0].copy(), rows[1].copy()
