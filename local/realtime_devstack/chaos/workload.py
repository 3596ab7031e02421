"""The clients: producers, history readers and WebSocket subscribers, each a thread with its own
seeded random schedule, each recording what it asked and what it was told.

Producers run each publish as the ingest function would, within the writer timeout (after it
botocore refuses their requests, as Lambda ends a timed-out invocation); a quarter of the unkeyed
events carry a few KB so that a catch-up of the window spans several frames.

Subscribers (one channel, or two on one connection) behave like ``web/realtime-client.js``: per
channel the last seq handed to the page,
a reorder buffer, a resume cursor that only ever comes from the server; `event` and `events`
frames are applied and deduplicated by seq; a `subscribed` answer resolves every position up to
its `position` (a truncated one first moves past what the window took); `hasMore` subscribes
again from where the server got to; a pong whose head is ahead twice in a row, and a gap that
outlives the reorder window, are filled by subscribing again with the resume cursor.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .history import History
from .substrate import Line, Substrate, WriterKilled, WriterTimedOut

if TYPE_CHECKING:
    from .runner import ChaosConfig

FIVE_XX_CODES = ("unavailable", "configuration_error")
_META = {"chaos": True}
_REORDER_S = 0.15
_RESUBSCRIBE_GAP_S = 0.1


@dataclass
class Context:
    config: ChaosConfig
    history: History
    system: Substrate
    channels: list[str]
    stop: threading.Event = field(default_factory=threading.Event)  # producers and readers stop
    calm: threading.Event = field(default_factory=threading.Event)  # subscribers stop dropping
    finishing: threading.Event = field(default_factory=threading.Event)  # subscribers catch up and end
    final_heads: dict[str, int] = field(default_factory=dict)
    heads: dict[str, int] = field(default_factory=dict)  # highest acknowledged seq per channel
    keys: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # (key, variant) used per channel
    keys_lock: threading.Lock = field(default_factory=threading.Lock)


class Worker(threading.Thread):
    def __init__(self, ctx: Context, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.ctx = ctx
        self.history = ctx.history
        self.rng = random.Random(f"{ctx.config.seed}:{name}")  # noqa: S311 - a schedule, not a secret

    def run(self) -> None:
        try:
            self.work()
        except BaseException as exc:  # a client must never die: that is a finding too
            self.history.add(self.history.tick(), self.name, "crash", "info", error=repr(exc), unexpected=True)

    def work(self) -> None:
        raise NotImplementedError


def _classify(exc: BaseException) -> dict[str, Any]:
    """What a caller of the HTTP API would have seen for this exception."""
    from realtime_transport.errors import ConfigurationError, IdempotencyConflict, RealtimeError, StoreUnavailable

    if isinstance(exc, WriterTimedOut):
        return {"killed": True, "timed_out": True}  # as a Lambda timeout: the caller sees a 504
    if isinstance(exc, WriterKilled):
        return {"killed": True}  # a Lambda timeout: the caller sees a 504 from API Gateway, the nemesis did it
    if isinstance(exc, IdempotencyConflict):
        return {"conflict": True}
    if isinstance(exc, StoreUnavailable | ConfigurationError):
        return {"error": f"{type(exc).__name__}: {exc}", "fivexx": True}
    if isinstance(exc, RealtimeError):
        return {"error": f"{type(exc).__name__}: {exc}", "unexpected": True}  # a 4xx for a valid request
    return {"error": repr(exc), "unexpected": True}


# --- producers ------------------------------------------------------------------------------------


class Producer(Worker):
    """Publishes unkeyed and keyed events; duplicates keys concurrently; reuses keys with another
    payload; retries a keyed publish whose outcome it does not know, with the same key."""

    def __init__(self, ctx: Context, name: str) -> None:
        super().__init__(ctx, name)
        self.requests = 0

    def work(self) -> None:
        while not self.ctx.stop.is_set():
            self.requests += 1
            request = f"{self.name}.{self.requests}"
            channel = self.rng.choice(self.ctx.channels)
            roll = self.rng.random()
            if roll < 0.45:
                self.publish(self.name, self.rng, channel, request, None, 0)
            elif roll < 0.75:
                self.keyed(self.name, self.rng, channel, request, request, 0)
            elif roll < 0.87:
                self.together(channel, request, request, [0] * self.rng.choice((2, 3)))
            elif roll < 0.95:
                self.reuse(channel, request)
            else:
                self.together(channel, request, request, [0, 1])  # one key, two payloads, at once
            time.sleep(self.rng.uniform(0, 0.01))

    def reuse(self, channel: str, request: str) -> None:
        with self.ctx.keys_lock:
            used = list(self.ctx.keys.get(channel, []))
        if not used:
            self.keyed(self.name, self.rng, channel, request, request, 0)
            return
        key, variant = self.rng.choice(used)
        self.keyed(self.name, self.rng, channel, request, key, variant + 1)

    def together(self, channel: str, request: str, key: str, variants: list[int]) -> None:
        barrier = threading.Barrier(len(variants))
        threads = []
        for index, variant in enumerate(variants):
            name = f"{self.name}/{index}"
            rng = random.Random(f"{self.ctx.config.seed}:{request}:{index}")  # noqa: S311

            def go(name: str = name, rng: random.Random = rng, variant: int = variant) -> None:
                barrier.wait()
                try:
                    self.keyed(name, rng, channel, f"{request}/{variant}", key, variant)
                except BaseException as exc:
                    self.history.add(self.history.tick(), name, "crash", "info", error=repr(exc), unexpected=True)

            threads.append(threading.Thread(target=go, name=name, daemon=True))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def keyed(self, process: str, rng: random.Random, channel: str, request: str, key: str, variant: int) -> None:
        with self.ctx.keys_lock:
            self.ctx.keys.setdefault(channel, []).append((key, variant))
        for attempt in range(4):
            outcome = self.publish(process, rng, channel, request, key, variant, attempt)
            if outcome != "info":
                return
            time.sleep(rng.uniform(0.005, 0.03))  # unknown outcome: retry with the same key and payload

    def publish(
        self,
        process: str,
        rng: random.Random,
        channel_name: str,
        request: str,
        key: str | None,
        variant: int,
        attempt: int = 0,
    ) -> str:
        system = self.ctx.system
        channel = system.realtime.channel(channel_name)
        data: dict[str, Any] = {"op": request} if key is None else {"key": key, "v": variant}
        if key is None and rng.random() < 0.25:
            # A few KB: a catch-up of the window then spans several 32 KB frames.
            data["pad"] = "x" * rng.randint(1_000, 12_000)
        kill = rng.random() < self.ctx.config.writer_kill_rate
        lose = rng.random() < self.ctx.config.lost_ack_rate
        common: dict[str, Any] = {"request": request, "attempt": attempt, "data": data}
        start = self.history.tick()
        system.store.invoked(self.ctx.config.writer_timeout_s)
        if kill:
            system.store.arm()
        try:
            result = channel.broadcast(
                type="chaos.keyed" if key else "chaos.unkeyed", data=data, metadata=_META, idempotency_key=key
            )
        except BaseException as exc:
            allocated = system.store.returned()
            outcome = _classify(exc)
            kind = "fail" if outcome.get("conflict") else "info"
            self.history.add(
                start,
                process,
                "publish",
                kind,
                channel=channel_name,
                key=key,
                seqs=allocated,
                **common,
                **outcome,
                allocated=allocated or None,
            )
            return kind
        allocated = system.store.returned()
        event = result.event
        self.history.add(
            start,
            process,
            "publish",
            "info" if lose else "ok",  # a lost response: the client cannot tell it worked
            channel=channel_name,
            key=key,
            seqs=[event.seq, *allocated],
            **common,
            id=event.id,
            seq=event.seq,
            duplicate=result.duplicate,
            lost_ack=lose,
            abandoned=[seq for seq in allocated if seq != event.seq] or None,
        )
        if self.ctx.heads.get(channel_name, 0) < event.seq:
            self.ctx.heads[channel_name] = event.seq
        return "info" if lose else "ok"


# --- readers ------------------------------------------------------------------------------------------


class Reader(Worker):
    """Pages history with small limits, from the latest events or from random cursors."""

    def work(self) -> None:
        limit_window = self.ctx.config.history_limit
        while not self.ctx.stop.is_set():
            channel_name = self.rng.choice(self.ctx.channels)
            channel = self.ctx.system.realtime.channel(channel_name)
            limit = self.rng.randint(1, 6)
            after: int | None = None
            if self.rng.random() >= 0.3:
                high = self.ctx.heads.get(channel_name, 0)
                after = self.rng.randint(max(0, high - 2 * limit_window), high)
            cursor = channel.cursor(after) if after is not None else None
            for _ in range(self.rng.randint(1, 4)):
                page = read_page(self.ctx, self.name, channel_name, limit, after, cursor)
                if page is None or not page.has_more:
                    break
                cursor, after = page.next_cursor, page.position
            time.sleep(self.rng.uniform(0, 0.02))


def read_page(ctx: Context, process: str, channel_name: str, limit: int, after: int | None, cursor: str | None) -> Any:
    """One history page, recorded with the channel's head right after it (bounds the window)."""
    system = ctx.system
    channel = system.realtime.channel(channel_name)
    start = ctx.history.tick()
    try:
        page = channel.history(limit=limit, cursor=cursor)
    except BaseException as exc:
        ctx.history.add(start, process, "read", "info", channel=channel_name, after=after, **_classify(exc))
        return None
    wall = time.time()
    head_after = head_of(ctx, channel_name)
    ctx.history.add(
        start,
        process,
        "read",
        "ok",
        channel=channel_name,
        seqs=[event.seq for event in page.items],
        lo=(after + 1) if after is not None else None,
        hi=page.position,
        after=after,
        limit=limit,
        items=[(event.seq, event.id) for event in page.items],
        position=page.position,
        has_more=page.has_more,
        truncated=page.truncated,
        head_after=head_after,
        wall=wall,
    )
    return page


