"""Sharded delivery on the local stack, over real sockets: a stack whose FanoutShardSize is 3, a
channel of 8 subscribers, so every batch goes out through DeliveryWorkerFunction invocations
(Lambda's Invoke API, served by the stack: lambda_api.py). The subscriptions are fresh (inside
the cache's settle time), so the fan-out reads none of them itself: its workers read and deliver."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

from realtime_devstack import process
from realtime_transport.connections import SUBSCRIBER_BUCKETS

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
        # The worker as deployed reads and delivers by itself (its grants, its table): every bucket
        # of the channel, one request; everyone gets the frame, and the answer names everyone.
        units = [{"key": f"transport#{channel}#{bucket}"} for bucket in range(SUBSCRIBER_BUCKETS)]
        frame = json.dumps({"type": "pong", "heads": {"probe": 1}})
        answer = await asyncio.to_thread(
            _lambda(sharded).invoke,
            FunctionName="DeliveryWorkerFunction",
            Payload=json.dumps({"units": units, "frames": [frame]}),
        )
        read = json.loads(answer["Payload"].read())
        assert "FunctionError" not in answer, read
        assert sum(len(entries) for entries in read["entries"]) == SUBSCRIBERS and read["delivered"] == SUBSCRIBERS
        for client in clients:
            await client.until(lambda f: f.get("heads") == {"probe": 1})
            await client.ws.close()

    asyncio.run(scenario())
    stats = sharded.stats()
    # 8 subscribers, the buckets' counts say more than 3: the fan-out's workers read and deliver.
    assert stats["functions"]["DeliveryWorkerFunction"]["invocations"] >= 3
    # The fan-out read the channel's bucket versions in one BatchGetItem per batch (nothing else
    # here makes one: every event was published alone).
    assert stats["dynamodb_in_process"]["BatchGetItem"]["requests"] >= 1


def _lambda(stack: Stack, *, key_id: str | None = None) -> Any:
    import boto3
    from botocore.config import Config

    line = next(text for text in stack.output if text.strip().startswith("Management:"))
    given = dict(part.split("=", 1) for part in line.replace(")", " ").split() if part.startswith("AWS_"))
    return boto3.client(
        "lambda",
        endpoint_url=stack.url,
        region_name="us-east-1",
        aws_access_key_id=key_id or given["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=given["AWS_SECRET_ACCESS_KEY"],
        config=Config(retries={"max_attempts": 1}),
    )


def test_the_local_invoke_api_answers_as_lambda_does(sharded: Stack) -> None:
    from botocore.exceptions import ClientError

    client = _lambda(sharded)
    # A request the worker refuses: Lambda's 200 with FunctionError, never a delivery.
    answer = client.invoke(FunctionName="DeliveryWorkerFunction", Payload=b'{"frames": []}')
    assert answer["StatusCode"] == 200 and answer["FunctionError"] == "Unhandled"
    assert json.loads(answer["Payload"].read())["errorType"] == "ValidationError"
    arn = "arn:aws:lambda:us-east-1:123456789012:function:DeliveryWorkerFunction"
    ok = client.invoke(
        FunctionName=arn, Payload=json.dumps({"frames": ["{}"], "groups": [{"frames": [0], "connections": ["x"]}]})
    )
    assert "FunctionError" not in ok and json.loads(ok["Payload"].read())["gone"] == ["x"]
    for call, code in (
        (lambda: client.invoke(FunctionName="NoSuchFunction", Payload=b"{}"), "ResourceNotFoundException"),
        (lambda: client.invoke(FunctionName="DeliveryWorkerFunction", Payload=b"{not json"), "InvalidRequestContent"),
        (
            lambda: client.invoke(FunctionName="DeliveryWorkerFunction", InvocationType="Event", Payload=b"{}"),
            "InvalidParameterValueException",
        ),
        (lambda: _lambda(sharded, key_id="AKIAOTHER").invoke(FunctionName="x", Payload=b"{}"), "AccessDenied"),
    ):
        with pytest.raises(ClientError) as caught:
            call()
        assert caught.value.response["Error"]["Code"].startswith(code)
