"""Genomes: the arrays the evolution works on price and decode exactly as archs do."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from search_objective import MacsProxy

from ofa_search.arch import Arch
from ofa_search.search import ArchEncoding, CachedEvaluator, run_search
from ofa_search.search.genomes import GenomeCodec, GenomeLatency, TablePrices
from ofa_search.workspace import Workspace
from predictors.loading import load_latency_predictor


def _codec(device: str) -> tuple[GenomeCodec, object]:
    latency, _ = load_latency_predictor(Workspace("unused"), device, "lut")
    table = latency.table  # type: ignore[attr-defined]
    enc = ArchEncoding.for_table(table.space, resolutions=table.resolutions,
                                 width_mult=table.width_mult)
    return GenomeCodec(enc), latency


@pytest.mark.parametrize("device", ["cpu-ort-1t", "cpu-ort-1t-ofa", "note10-tflite"])
def test_table_prices_equal_the_predictor(device: str) -> None:
    codec, latency = _codec(device)
    rng = np.random.default_rng(0)
    prices = TablePrices.of(codec, latency, rng)
    assert prices is not None
    genomes = codec.sample(rng, 300)
    archs = codec.to_archs(genomes)
    np.testing.assert_allclose(prices.latency(genomes), latency.predict(archs),  # type: ignore[attr-defined]
                               rtol=1e-12, atol=0)


@pytest.mark.parametrize("device", ["cpu-ort-1t", "cpu-ort-1t-ofa"])
def test_table_prices_follow_the_network_model(device: str) -> None:
    codec, latency = _codec(device)
    latency.table.unit_scale, latency.table.per_unit_ms = 1.15, -0.004  # type: ignore[attr-defined]
    rng = np.random.default_rng(2)
    prices = TablePrices.of(codec, latency, rng)
    assert prices is not None
    genomes = codec.sample(rng, 300)
    archs = codec.to_archs(genomes)
    table = latency.table  # type: ignore[attr-defined]
    expected = [table.predict(a) for a in archs]
    np.testing.assert_allclose(prices.latency(genomes), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(latency.predict(archs), expected, rtol=1e-12, atol=0)  # type: ignore[attr-defined]


def test_decoded_archs_are_valid_and_round_trip() -> None:
    codec, _ = _codec("cpu-ort-1t-ofa")
    rng = np.random.default_rng(1)
    genomes = codec.sample(rng, 200)
    for arch in codec.to_archs(genomes):
        fields = {f.name: getattr(arch, f.name) for f in dataclasses.fields(Arch)}
        assert Arch(**fields) == arch  # the validating constructor agrees
        assert hash(Arch(**fields)) == hash(arch)
    again = codec.to_archs(codec.from_archs(codec.to_archs(genomes), rng))
    assert again == codec.to_archs(genomes)


@pytest.mark.parametrize("encoding", [
    ArchEncoding("mbv3_small28"),
    ArchEncoding("ofa_mbv3"),  # a width parameter
    ArchEncoding("mbv3_small28_mp", precisions=("fp32", "int8")),  # a precision per stage
], ids=["mbv3_small28", "ofa_mbv3-widths", "mbv3_small28_mp-int8"])
def test_params_round_trip(encoding: ArchEncoding) -> None:
    codec = GenomeCodec(encoding)
    rng = np.random.default_rng(5)
    g = codec.sample(rng, 100)
    params = codec.to_params(g)
    assert all(list(p) == list(encoding.distributions()) for p in params)
    for p in params:  # every value is one of its distribution's choices, as Optuna needs
        for name, dist in encoding.distributions().items():
            assert p[name] in dist.choices
    assert [encoding.decode(p) for p in params] == codec.to_archs(g)
    back = codec.from_params(params)
    for name in ("res", "width", "depth", "prec", "kernel", "expand"):
        assert (getattr(back, name) == getattr(g, name)).all(), name  # inactive slots too


def test_bad_params_are_errors() -> None:
    codec = GenomeCodec(ArchEncoding("mbv3_small28"))
    params = codec.to_params(codec.sample(np.random.default_rng(0), 1))[0]
    with pytest.raises(ValueError, match=r"parameter 's0.b1.k' = 4 is not one of \[3, 5, 7\]"):
        codec.from_params([{**params, "s0.b1.k": 4}])
    del params["res"]
    with pytest.raises(ValueError, match="parameter 'res' is missing"):
        codec.from_params([params])


@pytest.mark.parametrize(("kind", "gathered"), [("lut", True), ("learned", False)])
def test_genome_latency_is_the_model_prediction(kind: str, gathered: bool) -> None:
    codec, _ = _codec("cpu-ort-1t")
    model, _ = load_latency_predictor(Workspace("unused"), "cpu-ort-1t", kind)
    latency = GenomeLatency(codec, model)
    assert (latency.table is not None) == gathered
    genomes = codec.sample(np.random.default_rng(6), 100)
    np.testing.assert_allclose(latency(genomes), model.predict(codec.to_archs(genomes)),  # type: ignore[attr-defined]
                               rtol=1e-12, atol=0)


def test_operators() -> None:
    codec, _ = _codec("note10-tflite")
    rng = np.random.default_rng(2)
    g = codec.sample(rng, 500)
    assert codec.to_archs(codec.mutate(g, rng, 0.0)) == codec.to_archs(g)
    assert codec.to_archs(codec.crossover(g, g, rng)) == codec.to_archs(g)
    changed = codec.mutate(g, rng, 1.0)
    assert (changed.width == g.width).all()  # the width is never mutated
    # mutation at probability 1 resamples every gene: about 2/3 of kernel genes change
    share = float((changed.kernel != g.kernel).mean())
    assert 0.6 < share < 0.73
    refilled = codec.refill(g, rng)
    active = codec.active(g)
    assert (refilled.kernel[active] == g.kernel[active]).all()
    assert codec.to_archs(refilled) == codec.to_archs(g)  # inactive slots do not matter


def test_learned_latency_has_no_table_prices() -> None:
    codec, _ = _codec("cpu-ort-1t")
    learned, kind = load_latency_predictor(Workspace("unused"), "cpu-ort-1t", "learned")
    assert kind == "learned"
    assert TablePrices.of(codec, learned, np.random.default_rng(0)) is None


def test_restarts_split_the_trials_and_keep_the_best() -> None:
    latency, _ = load_latency_predictor(Workspace("unused"), "cpu-ort-1t", "lut")
    enc = ArchEncoding("mbv3_small28")
    runs = [run_search(enc, CachedEvaluator(MacsProxy(), latency), budget_ms=0.2,
                       engine="evolution", n_trials=900, seed=3, restarts=3,
                       record_trials=False) for _ in range(2)]
    result = runs[0]
    assert result.n_trials == 900 and result.best is not None
    assert result.best.latency_ms <= 0.2
    feasible = [e.accuracy for e in result.evaluations if e.latency_ms <= 0.2]
    assert result.best.accuracy == max(feasible)
    assert runs[1].best is not None and runs[1].best.arch == result.best.arch  # seeded
    with pytest.raises(ValueError, match="restarts must be >= 1"):
        run_search(enc, CachedEvaluator(MacsProxy(), latency), budget_ms=0.2,
                   engine="evolution", n_trials=10, restarts=0)
