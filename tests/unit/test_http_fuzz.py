"""No input yields a 5xx: seeded random requests against functions/http_api (DESIGN invariant 5)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from tests.conftest import LambdaContext, load_function, sample_event

VALUES: list[Any] = [
    None, True, 0, -1, 1.5, 1e308, "", "x", "\x00", "é" * 300, [], {}, [1, {"a": None}],
    "a" * 70_000, {"a": "b" * 66_000}, "\\ud800",
]  # fmt: skip
KEYS = ["eventId", "type", "payload", "source", "commandId", "action", "target", "extra"]
FEEDS = ["42", "", "a b", "x" * 129, "ok-1", "%2F", "é", "..", "a:b.c-d_e"]
RAW_BODIES = ["{", "[]", "null", '"s"', "", '{"a":}', '{"eventId":"e","type":"t","payload":"\\ud800"}']


def random_request(rnd: random.Random) -> dict[str, Any]:
    kind = rnd.choice(["events", "control", "history"])
    event = sample_event(
        {"events": "http_post_event", "control": "http_post_control", "history": "http_get_history"}[kind]
    )
    path = f"/feeds/{rnd.choice(FEEDS)}/{'control' if kind == 'control' else 'events'}"
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    if kind == "history":
        query = {}
        if rnd.random() < 0.7:
            query["limit"] = rnd.choice(["1", "0", "500", "501", "-5", "abc", "1.5", "", "9" * 20])
        if rnd.random() < 0.5:
            query["cursor"] = rnd.choice(["", "A" * 36, "%%%", "x" * 300, "AQAAAAAAAAAB9tq5ZUAzz0LXZm5Ydy7AimUI"])
        event["queryStringParameters"] = query
    else:
        body = {key: rnd.choice(VALUES) for key in rnd.sample(KEYS, rnd.randint(0, 5))}
        event["body"] = json.dumps(body) if rnd.random() < 0.85 else rnd.choice(RAW_BODIES)
        if rnd.random() < 0.05:
            event["headers"]["content-type"] = rnd.choice(["text/plain", "application/x-www-form-urlencoded"])
    return event


@pytest.mark.parametrize("seed", range(4))
def test_no_request_yields_a_5xx(aws: Any, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    from realtime_transport.settings import get_settings

    get_settings.cache_clear()
    monkeypatch.setenv("REALTIME_TOKEN_SECRET", "fuzz-secret-long-enough-for-hs256-keys")
    handler = load_function("http_api").lambda_handler
    rnd = random.Random(seed)
    statuses: set[int] = set()
    for _ in range(150):
        event = random_request(rnd)
        response = handler(event, LambdaContext())
        status = response["statusCode"]
        statuses.add(status)
        assert status < 500, (event.get("rawPath"), event.get("body", "")[:200], response["body"][:300])
        body = json.loads(response["body"])
        if status >= 400:
            assert body.get("error") and body.get("message"), body
    assert {200, 201} & statuses and {400, 422} <= statuses  # the generator reaches both sides
    get_settings.cache_clear()
