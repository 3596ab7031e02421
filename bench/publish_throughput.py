"""Published events per second on ONE channel with 1, 4, 8 and 16 concurrent producers, over the local stack.

Starts `realtime-transport dev --port 0` as a subprocess. Each producer is a thread with its own
keep-alive `http.client.HTTPConnection`, POSTing `/feeds/{feedId}/events` with distinct eventIds.
Configurations run interleaved (1,4,8,16,16,8,4,1,...) for a fixed time each, every run on a fresh
feed, and every run's channel is checked afterwards to be gapless from a cursor taken while it was
empty. Goals: the rate at 16 producers is at least 80% of the rate at 1 (medians of the runs), and
at least 150 events/s with one producer (issue 10).

Each transport runs on a stack of its own, one after the other, the same configurations in the
same order: `in-process` (the default: the stack's DynamoDB requests answered by moto in the
stack's process, `realtime_devstack.moto_inprocess`) and `http` (`dev --dynamodb-over-http`, every
request through moto's HTTP server, as before). `--transports in-process` measures one only;
`--seconds N` sets the length of a run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from _common import cpu_seconds, goal, percentile, reader_token, start_stack, stop_stack, table

PRODUCERS = (1, 4, 8, 16)
ORDER = (1, 4, 8, 16, 16, 8, 4, 1) * 2  # palindromes: a linear drift hits every configuration alike
RUN_SECONDS = 3.0
WARMUP_SECONDS = 3.0
GOAL_RATIO = 0.8
GOAL_EVENTS_PER_SECOND = 150.0  # one producer, one channel (issue 10, item 5)
TRANSPORTS = {"in-process": (), "http": ("--dynamodb-over-http",)}


class Client:
    """One keep-alive HTTP/1.1 connection (one per producer thread)."""

    def __init__(self, url: str, token: str | None = None) -> None:
        parts = urlsplit(url)
        self.connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
        self.headers = {"content-type": "application/json"}
        if token:
            self.headers["authorization"] = f"Bearer {token}"

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        payload = json.dumps(body).encode() if body is not None else None
        self.connection.request(method, path, body=payload, headers=self.headers)
        response = self.connection.getresponse()
        return response.status, json.loads(response.read() or b"null")

    def close(self) -> None:
        self.connection.close()


@dataclass
class Run:
    producers: int
    feed: str
    cursor: str
    seconds: float = 0.0
    cpu: float = float("nan")  # CPU seconds the stack process spent during the run
    latencies: list[float] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    event_ids: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return len(self.seqs) / self.seconds


def publish_for(url: str, run: Run, seconds: float, pid: int) -> None:
    """`run.producers` threads publish on `run.feed` for `seconds`; results land in `run`."""
    lock = threading.Lock()
    barrier = threading.Barrier(run.producers + 1)
    clients = [Client(url) for _ in range(run.producers)]

    def produce(p: int) -> None:
        client, latencies, seqs, ids = clients[p], [], [], []
        barrier.wait()
        deadline = time.perf_counter() + seconds
        n = 0
        while time.perf_counter() < deadline:
            event_id = f"{run.feed}-{p}-{n}"
            started = time.perf_counter()
            try:
                status, body = client.request(
                    "POST", f"/feeds/{run.feed}/events", {"eventId": event_id, "type": "t", "payload": {"n": n}}
                )
            except (OSError, http.client.HTTPException, ValueError) as exc:
                status, body = 0, repr(exc)
            latencies.append(time.perf_counter() - started)
            if status not in (200, 201):
                with lock:
                    run.errors.append(f"{status} {body}")
                break
            if status == 200:  # stored, but a first publish must not come back as a duplicate
                with lock:
                    run.errors.append(f"fresh eventId {event_id} answered 200 duplicate (seq {body['event']['seq']})")
            seqs.append(body["event"]["seq"])
            ids.append(event_id)
            n += 1
        with lock:
            run.latencies += latencies
            run.seqs += seqs
            run.event_ids.update(ids)

    threads = [threading.Thread(target=produce, args=(p,)) for p in range(run.producers)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started, cpu = time.perf_counter(), cpu_seconds(pid)
    for thread in threads:
        thread.join()
    run.seconds, run.cpu = time.perf_counter() - started, cpu_seconds(pid) - cpu
    for client in clients:
        client.close()


def check_gapless(client: Client, run: Run, timeout: float = 60) -> list[str]:
    """Page the feed's history from the cursor taken while it was empty: seqs 1..N, exactly the acked events.

    A hole (a position taken but never written) holds readers back until the writer timeout, then
    the reader tombstones it: the check waits for that and reports the tombstoned seqs.
    """
    seqs: list[int] = []
    ids: set[str] = set()
    cursor, started, waited = run.cursor, time.perf_counter(), False
    while time.perf_counter() - started < timeout:
        status, page = client.request("GET", f"/feeds/{run.feed}/events?limit=500&cursor={quote(cursor)}")
        if status != 200 or page["truncated"]:
            return [f"history answered {status}: {str(page)[:200]}"]
        seqs += [item["seq"] for item in page["items"]]
        ids.update(item["data"]["eventId"] for item in page["items"])
        if not page["hasMore"]:
            break
        if not page["items"] and page["nextCursor"] == cursor:
            waited = True  # stuck at a hole: wait for the reader to call it abandoned
            time.sleep(0.5)
        cursor = page["nextCursor"]
    else:
        return [f"history still stuck at a hole after {timeout:.0f} s"]
    problems = []
    if waited:
        problems.append(f"history stalled {time.perf_counter() - started:.1f} s at a hole (an unwritten position)")
    if tombstoned := sorted(set(range(1, max(seqs, default=0) + 1)) - set(seqs)):
        problems.append(f"seqs {tombstoned} were never written (tombstoned): the channel has gaps")
    if seqs != sorted(run.seqs) or ids != run.event_ids:
        problems.append(f"history holds {len(seqs)} events, not exactly the {len(run.seqs)} acknowledged ones")
    return problems


def new_run(client: Client, producers: int) -> Run:
    feed = f"bench-{producers}-{uuid.uuid4().hex[:8]}"
    status, page = client.request("GET", f"/feeds/{feed}/events?limit=500")
    assert status == 200 and page["items"] == [], page
    return Run(producers=producers, feed=feed, cursor=page["nextCursor"])


def measure(transport: str, seconds: float) -> tuple[list[Run], list[str], int]:
    """Every configuration of ORDER on a fresh stack using `transport`; its runs and problems."""
    stack = start_stack("--history-limit", "10000", *TRANSPORTS[transport])
    try:
        control = Client(stack.url, reader_token(["feed_bench-*"]))
        # Warm-up at the highest concurrency: the stack imports a function instance per concurrent
        # invocation on demand, and those cold starts must not land inside a measured run.
        publish_for(stack.url, new_run(control, max(PRODUCERS)), WARMUP_SECONDS, stack.process.pid)
        runs = []
        for producers in ORDER:
            run = new_run(control, producers)
            publish_for(stack.url, run, seconds, stack.process.pid)
            runs.append(run)
        problems = [f"{r.producers} producers, {r.feed}: {p}" for r in runs for p in check_gapless(control, r)]
        problems += [f"{r.producers} producers: {e}" for r in runs for e in r.errors[:3]]
        control.close()
    finally:
        code = stop_stack(stack)
    return runs, problems, code


def report(transport: str, runs: list[Run], seconds: float) -> dict[int, float]:
    """Print the per-run and per-configuration tables; the median rate per producer count."""
    print(f"\n{transport}: publish throughput on one channel ({seconds:g} s per run, keep-alive HTTP)\n")
    rows: list[list[object]] = []
    for i, r in enumerate(runs):
        p50, p99 = percentile(r.latencies, 50) * 1000, percentile(r.latencies, 99) * 1000
        rows.append([i + 1, r.producers, len(r.seqs), r.rate, p50, p99, r.cpu / len(r.seqs) * 1000, r.cpu / r.seconds])
    table(["run", "producers", "events", "events/s", "p50 ms", "p99 ms", "stack cpu ms/ev", "stack cores"], rows)
    print()
    median_rate = {n: statistics.median(r.rate for r in runs if r.producers == n) for n in PRODUCERS}
    rows = []
    for n in PRODUCERS:
        mine = [r for r in runs if r.producers == n]
        latencies = [x for r in mine for x in r.latencies]
        best = max(r.rate for r in mine)
        p50, p99 = percentile(latencies, 50) * 1000, percentile(latencies, 99) * 1000
        cpu = statistics.median(r.cpu / len(r.seqs) * 1000 for r in mine)
        rows.append([n, len(mine), median_rate[n], best, median_rate[n] / median_rate[1], p50, p99, cpu])
    table(["producers", "runs", "median ev/s", "best ev/s", "x rate@1", "p50 ms", "p99 ms", "stack cpu ms/ev"], rows)
    return median_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transports", default="in-process,http", help="comma separated: in-process, http")
    parser.add_argument("--seconds", type=float, default=RUN_SECONDS, help="length of each run")
    args = parser.parse_args()
    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    unknown = [t for t in transports if t not in TRANSPORTS]
    if unknown or not transports:
        parser.error(f"unknown transport(s) {unknown}; choose from {', '.join(TRANSPORTS)}")

    results = {transport: measure(transport, args.seconds) for transport in transports}
    medians: dict[str, dict[int, float]] = {}
    cpu: dict[str, dict[int, float]] = {}
    for transport, (runs, problems, code) in results.items():
        medians[transport] = report(transport, runs, args.seconds)
        cpu[transport] = {
            n: statistics.median(r.cpu / len(r.seqs) * 1000 for r in runs if r.producers == n) for n in PRODUCERS
        }
        print(f"\nhistory check: {len(runs)} channels, {sum(len(r.seqs) for r in runs)} events; stack exit code {code}")
        for problem in problems:
            print(f"  PROBLEM: {problem}")

    if len(transports) > 1:
        print("\nSide by side (median ev/s; stack CPU ms per event)\n")
        base = transports[-1]
        rows: list[list[object]] = []
        for n in PRODUCERS:
            row: list[object] = [n]
            for transport in transports:
                row += [medians[transport][n], cpu[transport][n]]
            row.append(medians[transports[0]][n] / medians[base][n])
            rows.append(row)
        headers = ["producers"]
        for transport in transports:
            headers += [f"{transport} ev/s", f"{transport} cpu ms/ev"]
        table([*headers, f"x {base}"], rows)
        print()

    main_transport = transports[0]
    ratio = medians[main_transport][16] / medians[main_transport][1]
    goal(ratio >= GOAL_RATIO, f"{main_transport}: rate at 16 producers is {ratio:.2f}x the rate at 1 (>= {GOAL_RATIO})")
    one = medians[main_transport][1]
    goal(
        one >= GOAL_EVENTS_PER_SECOND,
        f"{main_transport}: {one:.0f} events/s with one producer on one channel (>= {GOAL_EVENTS_PER_SECOND:.0f})",
    )
    goal(
        not any(problems for _, problems, _ in results.values()),
        "every run's channel is gapless (seqs 1..N) and holds exactly the acknowledged events",
    )


if __name__ == "__main__":
    main()