def head_of(ctx: Context, channel_name: str) -> int | None:
    """The channel's head (None if unreadable): the checker's own look, it only bounds the window."""
    key = ctx.system.realtime.channel(channel_name).key
    for _ in range(3):
        try:
            return int(ctx.system.store.head(key).seq)
        except Exception:
            time.sleep(0.01)
    return None


# --- subscribers ---------------------------------------------------------------------------------------


@dataclass
class Window:
    """A subscribe in flight: the seq its cursor named (None: fresh), and what its replies held."""

    after: int | None
    wall: float
    reply_min: int | None = None
    head_after: int | None = None  # the channel's head once the subscribe was answered


@dataclass
class ClientRecord:
    """What the checker needs of one subscriber: where its subscription began, what it handed the
    page, and the losses it was told of."""

    name: str
    channel: str
    start_seq: int | None = None
    last: int | None = None
    delivered: dict[int, str] = field(default_factory=dict)  # seq -> event id, as handed to the page
    # (first seq, last seq, "window" | "ttl", wall time): positions the server said may be lost
    excused: list[tuple[int, int, str, float]] = field(default_factory=list)
    converged: bool = False


class Feed:
    """One channel of a subscriber, sequenced as ``web/realtime-client.js`` sequences it."""

    def __init__(self, owner: Subscriber, channel: str) -> None:
        self.owner = owner
        self.history = owner.history
        self.channel = channel
        self.record = ClientRecord(name=owner.name, channel=channel)
        self.window: Window | None = None
        self.more = False
        self.cursors: dict[int, str] = {}  # seq -> the cursor the server gave for it
        self.buffer: dict[int, tuple[str, float]] = {}  # seq -> (event id, when it arrived)
        self.behind = 0  # pongs in a row whose head was ahead of what was delivered
        self.last_resubscribe = 0.0

    def reset(self) -> None:
        self.window = None
        self.more = False
        self.behind = 0

    def add(self, f: str, type: str = "ok", **value: Any) -> None:
        self.history.add(self.history.tick(), self.owner.name, f, type, channel=self.channel, **value)

    def resume(self) -> tuple[str | None, int | None]:
        """The cursor to resume with (the newest the server gave for a seq at or below `last`)."""
        last = self.record.last
        known = [seq for seq in self.cursors if last is not None and seq <= last]
        if not known:
            return None, None
        seq = max(known)
        return self.cursors[seq], seq

    def waiting_since(self) -> float | None:
        """When the oldest event waiting for the seqs before it arrived (None: no gap)."""
        return min((arrived for _, arrived in self.buffer.values()), default=None)

    # --- frames ----------------------------------------------------------------------------

    def on_events(self, via: str, events: list[dict[str, Any]], cursor: str | None) -> None:
        seqs = [int(event["seq"]) for event in events]
        self.add(
            "recv",
            seqs=seqs,
            kind="events" if len(events) > 1 else "event",
            via=via,
            ids=[(int(event["seq"]), event["id"]) for event in events],
            conn=self.owner.connection,
        )
        if via == "reply" and self.window is not None:
            low = min(seqs)
            self.window.reply_min = low if self.window.reply_min is None else min(self.window.reply_min, low)
        for event in events:
            self.accept(int(event["seq"]), str(event["id"]))
        if cursor is not None:
            self.cursors[seqs[-1]] = cursor

    def accept(self, seq: int, event_id: str) -> None:
        last = self.record.last
        if last is not None and seq <= last:
            return  # a duplicate: dropped by seq
        if last is not None and seq == last + 1:
            self.deliver(seq, event_id)
            self.drain()
            return
        self.buffer.setdefault(seq, (event_id, time.monotonic()))

    def deliver(self, seq: int, event_id: str) -> None:
        self.record.delivered[seq] = event_id
        self.record.last = seq

    def drain(self) -> None:
        last = self.record.last
        if last is None:
            return
        for seq in [seq for seq in self.buffer if seq <= last]:
            del self.buffer[seq]  # at or below what was resolved: duplicates now
        while last + 1 in self.buffer:
            event_id, _ = self.buffer.pop(last + 1)
            self.deliver(last + 1, event_id)
            last += 1

    def skip_to(self, target: int, reason: str) -> None:
        """Everything up to `target` is resolved: deliver what is buffered, the rest never comes."""
        last = self.record.last
        assert last is not None  # noqa: S101 - only once positioned
        skipped = []
        for seq in range(last + 1, target + 1):
            held = self.buffer.pop(seq, None)
            if held is not None:
                self.deliver(seq, held[0])
            else:
                skipped.append(seq)
        self.record.last = max(target, self.record.last or target)
        if skipped:
            self.add("skip", seqs=skipped, reason=reason, skipped=_ranges(skipped))

    def on_subscribed(self, frame: dict[str, Any]) -> None:
        window, self.window = self.window, None
        position = int(frame.get("position", 0))
        truncated = bool(frame.get("truncated"))
        more = bool(frame.get("hasMore"))
        self.add(
            "recv",
            hi=position,
            lo=(window.after + 1) if window is not None and window.after is not None else position,
            kind="subscribed",
            position=position,
            truncated=truncated,
            has_more=more,
            after=window.after if window is not None else "?",
            first_reply=window.reply_min if window is not None else None,
            head_after=window.head_after if window is not None else None,
            wall=time.time(),
        )
        if window is None:
            return  # not the answer to a subscribe of ours: the checker sees it in the history
        self.cursors[position] = str(frame["cursor"])
        if window.after is None:
            if self.record.last is None:
                self.record.start_seq = position
                self.record.last = position
            elif position > self.record.last:
                self.skip_to(position, "fresh subscribe")
        else:
            if truncated:
                first = window.reply_min if window.reply_min is not None else position + 1
                self.record.excused.append((window.after + 1, first - 1, "window", window.wall))
                self.record.excused.append((window.after + 1, position, "ttl", window.wall))
                if self.record.last is not None and first - 1 > self.record.last:
                    self.skip_to(first - 1, "truncated")
            if self.record.last is not None and position > self.record.last:
                self.skip_to(position, "claimed by subscribed.position")
        self.drain()
        self.more = more

    def on_head(self, head: Any) -> None:
        self.add("recv", kind="pong", head=head)
        if head is not None and self.record.last is not None and int(head) > self.record.last:
            self.behind += 1
        else:
            self.behind = 0


