"""Request bodies as API Gateway delivers them (payload format 2.0), fed to functions/http_api on moto.

API Gateway hands a Lambda proxy integration the body as text only for text content types
(text/*, application/json, application/xml, application/javascript); any other body, a missing
content type included, arrives base64-encoded with `isBase64Encoded: true`
(https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-develop-integrations-lambda.html:
"If the content type of the request is binary, the body is base64-encoded"). Whatever arrives, a
refused body gets a 4xx in our error shape and stores nothing.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tests.conftest import sample_event

GOOD = b'{"eventId": "e-1", "type": "order.created", "payload": {"total": 12.5}}'
ERROR_KEYS = {"error", "message", "details"}


@pytest.fixture
def handler(http_handler: Any) -> Any:
    return http_handler


def post(
    handler: Any, body: str | None, *, content_type: str | None = "application/json", base64_encoded: bool = False
) -> tuple[int, dict[str, Any], dict[str, Any]]:
    event = sample_event("http_post_event")
    if content_type is None:
        event["headers"].pop("content-type")
    else:
        event["headers"]["content-type"] = content_type
    if body is None:
        event.pop("body")
    else:
        event["body"] = body
    event["isBase64Encoded"] = base64_encoded
    response = handler(event)
    return response["statusCode"], json.loads(response["body"]), response


def as_gateway_sends(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def stored(aws: Any) -> int:
    return aws.scan(
        TableName="test-events", FilterExpression="kind <> :h", ExpressionAttributeValues={":h": {"S": "head"}}
    )["Count"]


def assert_refused(aws: Any, status: int, body: dict[str, Any], expected: int, field: str) -> None:
    assert status == expected, body
    assert set(body) == ERROR_KEYS, body
    assert body["message"] and field in {d["field"] for d in body["details"]}, body
    assert stored(aws) == 0


# --- what API Gateway delivers for a good request ---------------------------------------


@pytest.mark.parametrize(
    ("content_type", "base64_encoded"),
    [
        ("application/json", False),
        ("application/json; charset=utf-8", False),
        ("Application/JSON; Charset=UTF-8", False),  # media types are case-insensitive (RFC 9110 8.3.1)
        (None, True),  # no content type: API Gateway base64-encodes the body
        ("application/json", True),  # a direct invocation may encode any body
    ],
)
def test_a_json_body_is_accepted_however_api_gateway_encodes_it(
    handler: Any, content_type: str | None, base64_encoded: bool
) -> None:
    body = as_gateway_sends(GOOD) if base64_encoded else GOOD.decode()
    status, created, _ = post(handler, body, content_type=content_type, base64_encoded=base64_encoded)
    assert status == 201, created
    assert created["event"]["data"]["payload"] == {"total": 12.5}


# --- content types: 415 -----------------------------------------------------------------


MULTIPART = (
    b'--xyz\r\nContent-Disposition: form-data; name="eventId"\r\n\r\ne-1\r\n'
    b'--xyz\r\nContent-Disposition: form-data; name="type"\r\n\r\nt\r\n--xyz--\r\n'
)


@pytest.mark.parametrize(
    ("content_type", "raw", "base64_encoded"),
    [
        # curl -d without -H sends this content type; API Gateway base64-encodes such a body.
        ("application/x-www-form-urlencoded", b"eventId=e-1&type=t&payload=1", True),
        ("application/x-www-form-urlencoded", b"eventId=e-1&type=t&payload=1", False),
        ("application/x-www-form-urlencoded", b'{"eventId": "e-1", "type": "t", "payload": 1}', True),
        ("multipart/form-data", GOOD, False),  # no boundary
        ("multipart/form-data", GOOD, True),
        ("multipart/form-data; boundary=xyz", MULTIPART, True),
        ("multipart/form-data; boundary=xyz", b"\xff\xfe not even multipart", True),
        ("text/plain", GOOD, False),
        ("text/plain;charset=UTF-8", GOOD, False),  # what fetch() sends for a string body
        ("application/xml", b"<event/>", False),
        ("application/octet-stream", b"\x00\x01\x02", True),
        ("application/jsonp", GOOD, False),  # not application/json, though it starts like it
        ("image/png", b"\x89PNG\r\n", True),
        ("image/png", b"not base64 at all!", True),
    ],
)
def test_a_body_that_is_not_json_is_a_415(
    handler: Any, aws: Any, content_type: str, raw: bytes, base64_encoded: bool
) -> None:
    body = as_gateway_sends(raw) if base64_encoded else raw.decode("latin-1")
    status, refused, _ = post(handler, body, content_type=content_type, base64_encoded=base64_encoded)
    assert_refused(aws, status, refused, 415, "content-type")
    assert refused["error"] == "unsupported_media_type"
    assert content_type in refused["message"] and "application/json" in refused["message"]


def test_a_415_names_the_content_type_even_without_a_body(handler: Any, aws: Any) -> None:
    status, refused, _ = post(handler, None, content_type="multipart/form-data")
    assert_refused(aws, status, refused, 415, "content-type")


# --- bodies that cannot be read: 400 -------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"eventId": "e-1", "type": "t", "payload": "\xff"}',
        b'{"eventId": "e-1", "type": "t", "payload": "caf\xe9"}',  # Latin-1, not UTF-8
        b"\xef\xbb\xbf\xc3",  # a BOM, then a truncated sequence
        b'{"eventId": "\xed\xa0\x80", "type": "t", "payload": 1}',  # an encoded surrogate is not UTF-8
    ],
)
def test_a_body_that_is_not_utf8_is_a_400(handler: Any, aws: Any, raw: bytes) -> None:
    status, refused, _ = post(handler, as_gateway_sends(raw), base64_encoded=True)
    assert_refused(aws, status, refused, 400, "body")
    assert "UTF-8" in refused["message"]


@pytest.mark.parametrize(
    "body",
    [
        "abc",  # incorrect padding
        GOOD.decode(),  # JSON text flagged as base64
        "e30=\n",  # a newline: API Gateway never sends one
        "éé==",
        "====",
    ],
)
def test_a_base64_flag_on_a_body_that_is_not_base64_is_a_400(handler: Any, aws: Any, body: str) -> None:
    status, refused, _ = post(handler, body, base64_encoded=True)
    assert_refused(aws, status, refused, 400, "body")
    assert "base64" in refused["message"]


def test_an_oversized_body_that_is_not_utf8_is_a_413(handler: Any, aws: Any) -> None:
    raw = b'{"eventId": "e", "type": "t", "payload": "' + b"\xff" * 70_000 + b'"}'
    status, refused, _ = post(handler, as_gateway_sends(raw), base64_encoded=True)
    assert_refused(aws, status, refused, 413, "body")
    assert refused["error"] == "event_too_large"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        # Python's json module reads these, but they are not JSON (RFC 8259 section 6): stored, they
        # came back as null.
        ('{"eventId": "e", "type": "t", "payload": NaN}', 400),
        ('{"eventId": "e", "type": "t", "payload": [Infinity]}', 400),
        ('{"eventId": "e", "type": "t", "payload": {"x": -Infinity}}', 400),
        # JSON, but not a number anything here can hold.
        ('{"eventId": "e", "type": "t", "payload": 1e999}', 422),
        pytest.param('{"eventId": "e", "type": "t", "payload": ' + "9" * 5000 + "}", 422, id="5000-digit-integer"),
    ],
)
def test_numbers_that_cannot_round_trip_are_refused(handler: Any, aws: Any, raw: str, status: int) -> None:
    got, refused, _ = post(handler, raw)
    assert_refused(aws, got, refused, status, "body")
    assert refused["error"] == "validation_error"


# --- routes that take no body ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "status"),
    [({"limit": "0"}, 422), ({"limit": "5"}, 200)],
)
def test_history_ignores_whatever_body_comes_with_it(handler: Any, query: dict[str, str], status: int) -> None:
    event = sample_event("http_get_history")
    event["headers"]["content-type"] = "multipart/form-data"
    event["body"] = "not base64 @@@"
    event["isBase64Encoded"] = True
    event["queryStringParameters"] = query
    event["rawQueryString"] = "&".join(f"{k}={v}" for k, v in query.items())
    response = handler(event)
    assert response["statusCode"] == status, response["body"]


# --- the local stack delivers bodies as API Gateway does ----------------------------------


@pytest.mark.parametrize(
    ("content_type", "as_text"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("text/plain", True),
        ("application/xml", True),
        ("application/javascript", True),
        (None, False),
        ("application/x-www-form-urlencoded", False),
        ("multipart/form-data; boundary=xyz", False),
        ("application/octet-stream", False),
        ("image/png", False),
    ],
)
def test_the_local_gateway_base64_encodes_what_api_gateway_does(content_type: str | None, as_text: bool) -> None:
    from aiohttp.test_utils import make_mocked_request

    from realtime_devstack.http_gateway import HttpRoute, _build_event

    raw = b'{"eventId": "e", "payload": "caf\xc3\xa9"}'
    headers = {"Content-Type": content_type} if content_type else {}
    request = make_mocked_request("POST", "/feeds/42/events", headers=headers)
    route = HttpRoute("POST", "/feeds/{feedId}/events", function=None)  # type: ignore[arg-type]
    event = _build_event(request, route, {"feedId": "42"}, raw)
    assert event["isBase64Encoded"] is not as_text
    assert (event["body"].encode() if as_text else base64.b64decode(event["body"])) == raw
    # Text that is not UTF-8 cannot travel in the (JSON) event as text: it arrives base64-encoded.
    latin1 = _build_event(request, route, {"feedId": "42"}, b"caf\xe9")
    assert latin1["isBase64Encoded"] is True and base64.b64decode(latin1["body"]) == b"caf\xe9"


def test_the_local_gateway_routes_as_api_gateway_does() -> None:
    from realtime_devstack.http_gateway import HttpGateway, HttpRoute

    def route(method: str, path: str) -> HttpRoute:
        return HttpRoute(method, path, function=None)  # type: ignore[arg-type]

    gateway = HttpGateway(
        [
            route("ANY", "/$default"),
            route("ANY", "/files/{proxy+}"),
            route("GET", "/files/{name}"),
            route("GET", "/files/index"),
        ]
    )

    def chosen(method: str, path: str) -> tuple[str, dict[str, str]]:
        found = next((r, p) for r in gateway.routes if (p := r.match(method, path)) is not None)
        return found[0].route_key, found[1]

    assert chosen("GET", "/files/index") == ("GET /files/index", {})
    assert chosen("GET", "/files/a.txt") == ("GET /files/{name}", {"name": "a.txt"})
    assert chosen("GET", "/files/a/b.txt") == ("ANY /files/{proxy+}", {"proxy": "a/b.txt"})
    assert chosen("POST", "/files/a.txt") == ("ANY /files/{proxy+}", {"proxy": "a.txt"})
    assert chosen("DELETE", "/elsewhere") == ("$default", {})
