"""A discrete-event model of one event's fan-out to N subscribers on AWS (issue 10 item 4).

What it models, in the order an event meets it:

1. the stream: DynamoDB Streams to the fan-out function. Lambda polls a stream's shards
   "at a base rate of 4 times per second" ("Using AWS Lambda with Amazon DynamoDB"): up to
   250 ms, taken whole here;
2. the coordinator (functions/fanout) reads the channel's 16 bucket versions in one consistent
   BatchGetItem (`versions_s`, assumed). Warm (`cached`): every bucket is cached, it cuts
   shards of at most K connections (explicit ids). Cold: it reads nothing itself (a channel
   past K): each bucket, or connectionId range of a bucket past K, goes to a worker as a
   read-and-deliver request, small buckets packed together up to K (fanout.Fanout._read_plan,
   shards.pack: the same code). A channel of at most K connections is read and delivered by
   the coordinator alone, as before. A read costs the reader's CPU per entry (measured:
   `ConnectionStore.subscriber_entries` against the bench's endpoint, botocore's parse) and
   one `page_s` per page of `page_entries` (the fan-out's Limit), a request's units side by
   side (the worker's 8 reader threads), and never more than a partition serves: 3,000 read
   units/s, 0.5 unit per 4 KB ("Read/write capacity mode"), ~100 bytes an entry;
3. it invokes a delivery worker per shard or read request, at most 128 invocations at once
   (fanout.Fanout max_parallel_shards); each new worker environment is a cold start, and Lambda
   adds at most 1,000 environments per 10 s per function ("Lambda scaling behavior"); a read
   request's worker reads its units, then delivers;
4. each worker delivers its shard with a Pusher: `concurrency` requests in flight, each
   costing `cpu_ms` of the worker's one core (measured) and answered after `latency_s`; a
   connection's frames go one after the other (the ordering rule);
5. every request takes a token from the account's API Gateway bucket (10,000 requests/s,
   burst 5,000 by default: "Amazon API Gateway quotas"); without one it is answered 429 and
   retried with the Pusher's backoff and jitter (delivery.Pusher._backoff, capped at 250 ms
   after a 429).

The measured figures come from bench/fanout_figures.json, which bench/fanout.py writes. The
model first replays the local sharded runs (W worker processes sharing this machine's cores
with the endpoint) beside what was measured, then extrapolates. Times in seconds.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from _common import REPO, goal, table

from realtime_transport.shards import pack

FIGURES = REPO / "bench" / "fanout_figures.json"


@dataclass(frozen=True)
class Aws:
    """AWS's documented limits, and latencies assumed (not measured here) where AWS states none."""

    stream_s: float = 0.25  # documented: Lambda polls each stream shard 4 times a second
    partitions: int = 16  # connections.SUBSCRIBER_BUCKETS
    partition_rcu: float = 3000.0  # documented: read units per second per partition
    entry_bytes: int = 100  # a by-channel entry with tokenExp (connections.py)
    page_s: float = 0.02  # assumed: one Query page
    page_entries: int = 1000  # the fan-out's Query Limit (Fanout page_size)
    reader_threads: int = 8  # a worker reads up to 8 units side by side (workers._pool)
    versions_s: float = 0.01  # assumed: one consistent BatchGetItem of 17 small items
    invoke_s: float = 0.03  # assumed: a synchronous Invoke's own overhead (request, queueing to an environment)
    invoke_parallel: int = 128  # fanout.Fanout max_parallel_shards
    cold_start_s: float = 0.5  # assumed: a Python function's init with the layer, and its first TLS connections
    scale_burst: int = 1000  # documented: 1,000 new environments ...
    scale_per_s: float = 100.0  # ... per 10 s per function, refilled continuously
    backoff_base: float = 0.05  # delivery.Pusher defaults
    backoff_cap: float = 0.25  # (the cap after a 429: Pusher throttle_backoff_cap)


AWS = Aws()


