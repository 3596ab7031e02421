"""The room routes of functions/http_api, fed API Gateway HTTP API v2 events (events/http_*room*.json) on moto.

Every refusal is checked to be a 4xx in the API's error shape that stored nothing: the room's
item (its version, document, metadata and last change) is the same before and after.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from tests.conftest import LambdaContext, load_function, sample_event

ROOM = "design-review"  # the sample events' room
ERROR_KEYS = {"error", "message", "details"}
ARN = "arn:aws:iam::123456789012:user/producer"  # the sample events' IAM caller


@pytest.fixture
def handler(http_handler: Any) -> Any:
    return http_handler


def request(
    handler: Any,
    name: str,
    *,
    room: str = ROOM,
    body: Any = None,
    raw: str | None = None,
    query: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, dict[str, Any]]:
    """One request from the sample event `name`, for `room`, with the given body, query and headers."""
    event = sample_event(name)
    path = event["rawPath"].replace(f"/rooms/{ROOM}", f"/rooms/{room}")
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event["pathParameters"] = {"roomId": room}
    if body is not None or raw is not None:
        event["body"] = raw if raw is not None else json.dumps(body)
    if query is not None:
        event["queryStringParameters"] = query
        event["rawQueryString"] = "&".join(f"{k}={v}" for k, v in query.items())
    event["headers"].update(headers or {})
    response = handler(event)
    return response["statusCode"], json.loads(response["body"]), response["headers"]


def patch(handler: Any, body: Any = None, **kwargs: Any) -> tuple[int, Any, dict[str, Any]]:
    return request(handler, "http_patch_room_state", body=body, **kwargs)


def put_metadata(handler: Any, metadata: Any, **kwargs: Any) -> tuple[int, Any, dict[str, Any]]:
    return request(handler, "http_put_room_metadata", body={"metadata": metadata}, **kwargs)


def room_item(aws: Any, room: str = ROOM) -> dict[str, Any] | None:
    """The room's stored item (None: nobody changed the room)."""
    key = {"pk": {"S": f"transport#room#{room}"}, "sk": {"N": "0"}}
    return aws.get_item(TableName="test-events", Key=key, ConsistentRead=True).get("Item")


def last_change(aws: Any, room: str = ROOM) -> dict[str, Any]:
    item = room_item(aws, room)
    assert item is not None
    return json.loads(item["lastChange"]["S"])


def assert_refused(
    aws: Any, answer: tuple[int, Any, dict[str, Any]], status: int, code: str, before: Any, field: str | None = None
) -> dict[str, Any]:
    got, body, _ = answer
    assert (got, body.get("error")) == (status, code), body
    assert set(body) >= ERROR_KEYS and body["message"], body
    if field is not None:
        assert field in {d["field"] for d in body["details"]}, body
    assert room_item(aws) == before  # nothing stored
    return body


def presence(room: str = ROOM) -> Any:
    """The room's presence over the test tables (the handler's own settings)."""
    from realtime_transport import Realtime
    from realtime_transport.rooms.presence import Presence

    return Presence(Realtime(), room)


# --- the sample events ----------------------------------------------------------------------


def test_the_sample_events_round_trip(handler: Any, aws: Any) -> None:
    status, room, headers = request(handler, "http_get_room")
    assert status == 200 and headers["ETag"] == '"0"'
    assert room == {"roomId": ROOM, "metadata": {}, "state": {"version": 0, "doc": {}}, "memberCount": 0}

    status, state, headers = request(handler, "http_patch_room_state")
    assert status == 200 and headers["ETag"] == '"1"' and headers["Content-Type"] == "application/json"
    assert state == {"version": 1, "doc": {"title": "Q3", "agenda": {"first": "budget"}}}

    status, metadata, headers = request(handler, "http_put_room_metadata")
    assert status == 200 and headers["ETag"] == '"2"'
    assert metadata == {"roomId": ROOM, "version": 2, "metadata": {"topic": "Q3 roadmap", "owner": "ana"}}

    status, room, headers = request(handler, "http_get_room")
    assert status == 200 and headers["ETag"] == '"2"'
    assert room == {
        "roomId": ROOM,
        "metadata": {"topic": "Q3 roadmap", "owner": "ana"},
        "state": {"version": 2, "doc": {"title": "Q3", "agenda": {"first": "budget"}}},
        "memberCount": 0,
    }

    status, members, _ = request(handler, "http_get_room_members")
    assert status == 200 and members == {"items": [], "nextCursor": None, "hasMore": False}

    status, history, _ = request(handler, "http_get_room_events")
    assert status == 200 and history["items"] == [] and history["hasMore"] is False


