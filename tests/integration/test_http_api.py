"""Producers and history over real HTTP against `realtime-transport dev`."""

from __future__ import annotations

import json
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from typing import Any

import pytest

from .conftest import Http, Stack, start_stack, stop_stack

pytestmark = pytest.mark.integration


def feed() -> str:
    return f"it-{uuid.uuid4().hex[:10]}"


def test_publish_then_read(http: Http) -> None:
    feed_id = feed()
    status, body = http.post(
        f"/feeds/{feed_id}/events", {"eventId": "e-1", "type": "order.created", "payload": {"n": 1}}
    )
    assert status == 201 and body["duplicate"] is False
    event = body["event"]
    assert event["channel"] == f"feed_{feed_id}" and event["seq"] == 1
    assert event["data"]["feedId"] == feed_id and event["data"]["payload"] == {"n": 1}
    assert event["metadata"] == {"source": "api"} and event["idempotencyKey"] == "e-1"
    status, page = http.get(f"/feeds/{feed_id}/events")
    assert status == 200 and page["items"] == [event]
    assert page["hasMore"] is False and page["truncated"] is False and page["nextCursor"]


def test_control_command(http: Http) -> None:
    feed_id = feed()
    status, body = http.post(f"/feeds/{feed_id}/control", {"commandId": "c-1", "action": "pause", "target": "all"})
    assert status == 201
    assert body["event"]["type"] == "feed.control"
    assert set(body["event"]["data"]) == {"action", "target", "requestedAt"}
    status, again = http.post(f"/feeds/{feed_id}/control", {"commandId": "c-1", "action": "pause", "target": "all"})
    assert status == 200 and again["duplicate"] and again["event"] == body["event"]


def test_32_concurrent_retries_give_one_201(http: Http) -> None:
    feed_id = feed()
    body = {"eventId": "retry-me", "type": "order.created", "payload": {"total": 12.5}}
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda _: http.post(f"/feeds/{feed_id}/events", body), range(32)))
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] * 31 + [201]
    assert len({(r["event"]["id"], r["event"]["seq"], r["event"]["data"]["receivedAt"]) for _, r in results}) == 1
    status, page = http.get(f"/feeds/{feed_id}/events")
    assert status == 200
    assert [e["idempotencyKey"] for e in page["items"]] == ["retry-me"]


def test_four_producers_fifty_events_are_gapless(http: Http) -> None:
    feed_id = feed()

    def produce(producer: int) -> list[int]:
        seqs = []
        for n in range(50):
            status, body = http.post(
                f"/feeds/{feed_id}/events", {"eventId": f"{producer}-{n}", "type": "t", "payload": n}
            )
            assert status == 201
            seqs.append(body["event"]["seq"])
        return seqs

    with ThreadPoolExecutor(4) as pool:
        seqs = sorted(s for batch in pool.map(produce, range(4)) for s in batch)
    assert seqs == list(range(1, 201))
    # The stack runs with --history-limit 50: the window holds the last 50.
    status, page = http.get(f"/feeds/{feed_id}/events?limit=500")
    assert status == 200
    assert [e["seq"] for e in page["items"]] == list(range(151, 201))


def test_sixteen_producers_never_fail(http: Http) -> None:
    feed_id = feed()

    def produce(producer: int) -> list[int]:
        return [
            http.post(f"/feeds/{feed_id}/events", {"eventId": f"{producer}-{n}", "type": "t", "payload": n})[0]
            for n in range(3)
        ]

    with ThreadPoolExecutor(16) as pool:
        statuses = [s for batch in pool.map(produce, range(16)) for s in batch]
    assert statuses == [201] * 48
    status, page = http.get(f"/feeds/{feed_id}/events?limit=100")
    assert status == 200
    assert [e["seq"] for e in page["items"]] == list(range(1, 49))


def test_paging_to_the_end_with_limit_one(http: Http) -> None:
    feed_id = feed()
    status, empty = http.get(f"/feeds/{feed_id}/events")
    assert status == 200 and empty["items"] == [] and not empty["hasMore"]
    for n in range(5):
        http.post(f"/feeds/{feed_id}/events", {"eventId": f"e{n}", "type": "t", "payload": n})
    seen, cursor, pages = [], empty["nextCursor"], 0
    while True:
        status, page = http.get(f"/feeds/{feed_id}/events?limit=1&cursor={cursor}")
        assert status == 200 and len(page["items"]) <= 1
        pages += 1
        seen += [e["data"]["payload"] for e in page["items"]]
        cursor = page["nextCursor"]
        if not page["hasMore"]:
            break
    assert seen == [0, 1, 2, 3, 4] and pages == 5
    status, tail = http.get(f"/feeds/{feed_id}/events?limit=1&cursor={cursor}")
    assert tail["items"] == [] and tail["hasMore"] is False and tail["nextCursor"] == cursor


