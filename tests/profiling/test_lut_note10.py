"""once-for-all's Note10 table, converted: the tutorial's 24.73 ms result and its coverage."""

from __future__ import annotations

from pathlib import Path

import pytest

from ofa_search.arch import Arch
from ofa_search.errors import LutMissError
from ofa_search.profiling.builder import enumerate_units
from ofa_search.profiling.lut import find_table
from ofa_search.profiling.ofa_import import import_note10, ofa_keys

# once-for-all's Note10 table, vendored with its provenance (tests/data/ofa/README.md)
REFERENCE = Path(__file__).resolve().parents[1] / "data" / "ofa" / "note10_lut_full.json"
# once-for-all tutorial: the Note10 <= 25 ms search result (searched_archs.json, first entry)
TUTORIAL = {"ks": [5, 3, 3, 3, 5, 3, 3, 3, 7, 7, 3, 3, 5, 5, 7, 3, 3, 3, 5, 3],
            "e": [3, 3, 3, 3, 4, 4, 3, 3, 6, 3, 4, 3, 4, 4, 4, 3, 6, 6, 6, 3],
            "d": [2, 2, 3, 4, 3], "r": 192, "w": 1.2}


def test_tutorial_arch_predicts_24_73_ms() -> None:
    table = find_table("note10-tflite")
    assert table.space == "ofa_mbv3" and table.width_mult == 1.2
    assert table.resolutions == (160, 176, 192, 208, 224)
    assert table.predict(Arch.from_ofa_dict(TUTORIAL)) == pytest.approx(24.73, abs=0.005)


def test_uncovered_resolution_is_a_clear_error() -> None:
    table = find_table("note10-tflite")
    arch = Arch.from_ofa_dict({**TUTORIAL, "r": 200})
    with pytest.raises(LutMissError, match=r"resolution 200.*\[160, 176, 192, 208, 224\]"):
        table.predict(arch)
    assert not table.covers(arch)


def test_import_reproduces_shipped_table() -> None:
    imported = import_note10(REFERENCE)
    shipped = find_table("note10-tflite")
    assert imported.entries == shipped.entries
    assert imported.resolutions == shipped.resolutions
    assert imported.meta["missing"] == {}


def test_import_leaves_out_incomplete_resolutions() -> None:
    shipped = find_table("note10-tflite")
    # rebuild once-for-all's format for 160 and 176 px from the shipped table, minus a key
    raw: dict[str, dict[str, object]] = {"160": {}, "176": {}}
    for res in (160, 176):
        for unit in enumerate_units("ofa_mbv3", 1.2, [res]):
            keys = ofa_keys(unit)
            ms = shipped.entries[unit.key]["median_ms"] / len(keys)
            for key in keys:
                raw[str(res)][key] = {"mean": ms, "std": 0.0, "count": 5}
    dropped = next(k for k in raw["176"] if k.startswith("Logits"))
    del raw["176"][dropped]
    table = import_note10(raw)
    assert table.resolutions == (160,)
    assert table.meta["missing"] == {"176": [dropped]}
    arch = Arch.from_ofa_dict({**TUTORIAL, "r": 160})
    assert table.predict(arch) == pytest.approx(shipped.predict(arch))
