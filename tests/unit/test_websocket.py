"""functions/websocket and the live service on in-process moto, with a recording pusher."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from realtime_transport import Realtime, tokens
from realtime_transport.errors import Forbidden, Unauthorized
from realtime_transport.live import LiveService

from .doubles import RecordingPusher

SECRET = b"unit-test-secret-long-enough-for-hs256"


@pytest.fixture
def live(aws: Any, settings_factory: Any) -> tuple[LiveService, RecordingPusher]:
    realtime = Realtime(settings=settings_factory(CONNECTIONS_TABLE_NAME="test-connections"), secret=SECRET)
    pusher = RecordingPusher()
    return LiveService(realtime, pusher), pusher


def token(channels: list[str], ttl: int = 600) -> str:
    return tokens.issue(SECRET, sub="tester", channels=channels, ttl_seconds=ttl)


def send(service: LiveService, connection_id: str, message: Any, **kwargs: Any) -> None:
    service.handle(connection_id, message if isinstance(message, str) else json.dumps(message), **kwargs)


def events_in(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The envelopes of `event` and `events` frames, in the order they came."""
    found: list[dict[str, Any]] = []
    for frame in frames:
        if frame["type"] == "event":
            found.append(frame["event"])
        elif frame["type"] == "events":
            found.extend(frame["events"])
    return found


@pytest.mark.parametrize(
    ("bad_token", "problem"),
    [
        (None, "required"),
        ("", "required"),
        ("not-a-jwt", "malformed"),
        (tokens.issue(b"another-secret-long-enough-for-hs256", sub="x", channels=["feed_*"]), "signature"),
        (tokens.issue(SECRET, sub="x", channels=["feed_*"], ttl_seconds=-60), "expired"),
    ],
)
def test_connect_refuses_bad_tokens(live: Any, bad_token: str | None, problem: str) -> None:
    service, _ = live
    with pytest.raises(Unauthorized, match=problem):
        service.connect("c1", bad_token)
    assert service.realtime.connections.connection("c1") is None


def test_connect_refuses_a_token_without_channels(live: Any) -> None:
    import jwt

    service, _ = live
    no_rights = jwt.encode({"sub": "x", "exp": int(time.time()) + 60, "channels": []}, SECRET, algorithm="HS256")
    with pytest.raises(Forbidden):
        service.connect("c1", no_rights)


def test_subscribe_ping_unsubscribe(live: Any) -> None:
    service, pusher = live
    service.connect("c1", token(["feed_*"]))
    send(service, "c1", {"action": "subscribe", "channel": "feed_1"})
    (subscribed,) = pusher.take("c1")
    assert subscribed["type"] == "subscribed" and subscribed["channel"] == "feed_1" and not subscribed["truncated"]
    assert service.realtime.connections.subscriptions("c1") == ["transport#feed_1"]
    send(service, "c1", {"action": "ping"})
    assert pusher.take("c1") == [{"type": "pong", "heads": {"feed_1": 0}}]
    send(service, "c1", {"action": "unsubscribe", "channel": "feed_1"})
    assert pusher.take("c1") == [{"type": "unsubscribed", "channel": "feed_1"}]
    assert service.realtime.connections.subscriptions("c1") == []


def test_subscribe_with_a_cursor_sends_the_missed_events_first(live: Any) -> None:
    service, pusher = live
    channel = service.realtime.channel("feed_7")
    for n in range(3):
        channel.broadcast(type="t", data=n)
    service.connect("c1", token(["feed_7"]))
    send(service, "c1", {"action": "subscribe", "channel": "feed_7"})
    cursor = pusher.take("c1")[0]["cursor"]
    for n in range(3, 13):  # missed while disconnected
        channel.broadcast(type="t", data=n)
    send(service, "c1", {"action": "subscribe", "channel": "feed_7", "cursor": cursor})
    frames = pusher.take("c1")
    assert [e["seq"] for e in events_in(frames[:-1])] == list(range(4, 14))
    assert len(frames) == 2, "ten small events travel in one message"
    assert frames[0]["type"] == "events" and frames[0]["channel"] == "feed_7"
    assert channel.decode_cursor(frames[0]["cursor"]) == 13  # the cursor of the last event in it
    assert frames[-1]["type"] == "subscribed" and channel.decode_cursor(frames[-1]["cursor"]) == 13
    assert frames[-1]["hasMore"] is False