def test_a_change_records_the_iam_caller_as_its_author(handler: Any, aws: Any) -> None:
    assert patch(handler, {"version": 0, "patch": {"a": 1}})[0] == 200
    assert last_change(aws)["by"] == ARN
    assert put_metadata(handler, {"m": 1})[0] == 200
    assert last_change(aws)["by"] == ARN

    event = sample_event("http_patch_room_state")
    del event["requestContext"]["authorizer"]  # ProducerAuth=NONE: no IAM identity
    event["body"] = json.dumps({"version": 2, "patch": {"a": 2}})
    assert handler(event)["statusCode"] == 200
    assert last_change(aws)["by"] is None


def test_a_change_that_changes_nothing_keeps_the_version(handler: Any, aws: Any) -> None:
    assert patch(handler, {"version": 0, "patch": {"a": 1}})[0] == 200
    before = room_item(aws)
    status, state, headers = patch(handler, {"version": 1, "patch": {"a": 1}})
    assert (status, state, headers["ETag"]) == (200, {"version": 1, "doc": {"a": 1}}, '"1"')
    status, state, _ = patch(handler, {"version": 1, "operations": []})
    assert (status, state["version"]) == (200, 1)
    assert room_item(aws) == before


# --- JSON Patch -------------------------------------------------------------------------------


def test_json_patch_operations_apply_all_together(handler: Any, aws: Any) -> None:
    assert patch(handler, {"version": 0, "patch": {"list": [1, 2], "a": {"b": 1}}})[0] == 200
    operations = [
        {"op": "test", "path": "/a/b", "value": 1},
        {"op": "add", "path": "/list/-", "value": 3},
        {"op": "move", "from": "/a/b", "path": "/c"},
        {"op": "copy", "from": "/c", "path": "/d"},
        {"op": "replace", "path": "/d", "value": "x"},
        {"op": "remove", "path": "/a"},
    ]
    status, state, headers = patch(handler, {"version": 1, "operations": operations})
    assert status == 200 and headers["ETag"] == '"2"'
    assert state == {"version": 2, "doc": {"list": [1, 2, 3], "c": 1, "d": "x"}}
    assert last_change(aws)["operations"] == operations


def test_members_an_operation_does_not_define_are_dropped(handler: Any, aws: Any) -> None:
    # RFC 6902, section 4: such members MUST be ignored; they are neither stored nor published.
    status, state, _ = patch(handler, {"version": 0, "operations": [{"op": "add", "path": "/a", "value": 1, "x": 2}]})
    assert (status, state["doc"]) == (200, {"a": 1})
    assert last_change(aws)["operations"] == [{"op": "add", "path": "/a", "value": 1}]


def test_a_failed_test_operation_is_a_422_and_changes_nothing(handler: Any, aws: Any) -> None:
    assert patch(handler, {"version": 0, "patch": {"title": "Q3"}})[0] == 200
    before = room_item(aws)
    operations = [{"op": "add", "path": "/n", "value": 1}, {"op": "test", "path": "/title", "value": "Q4"}]
    answer = patch(handler, {"version": 1, "operations": operations})
    assert_refused(aws, answer, 422, "patch_test_failed", before, field="operations")


# --- versions, conflicts and If-Match ---------------------------------------------------------


def test_a_stale_patch_that_overlaps_a_later_change_is_a_409_with_what_to_retry_from(handler: Any, aws: Any) -> None:
    assert patch(handler, {"version": 0, "patch": {"title": "Q3", "agenda": {"first": "budget"}}})[0] == 200
    before = room_item(aws)
    answer = patch(handler, {"version": 0, "patch": {"agenda": {"first": "hiring"}}})
    body = assert_refused(aws, answer, 409, "conflict", before)
    assert body["version"] == 1 and body["doc"] == {"title": "Q3", "agenda": {"first": "budget"}}
    assert body["conflicts"] == ["/agenda/first"]
    answer = patch(handler, {"version": 0, "operations": [{"op": "remove", "path": "/agenda"}]})
    assert assert_refused(aws, answer, 409, "conflict", before)["conflicts"] == ["/agenda"]


