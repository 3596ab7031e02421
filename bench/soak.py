"""Soak: 50 browser clients on the local stack, 5,000 events, every socket dropped midway.

The clients are web/realtime-client.js itself, run under Node (bench/soak_client.mjs: one
Node process hosting all of them, `node --experimental-websocket`), 5 on each of 10 channels.
8 producer threads publish 500 events per channel, interleaved across channels, over HTTP
keep-alive connections at a fixed rate. After about half of them the stack drops every
WebSocket with no close frame (`POST /dev/connections/drop`, local only), as a lost network
would; the clients reconnect, resubscribe with their cursors and catch up.

Every client records each event its application callback receives (channel, seq, receive
time); this side compares that with what was published (the POST responses give seq and
publishedAt). Figures:

* delivered: (client, event) pairs the application saw, against clients x events of their channel;
* duplicates shown to the application (goal 0) and events missing (goal 0), and out-of-order;
* latency from the publish response to the application callback (same machine, same clock),
  p50/p99/max, over all events and split into those published while the clients were
  reconnecting (drop -> every client open again) and the rest.

Run: `.venv/bin/python bench/soak.py [--rate 80]`. Exits 0 with GOAL MET/MISSED lines.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import subprocess
import threading
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from _common import REPO, goal, percentile, start_stack, stop_stack, table

CHANNELS = 10
CLIENTS_PER_CHANNEL = 5
EVENTS_PER_CHANNEL = 500
PRODUCERS = 8
DEFAULT_RATE = 80.0  # events/s across all producers: what this 2-core machine keeps up with
DROP_AT_FRACTION = 0.5
FINISH_TIMEOUT_MS = 90_000
GOAL_P99_MS = 2_000.0  # includes the events published while every client was reconnecting


@dataclass
class Published:
    channel: str
    seq: int
    responded_ms: float  # when the POST response arrived (epoch ms)
    published_ms: float  # the envelope's publishedAt (epoch ms)


def epoch_ms(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000


def now_ms() -> float:
    return time.time() * 1000


class Producers:
    """PRODUCERS threads, each with one keep-alive connection, publishing a shared work list at `rate`."""

    def __init__(self, base: str, work: list[tuple[str, int]], rate: float) -> None:
        self.host = urlsplit(base).hostname or "127.0.0.1"
        self.port = urlsplit(base).port or 80
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

    def _producer(self) -> None:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        while (index := self._take()) is not None:
            delay = self.started + index / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            feed, n = self.work[index]
            body = json.dumps({"eventId": f"soak-{feed}-{n}", "type": "soak.tick", "payload": {"n": n}})
            for attempt in range(5):
                try:
                    connection.request("POST", f"/feeds/{feed}/events", body, {"content-type": "application/json"})
                    response = connection.getresponse()
                    answer = json.loads(response.read())
                    responded = now_ms()
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    # Same eventId again: the idempotency key makes a retry the same stored event.
                    connection.close()
                    connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
                    with self.lock:
                        self.retries += 1
                    if attempt == 4:
                        self.errors.append(f"{feed}#{n}: {exc!r}")
                    continue
                if response.status not in (200, 201):
                    self.errors.append(f"{feed}#{n}: HTTP {response.status} {answer}")
                    break
                event = answer["event"]
                record = Published(event["channel"], event["seq"], responded, epoch_ms(event["publishedAt"]))
                with self.lock:
                    self.published.append(record)
                    self.done += 1
                break
        connection.close()


def http_json(base: str, method: str, path: str) -> Any:
    request = urllib.request.Request(base + path, method=method, data=b"{}" if method == "POST" else None)  # noqa: S310
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback only
        return json.loads(response.read())


def node_command(config: dict[str, Any]) -> list[str]:
    node = shutil.which("node") or "/usr/bin/node"
    return [node, "--experimental-websocket", "--no-warnings", str(REPO / "bench" / "soak_client.mjs"), json.dumps(config)]


def read_message(process: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """The next JSON line from the Node process (its stdout), within `timeout` seconds."""
    assert process.stdout is not None
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(process.stdout.readline() if process.stdout else ""))
    reader.start()
    reader.join(timeout)
    if not box or not box[0]:
        raise RuntimeError(f"soak clients said nothing within {timeout:.0f} s (exit code {process.poll()})")
    return json.loads(box[0])


def ms(value: float) -> str:
    return f"{value:,.0f}" if value == value else "-"  # NaN: no values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help=f"events/s (default {DEFAULT_RATE:g})")
    parser.add_argument("--events-per-channel", type=int, default=EVENTS_PER_CHANNEL)
    args = parser.parse_args()
    per_channel: int = args.events_per_channel
    total_events = CHANNELS * per_channel
    drop_after = int(total_events * DROP_AT_FRACTION)

    stack = start_stack()
    node: subprocess.Popen[str] | None = None
    try:
        token = http_json(stack.url, "GET", "/dev/token")["token"]
        run = uuid.uuid4().hex[:6]
        feeds = [f"soak-{run}-{n}" for n in range(CHANNELS)]
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
            raise RuntimeError(f"soak clients did not start: {hello}")

        # Interleaved: event n of every channel before event n+1 of any.
        work = [(feed, n) for n in range(per_channel) for feed in feeds]
        producers = Producers(stack.url, work, args.rate)
        producing = threading.Thread(target=producers.run, name="producers")
        started = time.monotonic()
        producing.start()
        while producers.done < drop_after and producing.is_alive():
            time.sleep(0.005)
        dropped_at = now_ms()
        dropped = http_json(stack.url, "POST", "/dev/connections/drop")["dropped"]
        producing.join()
        produce_seconds = time.monotonic() - started

        assert node.stdin is not None
        expected_last = {f"feed_{feed}": per_channel for feed in feeds}
        node.stdin.write(json.dumps({"type": "finish", "expected": expected_last, "timeoutMs": FINISH_TIMEOUT_MS}) + "\n")
        node.stdin.flush()
        report = read_message(node, FINISH_TIMEOUT_MS / 1000 + 30)
        total_seconds = time.monotonic() - started
    finally:
        if node is not None:
            if node.stdin is not None:
                node.stdin.close()
            try:
                node.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.kill()
        stop_stack(stack)

    analyse(args.rate, producers, dropped, dropped_at, report, per_channel, produce_seconds, total_seconds)
    return 0


def analyse(
    rate: float,
    producers: Producers,
    dropped: int,
    dropped_at: float,
    report: dict[str, Any],
    per_channel: int,
    produce_seconds: float,
    total_seconds: float,
) -> None:
    published = {(p.channel, p.seq): p for p in producers.published}
    by_channel: dict[str, set[int]] = {}
    for channel, seq in published:
        by_channel.setdefault(channel, set()).add(seq)
    clients = report["clients"]

    # When every client was open again after the drop: the end of the reconnect window.
    reopened = [
        min((at for state, at in c["states"] if state == "open" and at >= dropped_at), default=float("nan"))
        for c in clients
    ]
    all_open_at = max(reopened)

    expected = delivered = duplicates = missing = out_of_order = unexpected = 0
    latencies: list[float] = []
    outage: list[float] = []
    steady: list[float] = []
    from_published: list[float] = []
    for client in clients:
        channel = client["channel"]
        want = by_channel.get(channel, set())
        seqs = [seq for seq, _ in client["events"]]
        counts = Counter(seqs)
        expected += len(want)
        delivered += len(want & counts.keys())
        duplicates += sum(n - 1 for n in counts.values())
        missing += len(want - counts.keys())
        unexpected += len(counts.keys() - want)
        out_of_order += sum(1 for a, b in zip(seqs, seqs[1:], strict=False) if b <= a)
        seen: set[int] = set()
        for seq, received in client["events"]:
            event = published.get((channel, seq))
            if event is None or seq in seen:
                continue
            seen.add(seq)
            latency = received - event.responded_ms
            latencies.append(latency)
            from_published.append(received - event.published_ms)
            in_window = dropped_at <= event.responded_ms <= all_open_at
            (outage if in_window else steady).append(latency)

    reconnects = sum(c["reconnects"] for c in clients)
    client_dups = sum((c["stats"] or {}).get("duplicates", 0) for c in clients)
    gaps_filled = sum((c["stats"] or {}).get("gapsFilled", 0) for c in clients)
    gaps_lost = sum((c["stats"] or {}).get("gapsLost", 0) for c in clients)
    errors = [e for c in clients for e in c["errors"]]
    p99 = percentile(latencies, 99)

    print(
        f"soak: {len(clients)} clients (web/realtime-client.js under Node) on {CHANNELS} channels, "
        f"{len(producers.work):,} events ({per_channel} per channel) from {PRODUCERS} producer threads "
        f"at {rate:g} events/s (achieved {len(producers.published) / produce_seconds:.1f}/s over {produce_seconds:.1f} s); "
        f"run {total_seconds:.1f} s"
    )
    print(
        f"drop: POST /dev/connections/drop after {int(len(producers.work) * DROP_AT_FRACTION):,} events cut "
        f"{dropped} sockets; every client open again {(all_open_at - dropped_at) / 1000:.2f} s later; "
        f"{reconnects} reconnects in all; report complete: {report['complete']}"
    )
    print()
    table(
        ["figure", "value"],
        [
            ["events published", len(published)],
            ["publish retries / errors", f"{producers.retries} / {len(producers.errors)}"],
            ["deliveries expected (clients x channel events)", expected],
            ["deliveries to the application", delivered],
            ["duplicates shown to the application", duplicates],
            ["events missing", missing],
            ["out of order (seq not above the previous)", out_of_order],
            ["unknown seqs delivered", unexpected],
            ["duplicates the client dropped (not shown)", client_dups],
            ["gaps filled by catch-up / reported lost", f"{gaps_filled} / {gaps_lost}"],
        ],
    )
    print()
    rows = [
        ["all events", len(latencies), *(ms(percentile(latencies, q)) for q in (50, 99)), ms(max(latencies, default=0))],
        [
            "published while reconnecting",
            len(outage),
            *(ms(percentile(outage, q)) for q in (50, 99)),
            ms(max(outage, default=0)),
        ],
        ["published otherwise", len(steady), *(ms(percentile(steady, q)) for q in (50, 99)), ms(max(steady, default=0))],
        [
            "(from publishedAt, all)",
            len(from_published),
            *(ms(percentile(from_published, q)) for q in (50, 99)),
            ms(max(from_published, default=0)),
        ],
    ]
    print("latency, publish response -> application callback (ms)")
    table(["events", "deliveries", "p50", "p99", "max"], rows)
    if producers.errors or errors:
        print()
        for line in (producers.errors + errors)[:10]:
            print(f"  error: {line}")
    print()
    goal(duplicates == 0, f"duplicates shown to the application: {duplicates} (goal 0)")
    goal(missing == 0, f"events missing: {missing} of {expected} deliveries (goal 0)")
    goal(out_of_order == 0, f"events out of order: {out_of_order} (goal 0)")
    goal(p99 <= GOAL_P99_MS, f"p99 delivery latency {ms(p99)} ms, the reconnect included (goal <= {GOAL_P99_MS:,.0f} ms)")


if __name__ == "__main__":
    raise SystemExit(main())
