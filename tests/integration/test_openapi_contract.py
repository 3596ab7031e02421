"""/openapi.json is true: every answer the running stack gives is one the document lists.

Real requests over real HTTP against `realtime-transport dev`; for each answer, its status is
listed for that operation and its body validates against the schema documented for that status
(`$ref`s resolved within the document), and it carries the headers documented for it (the
rooms' ETag, equal to the version it states; no ETag where none is documented). Paths the
document does not list answer 404, and other methods on a listed path answer 405, both in the
documented error shape.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from http.client import HTTPConnection
from typing import Any

import pytest
import websockets
from jsonschema import Draft202012Validator

from realtime_transport import tokens
from realtime_transport.secrets import DEVELOPMENT_SECRET

from .conftest import Stack

pytestmark = pytest.mark.integration

JSON = {"content-type": "application/json"}
SECRET = DEVELOPMENT_SECRET.encode()
# Documented, but no request to the local stack can produce them: API Gateway's IAM check (the
# local stack does not sign-check), and the function's own failures (configuration, DynamoDB).
NOT_REACHABLE_LOCALLY = {
    ("post", "/feeds/{feedId}/events", 403),
    ("post", "/feeds/{feedId}/control", 403),
    ("post", "/feeds/{feedId}/events", 503),
    ("post", "/feeds/{feedId}/events/batch", 403),
    ("post", "/feeds/{feedId}/control", 503),
    ("get", "/feeds/{feedId}/events", 500),
    ("get", "/feeds/{feedId}/events", 503),
    *{
        (method, template, status)
        for method, template in [
            ("get", "/rooms/{roomId}"),
            ("put", "/rooms/{roomId}/metadata"),
            ("get", "/rooms/{roomId}/members"),
            ("patch", "/rooms/{roomId}/state"),
        ]
        for status in (403, 503)
    },
    ("get", "/rooms/{roomId}/events", 500),
    ("get", "/rooms/{roomId}/events", 503),
}


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


@dataclass
class Contract:
    document: dict[str, Any]
    seen: set[tuple[str, str, int]] = field(default_factory=set)

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any] | None, dict[str, Any] | None]:
        """The document's path template for `path`, its path item and the operation for `method`."""
        for template, item in self.document["paths"].items():
            pattern = "^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template)) + "$"
            if re.match(pattern, path):
                return template, item, item.get(method.lower())
        return path, None, None

    def validate(self, schema: dict[str, Any], instance: Any) -> None:
        # The document's refs are "#/components/...": give the schema the document's components.
        root = {**schema, "components": self.document["components"]}
        errors = sorted(Draft202012Validator(root).iter_errors(instance), key=str)
        assert not errors, [f"{list(error.absolute_path)}: {error.message}" for error in errors]

    def check(self, method: str, path: str, answer: Answer) -> None:
        template, item, operation = self.operation(method, urllib.parse.urlsplit(path).path)
        assert answer.headers.get("content-type", "").startswith("application/json"), answer.headers
        if operation is None:
            # Not an operation of the document: 404 (unknown path) or 405 (another method), in the
            # error shape, with Allow naming exactly the methods the document lists for the path.
            expected = 404 if item is None else 405
            assert answer.status == expected, (method, path, answer)
            self.validate({"$ref": "#/components/schemas/ErrorResponse"}, answer.body)
            if item is not None:
                assert answer.headers["allow"] == ", ".join(sorted(m.upper() for m in item)), answer.headers
            return
        responses = operation["responses"]
        assert str(answer.status) in responses, f"{method} {template} sent {answer.status}, not in {sorted(responses)}"
        documented = responses[str(answer.status)]["content"]["application/json"]["schema"]
        self.validate(documented, answer.body)
        # Headers both ways: each the document lists for this answer is sent, and the ETag is the
        # version the body states; an answer the document gives no ETag sends none.
        headers = responses[str(answer.status)].get("headers", {})
        for name in headers:
            assert name.lower() in answer.headers, (method, template, answer.status, name, answer.headers)
        if "ETag" in headers:
            version = answer.body["state"]["version"] if "state" in answer.body else answer.body["version"]
            assert answer.headers["etag"] == f'"{version}"', answer.headers
        else:
            assert "etag" not in answer.headers, (method, template, answer.status, answer.headers)
        self.seen.add((method.lower(), template, answer.status))