def test_a_stale_patch_that_touches_nothing_changed_since_applies(handler: Any, aws: Any) -> None:
    assert patch(handler, {"version": 0, "patch": {"title": "Q3"}})[0] == 200
    status, state, headers = patch(handler, {"version": 0, "patch": {"owner": "ana"}})
    assert (status, headers["ETag"]) == (200, '"2"')
    assert state == {"version": 2, "doc": {"title": "Q3", "owner": "ana"}}
    # A metadata change touches no path of the document.
    assert put_metadata(handler, {"topic": "roadmap"})[0] == 200
    status, state, _ = patch(handler, {"version": 2, "operations": [{"op": "add", "path": "/n", "value": 1}]})
    assert (status, state["version"]) == (200, 4)


def test_a_version_ahead_of_the_room_is_a_409(handler: Any, aws: Any) -> None:
    answer = patch(handler, {"version": 7, "patch": {"a": 1}})
    body = assert_refused(aws, answer, 409, "conflict", None)
    assert (body["version"], body["doc"], body["conflicts"]) == (0, {}, [""])


@pytest.mark.parametrize("route", ["state", "metadata"])
def test_if_match_makes_a_change_compare_and_set(handler: Any, aws: Any, route: str) -> None:
    def change(n: int, if_match: str) -> tuple[int, Any, dict[str, Any]]:
        headers = {"if-match": if_match}
        if route == "state":
            return patch(handler, {"version": 0, "patch": {f"k{n}": n}}, headers=headers)
        return put_metadata(handler, {"n": n}, headers=headers)

    status, _, headers = change(1, '"0"')
    assert (status, headers["ETag"]) == (200, '"1"')
    before = room_item(aws)
    body = assert_refused(aws, change(2, '"0"'), 412, "precondition_failed", before, field="if-match")
    assert body["version"] == 1
    assert change(3, "1")[0] == 200  # a bare version is taken too
    assert change(4, "*")[0] == 200  # any version


@pytest.mark.parametrize("if_match", ['W/"0"', "abc", '"0", "1"', '"-1"', '"' + "9" * 40 + '"', ""])
@pytest.mark.parametrize("route", ["state", "metadata"])
def test_an_if_match_that_is_not_an_etag_of_the_room_is_a_422(
    handler: Any, aws: Any, route: str, if_match: str
) -> None:
    headers = {"if-match": if_match}
    answer = (
        patch(handler, {"version": 0, "patch": {"a": 1}}, headers=headers)
        if route == "state"
        else put_metadata(handler, {"a": 1}, headers=headers)
    )
    body = assert_refused(aws, answer, 422, "validation_error", None, field="if-match")
    assert body["details"][0]["location"] == "header"


@pytest.mark.parametrize("version", ["1", 1.5, 1.0, True, None, -1, 2**53, [0], {"v": 0}])
def test_a_version_that_is_not_a_non_negative_integer_is_a_422(handler: Any, aws: Any, version: Any) -> None:
    answer = patch(handler, {"version": version, "patch": {"a": 1}})
    assert_refused(aws, answer, 422, "validation_error", None, field="version")


# --- sizes -----------------------------------------------------------------------------------


def test_metadata_over_16_kib_is_a_413(handler: Any, aws: Any) -> None:
    assert put_metadata(handler, {"a": "x" * 16_000})[0] == 200
    before = room_item(aws)
    answer = put_metadata(handler, {"a": "x" * 16_400})
    assert_refused(aws, answer, 413, "metadata_too_large", before, field="metadata")


def test_a_document_that_would_pass_64_kib_is_a_413(handler: Any, aws: Any) -> None:
    assert patch(handler, {"version": 0, "patch": {"a": "x" * 40_000}})[0] == 200
    before = room_item(aws)
    answer = patch(handler, {"version": 1, "patch": {"b": "y" * 40_000}})
    assert_refused(aws, answer, 413, "state_too_large", before, field="patch")


