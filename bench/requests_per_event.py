"""DynamoDB requests per published event, keyed and unkeyed, with 1..16 concurrent producers on one channel.

In-process moto (with realtime_devstack's fixes), tables from template.yaml. Requests are counted
through botocore's event hooks on the store's own client: `before-call` once per API call, and
`request-created` once per HTTP attempt (so botocore retries would show up too).
Goal: at most 3 requests per keyed event and 2 per unkeyed one, whatever the concurrency.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from _common import fake_aws_env, goal, table

fake_aws_env()

EVENTS_PER_RUN = 320  # divisible by every producer count
PRODUCERS = (1, 4, 8, 16)
GOALS = {"keyed": 3, "unkeyed": 2}


class RequestCounter:
    """API calls by operation name, and HTTP attempts, on one botocore client (thread-safe)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls: Counter[str] = Counter()
        self.attempts = 0
        self._lock = threading.Lock()

    def _call(self, model: Any, **_: Any) -> None:
        with self._lock:
            self.calls[model.name] += 1

    def _attempt(self, **_: Any) -> None:
        with self._lock:
            self.attempts += 1

    @contextmanager
    def counting(self) -> Iterator[RequestCounter]:
        self.calls, self.attempts = Counter(), 0
        events = self.client.meta.events
        events.register("before-call.dynamodb", self._call)
        events.register("request-created.dynamodb", self._attempt)
        try:
            yield self
        finally:
            events.unregister("before-call.dynamodb", self._call)
            events.unregister("request-created.dynamodb", self._attempt)


def run(counter: RequestCounter, producers: int, publish: Callable[[int, int], int]) -> tuple[int, float, list[int]]:
    """`producers` threads publish EVENTS_PER_RUN events between them; returns (events, seconds, seqs)."""
    per_producer = EVENTS_PER_RUN // producers
    barrier = threading.Barrier(producers)

    def produce(p: int) -> list[int]:
        barrier.wait()
        return [publish(p, n) for n in range(per_producer)]

    started = time.perf_counter()
    with counter.counting(), ThreadPoolExecutor(producers) as pool:
        seqs = [s for batch in pool.map(produce, range(producers)) for s in batch]
    return len(seqs), time.perf_counter() - started, seqs


def main() -> None:
    import boto3
    from moto import mock_aws

    from realtime_devstack import moto_dynamodb, template
    from realtime_transport import Realtime, Settings, clients

    moto_dynamodb.install()
    with mock_aws():
        clients.session.cache_clear()
        clients.client.cache_clear()
        template.create_tables(boto3.client("dynamodb"), {"EventsTable": "bench-events"})
        realtime = Realtime(
            history_limit=500, settings=Settings.model_validate({"EVENTS_TABLE_NAME": "bench-events"}), secret=b"b"
        )
        counter = RequestCounter(realtime.store._client)  # the very client the store sends through

        rows: list[list[object]] = []
        worst = {"keyed": 0.0, "unkeyed": 0.0}
        for mode in ("unkeyed", "keyed"):
            for producers in PRODUCERS:
                channel = realtime.channel(f"bench_{mode}_{producers}")

                def publish(p: int, n: int, channel: Any = channel, mode: str = mode) -> int:
                    key = f"e-{p}-{n}" if mode == "keyed" else None
                    return int(channel.broadcast(type="t", data={"p": p, "n": n}, idempotency_key=key).event.seq)

                events, seconds, seqs = run(counter, producers, publish)
                gapless = sorted(seqs) == list(range(1, events + 1))
                per_event = sum(counter.calls.values()) / events
                worst[mode] = max(worst[mode], per_event)
                ops = ", ".join(f"{op} {count / events:.2f}" for op, count in sorted(counter.calls.items()))
                rows.append([mode, producers, events, per_event, counter.attempts / events, ops, gapless, seconds])

        # Retries of an already stored event: sequential (the common case), then a concurrent
        # race of 16 producers on one fresh key (informational: the losers pay for their position).
        channel = realtime.channel("bench_retry")
        channel.broadcast(type="t", data=1, idempotency_key="k")
        events, _, _ = run(counter, 1, lambda p, n: channel.broadcast(type="t", data=1, idempotency_key="k").event.seq)
        retry = sum(counter.calls.values()) / events
        ops = ", ".join(f"{op} {count / events:.2f}" for op, count in sorted(counter.calls.items()))
        rows.append(["retry (stored key)", 1, events, retry, counter.attempts / events, ops, "-", "-"])

        race = realtime.channel("bench_race")
        results: list[bool] = []
        with counter.counting(), ThreadPoolExecutor(16) as pool:
            barrier = threading.Barrier(16)

            def racer(_: int) -> bool:
                barrier.wait()
                return race.broadcast(type="t", data=1, idempotency_key="race").duplicate

            results = list(pool.map(racer, range(16)))
        ops = ", ".join(f"{op} {count / 16:.2f}" for op, count in sorted(counter.calls.items()))
        rows.append(
            ["race: 16 calls, 1 key", 16, 16, sum(counter.calls.values()) / 16, counter.attempts / 16, ops, "-", "-"]
        )
        late = counter.calls["UpdateItem"] - 1  # racers that passed the GetItem check and lost the transaction
        race_note = (
            f"race: {results.count(False)} new event, {late} racers lost the key after taking a position"
            f" ({counter.calls['PutItem']} tombstones; 4 requests each),"
            f" {16 - 1 - late} found the key stored (1 request)"
        )

    print(f"DynamoDB requests per published event ({EVENTS_PER_RUN} events per run, one channel per run)\n")
    headers = ["publish", "producers", "events", "req/event", "http/event", "by operation (per event)", "gapless", "s"]
    table(headers, rows)
    print(f"\n{race_note}\n")
    for mode, limit in GOALS.items():
        goal(worst[mode] <= limit, f"{mode}: worst {worst[mode]:.2f} requests/event over 1..16 producers (<= {limit})")
    goal(retry <= 1, f"retry of a stored key: {retry:.2f} requests (informational goal <= 1)")


if __name__ == "__main__":
    main()