def test_a_cursor_from_another_channel_is_a_400(http: Http) -> None:
    a, b = feed(), feed()
    http.post(f"/feeds/{a}/events", {"eventId": "x", "type": "t", "payload": 1})
    http.post(f"/feeds/{b}/events", {"eventId": "x", "type": "t", "payload": 1})
    cursor = http.get(f"/feeds/{a}/events")[1]["nextCursor"]
    status, body = http.get(f"/feeds/{b}/events?cursor={cursor}")
    assert status == 400 and body["error"] == "invalid_cursor" and "another channel" in body["message"]


def test_key_reuse_with_another_payload_is_a_409(http: Http) -> None:
    feed_id = feed()
    http.post(f"/feeds/{feed_id}/events", {"eventId": "k", "type": "t", "payload": 1})
    status, body = http.post(f"/feeds/{feed_id}/events", {"eventId": "k", "type": "t", "payload": 2})
    assert status == 409 and body["error"] == "idempotency_conflict"


def test_openapi_document(http: Http) -> None:
    status, document = http.get("/openapi.json")
    assert status == 200 and document["openapi"].startswith("3.")
    assert set(document["paths"]) >= {"/feeds/{feedId}/events", "/feeds/{feedId}/control"}


BAD_REQUESTS: list[tuple[str, str, bytes | None, int, str]] = [
    ("POST", "/feeds/{f}/events", b"{", 400, "body"),
    ("POST", "/feeds/{f}/events", b"[]", 400, "body"),
    ("POST", "/feeds/{f}/events", b"", 400, "body"),
    ("POST", "/feeds/{f}/events", b'"just a string"', 400, "body"),
    ("POST", "/feeds/{f}/events", b'{"type":"t","payload":1}', 422, "eventId"),
    ("POST", "/feeds/{f}/events", b'{"eventId":"","type":"t","payload":1}', 422, "eventId"),
    (
        "POST",
        "/feeds/{f}/events",
        json.dumps({"eventId": "x" * 257, "type": "t", "payload": 1}).encode(),
        422,
        "eventId",
    ),
    ("POST", "/feeds/{f}/events", b'{"eventId":"a\\u0000b","type":"t","payload":1}', 422, "eventId"),
    ("POST", "/feeds/{f}/events", b'{"eventId":"e","payload":1}', 422, "type"),
    ("POST", "/feeds/{f}/events", json.dumps({"eventId": "e", "type": "t" * 129, "payload": 1}).encode(), 422, "type"),
    ("POST", "/feeds/{f}/events", b'{"eventId":"e","type":"t"}', 422, "payload"),
    ("POST", "/feeds/{f}/events", b'{"eventId":"e","type":"t","payload":1,"source":""}', 422, "source"),
    (
        "POST",
        "/feeds/{f}/events",
        json.dumps({"eventId": "e", "type": "t", "payload": 1, "source": "s" * 65}).encode(),
        422,
        "source",
    ),
    ("POST", "/feeds/{f}/events", b'{"eventId":"e","type":"t","payload":1,"extra":true}', 422, "extra"),
    ("POST", "/feeds/{f}/events", b'{"eventId":5,"type":"t","payload":1}', 422, "eventId"),
    ("POST", "/feeds/{f}/events", json.dumps({"eventId": "e", "type": "t", "payload": "x" * 70_000}).encode(), 413, ""),
    ("POST", "/feeds/{f}/events", b'{"eventId": "e", "type": "t", "payload": "' + b"x" * 70_000 + b'"', 413, ""),
    ("POST", "/feeds/bad%20feed/events", b'{"eventId":"e","type":"t","payload":1}', 422, "feedId"),
    ("POST", "/feeds/" + "f" * 129 + "/events", b'{"eventId":"e","type":"t","payload":1}', 422, "feedId"),
    ("POST", "/feeds/{f}/control", b'{"action":"pause"}', 422, "commandId"),
    ("POST", "/feeds/{f}/control", b'{"commandId":"c"}', 422, "action"),
    ("GET", "/feeds/{f}/events?limit=0", None, 422, "limit"),
    ("GET", "/feeds/{f}/events?limit=501", None, 422, "limit"),
    ("GET", "/feeds/{f}/events?limit=ten", None, 422, "limit"),
    ("GET", "/feeds/{f}/events?cursor=not-a-cursor", None, 400, "cursor"),
    ("GET", "/feeds/{f}/events?cursor=" + "A" * 36, None, 400, "cursor"),
    ("DELETE", "/feeds/{f}/events", None, 405, ""),
    ("PUT", "/feeds/{f}/control", b"{}", 405, ""),
    ("GET", "/nowhere", None, 404, ""),
    ("POST", "/feeds/{f}", b"{}", 404, ""),
    ("POST", "/feeds/{f}/events", b'{"eventId":"e","type":"t","payload":NaN}', 400, "body"),
    ("POST", "/feeds/{f}/events", b'{"eventId":"e","type":"t","payload":"\xff"}', 400, "body"),
]


