"""Model cards: what an exported artefact is, where it came from and how well it does.

A card is a versioned JSON document written beside the artefact (``model_card.json``),
with a short Markdown rendering (``model_card.md``) for people. :func:`ofa_search.export`
fills it; this module only fixes its fields, reads it back and renders it.

Fields (``MODEL_CARD_VERSION`` 1)::

    format, format_version, created
    arch {string, space, resolution, width_mult, dict}, macs_m, params_m
    input {shape, dtype, layout, mean, std, value_range}   preprocessing the model expects
    supernet {checkpoint, sha256, epoch, strategy}   checkpoint: its path relative to the
                                                    workspace, or its file name when outside
    dataset {name, split, samples, accuracy, calib_batches, calib_seed}
    device {id, predicted_latency_ms, latency_predictor, measured_latency_ms,
            measured_iqr_ms, measured_runs, not_measured_reason,
            drift {ratio, low, high, drifted, summary}}                     or null
    artefact {format, file, bytes, sha256}
    verification {runtime, max_abs_diff, tolerance, samples, passed,
                  end_to_end {max_abs_diff, top1_agreement}}   end_to_end: binary packages
                                                    only (verified piece by piece)
    versions {torch, onnx, onnxruntime, safetensors, ofa-search, python}
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ofa_search.atomic import atomic_write_json, atomic_write_text
from ofa_search.errors import FileFormatError
from ofa_search.versioning import require_version

MODEL_CARD_FORMAT = "ofa-search-model-card"
MODEL_CARD_VERSION = 1
CARD_JSON = "model_card.json"
CARD_MARKDOWN = "model_card.md"
_REQUIRED = ("arch", "supernet", "dataset", "artefact", "verification", "versions", "created")


def write_card(out_dir: str | os.PathLike[str], card: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``card`` as ``model_card.json`` and ``model_card.md`` in ``out_dir``
    (atomically, the Markdown first so the JSON marks a complete export)."""
    folder = Path(out_dir)
    data = {"format": MODEL_CARD_FORMAT, "format_version": MODEL_CARD_VERSION, **card}
    md = atomic_write_text(folder / CARD_MARKDOWN, render_markdown(data))
    js = atomic_write_json(folder / CARD_JSON, data)
    return js, md


def read_card(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a card written by :func:`write_card` (a folder or the JSON file); malformed or
    foreign files raise :class:`FileFormatError`."""
    target = Path(path)
    if target.is_dir():
        target = target / CARD_JSON
    try:
        data = json.loads(target.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileFormatError(f"no model card at {target}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FileFormatError(f"{target}: not a JSON model card ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != MODEL_CARD_FORMAT:
        raise FileFormatError(f"{target}: not an ofa-search model card "
                              f"(no 'format': {MODEL_CARD_FORMAT!r})")
    require_version(data, key="format_version", expected=MODEL_CARD_VERSION,
                    what="model card", source=str(target))
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise FileFormatError(f"{target}: model card lacks fields {missing}")
    return data


def _ms(value: Any) -> str:
    return "n/a" if value is None else f"{float(value):.3f} ms"


def _end_to_end(ver: Mapping[str, Any]) -> list[str]:
    e2e = ver.get("end_to_end")
    if not e2e:
        return []
    return [f"- End to end on the same inputs (not checked: a sign at a near tie can flip): "
            f"max |Δ| {e2e['max_abs_diff']:.3g}, top-1 agreement "
            f"{100 * e2e['top1_agreement']:.1f} %"]


def render_markdown(card: Mapping[str, Any]) -> str:
    """A short human-readable rendering of a card."""
    arch, data, art = card["arch"], card["dataset"], card["artefact"]
    ver, sup = card["verification"], card["supernet"]
    lines = [
        f"# Model card: `{arch['string']}`",
        "",
        f"- Search space: `{arch['space']}` (resolution {arch['resolution']}, "
        f"width {arch['width_mult']})",
        f"- MACs: {card['macs_m']:.3f} M, parameters: {card['params_m']:.4f} M",
        f"- Input: {card['input']['shape']} {card['input']['dtype']} "
        f"({card['input']['layout']}), normalised with mean {card['input']['mean']} "
        f"and std {card['input']['std']}",
        f"- Supernet: `{Path(sup['checkpoint']).name}` sha256 `{sup['sha256'][:16]}…` "
        f"(epoch {sup['epoch']})",
        f"- Accuracy: {data['accuracy']:.4f} on {data['name']} `{data['split']}` "
        f"({data['samples']} samples, BN recalibrated on {data['calib_batches']} batches)",
    ]
    device = card.get("device")
    if device:
        measured = _ms(device["measured_latency_ms"])
        if device["measured_latency_ms"] is None and device.get("not_measured_reason"):
            measured += f" ({device['not_measured_reason']})"
        drift = device.get("drift") or {}
        if drift.get("ratio") is not None:
            measured += (f"; this host ran at {drift['ratio']:.3f}x the table's speed "
                         f"(drift check: {drift['low']:.3f}-{drift['high']:.3f})")
        lines += [f"- Device `{device['id']}`: predicted {_ms(device['predicted_latency_ms'])}"
                  f" ({device['latency_predictor']}), measured {measured}"]
    lines += [
        f"- Artefact: `{art['file']}` ({art['format']}, {art['bytes']} bytes), sha256 "
        f"`{art['sha256']}`",
        f"- Verified with {ver['runtime']} on {ver['samples']} test inputs: max |Δ| "
        f"{ver['max_abs_diff']:.3g} (tolerance {ver['tolerance']:.0e})",
        *_end_to_end(ver),
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in card["versions"].items()),
        f"- Created: {card['created']}",
        "",
    ]
    summary = (card.get("compression") or {}).get("summary") or []
    if summary:  # a compressed network (ofa_search.compress): what was done
        lines += ["## Compression", "", *(f"- {line}" for line in summary), ""]
    return "\n".join(lines)
