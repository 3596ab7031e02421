"""The local stack's pieces, each against AWS's documented behaviour, with stub handlers in a tmp dir.

Sockets are real (aiohttp on loopback, the `websockets` client, boto3 over HTTP); the
functions are small stubs that record the events they get, so each test checks what the
emulated API Gateway or event source mapping did, not what a real handler does with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import textwrap
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from realtime_devstack import cli, template
from realtime_devstack.http_gateway import StaticFiles
from realtime_devstack.lambda_host import FunctionHost
from realtime_devstack.management_api import ManagementApi
from realtime_devstack.stack import DEV_SECRET_HEADER, LocalStack, StackOptions
from realtime_devstack.stream_poller import (
    EventSourceMapping,
    FilterError,
    StreamPoller,
    lambda_record,
    matches,
    parse_filter_criteria,
    passes,
)
from realtime_devstack.ttl_sweeper import TtlSweeper
from realtime_devstack.ws_gateway import (
    ConnectionRegistry,
    WebSocketApi,
    WebSocketGateway,
    select_route,
)
from tests.conftest import sample_event

# moto's server logs every request at INFO.
logging.getLogger("werkzeug").setLevel(logging.WARNING)

TEMPLATE_PATTERN = '{"eventName": ["INSERT"], "dynamodb": {"NewImage": {"kind": {"S": ["event"]}}}}'

# --- stub functions -------------------------------------------------------------------------

# Records every event it gets; $connect lets "good" tokens in, 403s "forbidden" and 401s the rest;
# the route "boom" raises; every message route answers with what it got.
WEBSOCKET_STUB = """
import json, os, pathlib

LOG = pathlib.Path(__file__).with_name("events.jsonl")


def lambda_handler(event, context):
    with LOG.open("a") as log:
        log.write(json.dumps(event) + "\\n")
    route = event["requestContext"]["routeKey"]
    if route == "$connect":
        token = (event.get("queryStringParameters") or {}).get("token")
        if token == "forbidden":
            return {"statusCode": 403, "body": json.dumps({"message": "not your channel"})}
        if token != "good":
            return {"statusCode": 401, "body": json.dumps({"message": "a token is required"})}
        return {"statusCode": 200}
    if route == "$disconnect":
        return {"statusCode": 200}
    if route == "boom":
        raise RuntimeError("boom")
    return {"statusCode": 200, "body": json.dumps({"route": route, "body": event.get("body")})}
"""

# Records every batch; fails (batchItemFailures) each record whose NewImage `failures` says so,
# once per failure asked for (counted in a file), and raises for `raise` records.
FANOUT_STUB = """
import json, pathlib

HERE = pathlib.Path(__file__).parent


def lambda_handler(event, context):
    records = event["Records"]
    with (HERE / "batches.jsonl").open("a") as log:
        log.write(json.dumps(records) + "\\n")
    failed = []
    for record in records:
        image = record["dynamodb"].get("NewImage", {})
        seq = record["dynamodb"]["SequenceNumber"]
        wanted = int(image.get("failures", {}).get("N", "0"))
        counter = HERE / f"failed-{seq}"
        seen = int(counter.read_text()) if counter.exists() else 0
        if seen < wanted:
            counter.write_text(str(seen + 1))
            failed.append({"itemIdentifier": seq})
    return {"batchItemFailures": failed}
