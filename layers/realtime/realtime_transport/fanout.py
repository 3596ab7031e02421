"""Fan-out: newly committed events, from the events table's stream to every subscribed connection.

One stream batch is worked out whole before Powertools' `BatchProcessor` sees it:

1. keep only INSERTs of `kind=event` items (the template's filter does this on AWS too);
2. group them by channel, in `seq` order (positions can commit out of order by a few ms);
3. read each channel's subscribers once, every page of every bucket of the `by-channel` index,
   with the expiry of the token each subscription was made under (`tokenExp`, projected into
   the index), except the buckets this warm instance holds under their current version
   (`shards.SubscriberCache`: the channel's 16 bucket versions in one consistent BatchGetItem).
   A large channel (its buckets' approximate counts pass `shard_size`) is not read here at all:
   each stale bucket, or connectionId range of a bucket past `shard_size`, goes to a delivery
   worker as a read-and-deliver request (`workers.ReadRequest`), which reads, checks tokens as
   below, delivers, and answers the entries it read, cached here for the next batch;
4. a subscriber whose index entry says its token has expired (or says nothing) is checked
   against its connection item (one consistent GetItem): the entry is a hint, an `auth` may
   have renewed the token since. Still expired: it gets no events, but an `error` frame
   (`token_expired`) and then `DELETE @connections/{id}` (API Gateway then runs `$disconnect`,
   which cleans up; if that never comes, the next batch finds it again and the DELETE answers
   410, so it is forgotten as below). A connection item that cannot be read: no delivery, no
   close (fail closed; its client catches up once it can);
5. deliver every other connection its frames in order, all connections at once (`Pusher.send_many`).
   A channel's events bound for one connection travel together: `events` frames of at most
   `limits.FRAME_BYTES` (one event alone: an `event` frame), the cursor of each the last
   event's, as catch-up packs them. A plan of more than `shard_size` connections is cut into
   shards, each delivered by a delivery worker invoked synchronously, all at once; this
   invocation waits for every one (`workers.py` says why, and how a failed shard is retried);
6. connections that answered 410 leave their rooms (`connection_gone`: reason `disconnected`,
   so a member whose only socket vanished enters its grace period), then are deleted with
   their subscriptions, all at once.

Only a failure to read a channel's subscribers fails that channel's records (they land in
`batchItemFailures` and come back); a connection that cannot be reached is given up alone
and never fails the batch, so nobody else gets the events twice because of it. Nor does a
failure to leave a gone connection's rooms: that connection is then kept (not deleted), so it
answers 410 again next time and leaves then, or its room leases run out and the presence
sweeper takes it out; deleting it now would strand its memberships' members.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from aws_lambda_powertools.metrics import MetricUnit

from .clock import now_ms
from .connections import LEGACY_UNBUCKETED, ChannelVersions, Connection, ConnectionStore, Subscriber, index_key
from .cursor import CursorCodec
from .delivery import CloseReport, DeliveryReport, Pusher
from .errors import RealtimeError, StoreUnavailable
from .limits import FRAME_BYTES
from .models.frames import event_frame, packed_frames
from .models.stream import StreamRecord
from .observability import logger, metrics
from .secrets import signing_secret
from .shards import (
    DEFAULT_SHARD_SIZE,
    LEGACY_UNIT,
    SubscriberCache,
    UnitVersion,
    id_ranges,
    pack,
    read_units,
    shards,
    unit_version,
)
from .workers import (
    EXPIRED_FRAME,
    MAX_PAYLOAD_BYTES,
    LambdaInvoker,
    ReadRequest,
    ReadUnit,
    ShardFailed,
    ShardInvoker,
    ShardRequest,
    build_requests,
    token_expired,
)

if TYPE_CHECKING:
    from .settings import Settings

_T = TypeVar("_T")
# Of the invocation's remaining time, what delivery may use: the rest deletes gone
# connections and returns the answer.
DELIVERY_SHARE = 0.8
_R = TypeVar("_R")
# DeliveryWorkerFunction's Timeout in template.yaml (a test holds them equal): the longest one
# worker invocation can take. A failed shard is retried only while that much time is left before
# the delivery deadline, so a worker that hangs twice can never run the fan-out past its own
# Timeout (the whole stream batch would come again, and everyone get it twice).
WORKER_TIMEOUT_SECONDS = 30.0
# Above the worker's Timeout: Lambda itself reports a hung worker (Sandbox.Timedout) before the
# coordinator's client gives up on the answer.
WORKER_READ_TIMEOUT_SECONDS = WORKER_TIMEOUT_SECONDS + 5


class SubscribersUnavailable(RealtimeError):
    """The channel's subscribers could not be read: its records must come back later."""

    code = "unavailable"