def test_catch_up_beyond_the_window_is_truncated(aws: Any, settings_factory: Any) -> None:
    realtime = Realtime(
        history_limit=5, settings=settings_factory(CONNECTIONS_TABLE_NAME="test-connections"), secret=SECRET
    )
    pusher = RecordingPusher()
    service = LiveService(realtime, pusher)
    channel = realtime.channel("feed_w")
    for n in range(12):
        channel.broadcast(type="t", data=n)
    service.connect("c1", token(["feed_*"]))
    send(service, "c1", {"action": "subscribe", "channel": "feed_w", "cursor": channel.cursor(1)})
    frames = pusher.take("c1")
    assert [e["seq"] for e in events_in(frames[:-1])] == [8, 9, 10, 11, 12]
    assert frames[-1]["truncated"] is True


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("{not json", "invalid_json"),
        ("[]", "invalid_message"),
        ({"channel": "feed_1"}, "invalid_message"),
        ({"action": "dance"}, "unknown_action"),
        ({"action": "subscribe"}, "invalid_channel"),
        ({"action": "subscribe", "channel": "bad channel"}, "invalid_channel"),
        ({"action": "subscribe", "channel": "x" * 201}, "invalid_channel"),
        ({"action": "subscribe", "channel": "feed_1", "cursor": "forged"}, "invalid_cursor"),
        ({"action": "subscribe", "channel": "feed_1", "extra": 1}, "invalid_message"),
        ({"action": "subscribe", "channel": "admin_1"}, "forbidden"),
        ({"action": "unsubscribe"}, "invalid_channel"),
    ],
)
def test_bad_messages_get_an_error_and_the_connection_stays(live: Any, message: Any, code: str) -> None:
    service, pusher = live
    service.connect("c1", token(["feed_*"]))
    send(service, "c1", message)
    (reply,) = pusher.take("c1")
    assert reply["type"] == "error" and reply["code"] == code and reply["message"]
    assert service.realtime.connections.subscriptions("c1") == []
    send(service, "c1", {"action": "ping"})
    assert pusher.take("c1") == [{"type": "pong", "heads": {}}]


def test_a_forbidden_subscribe_leaks_nothing(live: Any) -> None:
    service, pusher = live
    secret_channel = service.realtime.channel("admin_ops")
    secret_channel.broadcast(type="t", data={"secret": True})
    service.connect("c1", token(["feed_*"]))
    send(service, "c1", {"action": "subscribe", "channel": "admin_ops", "cursor": secret_channel.cursor(0)})
    frames = pusher.take("c1")
    assert frames == [
        {
            "type": "error",
            "code": "forbidden",
            "message": "token does not allow channel 'admin_ops'",
            "channel": "admin_ops",
        }
    ]


def test_a_cursor_of_another_channel_is_refused(live: Any) -> None:
    service, pusher = live
    service.connect("c1", token(["feed_*"]))
    other = service.realtime.channel("feed_other").cursor(0)
    send(service, "c1", {"action": "subscribe", "channel": "feed_1", "cursor": other})
    assert pusher.take("c1")[0]["code"] == "invalid_cursor"


def test_disconnect_removes_the_connection_and_its_subscriptions(live: Any) -> None:
    service, _ = live
    service.connect("c1", token(["feed_*"]))
    for n in range(3):
        send(service, "c1", {"action": "subscribe", "channel": f"feed_{n}"})
    assert len(service.realtime.connections.subscriptions("c1")) == 3
    service.disconnect("c1")
    assert service.realtime.connections.connection("c1") is None
    assert list(service.realtime.connections.subscribers("transport#feed_0")) == []


def test_subscribers_are_listed_per_channel(live: Any) -> None:
    service, _ = live
    for n in range(5):
        service.connect(f"c{n}", token(["feed_*"]))
        send(service, f"c{n}", {"action": "subscribe", "channel": "feed_a" if n % 2 == 0 else "feed_b"})
    pages = list(service.realtime.connections.subscribers("transport#feed_a", page_size=2))
    assert sorted(c for page in pages for c in page) == ["c0", "c2", "c4"] and len(pages) >= 2


# --- the handler, fed API Gateway WebSocket events ---------------------------------------------