@dataclass(frozen=True)
class Measured:
    """What bench/fanout.py measured (defaults: its run of this issue, if the JSON is missing)."""

    cpu_ms: float = 0.10  # worker CPU per delivery (Pusher over realtime_transport.http1)
    read_cpu_ms: float = 0.011  # coordinator CPU per subscriber entry read (ConnectionStore.subscriber_entries)
    endpoint_cpu_ms: float = 0.05  # the local endpoint's CPU per request (local replay only)
    latency_s: float = 0.020
    concurrency: int = 128

    @property
    def worker_rate(self) -> float:
        """One worker's ceiling, deliveries/s: its requests in flight, or its core."""
        return min(self.concurrency / (self.latency_s + self.cpu_ms / 1000), 1000 / self.cpu_ms)


@dataclass(frozen=True)
class Scenario:
    subscribers: int
    shard: int  # K
    quota: float  # requests/s (math.inf: no throttle)
    burst: float
    cold: bool = True  # new worker environments (else warm ones, within the scaling limit alike)
    cached: bool = False  # every bucket cached: explicit shards, no index read (else workers read)
    local_cores: float | None = None  # a local replay: the workers and the endpoint share these cores
    frames: int = 1  # frames per connection, delivered in order


@dataclass
class Result:
    last_s: float = 0.0  # the last delivery
    delivered: int = 0
    throttled: int = 0  # 429 answers
    workers: int = 0
    stream_s: float = 0.0
    read_s: float = 0.0  # until the last worker's shard was read
    start_s: float = 0.0  # from then until that worker ran (invoke, cold start, scaling)
    deliver_s: float = 0.0  # that worker's first request to its last delivery
    throttle_s: float = 0.0  # the part of last_s the throttle adds (against the same run unthrottled)
    notes: list[str] = field(default_factory=list)


