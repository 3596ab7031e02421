"""The library's invariants (docs/design.md section 4: 1, 2, 3) on in-process moto, under concurrency."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from realtime_transport import (
    EventTooLarge,
    IdempotencyConflict,
    InvalidChannel,
    InvalidCursor,
    InvalidInput,
    Realtime,
    clock,
)
from realtime_transport.models.items import Allocation, Kind
from realtime_transport.store import PositionTaken


def all_events(channel: Any, limit: int = 500) -> list[Any]:
    """Page through the whole retained history from the start."""
    items, cursor = [], channel.cursor(0)
    while True:
        page = channel.history(limit=limit, cursor=cursor)
        items.extend(page.items)
        cursor = page.next_cursor
        if not page.has_more:
            return items


def stored_kinds(aws: Any) -> Counter[str]:
    items = aws.scan(TableName="test-events")["Items"]
    return Counter(item["kind"]["S"] for item in items)


def test_broadcast_returns_the_stored_envelope(realtime: Realtime) -> None:
    result = realtime.channel("feed_42").broadcast(
        type="order.created", data={"orderId": "o-1"}, metadata={"source": "api"}, idempotency_key="e-1"
    )
    event = result.event.to_wire()
    assert result.duplicate is False
    assert event["channel"] == "feed_42" and event["seq"] == 1 and event["type"] == "order.created"
    assert event["data"] == {"orderId": "o-1"} and event["metadata"] == {"source": "api"}
    assert event["idempotencyKey"] == "e-1" and len(event["id"]) == 26
    assert event["publishedAt"].endswith("Z")


def test_publish_takes_the_same_path_as_broadcast(realtime: Realtime) -> None:
    channel = realtime.channel("feed_1")
    channel.broadcast(type="a", data=1)
    channel.publish(type="feed.control", data={"action": "pause"}, idempotency_key="c-1")
    assert [(e.seq, e.type) for e in channel.history().items] == [(1, "a"), (2, "feed.control")]


def test_name_namespaces_channels(aws: Any, settings_factory: Any) -> None:
    one = Realtime(name="one", settings=settings_factory(), secret=b"s")
    two = Realtime(name="two", settings=settings_factory(), secret=b"s")
    one.channel("c").broadcast(type="t", data=1)
    assert two.channel("c").history().items == []
    assert two.channel("c").broadcast(type="t", data=2).event.seq == 1


def test_concurrent_producers_get_a_gapless_sequence(realtime: Realtime) -> None:
    channel = realtime.channel("feed_busy")

    def produce(producer: int) -> list[int]:
        return [channel.broadcast(type="t", data={"p": producer, "n": n}).event.seq for n in range(50)]

    with ThreadPoolExecutor(4) as pool:
        seqs = [seq for batch in pool.map(produce, range(4)) for seq in batch]
    assert sorted(seqs) == list(range(1, 201))
    events = all_events(channel, limit=37)
    assert [e.seq for e in events] == list(range(1, 201))
    per_producer = Counter(e.data["p"] for e in events)
    assert per_producer == {0: 50, 1: 50, 2: 50, 3: 50}


def test_sixteen_concurrent_producers_never_fail(realtime: Realtime) -> None:
    channel = realtime.channel("feed_16")

    def produce(producer: int) -> int:
        for n in range(10):
            channel.broadcast(type="t", data=n, idempotency_key=f"{producer}-{n}")
        return producer

    with ThreadPoolExecutor(16) as pool:
        assert sorted(pool.map(produce, range(16))) == list(range(16))
    assert [e.seq for e in all_events(channel)] == list(range(1, 161))


def test_concurrent_retries_of_one_key_store_one_event(realtime: Realtime, aws: Any) -> None:
    channel = realtime.channel("feed_retry")

    def retry(_: int) -> Any:
        return channel.broadcast(type="order.created", data={"x": 1}, idempotency_key="same-key")

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(retry, range(32)))
    originals = [r for r in results if not r.duplicate]
    assert len(originals) == 1
    assert {(r.event.id, r.event.seq, r.event.published_at) for r in results} == {
        (originals[0].event.id, originals[0].event.seq, originals[0].event.published_at)
    }
    # Losers of the key race tombstoned their positions: the log has no hole and one event.
    assert [e.data for e in all_events(channel)] == [{"x": 1}]
    kinds = stored_kinds(aws)
    assert kinds["event"] == 1 and kinds["idem"] == 1


def test_retry_hours_later_returns_the_original(realtime: Realtime, monkeypatch: pytest.MonkeyPatch) -> None:
    channel = realtime.channel("feed_late")
    first = channel.broadcast(type="t", data={"v": 1}, idempotency_key="k")
    later = clock.now_ms() + 5 * 3600 * 1000
    monkeypatch.setattr(clock, "now_ms", lambda: later)
    again = channel.broadcast(type="t", data={"v": 1}, idempotency_key="k")
    assert again.duplicate and again.event == first.event


def test_key_reused_for_another_event_is_a_conflict(realtime: Realtime) -> None:
    channel = realtime.channel("feed_conflict")
    channel.broadcast(type="t", data={"v": 1}, idempotency_key="k")
    with pytest.raises(IdempotencyConflict, match="seq 1"):
        channel.broadcast(type="t", data={"v": 2}, idempotency_key="k")
    with pytest.raises(IdempotencyConflict):
        channel.broadcast(type="other", data={"v": 1}, idempotency_key="k")
    assert [e.seq for e in channel.history().items] == [1]


def test_keys_are_per_channel(realtime: Realtime) -> None:
    a = realtime.channel("a").broadcast(type="t", data=1, idempotency_key="k")
    b = realtime.channel("b").broadcast(type="t", data=1, idempotency_key="k")
    assert not a.duplicate and not b.duplicate


def test_an_expired_key_may_be_used_again(realtime: Realtime, monkeypatch: pytest.MonkeyPatch) -> None:
    channel = realtime.channel("feed_expire")
    channel.broadcast(type="t", data=1, idempotency_key="k")
    after_ttl = clock.now_ms() + (realtime.settings.idempotency_ttl_seconds + 60) * 1000
    monkeypatch.setattr(clock, "now_ms", lambda: after_ttl)
    result = channel.broadcast(type="t", data=2, idempotency_key="k")
    assert not result.duplicate and result.event.seq == 2


def test_an_oversized_event_is_refused_before_taking_a_position(realtime: Realtime) -> None:
    channel = realtime.channel("feed_big")
    with pytest.raises(EventTooLarge, match="limit is 65536"):
        channel.broadcast(type="t", data="x" * 70_000)
    assert realtime.store.head(channel.key).seq == 0


@pytest.mark.parametrize("name", ["", "has space", "a#b", "x" * 201, "ü"])
def test_invalid_channel_names(realtime: Realtime, name: str) -> None:
    with pytest.raises(InvalidChannel):
        realtime.channel(name)


@pytest.mark.parametrize(("field", "kwargs"), [("type", {"type": ""}), ("idempotencyKey", {"idempotency_key": "\n"})])
def test_invalid_fields_store_nothing(realtime: Realtime, aws: Any, field: str, kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput) as raised:
        realtime.channel("c").broadcast(**{"type": "t", "data": 1, **kwargs})
    assert raised.value.field == field
    assert aws.scan(TableName="test-events")["Count"] == 0


# --- holes and tombstones -------------------------------------------------------------------


def test_a_fresh_hole_stops_the_reader_without_a_gap(realtime: Realtime) -> None:
    channel = realtime.channel("feed_hole")
    channel.broadcast(type="t", data=1)
    realtime.store.allocate(channel.key, clock.now_ms(), token="in-flight")  # a writer still at seq 2
    channel.broadcast(type="t", data=3)
    page = channel.history(limit=10, cursor=channel.cursor(0))
    assert [e.seq for e in page.items] == [1]
    assert page.has_more and channel.decode_cursor(page.next_cursor) == page.position == 1
    latest = channel.history(limit=10)
    assert [e.seq for e in latest.items] == [1] and latest.has_more


def test_an_abandoned_hole_is_tombstoned_and_skipped(
    realtime: Realtime, aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = realtime.channel("feed_dead")
    channel.broadcast(type="t", data=1)
    dead_seq = realtime.store.allocate(channel.key, clock.now_ms(), token="dies").seq  # its writer dies
    channel.broadcast(type="t", data=3)
    later = clock.now_ms() + int(realtime.settings.writer_timeout_seconds * 1000) + 5_000
    monkeypatch.setattr(clock, "now_ms", lambda: later)

    page = channel.history(limit=10, cursor=channel.cursor(0))
    assert [e.seq for e in page.items] == [1, 3]
    assert not page.has_more and channel.decode_cursor(page.next_cursor) == page.position == 3
    assert stored_kinds(aws)["tombstone"] == 1
    # The late writer can never land there.
    from realtime_transport.models.items import position_item

    with pytest.raises(PositionTaken):
        realtime.store.put_position(position_item(channel.key, dead_seq, Kind.EVENT, later, later, "{}"))


def test_a_dead_writer_at_the_head_is_tombstoned(realtime: Realtime, monkeypatch: pytest.MonkeyPatch) -> None:
    channel = realtime.channel("feed_tail")
    channel.broadcast(type="t", data=1)
    realtime.store.allocate(channel.key, clock.now_ms(), token="dies")
    later = clock.now_ms() + 60_000
    monkeypatch.setattr(clock, "now_ms", lambda: later)
    page = channel.history(limit=10)
    assert [e.seq for e in page.items] == [1]
    assert not page.has_more and channel.decode_cursor(page.next_cursor) == 2
    assert channel.broadcast(type="t", data=3).event.seq == 3


def test_a_writer_whose_position_was_tombstoned_takes_another(
    realtime: Realtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = realtime.channel("feed_slow")
    store = realtime.store
    original_allocate = store.allocate

    def allocate_then_lose_the_slot(key: str, now: int, token: str) -> Allocation:
        allocation = original_allocate(key, now, token)
        if allocation.seq == 1:  # a reader declares this writer dead before it writes
            channel._tombstone(allocation.seq, now, now, now)
        return allocation

    monkeypatch.setattr(store, "allocate", allocate_then_lose_the_slot)
    result = channel.broadcast(type="t", data="x", idempotency_key="k")
    assert result.event.seq == 2 and not result.duplicate
    assert [e.seq for e in all_events(channel)] == [2]


# --- the history window ---------------------------------------------------------------------


def test_history_without_cursor_is_the_latest_events_oldest_first(realtime: Realtime) -> None:
    channel = realtime.channel("feed_latest")
    for n in range(12):
        channel.broadcast(type="t", data=n)
    page = channel.history(limit=5)
    assert [e.seq for e in page.items] == [8, 9, 10, 11, 12]
    assert not page.has_more and not page.truncated
    assert channel.decode_cursor(page.next_cursor) == 12


def test_history_window_and_truncation(aws: Any, settings_factory: Any) -> None:
    live = Realtime(history_limit=5, settings=settings_factory(), secret=b"s")
    channel = live.channel("feed_window")
    for n in range(12):
        channel.broadcast(type="t", data=n)
    assert [e.seq for e in channel.history(limit=100).items] == [8, 9, 10, 11, 12]
    old = channel.history(limit=100, cursor=channel.cursor(2))
    assert old.truncated and [e.seq for e in old.items] == [8, 9, 10, 11, 12]
    edge = channel.history(limit=100, cursor=channel.cursor(7))
    assert not edge.truncated and [e.seq for e in edge.items] == [8, 9, 10, 11, 12]


def test_paging_to_the_end_with_limit_one(realtime: Realtime) -> None:
    channel = realtime.channel("feed_pages")
    for n in range(7):
        channel.broadcast(type="t", data=n)
    seen, cursor, pages = [], channel.cursor(0), 0
    while True:
        page = channel.history(limit=1, cursor=cursor)
        pages += 1
        seen += [e.seq for e in page.items]
        cursor = page.next_cursor
        if not page.has_more:
            break
    assert seen == list(range(1, 8)) and pages == 7
    empty = channel.history(limit=1, cursor=cursor)
    assert empty.items == [] and not empty.has_more and empty.next_cursor == cursor


def test_an_empty_channel_has_a_cursor_to_continue_from(realtime: Realtime) -> None:
    channel = realtime.channel("feed_empty")
    page = channel.history()
    assert page.items == [] and not page.has_more and channel.decode_cursor(page.next_cursor) == 0
    channel.broadcast(type="t", data=1)
    assert [e.seq for e in channel.history(cursor=page.next_cursor).items] == [1]


def test_expired_events_are_filtered_on_read(realtime: Realtime, monkeypatch: pytest.MonkeyPatch) -> None:
    channel = realtime.channel("feed_ttl")
    for n in range(3):
        channel.broadcast(type="t", data=n)
    later = clock.now_ms() + (realtime.settings.history_ttl_seconds + 60) * 1000
    monkeypatch.setattr(clock, "now_ms", lambda: later)
    assert channel.history().items == []
    page = channel.history(cursor=channel.cursor(0))
    assert page.items == [] and page.truncated
    assert [e.seq for e in channel.history(cursor=page.next_cursor).items] == []
    assert channel.broadcast(type="t", data=4).event.seq == 4  # the head never expires


def test_every_event_item_carries_a_ttl(realtime: Realtime, aws: Any) -> None:
    channel = realtime.channel("feed_ttl_attr")
    channel.broadcast(type="t", data=1, idempotency_key="k")
    channel.broadcast(type="t", data=2)
    for item in aws.scan(TableName="test-events")["Items"]:
        assert ("ttl" in item) == (item["kind"]["S"] != "head")


# --- cursors --------------------------------------------------------------------------------


def test_a_cursor_from_another_channel_is_refused(realtime: Realtime) -> None:
    a, b = realtime.channel("feed_a"), realtime.channel("feed_b")
    a.broadcast(type="t", data=1)
    b.broadcast(type="t", data=1)
    with pytest.raises(InvalidCursor, match="another channel"):
        b.history(cursor=a.history().next_cursor)


def test_a_cursor_from_another_deployment_is_refused(aws: Any, settings_factory: Any) -> None:
    ours = Realtime(settings=settings_factory(), secret=b"ours").channel("c")
    theirs = Realtime(settings=settings_factory(), secret=b"theirs").channel("c")
    ours.broadcast(type="t", data=1)
    with pytest.raises(InvalidCursor, match="altered"):
        ours.history(cursor=theirs.cursor(0))


@pytest.mark.parametrize("mutate", [lambda c: c[:-1], lambda c: c + "A", lambda c: "!" * len(c), lambda c: ""])
def test_malformed_cursors_are_refused(realtime: Realtime, mutate: Any) -> None:
    channel = realtime.channel("feed_c")
    channel.broadcast(type="t", data=1)
    with pytest.raises(InvalidCursor):
        channel.history(cursor=mutate(channel.cursor(1)))


def test_every_single_character_change_is_detected(realtime: Realtime) -> None:
    channel = realtime.channel("feed_tamper")
    channel.broadcast(type="t", data=1)
    cursor = channel.cursor(1)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for i, char in enumerate(cursor):
        replacement = alphabet[(alphabet.index(char) + 1) % len(alphabet)]
        with pytest.raises(InvalidCursor):
            channel.history(cursor=cursor[:i] + replacement + cursor[i + 1 :])


def test_a_cursor_ahead_of_the_log_is_refused(realtime: Realtime) -> None:
    channel = realtime.channel("feed_ahead")
    with pytest.raises(InvalidCursor, match="ahead"):
        channel.history(cursor=channel.cursor(5))


@pytest.mark.parametrize("limit", [0, 501, -1])
def test_limit_bounds(realtime: Realtime, limit: int) -> None:
    with pytest.raises(InvalidInput):
        realtime.channel("c").history(limit=limit)


# --- DynamoDB requests per publish (the benchmark's figure, held as a test) -------------------


def count_requests(realtime: Realtime, action: Any) -> Counter[str]:
    calls: Counter[str] = Counter()
    client = realtime.store._client

    def count(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    client.meta.events.register("before-call.dynamodb", count)
    try:
        action()
    finally:
        client.meta.events.unregister("before-call.dynamodb", count)
    return calls


def test_requests_per_publish(realtime: Realtime) -> None:
    channel = realtime.channel("feed_cost")
    unkeyed = count_requests(realtime, lambda: channel.broadcast(type="t", data=1))
    keyed = count_requests(realtime, lambda: channel.broadcast(type="t", data=1, idempotency_key="k"))
    retry = count_requests(realtime, lambda: channel.broadcast(type="t", data=1, idempotency_key="k"))
    assert unkeyed == {"UpdateItem": 1, "PutItem": 1}
    assert keyed == {"GetItem": 1, "UpdateItem": 1, "TransactWriteItems": 1}
    assert retry == {"GetItem": 1}


# --- retries of requests whose responses were lost (boto3 retries them) -----------------------


def test_a_retried_allocation_returns_the_same_position(realtime: Realtime) -> None:
    key = realtime.channel("feed_alloc").key
    first = realtime.store.allocate(key, clock.now_ms(), token="writer-1")
    assert realtime.store.allocate(key, clock.now_ms(), token="writer-1") == first
    second = realtime.store.allocate(key, clock.now_ms(), token="writer-2")
    assert second.seq == first.seq + 1
    assert second.prev_allocated_at_ms == first.allocated_at_ms  # the head remembers its predecessor


@pytest.mark.parametrize("keyed", [False, True])
def test_a_write_whose_response_was_lost_is_not_written_twice(
    realtime: Realtime, monkeypatch: pytest.MonkeyPatch, keyed: bool
) -> None:
    store = realtime.store
    name = "put_keyed_event" if keyed else "put_position"
    original = getattr(store, name)

    def commit_then_retry(*args: Any) -> None:
        original(*args)  # commits; the response is lost and boto3 sends it again
        original(*args)

    monkeypatch.setattr(store, name, commit_then_retry)
    channel = realtime.channel("feed_lost")
    result = channel.broadcast(type="t", data=1, idempotency_key="k" if keyed else None)
    assert not result.duplicate and result.event.seq == 1
    monkeypatch.undo()
    assert [e.id for e in all_events(channel)] == [result.event.id]
    assert realtime.store.head(channel.key).seq == 1


def test_text_fields_refuse_a_trailing_newline(realtime: Realtime) -> None:
    with pytest.raises(InvalidInput):
        realtime.channel("c").broadcast(type="order.created\n", data=1)
