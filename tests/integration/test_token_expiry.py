"""A token's expiry holds after the handshake, over real sockets against `realtime-transport dev`.

A connection whose token runs out stops receiving: the fan-out sends it `token_expired` and
closes it (`DELETE @connections/{id}`); one that renewed its token (`auth`) keeps receiving.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from realtime_transport import tokens

from .conftest import Http, Stack
from .test_websocket import SECRET, Client, envelopes, feed, publish

pytestmark = pytest.mark.integration
TTL_SECONDS = 3  # the token's life; the server adds the tokens' 5 s leeway before it is expired
LEEWAY_SECONDS = 5


def short_token(channels: list[str], ttl: int = TTL_SECONDS) -> str:
    return tokens.issue(SECRET, sub="expiry-test", channels=channels, ttl_seconds=ttl)


async def closed(client: Client, timeout: float = 10) -> list[dict[str, Any]]:
    """Every frame until the server closes the socket (fails if it stays open)."""
    frames: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    with pytest.raises(ConnectionClosed):
        while True:
            frames.append(json.loads(await asyncio.wait_for(client.ws.recv(), max(0.01, deadline - time.monotonic()))))
    return frames


def test_an_expired_token_stops_delivery_and_closes_while_a_renewed_one_keeps_receiving(
    stack: Stack, http: Http
) -> None:
    feed_id = feed()
    channel = f"feed_{feed_id}"

    async def scenario() -> None:
        issued = time.time()
        expiring = Client(await websockets.connect(f"{stack.ws_url}?token={short_token([channel])}"))
        renewing = Client(await websockets.connect(f"{stack.ws_url}?token={short_token([channel])}"))
        for client in (expiring, renewing):
            assert (await client.subscribe(channel))["type"] == "subscribed"
        (first,) = publish(http, feed_id, 1)
        for client in (expiring, renewing):
            assert [e["seq"] for e in await client.events(channel, 1)] == [first]

        renewal = short_token([channel], ttl=600)
        await renewing.send({"action": "auth", "token": renewal})
        authed = await renewing.until(lambda f: f["type"] in {"authed", "error"})
        assert authed == {"type": "authed", "exp": tokens.verify(SECRET, renewal).exp}

        # Past the first tokens' expiry (and the leeway), by the server's clock as by ours.
        await asyncio.sleep(max(0.0, issued + TTL_SECONDS + LEEWAY_SECONDS + 1.5 - time.time()))
        (second,) = publish(http, feed_id, 1, start=1)

        assert [e["seq"] for e in await renewing.events(channel, 2)] == [first, second]
        after = await closed(expiring)
        assert envelopes(after) == [], "not one event after the expiry"
        assert [(f["type"], f.get("code")) for f in after] == [("error", "token_expired")]
        assert expiring.ws.close_code is not None

        (third,) = publish(http, feed_id, 1, start=2)
        assert [e["seq"] for e in await renewing.events(channel, 3)] == [first, second, third]
        await renewing.ws.close()

    asyncio.run(scenario())
