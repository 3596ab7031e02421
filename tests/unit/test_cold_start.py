"""Each handler's cold start works: a fresh interpreter imports the function's app and answers its
first invocation against a local moto server and management-API stub (bench/cold_import.py's
harness, once per handler, side by side). What the bench times; here only that it works, since
lazy imports fail only on a cold path."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import cold_import  # the bench folder is not a package: on sys.path above


@pytest.fixture(scope="module")
def endpoints() -> Iterator[cold_import.Endpoints]:
    with cold_import.endpoints() as where:
        yield where


def test_every_handler_answers_its_first_invocation_cold(endpoints: cold_import.Endpoints) -> None:
    handlers = cold_import.HANDLERS
    with ThreadPoolExecutor(max_workers=len(handlers)) as pool:  # fresh interpreters, side by side
        samples: list[tuple[Any, str]] = list(pool.map(lambda h: cold_import.run_sample(endpoints, h), handlers))
    for handler, (sample, stderr) in zip(handlers, samples, strict=True):
        assert handler.check(sample.result), (handler.name, sample.result, stderr[-2000:])
        assert sample.import_s > 0 and sample.invoke_s > 0
    # The fan-out's first invocation reached its subscriber through the management API.
    assert endpoints.management.requests["execute-api:POST"] >= 1


def test_a_failing_first_invocation_is_reported_not_passed(endpoints: cold_import.Endpoints) -> None:
    # The harness must not mistake a handler that fails for a fast one: a $connect without a
    # token answers 401, which the websocket check refuses.
    websocket = next(h for h in cold_import.HANDLERS if h.name == "websocket")
    tokenless = cold_import.Handler("websocket", lambda _: cold_import._sample("websocket_connect"), websocket.check)
    (endpoints.folder / "websocket.json").unlink(missing_ok=True)
    try:
        sample, _ = cold_import.run_sample(endpoints, tokenless)
    finally:
        (endpoints.folder / "websocket.json").unlink(missing_ok=True)
    assert sample.result["statusCode"] == 401
    assert not websocket.check(sample.result)