"""


def write_function(directory: Path, source: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "app.py").write_text(textwrap.dedent(source))
    return directory


def recorded(directory: Path, name: str = "events.jsonl") -> list[Any]:
    path = directory / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for(condition: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out waiting for the condition")


async def async_wait_for(condition: Callable[[], Any], timeout: float = 5.0) -> Any:
    return await asyncio.to_thread(wait_for, condition, timeout)


@pytest.fixture
def websocket_code(tmp_path: Path) -> Path:
    return write_function(tmp_path / "websocket", WEBSOCKET_STUB)


# --- event filtering ------------------------------------------------------------------------


def stream_record(event_name: str = "INSERT", kind: str | None = "event", **image: Any) -> dict[str, Any]:
    dynamodb: dict[str, Any] = {"Keys": {"pk": {"S": "c"}, "sk": {"N": "1"}}, "SequenceNumber": "1"}
    if kind is not None:
        dynamodb["NewImage"] = {"kind": {"S": kind}, **image}
    return {"eventName": event_name, "dynamodb": dynamodb}


def test_the_templates_filter_passes_new_events_only() -> None:
    mapping = next(m for m in template.event_source_mappings(template.load_template()) if m["table"] == "EventsTable")
    patterns = parse_filter_criteria(mapping["filter_criteria"])
    assert patterns == [json.loads(TEMPLATE_PATTERN)]
    assert passes(patterns, stream_record("INSERT", "event"))
    assert not passes(patterns, stream_record("INSERT", "head"))  # the channel head (UpdateItem ADD)
    assert not passes(patterns, stream_record("INSERT", "idem"))
    assert not passes(patterns, stream_record("MODIFY", "event"))
    assert not passes(patterns, stream_record("REMOVE", None))  # a TTL delete has no NewImage
    assert not passes(patterns, {"eventName": "INSERT", "dynamodb": {"NewImage": "event"}})


def test_filter_rules() -> None:
    record = {"a": "value", "n": 5, "list": ["x", "y"], "nested": {"flag": True, "nothing": None}}
    assert matches({"a": ["other", "value"]}, record)  # a list of rules is ORed
    assert not matches({"a": ["other"]}, record)
    assert matches({"a": ["value"], "n": [5.0]}, record)  # keys are ANDed; numbers compare as numbers
    assert not matches({"a": ["value"], "n": ["5"]}, record)  # a string is not a number
    assert matches({"list": ["y"]}, record)  # an array value matches when any element does
    assert matches({"nested": {"flag": [True], "nothing": [None]}}, record)
    assert not matches({"nested": {"flag": ["true"]}}, record)
    assert not matches({"missing": {"deeper": ["x"]}}, record)
    assert matches({"a": [{"prefix": "val"}], "missing": [{"exists": False}], "n": [{"exists": True}]}, record)
    assert not matches({"a": [{"exists": False}]}, record)
    assert not matches({"a": [{"prefix": "alu"}]}, record) and not matches({"n": [{"prefix": "5"}]}, record)
    assert not matches({"a": [{"suffix": "val"}]}, record)
    assert matches({"a": [{"anything-but": ["other"]}]}, record)
    assert not matches({"a": [{"anything-but": "value"}]}, record)
    assert matches({"a": [{"suffix": "lue"}], "list": [{"equals-ignore-case": "X"}]}, record)
    # Two filters: a record passes when either matches; no filter at all passes everything.
    assert passes([{"a": ["nope"]}, {"n": [5]}], record)
    assert passes([], record)


@pytest.mark.parametrize(
    "pattern",
    [
        '{"n": [{"numeric": [">", 1]}]}',  # not implemented: refused rather than misapplied
        '{"a": "value"}',  # a value must be a list of rules
        '["not", "an", "object"]',
    ],
)
def test_unsupported_filters_are_refused(pattern: str) -> None:
    with pytest.raises(FilterError):
        parse_filter_criteria({"Filters": [{"Pattern": pattern}]})


# --- route selection ------------------------------------------------------------------------

ROUTES = frozenset({"$connect", "$disconnect", "subscribe", "unsubscribe", "ping", "$default"})


@pytest.mark.parametrize(
    ("body", "route"),
    [
        ('{"action": "subscribe", "channel": "feed_1"}', "subscribe"),
        ('{"action": "ping"}', "ping"),
        ('{"action": "dance"}', "$default"),  # no such route
        ('{"channel": "feed_1"}', "$default"),  # no action
        ('{"action": 7}', "$default"),
        ('{"action": "$connect"}', "$default"),  # the connection routes are never selected by a body
        ('["subscribe"]', "$default"),  # JSON, not an object
        ("subscribe", "$default"),  # not JSON
        ('{"action": "ping"', "$default"),  # truncated JSON
        (b"\x00\x01", "$default"),  # a binary frame
    ],
)
def test_route_selection(body: str | bytes, route: str) -> None:
    assert select_route(body, ROUTES, "$request.body.action") == route


def test_route_selection_without_a_default_route() -> None:
    assert select_route('{"action": "dance"}', ROUTES - {"$default"}, "$request.body.action") is None
    assert select_route('{"m": {"op": "ping"}}', ROUTES, "$request.body.m.op") == "ping"
    with pytest.raises(ValueError, match="unsupported route selection"):
        select_route("{}", ROUTES, "$request.header.x")


# --- the WebSocket gateway and the management API, over real sockets ------------------------


@dataclass
class Served:
    url: str
    ws_url: str
    gateway: WebSocketGateway
    registry: ConnectionRegistry
    host: FunctionHost
    management: ManagementApi


@contextlib.asynccontextmanager
async def serve(code_dir: Path, **api_options: Any) -> AsyncIterator[Served]:
    host = FunctionHost("WebSocketFunction", code_dir)
    route_keys = api_options.pop("route_keys", ROUTES | {"boom", "echo"})
    api_options.setdefault("two_way_routes", frozenset({"echo", "$default", "boom"}))
    api = WebSocketApi(routes=dict.fromkeys(route_keys, host), stage="test", **api_options)
    registry = ConnectionRegistry()
    gateway = WebSocketGateway(api, registry)
    app = web.Application()
    app.router.add_get("/ws", gateway.handle)
    management = ManagementApi(registry)
    management.add_routes(app.router)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield Served(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/ws", gateway, registry, host, management)
    finally:
        await gateway.shutdown()
        await runner.cleanup()
        host.close()


def events_of(code_dir: Path, route: str) -> list[dict[str, Any]]:
    return [e for e in recorded(code_dir) if e["requestContext"]["routeKey"] == route]


async def recv_json(ws: ClientConnection) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), 5))


@pytest.mark.parametrize(("token", "status"), [("bad", 401), ("forbidden", 403), (None, 401)])
def test_connect_refused_with_the_handlers_status(websocket_code: Path, token: str | None, status: int) -> None:
    async def scenario() -> None:
        async with serve(websocket_code) as served:
            query = f"?token={token}" if token else ""
            with pytest.raises(InvalidStatus) as refused:
                async with connect(served.ws_url + query):
                    pass
            assert refused.value.response.status_code == status
            assert json.loads(bytes(refused.value.response.body or b""))["message"]
            assert len(served.registry) == 0

    asyncio.run(scenario())
    # $connect ran once, before the upgrade; a refused socket never had a connection to $disconnect.
    assert len(events_of(websocket_code, "$connect")) == 1
    assert events_of(websocket_code, "$disconnect") == []


def test_a_session_produces_api_gateway_events(websocket_code: Path) -> None:
    from aws_lambda_powertools.utilities.parser import parse
    from aws_lambda_powertools.utilities.parser.models import (
        APIGatewayWebSocketConnectEventModel,
        APIGatewayWebSocketDisconnectEventModel,
        APIGatewayWebSocketMessageEventModel,
    )

    async def scenario() -> None:
        async with serve(websocket_code) as served:
            async with connect(served.ws_url + "?token=good&tag=a&tag=b", user_agent_header="stub-agent/1") as ws:
                await ws.send(json.dumps({"action": "echo", "n": 1}))
                assert await recv_json(ws) == {"route": "echo", "body": '{"action": "echo", "n": 1}'}
                await ws.send("not json at all")
                assert await recv_json(ws) == {"route": "$default", "body": "not json at all"}
                # A one-way route: API Gateway drops what the handler returns.
                await ws.send(json.dumps({"action": "ping"}))
                await ws.send(json.dumps({"action": "boom"}))
                failure = await recv_json(ws)
                assert failure["message"] == "Internal server error"
                assert failure["connectionId"] and failure["requestId"]
                await ws.close(code=1000, reason="bye")
            await async_wait_for(lambda: events_of(websocket_code, "$disconnect"))

    asyncio.run(scenario())
    connect_event = events_of(websocket_code, "$connect")[0]
    parse(event=connect_event, model=APIGatewayWebSocketConnectEventModel)
    context = connect_event["requestContext"]
    assert connect_event["queryStringParameters"] == {"token": "good", "tag": "b"}
    assert connect_event["multiValueQueryStringParameters"]["tag"] == ["a", "b"]
    assert connect_event["headers"]["User-Agent"] == "stub-agent/1"
    assert connect_event["multiValueHeaders"]["Sec-WebSocket-Version"] == ["13"]
    assert context["eventType"] == "CONNECT" and context["stage"] == "test" and context["messageDirection"] == "IN"
    connection_id = context["connectionId"]
    assert len(connection_id) == 16 and connection_id.endswith("=")
    assert context["identity"] == {"sourceIp": "127.0.0.1", "userAgent": "stub-agent/1"}

    messages = [e for e in recorded(websocket_code) if e["requestContext"]["eventType"] == "MESSAGE"]
    assert [m["requestContext"]["routeKey"] for m in messages] == ["echo", "$default", "ping", "boom"]
    for message in messages:
        parse(event=message, model=APIGatewayWebSocketMessageEventModel)
        assert message["requestContext"]["connectionId"] == connection_id
        assert message["requestContext"]["connectedAt"] == context["connectedAt"]
    assert len({m["requestContext"]["messageId"] for m in messages}) == 4

    disconnect_event = events_of(websocket_code, "$disconnect")[0]
    parse(event=disconnect_event, model=APIGatewayWebSocketDisconnectEventModel)
    assert disconnect_event["requestContext"]["disconnectStatusCode"] == 1000
    assert disconnect_event["requestContext"]["disconnectReason"] == "bye"
    assert disconnect_event["requestContext"]["connectionId"] == connection_id


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("websocket_connect", "APIGatewayWebSocketConnectEventModel"),
        ("websocket_subscribe", "APIGatewayWebSocketMessageEventModel"),
        ("websocket_disconnect", "APIGatewayWebSocketDisconnectEventModel"),
    ],
)
def test_the_sample_events_are_what_powertools_parses(name: str, model: str) -> None:
    from aws_lambda_powertools.utilities.parser import models, parse

    event = sample_event(name)
    parsed = parse(event=event, model=getattr(models, model))
    assert parsed.request_context.connection_id == "CKzqAcRhjoEFiWw="
    assert parsed.request_context.stage == "live"
    if name == "websocket_connect":
        assert event["queryStringParameters"]["token"] == event["multiValueQueryStringParameters"]["token"][0]
    if name == "websocket_subscribe":
        assert json.loads(event["body"])["action"] == event["requestContext"]["routeKey"]


def test_a_frame_with_no_route_is_forbidden(websocket_code: Path) -> None:
    async def scenario() -> None:
        async with (
            serve(websocket_code, route_keys={"$connect", "ping"}) as served,
            connect(served.ws_url + "?token=good") as ws,
        ):
            await ws.send(json.dumps({"action": "dance"}))
            assert (await recv_json(ws))["message"] == "Forbidden"

    asyncio.run(scenario())


def test_an_oversized_frame_closes_with_1009(websocket_code: Path) -> None:
    async def scenario() -> None:
        async with serve(websocket_code) as served:
            async with connect(served.ws_url + "?token=good", compression=None) as ws:
                await ws.send(json.dumps({"action": "echo", "n": 1}))
                await recv_json(ws)
                await ws.send("x" * (128 * 1024 + 1))
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 5)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
            await async_wait_for(lambda: events_of(websocket_code, "$disconnect"))

    asyncio.run(scenario())
    disconnect = events_of(websocket_code, "$disconnect")[0]["requestContext"]
    assert disconnect["disconnectStatusCode"] == 1009
    # The oversized frame never reached a handler.
    assert [e["requestContext"]["routeKey"] for e in recorded(websocket_code)] == ["$connect", "echo", "$disconnect"]


def test_a_dropped_tcp_connection_still_disconnects(websocket_code: Path) -> None:
    async def scenario() -> None:
        async with serve(websocket_code) as served:
            ws = await connect(served.ws_url + "?token=good")
            ws.transport.abort()
            await async_wait_for(lambda: events_of(websocket_code, "$disconnect"))
            assert len(served.registry) == 0

    asyncio.run(scenario())
    assert events_of(websocket_code, "$disconnect")[0]["requestContext"]["disconnectStatusCode"] == 1006


def test_idle_connections_are_closed_with_1001(websocket_code: Path) -> None:
    async def scenario() -> None:
        async with serve(websocket_code, idle_timeout=0.3) as served:
            async with connect(served.ws_url + "?token=good") as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 5)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
            await async_wait_for(lambda: events_of(websocket_code, "$disconnect"))

    asyncio.run(scenario())
    assert events_of(websocket_code, "$disconnect")[0]["requestContext"]["disconnectStatusCode"] == 1001


def test_shutdown_closes_sockets_with_1001_and_disconnects_each(websocket_code: Path) -> None:
    async def scenario() -> None:
        async with serve(websocket_code) as served:
            sockets = [await connect(served.ws_url + "?token=good") for _ in range(3)]
            await async_wait_for(lambda: len(served.registry) == 3)
            await served.gateway.shutdown()
            for ws in sockets:
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 5)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
            # Shutdown returns once every $disconnect has run.
            assert len(events_of(websocket_code, "$disconnect")) == 3
            with pytest.raises(InvalidStatus) as refused:
                await connect(served.ws_url + "?token=good")
            assert refused.value.response.status_code == 503

    asyncio.run(scenario())
    assert {e["requestContext"]["disconnectStatusCode"] for e in events_of(websocket_code, "$disconnect")} == {1001}


def test_a_plain_get_on_the_websocket_path_needs_an_upgrade(websocket_code: Path) -> None:
    async def scenario() -> None:
        async with serve(websocket_code) as served:
            status = await asyncio.to_thread(http_status, "GET", served.url + "/ws")
            assert status == 426

    asyncio.run(scenario())
    assert recorded(websocket_code) == []


def http_status(method: str, url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, method=method, headers=headers or {})  # noqa: S310 - loopback
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def management_client(url: str) -> Any:
    import boto3

    return boto3.client(
        "apigatewaymanagementapi",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )


def test_management_api_post_get_delete(websocket_code: Path) -> None:
    async def scenario() -> None:
        async with serve(websocket_code) as served:
            client = management_client(served.url)
            async with connect(served.ws_url + "?token=good", user_agent_header="agent/2") as ws:
                await async_wait_for(lambda: len(served.registry) == 1)
                connection_id = served.registry.all()[0].connection_id
                await asyncio.to_thread(client.post_to_connection, ConnectionId=connection_id, Data=b'{"type":"pong"}')
                assert await asyncio.wait_for(ws.recv(), 5) == '{"type":"pong"}'  # a text frame
                info = await asyncio.to_thread(client.get_connection, ConnectionId=connection_id)
                assert info["Identity"] == {"SourceIp": "127.0.0.1", "UserAgent": "agent/2"}
                assert info["ConnectedAt"] <= info["LastActiveAt"]
                await asyncio.to_thread(client.delete_connection, ConnectionId=connection_id)
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 5)
                await async_wait_for(lambda: events_of(websocket_code, "$disconnect"))
                # Gone now, for every operation.
                for call in (client.get_connection, client.delete_connection):
                    with pytest.raises(client.exceptions.GoneException):
                        await asyncio.to_thread(call, ConnectionId=connection_id)

    asyncio.run(scenario())


def test_management_api_410_for_an_unknown_connection(websocket_code: Path) -> None:
    async def scenario() -> None:
        async with serve(websocket_code) as served:
            client = management_client(served.url)
            with pytest.raises(client.exceptions.GoneException) as gone:
                await asyncio.to_thread(client.post_to_connection, ConnectionId="AAAAAAAAAAAAAAA=", Data=b"x")
            assert gone.value.response["ResponseMetadata"]["HTTPStatusCode"] == 410
            # The stage may prefix the path, as in the deployed endpoint URL.
            staged = management_client(served.url + "/test")
            with pytest.raises(staged.exceptions.GoneException):
                await asyncio.to_thread(staged.post_to_connection, ConnectionId="AAAAAAAAAAAAAAA=", Data=b"x")
            # API Gateway refuses unsigned calls before it looks at the connection.
            unsigned = await asyncio.to_thread(http_status, "POST", served.url + "/@connections/AAAAAAAAAAAAAAA=")
            assert unsigned == 403

    asyncio.run(scenario())


def test_management_api_takes_128_kb_and_refuses_a_byte_more_and_counts(websocket_code: Path) -> None:
    # "Quotas for configuring and running a WebSocket in API Gateway": message payload 128 KB.
    from realtime_devstack.management_api import MAX_DATA_BYTES

    assert MAX_DATA_BYTES == 131_072

    async def scenario() -> None:
        async with serve(websocket_code) as served:
            client = management_client(served.url)
            async with connect(served.ws_url + "?token=good") as ws:
                await async_wait_for(lambda: len(served.registry) == 1)
                connection_id = served.registry.all()[0].connection_id
                await asyncio.to_thread(client.post_to_connection, ConnectionId=connection_id, Data=b"x" * 131_072)
                assert len(await asyncio.wait_for(ws.recv(), 5)) == 131_072
                with pytest.raises(client.exceptions.PayloadTooLargeException):
                    await asyncio.to_thread(client.post_to_connection, ConnectionId=connection_id, Data=b"x" * 131_073)
                with pytest.raises(client.exceptions.GoneException):
                    await asyncio.to_thread(client.post_to_connection, ConnectionId="AAAAAAAAAAAAAAA=", Data=b"y")
            management = served.management
            assert management.stats() == {
                "requests": 3,
                "posts": 1,
                "post_bytes": 131_072,
                "gone": 1,
                "too_large": 1,
            }

    asyncio.run(scenario())


# --- the event source mapping: batching, partial failures, retries ------------------------------


def mapping_settings(**overrides: Any) -> template.EventSourceMapping:
    settings: template.EventSourceMapping = {
        "function": "FanoutFunction",
        "event": "EventsStream",
        "table": "EventsTable",
        "batch_size": 100,
        "maximum_batching_window_seconds": 0,
        "starting_position": "LATEST",
        "filter_criteria": {"Filters": [{"Pattern": TEMPLATE_PATTERN}]},
        "filter_patterns": [json.loads(TEMPLATE_PATTERN)],
        "maximum_retry_attempts": 5,
        "bisect_batch_on_function_error": True,
        "function_response_types": ["ReportBatchItemFailures"],
        "on_failure_destination": {"Fn::GetAtt": ["FanoutDeadLetterQueue", "Arn"]},
        "on_failure_target": "FanoutDeadLetterQueue",
        "maximum_record_age_seconds": -1,
        "parallelization_factor": 1,
        "enabled": True,
    }
    settings.update(overrides)  # type: ignore[typeddict-item]
    return settings


def records(count: int, kind: str = "event", start: int = 1) -> list[dict[str, Any]]:
    made = []
    for seq in range(start, start + count):
        record = stream_record("INSERT", kind, seq={"N": str(seq)})
        record["dynamodb"]["SequenceNumber"] = str(seq)
        made.append(record)
    return made


class StubFanout:
    """Records each batch (as lists of sequence numbers) and fails records on demand."""

    def __init__(self, fail: dict[str, int] | None = None, raise_on: set[str] | None = None, reply: Any = None):
        self.fail = dict(fail or {})  # sequence number -> how many more times to report it failed
        self.raise_on = raise_on or set()
        self.reply = reply
        self.batches: list[list[str]] = []

    def __call__(self, event: dict[str, Any]) -> Any:
        seqs = [record["dynamodb"]["SequenceNumber"] for record in event["Records"]]
        self.batches.append(seqs)
        if self.reply is not None:
            return self.reply
        if self.raise_on & set(seqs):
            raise RuntimeError("fanout exploded")
        failed = []
        for seq in seqs:
            if self.fail.get(seq, 0) > 0:
                self.fail[seq] -= 1
                failed.append({"itemIdentifier": seq})
        return {"batchItemFailures": failed}


def run_mapping(stub: StubFanout, batch: list[dict[str, Any]], **overrides: Any) -> EventSourceMapping:
    mapping = EventSourceMapping(settings=mapping_settings(**overrides), invoke=stub, retry_delay=0)
    mapping.deliver(batch)
    return mapping


def seqs(first: int, last: int) -> list[str]:
    return [str(n) for n in range(first, last + 1)]


def test_a_record_that_fails_once_is_retried_from_itself() -> None:
    stub = StubFanout(fail={"3": 1})
    mapping = run_mapping(stub, records(5))
    # Records 1-2 are checkpointed; the retry starts at the first failed record, 3.
    assert stub.batches == [seqs(1, 5), seqs(3, 5)]
    assert mapping.dead_letters == []


def test_the_retry_starts_at_the_first_of_several_failures() -> None:
    stub = StubFanout(fail={"4": 1, "2": 1})
    run_mapping(stub, records(5))
    assert stub.batches == [seqs(1, 5), seqs(2, 5)]


def test_a_record_that_keeps_failing_goes_to_the_dlq_after_the_retries(capsys: pytest.CaptureFixture[str]) -> None:
    stub = StubFanout(fail={"2": 100})
    mapping = run_mapping(stub, records(4), maximum_retry_attempts=2, batch_size=3)
    # The first attempt and 2 retries, then the batch from the failed record is given up;
    # the mapping moves on to the next record.
    assert stub.batches == [seqs(1, 3), seqs(2, 4), seqs(2, 4)]
    [letter] = mapping.dead_letters
    assert [r["dynamodb"]["SequenceNumber"] for r in letter.records] == seqs(2, 4)
    assert letter.destination == "FanoutDeadLetterQueue" and letter.attempts == 3
    assert "FanoutDeadLetterQueue" in capsys.readouterr().out


def test_after_the_dlq_the_mapping_moves_on() -> None:
    stub = StubFanout(fail={"2": 100})
    mapping = run_mapping(stub, records(5), maximum_retry_attempts=1, batch_size=2)
    # Record 2 fails in its first batch and in its one retry; that retried batch is given up.
    assert stub.batches == [seqs(1, 2), seqs(2, 3), seqs(4, 5)]
    assert [[r["dynamodb"]["SequenceNumber"] for r in d.records] for d in mapping.dead_letters] == [seqs(2, 3)]


def test_a_function_error_bisects_the_batch_down_to_the_poison_record() -> None:
    stub = StubFanout(raise_on={"3"})
    mapping = run_mapping(stub, records(4), maximum_retry_attempts=1)
    assert stub.batches == [seqs(1, 4), seqs(1, 2), seqs(3, 4), ["3"], ["3"], ["4"]]
    assert [[r["dynamodb"]["SequenceNumber"] for r in d.records] for d in mapping.dead_letters] == [["3"]]


def test_without_bisection_a_function_error_retries_the_whole_batch() -> None:
    stub = StubFanout(raise_on={"2"})
    mapping = run_mapping(stub, records(3), maximum_retry_attempts=1, bisect_batch_on_function_error=False)
    assert stub.batches == [seqs(1, 3), seqs(1, 3)]
    assert len(mapping.dead_letters[0].records) == 3


def test_records_older_than_the_maximum_age_are_given_up_unprocessed() -> None:
    stub = StubFanout()
    batch = records(4)
    for record in batch[:2]:
        record["dynamodb"]["ApproximateCreationDateTime"] = time.time() - 7200
    for record in batch[2:]:
        record["dynamodb"]["ApproximateCreationDateTime"] = time.time()
    mapping = run_mapping(stub, batch, maximum_record_age_seconds=3600)
    assert stub.batches == [seqs(3, 4)]
    [letter] = mapping.dead_letters
    assert letter.reason == "record age exceeded" and len(letter.records) == 2


@pytest.mark.parametrize("identifier", ["", None, "999"])
def test_an_invalid_item_identifier_fails_the_whole_batch(identifier: Any) -> None:
    stub = StubFanout(reply={"batchItemFailures": [{"itemIdentifier": identifier}]})
    run_mapping(stub, records(3), maximum_retry_attempts=1)
    assert stub.batches == [seqs(1, 3), seqs(1, 3)]


def test_partial_responses_are_ignored_without_report_batch_item_failures() -> None:
    stub = StubFanout(fail={"1": 5})
    run_mapping(stub, records(3), function_response_types=[])
    assert stub.batches == [seqs(1, 3)]


def test_batches_are_cut_at_the_batch_size_after_filtering() -> None:
    stub = StubFanout()
    mixed = records(120) + records(30, kind="head", start=121) + records(130, start=151)
    run_mapping(stub, mixed)
    assert [len(batch) for batch in stub.batches] == [100, 100, 50]
    assert "121" not in {seq for batch in stub.batches for seq in batch}


# --- the poller over moto's real stream ----------------------------------------------------------


@pytest.fixture
def moto_server() -> Iterator[str]:
    from moto.moto_api._internal.models import moto_api_backend
    from moto.server import ThreadedMotoServer

    from realtime_devstack import moto_dynamodb

    moto_dynamodb.install()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        moto_api_backend.reset()


def test_the_poller_reads_the_stream_and_retries_a_failed_record_once(moto_server: str, tmp_path: Path) -> None:
    import boto3
    from aws_lambda_powertools.utilities.parser import parse
    from aws_lambda_powertools.utilities.parser.models import DynamoDBStreamModel

    dynamodb = boto3.client("dynamodb", endpoint_url=moto_server)
    template.create_tables(dynamodb, {"EventsTable": "poller-events"})
    # Written before the poller starts: LATEST skips it.
    dynamodb.put_item(TableName="poller-events", Item={"pk": {"S": "c"}, "sk": {"N": "0"}, "kind": {"S": "event"}})
    code = write_function(tmp_path / "fanout", FANOUT_STUB)
    host = FunctionHost("FanoutFunction", code)
    stream_arn = dynamodb.describe_table(TableName="poller-events")["Table"]["LatestStreamArn"]
    mapping = EventSourceMapping(settings=mapping_settings(), invoke=host.invoke_sync, retry_delay=0)
    poller = StreamPoller(mapping, boto3.client("dynamodbstreams", endpoint_url=moto_server), stream_arn, interval=0.01)
    poller.start()
    try:
        # A channel head created by UpdateItem (filtered out), then three events, the second failing once.
        dynamodb.update_item(
            TableName="poller-events",
            Key={"pk": {"S": "c"}, "sk": {"N": "-1"}},
            UpdateExpression="SET kind = :k ADD head :one",
            ExpressionAttributeValues={":k": {"S": "head"}, ":one": {"N": "1"}},
        )
        for sk, failures in ((1, 0), (2, 1), (3, 0)):
            item = {"pk": {"S": "c"}, "sk": {"N": str(sk)}, "kind": {"S": "event"}, "failures": {"N": str(failures)}}
            dynamodb.put_item(TableName="poller-events", Item=item)

        def delivered() -> list[list[int]]:
            return [[int(r["dynamodb"]["Keys"]["sk"]["N"]) for r in batch] for batch in recorded(code, "batches.jsonl")]

        wait_for(lambda: 3 in [sk for batch in delivered() for sk in batch])
        time.sleep(0.1)  # nothing more may come
    finally:
        poller.stop()
        host.close()
    batches = recorded(code, "batches.jsonl")
    # One batch or several (the writes race the 10 ms polls), but in order, and 2 retried from itself.
    flat = [sk for batch in delivered() for sk in batch]
    assert flat in ([1, 2, 3, 2, 3], [1, 2, 2, 3])
    failed_batch = next(batch for batch in delivered() if 2 in batch)
    assert delivered()[delivered().index(failed_batch) + 1][0] == 2  # the next batch starts at the failed record
    assert mapping.dead_letters == []
    # Records in Lambda's shape: Powertools' parser takes the batch as the function would get it.
    parsed = parse(event={"Records": batches[0]}, model=DynamoDBStreamModel)
    assert parsed.Records[0].eventSourceARN == stream_arn
    assert batches[0][0]["eventSource"] == "aws:dynamodb"
    assert isinstance(batches[0][0]["dynamodb"]["ApproximateCreationDateTime"], float)


def test_lambda_record_converts_boto3_types() -> None:
    from datetime import UTC, datetime

    record = {
        "eventID": "1",
        "eventName": "INSERT",
        "awsRegion": "us-east-1",
        "dynamodb": {
            "ApproximateCreationDateTime": datetime(2026, 1, 1, tzinfo=UTC),
            "Keys": {"pk": {"B": b"\x00\xff"}},
            "NewImage": {"pk": {"B": b"\x00\xff"}, "set": {"BS": [b"a"]}, "m": {"M": {"b": {"B": b"b"}}}},
            "SequenceNumber": "5",
        },
    }
    converted = lambda_record(record, "arn:stream")
    assert converted["eventSourceARN"] == "arn:stream"
    assert converted["dynamodb"]["ApproximateCreationDateTime"] == 1767225600.0
    assert converted["dynamodb"]["Keys"] == {"pk": {"B": "AP8="}}
    assert converted["dynamodb"]["NewImage"]["set"] == {"BS": ["YQ=="]}
    assert converted["dynamodb"]["NewImage"]["m"] == {"M": {"b": {"B": "Yg=="}}}
    json.dumps(converted)


# --- the TTL sweeper -----------------------------------------------------------------------------


def test_the_ttl_sweeper_deletes_expired_items_only(aws: Any) -> None:
    now = int(time.time())
    table = "test-connections"
    items = {
        "expired": {"N": str(now - 10)},
        "live": {"N": str(now + 3600)},
        "ancient": {"N": str(now - 6 * 365 * 24 * 3600)},  # DynamoDB ignores TTLs over five years old
        "text": {"S": str(now - 10)},  # not a Number: never expires
        "none": None,
    }
    for name, ttl in items.items():
        item = {"pk": {"S": name}, "sk": {"S": "meta"}}
        if ttl is not None:
            item["ttl"] = ttl
        aws.put_item(TableName=table, Item=item)
    sweeper = TtlSweeper(aws)
    assert sweeper.ttl_tables() == {"test-events": "ttl", "test-connections": "ttl"}
    assert sweeper.sweep_once() == 1
    left = {item["pk"]["S"] for item in aws.scan(TableName=table)["Items"]}
    assert left == {"live", "ancient", "text", "none"}
    assert sweeper.sweep_once(now=now + 7200) == 1  # later, "live" expires too


# --- the CLI and the stack -----------------------------------------------------------------------


def test_token_command_signs_with_the_development_secret(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from realtime_transport.secrets import DEVELOPMENT_SECRET

    monkeypatch.delenv("REALTIME_TOKEN_SECRET", raising=False)
    assert cli.main(["token", "--channels", "feed_*", "--channels", "ops_1", "--ttl", "60", "--sub", "me"]) == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), DEVELOPMENT_SECRET, algorithms=["HS256"])
    assert claims["channels"] == ["feed_*", "ops_1"] and claims["sub"] == "me"
    assert claims["exp"] - claims["iat"] == 60

    monkeypatch.setenv("REALTIME_TOKEN_SECRET", "another-secret-of-at-least-32-bytes")
    cli.main(["token", "--channels", "feed_*"])
    claims = jwt.decode(capsys.readouterr().out.strip(), "another-secret-of-at-least-32-bytes", algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 3600


def test_static_files(tmp_path: Path) -> None:
    web_dir = tmp_path / "web"
    web_dir.mkdir()
    (web_dir / "dashboard.html").write_text("<h1>dash</h1>")
    (web_dir / "realtime-client.js").write_text("export {}")
    (tmp_path / "secret.txt").write_text("no")

    async def scenario() -> None:
        app = web.Application()
        StaticFiles(web_dir).add_routes(app.router)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        try:

            def get(path: str) -> tuple[int, str, str]:
                try:
                    with urllib.request.urlopen(base + path, timeout=5) as response:  # noqa: S310
                        return response.status, response.headers["Content-Type"], response.read().decode()
                except urllib.error.HTTPError as error:
                    return error.code, "", ""

            assert await asyncio.to_thread(get, "/") == (200, "text/html", "<h1>dash</h1>")
            assert (await asyncio.to_thread(get, "/web/realtime-client.js"))[:2] == (200, "text/javascript")
            assert (await asyncio.to_thread(get, "/web/missing.css"))[0] == 404
            assert (await asyncio.to_thread(get, "/web/../secret.txt"))[0] == 404
            assert (await asyncio.to_thread(get, "/web/%2e%2e/secret.txt"))[0] == 404
        finally:
            await runner.cleanup()

    asyncio.run(scenario())


STUB_TEMPLATE = """
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Parameters:
  StageName:
    Type: String
    Default: live