class Deliverer(Protocol):
    def send_many(self, plan: Mapping[str, Sequence[bytes]], *, budget_s: float | None = None) -> DeliveryReport: ...

    def disconnect_many(
        self, farewells: Mapping[str, bytes | None], *, budget_s: float | None = None
    ) -> CloseReport: ...


__all__ = ["EXPIRED_FRAME", "Fanout", "FanoutResult", "token_expired"]


class GonePresence(Protocol):
    """What the fan-out needs of presence (`rooms.presence.PresenceRegistry`)."""

    def connection_gone(self, connection_id: str) -> list[str]: ...


@dataclass
class ChannelBatch:
    """One channel's events in this batch, in seq order, and who was subscribed."""

    key: str
    name: str
    records: list[StreamRecord]
    subscribers: list[str] = field(default_factory=list)  # those delivered to (valid tokens)
    lookup_error: str | None = None
    entries: list[Subscriber] = field(default_factory=list)  # the index's entries, hints included
    # Stale units a worker reads (a large channel), their versions, and when their read began.
    pending: list[_Pending] = field(default_factory=list)
    versions: dict[int, UnitVersion] = field(default_factory=dict)
    read_from_ms: int = 0


@dataclass
class FanoutResult:
    records: int
    channels: dict[str, ChannelBatch]
    report: DeliveryReport
    deleted: list[str] = field(default_factory=list)
    # gone connection -> the rooms it left (`disconnected`); one whose leave failed is not deleted
    left_rooms: dict[str, list[str]] = field(default_factory=dict)
    presence_failures: list[str] = field(default_factory=list)
    # Token expiry: confirmed expired (not delivered to, closed), index hints found stale (a renewed
    # token: delivered to), connection items unreadable (not delivered to, not closed).
    expired: list[str] = field(default_factory=list)
    renewed: list[str] = field(default_factory=list)
    unconfirmed: list[str] = field(default_factory=list)
    closing: CloseReport = field(default_factory=CloseReport)
    shards: _ShardStats = field(default_factory=lambda: _ShardStats())

    @property
    def failed_channels(self) -> set[str]:
        return {key for key, batch in self.channels.items() if batch.lookup_error is not None}

    def check(self, record: Any) -> None:
        """A `BatchProcessor` record handler: raise only for records of a channel whose subscribers were unreadable."""
        parsed = StreamRecord.from_record(record)
        if not parsed.deliverable:
            return
        batch = self.channels.get(parsed.channel_key or "")
        if batch is not None and batch.lookup_error is not None:
            raise SubscribersUnavailable(f"subscribers of {batch.key}: {batch.lookup_error}")