@pytest.mark.parametrize(
    ("name", "raw", "code"),
    [
        ("http_patch_room_state", '{"version": 0, "patch": {"a": "' + "x" * 70_000, "state_too_large"),
        ("http_put_room_metadata", '{"metadata": {"a": "' + "x" * 70_000, "metadata_too_large"),
        ("http_patch_room_state", json.dumps({"version": 0, "patch": {"a": "x" * 70_000}}), "state_too_large"),
    ],
)
def test_a_body_over_the_cap_is_a_413_named_for_the_route(
    handler: Any, aws: Any, name: str, raw: str, code: str
) -> None:
    assert_refused(aws, request(handler, name, raw=raw), 413, code, None)


# --- malformed requests ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "status", "code", "field"),
    [
        ("{", 400, "validation_error", "body"),
        ("[1]", 400, "validation_error", "body"),
        ('{"version": 0, "patch": NaN}', 400, "validation_error", "body"),
        ("", 400, "validation_error", "body"),
        ('{"version": 0}', 422, "validation_error", "body"),
        ('{"patch": {}}', 422, "validation_error", "version"),
        ('{"version": 0, "patch": {}, "operations": []}', 422, "validation_error", "body"),
        ('{"version": 0, "patch": null}', 422, "validation_error", "body"),
        ('{"version": 0, "operations": null}', 422, "validation_error", "body"),
        ('{"version": 0, "patch": [1]}', 422, "validation_error", "patch"),
        ('{"version": 0, "patch": "a"}', 422, "validation_error", "patch"),
        ('{"version": 0, "patch": {}, "extra": 1}', 422, "validation_error", "extra"),
        ('{"version": 0, "operations": {}}', 422, "validation_error", "operations"),
        ('{"version": 0, "operations": [1]}', 422, "validation_error", "operations"),
        ('{"version": 0, "operations": [{"op": "nope", "path": "/a"}]}', 422, "validation_error", "operations"),
        ('{"version": 0, "operations": [{"path": "/a", "value": 1}]}', 422, "validation_error", "operations"),
        (
            '{"version": 0, "operations": [{"op": "add", "path": "/a"}]}',
            422,
            "validation_error",
            "operations.add.value",
        ),
        ('{"version": 0, "operations": [{"op": "add", "path": "a", "value": 1}]}', 422, "validation_error", None),
        ('{"version": 0, "operations": [{"op": "add", "path": "/~2", "value": 1}]}', 422, "validation_error", None),
        ('{"version": 0, "operations": [{"op": "move", "path": "/a"}]}', 422, "validation_error", None),
        ('{"version": 0, "operations": [{"op": "remove", "path": "/missing"}]}', 422, "invalid_request", "operations"),
        ('{"version": 0, "operations": [{"op": "add", "path": "/a/b/c", "value": 1}]}', 422, "invalid_request", None),
        ('{"version": 0, "operations": [{"op": "replace", "path": "", "value": 5}]}', 422, "invalid_request", None),
        ('{"version": 0, "operations": [{"op": "move", "from": "/a", "path": "/a/b"}]}', 422, "invalid_request", None),
        ('{"version": 0, "patch": {"a": "\\ud800"}}', 422, "invalid_request", None),
    ],
)
def test_a_malformed_patch_is_refused_and_stores_nothing(
    handler: Any, aws: Any, raw: str, status: int, code: str, field: str | None
) -> None:
    assert_refused(aws, patch(handler, raw=raw), status, code, None, field=field)


@pytest.mark.parametrize(
    ("raw", "status", "field"),
    [
        ("{", 400, "body"),
        ("null", 400, "body"),
        ("{}", 422, "metadata"),
        ('{"metadata": [1]}', 422, "metadata"),
        ('{"metadata": null}', 422, "metadata"),
        ('{"metadata": {}, "version": 1}', 422, "version"),
    ],
)
def test_malformed_metadata_is_refused_and_stores_nothing(
    handler: Any, aws: Any, raw: str, status: int, field: str
) -> None:
    answer = request(handler, "http_put_room_metadata", raw=raw)
    assert_refused(aws, answer, status, "validation_error", None, field=field)


