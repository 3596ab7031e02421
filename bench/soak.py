"""Soak: 50 browser clients on the local stack, 5,000 events, every socket dropped midway.

The clients are web/realtime-client.js itself, run under Node (bench/soak_client.mjs: one
Node process hosting all of them, `node --experimental-websocket`), 5 on each of 10 channels,
with the client's default options. 8 producer threads publish 500 events per channel,
interleaved across channels, over HTTP keep-alive connections at a fixed rate. After half of
them the stack drops every WebSocket with no close frame (`POST /dev/connections/drop`,
local stack only), as a lost network would; the clients reconnect, resubscribe with their
cursors and catch up.

Every client records each event its application callback receives (channel, seq, receive
time); this side compares that with what was published (the POST responses give seq and
publishedAt). Figures:

* deliveries: (client, event) pairs the application saw, against clients x events of their channel;
* duplicates shown to the application (goal 0), events missing (goal 0), events out of order;
* frames the clients received, and the duplicates among them the client dropped (catch-ups re-send);
* latency from the publish response to the application callback (one machine, one clock):
  p50/p99/max over all events, split into those published while the clients were
  reconnecting (drop -> every client open again) and the rest;
* a timeline: events published and delivered per time window.

Run: `.venv/bin/python bench/soak.py [--rate 30] [--events-per-channel 500]`. It prints the
figures and GOAL MET/MISSED lines, and exits 0 whatever the goals (1 if the run itself failed).
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import shutil
import subprocess
import threading
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from itertools import pairwise
from typing import Any
from urllib.parse import urlsplit

from _common import REPO, goal, percentile, start_stack, stop_stack, table

CHANNELS = 10
CLIENTS_PER_CHANNEL = 5
EVENTS_PER_CHANNEL = 500
PRODUCERS = 8
# events/s over all producers: about what the local stack sustains on 2 cores with 50 subscribers
# (about 5 deliveries per event) before the drop, with sub-second latency.
DEFAULT_RATE = 20.0
DROP_AT_FRACTION = 0.5
FINISH_TIMEOUT_MS = 120_000
TIMELINE_STEP_SECONDS = 10  # timeline windows are a multiple of this, at most TIMELINE_MAX_ROWS of them
TIMELINE_MAX_ROWS = 20


def now_ms() -> float:
    return time.time() * 1000


def epoch_ms(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000


@dataclass
class Published:
    channel: str
    seq: int
    responded_ms: float  # when the POST response arrived (epoch ms)
    published_ms: float  # the envelope's publishedAt (epoch ms)


class Producers:
    """PRODUCERS threads, each with one keep-alive connection, publishing a shared work list at `rate`."""

    def __init__(self, base: str, work: list[tuple[str, int]], rate: float) -> None:
        parts = urlsplit(base)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.work = work
        self.rate = rate
        self.lock = threading.Lock()
        self.next = 0
        self.done = 0
        self.retries = 0
        self.errors: list[str] = []
        self.published: list[Published] = []
        self.started = 0.0

    def run(self) -> None:
        self.started = time.monotonic()
        threads = [threading.Thread(target=self._producer, name=f"producer-{n}") for n in range(PRODUCERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _take(self) -> int | None:
        with self.lock:
            if self.next >= len(self.work):
                return None
            index, self.next = self.next, self.next + 1
            return index

    def _connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=60)

    def _producer(self) -> None:
        connection = self._connection()
        while (index := self._take()) is not None:
            delay = self.started + index / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            feed, n = self.work[index]
            # The same eventId on a retry: the idempotency key makes it the same stored event.
            body = json.dumps({"eventId": f"soak-{feed}-{n}", "type": "soak.tick", "payload": {"n": n}})
            for attempt in range(5):
                try:
                    connection.request("POST", f"/feeds/{feed}/events", body, {"content-type": "application/json"})
                    response = connection.getresponse()
                    answer = json.loads(response.read())
                    responded = now_ms()
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    connection.close()
                    connection = self._connection()
                    with self.lock:
                        self.retries += 1
                        if attempt == 4:
                            self.errors.append(f"{feed}#{n}: {exc!r}")
                    continue
                with self.lock:
                    if response.status in (200, 201):
                        event = answer["event"]
                        published = Published(event["channel"], event["seq"], responded, epoch_ms(event["publishedAt"]))
                        self.published.append(published)
                        self.done += 1
                    else:
                        self.errors.append(f"{feed}#{n}: HTTP {response.status} {answer}")
                break
        connection.close()


@dataclass
class Run:
    rate: float
    per_channel: int
    producers: Producers = field(default_factory=lambda: Producers("http://127.0.0.1", [], 1.0))
    started_ms: float = 0.0
    produced_ms: float = 0.0
    finished_ms: float = 0.0
    dropped: int = 0
    dropped_at_ms: float = float("nan")
    report: dict[str, Any] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # by process, over the whole run


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process (Linux /proc; NaN elsewhere)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115 - one read
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http_json(base: str, method: str, path: str) -> Any:
    data = b"{}" if method == "POST" else None
    request = urllib.request.Request(base + path, method=method, data=data)  # noqa: S310 - loopback only
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return json.loads(response.read())


def node_command(config: dict[str, Any]) -> list[str]:
    node = shutil.which("node") or "/usr/bin/node"
    script = str(REPO / "bench" / "soak_client.mjs")
    return [node, "--experimental-websocket", "--no-warnings", script, json.dumps(config)]


def read_message(process: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """The next JSON line the Node process writes, within `timeout` seconds."""
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(process.stdout.readline() if process.stdout else ""))
    reader.start()
    reader.join(timeout)
    if not box or not box[0]:
        raise RuntimeError(f"the soak clients said nothing within {timeout:.0f} s (exit code {process.poll()})")
    return json.loads(box[0])


def soak(run: Run) -> None:
    """Start the stack and the clients, publish, drop every socket midway, collect the clients' report."""
    total = CHANNELS * run.per_channel
    stack = start_stack()
    node: subprocess.Popen[str] | None = None
    try:
        token = http_json(stack.url, "GET", "/dev/token")["token"]
        tag = uuid.uuid4().hex[:6]
        feeds = [f"soak-{tag}-{n}" for n in range(CHANNELS)]
        clients = [
            {"id": f"c{c * CLIENTS_PER_CHANNEL + k}", "channel": f"feed_{feed}"}
            for c, feed in enumerate(feeds)
            for k in range(CLIENTS_PER_CHANNEL)
        ]
        ws_url = stack.url.replace("http://", "ws://") + "/ws"
        node = subprocess.Popen(  # noqa: S603 - our own script
            node_command({"url": ws_url, "token": token, "clients": clients}),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        hello = read_message(node, 60)
        if hello.get("type") != "ready":
            raise RuntimeError(f"the soak clients did not start: {hello}")

        # Interleaved: event n of every channel before event n+1 of any.
        work = [(feed, n) for n in range(run.per_channel) for feed in feeds]
        run.producers = Producers(stack.url, work, run.rate)
        producing = threading.Thread(target=run.producers.run, name="producers")
        run.started_ms = now_ms()
        producing.start()
        while run.producers.done < total * DROP_AT_FRACTION and producing.is_alive():
            time.sleep(0.005)
        run.dropped_at_ms = now_ms()
        run.dropped = http_json(stack.url, "POST", "/dev/connections/drop")["dropped"]
        producing.join()
        run.produced_ms = now_ms()

        assert node.stdin is not None
        expected = {f"feed_{feed}": run.per_channel for feed in feeds}
        node.stdin.write(json.dumps({"type": "finish", "expected": expected, "timeoutMs": FINISH_TIMEOUT_MS}) + "\n")
        node.stdin.flush()
        run.report = read_message(node, FINISH_TIMEOUT_MS / 1000 + 30)
        run.finished_ms = now_ms()
        run.cpu_seconds = {
            "local stack": cpu_seconds(stack.process.pid),
            "Node (the clients)": float(run.report.get("cpuSeconds", "nan")),
            "this process (producers)": time.process_time(),
        }
    finally:
        if node is not None:
            if node.stdin is not None:
                node.stdin.close()
            try:
                node.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.kill()
        try:
            stop_stack(stack)
        except subprocess.TimeoutExpired:
            print("note: the local stack took over 20 s to stop on Ctrl-C and was killed")


# --- the report --------------------------------------------------------------------------------


def fmt_ms(value: float) -> str:
    return "-" if value != value else f"{value:,.0f}"  # NaN: no values


def latency_row(label: str, values: list[float]) -> list[object]:
    return [
        label,
        len(values),
        fmt_ms(percentile(values, 50)),
        fmt_ms(percentile(values, 99)),
        fmt_ms(max(values, default=float("nan"))),
    ]


def analyse(run: Run) -> None:
    producers, clients = run.producers, run.report["clients"]
    published = {(p.channel, p.seq): p for p in producers.published}
    by_channel: dict[str, set[int]] = {}
    for channel, seq in published:
        by_channel.setdefault(channel, set()).add(seq)

    # The reconnect window: from the drop until every client was open again.
    reopened = [
        min((at for state, at in c["states"] if state == "open" and at >= run.dropped_at_ms), default=None)
        for c in clients
    ]
    all_open_ms = max((at for at in reopened if at is not None), default=float("nan"))
    never_reopened = sum(1 for at in reopened if at is None)

    expected = delivered = duplicates = missing = out_of_order = unknown = 0
    latencies: list[float] = []
    before: list[float] = []  # published before the drop
    outage: list[float] = []  # published between the drop and every client being open again
    after: list[float] = []
    from_published: list[float] = []
    delivered_at: list[float] = []
    for client in clients:
        channel = client["channel"]
        want = by_channel.get(channel, set())
        seqs = [seq for seq, _ in client["events"]]
        counts = Counter(seqs)
        expected += len(want)
        delivered += len(want & counts.keys())
        duplicates += sum(n - 1 for n in counts.values())
        missing += len(want - counts.keys())
        unknown += len(counts.keys() - want)
        out_of_order += sum(1 for a, b in pairwise(seqs) if b <= a)
        seen: set[int] = set()
        for seq, received_ms in client["events"]:
            event = published.get((channel, seq))
            if event is None or seq in seen:
                continue
            seen.add(seq)
            delivered_at.append(received_ms)
            latency = received_ms - event.responded_ms
            latencies.append(latency)
            from_published.append(received_ms - event.published_ms)
            if event.responded_ms < run.dropped_at_ms:
                before.append(latency)
            elif event.responded_ms <= all_open_ms:
                outage.append(latency)
            else:
                after.append(latency)

    stats = [c["stats"] or {} for c in clients]
    frames_in = sum(c["framesIn"] for c in clients)
    subscribes = sum(c["subscribesSent"] for c in clients)
    client_dups = sum(s.get("duplicates", 0) for s in stats)
    gaps_filled = sum(s.get("gapsFilled", 0) for s in stats)
    gaps_lost = sum(s.get("gapsLost", 0) for s in stats)
    reconnects = sum(c["reconnects"] for c in clients)
    errors = Counter(e.split(":")[0] for c in clients for e in c["errors"])
    produce_s = (run.produced_ms - run.started_ms) / 1000
    total_s = (run.finished_ms - run.started_ms) / 1000
    achieved = len(producers.published) / produce_s if produce_s else 0.0
    p99 = percentile(latencies, 99)

    print(
        f"soak: {len(clients)} clients (web/realtime-client.js under Node, default options), {CHANNELS} channels, "
        f"{len(producers.work):,} events ({run.per_channel} per channel) from {PRODUCERS} producer threads"
    )
    print(
        f"rate: asked {run.rate:g} events/s, achieved {achieved:.1f}/s; publishing took {produce_s:.1f} s, "
        f"the last delivery came {total_s - produce_s:.1f} s later; report complete: {run.report['complete']}"
    )
    reopen = (all_open_ms - run.dropped_at_ms) / 1000
    print(
        f"drop: after {int(len(producers.work) * DROP_AT_FRACTION):,} events POST /dev/connections/drop cut "
        f"{run.dropped} sockets; every client open again {reopen:.2f} s later"
        + (f" ({never_reopened} never reopened)" if never_reopened else "")
        + f"; {reconnects} reconnecting states in all"
    )
    print()
    table(
        ["figure", "value"],
        [
            ["events published (retries, errors)", f"{len(published)} ({producers.retries}, {len(producers.errors)})"],
            ["deliveries expected (clients x their channel's events)", expected],
            ["deliveries to the application", delivered],
            ["duplicates shown to the application", duplicates],
            ["events missing", missing],
            ["events out of order (seq not above the one before)", out_of_order],
            ["seqs delivered that were never published", unknown],
            ["frames the clients received", frames_in],
            ["  of them duplicates the client dropped", client_dups],
            ["subscribes the clients sent", subscribes],
            ["gaps filled by a catch-up / reported lost", f"{gaps_filled} / {gaps_lost}"],
            ["client errors", ", ".join(f"{code} x{n}" for code, n in errors.most_common()) or "none"],
        ],
    )
    print()
    print("latency, publish response -> application callback (ms)")
    table(
        ["events", "deliveries", "p50", "p99", "max"],
        [
            latency_row("all", latencies),
            latency_row("published before the drop", before),
            latency_row("published while reconnecting", outage),
            latency_row("published after every client reopened", after),
            latency_row("(all, from publishedAt)", from_published),
        ],
    )
    print()
    step = TIMELINE_STEP_SECONDS * max(1, math.ceil(total_s / TIMELINE_STEP_SECONDS / TIMELINE_MAX_ROWS))
    print(f"timeline ({step} s windows from the first publish; * = the drop)")

    def window(at_ms: float) -> int:
        return int((at_ms - run.started_ms) / 1000 // step)

    responded = Counter(window(p.responded_ms) for p in producers.published)
    arrived = Counter(window(at) for at in delivered_at)
    table(
        ["from s", "published", "delivered"],
        [
            [f"{w * step}{' *' if w == window(run.dropped_at_ms) else ''}", responded.get(w, 0), arrived.get(w, 0)]
            for w in range(int(total_s // step) + 1)
        ],
    )
    cpu = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in run.cpu_seconds.items())
    print(f"CPU over the run ({os.cpu_count()} cores): {cpu}")
    for line in producers.errors[:5]:
        print(f"  publish error: {line}")
    print()
    goal(duplicates == 0, f"duplicates shown to the application: {duplicates} (goal 0)")
    goal(missing == 0, f"events missing: {missing} of {expected} deliveries (goal 0)")
    goal(out_of_order == 0, f"events out of order: {out_of_order} (goal 0)")
    print(
        f"p99 delivery latency: {fmt_ms(p99)} ms over all events (the reconnect included), "
        f"{fmt_ms(percentile(before, 99))} ms before the drop, {fmt_ms(percentile(after, 99))} ms after the reconnect"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help=f"events/s (default {DEFAULT_RATE:g})")
    parser.add_argument("--events-per-channel", type=int, default=EVENTS_PER_CHANNEL, help="default 500")
    args = parser.parse_args()
    run = Run(rate=args.rate, per_channel=args.events_per_channel)
    soak(run)
    analyse(run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
