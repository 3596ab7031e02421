"""DynamoDB requests per event for batch publish at batch sizes 1, 10, 50 and 100, keyed and
unkeyed, side by side with the single route's publish, in one run.

In-process moto (with realtime_devstack's fixes), tables from template.yaml. Requests are counted
with botocore's event hooks on the store's own client, as bench/requests_per_event.py does:
`before-call` once per API call, `request-created` once per HTTP attempt (botocore retries show
there). Each row publishes EVENTS_PER_RUN events on a fresh channel; "retried" sends the same
keyed batches again (every event a duplicate). The wall time is in-process moto's, so only the
ratio between rows means anything.
Goal: at most 1.1 DynamoDB requests per event in batches of 50.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from _common import fake_aws_env, goal, table
from requests_per_event import RequestCounter

fake_aws_env()

SIZES = (1, 10, 50, 100)
GOAL_SIZE, GOAL = 50, 1.1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=400, help="events per row (a multiple of 100)")
    events_per_run = parser.parse_args().events

    import boto3
    from moto import mock_aws

    from realtime_devstack import moto_dynamodb, template
    from realtime_transport import PublishResult, Realtime, Settings, clients
    from realtime_transport.batch import BatchItem

    moto_dynamodb.install()
    with mock_aws():
        clients.session.cache_clear()
        clients.client.cache_clear()
        template.create_tables(boto3.client("dynamodb"), {"EventsTable": "bench-events"})
        realtime = Realtime(
            history_limit=500, settings=Settings.model_validate({"EVENTS_TABLE_NAME": "bench-events"}), secret=b"b"
        )
        counter = RequestCounter(realtime.store._client)
        rows: list[list[object]] = []
        per_event: dict[tuple[str, str], float] = {}

        def row(label: str, mode: str, size: int | str, run: Any) -> None:
            started = time.perf_counter()
            with counter.counting():
                seqs = run()
            seconds = time.perf_counter() - started
            requests = sum(counter.calls.values()) / events_per_run
            per_event[(label, mode)] = requests
            ops = ", ".join(f"{op} {n / events_per_run:.3f}" for op, n in sorted(counter.calls.items()))
            gapless = "-" if seqs is None else sorted(seqs) == list(range(1, events_per_run + 1))
            rate = events_per_run / seconds
            rows.append([label, mode, size, requests, counter.attempts / events_per_run, ops, gapless, rate])

        for mode in ("unkeyed", "keyed"):
            channel = realtime.channel(f"bench_single_{mode}")

            def single(channel: Any = channel, mode: str = mode) -> list[int]:
                return [
                    channel.broadcast(type="t", data=n, idempotency_key=f"e-{n}" if mode == "keyed" else None).event.seq
                    for n in range(events_per_run)
                ]

            row("single route", mode, 1, single)
            for size in SIZES:
                channel = realtime.channel(f"bench_batch_{mode}_{size}")
                batches = [
                    [
                        BatchItem(type="t", data=n, idempotency_key=f"e-{n}" if mode == "keyed" else None)
                        for n in range(start, start + size)
                    ]
                    for start in range(0, events_per_run, size)
                ]

                def batch(channel: Any = channel, batches: list[list[Any]] = batches) -> list[int]:
                    seqs = []
                    for items in batches:
                        for result in channel.broadcast_batch(items):
                            assert isinstance(result, PublishResult) and not result.duplicate, result
                            seqs.append(result.event.seq)
                    return seqs

                row(f"batch of {size}", mode, size, batch)
                if mode == "keyed":

                    def retried(channel: Any = channel, batches: list[list[Any]] = batches) -> None:
                        for items in batches:
                            results = channel.broadcast_batch(items)
                            assert all(isinstance(r, PublishResult) and r.duplicate for r in results)

                    row(f"batch of {size}, retried", mode, size, retried)

    print(f"DynamoDB requests per event, batch publish beside the single route ({events_per_run} events a row)\n")
    headers = ["publish", "mode", "batch", "req/event", "http/event", "by operation (per event)", "gapless", "ev/s"]
    table(headers, rows)
    print()
    for mode in ("unkeyed", "keyed"):
        single, batched = per_event[("single route", mode)], per_event[(f"batch of {GOAL_SIZE}", mode)]
        print(f"{mode}: the single route takes {single / batched:.1f}x the requests of batches of {GOAL_SIZE}")
    for mode in ("unkeyed", "keyed"):
        worst = per_event[(f"batch of {GOAL_SIZE}", mode)]
        goal(worst <= GOAL, f"{mode}, batches of {GOAL_SIZE}: {worst:.3f} requests/event (<= {GOAL})")


if __name__ == "__main__":
    main()
