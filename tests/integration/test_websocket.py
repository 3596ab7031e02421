"""Live delivery over real WebSocket clients against `realtime-transport dev`."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import boto3
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from realtime_transport import tokens
from realtime_transport.connections import ConnectionStore
from realtime_transport.secrets import DEVELOPMENT_SECRET

from .conftest import INDEX_LAG_SECONDS, Http, Stack

pytestmark = pytest.mark.integration
SECRET = DEVELOPMENT_SECRET.encode()


def token(channels: list[str], ttl: int = 600) -> str:
    return tokens.issue(SECRET, sub="integration", channels=channels, ttl_seconds=ttl)


def feed() -> str:
    return f"ws-{uuid.uuid4().hex[:10]}"


def envelopes(frames: list[dict[str, Any]], channel: str | None = None) -> list[dict[str, Any]]:
    """The events of `event` and `events` frames (of `channel`), in the order they came."""
    found: list[dict[str, Any]] = []
    for frame in frames:
        if channel is not None and frame.get("channel") != channel:
            continue
        if frame["type"] == "event":
            found.append(frame["event"])
        elif frame["type"] == "events":
            found.extend(frame["events"])
    return found


class Client:
    """A WebSocket subscriber that records every frame."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, stack: Stack, channels: list[str]) -> Client:
        return cls(await websockets.connect(f"{stack.ws_url}?token={token(channels)}"))

    async def send(self, message: dict[str, Any] | str) -> None:
        await self.ws.send(message if isinstance(message, str) else json.dumps(message))

    async def until(self, predicate: Any, timeout: float = 10) -> dict[str, Any]:
        """Read frames until one matches; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), max(0.01, deadline - time.monotonic())))
            self.frames.append(frame)
            if predicate(frame):
                return frame

    async def subscribe(self, channel: str, cursor: str | None = None) -> dict[str, Any]:
        message = {"action": "subscribe", "channel": channel, **({"cursor": cursor} if cursor else {})}
        await self.send(message)
        answer = await self.until(lambda f: f["type"] in {"subscribed", "error"} and f.get("channel") == channel)
        await asyncio.sleep(INDEX_LAG_SECONDS)  # until the fan-out's index shows the subscription
        return answer

    async def events(self, channel: str, count: int, timeout: float = 15) -> list[dict[str, Any]]:
        got = envelopes(self.frames, channel)
        while len(got) < count:
            frame = await self.until(lambda f: f["type"] in {"event", "events"}, timeout)
            got.extend(envelopes([frame], channel))
        return got

    async def quiet(self, seconds: float) -> list[dict[str, Any]]:
        """Frames that arrive within `seconds` (expecting none)."""
        extra: list[dict[str, Any]] = []
        try:
            while True:
                extra.append(json.loads(await asyncio.wait_for(self.ws.recv(), seconds)))
        except TimeoutError:
            return extra


def publish(http: Http, feed_id: str, count: int, start: int = 0) -> list[int]:
    seqs = []
    for n in range(start, start + count):
        status, body = http.post(f"/feeds/{feed_id}/events", {"eventId": f"e{n}", "type": "t", "payload": n})
        assert status == 201
        seqs.append(body["event"]["seq"])
    return seqs


def test_two_subscribers_get_every_event_in_order_and_others_get_none(stack: Stack, http: Http) -> None:
    feed_id, other = feed(), feed()

    async def scenario() -> None:
        a, b, c = [await Client.open(stack, ["feed_*"]) for _ in range(3)]
        for client in (a, b):
            assert (await client.subscribe(f"feed_{feed_id}"))["type"] == "subscribed"
        assert (await c.subscribe(f"feed_{other}"))["type"] == "subscribed"
        await asyncio.to_thread(publish, http, feed_id, 25)
        for client in (a, b):
            events = await client.events(f"feed_{feed_id}", 25)
            assert [e["seq"] for e in events] == list(range(1, 26))
            assert [e["data"]["payload"] for e in events] == list(range(25))
        assert await c.quiet(1.0) == []
        for client in (a, b, c):
            await client.ws.close()

    asyncio.run(scenario())


def test_resubscribing_with_a_cursor_gets_exactly_the_missed_events(stack: Stack, http: Http) -> None:
    feed_id = feed()
    channel = f"feed_{feed_id}"

    async def scenario() -> None:
        client, observer = await Client.open(stack, ["feed_*"]), await Client.open(stack, ["feed_*"])
        await client.subscribe(channel)
        await observer.subscribe(channel)
        await asyncio.to_thread(publish, http, feed_id, 5)
        await client.events(channel, 5)
        # The page's cursor after what it has seen: a history read, as the browser client does.
        cursor = (await asyncio.to_thread(http.get, f"/feeds/{feed_id}/events"))[1]["nextCursor"]
        await client.ws.close()

        await asyncio.to_thread(publish, http, feed_id, 10, 5)  # missed while away
        # Once the observer has them live, the fan-out is done with them: the catch-up alone
        # must bring them, each exactly once.
        await observer.events(channel, 15)

        back = await Client.open(stack, ["feed_*"])
        subscribed = await back.subscribe(channel, cursor)
        assert subscribed["type"] == "subscribed" and subscribed["truncated"] is False
        missed = [e["seq"] for e in envelopes(back.frames)]
        assert missed == list(range(6, 16))
        assert len([f for f in back.frames if f["type"] in {"event", "events"}]) == 1, "one message for ten events"
        await asyncio.to_thread(publish, http, feed_id, 1, 15)  # and live again afterwards
        assert [e["seq"] for e in await back.events(channel, 11)] == [*range(6, 16), 16]
        await back.ws.close()
        await observer.ws.close()

    asyncio.run(scenario())


def test_a_vanished_socket_is_cleaned_up_and_disturbs_nobody(stack: Stack, http: Http) -> None:
    feed_id = feed()
    channel = f"feed_{feed_id}"
    table = boto3.client(
        "dynamodb",
        endpoint_url=stack.printed("DynamoDB:"),
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )

    def subscribers() -> int:
        # Every bucket of the channel's by-channel entries, as the fan-out reads them.
        store = ConnectionStore(table, "local-ConnectionsTable")
        return sum(len(page) for page in store.subscribers(f"transport#{channel}"))

    async def scenario() -> None:
        survivor, doomed = await Client.open(stack, ["feed_*"]), await Client.open(stack, ["feed_*"])
        await survivor.subscribe(channel)
        await doomed.subscribe(channel)
        assert subscribers() == 2
        doomed.ws.transport.abort()  # no close frame: the network just went away
        deadline = time.monotonic() + 10
        while subscribers() != 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert subscribers() == 1
        await asyncio.to_thread(publish, http, feed_id, 10)
        assert [e["seq"] for e in await survivor.events(channel, 10)] == list(range(1, 11))
        await survivor.ws.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("", 401),
        ("?token=", 401),
        ("?token=not.a.jwt", 401),
        (f"?token={tokens.issue(b'some-other-secret-of-enough-length!!', sub='x', channels=['feed_*'])}", 401),
        (f"?token={tokens.issue(SECRET, sub='x', channels=['feed_*'], ttl_seconds=-120)}", 401),
        ("?token={no_rights}", 403),
    ],
)
def test_bad_tokens_are_refused_at_the_handshake(stack: Stack, query: str, status: int) -> None:
    import jwt

    no_rights = jwt.encode({"sub": "x", "exp": int(time.time()) + 60, "channels": []}, SECRET, algorithm="HS256")

    async def scenario() -> None:
        with pytest.raises(InvalidStatus) as refused:
            await websockets.connect(stack.ws_url + query.replace("{no_rights}", no_rights))
        assert refused.value.response.status_code == status

    asyncio.run(scenario())


def test_bad_messages_get_errors_and_the_connection_stays_open(stack: Stack) -> None:
    async def scenario() -> None:
        client = await Client.open(stack, ["feed_*"])
        cases: list[tuple[Any, str]] = [
            ("{oops", "invalid_json"),
            ({"action": "fly"}, "unknown_action"),
            ({"action": "subscribe"}, "invalid_channel"),
            ({"action": "subscribe", "channel": "no spaces allowed"}, "invalid_channel"),
            ({"action": "subscribe", "channel": "feed_x", "cursor": "forged"}, "invalid_cursor"),
            ({"action": "subscribe", "channel": "admin_x"}, "forbidden"),
        ]
        for message, code in cases:
            await client.send(message)
            reply = await client.until(lambda f: f["type"] == "error")
            assert reply["code"] == code and reply["message"]
        await client.send({"action": "ping"})
        assert (await client.until(lambda f: f["type"] in {"pong", "error"}))["type"] == "pong"
        await client.ws.close()

    asyncio.run(scenario())


def test_a_subscribe_outside_the_token_leaks_nothing(stack: Stack, http: Http) -> None:
    allowed, secret = feed(), feed()

    async def scenario() -> None:
        client = await Client.open(stack, [f"feed_{allowed}"])
        refused = await client.subscribe(f"feed_{secret}")
        assert refused["type"] == "error" and refused["code"] == "forbidden"
        await client.subscribe(f"feed_{allowed}")
        await asyncio.to_thread(publish, http, secret, 3)
        await asyncio.to_thread(publish, http, allowed, 1)
        events = await client.events(f"feed_{allowed}", 1)
        assert [e["channel"] for e in events] == [f"feed_{allowed}"]
        assert await client.quiet(0.5) == []
        assert not envelopes(client.frames, f"feed_{secret}")
        await client.ws.close()

    asyncio.run(scenario())


def test_unsubscribe_stops_delivery(stack: Stack, http: Http) -> None:
    feed_id = feed()

    async def scenario() -> None:
        client = await Client.open(stack, ["feed_*"])
        await client.subscribe(f"feed_{feed_id}")
        await client.send({"action": "unsubscribe", "channel": f"feed_{feed_id}"})
        assert (await client.until(lambda f: f["type"] == "unsubscribed"))["channel"] == f"feed_{feed_id}"
        # The index lags for deletes too: an event within the lag may still come (clients drop it).
        await asyncio.sleep(INDEX_LAG_SECONDS)
        await asyncio.to_thread(publish, http, feed_id, 2)
        assert await client.quiet(1.0) == []
        await client.ws.close()

    asyncio.run(scenario())


def test_ping_reports_the_head_of_each_subscribed_channel(stack: Stack, http: Http) -> None:
    """How a client on a quiet channel learns of an event the live path never brought it."""
    quiet, busy = feed(), feed()

    async def scenario() -> None:
        client = await Client.open(stack, ["feed_*"])
        await client.subscribe(f"feed_{quiet}")
        await client.subscribe(f"feed_{busy}")
        await asyncio.to_thread(publish, http, busy, 3)
        await client.events(f"feed_{busy}", 3)
        await client.send({"action": "ping"})
        pong = await client.until(lambda f: f["type"] == "pong")
        assert pong["heads"] == {f"feed_{quiet}": 0, f"feed_{busy}": 3}
        await client.ws.close()

    asyncio.run(scenario())
