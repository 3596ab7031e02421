"""A token's scope, on every route and WebSocket action, through the real handlers (functions/http_api
and functions/websocket over moto), in the deployed configuration (REQUIRE_HISTORY_TOKEN=true).

The pattern language (`tokens.py`): `*` stops at the namespace separator `:`, `**` crosses it.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jwt
import pytest

from realtime_transport import tokens
from realtime_transport.rooms.presence import Presence
from realtime_transport.rooms.room import Room
from tests.conftest import LambdaContext, load_function, sample_event

# The secret the `http_handler` fixture gives functions/http_api; functions/websocket gets the same.
SECRET = b"unit-test-secret-long-enough-for-hs256"

# The token under test: feeds and rooms whose names start with `a` in their own namespace.
SCOPED = {"channels": ["feed_a*", "room_a*"], "write": ["room_a*"]}

# Names the scoped token grants (the controls: the refusals below are not refusals of everything) ...
GRANTED_FEEDS = ["a", "a1", "a.x", "a-y"]
GRANTED_ROOMS = ["a", "a.1"]
# ... and names it must not: another id, another namespace under a granted name, a prefix, a case.
FOREIGN_FEEDS = ["b", "a:admin", "a1:x", "A", "ba"]
FOREIGN_ROOMS = ["b", "a:admin", "a.1:x", "ba"]


@pytest.mark.parametrize(
    ("pattern", "channel", "granted"),
    [
        ("feed_4*", "feed_4", True),
        ("feed_4*", "feed_42", True),
        ("feed_4*", "feed_4.x-y_z", True),
        ("feed_4*", "feed_4:admin", False),
        ("feed_4*", "feed_5", False),
        ("feed_4:*", "feed_4:admin", True),
        ("feed_4:*", "feed_4:admin:keys", False),
        ("feed_4:*", "feed_4", False),
        ("feed_4:**", "feed_4:admin:keys", True),
        ("feed_4:**", "feed_4", False),
        ("feed_4**", "feed_4:admin", True),
        ("feed_4**", "feed_4", True),
        ("*", "feed_1", True),
        ("*", "feed_1:x", False),
        ("**", "feed_1:x:y", True),
        ("*:admin", "feed_1:admin", True),
        ("*:admin", "feed_1:x:admin", False),
        ("feed_?", "feed_1", False),  # `?` is no wildcard
        ("feed_[12]", "feed_1", False),  # nor are brackets
        ("feed_1", "feed_1", True),
        ("feed_1", "feed_10", False),
        ("feed.1", "feed_1", False),  # `.` is literal, not a regex dot
    ],
)
def test_pattern_semantics(pattern: str, channel: str, granted: bool) -> None:
    assert tokens.matches(pattern, channel) is granted
    claims = tokens.Claims(sub="x", exp=0, channels=(pattern,), write=(pattern,))
    assert claims.allows(channel) is granted and claims.may_write(channel) is granted


@pytest.mark.parametrize("pattern", ["", "feed_?", "feed_[1]", "feed 1", "feed_1/2", "x" * 257])
def test_issue_refuses_a_pattern_outside_the_language(pattern: str) -> None:
    with pytest.raises(ValueError, match="pattern"):
        tokens.issue(SECRET, sub="x", channels=[pattern])
    with pytest.raises(ValueError, match="pattern"):
        tokens.issue(SECRET, sub="x", channels=["feed_1"], write=[pattern])


# --- the deployed stack: functions/http_api and functions/websocket on one set of tables ------


class RecordingPusher:
    def __init__(self) -> None:
        self.frames: dict[str, list[dict[str, Any]]] = {}

    def send(self, connection_id: str, data: bytes) -> bool:
        self.frames.setdefault(connection_id, []).append(json.loads(data))
        return True

    def take(self, connection_id: str) -> list[dict[str, Any]]:
        return self.frames.pop(connection_id, [])


class Stack:
    def __init__(self, http: Callable[[dict[str, Any]], Any], websocket: Any, pusher: RecordingPusher) -> None:
        self.http = http
        self.websocket = websocket
        self.pusher = pusher
        self.realtime = websocket.realtime

    def connect(self, connection_id: str, token: str | None) -> dict[str, Any]:
        event = sample_event("websocket_connect")
        event["requestContext"]["connectionId"] = connection_id
        event["queryStringParameters"] = None if token is None else {"token": token}
        event["multiValueQueryStringParameters"] = None if token is None else {"token": [token]}
        response: dict[str, Any] = self.websocket.lambda_handler(event, LambdaContext())
        return response

    def ask(self, connection_id: str, message: dict[str, Any]) -> dict[str, Any]:
        """One WebSocket action through functions/websocket; its last answer."""
        event = sample_event("websocket_subscribe")
        event["requestContext"]["connectionId"] = connection_id
        event["requestContext"]["routeKey"] = message["action"]
        event["body"] = json.dumps(message)
        assert self.websocket.lambda_handler(event, LambdaContext())["statusCode"] == 200
        frames = self.pusher.take(connection_id)
        assert frames, f"no answer to {message}"
        return frames[-1]

    def history(self, kind: str, target: str, token: str | None, *, scheme: str = "Bearer") -> tuple[int, Any]:
        """GET /feeds/{id}/events or GET /rooms/{id}/events through functions/http_api."""
        if kind == "feed":
            event = sample_event("http_get_history")
            event["pathParameters"] = {"feedId": target}
            path = f"/feeds/{target}/events"
        else:
            event = sample_event("http_get_room_events")
            event["pathParameters"] = {"roomId": target}
            path = f"/rooms/{target}/events"
        event["rawPath"] = event["requestContext"]["http"]["path"] = path
        event["requestContext"].pop("authorizer", None)  # a browser: no IAM identity
        if token is not None:
            event["headers"]["authorization"] = f"{scheme} {token}"
        response = self.http(event)
        return response["statusCode"], json.loads(response["body"])

    def seed(self, feeds: Sequence[str] = (), rooms: Sequence[str] = ()) -> None:
        """Something to read and to leak in each: an event, and in a room a member and a state."""
        if not self.realtime.connections.connection("owner"):
            owner = tokens.issue(SECRET, sub="owner", channels=["**"], write=["**"])
            assert self.connect("owner", owner)["statusCode"] == 200
        for feed in feeds:
            self.realtime.channel(f"feed_{feed}").broadcast(type="t", data={"secret": f"SEEDED-{feed}"})
        for room in rooms:
            self.realtime.channel(f"room_{room}").broadcast(type="t", data={"secret": f"SEEDED-{room}"})
            assert self.ask("owner", {"action": "join", "room": room, "member": {"n": "owner"}})["type"] == "joined"
            patched = self.ask(
                "owner", {"action": "patch", "room": room, "version": 0, "patch": {"secret": f"SEEDED-{room}"}}
            )
            assert patched["type"] == "patched"


@pytest.fixture
def deployed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """What template.yaml gives the functions that matters here (before they are imported)."""
    monkeypatch.setenv("REQUIRE_HISTORY_TOKEN", "true")
    monkeypatch.setenv("REALTIME_TOKEN_SECRET", SECRET.decode())
    monkeypatch.setenv("WEBSOCKET_MANAGEMENT_URL", "http://127.0.0.1:9")


@pytest.fixture
def stack(deployed_env: None, http_handler: Callable[[dict[str, Any]], Any]) -> Iterator[Stack]:
    module = load_function("websocket")
    pusher = RecordingPusher()
    module.live.pusher = pusher
    yield Stack(http_handler, module, pusher)


def scoped_token(**overrides: Any) -> str:
    return tokens.issue(SECRET, sub="scoped", **{**SCOPED, **overrides}, ttl_seconds=600)


def test_the_deployed_template_requires_the_history_token() -> None:
    from realtime_devstack import template

    function = template.load_template()["Resources"]["HttpApiFunction"]
    assert function["Properties"]["Environment"]["Variables"]["REQUIRE_HISTORY_TOKEN"] == "true"


def room_actions(room: str) -> list[dict[str, Any]]:
    return [
        {"action": "join", "room": room, "member": {"n": "intruder"}},
        {"action": "members", "room": room},
        {"action": "update", "room": room, "member": {"n": "intruder"}},
        {"action": "patch", "room": room, "version": 1, "patch": {"secret": "overwritten"}},
        {"action": "leave", "room": room},
    ]


def test_the_scoped_token_reaches_what_it_grants(stack: Stack) -> None:
    """The control: every route and action answers the scoped token on a granted name."""
    stack.seed(GRANTED_FEEDS, GRANTED_ROOMS)
    token = scoped_token()
    assert stack.connect("c1", token)["statusCode"] == 200
    for feed in GRANTED_FEEDS:
        assert stack.ask("c1", {"action": "subscribe", "channel": f"feed_{feed}"})["type"] == "subscribed"
        status, page = stack.history("feed", feed, token)
        assert status == 200 and page["items"][0]["data"] == {"secret": f"SEEDED-{feed}"}
    for room in GRANTED_ROOMS:
        answers = [stack.ask("c1", message)["type"] for message in room_actions(room)]
        assert answers == ["joined", "members", "updated", "patched", "left"]
        assert stack.ask("c1", {"action": "subscribe", "channel": f"room_{room}"})["type"] == "subscribed"
        status, page = stack.history("room", room, token)
        assert status == 200 and page["items"][0]["data"] == {"secret": f"SEEDED-{room}"}


@pytest.mark.parametrize("feed", FOREIGN_FEEDS)
def test_a_feed_outside_the_token_is_refused_on_every_route(stack: Stack, feed: str) -> None:
    stack.seed(feeds=[feed])
    token = scoped_token()
    assert stack.connect("c1", token)["statusCode"] == 200
    answer = stack.ask("c1", {"action": "subscribe", "channel": f"feed_{feed}"})
    assert answer["type"] == "error" and answer["code"] == "forbidden", answer
    assert stack.realtime.connections.subscriptions("c1") == []
    status, body = stack.history("feed", feed, token)
    assert status == 403 and body["error"] == "forbidden" and "SEEDED" not in json.dumps(body)


@pytest.mark.parametrize("room", FOREIGN_ROOMS)
def test_a_room_outside_the_token_is_refused_on_every_action_and_route(stack: Stack, room: str) -> None:
    stack.seed(rooms=[room])
    token = scoped_token()
    assert stack.connect("c1", token)["statusCode"] == 200
    for message in [*room_actions(room), {"action": "subscribe", "channel": f"room_{room}"}]:
        answer = stack.ask("c1", message)
        assert answer["type"] == "error" and answer["code"] == "forbidden", (message, answer)
        assert "owner" not in json.dumps(answer) and "SEEDED" not in json.dumps(answer)
    status, body = stack.history("room", room, token)
    assert status == 403 and body["error"] == "forbidden" and "SEEDED" not in json.dumps(body)
    # Nothing was written: no membership, no subscription, the owner's state untouched.
    assert stack.realtime.connections.subscriptions("c1") == []
    assert [m.member_id for m in Presence(stack.realtime, room).members(limit=10).items] == ["owner"]
    assert Room(stack.realtime, room).get()["state"]["doc"] == {"secret": f"SEEDED-{room}"}


def test_a_feed_token_reaches_no_room(stack: Stack) -> None:
    """`feed_a*` alone: every room, even one named `a`, lies outside it."""
    stack.seed(rooms=["a"])
    token = scoped_token(channels=["feed_a*"], write=["feed_a*"])
    assert stack.connect("c1", token)["statusCode"] == 200
    for message in room_actions("a"):
        assert stack.ask("c1", message)["code"] == "forbidden", message
    assert stack.history("room", "a", token)[0] == 403


@pytest.mark.parametrize("room", ["a:admin", "b"])
def test_the_write_claim_stops_at_the_namespace_too(stack: Stack, room: str) -> None:
    """Read rights everywhere (`room_**`), write rights for `room_a*`: a patch elsewhere is refused."""
    stack.seed(rooms=[room, "a.1"])
    assert stack.connect("c1", scoped_token(channels=["room_**"], write=["room_a*"]))["statusCode"] == 200
    assert stack.ask("c1", {"action": "join", "room": room})["type"] == "joined"
    answer = stack.ask("c1", {"action": "patch", "room": room, "version": 1, "patch": {"secret": "overwritten"}})
    assert answer["type"] == "error" and answer["code"] == "forbidden" and "write" in answer["message"]
    assert Room(stack.realtime, room).get()["state"]["doc"] == {"secret": f"SEEDED-{room}"}
    granted = stack.ask("c1", {"action": "patch", "room": "a.1", "version": 1, "patch": {"x": 1}})
    assert granted["type"] == "patched"


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _signed(payload: dict[str, Any], secret: bytes = SECRET) -> str:
    return jwt.encode(payload, secret, algorithm="HS256")


def bad_tokens() -> dict[str, str]:
    now = int(time.time())
    signature = _signed({"sub": "x"}).split(".")[2]  # a genuine signature, of other contents
    good = {"sub": "x", "iat": now, "exp": now + 600, "channels": ["**"], "write": ["**"]}
    return {
        "another secret": _signed(good, b"another-secret-long-enough-for-hs256"),
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(good)}.",
        "alg none, signature kept": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(good)}.{signature}",
        "HS512": jwt.encode(good, SECRET + SECRET, algorithm="HS512"),
        "missing sub": _signed({k: v for k, v in good.items() if k != "sub"}),
        "numeric sub": _signed({**good, "sub": 42}),
        "list sub": _signed({**good, "sub": ["x"]}),
        "empty sub": _signed({**good, "sub": ""}),
        "expired": _signed({**good, "exp": now - 60}),
        "missing exp": _signed({k: v for k, v in good.items() if k != "exp"}),
        "channels not a list": _signed({**good, "channels": "**"}),
        "edited payload": f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64(good)}.{signature}",
        "not a JWT": "not-a-jwt",
    }


@pytest.mark.parametrize("problem", list(bad_tokens()))
def test_a_bad_token_is_refused_everywhere(stack: Stack, problem: str) -> None:
    token = bad_tokens()[problem]
    response = stack.connect("c1", token)
    assert response["statusCode"] == 401, (problem, response)
    assert json.loads(response["body"])["message"]
    assert stack.realtime.connections.connection("c1") is None
    for kind, target in [("feed", "a"), ("room", "a")]:
        status, body = stack.history(kind, target, token)
        assert status == 401 and body["error"] == "unauthorized" and body["message"], (problem, kind, body)


@pytest.mark.parametrize("kind", ["feed", "room"])
@pytest.mark.parametrize(("token", "scheme"), [(None, "Bearer"), ("", "Bearer"), ("{good}", "Basic")])
def test_history_without_a_token_is_refused_in_the_deployed_configuration(
    stack: Stack, kind: str, token: str | None, scheme: str
) -> None:
    value = None if token is None else token.format(good=scoped_token())
    status, body = stack.history(kind, "a", value, scheme=scheme)
    assert status == 401 and body["error"] == "unauthorized" and "Bearer" in body["message"]


def test_a_handshake_without_a_token_is_refused(stack: Stack) -> None:
    response = stack.connect("c1", None)
    assert response["statusCode"] == 401 and "required" in json.loads(response["body"])["message"]
