"""API fuzzing of the HTTP service with Schemathesis, in process (ASGI), over every route
of its OpenAPI schema: no answer may be a 5xx, and every answer must conform to the
schema (documented status code, content type, body schema).

The app is the real one over the workspace :mod:`test_service` builds (tiny supernet
checkpoint, shipped ``cpu-ort-1t`` table, a front); requests carry the API key, so
``POST /exports`` is fuzzed past authentication (an export the fuzzer manages to start
really runs: one at a time, the rest get 429). Rate limiting is off (it would turn most
examples into 429s). Generation is derandomized (the same examples on every run) and
bounded: at most :data:`MAX_EXAMPLES` per route and generation mode (positive: valid by
the schema; negative: invalid), through ``APIOperation.as_strategy`` and Hypothesis (the
pytest plugin's lazy ``from_fixture`` loader does not run under pytest 9).
:func:`test_fuzz_count` prints how many requests were made (docs/service-hardening.md
reports the count).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from test_service import DEVICE, build_workspace, server_paths

MAX_EXAMPLES = 25  # per route and generation mode (hypothesis' max_examples)
API_KEY = "fuzz-test-key"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
# every operation of the schema (test_routes_are_all_fuzzed keeps this list complete);
# routes with no parameter, or one that takes any string, have no invalid input to
# generate: positive mode only
ROUTES = [("GET", "/healthz"), ("GET", "/devices"), ("GET", "/devices/{device_id}"),
          ("POST", "/query"), ("GET", "/queries/{job_id}"), ("POST", "/exports"),
          ("GET", "/exports/{export_id}"), ("GET", "/exports/{export_id}/artefact")]
NO_INVALID_INPUT = {("GET", "/healthz"), ("GET", "/devices"), ("GET", "/devices/{device_id}")}
CASES = [(method, path, mode) for method, path in ROUTES for mode in ("positive", "negative")
         if mode == "positive" or (method, path) not in NO_INVALID_INPUT]
SENT: Counter[str] = Counter()  # "METHOD /path status" of every request made


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, set[str]]]:
    """The schema of the real app (its lifespan started once) and the paths no answer may
    contain."""
    from schemathesis.python.asgi import shutdown_lifespans

    from ofa_search.service.app import create_app

    workspace = build_workspace(tmp_path_factory.mktemp("ws"), front_trials=150)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    app = create_app(workspace, api_key=API_KEY, rate_limit=None, max_pending_exports=0)
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", app), server_paths(workspace)
    finally:
        shutdown_lifespans()
        torch.set_num_threads(threads)


def test_routes_are_all_fuzzed(fuzzed: tuple[Any, set[str]]) -> None:
    schema, _ = fuzzed
    operations = {(op.ok().method.upper(), op.ok().path)
                  for op in schema.get_all_operations()}
    assert operations == set(ROUTES)


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_api_fuzz(fuzzed: tuple[Any, set[str]], method: str, path: str, mode: str) -> None:
    schema, forbidden = fuzzed
    operation = schema[path][method]
    strategy = operation.as_strategy(generation_mode=GenerationMode(mode))

    @given(case=strategy)
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case: Any) -> None:
        response = case.call_and_validate(headers={"Authorization": f"Bearer {API_KEY}"},
                                          checks=CHECKS)
        SENT[f"{method} {path} {response.status_code}"] += 1
        content_type = (response.headers.get("content-type") or [""])[0]
        if content_type.startswith("application/json"):
            leaked = [p for p in forbidden if p in response.text]
            assert not leaked, f"{method} {path} answered server paths {leaked}"

    fuzz()


# numbers as a hostile client sends them (JSON has no NaN, but Python's encoder writes it)
NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(),
                    st.booleans(), st.text(max_size=8), st.none(),
                    st.floats(min_value=0.01, max_value=5.0))


@pytest.mark.parametrize("path", ["/query", "/exports"])
def test_fuzz_on_the_real_device(fuzzed: tuple[Any, set[str]], path: str) -> None:
    """Random generation rarely hits a known device id: here the body names
    ``cpu-ort-1t`` (the workspace's front) and fuzzes the numbers and options, so the
    query engine's own checks are reached."""
    schema, forbidden = fuzzed
    operation = schema[path]["POST"]
    options = st.fixed_dictionaries(
        {"device": st.just(DEVICE), "latency_ms": NUMBERS},
        optional={"precision": st.one_of(st.sampled_from(["fp32", "int8", "binary", "any"]),
                                         st.text(max_size=6)),
                  **({"confidence": NUMBERS} if path == "/query" else
                     {"format": st.sampled_from(["state_dict", "onnx", "auto", "nope"])})})

    @given(body=options)
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(body: dict[str, Any]) -> None:
        # sent as bytes: Python's encoder writes NaN and Infinity, which requests refuses
        case = operation.Case(body=json.dumps(body).encode(), media_type="application/json")
        response = case.call_and_validate(headers={"Authorization": f"Bearer {API_KEY}"},
                                          checks=CHECKS)
        SENT[f"POST {path} {response.status_code} (device {DEVICE})"] += 1
        assert not [p for p in forbidden if p in response.text]

    fuzz()


def test_fuzz_count() -> None:
    """After the fuzz tests of this module: the count of requests (printed with ``-s``),
    within its bound, and no 5xx among them."""
    if not SENT:
        pytest.skip("the fuzz tests did not run in this session")
    total = sum(SENT.values())
    print(f"\nschemathesis: {total} requests")
    for key, count in sorted(SENT.items()):
        print(f"  {count:5d}  {key}")
    assert total <= MAX_EXAMPLES * (len(CASES) + 2)
    assert not [key for key in SENT if int(key.split(" ")[2]) >= 500]