Globals:
  Function:
    Environment:
      Variables:
        EVENTS_TABLE_NAME: !Ref EventsTable
        WEBSOCKET_MANAGEMENT_URL: !Sub https://${Api}.execute-api.${AWS::Region}.amazonaws.com/${StageName}
Resources:
  EventsTable:
    Type: AWS::DynamoDB::Table
    Properties:
      AttributeDefinitions: [{AttributeName: pk, AttributeType: S}, {AttributeName: sk, AttributeType: N}]
      KeySchema: [{AttributeName: pk, KeyType: HASH}, {AttributeName: sk, KeyType: RANGE}]
      BillingMode: PAY_PER_REQUEST
      StreamSpecification: {StreamViewType: NEW_IMAGE}
      TimeToLiveSpecification: {AttributeName: ttl, Enabled: true}
  Api:
    Type: AWS::ApiGatewayV2::Api
    Properties: {Name: stub, ProtocolType: WEBSOCKET, RouteSelectionExpression: $request.body.action}
  Integration:
    Type: AWS::ApiGatewayV2::Integration
    Properties:
      ApiId: !Ref Api
      IntegrationType: AWS_PROXY
      IntegrationUri: !Sub arn:aws:apigateway:${AWS::Region}:lambda:path/functions/${WebSocketFunction.Arn}/invocations
  ConnectRoute:
    Type: AWS::ApiGatewayV2::Route
    Properties: {ApiId: !Ref Api, RouteKey: $connect, Target: !Sub "integrations/${Integration}"}
  DisconnectRoute:
    Type: AWS::ApiGatewayV2::Route
    Properties: {ApiId: !Ref Api, RouteKey: $disconnect, Target: !Sub "integrations/${Integration}"}
  EchoRoute:
    Type: AWS::ApiGatewayV2::Route
    Properties: {ApiId: !Ref Api, RouteKey: echo, Target: !Sub "integrations/${Integration}"}
  EchoRouteResponse:
    Type: AWS::ApiGatewayV2::RouteResponse
    Properties: {ApiId: !Ref Api, RouteId: !Ref EchoRoute, RouteResponseKey: $default}
  Stage:
    Type: AWS::ApiGatewayV2::Stage
    Properties: {ApiId: !Ref Api, StageName: !Ref StageName}
  WebSocketFunction:
    Type: AWS::Serverless::Function
    Properties: {CodeUri: functions/websocket/, Handler: app.lambda_handler}
  FanoutFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/fanout/
      Handler: app.lambda_handler
      Events:
        Stream:
          Type: DynamoDB
          Properties:
            Stream: !GetAtt EventsTable.StreamArn
            StartingPosition: LATEST
            FilterCriteria:
              Filters:
                - Pattern: '{"eventName": ["INSERT"], "dynamodb": {"NewImage": {"kind": {"S": ["event"]}}}}'
  MissingFunction:
    Type: AWS::Serverless::Function
    Properties: {CodeUri: functions/not_written_yet/, Handler: app.lambda_handler}
