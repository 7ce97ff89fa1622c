"""Per-precision-mode overheads of a latency table: stored, loaded, used by the table and
by the LUT predictor; tables without them (every older file) keep one overhead."""

from __future__ import annotations

from pathlib import Path

import pytest
from table_helpers import write_synthetic_table

from ofa_search.arch import Arch
from ofa_search.profiling.lut import REPO_TABLE_DIR, LatencyTable, precision_mode
from ofa_search.profiling.timing import TimingStats
from ofa_search.workspace import Workspace
from predictors.latency import LutLatencyPredictor

MP = "mbv3_small28_mp"
REPO_TABLE = REPO_TABLE_DIR / "cpu-ort-1t.json"


def test_precision_mode_names_the_artefact_kind() -> None:
    base = Arch.smallest(MP)
    assert precision_mode(base) == "fp32"
    assert precision_mode(base.replace(precisions=("int8", "fp32", "fp32", "fp32"))) == "int8"
    assert precision_mode(base.replace(precisions=("int8", "binary", "fp32", "fp32"))) == \
        "binary"


def test_mode_overheads_round_trip_and_price_their_archs(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    table = write_synthetic_table(ws, "mp-test", MP, ("fp32", "int8", "binary"))
    table.overhead_ms, table.overhead_by_mode = -0.1, {"binary": 0.05}
    path = table.save(tmp_path / "t.json")
    loaded = LatencyTable.load(path)
    assert loaded.overhead_by_mode == {"binary": 0.05}
    fp32 = Arch.smallest(MP)
    binary = fp32.replace(precisions=("binary",) * 4)
    int8 = fp32.replace(precisions=("int8",) * 4)
    assert loaded.predict(fp32) == pytest.approx(loaded.unit_sum(fp32) - 0.1)
    assert loaded.predict(binary) == pytest.approx(loaded.unit_sum(binary) + 0.05)
    assert loaded.predict(int8) == pytest.approx(loaded.unit_sum(int8) - 0.1)  # no own
    lut = LutLatencyPredictor(loaded)
    assert list(lut.predict([fp32, binary])) == pytest.approx(
        [loaded.predict(fp32), loaded.predict(binary)])


def test_tables_without_mode_overheads_still_load() -> None:
    table = LatencyTable.load(REPO_TABLE)
    assert table.overhead_by_mode == {}
    arch = Arch.smallest("mbv3_small28")
    assert table.predict(arch) == pytest.approx(table.unit_sum(arch) + table.overhead_ms)


def test_int8_mode_is_validated_on_mixed_subnets_measured_as_exported(tmp_path: Path) -> None:
    """Held-out subnets of a mode mix fp32 and that precision stage by stage (each has one
    stage in it); they are measured through the real int8 export and ONNX Runtime, and
    priced with the mode's own overhead."""
    import ofa_search.quant  # noqa: F401  (registers the timing of int8 units)
    from ofa_search.errors import OfaSearchError
    from ofa_search.profiling.timing import TimingConfig
    from ofa_search.profiling.validate import heldout_archs, validate_table

    ws = Workspace(tmp_path / "ws")
    table = write_synthetic_table(ws, "mp-val", MP, ("fp32", "int8"), resolutions=(16,))
    table.overhead_by_mode = {"int8": 0.25}
    archs = heldout_archs(table, 6, mode="int8")
    assert len(archs) == 6 and all("int8" in a.precisions for a in archs)
    assert all(set(a.precisions) <= {"fp32", "int8"} for a in archs)
    assert any("fp32" in a.precisions for a in archs)  # mixed, not all-int8
    assert heldout_archs(table, 6, mode="int8") == archs  # seeded
    assert all(set(a.precisions) == {"fp32"} for a in heldout_archs(table, 3))

    fast = TimingConfig(warmup=1, min_runs=3, max_runs=10, time_cap_s=0.05)
    report = validate_table(table, n=2, timing=fast, rounds=1, mode="int8")
    assert report.mode == "int8" and report.overhead_ms == 0.25
    assert [row["arch"] for row in report.rows] == [a.to_string() for a in archs[:2]]
    for row, arch in zip(report.rows, archs, strict=False):
        assert row["predicted_ms"] == pytest.approx(table.unit_sum(arch) + 0.25)
        assert row["measured_ms"] > 0
    assert report.save(tmp_path).name == "latency_validation_mp-val_int8.json"
    with pytest.raises(OfaSearchError, match=r"prices precisions \['fp32', 'int8'\], "
                                             r"not 'binary': profile it with --precision"):
        validate_table(table, n=2, mode="binary")


def test_modes_validated_together_carry_their_noise_floor(tmp_path: Path) -> None:
    """fp32 and int8 subnets measured in the same rounds: one report per mode, each with
    the MAPE between the first and the last half of its rounds; one round has none."""
    import ofa_search.quant  # noqa: F401  (registers the timing of int8 units)
    from ofa_search.errors import OfaSearchError
    from ofa_search.metrics import mape
    from ofa_search.profiling.timing import TimingConfig
    from ofa_search.profiling.validate import heldout_archs, noise_halves, validate_modes

    ws = Workspace(tmp_path / "ws")
    table = write_synthetic_table(ws, "mp-two", MP, ("fp32", "int8"), resolutions=(16,))
    fast = TimingConfig(warmup=1, min_runs=3, max_runs=10, time_cap_s=0.05)
    fp32, int8 = validate_modes(table, ("fp32", "int8"), n=2, timing=fast, rounds=2)
    assert (fp32.mode, int8.mode) == ("fp32", "int8")
    assert fp32.modes_together == int8.modes_together == ["fp32", "int8"]
    for report in (fp32, int8):
        expected = heldout_archs(table, 2, mode=report.mode)
        assert [row["arch"] for row in report.rows] == [a.to_string() for a in expected]
        first = [row["measured_first_ms"] for row in report.rows]
        last = [row["measured_last_ms"] for row in report.rows]
        assert report.noise_mape == pytest.approx(mape(first, last))
        assert any("noise floor" in line for line in report.summary_lines())
    (single,) = validate_modes(table, ("int8",), n=1, timing=fast, rounds=1)
    assert single.noise_mape is None and "measured_first_ms" not in single.rows[0]
    with pytest.raises(OfaSearchError, match="modes must be distinct"):
        validate_modes(table, ("int8", "int8"), n=1)
    with pytest.raises(OfaSearchError, match="not 'binary'"):  # before anything is timed
        validate_modes(table, ("fp32", "binary"), n=1)
    stats = [_stats(1.0), _stats(3.0), _stats(2.0), _stats(5.0), _stats(4.0)]
    halves = noise_halves(stats)
    assert halves is not None
    first_half, last_half = halves
    assert (first_half.median_ms, last_half.median_ms) == (2.0, 4.5)
    assert noise_halves(stats[:1]) is None


def _stats(median: float) -> TimingStats:
    return TimingStats(median_ms=median, iqr_ms=0.0, mean_ms=median, min_ms=median,
                       count=1, ci_halfwidth_ms=0.0, converged=True)


def test_mixed_mode_validates_int8_and_binary_stages_in_one_package(tmp_path: Path) -> None:
    """``mixed`` held-out subnets hold int8 and binary stages; they are measured as one
    binary package with QDQ int8 segments and priced with the binary overhead."""
    import ofa_search.binary  # registers the timing of binary units
    import ofa_search.quant  # noqa: F401  (and of int8 units)
    from ofa_search.errors import OfaSearchError
    from ofa_search.profiling.timing import TimingConfig
    from ofa_search.profiling.validate import heldout_archs, validate_table

    ws = Workspace(tmp_path / "ws")
    table = write_synthetic_table(ws, "mp-mix", MP, ("fp32", "int8", "binary"),
                                  resolutions=(16,))
    table.overhead_by_mode = {"int8": 0.25, "binary": 0.5}
    archs = heldout_archs(table, 4, mode="mixed")
    assert len(archs) == 4 and all({"int8", "binary"} <= set(a.precisions) for a in archs)
    fast = TimingConfig(warmup=1, min_runs=3, max_runs=10, time_cap_s=0.05)
    report = validate_table(table, n=1, timing=fast, rounds=1, mode="mixed")
    assert report.mode == "mixed" and report.overhead_ms == 0.5
    (row,) = report.rows
    assert row["predicted_ms"] == pytest.approx(table.unit_sum(archs[0]) + 0.5)
    assert row["measured_ms"] > 0
    int8_only = write_synthetic_table(ws, "mp-int8", MP, ("fp32", "int8"), resolutions=(16,))
    with pytest.raises(OfaSearchError, match=r"not 'binary': profile it with --precision "
                                             r"binary$"):
        heldout_archs(int8_only, 2, mode="mixed")


def test_cheapest_precisions_prices_every_assignment_whole(tmp_path: Path) -> None:
    """The table's cheapest precision per stage: every assignment priced with its mode's
    overhead (a large binary overhead makes int8 win), ties to fp32, bad input named."""
    from itertools import product

    from ofa_search.errors import OfaSearchError

    ws = Workspace(tmp_path / "ws")
    table = write_synthetic_table(ws, "mp-cheap", MP, ("fp32", "int8", "binary"))
    base = Arch.largest(MP).replace(resolution=16)
    # binary units cost a quarter of fp32's, int8 ones half: with no overheads, all binary
    assert table.cheapest_precisions(base).precisions == ("binary",) * 4
    assert table.cheapest_precisions(base, ("fp32", "int8")).precisions == ("int8",) * 4
    # a binary overhead above what binary stages save over int8 ones: int8 everywhere
    saving = table.unit_sum(base.replace(precisions=("int8",) * 4)) - table.unit_sum(
        base.replace(precisions=("binary",) * 4))
    table.overhead_by_mode = {"binary": saving + 1.0}
    best = table.cheapest_precisions(base)
    assert best.precisions == ("int8",) * 4
    assert best.replace(precisions=("fp32",) * 4) == base.replace(precisions=("fp32",) * 4)
    every = [table.predict(base.replace(precisions=p))
             for p in product(("fp32", "int8", "binary"), repeat=4)]
    assert table.predict(best) == pytest.approx(min(every))
    # an int8 overhead that makes every int8 assignment dearer than fp32: fp32 wins
    table.overhead_by_mode = {"int8": 1e3, "binary": 1e3}
    assert table.cheapest_precisions(base).precisions == ("fp32",) * 4
    # ... unless a low-precision stage is asked for: then the cheapest such (all binary)
    assert table.cheapest_precisions(base, low_precision=True).precisions == ("binary",) * 4
    table.overhead_by_mode = {"int8": 1e3, "binary": 2e3}
    assert table.cheapest_precisions(base, low_precision=True).precisions == ("int8",) * 4
    # equal prices (int8 units priced as their fp32 twins): fp32 wins the tie
    for key, entry in list(table.entries.items()):
        if key.endswith(":int8"):
            entry["median_ms"] = table.entries[key[:-len("int8")] + "fp32"]["median_ms"]
    table.overhead_by_mode = {}
    assert table.cheapest_precisions(base, ("int8", "fp32")).precisions == ("fp32",) * 4

    with pytest.raises(OfaSearchError, match="must include 'fp32'"):
        table.cheapest_precisions(base, ("int8", "binary"))
    with pytest.raises(OfaSearchError, match="low_precision needs a precision other"):
        table.cheapest_precisions(base, ("fp32",), low_precision=True)
    fp32_only = write_synthetic_table(ws, "mp-fp32", MP, ("fp32",))
    with pytest.raises(OfaSearchError, match="prices precisions \\['fp32'\\], not 'int8'"):
        fp32_only.cheapest_precisions(base, ("fp32", "int8"))
    assert fp32_only.cheapest_precisions(base).precisions == ("fp32",) * 4
    with pytest.raises(OfaSearchError, match="offers precisions"):
        write_synthetic_table(ws, "plain", "mbv3_small28", ("fp32",)).cheapest_precisions(
            Arch.largest("mbv3_small28").replace(resolution=16), ("fp32", "binary"))


def test_mixed_subnets_take_their_own_overhead_else_binarys(tmp_path: Path) -> None:
    from ofa_search.profiling.lut import MIXED_MODE, overhead_mode

    ws = Workspace(tmp_path / "ws")
    table = write_synthetic_table(ws, "mp-mixed", MP, ("fp32", "int8", "binary"))
    base = Arch.smallest(MP)
    mixed = base.replace(precisions=("int8", "binary", "fp32", "fp32"))
    binary = base.replace(precisions=("fp32", "binary", "fp32", "fp32"))
    int8 = base.replace(precisions=("int8", "fp32", "fp32", "fp32"))
    assert [overhead_mode(a) for a in (base, int8, binary, mixed)] == [
        "fp32", "int8", "binary", MIXED_MODE]
    # a table without a mixed overhead (every one before it) prices mixed subnets as binary
    table.overhead_ms, table.overhead_by_mode = -0.1, {"binary": 0.05}
    assert table.predict(mixed) == pytest.approx(table.unit_sum(mixed) + 0.05)
    assert table.mode_overhead(int8) is None and table.overhead_for(int8) == -0.1
    table.overhead_by_mode = {"binary": 0.05, "int8": 0.02, MIXED_MODE: 0.3}
    loaded = LatencyTable.load(table.save(tmp_path / "t.json"))
    for arch, overhead in ((base, -0.1), (int8, 0.02), (binary, 0.05), (mixed, 0.3)):
        assert loaded.overhead_for(arch) == overhead
        assert loaded.predict(arch) == pytest.approx(loaded.unit_sum(arch) + overhead)
    # the LUT predictor, with an overhead of its own for fp32, keeps the modes' ones
    lut = LutLatencyPredictor(loaded, overhead_ms=0.5)
    assert list(lut.predict([base, mixed, binary])) == pytest.approx(
        [loaded.unit_sum(base) + 0.5, loaded.unit_sum(mixed) + 0.3,
         loaded.unit_sum(binary) + 0.05])


def test_overhead_fit_measures_every_mode_together_and_fits_mixed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The overhead subnets of all modes go through one measurement, alternating, so each
    chunk's rounds hold every mode; a table of int8 and binary units fits ``mixed`` too."""
    import numpy as np

    from ofa_search.profiling.lut import MIXED_MODE, overhead_mode

    table = write_synthetic_table(Workspace(tmp_path / "ws"), "mp-fit", MP,
                                  ("fp32", "int8", "binary"), resolutions=(16,))
    calls = _fit_with_spy(table, monkeypatch, n=2)
    (archs,) = calls  # one measurement of all modes' subnets
    assert [overhead_mode(a) for a in archs] == ["fp32", "int8", "binary", MIXED_MODE] * 2
    assert set(table.overhead_by_mode) == {"int8", "binary", MIXED_MODE}
    meta = table.meta["overhead"]
    for mode in ("int8", "binary", MIXED_MODE):
        gaps = meta[f"gaps_ms_{mode}"]
        assert len(gaps) == 2
        assert table.overhead_by_mode[mode] == pytest.approx(float(np.median(gaps)))
    assert len(table.meta["reference"]["archs"]) == 2
    assert all(overhead_mode(Arch.parse(a, MP)) == "fp32"
               for a in table.meta["reference"]["archs"])


def test_the_overhead_fit_of_an_int8_head_space_prices_each_head_apart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ofa_search.profiling.lut import head_mode

    table = write_synthetic_table(Workspace(tmp_path / "ws"), "mph-fit",
                                  "mbv3_small28_mp_int8head", ("fp32", "binary"),
                                  resolutions=(16,))
    (archs,) = _fit_with_spy(table, monkeypatch, n=1)
    assert [head_mode(a) for a in archs] == ["fp32+fp32head", "binary+fp32head",
                                             "binary+int8head"]
    assert set(table.overhead_by_mode) == {"binary+fp32head", "binary+int8head"}


def _fit_with_spy(table: LatencyTable, monkeypatch: pytest.MonkeyPatch, n: int
                  ) -> list[list[Arch]]:
    """``fit_overhead`` of ``table`` on its real backend (one round), with the subnets of
    each of its calls to ``measure_archs``."""
    import ofa_search.binary  # registers the timing of binary units
    import ofa_search.quant  # noqa: F401  (registers the timing of int8 units)
    from ofa_search.profiling import builder
    from ofa_search.profiling.backends import get_backend
    from ofa_search.profiling.measure import FAST_TIMING

    calls: list[list[Arch]] = []
    real = builder.measure_archs

    def spy(backend, archs, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(list(archs))
        return real(backend, archs, *args, **kwargs)

    monkeypatch.setattr(builder, "measure_archs", spy)
    with get_backend(table.profile(), timing=FAST_TIMING) as backend:
        builder.fit_overhead(table, backend, n=n, rounds=1)
    return calls
