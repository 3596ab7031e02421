"""Patch throughput on one room: 10 concurrent writers on distinct paths, and on one path.

In-process moto (with realtime_devstack's fixes and, with --faithful, AWS's request jitter),
tables from template.yaml. Each writer patches from the version it last saw, as a client does:
on distinct paths a stale version still applies (no path overlaps), so the goal is no 409 at
all; on one path every stale patch is a 409 and the writer retries from the fresh version the
409 carries (what `room.update(fn)` in the browser client does). One writer alone is the
baseline the ratios are taken against, in the same run.

    .venv/bin/python bench/rooms_patch.py [--patches 40] [--faithful]
"""

from __future__ import annotations

import argparse
import threading
import time
from dataclasses import dataclass
from typing import Any

from _common import fake_aws_env, goal, table

fake_aws_env()


@dataclass
class Run:
    name: str
    writers: int
    commits: int = 0
    conflicts: int = 0
    puts: int = 0  # conditional PutItems sent: a writer that lost a race re-evaluates and puts again
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.commits / self.seconds if self.seconds else float("nan")


def _setup(faithful: bool) -> Any:
    import boto3
    from moto import mock_aws

    from realtime_devstack import moto_dynamodb, template

    moto_dynamodb.install()
    mock = mock_aws()
    mock.start()
    template.create_tables(
        boto3.client("dynamodb"), {"EventsTable": "bench-events", "ConnectionsTable": "bench-connections"}
    )
    if faithful:
        from realtime_devstack import faithful as substrate

        substrate.configure(substrate.FAITHFUL_DEFAULTS)
    return mock


def run(realtime: Any, name: str, writers: int, patches: int, same_path: bool) -> Run:
    from realtime_transport.clients import dynamodb
    from realtime_transport.rooms import StateConflict
    from realtime_transport.rooms.room import room

    result = Run(name, writers)
    lock = threading.Lock()

    def count_put(**_: Any) -> None:
        with lock:
            result.puts += 1

    dynamodb().meta.events.register("before-call.dynamodb.PutItem", count_put)
    target = room(realtime, f"bench-{name.replace(' ', '-')}")
    barrier = threading.Barrier(writers)

    def writer(n: int) -> None:
        version = 0
        path = "shared" if same_path else f"w{n}"
        barrier.wait()
        done = 0
        while done < patches:
            try:
                version = target.patch(version, merge_patch={path: f"{n}.{done}"}).version
                done += 1
                with lock:
                    result.commits += 1
            except StateConflict as conflict:
                version = conflict.version  # the fresh version the 409 carries: retry from it
                with lock:
                    result.conflicts += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(writers)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.perf_counter() - began
    dynamodb().meta.events.unregister("before-call.dynamodb.PutItem", count_put)
    assert target.state().version == writers * patches, "every commit is one version"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=40, help="patches per writer")
    parser.add_argument("--faithful", action="store_true", help="AWS's request jitter and conflicts")
    args = parser.parse_args()
    mock = _setup(args.faithful)
    try:
        from realtime_transport import Realtime

        realtime = Realtime(secret=b"bench-secret-long-enough-for-hs256")
        runs = [
            run(realtime, "one writer", 1, args.patches * 2, same_path=False),
            run(realtime, "distinct paths", 10, args.patches, same_path=False),
            run(realtime, "one path", 10, args.patches, same_path=True),
        ]
    finally:
        mock.stop()
    base = runs[0].rate
    table(
        ("run", "writers", "commits", "409s", "409s per commit", "puts per commit", "commits/s", "x one writer"),
        [
            (
                r.name,
                r.writers,
                r.commits,
                r.conflicts,
                r.conflicts / r.commits,
                r.puts / r.commits,
                r.rate,
                r.rate / base,
            )
            for r in runs
        ],
    )
    goal(runs[1].conflicts == 0, "10 writers on distinct paths: no conflicts")


if __name__ == "__main__":
    main()