"""

# Posts each new event to every connection the stub websocket function saw connect, with boto3
# and no endpoint_url: the stack's AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI must lead it home.
STACK_FANOUT_STUB = """
import json, os, pathlib
import boto3

LOG = pathlib.Path(__file__).parents[1] / "websocket" / "events.jsonl"


def lambda_handler(event, context):
    client = boto3.client("apigatewaymanagementapi")
    connections = [json.loads(line)["requestContext"]["connectionId"] for line in LOG.read_text().splitlines()
                   if json.loads(line)["requestContext"]["routeKey"] == "$connect"]
    for record in event["Records"]:
        frame = json.dumps({"sk": record["dynamodb"]["NewImage"]["sk"]["N"],
                            "url": os.environ["WEBSOCKET_MANAGEMENT_URL"]})
        for connection_id in connections:
            client.post_to_connection(ConnectionId=connection_id, Data=frame.encode())
    return {"batchItemFailures": []}
"""


@pytest.fixture
def restored_environ() -> Iterator[None]:
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_the_stack_wires_functions_gateway_stream_and_management_api(tmp_path: Path, restored_environ: None) -> None:
    import boto3
    from moto.moto_api._internal.models import moto_api_backend

    (tmp_path / "template.yaml").write_text(STUB_TEMPLATE)
    write_function(tmp_path / "functions" / "websocket", WEBSOCKET_STUB)
    write_function(tmp_path / "functions" / "fanout", STACK_FANOUT_STUB)
    websocket_log = tmp_path / "functions" / "websocket"
    stack = LocalStack(
        StackOptions(port=0, template_path=tmp_path / "template.yaml", web_dir=tmp_path, ttl_sweep_interval=0.2)
    )

    async def scenario() -> None:
        await stack.start()
        try:
            assert set(stack.functions) == {"WebSocketFunction", "FanoutFunction"}  # MissingFunction skipped
            assert os.environ["WEBSOCKET_MANAGEMENT_URL"] == stack.url
            assert os.environ["AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI"] == stack.url
            assert os.environ["REQUIRE_HISTORY_TOKEN"] == "false"
            async with connect(stack.websocket_url + "?token=good") as ws:
                await ws.send(json.dumps({"action": "echo"}))  # two-way: the RouteResponse
                assert (await recv_json(ws))["route"] == "echo"
                dynamodb = boto3.client("dynamodb", endpoint_url=stack.dynamodb_url)
                for sk, kind in ((1, "head"), (2, "event")):
                    expired = str(int(time.time()) - 60)
                    item = {"pk": {"S": "c"}, "sk": {"N": str(sk)}, "kind": {"S": kind}, "ttl": {"N": expired}}
                    await asyncio.to_thread(dynamodb.put_item, TableName="local-EventsTable", Item=item)
                assert await recv_json(ws) == {"sk": "2", "url": stack.url}
                # The sweeper deletes both (expired a minute ago) within a few sweeps.
                await async_wait_for(
                    lambda: dynamodb.scan(TableName="local-EventsTable")["Count"] == 0,
                )
                stopping = asyncio.create_task(stack.stop())
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 10)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
                await stopping
        finally:
            await stack.stop()  # idempotent: a failed assertion still stops everything
            moto_api_backend.reset()

    asyncio.run(scenario())
    connect_event = events_of(websocket_log, "$connect")[0]
    assert connect_event["requestContext"]["stage"] == "live"
    assert [e["requestContext"]["disconnectStatusCode"] for e in events_of(websocket_log, "$disconnect")] == [1001]


# --- timeouts, TTLs and faults of the stack, and their CLI flags ---------------------------------

HTTP_STUB_TEMPLATE = """
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Globals:
  Function:
    Timeout: 5
    Environment:
      Variables:
        EVENTS_TABLE_NAME: !Ref EventsTable
        WRITER_TIMEOUT_SECONDS: 10
        HISTORY_TTL_HOURS: 168
        IDEMPOTENCY_TTL_HOURS: 168