@pytest.fixture
def handler(aws: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    from realtime_transport.settings import get_settings
    from tests.conftest import LambdaContext, load_function

    get_settings.cache_clear()
    monkeypatch.setenv("REALTIME_TOKEN_SECRET", SECRET.decode())
    monkeypatch.setenv("WEBSOCKET_MANAGEMENT_URL", "http://127.0.0.1:9")
    module = load_function("websocket")
    pusher = RecordingPusher()
    module.live.pusher = pusher
    yield (lambda event: module.lambda_handler(event, LambdaContext())), pusher
    get_settings.cache_clear()


def test_handler_routes_the_sample_events(handler: Any) -> None:
    from tests.conftest import sample_event

    invoke, pusher = handler
    connect = sample_event("websocket_connect")
    connection_id = connect["requestContext"]["connectionId"]
    connect["queryStringParameters"] = {"token": token(["feed_*"])}
    assert invoke(connect)["statusCode"] == 200
    subscribe = sample_event("websocket_subscribe")
    subscribe["requestContext"]["connectionId"] = connection_id
    subscribe["body"] = json.dumps({"action": "subscribe", "channel": "feed_42"})
    assert invoke(subscribe)["statusCode"] == 200
    assert pusher.take(connection_id)[0]["type"] == "subscribed"
    disconnect = sample_event("websocket_disconnect")
    disconnect["requestContext"]["connectionId"] = connection_id
    assert invoke(disconnect)["statusCode"] == 200


@pytest.mark.parametrize(
    ("query", "status"),
    [
        (None, 401),
        ({"token": "garbage"}, 401),
        ({"token": tokens.issue(SECRET, sub="x", channels=["feed_*"], ttl_seconds=-100)}, 401),
    ],
)
def test_handler_refuses_the_handshake(handler: Any, query: Any, status: int) -> None:
    from tests.conftest import sample_event

    invoke, _ = handler
    connect = sample_event("websocket_connect")
    connect.pop("queryStringParameters", None)
    if query is not None:
        connect["queryStringParameters"] = query
    response = invoke(connect)
    assert response["statusCode"] == status and json.loads(response["body"])["message"]


def test_an_undeliverable_reply_does_not_fail_the_invocation(live: Any) -> None:
    from realtime_transport.delivery import DeliveryFailed

    service, pusher = live
    service.connect("c1", token(["feed_*"]))

    def unreachable(connection_id: str, data: bytes) -> bool:
        raise DeliveryFailed(connection_id, "HTTP 500 after 4 attempts")

    pusher.send = unreachable
    send(service, "c1", {"action": "subscribe", "channel": "feed_1"})  # must not raise
    assert service.realtime.connections.subscriptions("c1") == ["transport#feed_1"]


# --- catch-up inside the function's time, in few messages; heads on pong --------------------------


class SlowPusher(RecordingPusher):
    """A management API at AWS's pace: each message takes its time."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.sizes: list[int] = []

    def send(self, connection_id: str, data: bytes) -> bool:
        time.sleep(self.seconds)
        self.sizes.append(len(data))
        return super().send(connection_id, data)


def test_a_long_catch_up_is_packed_into_32_kb_messages(aws: Any, settings_factory: Any) -> None:
    realtime = Realtime(settings=settings_factory(CONNECTIONS_TABLE_NAME="test-connections"), secret=SECRET)
    pusher = SlowPusher(0)
    service = LiveService(realtime, pusher)
    channel = realtime.channel("feed_long")
    for n in range(500):
        channel.broadcast(type="t", data={"n": n, "pad": "x" * 200})
    service.connect("c1", token(["feed_*"]))
    send(service, "c1", {"action": "subscribe", "channel": "feed_long", "cursor": channel.cursor(0)})
    frames = pusher.take("c1")
    assert [e["seq"] for e in events_in(frames)] == list(range(1, 501))
    assert len(frames) <= 500 // 50, f"{len(frames)} messages for 500 events"
    assert max(pusher.sizes) <= 32_000
    for frame in frames[:-1]:
        assert channel.decode_cursor(frame["cursor"]) == events_in([frame])[-1]["seq"]


def test_an_event_too_big_to_share_a_frame_travels_alone(live: Any) -> None:
    service, pusher = live
    channel = service.realtime.channel("feed_big")
    channel.broadcast(type="t", data="small")
    channel.broadcast(type="t", data="x" * 40_000)
    channel.broadcast(type="t", data="small")
    service.connect("c1", token(["feed_*"]))
    send(service, "c1", {"action": "subscribe", "channel": "feed_big", "cursor": channel.cursor(0)})
    frames = pusher.take("c1")
    assert [f["type"] for f in frames] == ["event", "event", "event", "subscribed"]
    assert [e["seq"] for e in events_in(frames)] == [1, 2, 3]


def test_a_catch_up_short_of_time_says_where_to_continue(aws: Any, settings_factory: Any) -> None:
    """With API Gateway's 10-20 ms per message, a catch-up must stop before the function's timeout."""
    realtime = Realtime(settings=settings_factory(CONNECTIONS_TABLE_NAME="test-connections"), secret=SECRET)
    pusher = SlowPusher(0.02)
    service = LiveService(realtime, pusher)
    channel = realtime.channel("feed_slow")
    for _ in range(300):
        channel.broadcast(type="t", data="x" * 3_000)  # ten per message: 30 messages
    service.connect("c1", token(["feed_*"]))
    started = time.monotonic()
    timeout_at = started + 2.0  # the invocation has 2 s left

    def remaining_ms() -> int:
        return int((timeout_at - time.monotonic()) * 1000)

    cursor: str = channel.cursor(0)
    received: list[int] = []
    rounds = 0
    while True:
        rounds += 1
        send(
            service, "c1", {"action": "subscribe", "channel": "feed_slow", "cursor": cursor}, remaining_ms=remaining_ms
        )
        frames = pusher.take("c1")
        assert time.monotonic() < timeout_at, "the answer came after the function's timeout"
        subscribed = frames[-1]
        received.extend(e["seq"] for e in events_in(frames))
        assert channel.decode_cursor(subscribed["cursor"]) == subscribed["position"] == received[-1]
        cursor = subscribed["cursor"]
        if not subscribed["hasMore"]:
            break
        timeout_at = time.monotonic() + 2.0  # the client's next subscribe is a new invocation
    assert received == list(range(1, 301)), "every event once, in order, across the continuations"
    assert rounds > 1


def test_pong_carries_the_head_of_every_subscribed_channel(live: Any) -> None:
    service, pusher = live
    service.connect("c1", token(["feed_*"]))
    for name in ("feed_a", "feed_b"):
        send(service, "c1", {"action": "subscribe", "channel": name})
    pusher.take("c1")
    for _ in range(3):
        service.realtime.channel("feed_a").broadcast(type="t", data=1)
    service.realtime.channel("feed_b").broadcast(type="t", data=1)
    service.realtime.channel("feed_c").broadcast(type="t", data=1)  # not subscribed: not reported
    send(service, "c1", {"action": "ping"})
    assert pusher.take("c1") == [{"type": "pong", "heads": {"feed_a": 3, "feed_b": 1}}]


# --- auth: a new token on the open connection ----------------------------------------------------------


def token_of(sub: str, channels: list[str], ttl: int = 600, secret: bytes = SECRET) -> str:
    return tokens.issue(secret, sub=sub, channels=channels, ttl_seconds=ttl)


def index_expiry(service: LiveService, channel_key: str) -> dict[str, int | None]:
    return {
        entry.connection_id: entry.token_exp
        for page in service.realtime.connections.subscriber_entries(channel_key)
        for entry in page
    }


def test_subscriptions_carry_the_tokens_expiry_into_the_index(live: Any) -> None:
    service, _ = live
    first = token(["feed_*"])
    service.connect("c1", first)
    send(service, "c1", {"action": "subscribe", "channel": "feed_1"})
    assert index_expiry(service, "transport#feed_1") == {"c1": tokens.verify(SECRET, first).exp}


def test_auth_renews_the_connection_and_every_subscription(live: Any) -> None:
    service, pusher = live
    service.connect("c1", token_of("tester", ["feed_*"], ttl=60))
    for n in (1, 2):
        send(service, "c1", {"action": "subscribe", "channel": f"feed_{n}"})
    pusher.take("c1")
    renewal = token_of("tester", ["feed_*"], ttl=3600)
    exp = tokens.verify(SECRET, renewal).exp

    send(service, "c1", {"action": "auth", "token": renewal})

    assert pusher.take("c1") == [{"type": "authed", "exp": exp}]
    connection = service.realtime.connections.connection("c1")
    assert connection is not None and connection.token_expires_at == exp
    assert index_expiry(service, "transport#feed_1") == {"c1": exp} == index_expiry(service, "transport#feed_2")


@pytest.mark.parametrize(
    ("new_token", "problem"),
    [
        (token_of("mallory", ["feed_*"], ttl=3600), "sub 'mallory', this connection is 'tester'"),
        (token_of("tester", ["feed_*"], secret=b"another-secret-long-enough-for-hs256"), "signature"),
        (token_of("tester", ["feed_*"], ttl=-60), "expired"),
        ("not-a-jwt", "malformed"),
    ],
)
def test_auth_with_a_token_that_cannot_replace_the_current_one_is_refused(
    live: Any, new_token: str, problem: str
) -> None:
    service, pusher = live
    current = token_of("tester", ["feed_*"])
    service.connect("c1", current)
    send(service, "c1", {"action": "subscribe", "channel": "feed_1"})
    pusher.take("c1")

    send(service, "c1", {"action": "auth", "token": new_token})

    (reply,) = pusher.take("c1")
    assert reply["type"] == "error" and reply["code"] == "auth_refused", reply
    assert problem in reply["message"] and "the current token stays" in reply["message"]
    connection = service.realtime.connections.connection("c1")
    assert connection is not None and connection.sub == "tester"
    assert connection.token_expires_at == tokens.verify(SECRET, current).exp
    assert index_expiry(service, "transport#feed_1") == {"c1": tokens.verify(SECRET, current).exp}
    send(service, "c1", {"action": "subscribe", "channel": "feed_2"})  # the connection goes on
    assert pusher.take("c1")[0]["type"] == "subscribed"


@pytest.mark.parametrize(
    ("message", "code"), [({"action": "auth"}, "invalid_message"), ({"action": "auth", "token": ""}, "invalid_message")]
)
def test_auth_without_a_token_is_an_invalid_message(live: Any, message: Any, code: str) -> None:
    service, pusher = live
    service.connect("c1", token(["feed_*"]))
    send(service, "c1", message)
    (reply,) = pusher.take("c1")
    assert reply["code"] == code and reply["message"].startswith("token:")


def test_auth_on_an_unknown_connection_is_unauthorized(live: Any) -> None:
    service, pusher = live
    send(service, "ghost", {"action": "auth", "token": token(["feed_*"])})
    (reply,) = pusher.take("ghost")
    assert reply["code"] == "unauthorized" and "not registered" in reply["message"]
    assert service.realtime.connections.connection("ghost") is None, "auth never creates a connection"


def test_auth_narrowing_the_channels_drops_what_the_new_token_does_not_allow(live: Any) -> None:
    service, pusher = live
    service.connect("c1", token_of("tester", ["feed_*", "room_*"]))
    for channel in ("feed_a1", "feed_b1"):
        send(service, "c1", {"action": "subscribe", "channel": channel})
    send(service, "c1", {"action": "join", "room": "R"})
    pusher.take("c1")
    narrower = token_of("tester", ["feed_a*"], ttl=3600)

    send(service, "c1", {"action": "auth", "token": narrower})

    exp = tokens.verify(SECRET, narrower).exp
    replies = pusher.take("c1")
    assert replies[-1] == {"type": "authed", "exp": exp, "unsubscribed": ["feed_b1", "room_R"], "left": ["R"]}
    assert sorted(replies[:-1], key=json.dumps) == sorted(
        [
            {"type": "left", "room": "R", "reason": "not_allowed"},
            {"type": "unsubscribed", "channel": "feed_b1", "reason": "not_allowed"},
            {"type": "unsubscribed", "channel": "room_R", "reason": "not_allowed"},
        ],
        key=json.dumps,
    )
    assert service.realtime.connections.subscriptions("c1") == ["transport#feed_a1"]
    assert index_expiry(service, "transport#feed_a1") == {"c1": exp}
    from realtime_transport.rooms import Room

    assert Room(service.realtime, "R").presence.members().items == [], "left the room it may no longer see"
    send(service, "c1", {"action": "subscribe", "channel": "feed_b1"})
    assert pusher.take("c1")[0]["code"] == "forbidden", "the new rights hold"


def test_a_subscribe_after_the_token_expired_says_token_expired(live: Any) -> None:
    from realtime_transport.connections import Connection

    service, pusher = live
    service.realtime.connections.put_connection(
        Connection("c1", "tester", ("feed_*",), int(time.time()) - 60, 1_700_000_000_000)
    )
    send(service, "c1", {"action": "subscribe", "channel": "feed_1"})
    (reply,) = pusher.take("c1")
    assert reply["code"] == "token_expired" and reply["channel"] == "feed_1"
    assert service.realtime.connections.subscriptions("c1") == []
    send(service, "c1", {"action": "auth", "token": token(["feed_*"])})  # an expired connection may renew
    assert pusher.take("c1")[0]["type"] == "authed"
    send(service, "c1", {"action": "subscribe", "channel": "feed_1"})
    assert pusher.take("c1")[0]["type"] == "subscribed"