@pytest.mark.parametrize("content_type", ["application/merge-patch+json", "application/json-patch+json", "text/plain"])
def test_patch_takes_application_json_only_and_says_so(handler: Any, aws: Any, content_type: str) -> None:
    answer = patch(handler, {"version": 0, "patch": {"a": 1}}, headers={"content-type": content_type})
    assert_refused(aws, answer, 415, "unsupported_media_type", None, field="content-type")
    assert answer[2]["Accept-Patch"] == "application/json"  # RFC 5789, section 2.2


@pytest.mark.parametrize("room", ["x" * 129, "a%20b", "a b", "%C3%A9", "a%23b", "a%2Fb", "a*b"])
@pytest.mark.parametrize(
    "name",
    [
        "http_get_room",
        "http_patch_room_state",
        "http_put_room_metadata",
        "http_get_room_members",
        "http_get_room_events",
    ],
)
def test_a_bad_room_id_is_a_422(handler: Any, aws: Any, name: str, room: str) -> None:
    status, body, _ = request(handler, name, room=room)
    assert (status, body["error"]) == (422, "validation_error"), body
    assert "roomId" in {d["field"] for d in body["details"]}
    assert aws.scan(TableName="test-events")["Count"] == 0


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/rooms/r", "GET"),
        ("POST", "/rooms/r/state", "PATCH"),
        ("PUT", "/rooms/r/state", "PATCH"),
        ("PATCH", "/rooms/r/metadata", "PUT"),
        ("POST", "/rooms/r/members", "GET"),
        ("POST", "/rooms/r/events", "GET"),
    ],
)
def test_another_method_on_a_room_path_is_a_405(handler: Any, method: str, path: str, allow: str) -> None:
    event = sample_event("http_get_room")
    event["routeKey"] = event["requestContext"]["routeKey"] = "$default"
    event["requestContext"]["http"]["method"] = method
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event.pop("pathParameters")
    response = handler(event)
    assert (response["statusCode"], response["headers"]["Allow"]) == (405, allow)
    assert json.loads(response["body"])["error"] == "method_not_allowed"


# --- members ---------------------------------------------------------------------------------


def test_members_come_a_page_at_a_time(handler: Any, aws: Any) -> None:
    room = presence()
    for n in range(5):
        room.join(f"conn-{n}", f"member-{n}", {"name": f"M{n}"})
    room.join("conn-9", "member-0")  # a second tab of member-0

    status, body, _ = request(handler, "http_get_room")
    assert (status, body["memberCount"]) == (200, 5)

    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
        status, page, _ = request(handler, "http_get_room_members", query=query)
        assert status == 200 and len(page["items"]) <= 2
        seen += page["items"]
        pages += 1
        if not page["hasMore"]:
            assert page["nextCursor"] is None
            break
        cursor = page["nextCursor"]
    assert pages == 3
    assert [m["memberId"] for m in seen] == [f"member-{n}" for n in range(5)]
    first = seen[0]
    assert set(first) == {"memberId", "member", "connections", "joinedAt", "session", "rev"}
    assert (first["member"], first["connections"], first["rev"]) == ({"name": "M0"}, 2, 1)

    status, page, _ = request(handler, "http_get_room_members", query={"limit": "1000"})
    assert (status, len(page["items"]), page["hasMore"]) == (200, 5, False)


@pytest.mark.parametrize(
    ("query", "code", "field"),
    [
        ({"limit": "0"}, "validation_error", "limit"),
        ({"limit": "1001"}, "validation_error", "limit"),
        ({"limit": "ten"}, "validation_error", "limit"),
        ({"cursor": "not a cursor"}, "invalid_request", "cursor"),
        ({"cursor": "x" * 1025}, "validation_error", "cursor"),
    ],
)
def test_a_bad_members_query_is_a_422(handler: Any, query: dict[str, str], code: str, field: str) -> None:
    status, body, _ = request(handler, "http_get_room_members", query=query)
    assert (status, body["error"]) == (422, code), body
    assert field in {d["field"] for d in body["details"]}


# --- the room's history ----------------------------------------------------------------------


