"""Per-layer precision summary (Larq-style) and its CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ofa_search.arch import Arch
from ofa_search.cli import app
from ofa_search.precision.summary import precision_summary
from ofa_search.units import count_macs, count_params

MP = "mbv3_small28_mp"


def test_fp32_arch_has_no_compression_and_counts_match_units() -> None:
    arch = Arch.largest(MP)
    summary = precision_summary(arch)
    assert summary["compression"] == pytest.approx(1.0)
    assert summary["macs_share"]["fp32"] == pytest.approx(1.0)
    assert sum(summary["weights"].values()) == count_params(arch)
    assert sum(summary["macs"].values()) == count_macs(arch)


def test_binary_stages_binarize_pointwise_weights_only() -> None:
    arch = Arch.largest(MP).replace(precisions=("binary",) * 4)
    summary = precision_summary(arch)
    rows = summary["layers"]
    binary = [r for r in rows if r["precision"] == "binary"]
    assert binary and all(r["layer"].endswith(("expand", "project")) for r in binary)
    assert not any(r["layer"].endswith("depthwise") and r["precision"] != "fp32" for r in rows)
    # 1-bit weights take 1/32 of their fp32 memory
    w1 = summary["weights"]["1bit"]
    saved = summary["fp32_memory_bytes"] - summary["memory_bytes"]
    assert saved == pytest.approx(w1 * (4 - 1 / 8))
    assert summary["compression"] > 1.4
    assert 0.3 < summary["macs_share"]["binary"] < 0.7


def test_int8_stage_quantises_its_three_convs() -> None:
    arch = Arch.smallest(MP).replace(precisions=("int8", "fp32", "fp32", "fp32"))
    rows = precision_summary(arch)["layers"]
    int8 = [r["layer"] for r in rows if r["precision"] == "int8"]
    assert int8 == ["unit2.expand", "unit2.depthwise", "unit2.project",
                    "unit3.expand", "unit3.depthwise", "unit3.project"]


def test_cli_precision_summary_text_and_json() -> None:
    arch = Arch.smallest(MP).replace(precisions=("binary", "int8", "fp32", "fp32"))
    runner = CliRunner()
    text = runner.invoke(app, ["arch", "info", "--space", MP, "--precision-summary",
                               arch.to_string()])
    assert text.exit_code == 0, text.output
    assert "compression" in text.output and "MACs by precision: binary" in text.output
    data = runner.invoke(app, ["arch", "info", "--space", MP, "--precision-summary",
                               "--json", arch.to_string()])
    assert data.exit_code == 0
    summary = json.loads(data.output)
    assert summary["weights"]["1bit"] > 0 and summary["weights"]["8bit"] > 0