@pytest.mark.parametrize(("method", "path", "raw", "status", "field"), BAD_REQUESTS)
def test_bad_requests_get_a_4xx_that_names_the_problem_and_store_nothing(
    http: Http, method: str, path: str, raw: bytes | None, status: int, field: str
) -> None:
    feed_id = feed()
    got, body = http.request(method, path.replace("{f}", feed_id), raw=raw)
    assert got == status, body
    assert isinstance(body, dict) and set(body) == {"error", "message", "details"} and body["message"], body
    if field:
        assert field in {d["field"] for d in body["details"]}, body
    assert http.get(f"/feeds/{feed_id}/events")[1]["items"] == []


def send(stack: Stack, method: str, path: str, raw: bytes | None, headers: dict[str, str]) -> tuple[int, Any, Any]:
    """One request with exactly these headers (urllib would add a content type of its own)."""
    url = urllib.parse.urlsplit(stack.url)
    connection = HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
    try:
        connection.request(method, path, body=raw, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        return response.status, json.loads(payload) if payload else None, response.headers
    finally:
        connection.close()


NOT_JSON_BODIES: list[tuple[str, dict[str, str], bytes, int, str]] = [
    # What `curl -d '...'` sends without -H: API Gateway base64-encodes a form body.
    ("form", {"content-type": "application/x-www-form-urlencoded"}, b"eventId=e&type=t&payload=1", 415, "content-type"),
    ("json as form", {"content-type": "application/x-www-form-urlencoded"}, b'{"eventId":"e"}', 415, "content-type"),
    ("multipart, no boundary", {"content-type": "multipart/form-data"}, b'{"eventId":"e"}', 415, "content-type"),
    (
        "multipart",
        {"content-type": "multipart/form-data; boundary=b"},
        b'--b\r\nContent-Disposition: form-data; name="eventId"\r\n\r\ne\r\n--b--\r\n',
        415,
        "content-type",
    ),
    (
        "text",
        {"content-type": "text/plain;charset=UTF-8"},
        b'{"eventId":"e","type":"t","payload":1}',
        415,
        "content-type",
    ),
    ("octets", {"content-type": "application/octet-stream"}, b"\x00\xff\x00", 415, "content-type"),
    (
        "latin-1 json",
        {"content-type": "application/json"},
        b'{"eventId":"e","type":"t","payload":"caf\xe9"}',
        400,
        "body",
    ),
    ("binary, no type", {}, b"\x89PNG\r\n\x1a\n\x00", 400, "body"),
]


@pytest.mark.parametrize(
    ("name", "headers", "raw", "status", "field"), NOT_JSON_BODIES, ids=[b[0] for b in NOT_JSON_BODIES]
)
def test_a_body_that_is_not_json_text_is_refused_in_the_error_shape(
    stack: Stack, http: Http, name: str, headers: dict[str, str], raw: bytes, status: int, field: str
) -> None:
    feed_id = feed()
    got, body, _ = send(stack, "POST", f"/feeds/{feed_id}/events", raw, headers)
    assert got == status, body
    assert set(body) == {"error", "message", "details"} and field in {d["field"] for d in body["details"]}, body
    assert http.get(f"/feeds/{feed_id}/events")[1]["items"] == []


def test_a_json_body_without_a_content_type_is_published(stack: Stack) -> None:
    # API Gateway base64-encodes a body without a content type; the function reads it as JSON.
    feed_id = feed()
    status, body, _ = send(
        stack, "POST", f"/feeds/{feed_id}/events", b'{"eventId":"e","type":"t","payload":"\xc3\xa9"}', {}
    )
    assert status == 201 and body["event"]["data"]["payload"] == "\u00e9"


def test_a_405_says_which_methods_the_path_takes(stack: Stack) -> None:
    status, body, headers = send(stack, "DELETE", f"/feeds/{feed()}/events", None, {})
    assert status == 405 and body["error"] == "method_not_allowed"
    assert headers["Allow"] == "GET, POST"


def test_ctrl_c_stops_the_stack_cleanly() -> None:
    running = start_stack()
    assert stop_stack(running) == 0
    assert "stopping" in "".join(running.output)


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/feeds/p%0At/control", 422, "validation_error"),  # a routed path whose id is not a feed id
        ("/nothing%0Ahere", 404, "not_found"),  # routed nowhere: the $default route
    ],
)
def test_a_path_with_an_encoded_newline_is_answered_in_the_error_shape(
    http: Http, path: str, status: int, code: str
) -> None:
    """API Gateway hands such a path to the routes like any other; the local gateway's catch-all
    used `.*`, which stops at a newline, so aiohttp answered a plain-text 404 (found by
    schemathesis)."""
    got, body = http.post(path, {"action": "a", "commandId": "c"})
    assert (got, body["error"]) == (status, code)
