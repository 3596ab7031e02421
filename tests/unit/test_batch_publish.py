"""Batch publish (realtime_transport/batch.py) on in-process moto: a result per event, in order,
and never a hole, with duplicates, conflicts, bad items, throttles and concurrent writers."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest

from realtime_transport import EventTooLarge, IdempotencyConflict, InvalidInput, Realtime, StoreUnavailable, clock
from realtime_transport.batch import MAX_BATCH_EVENTS, BatchItem, publish_batch
from realtime_transport.channel import PublishResult
from realtime_transport.models.items import Kind


def keyed(key: str, data: Any = 1, type: str = "t") -> BatchItem:
    return BatchItem(type=type, data=data, idempotency_key=key)


def unkeyed(data: Any = 1) -> BatchItem:
    return BatchItem(type="t", data=data)


def assert_gapless(realtime: Realtime, channel: Any) -> list[Any]:
    """Every seq 1..head is an event or a tombstone, and history from the start reaches the head."""
    head = realtime.store.head(channel.key).seq
    stored = realtime.store.positions(channel.key, 1, head)
    assert sorted(stored) == list(range(1, head + 1)), f"holes at {sorted(set(range(1, head + 1)) - set(stored))}"
    events, cursor = [], channel.cursor(0)
    while True:
        page = channel.history(limit=500, cursor=cursor)
        events.extend(page.items)
        cursor = page.next_cursor
        if not page.has_more:
            break
    assert page.position == head, "the reader reached the head without stopping at a hole"
    assert [e.seq for e in events] == sorted(s for s, p in stored.items() if p.kind is Kind.EVENT)
    return events


def status(outcome: Any) -> int:
    if isinstance(outcome, PublishResult):
        return 200 if outcome.duplicate else 201
    return {IdempotencyConflict: 409, EventTooLarge: 413, InvalidInput: 422, StoreUnavailable: 503}[type(outcome)]


@contextmanager
def counting(realtime: Realtime) -> Iterator[Counter[str]]:
    calls: Counter[str] = Counter()

    def count(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    events = realtime.store._client.meta.events
    events.register("before-call.dynamodb", count)
    try:
        yield calls
    finally:
        events.unregister("before-call.dynamodb", count)


class _Refused:
    status_code = 400
    headers: dict[str, str] = {}


@contextmanager
def stubbed(
    realtime: Realtime, operation: str, answer: Callable[[dict[str, Any]], dict[str, Any] | None]
) -> Iterator[None]:
    """Answer `operation` on the store's client with `answer(request)` instead of sending it (None:
    send it). A botocore before-call handler that returns a response replaces the whole call, its
    retries included: an error answered here is what the store sees after botocore gave up."""

    def handler(params: dict[str, Any], **_: Any) -> Any:
        parsed = answer(json.loads(params["body"]))
        if parsed is None:
            return None
        return (_Refused(), parsed) if "Error" in parsed else (type("Ok", (), {"status_code": 200})(), parsed)

    events = realtime.store._client.meta.events
    name = f"before-call.dynamodb.{operation}"
    events.register_first(name, handler)
    try:
        yield
    finally:
        events.unregister(name, handler)


def throughput_exceeded() -> dict[str, Any]:
    return {
        "Error": {"Code": "ProvisionedThroughputExceededException", "Message": "throttled"},
        "ResponseMetadata": {"HTTPStatusCode": 400},
    }


# --- results, in order ------------------------------------------------------------------------


def test_duplicates_conflicts_and_bad_items_each_get_their_result(realtime: Realtime) -> None:
    channel = realtime.channel("feed_mixed")
    earlier = channel.broadcast(type="t", data="old", idempotency_key="old").event
    items = [
        keyed("a", "A"),  # 0: new
        keyed("old", "old"),  # 1: duplicate of an earlier event
        keyed("old", "other"),  # 2: its key reused for another event
        keyed("a", "A"),  # 3: duplicate of item 0, in the same batch
        keyed("a", "not A"),  # 4: item 0's key reused
        keyed("big", "x" * 70_000),  # 5: over MaxEventBytes
        keyed("bad-type", type="bad\n"),  # 6: invalid
        unkeyed("u"),  # 7: new, no key
        keyed("b", "B"),  # 8: new
    ]
    results = channel.broadcast_batch(items)
    assert [status(r) for r in results] == [201, 200, 409, 200, 409, 413, 422, 201, 201]
    assert isinstance(results[1], PublishResult) and results[1].event.id == earlier.id
    assert isinstance(results[0], PublishResult) and isinstance(results[3], PublishResult)
    assert results[3].event.id == results[0].event.id, "one key in one batch is one event"
    new = [r.event for r in results if isinstance(r, PublishResult) and not r.duplicate]
    assert [e.seq for e in new] == [2, 3, 4], "request order; duplicates and refused items take no position"
    assert [e.data for e in assert_gapless(realtime, channel)] == ["old", "A", "u", "B"]


def test_a_key_stored_after_the_check_is_a_duplicate_and_its_position_a_tombstone(
    realtime: Realtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A concurrent writer commits the key between the batch's read and its transaction: the
    transaction is cancelled (ConditionalCheckFailed on that record), sent again without it, and
    the position it would have had is tombstoned."""
    channel = realtime.channel("feed_race")
    rival = channel.broadcast(type="t", data="k", idempotency_key="k").event
    monkeypatch.setattr(realtime.store, "idempotency_records", lambda chan_key, keys: ({}, []))
    with counting(realtime) as calls:
        results = channel.broadcast_batch([keyed("x", "x"), keyed("k", "k"), keyed("y", "y"), keyed("k2", "k2")])
    assert [status(r) for r in results] == [201, 200, 201, 201]
    assert isinstance(results[1], PublishResult) and results[1].event.id == rival.id
    assert calls["TransactWriteItems"] == 2 and calls["PutItem"] == 1  # once more without it; one tombstone
    assert [e.data for e in assert_gapless(realtime, channel)] == ["k", "x", "y", "k2"]
    assert realtime.store.position(channel.key, 3).kind is Kind.TOMBSTONE  # type: ignore[union-attr]


