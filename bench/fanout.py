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

import argparse
import asyncio
import base64
import contextlib
import functools
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _common import REPO, fake_aws_env, goal, table

CONNECTIONS = 2000
DELAY_S = 0.020
QUERY_DELAY_S = 0.005  # DynamoDB's single-digit milliseconds
BASELINE_THREADS = 32
ROUNDS = 3
GOAL_RATIO = 2.5
CHANNEL = "feed_42"
CLIENT_KEEP_RATIO = 1.5  # issue 10: the hand-written client stays only if it wins by this in CPU per delivery
CLIENT_NAMES = {"http1": "realtime_transport.http1", "aiohttp": "aiohttp", "httpx": "httpx"}
# The sharded runs: SHARDED_TOTAL connections over each number of worker processes, then again behind
# a token bucket. One worker here delivers about 4,500/s: a quota of 3,000/s bites a little with one
# worker and hard with several, while a run stays a few seconds long.
SHARDED_TOTAL = 8000
WORKERS = (1, 2, 4)
THROTTLE_RATE = 3000.0
THROTTLE_BURST = 1000.0
FIGURES = REPO / "bench" / "fanout_figures.json"


# --- the management API (and the subscriber query), in its own process --------------------------


@functools.cache
def connection_ids(count: int = CONNECTIONS) -> list[str]:
    """API Gateway-like connection ids (base64, with '=' to encode), the same in both processes."""
    return [base64.b64encode(n.to_bytes(4, "big") + b"conn-id-").decode() for n in range(count)]


@functools.cache
def _home_key(index_key: str) -> bool:
    """The bench's subscribers all sit under one `by-channel` key: the first the store reads (of
    `connections.bucket_keys`, when subscriptions are spread over buckets)."""
    from realtime_transport import connections

    bucket_keys = getattr(connections, "bucket_keys", None)
    if bucket_keys is None:
        return True
    return bool(index_key == bucket_keys(re.sub(r"#\d+$", "", index_key))[0])


def subscribers_page(body: bytes) -> bytes:
    """DynamoDB's answer to the fan-out's `by-channel` Query: KEYS_ONLY items, paged by Limit."""
    request = json.loads(body)
    ids = connection_ids()
    start = 0
    if "ExclusiveStartKey" in request:
        start = ids.index(request["ExclusiveStartKey"]["connectionId"]["S"]) + 1
    channel = request["ExpressionAttributeValues"][":c"]["S"]
    if not _home_key(channel):
        ids = []
    page = ids[start : start + int(request.get("Limit", 1_000_000))]
    items = [
        {
            "pk": {"S": f"conn#{i}"},
            "sk": {"S": f"sub#{channel}"},
            "channel": {"S": channel},
            "connectionId": {"S": i},
            "tokenExp": {"N": str(int(time.time()) + 86400)},  # valid: no connection item to confirm it against
        }
        for i in page
    ]
    answer: dict[str, Any] = {"Items": items, "Count": len(items), "ScannedCount": len(items)}
    if start + len(page) < len(ids):
        answer["LastEvaluatedKey"] = items[-1]
    return json.dumps(answer).encode()


