"""Batch publish: up to 100 events of one channel in a handful of DynamoDB requests.

The single path (channel.py) costs 2 or 3 requests an event. A batch of k events costs:

* one consistent `BatchGetItem` of the keys of its keyed events: keys already stored are
  answered from their record (a duplicate, or a 409) and take no position;
* one `UpdateItem` ADD of k positions for the events that will be written, in request order
  (`EventStore.allocate_many`);
* keyed events in `TransactWriteItems` of up to 50 events (100 items: each its position and its
  idempotency record, each Put conditional as the single path's) and under 4 MB, unkeyed ones
  in `BatchWriteItem` of 25.

So 50 keyed events take 3 requests, 50 unkeyed ones 3. Two events of one batch with the same
key are one event: the second is a duplicate (or a 409) of the first, and takes no position.

**No hole.** Every position allocated is filled by its event or tombstoned by this writer with
the exact allocation times, as the single path's `_abandon` does: an event whose key turned out
to be taken (a concurrent writer committed it first), one whose transaction kept conflicting or
being throttled, one BatchWriteItem left unprocessed after retries. A cancelled transaction
writes nothing ("TransactWriteItems", Amazon DynamoDB API Reference: CancellationReasons give
one reason per item), so it is sent again without the items that failed. The tombstone is
conditional and doubles as a probe: a write whose response was lost and that did commit is
found there and counted a success.

**Within the writer timeout.** BatchWriteItem takes no condition, so it may only write positions
nobody else can fill yet: readers tombstone a position only once it is older than the writer
timeout (channel.py), and the batch stops retrying at half of it and tombstones the rest
conditionally.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import clock
from .channel import PublishResult, _check_text, fingerprint_of
from .errors import IdempotencyConflict, InvalidInput, RealtimeError, StoreUnavailable
from .ids import new_ulid
from .models.items import AttributeMap, IdempotencyRecord, Kind, Position, position_item
from .store import TransactionCancelled

if TYPE_CHECKING:
    from .channel import Channel
    from .models.envelope import Event
    from .models.items import Allocation

MAX_BATCH_EVENTS = 100
# "TransactWriteItems" (Amazon DynamoDB API Reference): at most 100 actions a transaction; a
# keyed event is two (its position and its record).
EVENTS_PER_TRANSACTION = 50
# ... and at most 4 MB of items: each keyed event is stored twice (position and record). Kept
# under it with room for the attributes around the envelope.
TRANSACTION_BYTES = 3_500_000
# "BatchWriteItem" (Amazon DynamoDB API Reference): at most 25 put or delete requests a call.
ITEMS_PER_BATCH_WRITE = 25
# UnprocessedItems / UnprocessedKeys: retried with exponential backoff and full jitter, as
# "BatchWriteItem" asks ("we strongly recommend that you use an exponential backoff algorithm").
_BATCH_ATTEMPTS = 8
_BACKOFF_S = 0.02
_BACKOFF_CAP_S = 0.25
# A cancelled transaction's reasons that pass: retried after a backoff ("TransactWriteItems").
_TRANSIENT = {"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded", "RequestLimitExceeded"}
_TRANSACTION_ATTEMPTS = 10  # as the single path's _CONFLICT_ATTEMPTS
_UNAVAILABLE_ATTEMPTS = 3  # as the single path's _WRITE_ATTEMPTS: botocore already retried each
_ABSENT = ("None", "", None)

Outcome = PublishResult | RealtimeError


@dataclass(frozen=True)
class BatchItem:
    """One event of a batch, as `Channel.broadcast` takes it."""

    type: str
    data: Any
    metadata: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None
    fingerprint: str | None = None


@dataclass
class _Entry:
    index: int
    key: str | None
    fingerprint: str
    draft: Event
    allocation: Allocation | None = None
    event: Event | None = None
    item: AttributeMap | None = None


def publish_batch(channel: Channel, items: Sequence[BatchItem]) -> list[Outcome]:
    """One result per item, in order: a PublishResult, or the error that item met."""
    if not 1 <= len(items) <= MAX_BATCH_EVENTS:
        raise InvalidInput(f"a batch holds 1 to {MAX_BATCH_EVENTS} events, not {len(items)}", field="events")
    return _Batch(channel).run(items)


def _backoff(attempt: int, base: float = _BACKOFF_S, cap: float = _BACKOFF_CAP_S) -> float:
    return random.uniform(0, min(cap, base * 2**attempt))  # noqa: S311 - full jitter, not crypto


def _chunks(entries: list[_Entry], size: int) -> list[list[_Entry]]:
    return [entries[n : n + size] for n in range(0, len(entries), size)]


def _transactions(entries: list[_Entry]) -> list[list[_Entry]]:
    """Keyed events in order, at most EVENTS_PER_TRANSACTION and TRANSACTION_BYTES a transaction."""
    chunks: list[list[_Entry]] = []
    size = 0
    for entry in entries:
        cost = 2 * (len(entry.item["event"]["S"].encode()) + 512) if entry.item else 0
        if not chunks or len(chunks[-1]) >= EVENTS_PER_TRANSACTION or size + cost > TRANSACTION_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(entry)
        size += cost
    return chunks


class _Batch:
    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._store = channel._realtime.store
        self._settings = channel._realtime.settings
        self._outcomes: list[Outcome | None] = []
        # What each key of the batch maps to once known: a stored record, or our own new event.
        self._records: dict[str, IdempotencyRecord] = {}
        self._deadline = 0.0

    def run(self, items: Sequence[BatchItem]) -> list[Outcome]:
        self._outcomes = [None] * len(items)
        leaders: dict[str, _Entry] = {}
        followers: list[_Entry] = []
        writers: list[_Entry] = []
        for index, item in enumerate(items):
            try:
                entry = self._prepare(index, item)
            except RealtimeError as exc:  # refused before anything is stored, as the single path does
                self._outcomes[index] = exc
                continue
            if entry.key is None:
                writers.append(entry)
            elif entry.key in leaders:
                followers.append(entry)  # the same key earlier in the batch: never a second event
            else:
                leaders[entry.key] = entry
                writers.append(entry)

        if leaders:
            try:
                stored = self._stored_records(list(leaders))
            except StoreUnavailable as exc:
                for entry in leaders.values():
                    self._outcomes[entry.index] = exc  # nothing allocated for them: no hole
            else:
                for key, record in stored.items():
                    self._records[key] = record
                    self._outcomes[leaders[key].index] = self._replay(record, leaders[key])
            writers = [entry for entry in writers if self._outcomes[entry.index] is None]
        if writers:
            self._write(writers)

        for entry in followers:
            assert entry.key is not None  # noqa: S101 - followers are keyed
            mapped = self._records.get(entry.key)
            leader = self._outcomes[leaders[entry.key].index]
            self._outcomes[entry.index] = self._replay(mapped, entry) if mapped is not None else leader
        return [self._final(outcome) for outcome in self._outcomes]

    @staticmethod
    def _final(outcome: Outcome | None) -> Outcome:
        return outcome if outcome is not None else StoreUnavailable("the event was not written")

    def _prepare(self, index: int, item: BatchItem) -> _Entry:
        _check_text(item.type, "type", 128)
        metadata = dict(item.metadata or {})
        fingerprint = ""
        if item.idempotency_key is not None:
            _check_text(item.idempotency_key, "idempotencyKey", 256)
            fingerprint = item.fingerprint or fingerprint_of(item.type, item.data, metadata)
        draft = self._channel._draft(item.type, item.data, metadata, item.idempotency_key)
        return _Entry(index=index, key=item.idempotency_key, fingerprint=fingerprint, draft=draft)

    def _replay(self, record: IdempotencyRecord, entry: _Entry) -> Outcome:
        try:
            return self._channel._replay(record, entry.fingerprint, entry.key or "")
        except IdempotencyConflict as exc:
            return exc

    def _stored_records(self, keys: list[str]) -> dict[str, IdempotencyRecord]:
        """The live records of `keys` (an expired one counts as absent, as the single path's)."""
        found: dict[str, IdempotencyRecord] = {}
        pending = keys
        for attempt in range(_BATCH_ATTEMPTS):
            got, pending = self._store.idempotency_records(self._channel.key, pending)
            found.update(got)
            if not pending:
                break
            time.sleep(_backoff(attempt))
        else:
            raise StoreUnavailable(f"{len(pending)} idempotency keys were left unread after {_BATCH_ATTEMPTS} attempts")
        now_s = clock.now_ms() // 1000
        return {key: record for key, record in found.items() if record.expires_at > now_s}

    # --- writing --------------------------------------------------------------------------

    def _write(self, writers: list[_Entry]) -> None:
        now = clock.now_ms()
        try:
            allocations = self._store.allocate_many(self._channel.key, len(writers), now, token=new_ulid(now))
        except StoreUnavailable as exc:
            for entry in writers:
                self._outcomes[entry.index] = exc  # no position was taken
            return
        # Readers tombstone a position only once it is older than the writer timeout: stop well before.
        self._deadline = time.monotonic() + self._settings.writer_timeout_seconds / 2
        expires_at = self._channel._history_expiry(now)
        for entry, allocation in zip(writers, allocations, strict=True):
            entry.allocation = allocation
            entry.event = entry.draft.model_copy(
                update={"id": new_ulid(now), "seq": allocation.seq, "published_at": clock.iso_ms(now)}
            )
            entry.item = position_item(
                self._channel.key,
                allocation.seq,
                Kind.EVENT,
                allocation.allocated_at_ms,
                expires_at,
                entry.event.to_json(),
                prev_allocated_at_ms=allocation.prev_allocated_at_ms,
            )
        failed: list[_Entry] = []
        for chunk in _chunks([e for e in writers if e.key is None], ITEMS_PER_BATCH_WRITE):
            failed += self._write_unkeyed(chunk)
        for chunk in _transactions([e for e in writers if e.key is not None]):
            failed += self._write_keyed(chunk, now)
        for entry in failed:
            self._give_up(entry, now)

    def _succeeded(self, entry: _Entry) -> None:
        assert entry.event is not None  # noqa: S101 - set once allocated
        self._outcomes[entry.index] = PublishResult(event=entry.event, duplicate=False)
        if entry.key is not None:
            self._records[entry.key] = IdempotencyRecord(
                fingerprint=entry.fingerprint, event_json=entry.event.to_json(), expires_at=2**62
            )

    def _write_unkeyed(self, chunk: list[_Entry]) -> list[_Entry]:
        """BatchWriteItem, then its UnprocessedItems again with backoff; returns what stayed unwritten."""
        pending = {entry.item["sk"]["N"]: entry for entry in chunk if entry.item is not None}
        for attempt in range(_BATCH_ATTEMPTS):
            try:
                left = {
                    item["sk"]["N"] for item in self._store.put_positions([e.item for e in pending.values() if e.item])
                }
            except StoreUnavailable:
                left = set(pending)  # throttled or 5xx after botocore's retries: any may have landed; all again
            for seq in [seq for seq in pending if seq not in left]:
                self._succeeded(pending.pop(seq))
            if not pending:
                return []
            pause = _backoff(attempt)
            if time.monotonic() + pause > self._deadline:
                break
            time.sleep(pause)
        return list(pending.values())

    def _write_keyed(self, chunk: list[_Entry], now: int) -> list[_Entry]:
        """One transaction for the chunk; a cancelled one again without the items that failed."""
        failed: list[_Entry] = []
        live = list(chunk)
        key_expires_at = now // 1000 + self._settings.idempotency_ttl_seconds
        transient = unavailable = 0
        while live:
            if time.monotonic() > self._deadline:
                return failed + live
            entries = [(e.item, e.key, e.fingerprint, key_expires_at) for e in live if e.item and e.key]
            try:
                self._store.put_keyed_events(entries, self._channel.key, clock.now_ms() // 1000)
            except TransactionCancelled as cancelled:
                kept: list[_Entry] = []
                passing = False
                for n, entry in enumerate(live):
                    verdict = self._judge(entry, cancelled.reasons[2 * n], cancelled.reasons[2 * n + 1])
                    if verdict == "failed":
                        failed.append(entry)
                    elif verdict in {"transient", "innocent"}:
                        kept.append(entry)
                        passing = passing or verdict == "transient"
                # Only innocent items left: the ones that failed are out, send the rest at once.
                if passing or len(kept) == len(live):
                    transient += 1
                    if transient >= _TRANSACTION_ATTEMPTS:
                        return failed + kept
                    time.sleep(_backoff(transient, 0.02, 0.2))
                live = kept
            except StoreUnavailable:
                # Throttled or 5xx after botocore's retries: it may have committed. Sent again, a
                # committed one fails its conditions with our own events, which `_judge` accepts.
                unavailable += 1
                if unavailable >= _UNAVAILABLE_ATTEMPTS:
                    return failed + live
                time.sleep(_backoff(unavailable))
            else:
                for entry in live:
                    self._succeeded(entry)
                return failed
        return failed

    def _judge(self, entry: _Entry, event_reason: dict[str, Any], key_reason: dict[str, Any]) -> str:
        """One event of a cancelled transaction: done, failed, transient, or innocent (retry as is)."""
        assert entry.event is not None and entry.key is not None  # noqa: S101 - keyed and allocated
        if key_reason.get("Code") == "ConditionalCheckFailed":
            old = key_reason.get("Item")
            try:
                record = (
                    IdempotencyRecord.from_item(old)
                    if old
                    else self._store.idempotency_record(self._channel.key, entry.key)
                )
            except StoreUnavailable:
                return "failed"
            if record is None:
                return "failed"
            if record.event().id == entry.event.id:
                self._succeeded(entry)  # our own transaction committed, its response lost to a retry
                return "done"
            # A concurrent writer took the key first: answer from its record; our position is tombstoned.
            self._records[entry.key] = record
            self._outcomes[entry.index] = self._replay(record, entry)
            return "failed"
        if event_reason.get("Code") == "ConditionalCheckFailed":
            old = event_reason.get("Item")
            if old and Position.from_item(old).event_id() == entry.event.id:
                self._succeeded(entry)
                return "done"
            return "failed"  # a reader tombstoned it: the writer took longer than the writer timeout
        codes = {event_reason.get("Code"), key_reason.get("Code")}
        if codes & _TRANSIENT:
            return "transient"
        if codes <= set(_ABSENT):
            return "innocent"
        return "failed"  # ValidationError, ItemCollectionSizeLimitExceeded: this item cannot be written

    def _give_up(self, entry: _Entry, now: int) -> None:
        """Tombstone a position whose event was not written (the single path's `_abandon`)."""
        assert entry.allocation is not None and entry.event is not None  # noqa: S101
        existing = self._channel._abandon(entry.allocation, now)
        if existing is not None and existing.event_id() == entry.event.id:
            self._succeeded(entry)  # it had landed after all (a lost response)
            return
        if self._outcomes[entry.index] is None:
            self._outcomes[entry.index] = StoreUnavailable(
                f"the event could not be written after retries; its position {entry.allocation.seq} was given up"
            )


def feed_event(feed_id: str, *, event_id: str, type: str, payload: Any, source: str | None = None) -> BatchItem:
    """A producer's event as `Feeds.publish_event` stores it: the same data, key and fingerprint,
    so an event sent alone and the same event in a batch are one event."""
    from .feeds import DEFAULT_SOURCE

    data = {"feedId": feed_id, "eventId": event_id, "payload": payload, "receivedAt": clock.iso_ms(clock.now_ms())}
    return BatchItem(
        type=type,
        data=data,
        metadata={"source": source or DEFAULT_SOURCE},
        idempotency_key=event_id,
        # A retry carries a new receivedAt: the promise covers type and payload.
        fingerprint=fingerprint_of(type, payload),
    )