def test_room_history_is_its_channel_read_like_a_feed(handler: Any, aws: Any) -> None:
    from realtime_transport import Realtime

    channel = Realtime().channel(f"room_{ROOM}")
    for n in range(3):
        channel.publish(type="room.metadata", data={"version": n + 1}, metadata={"source": "room"})
    # Without a cursor: the latest page, as feed history gives it.
    status, page, _ = request(handler, "http_get_room_events", query={"limit": "2"})
    assert status == 200 and page["hasMore"] is False and page["truncated"] is False
    assert [(e["channel"], e["seq"]) for e in page["items"]] == [(f"room_{ROOM}", 2), (f"room_{ROOM}", 3)]
    channel.publish(type="room.metadata", data={"version": 4}, metadata={"source": "room"})
    status, rest, _ = request(handler, "http_get_room_events", query={"cursor": page["nextCursor"]})
    assert status == 200 and [e["data"] for e in rest["items"]] == [{"version": 4}]
    status, body, _ = request(handler, "http_get_room_events", query={"cursor": "not-a-cursor"})
    assert (status, body["error"]) == (400, "invalid_cursor")
    # A feed's cursor is another channel's.
    status, feed_page, _ = request(handler, "http_get_room_events", room="other", query={"limit": "1"})
    status, body, _ = request(handler, "http_get_room_events", query={"cursor": feed_page["nextCursor"]})
    assert (status, body["error"]) == (400, "invalid_cursor")


@pytest.mark.parametrize("required", [True, False])
@pytest.mark.parametrize(
    ("authorization", "allowed", "refused"),
    [
        (None, True, 401),
        ("Basic abc", False, 401),
        ("Bearer not-a-token", False, 401),
        ("Bearer {other}", False, 403),
        ("Bearer {feed}", False, 403),
        ("Bearer {expired}", False, 401),
        ("Bearer {good}", True, 200),
        ("Bearer {exact}", True, 200),
    ],
)
def test_room_history_takes_the_subscriber_token_for_the_rooms_channel(
    aws: Any, monkeypatch: pytest.MonkeyPatch, required: bool, authorization: str | None, allowed: bool, refused: int
) -> None:
    from realtime_transport import tokens
    from realtime_transport.settings import get_settings

    get_settings.cache_clear()
    secret = "history-secret-long-enough-for-hs256"
    monkeypatch.setenv("REALTIME_TOKEN_SECRET", secret)
    monkeypatch.setenv("REQUIRE_HISTORY_TOKEN", "true" if required else "false")
    module = load_function("http_api")
    key = secret.encode()
    values = {
        "good": tokens.issue(key, sub="browser", channels=["room_*"]),
        "exact": tokens.issue(key, sub="browser", channels=[f"room_{ROOM}"]),
        "other": tokens.issue(key, sub="browser", channels=["room_elsewhere"]),
        "feed": tokens.issue(key, sub="browser", channels=[f"feed_{ROOM}"]),
        "expired": tokens.issue(key, sub="browser", channels=["room_*"], ttl_seconds=-60),
    }
    event = sample_event("http_get_room_events")
    if authorization is not None:
        event["headers"]["authorization"] = authorization.format(**values)
    response = module.lambda_handler(event, LambdaContext())
    # A header that is present is always checked; none at all passes only where none is required.
    expected = refused if (required or authorization is not None) else 200
    assert response["statusCode"] == expected, response["body"]
    if expected != 200:
        assert json.loads(response["body"])["error"] in {"unauthorized", "forbidden"}
    get_settings.cache_clear()


# --- the OpenAPI document --------------------------------------------------------------------