class TokenBucket:
    """API Gateway's account throttle: `rate` requests/s refill a bucket of `burst`; a request that
    finds it empty is refused with 429 ("Throttle API requests for better throughput")."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.last = burst, time.monotonic()

    def admit(self, now: float) -> bool:
        if self.rate <= 0:
            return True  # no throttle
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    def refill(self) -> None:
        self.tokens, self.last = self.burst, time.monotonic()


def serve(delay: float, rate: float = 0.0, burst: float = 0.0) -> None:
    """Answer every management API request with 200 after `delay` s (keep-alive, pipelining-safe), or 429
    (after the same delay) when the token bucket (rate, burst) is empty; DynamoDB Query requests with a
    page of subscribers after QUERY_DELAY_S; `GET /__stats`: the counts so far as JSON, then counts
    zeroed and the bucket full again. Print the port."""
    bucket = TokenBucket(rate, burst)
    counts = {"ok": 0, "throttled": 0}
    throttled = b'{"message":"Too Many Requests"}'

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
                elif head.startswith(b"get /__stats"):
                    self.answer(json.dumps({**counts, "cpu_s": time.process_time()}).encode(), "application/json")
                    counts.update(ok=0, throttled=0)
                    bucket.refill()
                elif bucket.admit(loop.time()):
                    counts["ok"] += 1
                    loop.call_later(delay, self.answer, b"", "application/json")
                else:
                    counts["throttled"] += 1
                    loop.call_later(delay, self.answer, throttled, "application/json", "429 Too Many Requests")

        def answer(self, body: bytes, content_type: str, status: str = "200 OK") -> None:
            if not self.transport.is_closing():
                self.transport.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Api, "127.0.0.1", 0, backlog=2048)
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


@contextlib.contextmanager
def local_endpoint(rate: float = 0.0, burst: float = 0.0) -> Iterator[str]:
    process = subprocess.Popen(  # noqa: S603 - this very script
        [sys.executable, __file__, "--serve", str(DELAY_S), str(rate), str(burst)], stdout=subprocess.PIPE, text=True
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


def median_run(deliver: Callable[[], int], warm_up: Callable[[], Any], rounds: int) -> tuple[float, float]:
    """Deliveries per second and CPU ms per delivery, each the median of `rounds` runs after a warm-up."""
    warm_up()
    runs = [measure(deliver) for _ in range(rounds)]
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


# --- the sharded path: N worker processes, each delivering a shard of K with its own Pusher -------


def worker(endpoint: str, count: int, offset: int, client: str) -> None:
    """One delivery worker (as a delivery worker Lambda runs): its own Pusher, warmed up, then on
    "go" from stdin one `send_many` of its shard; prints what it did as JSON."""
    fake_aws_env()
    from http_clients import transport_factory

    from realtime_transport.delivery import Pusher
    from realtime_transport.models.frames import event_frame

    frame = event_frame(CHANNEL, stream_event(1)["Records"][0]["dynamodb"]["NewImage"]["event"]["S"])
    pusher = Pusher(endpoint, transport=transport_factory(client, endpoint))
    pusher.send_many({f"warm-{offset}-{n}": [frame] for n in range(128)})  # the pool's connections open
    plan = {f"w{offset + n}": [frame] for n in range(count)}
    print("ready", flush=True)
    sys.stdin.readline()
    started, cpu = time.time(), time.process_time()
    report = pusher.send_many(plan, budget_s=60)
    cpu, finished = time.process_time() - cpu, time.time()
    print(
        json.dumps(
            {
                "delivered": report.delivered,
                "failed": len(report.failed),
                "requests": report.requests,
                "retries": report.retries,
                "throttled": report.throttled,
                "cpu_s": cpu,
                "started": started,
                "finished": finished,
            }
        ),
        flush=True,
    )
    pusher.close()


@dataclass
class Sharded:
    workers: int
    shard: int
    delivered: int
    failed: int
    requests: int
    throttled: int
    wall_s: float
    cpu_s: float  # the workers' CPU
    server_cpu_s: float  # the endpoint's CPU (it shares the 2 cores here; on AWS it is API Gateway's)
    other_cpu_s: float  # what else kept this machine's cores busy meanwhile (other processes)

    @property
    def rate(self) -> float:
        return self.delivered / self.wall_s

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.cpu_s / max(1, self.delivered)


def _busy_seconds() -> float:
    """CPU seconds the machine's cores were busy (user, nice, system, irq, steal), without softirq:
    the loopback traffic of the run itself is processed there, charged to no process (Linux)."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return float("nan")
    return (ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[7]) / os.sysconf("SC_CLK_TCK")


def stats(endpoint: str) -> dict[str, float]:
    """The endpoint's counts since the last call (and its bucket full again)."""
    import urllib.request

    with urllib.request.urlopen(f"{endpoint}/__stats", timeout=5) as response:  # noqa: S310 - loopback
        return dict(json.load(response))