@pytest.fixture(scope="module")
def document(stack: Stack) -> dict[str, Any]:
    answer = send(stack, "GET", "/openapi.json")
    assert answer.status == 200
    assert isinstance(answer.body, dict)
    return answer.body


@pytest.fixture
def contract(document: dict[str, Any]) -> Contract:
    return Contract(document)


def send(
    stack: Stack, method: str, path: str, raw: bytes | None = None, headers: dict[str, str] | None = None
) -> Answer:
    url = urllib.parse.urlsplit(stack.url)
    connection = HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
    try:
        connection.request(method, path, body=raw, headers=headers or {})
        response = connection.getresponse()
        payload = response.read()
        return Answer(
            response.status,
            {name.lower(): value for name, value in response.getheaders()},
            json.loads(payload) if payload else None,
        )
    finally:
        connection.close()


def feed() -> str:
    return f"oa-{uuid.uuid4().hex[:10]}"


def event(event_id: str, payload: Any = 1) -> bytes:
    return json.dumps({"eventId": event_id, "type": "order.created", "payload": payload}).encode()


def exchange(
    contract: Contract, stack: Stack, method: str, path: str, raw: bytes | None = None, **headers: str
) -> Answer:
    answer = send(stack, method, path, raw, {name.replace("_", "-"): value for name, value in headers.items()})
    contract.check(method, path, answer)
    return answer


def test_the_document_is_openapi_3_1(document: dict[str, Any]) -> None:
    from openapi_spec_validator import validate

    assert document["openapi"].startswith("3.1")
    validate(document)


def test_publishing(contract: Contract, stack: Stack) -> None:
    path = f"/feeds/{feed()}/events"
    assert exchange(contract, stack, "POST", path, event("e-1"), **JSON).status == 201
    assert exchange(contract, stack, "POST", path, event("e-1"), **JSON).status == 200  # a retry
    assert exchange(contract, stack, "POST", path, event("e-1", payload=2), **JSON).status == 409  # key reused


def test_control_commands(contract: Contract, stack: Stack) -> None:
    path = f"/feeds/{feed()}/control"
    command = b'{"commandId": "c-1", "action": "pause", "target": {"stream": "ingest"}}'
    assert exchange(contract, stack, "POST", path, command, **JSON).status == 201
    assert exchange(contract, stack, "POST", path, command, **JSON).status == 200
    assert exchange(contract, stack, "POST", path, b'{"commandId": "c-1", "action": "stop"}', **JSON).status == 409
    assert exchange(contract, stack, "POST", path, b'{"commandId": "c-2"}', **JSON).status == 422
    assert exchange(contract, stack, "POST", path, b'{"commandId": ', **JSON).status == 400
    huge = json.dumps({"commandId": "c-3", "action": "a", "target": "x" * 70_000}).encode()
    assert exchange(contract, stack, "POST", path, huge, **JSON).status == 413
    assert exchange(contract, stack, "POST", path, command, content_type="text/plain").status == 415


def test_batch_publishing(contract: Contract, stack: Stack) -> None:
    feed_id = feed()
    path = f"/feeds/{feed_id}/events/batch"
    events = [
        json.loads(event("e-1")),
        json.loads(event("e-1")),  # the same key earlier in the batch: a duplicate
        json.loads(event("e-1", payload=2)),  # ... for another event: 409
        {"eventId": "e-2"},  # invalid: 422
        [1],  # not an object: 400
        json.loads(event("e-3", payload="x" * 70_000)),  # over MaxEventBytes: 413
        json.loads(event("e-4")),
    ]
    answer = exchange(contract, stack, "POST", path, json.dumps({"events": events}).encode(), **JSON)
    assert answer.status == 200
    assert [r["status"] for r in answer.body["results"]] == [201, 200, 409, 422, 400, 413, 201]
    history = exchange(contract, stack, "GET", f"/feeds/{feed_id}/events").body["items"]
    assert [(e["seq"], e["data"]["eventId"]) for e in history] == [(1, "e-1"), (2, "e-4")]
    # A retry of the batch: every stored event a duplicate, nothing new stored.
    again = exchange(contract, stack, "POST", path, json.dumps({"events": events[:1]}).encode(), **JSON)
    assert [(r["status"], r["event"]["id"]) for r in again.body["results"]] == [(200, history[0]["id"])]
    for raw, status in [
        (b'{"events": []}', 400),
        (b'{"events": [', 400),
        (json.dumps({"events": [json.loads(event(f"e-{n}")) for n in range(101)]}).encode(), 413),
        (json.dumps({"events": [json.loads(event(f"e-{n}", "x" * 60_000)) for n in range(20)]}).encode(), 413),
        (b'{"events": "e-1"}', 422),
    ]:
        assert exchange(contract, stack, "POST", path, raw, **JSON).status == status
    assert exchange(contract, stack, "POST", path, b'{"events": []}', content_type="text/plain").status == 415
    assert exchange(contract, stack, "POST", "/feeds/bad%20feed/events/batch", b'{"events": [1]}', **JSON).status == 422
    assert len(exchange(contract, stack, "GET", f"/feeds/{feed_id}/events").body["items"]) == 2


