"""A channel: a per-channel shared log in the style of CORFU.

Writers take a position from the channel's head item with one atomic ADD and
fill it with a conditional put. Readers hand out only the contiguous prefix of
the log and stop at a hole; a hole older than the writer timeout belongs to a
writer that died, so the reader fills it with a tombstone (conditional, so the
late writer can never land there; it takes a new position instead).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import clock
from .cursor import CURSOR_PLACEHOLDER
from .errors import (
    EventTooLarge,
    IdempotencyConflict,
    InvalidChannel,
    InvalidCursor,
    InvalidInput,
    RealtimeError,
    StoreUnavailable,
)
from .ids import new_ulid
from .models.envelope import Event
from .models.frames import event_frame
from .models.items import Allocation, AttributeMap, IdempotencyRecord, Kind, Position, channel_key, position_item
from .observability import logger
from .store import KeyTaken, PositionTaken, WriteConflict

if TYPE_CHECKING:
    from .batch import BatchItem
    from .realtime import Realtime

CHANNEL_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
MAX_PAGE = 500
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Clocks of different Lambda hosts disagree by milliseconds; never call a hole
# abandoned on a margin thinner than this.
_CLOCK_SKEW_MS = 1000
_WRITE_ATTEMPTS = 3
_CONFLICT_ATTEMPTS = 10
_CONFLICT_BACKOFF_S = 0.02
_CONFLICT_BACKOFF_CAP_S = 0.2  # ten attempts take at most about 1.5 s of the writer's time
_READ_SLACK = 8
# How far back a read without a cursor looks at a time for the point below which no writer
# can still be filling a position (see _LogReader.latest).
_SETTLE_STEP = 32


@dataclass(frozen=True)
class PublishResult:
    event: Event
    duplicate: bool


@dataclass(frozen=True)
class HistoryPage:
    items: list[Event]
    next_cursor: str
    has_more: bool
    truncated: bool
    position: int  # the log position next_cursor names: everything up to it is resolved


def fingerprint_of(*parts: Any) -> str:
    """What an idempotency key promises: the same key carries the same event."""
    # ensure_ascii: any string (even an unpaired surrogate) has one canonical form.
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _check_text(value: str, field: str, max_length: int) -> None:
    if not 1 <= len(value) <= max_length or _CONTROL.search(value):
        raise InvalidInput(f"{field} must be 1 to {max_length} printable characters", field=field)


class Channel:
    def __init__(self, realtime: Realtime, name: str) -> None:
        if not CHANNEL_PATTERN.match(name):
            raise InvalidChannel("channel must be 1 to 200 characters of letters, digits and _ . : -", field="channel")
        self.name = name
        self._realtime = realtime
        self.key = channel_key(realtime.name, name)

    def __repr__(self) -> str:
        return f"Channel({self.name!r})"

    # --- writing --------------------------------------------------------------------------

    def broadcast(
        self,
        *,
        type: str,
        data: Any,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        fingerprint: str | None = None,
    ) -> PublishResult:
        """Store one event and hand it to every subscriber of the channel.

        With an idempotency key, every retry returns the original event with
        `duplicate=True`; the same key with a different event is an
        `IdempotencyConflict`. `fingerprint` says what "the same event" means
        when `data` carries per-attempt fields such as a receive time; by
        default it covers type, data and metadata.
        """
        _check_text(type, "type", 128)
        metadata = dict(metadata or {})
        store = self._realtime.store
        if idempotency_key is not None:
            _check_text(idempotency_key, "idempotencyKey", 256)
            fingerprint = fingerprint or fingerprint_of(type, data, metadata)
            record = store.idempotency_record(self.key, idempotency_key)
            if record is not None and record.expires_at > clock.now_ms() // 1000:
                return self._replay(record, fingerprint, idempotency_key)

        # Check the size before taking a position, so a refused event leaves no hole.
        draft = self._draft(type, data, metadata, idempotency_key)

        for _ in range(_WRITE_ATTEMPTS):
            now = clock.now_ms()
            event_id = new_ulid(now)
            allocation = store.allocate(self.key, now, token=event_id)
            seq = allocation.seq
            event = draft.model_copy(update={"id": event_id, "seq": seq, "published_at": clock.iso_ms(now)})
            item = position_item(
                self.key,
                seq,
                Kind.EVENT,
                allocation.allocated_at_ms,
                self._history_expiry(now),
                event.to_json(),
                prev_allocated_at_ms=allocation.prev_allocated_at_ms,
            )
            try:
                self._fill(item, idempotency_key, fingerprint, now)
                return PublishResult(event=event, duplicate=False)
            except PositionTaken as taken:
                if taken.existing is not None and taken.existing.event_id() == event.id:
                    # Our own put committed and its response was lost to a retry.
                    return PublishResult(event=event, duplicate=False)
                continue  # a reader declared us dead and tombstoned the slot: take a fresh one
            except KeyTaken as taken:
                record = taken.record or store.idempotency_record(self.key, idempotency_key or "")
                if record is None:
                    self._abandon(allocation, now)
                    raise StoreUnavailable("idempotency record vanished during a key race") from None
                if record.event().id == event.id:
                    # Our own transaction committed and its response was lost to a retry.
                    return PublishResult(event=event, duplicate=False)
                # Lost the key race: our position must not stay a hole.
                self._abandon(allocation, now)
                return self._replay(record, fingerprint or "", idempotency_key or "")
            except StoreUnavailable:
                # Throttled or failed after boto3's retries: our position must not stay a hole
                # that stalls every reader for the writer timeout. A 5xx can hide a write that
                # committed, so the tombstone doubles as a probe: it finds our event if it is there.
                existing = self._abandon(allocation, now)
                if existing is not None and existing.event_id() == event.id:
                    return PublishResult(event=event, duplicate=False)
                raise
        raise StoreUnavailable(f"no position could be filled after {_WRITE_ATTEMPTS} attempts")

    def _draft(self, type: str, data: Any, metadata: dict[str, Any], idempotency_key: str | None) -> Event:
        """The envelope before it has a position, refused if it is too large or not Unicode."""
        draft = Event(
            id=new_ulid(),
            channel=self.name,
            seq=10**15,
            type=type,
            data=data,
            metadata=metadata,
            published_at=clock.iso_ms(clock.now_ms()),
            idempotency_key=idempotency_key,
        )
        try:
            # What a subscriber receives is the whole frame around the envelope: count that.
            size = len(event_frame(self.name, draft.to_json(), CURSOR_PLACEHOLDER))
        except (UnicodeEncodeError, ValueError) as exc:
            # e.g. "\ud800" in the JSON: valid JSON text, but not Unicode that can be stored or sent.
            raise InvalidInput(f"data is not valid Unicode JSON: {exc}", field="payload") from exc
        limit = self._realtime.settings.max_event_bytes
        if size > limit:
            raise EventTooLarge(
                f"event is {size} bytes as delivered (envelope, channel and cursor); the limit is {limit}",
                field="payload",
            )
        return draft

    def broadcast_batch(self, items: Sequence[BatchItem]) -> list[PublishResult | RealtimeError]:
        """Store up to 100 events at once, in request order: one result (or error) per item.

        One ADD takes the positions of every event that will be written; keyed events go in
        transactions of up to 50, unkeyed ones in BatchWriteItem, and a position whose event
        fails is tombstoned, so the batch never leaves a hole (batch.py).
        """
        from .batch import publish_batch

        return publish_batch(self, items)

    def _fill(self, item: AttributeMap, idempotency_key: str | None, fingerprint: str | None, now: int) -> None:
        """Write our position; a keyed write rides out transaction conflicts on its key.

        Two transactions on the same idempotency record, or a transaction and a write, cancel
        each other with TransactionConflict rather than waiting (Amazon DynamoDB Developer Guide,
        "Transaction conflict handling in DynamoDB"). The other writer holds the same key: re-read
        it, and replay the record if it committed; otherwise try again after a short backoff.
        """
        store = self._realtime.store
        if idempotency_key is None:
            try:
                store.put_position(item)
            except WriteConflict as exc:  # only a transaction could hold our own position: none should
                raise StoreUnavailable(f"position {item['sk']['N']} is held by a transaction") from exc
            return
        assert fingerprint is not None  # noqa: S101 - always set with a key
        settings = self._realtime.settings
        for attempt in range(_CONFLICT_ATTEMPTS):
            try:
                store.put_keyed_event(
                    item,
                    self.key,
                    idempotency_key,
                    fingerprint,
                    now // 1000 + settings.idempotency_ttl_seconds,
                    clock.now_ms() // 1000,
                )
                return
            except WriteConflict:
                record = store.idempotency_record(self.key, idempotency_key)
                if record is not None and record.expires_at > clock.now_ms() // 1000:
                    raise KeyTaken(record) from None
                backoff = min(_CONFLICT_BACKOFF_CAP_S, _CONFLICT_BACKOFF_S * 2**attempt)
                time.sleep(random.uniform(0, backoff))  # noqa: S311 - full jitter, not crypto
        raise StoreUnavailable(f"idempotency key kept conflicting after {_CONFLICT_ATTEMPTS} attempts")

    def publish(
        self,
        *,
        type: str,
        data: Any,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        fingerprint: str | None = None,
    ) -> PublishResult:
        """Same path as `broadcast`: store, then reach every subscriber."""
        return self.broadcast(
            type=type, data=data, metadata=metadata, idempotency_key=idempotency_key, fingerprint=fingerprint
        )

    def _replay(self, record: IdempotencyRecord, fingerprint: str, key: str) -> PublishResult:
        original = record.event()
        if record.fingerprint != fingerprint:
            raise IdempotencyConflict(
                f"idempotency key {key!r} was already used for a different event (seq {original.seq})",
                field="idempotencyKey",
            )
        return PublishResult(event=original, duplicate=True)

    def _history_expiry(self, now_ms: int) -> int:
        return now_ms // 1000 + self._realtime.settings.history_ttl_seconds

    def _abandon(self, allocation: Allocation, now_ms: int) -> Position | None:
        """A writer gives up its own position: a tombstone with the exact allocation times.

        Returns what is there if the position was already filled (our own write whose
        response was lost, or a reader's tombstone); None once tombstoned, or if even the
        tombstone could not be written (readers then tombstone it after the writer timeout).
        """
        item = position_item(
            self.key,
            allocation.seq,
            Kind.TOMBSTONE,
            allocation.allocated_at_ms,
            self._history_expiry(now_ms),
            prev_allocated_at_ms=allocation.prev_allocated_at_ms,
        )
        try:
            self._realtime.store.put_position(item)
            return None
        except PositionTaken as taken:
            return taken.existing or self._realtime.store.position(self.key, allocation.seq)
        except (WriteConflict, StoreUnavailable):
            return None

    def _tombstone(self, seq: int, earliest_ms: int, latest_ms: int, now_ms: int) -> Position | None:
        """A reader fills an abandoned `seq` with a tombstone; returns what is there if filled first.

        The reader only knows bounds of when `seq` was allocated, and stores them, so later
        readers can still reason about the positions around it.
        """
        item = position_item(
            self.key,
            seq,
            Kind.TOMBSTONE,
            latest_ms,
            self._history_expiry(now_ms),
            prev_allocated_at_ms=latest_ms,
            allocated_after_ms=earliest_ms,
        )
        try:
            self._realtime.store.put_position(item)
            return None
        except PositionTaken as taken:
            return taken.existing or self._realtime.store.position(self.key, seq)

    # --- reading --------------------------------------------------------------------------

    def cursor(self, seq: int) -> str:
        """An opaque cursor meaning "everything up to `seq` has been seen"."""
        return self._realtime.cursor_codec.encode(self.key, seq)

    def decode_cursor(self, cursor: str) -> int:
        return self._realtime.cursor_codec.decode(self.key, cursor)

    def history(self, limit: int = 100, cursor: str | None = None) -> HistoryPage:
        """Without a cursor: the latest `limit` events. With one: the events after it.

        Oldest first, a contiguous run of the log, never older than the last
        `history_limit` positions; `truncated` says events were lost to the window.
        """
        if not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"limit must be an integer from 1 to {MAX_PAGE}", field="limit")
        after = self.decode_cursor(cursor) if cursor is not None else None
        reader = _LogReader(self)
        head = reader.head
        if after is not None and after > head:
            raise InvalidCursor("cursor is ahead of this channel's log", field="cursor")
        window_start = max(1, head - self._realtime.history_limit + 1)
        if after is None:
            return reader.latest(window_start, limit)
        return reader.forward(after, window_start, limit)


class _LogReader:
    """Resolves positions of one channel's log for one read: events, skips, losses and live holes.

    A missing position is one of three things: a write still in flight (wait: a hole), a
    writer that died (fill it with a tombstone, then skip it), or an item TTL has deleted
    (DynamoDB deletes expired items days late, but it does: "Expiring items by using DynamoDB
    Time to Live (TTL)"). Which one follows from when the position was allocated, and
    positions are allocated in order, so every stored neighbour bounds it: the nearest
    position above gives the latest it can have been allocated, the nearest one below the
    earliest (see models/items.py). A reader never waits on, nor writes into, a position TTL
    may have taken: that is a loss, reported as `truncated` to a reader with a cursor.
    """

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._store = channel._realtime.store
        self._settings = channel._realtime.settings
        self._head = self._store.head(channel.key)
        self.head = self._head.seq
        self._now_ms = clock.now_ms()
        self._known: dict[int, Position] = {}
        self._fetched: tuple[int, int] | None = None

    def _fetch(self, first: int, last: int) -> None:
        """Make sure [first, last] is read: only the part not read yet is queried."""
        first = max(first, 1)
        if self._fetched is None:
            self._known.update(self._store.positions(self._channel.key, first, last))
            self._fetched = (first, last)
            return
        lo, hi = self._fetched
        if first < lo:
            self._known.update(self._store.positions(self._channel.key, first, lo - 1))
        if last > hi:
            self._known.update(self._store.positions(self._channel.key, hi + 1, last))
        self._fetched = (min(first, lo), max(last, hi))

    def _latest_ms(self, seq: int) -> int:
        """No earlier than the allocation of `seq`: from the nearest known position at or above it."""
        above = [p for s, p in self._known.items() if s >= seq]
        if above:
            return min(above, key=lambda p: p.seq).latest_ms_of(seq)
        if not (self._fetched and self._fetched[1] >= self.head):
            nxt = self._store.next_position(self._channel.key, seq - 1)
            if nxt is not None:
                self._known[nxt.seq] = nxt
                return nxt.latest_ms_of(seq)
        return self._head.latest_ms_of(seq)

    def _earliest_ms(self, seq: int) -> int:
        """No later than the allocation of `seq`: from the nearest stored position below it, or
        when the channel's first position was allocated (no position is older)."""
        below = [p for s, p in self._known.items() if s < seq]
        if not below and not (self._fetched and self._fetched[0] <= 1):
            previous = self._store.previous_position(self._channel.key, seq)  # rare: only for an old hole
            if previous is not None:
                self._known[previous.seq] = previous
                below = [previous]
        return max(below, key=lambda p: p.seq).earliest_ms if below else self._head.created_at_ms

    def resolve(self, seq: int) -> tuple[str, Position | None]:
        """("event" | "skip" | "expired" | "hole", position) for one position inside the fetched range."""
        position = self._known.get(seq)
        if position is None:
            settings = self._settings
            latest = self._latest_ms(seq)
            ttl_ms = settings.history_ttl_seconds * 1000
            if latest + ttl_ms < self._now_ms - _CLOCK_SKEW_MS:
                return "expired", None  # written or not, it would have expired by now
            if latest > self._now_ms - settings.writer_timeout_seconds * 1000 - _CLOCK_SKEW_MS:
                return "hole", None  # a writer may still be filling it
            earliest = self._earliest_ms(seq)
            if earliest + ttl_ms < self._now_ms + _CLOCK_SKEW_MS:
                # Old enough that TTL may have taken an event from here: never write into it.
                return "expired", None
            # Allocated too recently to have expired and too long ago to have a live writer.
            try:
                position = self._channel._tombstone(seq, earliest, latest, self._now_ms)
            except WriteConflict:
                return "hole", None  # a writer's transaction holds it right now
            if position is None:
                return "skip", None
            self._known[seq] = position
        if position.expired(self._now_ms / 1000):
            return "expired", position
        if position.kind is Kind.TOMBSTONE:
            return "skip", position
        return "event", position

    def _event_of(self, position: Position | None) -> Event | None:
        """The stored envelope; an item that is not one (written by hand?) is skipped, loudly."""
        if position is None:
            return None
        try:
            return position.event()
        except ValueError:  # pydantic's ValidationError, or no envelope at all
            logger.error("unreadable event item skipped", extra={"channel": self._channel.name, "seq": position.seq})
            return None

    def forward(self, after: int, window_start: int, limit: int) -> HistoryPage:
        start = after + 1
        truncated = start < window_start
        start = max(start, window_start)
        consumed = start - 1
        items: list[Event] = []
        seq = start
        while len(items) < limit and seq <= self.head:
            # One position below too: it bounds when the first missing one was allocated.
            self._fetch(seq - 1 if seq == start else seq, min(self.head, seq + (limit - len(items)) + _READ_SLACK))
            verdict, position = self.resolve(seq)
            if verdict == "hole":
                break
            event = self._event_of(position) if verdict == "event" else None
            if event is not None:
                items.append(event)
            elif verdict == "expired":
                truncated = True  # an event the reader had not seen may have been here
            consumed = seq
            seq += 1
        reached = max(consumed, 0)
        return HistoryPage(
            items=items,
            next_cursor=self._channel.cursor(reached),
            has_more=consumed < self.head,
            truncated=truncated,
            position=reached,
        )

    def _settled_below(self, first: int) -> bool:
        """No writer can still be filling a position below `first`: it was allocated too long ago."""
        if first <= 1:
            return True
        horizon = self._now_ms - self._settings.writer_timeout_seconds * 1000 - _CLOCK_SKEW_MS
        return self._latest_ms(first - 1) <= horizon

    def latest(self, window_start: int, limit: int) -> HistoryPage:
        """The last `limit` events of the resolved run of the log, and where that run ends.

        The page's position must not claim more than was examined: a position below the first
        one read may still be in flight (a write takes a few ms, and a later one can commit
        first), so the read reaches back until it meets positions no writer can still hold.
        """
        if self.head == 0:
            return HistoryPage(
                items=[], next_cursor=self._channel.cursor(0), has_more=False, truncated=False, position=0
            )
        first = max(window_start, self.head - limit + 1)
        step = _SETTLE_STEP
        while True:
            self._fetch(first - 1, self.head)
            events: list[Event] = []
            end = first - 1
            for seq in range(first, self.head + 1):
                verdict, position = self.resolve(seq)
                if verdict == "hole":
                    break
                event = self._event_of(position) if verdict == "event" else None
                if event is not None:
                    events.append(event)
                end = seq
            settled = first == window_start or self._settled_below(first)
            # Tombstones and expired events took slots: reach further back for a full page.
            full = len(events) >= limit or end < self.head
            if first == window_start or (settled and full):
                break
            first = max(window_start, first - max(limit - len(events), step) - _READ_SLACK)
            step *= 2  # a busy channel: a few reads reach back past its writers in flight
        reached = max(end, 0)
        return HistoryPage(
            items=events[-limit:],
            next_cursor=self._channel.cursor(reached),
            has_more=end < self.head,
            truncated=False,
            position=reached,
        )