def test_the_openapi_document_says_which_room_answers_carry_an_etag(handler: Any) -> None:
    event = sample_event("http_get_openapi")
    document = json.loads(handler(event)["body"])
    paths = document["paths"]
    tagged = {
        ("get", "/rooms/{roomId}"),
        ("put", "/rooms/{roomId}/metadata"),
        ("patch", "/rooms/{roomId}/state"),
    }
    for path, item in paths.items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                has_etag = "ETag" in response.get("headers", {})
                assert has_etag == ((method, path) in tagged and status == "200"), (method, path, status)
    for method, path in tagged - {("get", "/rooms/{roomId}")}:
        names = {p["name"]: p for p in paths[path][method]["parameters"]}
        assert names["if-match"]["in"] == "header" and names["if-match"]["required"] is False
    schemas = document["components"]["schemas"]
    state = schemas["StatePatchRequest"]
    assert state["oneOf"] == [{"required": ["patch"]}, {"required": ["operations"]}]
    assert state["properties"]["patch"]["type"] == "object" and "anyOf" not in state["properties"]["patch"]
    assert set(schemas["StateConflictResponse"]["required"]) == {
        "error",
        "message",
        "details",
        "version",
        "doc",
        "conflicts",
    }
    assert set(schemas["PreconditionFailedResponse"]["required"]) == {"error", "message", "details", "version"}
    assert list(paths["/rooms/{roomId}/state"]["patch"]["requestBody"]["content"]) == ["application/json"]
    assert "Accept-Patch" in paths["/rooms/{roomId}/state"]["patch"]["responses"]["415"]["headers"]


# --- no input is a 5xx -------------------------------------------------------------------------

ROOM_IDS = [ROOM, "x" * 129, "a b", "é", "a:b.c-d_e", ""]
VALUES: list[Any] = [None, True, 0, -1, 1.5, "", "x", [], {}, {"a": None}, [{"op": "add"}], "\\ud800", 2**60]
KEYS = ["version", "patch", "operations", "metadata", "extra"]
OPERATIONS: list[Any] = [
    {"op": "add", "path": "/a", "value": 1}, {"op": "remove", "path": "/a"}, {"op": "test", "path": "/a", "value": 2},
    {"op": "move", "from": "/a", "path": "/a/b"}, {"op": "copy", "from": "/x", "path": "/y"},
    {"op": "replace", "path": "", "value": {}}, {"op": "add", "path": "/l/-", "value": 1},
    {"op": "add", "path": "/l/9"},
]  # fmt: skip
IF_MATCH = [None, '"0"', '"1"', "*", "W/x", '"99999999999999999999"', "0"]


def random_room_request(rnd: random.Random) -> dict[str, Any]:
    name = rnd.choice(
        [
            "http_get_room",
            "http_put_room_metadata",
            "http_patch_room_state",
            "http_get_room_members",
            "http_get_room_events",
        ]
    )
    event = sample_event(name)
    event["pathParameters"] = {"roomId": rnd.choice(ROOM_IDS)}
    if name in ("http_put_room_metadata", "http_patch_room_state"):
        body: dict[str, Any] = {key: rnd.choice(VALUES) for key in rnd.sample(KEYS, rnd.randint(0, 3))}
        if rnd.random() < 0.5:
            body["version"] = rnd.randint(0, 3)
        if rnd.random() < 0.4:
            body["operations"] = rnd.sample(OPERATIONS, rnd.randint(0, 3))
        elif rnd.random() < 0.4:
            body["patch"] = {"a": rnd.choice(VALUES), "l": [1]}
        if rnd.random() < 0.3:
            body["metadata"] = {"m": rnd.choice(VALUES)}
        event["body"] = json.dumps(body) if rnd.random() < 0.9 else rnd.choice(["{", "[]", "null", ""])
        if_match = rnd.choice(IF_MATCH)
        if if_match is not None:
            event["headers"]["if-match"] = if_match
    else:
        event["queryStringParameters"] = {
            key: rnd.choice(["0", "1", "1000", "1001", "x", "", "AQAAAAAAAAAB9tq5ZUAzz0LXZm5Ydy7AimUI", "bWVtYmVy"])
            for key in rnd.sample(["limit", "cursor"], rnd.randint(0, 2))
        }
    return event


@pytest.mark.parametrize("seed", range(3))
def test_no_room_request_yields_a_5xx(handler: Any, seed: int) -> None:
    rnd = random.Random(seed)
    statuses: set[int] = set()
    for _ in range(150):
        event = random_room_request(rnd)
        response = handler(event)
        status = response["statusCode"]
        statuses.add(status)
        assert status < 500, (event["routeKey"], event.get("body"), response["body"][:300])
        if status >= 400:
            assert set(json.loads(response["body"])) >= ERROR_KEYS, response["body"]
    assert {200, 400, 422} <= statuses, statuses