BAD_BODIES: list[tuple[str, bytes, dict[str, str], int]] = [
    ("malformed JSON", b'{"eventId": ', JSON, 400),
    ("not an object", b"[1, 2]", JSON, 400),
    ("no body", b"", JSON, 400),
    ("NaN", b'{"eventId": "e", "type": "t", "payload": NaN}', JSON, 400),
    ("not UTF-8", b'{"eventId": "e", "type": "t", "payload": "\xff"}', JSON, 400),
    ("not UTF-8, no type", b"\xff\xfe\x00", {}, 400),
    ("missing field", b'{"eventId": "e", "type": "t"}', JSON, 422),
    ("unknown field", b'{"eventId": "e", "type": "t", "payload": 1, "extra": 1}', JSON, 422),
    ("number out of range", b'{"eventId": "e", "type": "t", "payload": 1e999}', JSON, 422),
    ("oversized", event("e", "x" * 70_000), JSON, 413),
    ("oversized and malformed", b'{"eventId": "e", "payload": "' + b"x" * 70_000, JSON, 413),
    ("text", event("e"), {"content-type": "text/plain"}, 415),
    ("form", b"eventId=e&type=t&payload=1", {"content-type": "application/x-www-form-urlencoded"}, 415),
    ("multipart, no boundary", event("e"), {"content-type": "multipart/form-data"}, 415),
    ("multipart", b"--b\r\n\r\n--b--\r\n", {"content-type": "multipart/form-data; boundary=b"}, 415),
]


@pytest.mark.parametrize(("name", "raw", "headers", "status"), BAD_BODIES, ids=[case[0] for case in BAD_BODIES])
def test_refused_bodies(
    contract: Contract, stack: Stack, name: str, raw: bytes, headers: dict[str, str], status: int
) -> None:
    path = f"/feeds/{feed()}/events"
    assert exchange(contract, stack, "POST", path, raw, **headers).status == status
    assert exchange(contract, stack, "GET", path).body["items"] == []


def test_a_bad_feed_id(contract: Contract, stack: Stack) -> None:
    assert exchange(contract, stack, "POST", "/feeds/bad%20feed/events", event("e"), **JSON).status == 422


def test_history(contract: Contract, stack: Stack) -> None:
    path = f"/feeds/{feed()}/events"
    for n in range(3):
        exchange(contract, stack, "POST", path, event(f"e-{n}"), **JSON)
    first = exchange(contract, stack, "GET", f"{path}?limit=2").body
    assert [e["seq"] for e in first["items"]] == [2, 3]
    assert exchange(contract, stack, "GET", f"{path}?cursor={first['nextCursor']}").status == 200
    assert exchange(contract, stack, "GET", f"{path}?cursor=not-a-cursor").status == 400
    for limit in ("0", "501", "ten"):
        assert exchange(contract, stack, "GET", f"{path}?limit={limit}").status == 422


TOKENS = [
    (f"Bearer {tokens.issue(SECRET, sub='contract', channels=['feed_*'])}", 200),
    (f"Bearer {tokens.issue(SECRET, sub='contract', channels=['elsewhere'])}", 403),
    ("Bearer not-a-token", 401),
    ("Basic dXNlcjpwYXNz", 401),
]


@pytest.mark.parametrize(("authorization", "status"), TOKENS)
def test_history_tokens(contract: Contract, stack: Stack, authorization: str, status: int) -> None:
    # A token that is present is always checked, even where none is required.
    answer = exchange(contract, stack, "GET", f"/feeds/{feed()}/events", authorization=authorization)
    assert answer.status == status


# --- rooms ---------------------------------------------------------------------------------


def room() -> str:
    return f"oa-room-{uuid.uuid4().hex[:10]}"


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


