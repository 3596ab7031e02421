"""The rooms outbox on moto: room changes from the events table's real stream to `room_{id}`,
exactly once and in version order, across retried and partly failed batches."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from realtime_transport import Realtime
from realtime_transport.channel import Channel
from realtime_transport.errors import StoreUnavailable
from realtime_transport.rooms.outbox import RoomOutbox
from realtime_transport.rooms.room import room
from tests.conftest import stream_records


def room_events(realtime: Realtime, room_id: str) -> list[Any]:
    channel = realtime.channel(f"room_{room_id}")
    return channel.history(limit=100, cursor=channel.cursor(0)).items


def change_some_rooms(realtime: Realtime) -> None:
    board = room(realtime, "board")
    board.patch(0, merge_patch={"title": "Q4"}, by="alice")
    board.patch(1, operations=[{"op": "add", "path": "/cards", "value": []}], by="bob")
    board.set_metadata({"topic": "planning"}, by="alice")
    board.patch(3, merge_patch={"title": "Q4 plan"}, by="bob")
    room(realtime, "other").patch(0, merge_patch={"n": 1})


def test_every_change_reaches_its_channel_once_in_version_order(realtime: Realtime, aws: Any) -> None:
    change_some_rooms(realtime)
    channel_event = realtime.channel("feed_x").broadcast(type="t", data=1)  # not a room change
    records = stream_records("test-events")
    result = RoomOutbox(realtime).publish(records)
    assert result.failed == [] and len(result.published) == 5

    events = room_events(realtime, "board")
    assert [(e.type, e.data["version"]) for e in events] == [
        ("room.state", 1),
        ("room.state", 2),
        ("room.metadata", 3),
        ("room.state", 4),
    ]
    assert events[0].data["patch"] == {"title": "Q4"} and events[0].data["paths"] == ["/title"]
    assert events[0].data["by"] == "alice" and "token" not in events[0].data
    assert events[1].data["operations"] == [{"op": "add", "path": "/cards", "value": []}]
    assert events[2].data["metadata"] == {"topic": "planning"}
    assert [e.data["version"] for e in room_events(realtime, "other")] == [1]
    assert realtime.channel("feed_x").history().items == [channel_event.event]

    again = RoomOutbox(realtime).publish(records)  # Lambda retries a batch: nothing twice
    assert again.published == [] and len(again.duplicates) == 5
    assert len(room_events(realtime, "board")) == 4


def test_a_failed_change_holds_back_the_rest_of_its_room_only(
    realtime: Realtime, aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    change_some_rooms(realtime)
    records = stream_records("test-events")
    original = Channel.publish
    failures = iter([True])

    def throttled_at_version_two(self: Channel, **kwargs: Any) -> Any:
        if kwargs.get("idempotency_key") == "room:v2" and self.name == "room_board" and next(failures, False):
            raise StoreUnavailable("DynamoDB ProvisionedThroughputExceededException (after retries)")
        return original(self, **kwargs)

    monkeypatch.setattr(Channel, "publish", throttled_at_version_two)
    first = RoomOutbox(realtime).publish(records)
    assert [c.version for c in first.published if c.room_id == "board"] == [1], "nothing overtakes version 2"
    assert [c.room_id for c in first.published if c.room_id != "board"] == ["other"], "other rooms go on"
    assert len(first.failed) == 3
    assert [e.data["version"] for e in room_events(realtime, "board")] == [1]

    # The event source mapping retries from the lowest failed record, the rest of the batch with it.
    numbers = [r["dynamodb"]["SequenceNumber"] for r in records]
    retry = records[min(numbers.index(n) for n in first.failed) :]
    second = RoomOutbox(realtime).publish(retry)
    assert second.failed == []
    assert [e.data["version"] for e in room_events(realtime, "board")] == [1, 2, 3, 4]
    assert [e.data["version"] for e in room_events(realtime, "other")] == [1], "replayed, not doubled"


def test_records_of_another_namespace_or_kind_are_not_room_changes(realtime: Realtime, aws: Any) -> None:
    from realtime_transport.rooms.outbox import room_change

    room(realtime, "board").patch(0, merge_patch={"a": 1})
    records = stream_records("test-events")
    (record,) = [r for r in records if r["dynamodb"]["NewImage"].get("kind", {}).get("S") == "room"]
    assert room_change(record, realtime.name) is not None
    assert room_change(record, "another-namespace") is None
    removed = {**record, "eventName": "REMOVE"}
    assert room_change(removed, realtime.name) is None


class Killed(BaseException):
    """The function's sandbox ending mid-invocation (a timeout, an out-of-memory kill): not an
    exception the code could handle, so the outbox gets no chance to report anything."""


def test_a_function_killed_between_a_change_and_its_event_still_publishes_it_once(
    realtime: Realtime, aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer dies right after its conditional write: it never publishes anything itself, so
    # there is nothing for it to lose; the change is in the stream.
    room(realtime, "board").patch(0, merge_patch={"title": "Q4"})
    room(realtime, "board").patch(1, merge_patch={"owner": "ana"})
    records = stream_records("test-events")

    # The outbox is killed after storing version 1's event, before it could return its answer:
    # Lambda retries the whole batch.
    original = Channel.publish

    def killed_after_storing(self: Channel, **kwargs: Any) -> Any:
        result = original(self, **kwargs)
        if kwargs.get("idempotency_key") == "room:v1":
            raise Killed
        return result

    monkeypatch.setattr(Channel, "publish", killed_after_storing)
    with pytest.raises(Killed):
        RoomOutbox(realtime).publish(records)
    monkeypatch.setattr(Channel, "publish", original)

    retried = RoomOutbox(realtime).publish(records)

    assert retried.failed == [] and [c.version for c in retried.duplicates] == [1]
    assert [(e.type, e.data["version"]) for e in room_events(realtime, "board")] == [
        ("room.state", 1),
        ("room.state", 2),
    ]


class AfterCalls:
    """A deadline that passes after `n` checks (the invocation's time running out mid-batch)."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.lock = threading.Lock()  # rooms publish at once, from several threads

    def passed(self) -> bool:
        with self.lock:
            self.left -= 1
            return self.left < 0


def test_an_outbox_out_of_time_reports_the_rest_instead_of_timing_out(realtime: Realtime, aws: Any) -> None:
    change_some_rooms(realtime)
    records = stream_records("test-events")

    first = RoomOutbox(realtime).publish(records, AfterCalls(2))  # type: ignore[arg-type]

    assert len(first.published) == 2 and len(first.failed) == 3
    numbers = [r["dynamodb"]["SequenceNumber"] for r in records]
    assert first.failed == sorted(first.failed, key=numbers.index), "reported in stream order"
    retry = records[min(numbers.index(n) for n in first.failed) :]
    assert RoomOutbox(realtime).publish(retry).failed == []
    assert [e.data["version"] for e in room_events(realtime, "board")] == [1, 2, 3, 4]
