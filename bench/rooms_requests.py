"""DynamoDB requests per room join, at 10 members and at 10,000: the goal is the same number.

In-process moto (with realtime_devstack's fixes), tables from template.yaml. A join here is the
whole WebSocket `join` action (`LiveService.handle`): the membership, the member item (a
transaction with its count shard when the member is new), the subscription, the channel's head,
the room item, the first page of members and the count. Requests are counted with botocore's
`before-call` hook on the library's client. The room is filled with plain presence joins first.

    .venv/bin/python bench/rooms_requests.py [--large 10000]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from typing import Any

from _common import fake_aws_env, goal, table

fake_aws_env()

SECRET = b"bench-secret-long-enough-for-hs256"


class NullPusher:
    def __init__(self) -> None:
        self.last: dict[str, Any] = {}

    def send(self, connection_id: str, data: bytes) -> bool:
        self.last = json.loads(data)
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--large", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=5, help="joins measured at each size")
    args = parser.parse_args()

    import boto3
    from moto import mock_aws

    from realtime_devstack import moto_dynamodb, template

    moto_dynamodb.install()
    with mock_aws():
        template.create_tables(
            boto3.client("dynamodb"), {"EventsTable": "bench-events", "ConnectionsTable": "bench-connections"}
        )
        from realtime_transport import Realtime, tokens
        from realtime_transport.clients import dynamodb
        from realtime_transport.live import LiveService
        from realtime_transport.rooms.presence import Presence

        realtime = Realtime(secret=SECRET)
        pusher = NullPusher()
        live = LiveService(realtime, pusher)
        calls: Counter[str] = Counter()

        def count(model: Any, **_: Any) -> None:
            calls[model.name] += 1

        rows = []
        for size in (args.small, args.large):
            room_id = f"room-{size}"
            presence = Presence(realtime, room_id)
            began = time.perf_counter()
            for n in range(size - args.samples):
                presence.join(f"fill-{n}", f"filler-{n:05d}", {"n": n})
            fill_s = time.perf_counter() - began
            per_join: list[int] = []
            mix: Counter[str] = Counter()
            for n in range(args.samples):
                connection_id = f"m-{size}-{n}"
                live.connect(connection_id, tokens.issue(SECRET, sub=f"new-{n}", channels=["room_*"]))
                calls.clear()
                dynamodb().meta.events.register("before-call.dynamodb", count)
                live.handle(connection_id, json.dumps({"action": "join", "room": room_id, "member": {"n": n}}))
                dynamodb().meta.events.unregister("before-call.dynamodb", count)
                assert pusher.last.get("type") == "joined", pusher.last
                per_join.append(sum(calls.values()))
                mix += calls
            assert pusher.last["memberCount"] == size
            rows.append(
                (
                    size,
                    min(per_join),
                    max(per_join),
                    ", ".join(f"{name} {n / args.samples:g}" for name, n in sorted(mix.items())),
                    fill_s,
                )
            )
    table(("members", "requests per join (min)", "(max)", "per join, by operation", "fill time (s)"), rows)
    goal(rows[0][1:3] == rows[1][1:3], f"a join costs the same requests at {args.small} and {args.large} members")


if __name__ == "__main__":
    main()
