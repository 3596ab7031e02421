"""Property-based tests of the HTTP API from its own /openapi.json (schemathesis).

Schemathesis reads the running local stack's document and generates requests for every
operation (feeds, rooms and the document itself): valid ones from the schemas, and invalid
ones (wrong types, missing fields, bodies the schema refuses). Every answer must be no 5xx,
have a status the document lists for that operation, carry a body that validates against the
schema documented for that status, and the content type it documents.

`make test` runs a bounded number of examples per operation (SCHEMATHESIS_MAX_EXAMPLES,
default 10: a few seconds per operation); `make fuzz` runs many more.

Requests carry a subscriber token for every feed and room (the history routes verify it; the
others ignore it): with one, history answers are generated past the 401. The local stack does
not check SigV4, so the IAM routes' 403 is out of reach here, as in test_openapi_contract.py.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from realtime_transport import tokens
from realtime_transport.secrets import DEVELOPMENT_SECRET

from .conftest import Stack

pytestmark = pytest.mark.integration

MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "10"))
CASES: Counter[str] = Counter()
TOKEN = tokens.issue(DEVELOPMENT_SECRET.encode(), sub="schemathesis", channels=["feed_*", "room_*"], ttl_seconds=3600)


@pytest.fixture(scope="module")
def api_schema(stack: Stack) -> Iterator[Any]:
    yield schemathesis.openapi.from_url(stack.url + "/openapi.json")
    # The figure `make fuzz` prints (pytest -s): cases sent, per operation.
    print(f"\nschemathesis: {sum(CASES.values())} cases over {len(CASES)} operations: {dict(CASES)}")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("SCHEMATHESIS_RANDOM") is None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_documented(case: Case) -> None:
    CASES[f"{case.method} {case.path}"] += 1
    headers = {"authorization": f"Bearer {TOKEN}"}
    case.call_and_validate(
        headers=headers,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_headers_conformance,
            response_schema_conformance,
        ],
    )


def test_a_path_parameter_no_id_can_be_is_a_422_not_a_404(stack: Stack) -> None:
    # Found by schemathesis: API Gateway routes /feeds/{feedId}/events for any segment, but
    # Powertools' rule refuses a control character, which answered an undocumented 404.
    for path in ("/feeds/%C2%84/events", "/rooms/%C2%84/members"):
        request = urllib.request.Request(  # noqa: S310 - loopback only
            stack.url + path, headers={"authorization": f"Bearer {TOKEN}"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)  # noqa: S310
        assert refused.value.code == 422, path
        body = json.loads(refused.value.read())
        assert body["error"] == "validation_error"
        assert [(d["field"], d["location"]) for d in body["details"]] == [(path.split("/")[1][:-1] + "Id", "path")]