def run_sharded(endpoint: str, workers: int, total: int, client: str = "http1") -> Sharded:
    shard = total // workers
    processes = [
        subprocess.Popen(  # noqa: S603 - this very script
            [sys.executable, __file__, "--worker", endpoint, str(shard), str(n * shard), client],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(workers)
    ]
    try:
        for process in processes:
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        before = stats(endpoint)  # zeroes the counts and fills the bucket: the warm-ups do not count
        busy = _busy_seconds()
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        results = [json.loads(p.stdout.readline()) for p in processes if p.stdout is not None]
        busy = _busy_seconds() - busy
        after = stats(endpoint)
    finally:
        for process in processes:
            process.wait(timeout=30)
    return Sharded(
        workers=workers,
        shard=shard,
        delivered=sum(r["delivered"] for r in results),
        failed=sum(r["failed"] for r in results),
        requests=sum(r["requests"] for r in results),
        throttled=int(after["throttled"]),
        wall_s=max(r["finished"] for r in results) - min(r["started"] for r in results),
        cpu_s=sum(r["cpu_s"] for r in results),
        server_cpu_s=after["cpu_s"] - before["cpu_s"],
        other_cpu_s=max(0.0, busy - sum(r["cpu_s"] for r in results) - (after["cpu_s"] - before["cpu_s"])),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="rounds per variant (median)")
    parser.add_argument("--workers", default=",".join(map(str, WORKERS)), help="worker counts of the sharded runs")
    parser.add_argument("--total", type=int, default=SHARDED_TOTAL, help="connections of the sharded runs")
    parser.add_argument("--rate", type=float, default=THROTTLE_RATE, help="throttle: requests/s")
    parser.add_argument("--burst", type=float, default=THROTTLE_BURST, help="throttle: burst")
    parser.add_argument("--json", type=Path, default=FIGURES, help="where to write the figures for the model")
    parser.add_argument("--skip-single", action="store_true", help="only the sharded runs")
    args = parser.parse_args()
    worker_counts = [int(w) for w in args.workers.split(",")]
    fake_aws_env()
    figures: dict[str, Any] = {"connections": CONNECTIONS, "latency_s": DELAY_S, "cpus": os.cpu_count()}

    with local_endpoint() as endpoint:
        if not args.skip_single:
            figures.update(single(endpoint, args.rounds))
        unthrottled = [run_sharded(endpoint, w, args.total) for w in worker_counts]
    with local_endpoint(args.rate, args.burst) as endpoint:
        throttled = [run_sharded(endpoint, w, args.total) for w in worker_counts]

    print(
        f"\nsharded: {args.total} connections split over N worker processes (a Pusher each, 128 in flight), "
        f"one run each; the endpoint answers in {DELAY_S * 1000:.0f} ms, throttled runs behind a token bucket "
        f"of {args.rate:.0f}/s, burst {args.burst:.0f} (429 over it); {os.cpu_count()} CPUs shared by the "
        "workers and the endpoint"
    )
    rows = []
    for free, limited in zip(unthrottled, throttled, strict=True):
        for name, run in (("no throttle", free), ("throttled", limited)):
            rows.append(
                (
                    run.workers,
                    run.shard,
                    name,
                    round(run.rate),
                    round(run.cpu_ms, 3),
                    round(1000 * run.server_cpu_s / max(1, run.requests), 3),
                    run.throttled,
                    run.failed,
                    round(run.wall_s, 2),
                    round(run.other_cpu_s, 2),
                    round(free.rate / args.rate, 2),
                )
            )
    table(
        [
            "workers",
            "K",
            "endpoint",
            "deliveries/s",
            "worker CPU ms/delivery",
            "endpoint CPU ms/request",
            "429s",
            "failed",
            "wall s",
            "other CPU s",
            "throttle ratio",
        ],
        rows,
    )
    print("throttle ratio: the fan-out rate without a throttle over the quota (above 1: the quota is the bound)")
    for free, limited in zip(unthrottled, throttled, strict=True):
        floor = max(0.0, free.delivered - args.burst) / args.rate
        print(
            f"  {free.workers} worker(s): throttled run {limited.wall_s:.2f} s vs the quota's floor {floor:.2f} s "
            f"((deliveries - burst) / rate), unthrottled {free.wall_s:.2f} s"
        )
    figures["sharded"] = {
        "total": args.total,
        "rate": args.rate,
        "burst": args.burst,
        "unthrottled": [asdict(r) for r in unthrottled],
        "throttled": [asdict(r) for r in throttled],
    }
    args.json.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures for bench/fanout_model.py written to {args.json}")


def single(endpoint: str, rounds: int) -> dict[str, Any]:
    """One process: the boto3 baseline, the Pusher over each HTTP client, the fan-out invocation."""
    from http_clients import CLIENTS, transport_factory

    from realtime_transport.delivery import Pusher

    warm_plan_ids = [f"warm-{n}" for n in range(200)]
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
        lambda: baseline.send_many(plan).delivered, lambda: baseline.send_many(warm_plan), rounds
    )
    rows.append(("boto3 post_to_connection, 32 threads (baseline)", base_rate, base_cpu))
    clients: dict[str, tuple[float, float]] = {}
    # Interleaved rounds, so the clients share whatever else the machine does alike.
    pushers = {name: Pusher(endpoint, transport=transport_factory(name, endpoint)) for name in CLIENTS}
    for client_pusher in pushers.values():
        client_pusher.send_many(warm_plan)
    runs: dict[str, list[Run]] = {name: [] for name in CLIENTS}
    for _ in range(rounds):
        for name, client_pusher in pushers.items():
            runs[name].append(measure(lambda p=client_pusher: p.send_many(plan).delivered))  # type: ignore[misc]
    for name, client_pusher in pushers.items():
        client_pusher.close()
        assert all(r.deliveries == CONNECTIONS for r in runs[name]), runs[name]
        clients[name] = (
            statistics.median(r.deliveries / r.wall_s for r in runs[name]),
            statistics.median(1000 * r.cpu_s / r.deliveries for r in runs[name]),
        )
        rows.append((f"Pusher.send_many over {CLIENT_NAMES[name]} (128 in flight)", *clients[name]))
    module.fanout.pusher = baseline
    rate, cpu = median_run(invoke, invoke, rounds)
    rows.append(("functions/fanout invocation, boto3 deliverer", rate, cpu))
    module.fanout.pusher = pusher
    fanout_rate, fanout_cpu = median_run(invoke, invoke, rounds)
    rows.append(("functions/fanout invocation, Pusher", fanout_rate, fanout_cpu))
    pusher.close()
    # The subscriber read alone (every index bucket, botocore parsing each page): CPU per entry.
    store = module.fanout.connections

    def read_all() -> int:
        return sum(len(page) for page in store.subscriber_entries(f"transport#{CHANNEL}"))

    read_rate, read_cpu_ms = median_run(read_all, read_all, rounds)

    print(
        f"one event to {CONNECTIONS} connections; the management API answers in {DELAY_S * 1000:.0f} ms and a "
        f"subscriber page in {QUERY_DELAY_S * 1000:.0f} ms (own process); median of {rounds} rounds after a "
        f"warm-up; {os.cpu_count()} CPUs"
    )
    table(
        ["variant", "deliveries/s", "CPU ms/delivery", "x baseline"],
        [(name, round(rate), round(cpu, 3), round(rate / base_rate, 2)) for name, rate, cpu in rows],
    )
    print(
        f"the subscriber read alone (ConnectionStore.subscriber_entries, every index bucket): {read_rate:.0f} "
        f"entries/s, {read_cpu_ms * 1000:.0f} us of CPU an entry"
    )
    ratio = fanout_rate / base_rate
    goal(
        ratio >= GOAL_RATIO,
        f"functions/fanout delivers {ratio:.2f}x the boto3 baseline's deliveries/s (goal {GOAL_RATIO}x); "
        f"CPU {fanout_cpu:.3f} vs {base_cpu:.3f} ms per delivery ({base_cpu / fanout_cpu:.1f}x less)",
    )
    own_cpu = clients["http1"][1]
    for name in ("aiohttp", "httpx"):
        times = clients[name][1] / own_cpu
        goal(
            times >= CLIENT_KEEP_RATIO,
            f"realtime_transport.http1 spends {times:.2f}x less CPU per delivery than {CLIENT_NAMES[name]} "
            f"({own_cpu:.3f} vs {clients[name][1]:.3f} ms; kept only at >= {CLIENT_KEEP_RATIO}x); "
            f"deliveries/s {clients['http1'][0]:.0f} vs {clients[name][0]:.0f}",
        )
    return {
        "single": {
            "clients": {name: {"rate": r, "cpu_ms": c} for name, (r, c) in clients.items()},
            "invocation": {"rate": fanout_rate, "cpu_ms": fanout_cpu},
            "read_cpu_ms": read_cpu_ms,
            "boto3": {"rate": base_rate, "cpu_ms": base_cpu},
        }
    }


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve(*map(float, sys.argv[2:]))
    elif len(sys.argv) == 6 and sys.argv[1] == "--worker":
        worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        main()