Resources:
  EventsTable:
    Type: AWS::DynamoDB::Table
    Properties:
      AttributeDefinitions: [{AttributeName: pk, AttributeType: S}, {AttributeName: sk, AttributeType: N}]
      KeySchema: [{AttributeName: pk, KeyType: HASH}, {AttributeName: sk, KeyType: RANGE}]
      BillingMode: PAY_PER_REQUEST
      TimeToLiveSpecification: {AttributeName: ttl, Enabled: true}
  HttpFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/http/
      Handler: app.lambda_handler
      Timeout: 10
      Events:
        Sleep: {Type: HttpApi, Properties: {Path: /sleep, Method: GET}}
  OtherFunction:
    Type: AWS::Serverless::Function
    Properties: {CodeUri: functions/other/, Handler: app.lambda_handler}
"""

# Sleeps ?s= seconds; answers with its remaining time at the start and the settings it was given.
HTTP_SLEEP_STUB = """
import json, os, time


def lambda_handler(event, context):
    remaining = context.get_remaining_time_in_millis()
    time.sleep(float((event.get("queryStringParameters") or {}).get("s", "0")))
    names = ("WRITER_TIMEOUT_SECONDS", "HISTORY_TTL_HOURS", "IDEMPOTENCY_TTL_HOURS")
    return {"statusCode": 200, "body": json.dumps({"remaining": remaining, "env": {n: os.environ[n] for n in names}})}