def test_reading_a_room(contract: Contract, stack: Stack) -> None:
    path = f"/rooms/{room()}"
    answer = exchange(contract, stack, "GET", path)
    assert answer.status == 200 and answer.body["state"] == {"version": 0, "doc": {}}
    assert answer.headers["etag"] == '"0"' and answer.body["memberCount"] == 0
    assert exchange(contract, stack, "GET", "/rooms/" + "x" * 129).status == 422


def test_room_metadata(contract: Contract, stack: Stack) -> None:
    path = f"/rooms/{room()}/metadata"
    answer = exchange(contract, stack, "PUT", path, body({"metadata": {"topic": "roadmap"}}), **JSON)
    assert (answer.status, answer.headers["etag"]) == (200, '"1"')
    assert exchange(contract, stack, "PUT", path, body({"metadata": {"n": 2}}), if_match='"1"', **JSON).status == 200
    stale = exchange(contract, stack, "PUT", path, body({"metadata": {"n": 3}}), if_match='"1"', **JSON)
    assert (stale.status, stale.body["version"]) == (412, 2)
    assert exchange(contract, stack, "PUT", path, body({"metadata": {"a": "x" * 17_000}}), **JSON).status == 413
    assert exchange(contract, stack, "PUT", path, body({"metadata": [1]}), **JSON).status == 422
    assert exchange(contract, stack, "PUT", path, body({"metadata": {}}), if_match="W/x", **JSON).status == 422
    assert exchange(contract, stack, "PUT", path, b'{"metadata": ', **JSON).status == 400
    assert exchange(contract, stack, "PUT", path, body({"metadata": {}}), content_type="text/plain").status == 415
    assert exchange(contract, stack, "GET", path.rsplit("/", 1)[0]).body["metadata"] == {"n": 2}


def test_room_state(contract: Contract, stack: Stack) -> None:
    path = f"/rooms/{room()}/state"
    answer = exchange(contract, stack, "PATCH", path, body({"version": 0, "patch": {"title": "Q3"}}), **JSON)
    assert (answer.status, answer.body, answer.headers["etag"]) == (200, {"version": 1, "doc": {"title": "Q3"}}, '"1"')
    # Stale: fine where nothing changed since, a 409 where something did.
    assert (
        exchange(contract, stack, "PATCH", path, body({"version": 0, "patch": {"owner": "ana"}}), **JSON).status == 200
    )
    conflict = exchange(contract, stack, "PATCH", path, body({"version": 0, "patch": {"title": "Q4"}}), **JSON)
    assert (conflict.status, conflict.body["conflicts"], conflict.body["version"]) == (409, ["/title"], 2)
    operations = {"version": 2, "operations": [{"op": "test", "path": "/title", "value": "Q4"}]}
    failed = exchange(contract, stack, "PATCH", path, body(operations), **JSON)
    assert (failed.status, failed.body["error"]) == (422, "patch_test_failed")
    stale = exchange(contract, stack, "PATCH", path, body({"version": 2, "patch": {"a": 1}}), if_match='"1"', **JSON)
    assert (stale.status, stale.body["version"]) == (412, 2)
    big = body({"version": 2, "patch": {"a": "x" * 66_000}})
    assert exchange(contract, stack, "PATCH", path, big, **JSON).status == 413
    assert exchange(contract, stack, "PATCH", path, body({"version": "2", "patch": {}}), **JSON).status == 422
    assert exchange(contract, stack, "PATCH", path, body({"version": 2, "patch": {}, "x": 1}), **JSON).status == 422
    assert exchange(contract, stack, "PATCH", path, b"[]", **JSON).status == 400
    merge = exchange(
        contract, stack, "PATCH", path, body({"version": 2, "patch": {}}), content_type="application/merge-patch+json"
    )
    assert (merge.status, merge.headers["accept-patch"]) == (415, "application/json")
    assert exchange(contract, stack, "GET", path.rsplit("/", 1)[0]).body["state"]["version"] == 2


async def _joined(stack: Stack, room_id: str, member_id: str) -> Any:
    token = tokens.issue(SECRET, sub=member_id, channels=["room_*"])
    ws = await websockets.connect(f"{stack.ws_url}?token={token}")
    await ws.send(json.dumps({"action": "join", "room": room_id, "member": {"name": member_id}}))
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 15))
        if frame.get("type") in {"joined", "error"} and frame.get("room") == room_id:
            assert frame["type"] == "joined", frame
            return ws


