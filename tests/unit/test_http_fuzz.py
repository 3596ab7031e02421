"""No input yields a 5xx: seeded random requests against functions/http_api (DESIGN invariant 5).

Requests are built as API Gateway (HTTP API, payload format 2.0) would deliver them: a body with a
text content type arrives as text, any other body (a missing content type included) base64-encoded
with `isBase64Encoded: true`. Some requests are then corrupted the way only a direct invocation
could (a base64 flag on a body that is not base64), and some arrive through the `$default` route.
"""

from __future__ import annotations

import base64
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
RAW_BODIES = [
    "{", "[]", "null", '"s"', "", '{"a":}', '{"eventId":"e","type":"t","payload":"\\ud800"}',
    '{"eventId":"e","type":"t","payload":NaN}', '{"eventId":"e","type":"t","payload":-Infinity}',
    '{"eventId":"e","type":"t","payload":1e999}', '{"eventId":"e","type":"t","payload":' + "7" * 4500 + "}",
    "eventId=e&type=t&payload=1", "\ufeff{}",
]  # fmt: skip
# Bytes no text content type can carry: API Gateway base64-encodes them.
RAW_BYTES = [b"\xff", b'{"eventId":"e","type":"t","payload":"\xe9"}', b"\xed\xa0\x80", b"\x00" * 10, b"\xc3"]
CONTENT_TYPES: list[str | None] = [
    "application/json", "application/json; charset=utf-8", "APPLICATION/JSON", None, "text/plain",
    "application/x-www-form-urlencoded", "multipart/form-data", "multipart/form-data; boundary=b",
    "multipart/form-data; boundary=", "application/octet-stream", "image/png", "application/xml", "",
    "application/json; boundary=x", ";", "*/*",
]  # fmt: skip
NOT_BASE64 = ["abc", "{}", "====", "é", "e30=\n", "A", "@@@@"]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
PATHS = ["/", "/nowhere", "/feeds/42/events", "/feeds/42/control", "/openapi.json", "/feeds/42", "/feeds//events"]
TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript")


def is_text(content_type: str | None) -> bool:
    """Whether API Gateway passes a body of this content type through as text (else: base64)."""
    return bool(content_type) and content_type.strip().lower().startswith(TEXT_TYPES)  # type: ignore[union-attr]


def deliver(event: dict[str, Any], raw: bytes, content_type: str | None, rnd: random.Random) -> None:
    """Put `raw` in the event as API Gateway would, or (rarely) as only a direct invocation could."""
    if content_type is None:
        event["headers"].pop("content-type", None)
    else:
        event["headers"]["content-type"] = content_type
    event["isBase64Encoded"] = False
    if not raw:
        event.pop("body", None)
        return
    if rnd.random() < 0.08:
        event["body"], event["isBase64Encoded"] = rnd.choice(NOT_BASE64), True
        return
    try:
        text = raw.decode("utf-8") if is_text(content_type) else None
    except UnicodeDecodeError:
        text = None
    if text is None or rnd.random() < 0.05:  # a direct invocation may base64 any body
        event["body"], event["isBase64Encoded"] = base64.b64encode(raw).decode(), True
    else:
        event["body"] = text


def random_body(rnd: random.Random) -> bytes:
    roll = rnd.random()
    if roll < 0.7:
        body = {key: rnd.choice(VALUES) for key in rnd.sample(KEYS, rnd.randint(0, 5))}
        return json.dumps(body).encode()
    if roll < 0.9:
        return rnd.choice(RAW_BODIES).encode("utf-8", "surrogatepass")
    return rnd.choice(RAW_BYTES)


def random_request(rnd: random.Random) -> dict[str, Any]:
    kind = rnd.choice(["events", "control", "history", "unrouted"])
    event = sample_event({"events": "http_post_event", "control": "http_post_control"}.get(kind, "http_get_history"))
    if kind == "unrouted":
        # What the $default route delivers: any method, any path, any body.
        method, path = rnd.choice(METHODS), rnd.choice(PATHS)
        event["routeKey"] = event["requestContext"]["routeKey"] = "$default"
        event["requestContext"]["http"]["method"] = method
        event.pop("pathParameters", None)
    else:
        path = f"/feeds/{rnd.choice(FEEDS)}/{'control' if kind == 'control' else 'events'}"
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    if kind == "history":
        query = {}
        if rnd.random() < 0.7:
            query["limit"] = rnd.choice(["1", "0", "500", "501", "-5", "abc", "1.5", "", "9" * 20])
        if rnd.random() < 0.5:
            query["cursor"] = rnd.choice(["", "A" * 36, "%%%", "x" * 300, "AQAAAAAAAAAB9tq5ZUAzz0LXZm5Ydy7AimUI"])
        event["queryStringParameters"] = query
        if rnd.random() < 0.1:
            deliver(event, random_body(rnd), rnd.choice(CONTENT_TYPES), rnd)
    else:
        content_type = "application/json" if rnd.random() < 0.6 else rnd.choice(CONTENT_TYPES)
        deliver(event, random_body(rnd), content_type, rnd)
    return event


def stored(aws: Any) -> int:
    return aws.scan(
        TableName="test-events", FilterExpression="kind <> :h", ExpressionAttributeValues={":h": {"S": "head"}}
    )["Count"]


@pytest.mark.parametrize("seed", range(4))
def test_no_request_yields_a_5xx(aws: Any, monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    from realtime_transport.settings import get_settings

    get_settings.cache_clear()
    monkeypatch.setenv("REALTIME_TOKEN_SECRET", "fuzz-secret-long-enough-for-hs256-keys")
    handler = load_function("http_api").lambda_handler
    rnd = random.Random(seed)
    statuses: set[int] = set()
    count = 0
    for _ in range(200):
        event = random_request(rnd)
        where = (event["routeKey"], event["requestContext"]["http"]["method"], event.get("rawPath"))
        sent = (event.get("headers", {}).get("content-type"), event.get("isBase64Encoded"), event.get("body", "")[:120])
        try:
            response = handler(event, LambdaContext())
        except Exception as exc:  # the function failing: API Gateway answers 500
            pytest.fail(f"{where} {sent}: the handler raised {exc!r}")
        status = response["statusCode"]
        statuses.add(status)
        assert status < 500, (where, sent, response["body"][:300])
        body = json.loads(response["body"])
        if status >= 400:
            assert set(body) == {"error", "message", "details"} and body["error"] and body["message"], body
            assert stored(aws) == count, (where, sent, body)  # a refused request stores nothing
        elif status == 201:
            count += 1
        if event["routeKey"] == "$default":
            assert status in (404, 405), (where, body)  # the catch-all route opens nothing
    # The generator reaches both sides and every kind of refusal.
    assert {200, 201} & statuses and {400, 404, 405, 415, 422} <= statuses, statuses
    get_settings.cache_clear()