class Fanout:
    def __init__(
        self,
        connections: ConnectionStore,
        pusher: Deliverer,
        *,
        page_size: int = 1000,
        store_workers: int = 8,
        cursors: CursorCodec | None = None,
        presence: GonePresence | None = None,
        clock: Callable[[], float] = time.time,
        invoker: ShardInvoker | None = None,
        shard_size: int = DEFAULT_SHARD_SIZE,
        cache: SubscriberCache | None = None,
        max_parallel_shards: int = 128,
    ) -> None:
        self.connections = connections
        # Epoch seconds, against which tokens' expiry is judged (tests move it).
        self.clock = clock
        self.pusher = pusher
        # A gone connection leaves its rooms first (None: no rooms, as in tests of delivery alone).
        self.presence = presence
        # Signs each live frame's cursor (one HMAC per event, not per connection).
        self.cursors = cursors
        self._page_size = page_size
        self._store_workers = store_workers
        self._executor: ThreadPoolExecutor | None = None
        # Delivery workers for plans of more than `shard_size` connections (None: never shard).
        self.invoker = invoker
        self.shard_size = shard_size
        self.cache = cache
        self._max_parallel_shards = max_parallel_shards
        self.max_payload_bytes = MAX_PAYLOAD_BYTES  # of one worker request (Lambda takes 6 MB)
        self._shard_executor: ThreadPoolExecutor | None = None

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Fanout:
        from .clients import dynamodb
        from .realtime import Realtime
        from .rooms.presence import PresenceRegistry
        from .settings import get_settings

        settings = settings or get_settings()
        secret = signing_secret(settings)
        return cls(
            ConnectionStore(dynamodb(), settings.connections_table_name),
            Pusher.from_settings(settings),
            cursors=CursorCodec(secret),
            presence=PresenceRegistry(Realtime(settings=settings, secret=secret)),
            invoker=(
                LambdaInvoker(settings.delivery_worker_function, read_timeout_s=WORKER_READ_TIMEOUT_SECONDS)
                if settings.delivery_worker_function
                else None
            ),
            shard_size=settings.fanout_shard_size,
            cache=SubscriberCache(trust_after_ms=int(settings.subscriber_cache_settle_seconds * 1000)),
        )

    def _frames(self, batch: ChannelBatch) -> list[bytes]:
        """The channel's frames for this batch: its events packed as catch-up packs them."""
        cursors = self.cursors
        if cursors is None:  # (tests of delivery alone: no cursors, one frame per event)
            return [event_frame(batch.name, record.event_json or "") for record in batch.records]
        events = [(record.seq or 0, record.event_json or "") for record in batch.records]
        return [
            frame
            for frame, _ in packed_frames(batch.name, events, lambda seq: cursors.encode(batch.key, seq), FRAME_BYTES)
        ]

    def deliver(self, records: Iterable[Any], *, remaining_ms: int | None = None) -> FanoutResult:
        """Deliver a stream batch (Powertools `DynamoDBRecord`s or raw record dicts).

        `remaining_ms` is the invocation's time left: delivery stops at DELIVERY_SHARE of it
        (what is left unsent is reported failed, its clients fill the gap from history), so
        an unreachable endpoint cannot time the invocation out and make everyone's events
        come again.
        """
        deadline = None if remaining_ms is None else time.monotonic() + remaining_ms / 1000 * DELIVERY_SHARE
        parsed = [StreamRecord.from_record(record) for record in records]
        channels = _by_channel(parsed)
        for batch, outcome in zip(channels.values(), self._map(self._subscribers, channels.values()), strict=True):
            if isinstance(outcome, StoreUnavailable):
                batch.lookup_error = outcome.message
            else:
                batch.entries = outcome
        expired, renewed, unconfirmed = self._check_tokens(channels.values())
        excluded = set(expired) | set(unconfirmed)
        for batch in channels.values():
            batch.subscribers = [e.connection_id for e in batch.entries if e.connection_id not in excluded]

        frames = {key: self._frames(batch) for key, batch in channels.items() if batch.subscribers or batch.pending}
        plan: dict[str, list[bytes]] = {}
        for batch in channels.values():
            if not batch.subscribers:
                continue
            for connection_id in batch.subscribers:
                held = plan.get(connection_id)
                # Shared list for the common case of one channel per connection; a new one when merging.
                plan[connection_id] = frames[batch.key] if held is None else [*held, *frames[batch.key]]
        reads = [
            (batch, [batch.pending[i] for i in group])
            for batch in channels.values()
            if batch.pending
            for group in pack([p.estimate for p in batch.pending], self.shard_size)
        ]
        report, shard_stats, read_outcomes = self._send(plan, reads, frames, deadline)
        worker_expired, worker_renewed, worker_unconfirmed, closing = self._absorb(read_outcomes)
        expired, renewed = expired + worker_expired, renewed + worker_renewed
        unconfirmed = unconfirmed + worker_unconfirmed
        delivered_at = now_ms()

        result = FanoutResult(
            records=len(parsed),
            channels=channels,
            report=report,
            expired=expired,
            renewed=renewed,
            unconfirmed=unconfirmed,
            shards=shard_stats,
        )
        mine = [c for c in expired if c not in set(worker_expired)]  # the workers closed theirs
        if mine:
            budget = None if deadline is None else max(0.0, deadline - time.monotonic())
            result.closing = self.pusher.disconnect_many(dict.fromkeys(mine, EXPIRED_FRAME), budget_s=budget)
        result.closing.closed.extend(closing.closed)
        result.closing.failed.extend(closing.failed)
        result.closing.errors.update(closing.errors)
        gone = [*report.gone, *result.closing.gone]
        for connection_id, forgotten in zip(gone, self._map(self._forget, gone), strict=True):
            if isinstance(forgotten, _PresenceFailed):
                result.presence_failures.append(connection_id)
            elif isinstance(forgotten, list):
                result.deleted.append(connection_id)
                if forgotten:
                    result.left_rooms[connection_id] = forgotten
        if self.cache is not None:
            self.cache.drop_connections(result.deleted)
        self._record(result, delivered_at)
        return result

    # --- sharded delivery ----------------------------------------------------------------

    def _send(
        self,
        plan: Mapping[str, Sequence[bytes]],
        reads: list[tuple[ChannelBatch, list[_Pending]]],
        frames: Mapping[str, list[bytes]],
        deadline: float | None,
    ) -> tuple[DeliveryReport, _ShardStats, list[tuple[ChannelBatch, list[_Pending], _ShardOutcome]]]:
        """Everything at once: explicit shards, read-and-deliver requests, and what this invocation
        delivers itself; it waits for all (the order across batches rests on it)."""
        started = time.monotonic()
        invoker = self.invoker
        sharded = bool(plan) and invoker is not None and len(plan) > self.shard_size
        stats = _ShardStats()
        shard_jobs: list[Future[_ShardOutcome]] = []
        read_jobs: list[tuple[ChannelBatch, list[_Pending], Future[_ShardOutcome]]] = []
        if invoker is not None and (sharded or reads):
            if self._shard_executor is None:
                self._shard_executor = ThreadPoolExecutor(
                    max_workers=self._max_parallel_shards, thread_name_prefix="fanout-shard"
                )
            executor = self._shard_executor
            if sharded:
                cut = shards(list(plan), self.shard_size)
                stats.shards = len(cut)
                shard_jobs = [
                    executor.submit(self._run_shard, invoker, {c: plan[c] for c in ids}, deadline) for ids in cut
                ]
            for batch, units in reads:
                job = executor.submit(self._run_read, invoker, units, frames[batch.key], deadline)
                read_jobs.append((batch, units, job))
            stats.reads = len(read_jobs)
        report = DeliveryReport()
        if plan and not sharded:
            own = (
                self.pusher.send_many(plan)  # (simple test doubles take just the plan)
                if deadline is None
                else self.pusher.send_many(plan, budget_s=max(0.0, deadline - time.monotonic()))
            )
            _merge_report(report, own)
        outcomes = [job.result() for job in shard_jobs]
        read_outcomes = [(batch, units, job.result()) for batch, units, job in read_jobs]
        for outcome in [*outcomes, *(o for _, _, o in read_outcomes)]:
            _merge_report(report, outcome.as_report())
            stats.invocations += outcome.invocations
            stats.retried += outcome.retried
            stats.given_up += outcome.given_up
        report.elapsed_ms = (time.monotonic() - started) * 1000
        return report, stats, read_outcomes

    def _absorb(
        self, read_outcomes: list[tuple[ChannelBatch, list[_Pending], _ShardOutcome]]
    ) -> tuple[list[str], list[str], list[str], CloseReport]:
        """What the read-and-deliver workers found: their channels' entries (cached per unit when
        every range of the unit came back whole), token decisions, closes."""
        expired: list[str] = []
        renewed: list[str] = []
        unconfirmed: list[str] = []
        closing = CloseReport()
        by_unit: dict[tuple[str, int], list[list[Subscriber] | None]] = {}
        batches: dict[str, ChannelBatch] = {}
        for batch, units, outcome in read_outcomes:
            batches[batch.key] = batch
            expired.extend(outcome.expired)
            renewed.extend(outcome.renewed)
            unconfirmed.extend(outcome.unconfirmed)
            closing.closed.extend(outcome.closed)
            closing.failed.extend(outcome.close_failed)
            closing.errors.update(outcome.close_failed)
            read: list[list[Subscriber] | None] = (
                list(outcome.entries) if outcome.entries is not None else [None] * len(units)
            )
            for pending, entries in zip(units, read, strict=True):
                by_unit.setdefault((batch.key, pending.unit), []).append(entries)
            excluded = set(outcome.expired) | set(outcome.unconfirmed)
            found = _unique([e for e in read if e is not None])
            batch.entries.extend(found)
            batch.subscribers.extend(e.connection_id for e in found if e.connection_id not in excluded)
        if self.cache is not None:
            for (key, unit), parts in by_unit.items():
                batch = batches[key]
                expected = sum(1 for p in batch.pending if p.unit == unit)
                if len(parts) == expected and all(part is not None for part in parts):
                    whole = [e for part in parts if part is not None for e in part]
                    self.cache.put(key, unit, batch.versions[unit], batch.read_from_ms, whole)
        return expired, renewed, unconfirmed, closing

    def _run_read(
        self, invoker: ShardInvoker, units: list[_Pending], frames: list[bytes], deadline: float | None
    ) -> _ShardOutcome:
        """One read-and-deliver request, retried once for its units only; frames past the payload
        limit follow as explicit shards to the connections it found, in order."""
        outcome = _ShardOutcome()
        deadline_ms = None if deadline is None else now_ms() + int((deadline - time.monotonic()) * 1000)
        chunks = _frame_chunks(frames, self.max_payload_bytes - 1024 - sum(len(u.read.key) + 64 for u in units))
        request = ReadRequest(
            units=[p.read for p in units],
            frames=[f.decode() for f in chunks[0]],
            deadline_ms=deadline_ms,
            page_size=self._page_size,
        )
        result, error = _invoke_retrying_once(
            partial(invoker.invoke_read, request),
            outcome,
            deadline,
            "a read-and-deliver worker failed",
            {"units": [u.read.model_dump() for u in units]},
        )
        if result is None:
            # Its connections are unknown here: given up as a shard is (their clients catch up by the heads).
            outcome.given_up += 1
            logger.error(
                "a read-and-deliver shard was given up",
                extra={"units": [u.read.model_dump() for u in units], "error": error[:500]},
            )
            return outcome
        outcome.delivered += result.delivered
        outcome.gone.extend(result.gone)
        outcome.failed.update(result.failed)
        outcome.skipped += result.skipped
        outcome.requests += result.requests
        outcome.retries += result.retries
        outcome.throttled += result.throttled
        outcome.expired, outcome.renewed, outcome.unconfirmed = result.expired, result.renewed, result.unconfirmed
        outcome.closed, outcome.close_failed = result.closed, result.close_failed
        outcome.entries = (
            None if result.entries is None else [[Subscriber(c, exp) for c, exp in unit] for unit in result.entries]
        )
        if len(chunks) > 1:
            if outcome.entries is None:
                logger.error("frames past the payload limit not sent: the worker read too many to name")
                return outcome
            dropped = set(result.gone) | set(result.failed) | set(result.expired) | set(result.unconfirmed)
            alive = [e.connection_id for e in _unique(outcome.entries) if e.connection_id not in dropped]
            for chunk in chunks[1:]:
                if not alive:
                    break
                for part in shards(alive, self.shard_size):
                    more = self._run_shard(invoker, dict.fromkeys(part, chunk), deadline)
                    _merge_outcome(outcome, more)
                gone = set(outcome.gone) | set(outcome.failed)
                alive = [c for c in alive if c not in gone]
        return outcome

    def _run_shard(
        self, invoker: ShardInvoker, plan: dict[str, Sequence[bytes]], deadline: float | None
    ) -> _ShardOutcome:
        """One shard: its request parts in order, each retried once if its invocation fails.

        A part that fails twice gives up the shard's remaining connections (reported failed:
        their clients fill the gap from history); the rest of the batch is not affected."""
        outcome = _ShardOutcome()
        deadline_ms = None if deadline is None else now_ms() + int((deadline - time.monotonic()) * 1000)
        dropped: set[str] = set()
        for part in build_requests(plan, deadline_ms, self.max_payload_bytes):
            request = _without(part, dropped)
            if request is None:
                break
            result, error = _invoke_retrying_once(
                partial(invoker.invoke, request), outcome, deadline, "a delivery worker failed", {}
            )
            if result is None:
                outcome.given_up += 1
                remaining = [c for group in request.groups for c in group.connections]
                outcome.failed.update(dict.fromkeys(remaining, f"shard failed: {error[:200]}"))
                break
            outcome.delivered += result.delivered
            outcome.gone.extend(result.gone)
            outcome.failed.update(result.failed)
            outcome.skipped += result.skipped
            outcome.requests += result.requests
            outcome.retries += result.retries
            outcome.throttled += result.throttled
            dropped.update(result.gone)
            dropped.update(result.failed)
        return outcome

    # --- steps ------------------------------------------------------------------------

    def _subscribers(self, batch: ChannelBatch) -> list[Subscriber] | StoreUnavailable:
        """The channel's entries known here: cached units, and stale ones read here; a large
        channel's stale units are left in `batch.pending`, for the workers to read."""
        versions: ChannelVersions | None = None
        if self.cache is not None:
            try:
                versions = self.connections.channel_versions(batch.key)
            except StoreUnavailable as exc:  # the index is still the truth: read it, cache nothing
                logger.warning("channel versions unreadable", extra={"channel": batch.key, "error": exc.message})
        read_from = now_ms()  # before any Query: what it reads is at least this fresh
        if self.cache is None or versions is None:
            try:
                return _unique(self.connections.keys_entries(_all_keys(batch.key), self._page_size))
            except StoreUnavailable as exc:
                return exc
        known: list[list[Subscriber]] = []
        stale: list[int] = []
        for unit in read_units(LEGACY_UNBUCKETED):
            version = batch.versions[unit] = unit_version(versions, unit)
            cached = self.cache.get(batch.key, unit, version)
            if cached is None:
                stale.append(unit)
            else:
                known.append(cached)
        batch.read_from_ms = read_from
        if stale and self.invoker is not None and versions.subscribers > self.shard_size:
            batch.pending = self._read_plan(batch.key, stale, versions)  # read by the workers
        elif stale:
            try:
                read = self.connections.keys_entries([index_key(batch.key, u) for u in stale], self._page_size)
            except StoreUnavailable as exc:
                return exc
            for unit, entries in zip(stale, read, strict=True):
                self.cache.put(batch.key, unit, batch.versions[unit], read_from, entries)
            known.extend(read)
        return _unique(known)

    def _read_plan(self, channel_key: str, stale: list[int], versions: ChannelVersions) -> list[_Pending]:
        """A stale unit per worker request, in connectionId ranges past `shard_size` (its count's)."""
        pending: list[_Pending] = []
        for unit in stale:
            estimate = 0 if unit == LEGACY_UNIT else versions.buckets[unit].subscribers
            parts = -(-estimate // self.shard_size) if estimate > self.shard_size else 1
            for lo, hi in id_ranges(parts):
                read = ReadUnit(key=index_key(channel_key, unit), lo=lo, hi=hi)
                pending.append(_Pending(unit, read, estimate // parts))
        return pending

    def _check_tokens(self, batches: Iterable[ChannelBatch]) -> tuple[list[str], list[str], list[str]]:
        """(expired, renewed, unconfirmed) among the subscribers whose index entry says their
        token has run out, or says nothing: each checked once against its connection item."""
        now = self.clock()
        suspects: dict[str, None] = {}
        for batch in batches:
            for entry in batch.entries:
                if entry.token_exp is None or token_expired(entry.token_exp, now):
                    suspects.setdefault(entry.connection_id)
        expired: list[str] = []
        renewed: list[str] = []
        unconfirmed: list[str] = []
        for connection_id, found in zip(suspects, self._map(self._connection, suspects), strict=True):
            if isinstance(found, StoreUnavailable):
                unconfirmed.append(connection_id)
            elif found is None or token_expired(found.token_expires_at, now):
                # No connection item: nothing could ever be authorised on it again; close it too.
                expired.append(connection_id)
            else:
                renewed.append(connection_id)
                if self.cache is not None:
                    self.cache.renew_hint(connection_id, found.token_expires_at)
        if unconfirmed:
            logger.warning("token expiry not confirmed: not delivered", extra={"connections": unconfirmed[:10]})
        return expired, renewed, unconfirmed

    def _connection(self, connection_id: str) -> Connection | None | StoreUnavailable:
        try:
            return self.connections.connection(connection_id)
        except StoreUnavailable as exc:
            return exc

    def _forget(self, connection_id: str) -> list[str] | _PresenceFailed | StoreUnavailable:
        """Leave the gone connection's rooms, then delete it: the rooms it left, or what failed."""
        rooms: list[str] = []
        if self.presence is not None:
            try:
                rooms = self.presence.connection_gone(connection_id)
            except Exception as exc:  # presence must never fail delivery's batch
                # Kept, not deleted: its memberships stay, so a later 410 or the sweeper ends them.
                logger.warning(
                    "a gone connection could not leave its rooms",
                    extra={"connection_id": connection_id, "error": str(exc)},
                )
                return _PresenceFailed(str(exc))
        try:
            self.connections.delete_connection(connection_id)
        except StoreUnavailable as exc:
            # It will answer 410 again next time and be deleted then; the batch is fine.
            logger.warning(
                "could not delete a gone connection", extra={"connection_id": connection_id, "error": str(exc)}
            )
            return exc
        return rooms

    def _map(self, function: Callable[[_T], _R], items: Iterable[_T]) -> list[_R]:
        """Table reads and deletes of a batch side by side (boto3 clients are thread-safe)."""
        work = list(items)
        if len(work) <= 1:
            return [function(item) for item in work]
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self._store_workers, thread_name_prefix="fanout-store")
        return list(self._executor.map(function, work))

    def _record(self, result: FanoutResult, delivered_at: int) -> None:
        report = result.report
        metrics.add_metric(name="Deliveries", unit=MetricUnit.Count, value=report.delivered)
        metrics.add_metric(name="DeliveryFailures", unit=MetricUnit.Count, value=len(report.failed))
        metrics.add_metric(name="GoneConnections", unit=MetricUnit.Count, value=len(report.gone))
        if result.expired:
            metrics.add_metric(name="ExpiredTokenConnections", unit=MetricUnit.Count, value=len(result.expired))
        if result.unconfirmed:
            metrics.add_metric(name="TokenChecksFailed", unit=MetricUnit.Count, value=len(result.unconfirmed))
        if result.presence_failures:
            metrics.add_metric(name="GonePresenceFailures", unit=MetricUnit.Count, value=len(result.presence_failures))
        if result.failed_channels:
            metrics.add_metric(
                name="SubscriberLookupFailures", unit=MetricUnit.Count, value=len(result.failed_channels)
            )
        if result.shards.shards or result.shards.reads:
            metrics.add_metric(
                name="DeliveryShards", unit=MetricUnit.Count, value=result.shards.shards + result.shards.reads
            )
            metrics.add_metric(name="ReadShards", unit=MetricUnit.Count, value=result.shards.reads)
            metrics.add_metric(name="ShardRetries", unit=MetricUnit.Count, value=result.shards.retried)
            metrics.add_metric(name="ShardFailures", unit=MetricUnit.Count, value=result.shards.given_up)
        for batch in result.channels.values():
            if not batch.subscribers:
                continue
            for record in batch.records:
                published = record.published_at_ms()
                if published is not None:
                    metrics.add_metric(
                        name="FanoutLatency", unit=MetricUnit.Milliseconds, value=max(0, delivered_at - published)
                    )
        summary: dict[str, Any] = {
            "batch_size": result.records,
            "events": sum(len(batch.records) for batch in result.channels.values()),
            "channels": {
                key: {"events": len(batch.records), "subscribers": len(batch.subscribers)}
                | ({"lookup_error": batch.lookup_error} if batch.lookup_error else {})
                for key, batch in result.channels.items()
            },
            "delivered": report.delivered,
            "gone": len(report.gone),
            "expired": len(result.expired),
            "renewed": len(result.renewed),
            "unconfirmed": len(result.unconfirmed),
            "closed": len(result.closing.closed),
            "rooms_left": sum(len(rooms) for rooms in result.left_rooms.values()),
            "failed": len(report.failed),
            "retries": report.retries,
            "delivery_ms": round(report.elapsed_ms, 1),
        }
        if result.shards.shards or result.shards.reads:
            summary["shards"] = {
                "shards": result.shards.shards,
                "reads": result.shards.reads,
                "invocations": result.shards.invocations,
                "retried": result.shards.retried,
                "given_up": result.shards.given_up,
            }
        if result.closing.errors:
            summary["close_errors"] = dict(list(result.closing.errors.items())[:10])
        if report.errors:
            summary["errors"] = dict(list(report.errors.items())[:10])  # a sample: the reasons repeat
        if result.shards.given_up:
            logger.error("fanout batch: delivery shards given up", extra=summary)
        elif result.failed_channels:
            logger.error("fanout batch: subscribers unreadable", extra=summary)
        else:
            logger.info("fanout batch", extra=summary)


@dataclass
class _ShardStats:
    shards: int = 0  # shards the plan was cut into (0: delivered by this invocation alone)
    invocations: int = 0  # worker invocations, retries included
    retried: int = 0  # retries after a failed invocation
    given_up: int = 0  # shards (or parts) that failed twice: their connections reported failed
    reads: int = 0  # read-and-deliver requests (a large channel's stale buckets or ranges)


@dataclass
class _ShardOutcome:
    delivered: int = 0
    gone: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: int = 0
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    invocations: int = 0
    retried: int = 0
    given_up: int = 0
    # A read-and-deliver request's: the entries per unit (None: not known), its token decisions.
    entries: list[list[Subscriber]] | None = None
    expired: list[str] = field(default_factory=list)
    renewed: list[str] = field(default_factory=list)
    unconfirmed: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    close_failed: dict[str, str] = field(default_factory=dict)

    def as_report(self) -> DeliveryReport:
        """The delivery part, as the Pusher reports its own."""
        return DeliveryReport(
            delivered=self.delivered,
            gone=list(self.gone),
            failed=list(self.failed),
            skipped=self.skipped,
            requests=self.requests,
            retries=self.retries,
            throttled=self.throttled,
            errors=dict(self.failed),
        )


@dataclass(frozen=True)
class _Pending:
    """A stale unit (bucket, or a connectionId range of one) that a worker reads and delivers."""

    unit: int  # bucket, or shards.LEGACY_UNIT
    read: ReadUnit
    estimate: int  # its approximate subscribers (the bucket's count, split evenly)


def _unique(pages: Iterable[Iterable[Subscriber]]) -> list[Subscriber]:
    """Entries once each (a subscription under both schemes is one subscription)."""
    seen: dict[str, Subscriber] = {}
    for page in pages:
        for entry in page:
            seen.setdefault(entry.connection_id, entry)
    return list(seen.values())


def _all_keys(channel_key: str) -> list[str]:
    return [index_key(channel_key, unit) for unit in read_units(LEGACY_UNBUCKETED)]


def _frame_chunks(frames: list[bytes], budget: int) -> list[list[bytes]]:
    """Consecutive runs of frames whose JSON fits `budget` (at least one frame each)."""
    chunks: list[list[bytes]] = [[]]
    size = 0
    for frame in frames:
        cost = len(json.dumps(frame.decode())) + 1
        if chunks[-1] and size + cost > budget:
            chunks.append([])
            size = 0
        chunks[-1].append(frame)
        size += cost
    return chunks


def _invoke_retrying_once(
    invoke: Callable[[], _T], outcome: _ShardOutcome, deadline: float | None, failure: str, extra: dict[str, Any]
) -> tuple[_T | None, str]:
    """A worker invocation, retried once if it fails and a whole worker run still fits before the
    deadline: (its answer, or None when given up; the last error)."""
    error = ""
    for attempt in range(2):
        if attempt and not _time_to_retry(deadline):
            break  # no time left for a whole worker run: given up by the caller
        outcome.invocations += 1
        outcome.retried += attempt
        try:
            return invoke(), error
        except ShardFailed as exc:
            error = exc.message
            logger.warning(failure, extra={**extra, "attempt": attempt + 1, "error": error[:500]})
    return None, error


def _time_to_retry(deadline: float | None) -> bool:
    """Whether a retried worker, however long it runs, still ends before the delivery deadline."""
    return deadline is None or deadline - time.monotonic() >= WORKER_TIMEOUT_SECONDS


def _merge_report(into: DeliveryReport, report: DeliveryReport) -> None:
    into.delivered += report.delivered
    into.gone.extend(report.gone)
    into.failed.extend(report.failed)
    into.errors.update(report.errors)
    for name in ("skipped", "requests", "retries", "throttled"):
        setattr(into, name, getattr(into, name) + getattr(report, name))


def _merge_outcome(into: _ShardOutcome, more: _ShardOutcome) -> None:
    into.delivered += more.delivered
    into.gone.extend(more.gone)
    into.failed.update(more.failed)
    for name in ("skipped", "requests", "retries", "throttled", "invocations", "retried", "given_up"):
        setattr(into, name, getattr(into, name) + getattr(more, name))


def _without(request: ShardRequest, dropped: set[str]) -> ShardRequest | None:
    """A later part of a shard without the connections an earlier part found gone or failed."""
    if not dropped:
        return request
    groups = [
        group.model_copy(update={"connections": [c for c in group.connections if c not in dropped]})
        for group in request.groups
    ]
    groups = [group for group in groups if group.connections]
    return request.model_copy(update={"groups": groups}) if groups else None


@dataclass(frozen=True)
class _PresenceFailed:
    """`connection_gone` raised: the connection was kept."""

    error: str


def _by_channel(records: Iterable[StreamRecord]) -> dict[str, ChannelBatch]:
    """Deliverable records grouped by channel key, each channel's in seq order, repeats dropped.

    The envelope is spliced into frames as stored, so an item that does not hold a valid one
    (written to the table by hand?) is never sent: clients would fail on it. The parse is the
    one the latency metric needs anyway.
    """
    by_key: dict[str, dict[int, StreamRecord]] = {}
    for record in records:
        if not (record.deliverable and record.channel_key is not None and record.seq is not None):
            continue
        if not record.valid_envelope:
            logger.error("undeliverable event item skipped", extra={"channel": record.channel_key, "seq": record.seq})
            metrics.add_metric(name="UndeliverableRecords", unit=MetricUnit.Count, value=1)
            continue
        by_key.setdefault(record.channel_key, {}).setdefault(record.seq, record)
    return {
        key: ChannelBatch(key=key, name=next(iter(seqs.values())).channel, records=[seqs[s] for s in sorted(seqs)])
        for key, seqs in by_key.items()
    }