class TokenBucket:
    """`rate` tokens/s into a bucket of `burst`; a request takes one or is refused (429)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.last = burst, 0.0

    def take(self, now: float) -> bool:
        if math.isinf(self.rate):
            return True
        if now > self.last:  # requests reach it within a CPU slice of time order: no refill for those
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def read_plan(subscribers: int, shard: int, aws: Aws) -> list[list[int]]:
    """The read-and-deliver requests of a cold channel, as the fan-out plans them: each a list of
    the entries of its units (a bucket, or a range of one), buckets filled evenly (CRC32)."""
    per_bucket = [subscribers // aws.partitions + (1 if b < subscribers % aws.partitions else 0) for b in range(16)]
    units: list[int] = []
    for count in per_bucket:
        parts = -(-count // shard) if count > shard else 1
        units.extend(count // parts + (1 if i < count % parts else 0) for i in range(parts))
    return [[units[i] for i in group] for group in pack(units, shard)]


def read_seconds(units: list[int], cpu_ms: float, aws: Aws, ranges_per_partition: int = 1) -> float:
    """One reader's time for these units: its core parses every entry; pages follow each other
    within a unit, units go side by side; a partition's read units bound it too."""
    per_partition = aws.partition_rcu / (0.5 * 256) * (1 << 20) / aws.entry_bytes / ranges_per_partition
    rounds = -(-len(units) // aws.reader_threads)
    pages = max(-(-n // aws.page_entries) for n in units) * rounds
    return max(sum(units) * cpu_ms / 1000, pages * aws.page_s, max(units) / per_partition)


@dataclass(frozen=True)
class Plan:
    ready: list[float]  # when the coordinator can invoke each worker
    starts: list[float]  # when each worker starts reading (or delivering)
    reads: list[float]  # each worker's own read before it delivers
    sizes: list[int]  # connections each worker delivers to


def worker_plan(s: Scenario, m: Measured, aws: Aws) -> Plan:
    """Who delivers what, and when each worker is ready, starts and has read its share."""
    if s.local_cores is not None:  # the local runs start every worker at once, shards explicit
        workers = math.ceil(s.subscribers / s.shard)
        sizes = [min(s.shard, s.subscribers - i * s.shard) for i in range(workers)]
        return Plan([0.0] * workers, [0.0] * workers, [0.0] * workers, sizes)
    if s.subscribers <= s.shard:
        # The coordinator alone: it reads (uncached) and delivers, no invocation.
        read = 0.0 if s.cached else read_seconds([s.subscribers], m.read_cpu_ms, aws)
        ready = aws.stream_s + aws.versions_s + read
        return Plan([ready], [ready], [0.0], [s.subscribers])
    if s.cached:
        workers = math.ceil(s.subscribers / s.shard)
        sizes = [min(s.shard, s.subscribers - i * s.shard) for i in range(workers)]
        reads = [0.0] * workers
    else:
        requests = read_plan(s.subscribers, s.shard, aws)
        sizes = [sum(units) for units in requests]
        ranges = max(1, math.ceil(s.subscribers / aws.partitions / s.shard))
        reads = [read_seconds(units, m.read_cpu_ms, aws, ranges) for units in requests]
    ready = [aws.stream_s + aws.versions_s] * len(sizes)
    invokers = [0.0] * min(aws.invoke_parallel, len(sizes))  # when each invoking thread is free
    environments, scaled_at = float(aws.scale_burst), 0.0
    starts = []
    for shard_ready in ready:
        slot = min(range(len(invokers)), key=invokers.__getitem__)
        at = max(shard_ready, invokers[slot])
        environments = min(aws.scale_burst, environments + (at - scaled_at) * aws.scale_per_s)
        scaled_at = at
        if environments < 1:  # wait for Lambda's scaling rate to allow one more environment
            at += (1 - environments) / aws.scale_per_s
            environments, scaled_at = 1.0, at
        environments -= 1
        invokers[slot] = at + aws.invoke_s  # a synchronous invocation holds its thread to the end,
        starts.append(at + aws.invoke_s + (aws.cold_start_s if s.cold else 0.0))
    return Plan(ready, starts, reads, sizes)


def simulate(s: Scenario, m: Measured, aws: Aws = AWS, seed: int = 1) -> Result:
    """The fan-out of one event, request by request."""
    rnd = random.Random(seed)
    plan = worker_plan(s, m, aws)
    ready = plan.ready
    starts = [start + read for start, read in zip(plan.starts, plan.reads, strict=True)]  # delivering from
    workers = len(starts)
    cpu_s = m.cpu_ms / 1000
    if s.local_cores is not None:
        # W workers (one core each at most: the GIL) and the endpoint share the cores: a worker's
        # CPU per delivery stretches to what the shared cores and the endpoint's one core allow.
        share = m.endpoint_cpu_ms / 1000
        cpu_s = max(cpu_s, workers * (cpu_s + share) / s.local_cores, workers * share)
    bucket = TokenBucket(s.quota, s.burst)
    sizes = plan.sizes
    taken = [0] * workers  # connections each worker has started
    cpu_free = list(starts)
    finished = list(starts)
    result = Result(workers=workers)
    events: list[tuple[float, int, int, int, int, int]] = []  # (time, seq, what, worker, frame, attempt)
    seq = 0
    answered, refused, retry = 0, 1, 2

    def push(at: float, what: int, worker: int, frame: int, attempt: int) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (at, seq, what, worker, frame, attempt))

    def send(worker: int, frame: int, attempt: int, now: float) -> None:
        at = max(now, cpu_free[worker]) + cpu_s  # the worker's core signs and writes it
        cpu_free[worker] = at
        push(at + m.latency_s, answered if bucket.take(at) else refused, worker, frame, attempt)

    for worker in range(workers):
        for _ in range(min(m.concurrency, sizes[worker])):
            taken[worker] += 1
            send(worker, 0, 0, starts[worker])
    while events:
        now, _, what, worker, frame, attempt = heapq.heappop(events)
        if what == refused:  # 429: back off (the Pusher's schedule), then the same frame again
            result.throttled += 1
            ceiling = min(aws.backoff_cap, aws.backoff_base * 2**attempt)
            push(now + ceiling / 2 + rnd.uniform(0, ceiling / 2), retry, worker, frame, attempt + 1)
        elif what == retry:
            send(worker, frame, attempt, now)
        else:
            result.delivered += 1
            finished[worker] = now
            if frame + 1 < s.frames:
                send(worker, frame + 1, 0, now)  # the connection's next frame, once this one was accepted
            elif taken[worker] < sizes[worker]:
                taken[worker] += 1
                send(worker, 0, 0, now)
    last = max(range(workers), key=finished.__getitem__)
    result.last_s = finished[last]
    result.stream_s = 0.0 if s.local_cores is not None else aws.stream_s
    # The coordinator's versions (and its own read when alone) plus the worker's read of its units.
    result.read_s = ready[last] - result.stream_s + plan.reads[last]
    result.start_s = plan.starts[last] - ready[last]
    result.deliver_s = finished[last] - starts[last]
    return result


def simulate_with_throttle_share(s: Scenario, m: Measured, aws: Aws = AWS) -> Result:
    result = simulate(s, m, aws)
    free = simulate(replace(s, quota=math.inf), m, aws)
    result.throttle_s = max(0.0, result.last_s - free.last_s)
    result.deliver_s -= result.throttle_s
    return result


def load_measured(path: Path) -> tuple[Measured, dict[str, Any] | None]:
    if not path.exists():
        print(f"{path.relative_to(REPO)} missing: the figures of issue 10's run (run bench/fanout.py)")
        return Measured(), None
    figures = json.loads(path.read_text())
    single = figures.get("single")
    sharded = figures["sharded"]
    one = sharded["unthrottled"][0]  # one worker alone
    measured = Measured(
        cpu_ms=single["clients"]["http1"]["cpu_ms"] if single else one["cpu_s"] * 1000 / one["delivered"],
        read_cpu_ms=single["read_cpu_ms"] if single else Measured.read_cpu_ms,
        endpoint_cpu_ms=1000 * one["server_cpu_s"] / max(1, one["requests"]),
        latency_s=figures["latency_s"],
    )
    return measured, figures


def check_local(m: Measured, figures: dict[str, Any]) -> None:
    """Replay the local sharded runs. This machine is shared: the cores the workers and the endpoint
    had are what other processes left free during each run (bench/fanout.py measures that beside it)."""
    sharded = figures["sharded"]
    rows = []
    for kind, quota, burst in (("no throttle", math.inf, 0.0), ("throttled", sharded["rate"], sharded["burst"])):
        for run in sharded["unthrottled" if kind == "no throttle" else "throttled"]:
            cores = max(0.25, figures["cpus"] - run["other_cpu_s"] / run["wall_s"])
            s = Scenario(run["delivered"] + run["failed"], run["shard"], quota, burst, local_cores=cores)
            model = simulate(s, m)
            rows.append(
                (
                    run["workers"],
                    kind,
                    round(cores, 2),
                    round(run["wall_s"], 2),
                    round(model.last_s, 2),
                    round(run["delivered"] / run["wall_s"]),
                    round(model.delivered / model.last_s),
                    run["throttled"],
                    model.throttled,
                )
            )
    print(
        f"\nthe model against bench/fanout.py's sharded runs ({sharded['total']} connections; the cores other "
        f"processes left free shared by the workers and the endpoint; quota {sharded['rate']:.0f}/s, "
        f"burst {sharded['burst']:.0f})"
    )
    table(
        [
            "workers",
            "endpoint",
            "free cores",
            "measured s",
            "model s",
            "measured/s",
            "model/s",
            "measured 429s",
            "model 429s",
        ],
        rows,
    )


def extrapolate(m: Measured, aws: Aws) -> None:
    quotas = (("default", 10_000.0, 5_000.0), ("raised", 150_000.0, 75_000.0))
    print(
        f"\nextrapolation to AWS: a worker delivers at most {m.worker_rate:.0f}/s ({m.concurrency} in flight, "
        f"{m.latency_s * 1000:.0f} ms, {m.cpu_ms:.3f} ms CPU a delivery, a core each); cold: new environments "
        f"({aws.cold_start_s:.1f} s) and no bucket cached, so each worker reads its bucket or range first "
        f"({m.read_cpu_ms * 1000:.0f} us CPU an entry, {aws.page_entries} a page), warm: neither (explicit "
        "shards). K for a quota: the fewest "
        "workers whose ceiling reaches the quota (more only trade deliveries for 429s), and FANOUT_SHARD_SIZE's "
        "2,000 beside it. The raised quota's burst is assumed half its rate, as the default's is."
    )
    rows = []
    best: dict[tuple[int, str, bool], tuple[float, int, int]] = {}  # -> (last delivery, K, workers)
    for subscribers in (10_000, 100_000, 1_000_000):
        for name, quota, burst in quotas:
            floor = max(0.0, subscribers - burst) / quota
            matched = math.ceil(subscribers / max(1, math.ceil(quota / m.worker_rate)))
            for shard in dict.fromkeys((matched, 2000)):
                if shard != matched and subscribers / shard * m.concurrency * floor > 2e5:
                    continue  # too many 429 retries to simulate quickly (and the matched K is faster)
                for cold in (True, False):
                    s = Scenario(subscribers, min(shard, subscribers), quota, burst, cold=cold, cached=not cold)
                    r = simulate_with_throttle_share(s, m, aws)
                    key = (subscribers, name, cold)
                    if key not in best or r.last_s < best[key][0]:
                        best[key] = (r.last_s, s.shard, r.workers)
                    rows.append(
                        (
                            subscribers,
                            name,
                            s.shard,
                            r.workers,
                            "cold" if cold else "warm",
                            round(r.last_s, 2),
                            round(floor, 2),
                            round(r.stream_s, 2),
                            round(r.read_s, 2),
                            round(r.start_s, 2),
                            round(r.deliver_s, 2),
                            round(r.throttle_s, 2),
                            r.throttled,
                        )
                    )
    table(
        [
            "subscribers",
            "quota",
            "K",
            "workers",
            "start",
            "last delivery s",
            "quota floor s",
            "stream",
            "read",
            "invoke+cold",
            "delivery",
            "throttle",
            "429s",
        ],
        rows,
    )
    print(
        "stream / read / invoke+cold / delivery / throttle: where the last delivery's time went (the worker that "
        "finished last: its shard read, its start, its own deliveries, and what the throttle added)"
    )
    default_floor = (100_000 - quotas[0][2]) / quotas[0][1]
    at_default, k, workers = best[(100_000, "default", False)]
    goal(
        at_default <= (default_floor + aws.stream_s) * 1.05,
        f"100,000 subscribers at the default quota: {at_default:.2f} s warm (K {k}, {workers} workers) against the "
        f"floor of {default_floor:.2f} s plus the stream's {aws.stream_s:.2f} s (within 5%)",
    )
    at_raised, k, workers = best[(100_000, "raised", False)]
    cold, cold_k, _ = best[(100_000, "raised", True)]
    goal(
        at_raised <= 1.0,
        f"100,000 subscribers at the raised quota: {at_raised:.2f} s warm (K {k}, {workers} workers; goal ~1 s); "
        f"cold {cold:.2f} s (K {cold_k}): the workers read their buckets and ranges side by side",
    )
    goal(
        cold <= 1.0 + aws.cold_start_s,
        f"100,000 subscribers at the raised quota, cold: {cold:.2f} s, within the warm goal plus one cold start "
        f"({aws.cold_start_s:.1f} s, assumed)",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--figures", type=Path, default=FIGURES, help="what bench/fanout.py wrote")
    parser.add_argument("--check-only", action="store_true", help="only the replay of the local runs")
    args = parser.parse_args()
    measured, figures = load_measured(args.figures)
    print(
        f"measured (bench/fanout.py): {measured.cpu_ms:.3f} ms CPU a delivery, {measured.read_cpu_ms:.3f} ms a "
        f"subscriber read, endpoint {measured.endpoint_cpu_ms:.3f} ms a request, {measured.latency_s * 1000:.0f} ms "
        "latency"
    )
    if figures is not None:
        check_local(measured, figures)
    if not args.check_only:
        extrapolate(measured, AWS)


if __name__ == "__main__":
    main()