class Subscriber(Worker):
    """One WebSocket client on one or more channels: connects, subscribes, pings, drops its
    connection and comes back on a new one with each channel's last cursor."""

    def __init__(self, ctx: Context, name: str, channels: list[str], late: bool) -> None:
        super().__init__(ctx, name)
        from realtime_transport import tokens

        self.late = late
        self.feeds = {channel: Feed(self, channel) for channel in channels}
        self.token = tokens.issue(ctx.system.realtime.secret, sub=name, channels=["chaos_*"], ttl_seconds=3600)
        self.generation = 0
        self.connection: str | None = None
        self.line: Line | None = None
        self.drops = 0

    @property
    def records(self) -> list[ClientRecord]:
        return [feed.record for feed in self.feeds.values()]

    # --- the schedule ---------------------------------------------------------------------

    def work(self) -> None:
        config = self.ctx.config
        self.ctx.calm.wait(self.rng.uniform(0, 0.3))
        self.connect()
        now = time.monotonic()
        next_drop = now + self.rng.expovariate(config.drop_rate) if config.drop_rate > 0 else float("inf")
        next_ping = now + self.rng.uniform(0.2, 0.6)
        while not self.ctx.finishing.is_set():
            self.pump()
            self.maintain()
            now = time.monotonic()
            if now >= next_drop and not self.ctx.calm.is_set():
                self.drop_and_return()
                next_drop = time.monotonic() + self.rng.expovariate(config.drop_rate)
            elif now >= next_ping:
                self.ping()
                next_ping = now + self.rng.uniform(0.2, 0.6)
            time.sleep(self.rng.uniform(0.01, 0.03))
        self.finish()

    def maintain(self) -> None:
        if self.line is None or self.line.dropped:
            self.connect()
            return
        for feed in self.feeds.values():
            now = time.monotonic()
            if now - feed.last_resubscribe < _RESUBSCRIBE_GAP_S:
                continue
            waited = feed.waiting_since()
            if waited is not None and now - waited > _REORDER_S:
                self.subscribe(feed, "gap")
            elif feed.behind >= 2:
                feed.behind = 0
                self.subscribe(feed, "head")

    def drop_and_return(self) -> None:
        assert self.line is not None and self.connection is not None  # noqa: S101 - connected
        self.drops += 1
        self.history.add(self.history.tick(), self.name, "drop", "info", conn=self.connection)
        self.line.drop()
        self.pump()  # what had arrived before the drop was received
        if self.rng.random() < 0.5:  # $disconnect is not guaranteed
            start = self.history.tick()
            try:
                self.ctx.system.live.disconnect(self.connection)
                self.history.add(start, self.name, "disconnect", "ok", conn=self.connection)
            except BaseException as exc:
                self.history.add(start, self.name, "disconnect", "info", conn=self.connection, **_classify(exc))
        low, high = self.ctx.config.late_absence_s if self.late else (0.02, 0.4)
        self.ctx.calm.wait(self.rng.uniform(low, high))
        self.connect()

    def finish(self) -> None:
        """Quiesced: catch every channel up to its final head, over as many subscribes as it takes."""
        targets = {channel: self.ctx.final_heads.get(channel, 0) for channel in self.feeds}

        def caught_up(feed: Feed) -> bool:
            last = feed.record.last
            return last is not None and last >= targets[feed.channel] and not feed.buffer

        for _ in range(100):
            if all(caught_up(feed) for feed in self.feeds.values()):
                break
            if self.line is None or self.line.dropped:
                self.connect()
            else:
                for feed in self.feeds.values():
                    if not caught_up(feed):
                        self.subscribe(feed, "final")
            time.sleep(0.05)
        for feed in self.feeds.values():
            feed.record.converged = caught_up(feed)
            feed.add(
                "converge",
                "ok" if feed.record.converged else "fail",
                last=feed.record.last,
                target=targets[feed.channel],
                buffered=sorted(feed.buffer),
            )

    # --- requests ---------------------------------------------------------------------------

    def connect(self) -> bool:
        self.generation += 1
        connection = f"{self.name}.{self.generation}"
        line = self.ctx.system.switchboard.open(connection)  # before the table knows it: no false 410
        start = self.history.tick()
        try:
            self.ctx.system.live.connect(connection, self.token)
        except BaseException as exc:
            line.drop()
            self.history.add(start, self.name, "connect", "info", conn=connection, **_classify(exc))
            return False
        self.history.add(start, self.name, "connect", "ok", conn=connection)
        self.connection, self.line = connection, line
        for feed in self.feeds.values():
            feed.reset()
        for feed in self.feeds.values():
            self.subscribe(feed, "connect")
        return True

    def subscribe(self, feed: Feed, why: str) -> None:
        if self.connection is None or self.line is None or self.line.dropped:
            return
        small_budget = self.rng.random() < self.ctx.config.has_more_rate
        for _ in range(30):
            cursor, after = feed.resume()
            message: dict[str, Any] = {"action": "subscribe", "channel": feed.channel}
            if cursor is not None:
                message["cursor"] = cursor
            remaining: Callable[[], int] | None = None
            budget_ms = 0
            if small_budget:
                # The function's remaining time: a catch-up this short stops with hasMore.
                budget_ms = self.rng.randint(2, 60)
                remaining = _remaining(1500 + budget_ms)
            feed.window = Window(after=after, wall=time.time())
            feed.more = False
            feed.last_resubscribe = time.monotonic()
            start = self.history.tick()
            try:
                self.ctx.system.live.handle(self.connection, json.dumps(message), remaining_ms=remaining)
            except BaseException as exc:
                self.history.add(start, self.name, "subscribe", "info", channel=feed.channel, **_classify(exc))
                feed.window = None
                return
            if feed.window is not None:
                feed.window.head_after = head_of(self.ctx, feed.channel)
            self.history.add(
                start,
                self.name,
                "subscribe",
                "ok",
                channel=feed.channel,
                after=after,
                why=why,
                budget_ms=budget_ms or None,
                conn=self.connection,
            )
            self.pump()
            if not feed.more or self.line.dropped:
                return
            why = "hasMore"
            small_budget = self.rng.random() < self.ctx.config.has_more_rate / 2

    def ping(self) -> None:
        if self.connection is None or self.line is None or self.line.dropped:
            return
        start = self.history.tick()
        try:
            self.ctx.system.live.handle(self.connection, '{"action": "ping"}')
        except BaseException as exc:
            self.history.add(start, self.name, "ping", "info", **_classify(exc))
            return
        self.history.add(start, self.name, "ping", "ok")
        self.pump()

    # --- frames ----------------------------------------------------------------------------------

    def pump(self) -> None:
        if self.line is None:
            return
        for via, frame in self.line.take():
            kind = frame.get("type")
            channel = frame.get("channel")
            feed = self.feeds.get(channel) if isinstance(channel, str) else None
            if kind in ("event", "events"):
                if feed is None:
                    # The checker flags a frame of a channel this connection never subscribed to.
                    self.history.add(
                        self.history.tick(), self.name, "recv", "ok", channel=str(channel), kind=kind, foreign=True
                    )
                    continue
                events = [frame["event"]] if kind == "event" else frame["events"]
                feed.on_events(via, events, frame.get("cursor"))
            elif kind == "subscribed" and feed is not None:
                feed.on_subscribed(frame)
            elif kind == "pong":
                heads = frame.get("heads") or {}
                for each in self.feeds.values():
                    each.on_head(heads.get(each.channel))
            elif kind == "error":
                self.on_error(frame, feed)
            else:
                self.history.add(self.history.tick(), self.name, "recv", "ok", channel=channel, kind=kind)

    def on_error(self, frame: dict[str, Any], feed: Feed | None) -> None:
        code = str(frame.get("code"))
        fivexx = code in FIVE_XX_CODES
        self.history.add(
            self.history.tick(),
            self.name,
            "recv",
            "info",
            channel=feed.channel if feed is not None else None,
            kind="error",
            code=code,
            error=f"{code}: {frame.get('message')}",
            fivexx=fivexx or None,
            unexpected=(not fivexx) or None,
        )
        for each in [feed] if feed is not None else self.feeds.values():
            each.window = None
        if code == "unauthorized" and self.line is not None:
            self.line.drop()  # the connection is gone from the table: reconnect


def _remaining(ms: int) -> Callable[[], int]:
    """A Lambda context's clock that says `ms` are left."""

    def remaining() -> int:
        return ms

    return remaining


def _ranges(seqs: list[int]) -> str:
    parts: list[str] = []
    for seq in sorted(seqs):
        if parts and int(parts[-1].rpartition("-")[2] or parts[-1]) == seq - 1:
            head = parts[-1].partition("-")[0]
            parts[-1] = f"{head}-{seq}"
        else:
            parts.append(str(seq))
    return ",".join(parts)
