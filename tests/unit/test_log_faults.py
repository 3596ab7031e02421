"""The log under what DynamoDB really does: TTL deletes, failed and conflicting writes, writes in flight.

Each test here failed before its fix (issue: "The promises hold on DynamoDB, API Gateway and
Lambda as they really behave", findings 1, 3 and 4).
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest

from realtime_transport import Realtime, clock
from realtime_transport.errors import StoreUnavailable
from realtime_transport.models.items import Kind
from realtime_transport.store import EventStore, WriteConflict

HOUR_MS = 3600 * 1000


def stored_kinds(aws: Any) -> Counter[str]:
    items = aws.scan(TableName="test-events")["Items"]
    return Counter(item["kind"]["S"] for item in items)


def ttl_delete(aws: Any, channel: Any, *seqs: int) -> None:
    """What DynamoDB's TTL does to an expired item, days late: it deletes it."""
    for seq in seqs:
        aws.delete_item(TableName="test-events", Key={"pk": {"S": channel.key}, "sk": {"N": str(seq)}})


class Clock:
    """The library's clock, moved by hand."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = clock.now_ms()
        monkeypatch.setattr(clock, "now_ms", lambda: self.now)

    def advance(self, ms: int) -> None:
        self.now += ms


# --- 1. a TTL deletion is a loss, never a hole nor a silent gap --------------------------------


def test_events_deleted_by_ttl_are_reported_lost_at_once_and_never_tombstoned(
    realtime: Realtime, aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = realtime.channel("feed_quiet")
    now = Clock(monkeypatch)
    for n in range(3):
        channel.broadcast(type="t", data=n)
    now.advance(realtime.settings.history_ttl_seconds * 1000 + 2 * HOUR_MS)
    ttl_delete(aws, channel, 1, 2, 3)
    fourth = channel.broadcast(type="t", data=3).event  # the brand-new event right after the gap

    page = channel.history(limit=10, cursor=channel.cursor(0))
    assert [e.seq for e in page.items] == [fourth.seq] == [4]
    assert page.truncated, "the reader must be told it lost 1 to 3"
    assert not page.has_more and page.position == 4
    assert stored_kinds(aws)["tombstone"] == 0, "a reader must never write into what TTL took"


def test_a_ttl_deleted_head_is_a_loss_for_a_reader_behind_it(
    realtime: Realtime, aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = realtime.channel("feed_gone")
    now = Clock(monkeypatch)
    channel.broadcast(type="t", data=1)
    channel.broadcast(type="t", data=2)
    now.advance(realtime.settings.history_ttl_seconds * 1000 + HOUR_MS)
    ttl_delete(aws, channel, 1, 2)
    page = channel.history(limit=10, cursor=channel.cursor(0))
    assert page.items == [] and page.truncated and not page.has_more and page.position == 2
    assert stored_kinds(aws)["tombstone"] == 0


def test_an_abandoned_hole_beside_live_events_is_still_tombstoned(
    realtime: Realtime, aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other side of the rule: a hole too young to have expired is a dead writer's."""
    channel = realtime.channel("feed_dead")
    now = Clock(monkeypatch)
    channel.broadcast(type="t", data=1)
    realtime.store.allocate(channel.key, now.now, token="dies")
    channel.broadcast(type="t", data=3)
    now.advance(int(realtime.settings.writer_timeout_seconds * 1000) + 5_000)
    page = channel.history(limit=10, cursor=channel.cursor(0))
    assert [e.seq for e in page.items] == [1, 3] and not page.truncated and not page.has_more
    assert stored_kinds(aws)["tombstone"] == 1


# --- 3. a writer that fails after taking a position leaves no hole ------------------------------