def test_room_members(contract: Contract, stack: Stack) -> None:
    room_id = room()
    path = f"/rooms/{room_id}/members"

    async def scenario() -> None:
        sockets = [await _joined(stack, room_id, f"member-{n}") for n in range(3)]
        try:
            first = exchange(contract, stack, "GET", f"{path}?limit=2")
            assert first.status == 200 and first.body["hasMore"] is True
            rest = exchange(contract, stack, "GET", f"{path}?cursor={first.body['nextCursor']}")
            ids = [m["memberId"] for m in first.body["items"] + rest.body["items"]]
            assert ids == ["member-0", "member-1", "member-2"] and rest.body["nextCursor"] is None
            assert exchange(contract, stack, "GET", f"/rooms/{room_id}").body["memberCount"] == 3
        finally:
            for ws in sockets:
                await ws.close()

    asyncio.run(scenario())
    for query in ("limit=0", "limit=1001", "cursor=not-a-cursor"):
        assert exchange(contract, stack, "GET", f"{path}?{query}").status == 422


def test_room_history(contract: Contract, stack: Stack) -> None:
    room_id = room()
    path = f"/rooms/{room_id}/events"
    exchange(contract, stack, "PATCH", f"/rooms/{room_id}/state", body({"version": 0, "patch": {"a": 1}}), **JSON)
    # The rooms outbox publishes the change from the table's stream, shortly after the write.
    deadline = time.monotonic() + 15
    while not (page := exchange(contract, stack, "GET", path)).body["items"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [(e["type"], e["data"]["version"]) for e in page.body["items"]] == [("room.state", 1)]
    assert exchange(contract, stack, "GET", f"{path}?cursor=not-a-cursor").status == 400
    assert exchange(contract, stack, "GET", f"{path}?limit=0").status == 422


ROOM_TOKENS = [
    (f"Bearer {tokens.issue(SECRET, sub='contract', channels=['room_*'])}", 200),
    (f"Bearer {tokens.issue(SECRET, sub='contract', channels=['feed_*'])}", 403),
    ("Bearer not-a-token", 401),
]


@pytest.mark.parametrize(("authorization", "status"), ROOM_TOKENS)
def test_room_history_tokens(contract: Contract, stack: Stack, authorization: str, status: int) -> None:
    answer = exchange(contract, stack, "GET", f"/rooms/{room()}/events", authorization=authorization)
    assert answer.status == status


UNROUTED = [
    ("GET", "/nowhere"),
    ("GET", "/feeds/42"),
    ("POST", "/feeds/42/events/extra"),
    ("GET", "/openapi.yaml"),
    ("GET", "/feeds/42/events/batch"),
    ("DELETE", "/feeds/42/events"),
    ("PATCH", "/feeds/42/control"),
    ("POST", "/openapi.json"),
    ("GET", "/rooms"),
    ("DELETE", "/rooms/r"),
    ("POST", "/rooms/r/state"),
    ("GET", "/rooms/r/state"),
    ("PATCH", "/rooms/r/metadata"),
]


@pytest.mark.parametrize(("method", "path"), UNROUTED)
def test_unknown_routes_and_methods(contract: Contract, stack: Stack, method: str, path: str) -> None:
    answer = exchange(contract, stack, method, path, b"{}", **JSON)
    assert answer.status in (404, 405)


def test_every_documented_status_is_sent(document: dict[str, Any], stack: Stack) -> None:
    """The other way round: each status the document lists is one the stack sends (or only AWS can)."""
    contract = Contract(document)
    test_publishing(contract, stack)
    test_batch_publishing(contract, stack)
    test_control_commands(contract, stack)
    for case in BAD_BODIES:
        test_refused_bodies(contract, stack, *case)
    test_a_bad_feed_id(contract, stack)
    test_history(contract, stack)
    for authorization, status in TOKENS:
        test_history_tokens(contract, stack, authorization, status)
    test_reading_a_room(contract, stack)
    test_room_metadata(contract, stack)
    test_room_state(contract, stack)
    test_room_members(contract, stack)
    test_room_history(contract, stack)
    for authorization, status in ROOM_TOKENS:
        test_room_history_tokens(contract, stack, authorization, status)
    assert exchange(contract, stack, "GET", "/openapi.json").status == 200
    documented = {
        (method, template, int(status))
        for template, item in document["paths"].items()
        for method, operation in item.items()
        for status in operation["responses"]
    }
    assert documented - contract.seen - NOT_REACHABLE_LOCALLY == set()