def test_a_key_reused_for_another_event_found_by_the_transaction_is_a_409(
    realtime: Realtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = realtime.channel("feed_race_409")
    channel.broadcast(type="t", data="first", idempotency_key="k")
    monkeypatch.setattr(realtime.store, "idempotency_records", lambda chan_key, keys: ({}, []))
    results = channel.broadcast_batch([keyed("k", "second"), keyed("k", "second"), keyed("z", "z")])
    assert [status(r) for r in results] == [409, 409, 201]
    assert_gapless(realtime, channel)


# --- throttled and failed writes ----------------------------------------------------------------


def test_unprocessed_items_are_retried_and_a_write_that_never_lands_is_tombstoned(
    aws: Any, settings_factory: Any
) -> None:
    """BatchWriteItem hands back UnprocessedItems: only those are sent again, with backoff. Seq 3
    always comes back (throttled for good): its event is a 503 and its position a tombstone."""
    # A short writer timeout: the batch stops retrying at half of it.
    realtime = Realtime(settings=settings_factory(WRITER_TIMEOUT_SECONDS="1"), secret=b"unit-test-secret")
    channel = realtime.channel("feed_unprocessed")
    calls: list[list[str]] = []

    def answer(request: dict[str, Any]) -> dict[str, Any]:
        puts = request["RequestItems"]["test-events"]
        calls.append([put["PutRequest"]["Item"]["sk"]["N"] for put in puts])
        if len(calls) == 1:  # nothing processed at all
            return {"UnprocessedItems": request["RequestItems"]}
        landing = [put for put in puts if put["PutRequest"]["Item"]["sk"]["N"] != "3"]
        if landing:
            aws.batch_write_item(RequestItems={"test-events": landing})  # another client: not stubbed
        stuck = [put for put in puts if put not in landing]
        return {"UnprocessedItems": {"test-events": stuck} if stuck else {}}

    with stubbed(realtime, "BatchWriteItem", answer):
        results = channel.broadcast_batch([unkeyed(n) for n in range(5)])
    assert [status(r) for r in results] == [201, 201, 503, 201, 201]
    assert calls[0] == calls[1] == ["1", "2", "3", "4", "5"] and len(calls) > 2
    assert all(call == ["3"] for call in calls[2:]), "only what was unprocessed is sent again"
    assert [e.data for e in assert_gapless(realtime, channel)] == [0, 1, 3, 4]
    assert realtime.store.position(channel.key, 3).kind is Kind.TOMBSTONE  # type: ignore[union-attr]


def test_a_batch_write_throttled_after_botocores_retries_is_sent_again(realtime: Realtime) -> None:
    """ProvisionedThroughputExceededException on BatchWriteItem (what the store sees once botocore
    gave up): the batch sends the same items again, and they land."""
    channel = realtime.channel("feed_throttled")
    refusals = iter([throughput_exceeded(), throughput_exceeded()])
    with stubbed(realtime, "BatchWriteItem", lambda request: next(refusals, None)):
        results = channel.broadcast_batch([unkeyed(n) for n in range(30)])
    assert [status(r) for r in results] == [201] * 30
    assert [e.data for e in assert_gapless(realtime, channel)] == list(range(30))


def test_a_transaction_throttled_for_good_tombstones_every_position(realtime: Realtime) -> None:
    channel = realtime.channel("feed_tx_throttled")
    with stubbed(realtime, "TransactWriteItems", lambda request: throughput_exceeded()):
        results = channel.broadcast_batch([keyed(f"k{n}", n) for n in range(3)] + [unkeyed("u")])
    assert [status(r) for r in results] == [503, 503, 503, 201]
    assert [e.data for e in assert_gapless(realtime, channel)] == ["u"]
    # Nothing of the keyed events was stored: a retry with the same keys stores them.
    again = channel.broadcast_batch([keyed(f"k{n}", n) for n in range(3)])
    assert [status(r) for r in again] == [201, 201, 201]
    assert [e.data for e in assert_gapless(realtime, channel)] == ["u", 0, 1, 2]


def test_a_transaction_whose_response_was_lost_is_a_success(realtime: Realtime, aws: Any) -> None:
    """The transaction commits, then the store sees a 500: sent again, its conditions fail on our
    own events, which the batch recognises as stored."""
    channel = realtime.channel("feed_lost")
    answers = iter(["lost"])

    def commit_then_fail(request: dict[str, Any]) -> dict[str, Any] | None:
        if next(answers, None) is None:
            return None
        aws.transact_write_items(TransactItems=request["TransactItems"])  # another client: it commits
        return {"Error": {"Code": "InternalServerError", "Message": "lost"}, "ResponseMetadata": {}}

    with stubbed(realtime, "TransactWriteItems", commit_then_fail):
        results = channel.broadcast_batch([keyed("a", 1), keyed("b", 2)])
    assert [status(r) for r in results] == [201, 201]
    assert [e.id for e in assert_gapless(realtime, channel)] == [r.event.id for r in results]  # type: ignore[union-attr]


def test_a_store_outage_before_allocating_takes_no_position(
    realtime: Realtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = realtime.channel("feed_down")

    def down(*_: Any, **__: Any) -> Any:
        raise StoreUnavailable("DynamoDB down")

    monkeypatch.setattr(realtime.store, "allocate_many", down)
    results = channel.broadcast_batch([keyed("a"), unkeyed()])
    assert [status(r) for r in results] == [503, 503]
    assert realtime.store.head(channel.key).seq == 0


# --- positions and requests --------------------------------------------------------------------


def test_allocate_many_takes_consecutive_positions_and_a_retry_gets_the_same(realtime: Realtime) -> None:
    key = realtime.channel("feed_alloc").key
    single = realtime.store.allocate(key, 1_000, token="one")
    batch = realtime.store.allocate_many(key, 3, 2_000, token="batch")
    assert [a.seq for a in batch] == [2, 3, 4]
    assert [(a.allocated_at_ms, a.prev_allocated_at_ms) for a in batch] == [(2_000, single.allocated_at_ms)] + [
        (2_000, 2_000)
    ] * 2
    assert realtime.store.allocate_many(key, 3, 2_500, token="batch") == batch  # a retried ADD
    head = realtime.store.head(key)
    assert (head.seq, head.allocated_at_ms, head.prev_allocated_at_ms) == (4, 2_000, 2_000)
    assert realtime.store.allocate(key, 3_000, token="after").prev_allocated_at_ms == 2_000


@pytest.mark.parametrize(
    ("size", "with_keys", "expected"),
    [
        (50, True, {"BatchGetItem": 1, "UpdateItem": 1, "TransactWriteItems": 1}),
        (50, False, {"UpdateItem": 1, "BatchWriteItem": 2}),
        (100, True, {"BatchGetItem": 1, "UpdateItem": 1, "TransactWriteItems": 2}),
    ],
)
def test_requests_per_batch(realtime: Realtime, size: int, with_keys: bool, expected: dict[str, int]) -> None:
    channel = realtime.channel(f"feed_cost_{size}_{with_keys}")
    items = [keyed(f"k{n}", n) if with_keys else unkeyed(n) for n in range(size)]
    with counting(realtime) as calls:
        results = channel.broadcast_batch(items)
    assert calls == expected
    assert sum(calls.values()) / size <= 1.1
    assert [r.event.seq for r in results] == list(range(1, size + 1))  # type: ignore[union-attr]
    with counting(realtime) as calls:
        again = channel.broadcast_batch(items)
    if with_keys:  # a retried batch: one read, nothing written
        assert calls == {"BatchGetItem": 1} and all(status(r) == 200 for r in again)


def test_large_keyed_events_are_split_under_the_transaction_size_limit(aws: Any, settings_factory: Any) -> None:
    """TransactWriteItems takes at most 4 MB; 40 events of 100 KB, each stored twice, are 8 MB."""
    realtime = Realtime(settings=settings_factory(MAX_EVENT_BYTES="128000"), secret=b"unit-test-secret")
    channel = realtime.channel("feed_large")
    with counting(realtime) as calls:
        results = channel.broadcast_batch([keyed(f"k{n}", "x" * 100_000) for n in range(40)])
    assert [status(r) for r in results] == [201] * 40
    assert calls["TransactWriteItems"] == 3
    assert len(assert_gapless(realtime, channel)) == 40


def test_a_batch_holds_1_to_100_events(realtime: Realtime) -> None:
    channel = realtime.channel("feed_bounds")
    for items in ([], [unkeyed()] * (MAX_BATCH_EVENTS + 1)):
        with pytest.raises(InvalidInput):
            publish_batch(channel, items)
    assert realtime.store.head(channel.key).seq == 0


def test_the_http_model_and_the_library_agree_on_the_limit() -> None:
    from realtime_transport.models import http

    assert http.MAX_BATCH_EVENTS == MAX_BATCH_EVENTS


def test_a_fresh_batch_position_is_a_hole_to_readers_not_abandoned(realtime: Realtime) -> None:
    """Positions a batch took a moment ago are waited for, never tombstoned by a reader."""
    channel = realtime.channel("feed_fresh")
    realtime.store.allocate_many(channel.key, 3, clock.now_ms(), token="writer")
    channel.broadcast(type="t", data="after")
    page = channel.history(limit=10, cursor=channel.cursor(0))
    assert page.items == [] and page.position == 0
    assert realtime.store.positions(channel.key, 1, 3) == {}


# --- concurrency on the faithful substrate ------------------------------------------------------


def test_racing_batches_and_single_publishes_stay_gapless_with_one_event_per_key(
    aws: Any, settings_factory: Any, faithful: Any
) -> None:
    """Two batches and single publishes of overlapping keys at once, with DynamoDB's transaction
    conflicts: one event per key, every result agrees with it, and the log has no hole."""
    from realtime_devstack import faithful as substrate

    # A long writer timeout: on a loaded machine the batches must not hit their deadline (half
    # of it), which is not what this test is about.
    realtime = Realtime(settings=settings_factory(WRITER_TIMEOUT_SECONDS="60"), secret=b"unit-test-secret")
    faithful(seed=11, transaction_window_ms=15, request_jitter_ms=2)
    channel = realtime.channel("feed_racing")
    start = threading.Barrier(4)

    def batch(keys: range) -> list[Any]:
        start.wait()
        return channel.broadcast_batch([keyed(f"k{n}", n) for n in keys] + [unkeyed(f"u{keys.start}")])

    def singles(keys: range) -> list[Any]:
        start.wait()
        return [channel.broadcast(type="t", data=n, idempotency_key=f"k{n}") for n in keys]

    with ThreadPoolExecutor(4) as pool:
        runs = [
            pool.submit(batch, range(0, 30)),
            pool.submit(batch, range(15, 45)),
            pool.submit(singles, range(10, 40, 3)),
            pool.submit(singles, range(40, 20, -2)),
        ]
        results = [r for run in runs for r in run.result()]
    assert substrate.injected().get("TransactionConflict", 0) > 0, "the writers must really have conflicted"
    faithful()
    assert all(isinstance(r, PublishResult) for r in results), [r for r in results if not isinstance(r, PublishResult)]
    events = assert_gapless(realtime, channel)
    by_key = Counter(e.idempotency_key for e in events if e.idempotency_key)
    assert by_key == {f"k{n}": 1 for n in range(45)}, "one event per key"
    stored = {e.idempotency_key: e.id for e in events}
    assert all(r.event.id == stored[r.event.idempotency_key] for r in results if r.event.idempotency_key)
    assert sum(1 for e in events if not e.idempotency_key) == 2