def test_a_write_that_fails_after_allocating_tombstones_its_own_position(
    realtime: Realtime, aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = realtime.channel("feed_throttled")
    original = EventStore.put_position
    failures = iter([True])

    def throttled_once(self: EventStore, item: Any) -> None:
        if item["kind"]["S"] == "event" and next(failures, False):
            raise StoreUnavailable("DynamoDB ProvisionedThroughputExceededException (after retries)")
        original(self, item)

    monkeypatch.setattr(EventStore, "put_position", throttled_once)
    with pytest.raises(StoreUnavailable):
        channel.broadcast(type="t", data="lost")
    assert stored_kinds(aws)["tombstone"] == 1
    second = channel.broadcast(type="t", data="next").event
    # No reader waits for the writer timeout: the failed position is resolved already.
    page = channel.history(limit=10, cursor=channel.cursor(0))
    assert [e.seq for e in page.items] == [second.seq] == [2] and not page.has_more


def test_a_5xx_that_hid_a_committed_write_is_a_success(
    realtime: Realtime, aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = realtime.channel("feed_ambiguous")
    original = EventStore.put_position

    def committed_then_500(self: EventStore, item: Any) -> None:
        original(self, item)
        if item["kind"]["S"] == "event":
            raise StoreUnavailable("DynamoDB InternalServerError (after retries)")

    monkeypatch.setattr(EventStore, "put_position", committed_then_500)
    result = channel.broadcast(type="t", data="x")
    assert not result.duplicate and result.event.seq == 1
    assert stored_kinds(aws) == Counter({"event": 1, "head": 1})


def test_a_transaction_conflict_on_the_key_replays_the_winner(
    realtime: Realtime, aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two retries of one key in flight at once: DynamoDB cancels one with TransactionConflict."""
    channel = realtime.channel("feed_race")
    original = EventStore.put_keyed_event
    winner: list[Any] = []

    def conflict_with_a_concurrent_retry(self: EventStore, *args: Any) -> None:
        if not winner:
            monkeypatch.setattr(EventStore, "put_keyed_event", original)
            winner.append(channel.broadcast(type="t", data="same", idempotency_key="k").event)
            monkeypatch.setattr(EventStore, "put_keyed_event", conflict_with_a_concurrent_retry)
            raise WriteConflict("TransactionConflict")
        original(self, *args)

    monkeypatch.setattr(EventStore, "put_keyed_event", conflict_with_a_concurrent_retry)
    result = channel.broadcast(type="t", data="same", idempotency_key="k")
    assert result.duplicate and result.event == winner[0]
    assert stored_kinds(aws) == Counter({"event": 1, "tombstone": 1, "head": 1, "idem": 1})
    page = channel.history(limit=10, cursor=channel.cursor(0))
    assert [e.id for e in page.items] == [winner[0].id] and not page.has_more


def test_a_transaction_conflict_with_a_cancelled_rival_retries_the_same_position(
    realtime: Realtime, aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = realtime.channel("feed_rival")
    original = EventStore.put_keyed_event
    conflicts = iter([True, True])

    def conflicting_twice(self: EventStore, *args: Any) -> None:
        if next(conflicts, False):
            raise WriteConflict("TransactionConflict")  # the rival was cancelled too: nothing committed
        original(self, *args)

    monkeypatch.setattr(EventStore, "put_keyed_event", conflicting_twice)
    result = channel.broadcast(type="t", data=1, idempotency_key="k")
    assert not result.duplicate and result.event.seq == 1
    assert stored_kinds(aws) == Counter({"event": 1, "head": 1, "idem": 1})


# --- 4. a page's position claims only what was examined -------------------------------------------


def test_latest_does_not_claim_a_position_still_being_written(realtime: Realtime) -> None:
    channel = realtime.channel("feed_inflight")
    for n in range(9):
        channel.broadcast(type="t", data=n)
    realtime.store.allocate(channel.key, clock.now_ms(), token="slow-writer")  # seq 10, in flight
    channel.broadcast(type="t", data=11)
    page = channel.history(limit=1)
    assert page.position == 9, "seq 10 may still commit: a cursor past it would skip it"
    assert [e.seq for e in page.items] == [9] and page.has_more
    assert channel.decode_cursor(page.next_cursor) == 9


def test_latest_claims_the_head_once_the_writer_is_long_dead(
    realtime: Realtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = realtime.channel("feed_settled")
    now = Clock(monkeypatch)
    for n in range(3):
        channel.broadcast(type="t", data=n)
    realtime.store.allocate(channel.key, now.now, token="dies")  # seq 4 never written
    channel.broadcast(type="t", data=5)
    now.advance(int(realtime.settings.writer_timeout_seconds * 1000) + 5_000)
    page = channel.history(limit=1)
    assert page.position == 5 and [e.seq for e in page.items] == [5] and not page.has_more


# --- on the faithful substrate: DynamoDB's own conflicts, lost responses and index lag ----------


def test_concurrent_retries_of_one_key_under_real_transaction_conflicts(
    realtime: Realtime, aws: Any, faithful: Any
) -> None:
    """16 producers retry one key at once; DynamoDB cancels overlapping transactions with
    TransactionConflict. Every one must get the original event, none a 503, no hole."""
    from concurrent.futures import ThreadPoolExecutor

    from realtime_devstack import faithful as substrate

    faithful(seed=3, transaction_window_ms=200, request_jitter_ms=5)
    channel = realtime.channel("feed_conflicts")
    start = threading.Barrier(16)

    def retry(_: int) -> Any:
        start.wait()
        return channel.broadcast(type="t", data="same", idempotency_key="k")

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(retry, range(16)))
    assert substrate.injected().get("TransactionConflict", 0) > 0, "the race must really have conflicted"
    assert len({r.event.id for r in results}) == 1 and sum(not r.duplicate for r in results) == 1
    page = channel.history(limit=100, cursor=channel.cursor(0))
    assert [e.id for e in page.items] == [results[0].event.id] and not page.has_more, "no hole stalls the reader"


def test_lost_responses_and_throttles_neither_duplicate_nor_stall(realtime: Realtime, aws: Any, faithful: Any) -> None:
    """A write applied whose response is a 500 (boto3 retries it), and throttles, on every write path."""
    from realtime_devstack import faithful as substrate

    faithful(
        seed=5,
        lost_response_rates={"PutItem": 0.3, "TransactWriteItems": 0.3, "UpdateItem": 0.3},
        error_rates={"*": {"ProvisionedThroughputExceededException": 0.1}},
    )
    channel = realtime.channel("feed_lossy")
    published = [channel.broadcast(type="t", data=n % 20, idempotency_key=f"k{n % 20}").event for n in range(40)]
    injected = substrate.injected()
    faithful()  # reads with the faults off: judge what was stored
    assert any(name.startswith("lost:") for name in injected), injected
    assert [e.id for e in published[20:]] == [e.id for e in published[:20]], "a key maps to one event"
    page = channel.history(limit=100, cursor=channel.cursor(0))
    assert [e.id for e in page.items] == [e.id for e in published[:20]] and not page.has_more


def test_a_first_event_the_lagging_index_hid_is_found_through_the_head(
    realtime: Realtime, aws: Any, faithful: Any, settings_factory: Any
) -> None:
    """The fan-out reads subscribers from an eventually consistent index: right after a subscribe
    it may not see it. The pong's head tells the client; its catch-up brings the event."""
    import json

    from realtime_transport import tokens
    from realtime_transport.connections import ConnectionStore
    from realtime_transport.delivery import DeliveryReport
    from realtime_transport.fanout import Fanout
    from realtime_transport.live import LiveService
    from realtime_transport.models.items import position_item

    faithful(gsi_lag_ms=60_000)
    frames: list[dict[str, Any]] = []

    class Pusher:
        def send(self, connection_id: str, data: bytes) -> bool:
            frames.append(json.loads(data))
            return True

        def send_many(self, plan: Any, *, budget_s: float | None = None) -> DeliveryReport:
            for connection_id, batch in plan.items():
                for frame in batch:
                    self.send(connection_id, frame)
            return DeliveryReport()

    realtime = Realtime(settings=settings_factory(CONNECTIONS_TABLE_NAME="test-connections"), secret=b"s" * 32)
    live = LiveService(realtime, Pusher())
    live.connect("c1", tokens.issue(realtime.secret, sub="me", channels=["feed_*"]))
    live.handle("c1", json.dumps({"action": "subscribe", "channel": "feed_new"}))
    subscribed = frames.pop()
    event = realtime.channel("feed_new").broadcast(type="t", data="first").event
    item = position_item(realtime.channel("feed_new").key, 1, Kind.EVENT, 1, 4102444800, event.to_json())
    record = {"eventName": "INSERT", "dynamodb": {"NewImage": item, "SequenceNumber": "1"}}
    Fanout(ConnectionStore(realtime.connections._client, "test-connections"), Pusher()).deliver([record])
    assert frames == [], "the index does not show the new subscription yet: the live path misses it"

    live.handle("c1", json.dumps({"action": "ping"}))
    pong = frames.pop()
    assert pong["heads"]["feed_new"] == 1 > subscribed["position"]
    live.handle("c1", json.dumps({"action": "subscribe", "channel": "feed_new", "cursor": subscribed["cursor"]}))
    assert frames[0]["type"] == "event" and frames[0]["event"]["id"] == event.id
