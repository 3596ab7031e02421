"""Fan-out ceiling: one event to 2,000 WebSocket connections, in deliveries per second and CPU per delivery.

One local endpoint in its own process (asyncio, keep-alive), so it takes none of this
process's CPU or GIL: it answers every management API `POST /@connections/{id}` with 200
after 20 ms, about API Gateway's time, and the fan-out's DynamoDB `Query` on the
`by-channel` index with a page of 2,000 subscribers after 5 ms, in DynamoDB's wire format
(moto's response serializer needs 1-2 s for such a page: that would measure moto). The
real ConnectionStore and botocore read it, so their CPU is in the figures.
Side by side in one run, each the median of a few rounds after a warm-up:

* baseline: boto3 `apigatewaymanagementapi.post_to_connection` on a 32-thread pool;
* `Pusher.send_many` (realtime_transport.delivery) with the same frames;
* one invocation of functions/fanout (stream record -> subscribers -> delivery), with its
  Pusher, and with the boto3 thread pool swapped in for it.

CPU is `time.process_time()` of this (the delivering) process. Goal: the fan-out
invocation delivers at least 2.5x the baseline's deliveries/s.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from _common import REPO, fake_aws_env, goal, table

CONNECTIONS = 2000
DELAY_S = 0.020
QUERY_DELAY_S = 0.005  # DynamoDB's single-digit milliseconds
BASELINE_THREADS = 32
ROUNDS = 3
GOAL_RATIO = 2.5
CHANNEL = "feed_42"


# --- the management API (and the subscriber query), in its own process --------------------------


@functools.cache
def connection_ids(count: int = CONNECTIONS) -> list[str]:
    """API Gateway-like connection ids (base64, with '=' to encode), the same in both processes."""
    return [base64.b64encode(n.to_bytes(4, "big") + b"conn-id-").decode() for n in range(count)]


def subscribers_page(body: bytes) -> bytes:
    """DynamoDB's answer to the fan-out's `by-channel` Query: KEYS_ONLY items, paged by Limit."""
    request = json.loads(body)
    ids = connection_ids()
    start = 0
    if "ExclusiveStartKey" in request:
        start = ids.index(request["ExclusiveStartKey"]["connectionId"]["S"]) + 1
    page = ids[start : start + int(request.get("Limit", 1_000_000))]
    channel = request["ExpressionAttributeValues"][":c"]["S"]
    items = [
        {
            "pk": {"S": f"conn#{i}"},
            "sk": {"S": f"sub#{channel}"},
            "channel": {"S": channel},
            "connectionId": {"S": i},
        }
        for i in page
    ]
    answer: dict[str, Any] = {"Items": items, "Count": len(items), "ScannedCount": len(items)}
    if start + len(page) < len(ids):
        answer["LastEvaluatedKey"] = items[-1]
    return json.dumps(answer).encode()


def serve(delay: float) -> None:
    """Answer every management API request with 200 after `delay` s (keep-alive, pipelining-safe), and
    DynamoDB Query requests with a page of subscribers after QUERY_DELAY_S; print the port."""

    class Api(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            loop = asyncio.get_running_loop()
            while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
                head = self.buffer[:end].lower()
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip() == b"content-length":
                        length = int(value)
                if len(self.buffer) < end + 4 + length:
                    return
                body = self.buffer[end + 4 : end + 4 + length]
                self.buffer = self.buffer[end + 4 + length :]
                if b"x-amz-target: dynamodb_20120810.query" in head:
                    loop.call_later(QUERY_DELAY_S, self.answer, subscribers_page(body), "application/x-amz-json-1.0")
                else:
                    loop.call_later(delay, self.answer, b"", "application/json")

        def answer(self, body: bytes, content_type: str) -> None:
            if not self.transport.is_closing():
                self.transport.write(
                    f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Api, "127.0.0.1", 0, backlog=2048)
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


@contextlib.contextmanager
def local_endpoint() -> Iterator[str]:
    process = subprocess.Popen(  # noqa: S603 - this very script
        [sys.executable, __file__, "--serve", str(DELAY_S)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        yield f"http://127.0.0.1:{int(process.stdout.readline())}"
    finally:
        process.kill()
        process.wait()


# --- the baseline -------------------------------------------------------------------------------


class Boto3Deliverer:
    """Plain boto3: `post_to_connection` per frame on a thread pool, one connection per task."""

    def __init__(self, endpoint: str, threads: int = BASELINE_THREADS) -> None:
        import boto3
        from botocore.config import Config

        self.client = boto3.client(
            "apigatewaymanagementapi",
            endpoint_url=endpoint,
            config=Config(max_pool_connections=threads, retries={"mode": "standard", "max_attempts": 4}),
        )
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="boto3-delivery")

    def _deliver(self, connection_id: str, frames: Sequence[bytes]) -> str:
        for frame in frames:
            try:
                self.client.post_to_connection(ConnectionId=connection_id, Data=frame)
            except self.client.exceptions.GoneException:
                return "gone"
            except Exception:  # reported, like the Pusher does
                return "failed"
        return "delivered"

    def send_many(self, plan: Mapping[str, Sequence[bytes]], *, budget_s: float | None = None) -> Any:
        from realtime_transport.delivery import DeliveryReport

        report = DeliveryReport()
        ids = list(plan)
        for connection_id, outcome in zip(ids, self.pool.map(self._deliver, ids, plan.values()), strict=True):
            if outcome == "delivered":
                report.delivered += len(plan[connection_id])
            elif outcome == "gone":
                report.gone.append(connection_id)
            else:
                report.failed.append(connection_id)
        return report


# --- measuring ----------------------------------------------------------------------------------


@dataclass
class Run:
    deliveries: int
    wall_s: float
    cpu_s: float


def measure(deliver: Callable[[], int]) -> Run:
    wall, cpu = time.perf_counter(), time.process_time()
    deliveries = deliver()
    return Run(deliveries, time.perf_counter() - wall, time.process_time() - cpu)


def median_run(deliver: Callable[[], int], warm_up: Callable[[], Any]) -> tuple[float, float]:
    """Deliveries per second and CPU ms per delivery, each the median of ROUNDS runs after a warm-up."""
    warm_up()
    runs = [measure(deliver) for _ in range(ROUNDS)]
    for run in runs:
        assert run.deliveries == CONNECTIONS, f"delivered {run.deliveries} of {CONNECTIONS}"
    rate = statistics.median(r.deliveries / r.wall_s for r in runs)
    cpu_ms = statistics.median(1000 * r.cpu_s / r.deliveries for r in runs)
    return rate, cpu_ms


class Context:
    function_name = "bench-fanout"
    function_version = "$LATEST"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:bench-fanout"
    aws_request_id = "00000000-0000-0000-0000-000000000000"

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def load_handler() -> Any:
    """functions/fanout/app.py, imported as Lambda does (its folder on the path)."""
    code_dir = REPO / "functions" / "fanout"
    sys.path.insert(0, str(code_dir))
    spec = importlib.util.spec_from_file_location("fanout_app", code_dir / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stream_event(seq: int) -> dict[str, Any]:
    """A DynamoDB Streams batch of one new event on CHANNEL, as Lambda hands it over."""
    from realtime_transport import clock
    from realtime_transport.ids import new_ulid
    from realtime_transport.models.envelope import Event

    now = clock.now_ms()
    envelope = Event(
        id=new_ulid(now),
        channel=CHANNEL,
        seq=seq,
        type="order.created",
        data={"feedId": "42", "eventId": f"e-{seq}", "payload": {"orderId": "o-7", "total": 12.5}},
        metadata={"source": "api"},
        published_at=clock.iso_ms(now),
        idempotency_key=f"e-{seq}",
    ).to_json()
    image = {
        "pk": {"S": f"transport#{CHANNEL}"},
        "sk": {"N": str(seq)},
        "kind": {"S": "event"},
        "allocatedAt": {"N": str(now)},
        "ttl": {"N": str(now // 1000 + 3600)},
        "event": {"S": envelope},
    }
    record = {
        "eventID": f"{seq:032x}",
        "eventName": "INSERT",
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": {
            "ApproximateCreationDateTime": now // 1000,
            "Keys": {"pk": image["pk"], "sk": image["sk"]},
            "NewImage": image,
            "SequenceNumber": str(10**20 + seq),
            "SizeBytes": len(envelope) + 100,
            "StreamViewType": "NEW_IMAGE",
        },
        "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/bench-events/stream/2026-01-01T00:00:00.000",
    }
    return {"Records": [record]}


def main() -> None:
    fake_aws_env()
    warm_plan_ids = [f"warm-{n}" for n in range(200)]

    with local_endpoint() as endpoint:
        os.environ["AWS_ENDPOINT_URL_DYNAMODB"] = endpoint  # only the by-channel Query is asked of it
        os.environ["WEBSOCKET_MANAGEMENT_URL"] = endpoint
        from realtime_transport.models.frames import event_frame

        event = stream_event(1)
        frame = event_frame(CHANNEL, event["Records"][0]["dynamodb"]["NewImage"]["event"]["S"])
        plan = {connection_id: [frame] for connection_id in connection_ids()}
        warm_plan = {connection_id: [frame] for connection_id in warm_plan_ids}

        module = load_handler()
        pusher = module.fanout.pusher
        baseline = Boto3Deliverer(endpoint)
        seqs = iter(range(2, 10**6))

        def invoke() -> int:
            response = module.lambda_handler(stream_event(next(seqs)), Context())
            assert response["batchItemFailures"] == []
            return CONNECTIONS

        rows: list[tuple[str, float, float]] = []
        base_rate, base_cpu = median_run(
            lambda: baseline.send_many(plan).delivered, lambda: baseline.send_many(warm_plan)
        )
        rows.append(("boto3 post_to_connection, 32 threads (baseline)", base_rate, base_cpu))
        rate, cpu = median_run(lambda: pusher.send_many(plan).delivered, lambda: pusher.send_many(warm_plan))
        rows.append(("Pusher.send_many (asyncio, 128 in flight)", rate, cpu))
        module.fanout.pusher = baseline
        rate, cpu = median_run(invoke, invoke)
        rows.append(("functions/fanout invocation, boto3 deliverer", rate, cpu))
        module.fanout.pusher = pusher
        fanout_rate, fanout_cpu = median_run(invoke, invoke)
        rows.append(("functions/fanout invocation, Pusher", fanout_rate, fanout_cpu))
        pusher.close()

    print(
        f"one event to {CONNECTIONS} connections; the management API answers in {DELAY_S * 1000:.0f} ms and a "
        f"subscriber page in {QUERY_DELAY_S * 1000:.0f} ms (own process); median of {ROUNDS} rounds after a "
        f"warm-up; {os.cpu_count()} CPUs"
    )
    table(
        ["variant", "deliveries/s", "CPU ms/delivery", "x baseline"],
        [(name, round(rate), round(cpu, 3), round(rate / base_rate, 2)) for name, rate, cpu in rows],
    )
    ratio = fanout_rate / base_rate
    goal(
        ratio >= GOAL_RATIO,
        f"functions/fanout delivers {ratio:.2f}x the boto3 baseline's deliveries/s (goal {GOAL_RATIO}x); "
        f"CPU {fanout_cpu:.3f} vs {base_cpu:.3f} ms per delivery ({base_cpu / fanout_cpu:.1f}x less)",
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(float(sys.argv[2]))
    else:
        main()
