"""Sharded delivery on the local stack, over real sockets: a stack whose FanoutShardSize is 3, a
channel of 8 subscribers, so every batch goes out through DeliveryWorkerFunction invocations
(Lambda's Invoke API, served by the stack: lambda_api.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from realtime_devstack import process

from .conftest import Http, Stack, stop_stack
from .test_websocket import Client, envelopes, feed

SUBSCRIBERS = 8


@pytest.fixture(scope="module")
def sharded() -> Iterator[Stack]:
    running = process.start("--history-limit", "50", env={"DEVSTACK_PARAMETERS": "FanoutShardSize=3"})
    yield running
    assert stop_stack(running) == 0


def test_every_subscriber_of_a_sharded_channel_gets_every_event_once_in_order(sharded: Stack) -> None:
    http = Http(sharded.url)
    feed_id = feed()
    channel = f"feed_{feed_id}"

    async def scenario() -> None:
        clients = await asyncio.gather(*(Client.open(sharded, ["feed_*"]) for _ in range(SUBSCRIBERS)))
        await asyncio.gather(*(client.subscribe(channel) for client in clients))
        for n in range(1, 7):
            status, _ = http.post(f"/feeds/{feed_id}/events", {"eventId": f"e{n}", "type": "t", "payload": n})
            assert status == 201
        for client in clients:
            got = await client.events(channel, 6)
            assert [event["seq"] for event in got] == [1, 2, 3, 4, 5, 6]
        await asyncio.sleep(0.2)
        for client in clients:
            assert [event["seq"] for event in envelopes(client.frames, channel)] == [1, 2, 3, 4, 5, 6], "once"
            await client.ws.close()

    asyncio.run(scenario())
    functions = sharded.stats()["functions"]
    # 8 subscribers in shards of at most 3: three worker invocations per batch, none by the fan-out alone.
    assert functions["DeliveryWorkerFunction"]["invocations"] >= 3
    assert functions["DeliveryWorkerFunction"]["invocations"] % 3 == 0