"""


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - loopback
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def dev_headers(stack: LocalStack) -> dict[str, str]:
    """What lets a request into /dev/*: this run's secret."""
    return {DEV_SECRET_HEADER: stack.dev_secret}


def test_the_stack_enforces_timeouts_shortens_ttls_and_turns_faults_on(tmp_path: Path, restored_environ: None) -> None:
    from moto.moto_api._internal.models import moto_api_backend

    from realtime_devstack import faithful

    (tmp_path / "template.yaml").write_text(HTTP_STUB_TEMPLATE)
    write_function(tmp_path / "functions" / "http", HTTP_SLEEP_STUB)
    write_function(tmp_path / "functions" / "other", "def lambda_handler(event, context):\n    return {}\n")
    stack = LocalStack(
        StackOptions(
            port=0,
            template_path=tmp_path / "template.yaml",
            web_dir=tmp_path,
            writer_timeout_seconds=0.5,
            history_ttl_seconds=2,
            function_timeouts={"OtherFunction": 7},
            faults=faithful.Faults(gsi_lag_ms=50, seed=1),
        )
    )

    async def scenario() -> None:
        await stack.start()
        try:
            http, other = stack.functions["HttpFunction"], stack.functions["OtherFunction"]
            # The writer timeout is the ingest function's Timeout; an override wins; else the template's.
            assert (http.timeout, other.timeout) == (0.5, 7.0)
            assert http.integration_timeout == 30.0  # the HTTP API's own limit
            assert stack.sweeper is not None and stack.sweeper.interval == 0.5  # TTLs of 2 s can be seen
            assert faithful.current().gsi_lag_ms == 50  # configured once the tables exist
            status, body = await asyncio.to_thread(http_get, stack.url + "/sleep")
            assert status == 200 and 400 < body["remaining"] <= 500
            assert body["env"] == {
                "WRITER_TIMEOUT_SECONDS": "0.5",
                "HISTORY_TTL_HOURS": repr(2 / 3600),
                "IDEMPOTENCY_TTL_HOURS": repr(2 / 3600),
            }
            # The function times out first: a function error, which the HTTP API answers with a 500.
            assert await asyncio.to_thread(http_get, stack.url + "/sleep?s=2") == (
                500,
                {"message": "Internal Server Error"},
            )
            # API Gateway gives up first (a function whose Timeout is past the integration timeout).
            http.timeout, http.integration_timeout = 5.0, 0.3
            assert await asyncio.to_thread(http_get, stack.url + "/sleep?s=1") == (
                503,
                {"message": "Service Unavailable"},
            )
            _, stats = await asyncio.to_thread(http_get, stack.url + "/dev/stats", dev_headers(stack))
            # Warm at start-up, and again after the timeout discarded its sandbox.
            assert stats["functions"]["HttpFunction"] == {"invocations": 3, "timeouts": 1, "cold_starts": 2}
            assert stats["faults"] == {"timeout:HttpFunction": 1}
            assert stats["management"]["posts"] == 0
        finally:
            await stack.stop()
            moto_api_backend.reset()

    asyncio.run(scenario())
    assert faithful.current() == faithful.Faults()  # the stack put the kind substrate back


def test_dev_flags_for_faults_ttls_and_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from realtime_devstack.faithful import FAITHFUL_DEFAULTS, Faults

    def parsed(*flags: str) -> Any:
        return cli.build_parser().parse_args(["dev", *flags])

    monkeypatch.delenv(cli.FAITHFUL_ENV, raising=False)
    assert cli.faults_from_args(parsed()) is None  # the kind substrate, not even configured
    monkeypatch.setenv(cli.FAITHFUL_ENV, "1")
    assert cli.faults_from_args(parsed()) == FAITHFUL_DEFAULTS
    monkeypatch.delenv(cli.FAITHFUL_ENV)
    faults = cli.faults_from_args(
        parsed(
            "--faithful",
            "--seed",
            "3",
            "--fault",
            "PutItem:ThrottlingException:0.1",
            "--fault",
            "*:InternalServerError:0.01",
            "--fault",
            "TransactWriteItems:lost:0.02",
        )
    )
    assert faults == dataclasses.replace(
        FAITHFUL_DEFAULTS,
        seed=3,
        error_rates={"PutItem": {"ThrottlingException": 0.1}, "*": {"InternalServerError": 0.01}},
        lost_response_rates={"TransactWriteItems": 0.02},
    )
    assert FAITHFUL_DEFAULTS.error_rates == {}  # the defaults were copied, not changed
    assert cli.faults_from_args(parsed("--fault", "GetItem:ServiceUnavailable:1")) == Faults(
        error_rates={"GetItem": {"ServiceUnavailable": 1.0}}
    )
    args = parsed("--history-ttl-seconds", "5", "--writer-timeout-seconds", "2.5")
    assert (args.history_ttl_seconds, args.writer_timeout_seconds) == (5.0, 2.5)
    for bad in (
        ["--fault", "PutItem:NoSuchError:0.1"],
        ["--fault", "PutItem:lost:2"],
        ["--fault", "PutItem:0.1"],
        ["--history-ttl-seconds", "0"],
        ["--writer-timeout-seconds", "-1"],
    ):
        with pytest.raises(SystemExit):
            parsed(*bad)


# --- rooms: starting positions, prefix filters, schedules, lost $disconnects, presence options ---------------


def test_the_prefix_rule_filters_member_items_by_sort_key() -> None:
    pattern = parse_filter_criteria(
        {"Filters": [{"Pattern": '{"dynamodb": {"Keys": {"sk": {"S": [{"prefix": "member#"}]}}}}'}]}
    )

    def keyed(sk: str, event_name: str = "MODIFY") -> dict[str, Any]:
        return {"eventName": event_name, "dynamodb": {"Keys": {"pk": {"S": "room#transport#R"}, "sk": {"S": sk}}}}

    assert passes(pattern, keyed("member#alice")) and passes(pattern, keyed("member#", "REMOVE"))
    for sk in ("count#3", "meta", "room#transport#R", "xmember#alice", "Member#alice"):
        assert not passes(pattern, keyed(sk)), sk
    assert not passes(pattern, {"eventName": "INSERT", "dynamodb": {"Keys": {"sk": {"N": "5"}}}})


def test_a_trim_horizon_mapping_reads_what_was_written_before_it_started(moto_server: str, tmp_path: Path) -> None:
    import boto3

    dynamodb = boto3.client("dynamodb", endpoint_url=moto_server)
    template.create_tables(dynamodb, {"EventsTable": "trim-events"})
    # Written before either poller starts: TRIM_HORIZON reads it, LATEST skips it.
    dynamodb.put_item(TableName="trim-events", Item={"pk": {"S": "c"}, "sk": {"N": "1"}, "kind": {"S": "event"}})
    stream_arn = dynamodb.describe_table(TableName="trim-events")["Table"]["LatestStreamArn"]
    streams = boto3.client("dynamodbstreams", endpoint_url=moto_server)
    got: dict[str, list[int]] = {"TRIM_HORIZON": [], "LATEST": []}
    pollers = []
    for position, seen in got.items():

        def invoke(event: dict[str, Any], seen: list[int] = seen) -> dict[str, Any]:
            seen.extend(int(r["dynamodb"]["Keys"]["sk"]["N"]) for r in event["Records"])
            return {"batchItemFailures": []}

        mapping = EventSourceMapping(settings=mapping_settings(starting_position=position), invoke=invoke)
        poller = StreamPoller(mapping, streams, stream_arn, interval=0.01)
        assert poller.iterator_type == position
        poller.start()
        pollers.append(poller)
    try:
        dynamodb.put_item(TableName="trim-events", Item={"pk": {"S": "c"}, "sk": {"N": "2"}, "kind": {"S": "event"}})
        wait_for(lambda: 2 in got["TRIM_HORIZON"] and 2 in got["LATEST"])
    finally:
        for poller in pollers:
            poller.stop()
    assert got == {"TRIM_HORIZON": [1, 2], "LATEST": [2]}


def test_a_schedule_fires_at_start_then_at_its_rate_without_waiting_for_a_running_invocation() -> None:
    import threading

    from realtime_devstack.scheduler import ScheduleTimer

    release = threading.Event()
    events: list[dict[str, Any]] = []

    def invoke(event: dict[str, Any]) -> None:
        events.append(event)
        if len(events) == 1:
            release.wait(10)  # the first invocation runs long (a sweeper looping inside)

    schedule: template.Schedule = {
        "function": "SweeperFunction",
        "event": "Sweep",
        "type": "ScheduleV2",
        "expression": "rate(1 minute)",
        "rate_seconds": 60,
        "input": None,
        "enabled": True,
    }
    timer = ScheduleTimer(schedule, invoke, interval=0.05)
    assert ScheduleTimer(schedule, invoke).interval == 60  # the template's rate by default
    timer.start()
    try:
        wait_for(lambda: len(events) >= 3)  # at start, then on time while the first still runs
        assert not release.is_set() and timer.running >= 1
        assert events[0] == {}  # ScheduleV2 without Input
    finally:
        release.set()
        timer.stop()
    wait_for(lambda: timer.running == 0)
    assert timer.errors == 0 and timer.completed == timer.invocations


SCHEDULE_TEMPLATE = """
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Parameters:
  PresenceGraceSeconds: {Type: Number, Default: 10}
  PresenceLeaseSeconds: {Type: Number, Default: 30}
  PresenceSweepSeconds: {Type: Number, Default: 10}
Globals:
  Function:
    Environment:
      Variables:
        EVENTS_TABLE_NAME: !Ref EventsTable
        PRESENCE_GRACE_SECONDS: !Ref PresenceGraceSeconds
        PRESENCE_LEASE_SECONDS: !Ref PresenceLeaseSeconds
        PRESENCE_SWEEP_SECONDS: !Ref PresenceSweepSeconds
Resources:
  EventsTable:
    Type: AWS::DynamoDB::Table
    Properties:
      AttributeDefinitions: [{AttributeName: pk, AttributeType: S}, {AttributeName: sk, AttributeType: N}]
      KeySchema: [{AttributeName: pk, KeyType: HASH}, {AttributeName: sk, KeyType: RANGE}]
      BillingMode: PAY_PER_REQUEST
  SweeperFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/sweeper/
      Handler: app.lambda_handler
      Timeout: 20
      Events:
        Sweep: {Type: ScheduleV2, Properties: {ScheduleExpression: rate(1 minute)}}
  HttpFunction:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: functions/http/
      Handler: app.lambda_handler
      Events:
        Ping: {Type: HttpApi, Properties: {Path: /ping, Method: GET}}
"""

# Records that it started (its remaining time, the presence settings), then runs until released.
SWEEPER_STUB = """
import json, os, pathlib, time

HERE = pathlib.Path(__file__).parent


def lambda_handler(event, context):
    names = ("PRESENCE_GRACE_SECONDS", "PRESENCE_LEASE_SECONDS", "PRESENCE_SWEEP_SECONDS")
    started = {"remaining": context.get_remaining_time_in_millis(), "env": {n: os.environ[n] for n in names}}
    (HERE / "started.tmp").write_text(json.dumps(started))
    (HERE / "started.tmp").replace(HERE / "started.json")  # whole, for a reader polling for it
    while not (HERE / "release").exists() and context.get_remaining_time_in_millis() > 1000:
        time.sleep(0.02)
    (HERE / "done").write_text("yes")
    return {"passes": 1}
"""


def test_the_stack_runs_schedules_from_the_start_beside_other_functions(tmp_path: Path, restored_environ: None) -> None:
    from moto.moto_api._internal.models import moto_api_backend

    (tmp_path / "template.yaml").write_text(SCHEDULE_TEMPLATE)
    sweeper = write_function(tmp_path / "functions" / "sweeper", SWEEPER_STUB)
    ping = 'def lambda_handler(event, context):\n    return {"statusCode": 200, "body": "{}"}\n'
    write_function(tmp_path / "functions" / "http", ping)
    stack = LocalStack(
        StackOptions(
            port=0,
            template_path=tmp_path / "template.yaml",
            web_dir=tmp_path,
            presence_grace_seconds=2,
            presence_lease_seconds=3.5,
            presence_sweep_seconds=1,
        )
    )

    async def scenario() -> None:
        await stack.start()
        try:
            (timer,) = stack.schedules
            assert (timer.name, timer.interval) == ("SweeperFunction", 60.0)
            started = await async_wait_for(lambda: (sweeper / "started.json").exists())  # first run: at start
            assert started
            run = json.loads((sweeper / "started.json").read_text())
            assert 15_000 < run["remaining"] <= 20_000  # the template's Timeout
            assert run["env"] == {
                "PRESENCE_GRACE_SECONDS": "2",
                "PRESENCE_LEASE_SECONDS": "3.5",
                "PRESENCE_SWEEP_SECONDS": "1",
            }
            # While the scheduled invocation runs on, other functions answer.
            assert await asyncio.to_thread(http_get, stack.url + "/ping") == (200, {})
            assert not (sweeper / "done").exists()
            _, stats = await asyncio.to_thread(http_get, stack.url + "/dev/stats", dev_headers(stack))
            assert stats["schedules"]["SweeperFunction"]["running"] == 1
            (sweeper / "release").write_text("")
            await async_wait_for(lambda: (sweeper / "done").exists())
            await async_wait_for(lambda: timer.completed == 1)
            assert stack.presence_settings() == {
                "PRESENCE_GRACE_SECONDS": "2",
                "PRESENCE_LEASE_SECONDS": "3.5",
                "PRESENCE_SWEEP_SECONDS": "1",
            }
        finally:
            await stack.stop()
            moto_api_backend.reset()

    asyncio.run(scenario())


def test_presence_settings_default_to_the_templates_parameters() -> None:
    stack = LocalStack(StackOptions(port=0))
    assert stack.presence_settings() == {
        "PRESENCE_GRACE_SECONDS": "10",
        "PRESENCE_LEASE_SECONDS": "30",
        "PRESENCE_SWEEP_SECONDS": "10",
    }


def test_a_lost_disconnect_leaves_the_socket_gone_for_the_management_api(websocket_code: Path) -> None:
    from realtime_devstack import faithful

    async def scenario() -> None:
        async with serve(websocket_code) as served:
            client = management_client(served.url)
            ws = await connect(served.ws_url + "?token=good")
            await async_wait_for(lambda: len(served.registry) == 1)
            connection_id = served.registry.all()[0].connection_id
            ws.transport.abort()  # no close frame
            await async_wait_for(lambda: len(served.registry) == 0)
            with pytest.raises(client.exceptions.GoneException):
                await asyncio.to_thread(client.get_connection, ConnectionId=connection_id)
            await async_wait_for(lambda: served.gateway.lost_disconnects == 1)
            assert served.gateway.disconnects == 0

    faithful.configure(faithful.Faults(disconnect_lost_rate=1.0))
    try:
        asyncio.run(scenario())
        assert faithful.injected() == {"lost:$disconnect": 1}
    finally:
        faithful.reset()
    assert events_of(websocket_code, "$disconnect") == []  # never invoked
    assert len(events_of(websocket_code, "$connect")) == 1


def test_a_dropped_socket_is_gone_for_the_management_api_at_once(websocket_code: Path) -> None:
    async def scenario() -> None:
        async with serve(websocket_code) as served:
            client = management_client(served.url)
            async with connect(served.ws_url + "?token=good") as ws:
                await async_wait_for(lambda: len(served.registry) == 1)
                (connection,) = served.registry.all()
                assert served.gateway.drop_connections() == 1
                # Before its receive loop has seen the end: already gone, as on API Gateway.
                assert served.registry.get(connection.connection_id) is None
                with pytest.raises(client.exceptions.GoneException):
                    await asyncio.to_thread(client.get_connection, ConnectionId=connection.connection_id)
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 5)
            await async_wait_for(lambda: events_of(websocket_code, "$disconnect"))  # (not lost: no fault)

    asyncio.run(scenario())


def test_dev_flags_for_presence_and_the_lost_disconnect_fault(monkeypatch: pytest.MonkeyPatch) -> None:
    from realtime_devstack.faithful import Faults

    def parsed(*flags: str) -> Any:
        return cli.build_parser().parse_args(["dev", *flags])

    monkeypatch.delenv(cli.FAITHFUL_ENV, raising=False)
    for flag in ("disconnect:lost:1.0", "$disconnect:lost:1"):
        assert cli.faults_from_args(parsed("--fault", flag)) == Faults(disconnect_lost_rate=1.0), flag
    assert cli.faults_from_args(parsed("--fault", "disconnect:lost:0.25", "--fault", "PutItem:lost:0.1")) == Faults(
        disconnect_lost_rate=0.25, lost_response_rates={"PutItem": 0.1}
    )
    args = parsed("--presence-grace-seconds", "2", "--presence-lease-seconds", "3.5", "--presence-sweep-seconds", "1")
    assert (args.presence_grace_seconds, args.presence_lease_seconds, args.presence_sweep_seconds) == (2.0, 3.5, 1.0)
    assert parsed().presence_grace_seconds is None  # the template's
    for bad in (
        ["--fault", "disconnect:ThrottlingException:0.1"],
        ["--fault", "disconnect:lost:1.5"],
        ["--presence-lease-seconds", "0"],
        ["--presence-sweep-seconds", "-1"],
    ):
        with pytest.raises(SystemExit):
            parsed(*bad)


def test_token_command_and_dev_token_carry_write_patterns(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, restored_environ: None
) -> None:
    from moto.moto_api._internal.models import moto_api_backend

    from realtime_transport.secrets import DEVELOPMENT_SECRET

    monkeypatch.delenv("REALTIME_TOKEN_SECRET", raising=False)
    assert cli.main(["token", "--channels", "room_*", "--write", "room_a", "--write", "room_b"]) == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), DEVELOPMENT_SECRET, algorithms=["HS256"])
    assert (claims["channels"], claims["write"]) == (["room_*"], ["room_a", "room_b"])
    cli.main(["token", "--channels", "feed_*"])
    assert "write" not in jwt.decode(capsys.readouterr().out.strip(), DEVELOPMENT_SECRET, algorithms=["HS256"])

    (tmp_path / "template.yaml").write_text(SCHEDULE_TEMPLATE.split("  SweeperFunction:")[0])
    stack = LocalStack(StackOptions(port=0, template_path=tmp_path / "template.yaml", web_dir=tmp_path))

    async def scenario() -> None:
        await stack.start()
        try:
            _, body = await asyncio.to_thread(
                http_get, stack.url + "/dev/token?channels=room_*&write=room_*", dev_headers(stack)
            )
            claims = jwt.decode(body["token"], DEVELOPMENT_SECRET, algorithms=["HS256"])
            assert (claims["channels"], claims["write"]) == (["room_*"], ["room_*"])
            _, body = await asyncio.to_thread(http_get, stack.url + "/dev/token", dev_headers(stack))
            claims = jwt.decode(body["token"], DEVELOPMENT_SECRET, algorithms=["HS256"])
            assert claims["channels"] == ["feed_*"] and "write" not in claims
        finally:
            await stack.stop()
            moto_api_backend.reset()

    asyncio.run(scenario())


# --- safe on a laptop: Host names, CORS, the management API's per-run key, CLI refusals -------------


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("127.0.0.1:3000", ("127.0.0.1", 3000)),
        ("LocalHost:80", ("localhost", 80)),
        ("[::1]:3000", ("[::1]", 3000)),
        ("example.test", ("example.test", None)),
        ("", None),
        (":3000", None),
        ("host:port", None),
        ("[::1", None),
        ("[::1]x", None),
    ],
)
def test_host_headers_are_split_into_name_and_port(value: str, parsed: tuple[str, int | None] | None) -> None:
    from realtime_devstack.stack import split_host_header

    assert split_host_header(value) == parsed


def test_only_the_stacks_own_names_and_port_are_its_hosts() -> None:
    stack = LocalStack(StackOptions(port=0, allow_hosts=("DevBox.test", "::2")))
    stack.port, stack.allowed_hosts = 3000, frozenset({"127.0.0.1", "localhost", "[::1]", "devbox.test", "[::2]"})
    assert all(stack.host_allowed(h) for h in ("127.0.0.1:3000", "localhost:3000", "[::1]:3000", "devbox.test:3000"))
    assert not any(
        stack.host_allowed(h) for h in ("127.0.0.1:3001", "127.0.0.1", "evil.test:3000", "127.0.0.1.evil:3000", None)
    )


def test_cors_follows_api_gateways_rules() -> None:
    from realtime_devstack.http_gateway import CorsConfiguration

    exact = CorsConfiguration(allow_origins=("https://app.example", "http://*"), expose_headers=("etag",))
    assert exact.allowed("https://app.example") == "https://app.example"
    assert exact.allowed("http://anything.test:8080") == "http://anything.test:8080"  # a scheme wildcard
    assert exact.allowed("https://evil.example") is None
    assert CorsConfiguration(allow_origins=("*",)).allowed("https://evil.example") == "*"
    answered = exact.apply(web.Response(headers={"Access-Control-Allow-Origin": "*"}), "https://evil.example")
    assert "Access-Control-Allow-Origin" not in answered.headers, "the integration's own CORS headers are ignored"
    answered = exact.apply(web.Response(), "https://app.example")
    assert answered.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert answered.headers["Access-Control-Expose-Headers"] == "etag" and answered.headers["Vary"] == "Origin"


def test_the_stacks_cors_is_the_templates_with_cors_allow_origins_resolved() -> None:
    default = LocalStack(StackOptions(port=0)).cors_configuration()
    assert default is not None and default.allow_origins == ("*",)
    assert "PATCH" in default.allow_methods and "if-match" in default.allow_headers and default.max_age == 600
    chosen = LocalStack(StackOptions(port=0, parameters={"CorsAllowOrigins": "https://a.example, https://b.example"}))
    cors = chosen.cors_configuration()
    assert cors is not None and cors.allow_origins == ("https://a.example", "https://b.example")


def test_management_api_refuses_a_call_signed_with_another_key(websocket_code: Path) -> None:
    async def scenario() -> None:
        async with serve(websocket_code) as served:
            served.management.access_key_id = "ASIAPERRUNKEY"
            stranger = management_client(served.url)  # signs with "local"
            with pytest.raises(stranger.exceptions.ClientError) as refused:
                await asyncio.to_thread(stranger.post_to_connection, ConnectionId="AAAAAAAAAAAAAAA=", Data=b"x")
            assert refused.value.response["Error"]["Code"] == "UnrecognizedClientException"
            import boto3

            own = boto3.client(
                "apigatewaymanagementapi",
                endpoint_url=served.url,
                region_name="us-east-1",
                aws_access_key_id="ASIAPERRUNKEY",
                aws_secret_access_key="per-run",
            )
            with pytest.raises(own.exceptions.GoneException):
                await asyncio.to_thread(own.post_to_connection, ConnectionId="AAAAAAAAAAAAAAA=", Data=b"x")
            presigned = "X-Amz-Credential=ASIAPERRUNKEY%2F20250101%2Fus-east-1%2Fexecute-api%2Faws4_request"
            url = f"{served.url}/@connections/AAAAAAAAAAAAAAA=?X-Amz-Signature=00&{presigned}"
            assert await asyncio.to_thread(http_status, "GET", url) == 410

    asyncio.run(scenario())


def test_dev_refuses_a_non_loopback_host_without_unsafe_expose(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.is_loopback("127.0.0.1") and cli.is_loopback("::1") and cli.is_loopback("localhost")
    assert cli.is_loopback("127.0.0.2")
    assert not any(cli.is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "devbox.local"))  # noqa: S104
    assert cli.main(["dev", "--host", "192.168.1.5"]) == 2
    err = capsys.readouterr().err
    assert "refusing to listen on 192.168.1.5" in err and "--unsafe-expose" in err


def test_cli_errors_are_one_clear_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as empty:
        cli.main(["token", "--channels", ""])
    assert empty.value.code == 2 and "may not be empty" in capsys.readouterr().err
    assert cli.main(["token", "--channels", "feed_*", "--ttl", "-1"]) == 2
    assert "--ttl must be a positive" in capsys.readouterr().err
    assert cli.main(["tail", "feed_a", "feed_b", "--cursor", "AAAA"]) == 2
    assert "--cursor CHANNEL=CURSOR" in capsys.readouterr().err
    message = cli.port_in_use_message("127.0.0.1", 3000)
    assert "--port" in message and 'make dev ARGS="--port' in message


def test_tail_cursors_per_channel() -> None:
    assert cli.tail_cursors(["feed_a"], ["C1"]) == {"feed_a": "C1"}
    assert cli.tail_cursors(["feed_a", "feed_b"], ["feed_b=C2", "feed_a=C1"]) == {"feed_a": "C1", "feed_b": "C2"}
    for channels, given, problem in (
        (["feed_a", "feed_b"], ["C1"], "say whose"),
        (["feed_a"], ["feed_z=C1"], "not one of the channels"),
        (["feed_a"], ["feed_a="], "empty"),
        (["feed_a"], ["feed_a=C1", "C2"], "two cursors"),
    ):
        with pytest.raises(ValueError, match=problem):
            cli.tail_cursors(channels, given)


# A Powertools HTTP resolver whose route waits until both invocations are inside it, then answers
# the body Powertools says it is resolving: shared resolver state would give both the same one.
# Each sandbox imports the module afresh, so the barrier both wait on lives in `builtins`.
RESOLVER_STUB = """
import builtins

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver

app = APIGatewayHttpResolver()


@app.post("/echo")
def echo():
    seen_at_entry = app.current_event.body
    builtins.devstack_test_barrier.wait()
    return {"entry": seen_at_entry, "now": app.current_event.body}


def lambda_handler(event, context):
    return app.resolve(event, context)
"""


def test_concurrent_invocations_never_see_each_others_powertools_event(tmp_path: Path) -> None:
    """On Lambda one environment runs one invocation at a time; here sandboxes are threads of one
    process, and Powertools keeps the current event on its router class (found by bench/load.py:
    a PATCH validated against another request's body)."""
    import builtins
    import threading

    (tmp_path / "app.py").write_text(RESOLVER_STUB)
    host = FunctionHost("HttpApiFunction", tmp_path)
    events = [
        {
            "version": "2.0",
            "routeKey": "POST /echo",
            "rawPath": "/echo",
            "headers": {"content-type": "application/json"},
            "requestContext": {"http": {"method": "POST", "path": "/echo"}, "stage": "$default"},
            "body": f'{{"n": {n}}}',
            "isBase64Encoded": False,
        }
        for n in (1, 2)
    ]

    async def both() -> list[Any]:
        return list(await asyncio.gather(*(host.invoke(event) for event in events)))

    builtins.devstack_test_barrier = threading.Barrier(2, timeout=10)  # type: ignore[attr-defined]
    try:
        answers = asyncio.run(both())
    finally:
        del builtins.devstack_test_barrier  # type: ignore[attr-defined]
        host.close()
    bodies = [json.loads(answer["body"]) for answer in answers]
    assert bodies == [{"entry": '{"n": 1}', "now": '{"n": 1}'}, {"entry": '{"n": 2}', "now": '{"n": 2}'}]
