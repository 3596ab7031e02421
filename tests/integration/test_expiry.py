"""TTL deletion in seconds, on a local stack run with a short TTL and writer timeout.

`realtime-transport dev --history-ttl-seconds 3 --writer-timeout-seconds 1` makes what takes days
on AWS (TTL deletes expired items, late) and ten seconds (a writer's Lambda timeout) happen while
a test watches, over real HTTP and WebSocket sockets.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import websockets

from realtime_devstack import process
from realtime_devstack.process import StackProcess
from realtime_transport import tokens
from realtime_transport.secrets import DEVELOPMENT_SECRET

from .conftest import Http

pytestmark = pytest.mark.integration
TTL_SECONDS = 3


@pytest.fixture(scope="module")
def short_lived() -> Iterator[StackProcess]:
    running = process.start("--history-ttl-seconds", str(TTL_SECONDS), "--writer-timeout-seconds", "1")
    yield running
    assert running.stop() == 0


def stored_seqs(stack: StackProcess, channel: str) -> list[int]:
    """What the stack's DynamoDB holds for a channel (the TTL sweeper deletes what expired)."""
    client = boto3.client("dynamodb", endpoint_url=stack.printed("DynamoDB:"))
    items = client.query(
        TableName="local-EventsTable",
        KeyConditionExpression="pk = :pk AND sk > :zero",
        ExpressionAttributeValues={":pk": {"S": f"transport#{channel}"}, ":zero": {"N": "0"}},
    )["Items"]
    return sorted(int(item["sk"]["N"]) for item in items)


def test_events_deleted_by_ttl_are_a_reported_loss_not_a_stall(short_lived: StackProcess) -> None:
    http = Http(short_lived.url)
    feed = f"ttl-{uuid.uuid4().hex[:8]}"
    channel = f"feed_{feed}"
    start = http.get(f"/feeds/{feed}/events")[1]["nextCursor"]  # position 0
    for n in range(3):
        assert http.post(f"/feeds/{feed}/events", {"eventId": f"e{n}", "type": "t", "payload": n})[0] == 201
    deadline = time.monotonic() + 30
    while stored_seqs(short_lived, channel) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert stored_seqs(short_lived, channel) == [], "the TTL sweeper should have deleted the expired events"
    assert http.post(f"/feeds/{feed}/events", {"eventId": "e3", "type": "t", "payload": 3})[0] == 201

    asked = time.monotonic()
    status, page = http.get(f"/feeds/{feed}/events?cursor={start}")
    assert status == 200 and time.monotonic() - asked < 1.0, "no reader waits on what TTL took"
    assert [e["seq"] for e in page["items"]] == [4] and page["truncated"] is True and page["hasMore"] is False
    assert stored_seqs(short_lived, channel) == [4], "no tombstone was written into the deleted positions"

    async def resume() -> dict[str, Any]:
        token = tokens.issue(DEVELOPMENT_SECRET.encode(), sub="t", channels=["feed_*"])
        async with websockets.connect(f"{short_lived.ws_url}?token={token}") as ws:
            await ws.send(json.dumps({"action": "subscribe", "channel": channel, "cursor": start}))
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if frame["type"] == "subscribed":
                    return frame

    subscribed = asyncio.run(resume())
    assert subscribed["truncated"] is True and subscribed["position"] == 4
