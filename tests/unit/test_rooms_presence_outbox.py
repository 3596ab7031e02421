"""The presence outbox on moto: member items' real stream records to `room_{id}`, exactly once,
in order per member, a failure holding back only that member's later records."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from realtime_transport import Realtime
from realtime_transport.channel import Channel
from realtime_transport.connections import Connection
from realtime_transport.errors import StoreUnavailable
from realtime_transport.rooms import Presence, PresenceRegistry
from realtime_transport.rooms.presence_outbox import PresenceOutbox, presence_change
from tests.conftest import stream_records
from tests.unit.test_rooms_presence import TABLE


@pytest.fixture
def rt(aws: Any, settings_factory: Any) -> Realtime:
    return Realtime(settings=settings_factory(CONNECTIONS_TABLE_NAME=TABLE), secret=b"unit-test-secret" * 2)


def room_events(rt: Realtime, room_id: str) -> list[Any]:
    channel = rt.channel(f"room_{room_id}")
    return channel.history(limit=500, cursor=channel.cursor(0)).items


def some_presence(rt: Realtime) -> dict[str, str]:
    """alice: join, update, leave; bob: join and stays; carol in another room: join, update."""
    r, other = Presence(rt, "R"), Presence(rt, "other")
    sessions = {"alice": r.join("a1", "alice", {"s": 1}).session}
    sessions["bob"] = r.join("b1", "bob").session
    r.join("a2", "alice")  # a second tab: no event
    r.update("a1", "alice", {"s": 2})
    sessions["carol"] = other.join("c1", "carol").session
    r.leave("a1")
    other.update("c1", "carol", {"s": "x"})
    r.leave("a2")
    return sessions


def test_every_presence_change_is_published_once_in_order(rt: Realtime, aws: Any) -> None:
    sessions = some_presence(rt)
    records = stream_records(TABLE)
    result = PresenceOutbox(rt).publish(records)
    assert result.failed == [] and len(result.published) == 6

    events = room_events(rt, "R")
    # Each member's changes in order; members are independent (they publish at once).
    alice = [e for e in events if e.data["memberId"] == "alice"]
    assert [e.type for e in alice] == ["presence.join", "presence.update", "presence.leave"]
    assert [e.type for e in events if e.data["memberId"] == "bob"] == ["presence.join"]
    assert alice[1].data == {"memberId": "alice", "member": {"s": 2}, "session": sessions["alice"], "rev": 2}
    assert alice[2].data == {"memberId": "alice", "reason": "left", "session": sessions["alice"]}
    assert all(e.metadata == {"source": "room"} for e in events)
    assert [e.type for e in room_events(rt, "other")] == ["presence.join", "presence.update"]

    again = PresenceOutbox(rt).publish(records)  # Lambda retries the batch: nothing twice
    assert again.published == [] and len(again.duplicates) == 6 and again.failed == []
    assert len(room_events(rt, "R")) == 4 and len(room_events(rt, "other")) == 2


def test_idempotency_keys_name_session_rev_and_member(rt: Realtime, aws: Any) -> None:
    import hashlib

    sessions = some_presence(rt)
    changes = [c for c in (presence_change(r, rt.name) for r in stream_records(TABLE)) if c and c.member_id == "alice"]
    digest = hashlib.sha256(b"alice").hexdigest()[:24]
    assert [c.idempotency_key for c in changes] == [
        f"presence:{sessions['alice']}:1:{digest}",
        f"presence:{sessions['alice']}:2:{digest}",
        f"presence:{sessions['alice']}:leave:{digest}",
    ]


def test_a_failure_holds_back_only_that_members_later_records(
    rt: Realtime, aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    some_presence(rt)
    records = stream_records(TABLE)
    original = Channel.publish
    failures = iter([True])

    def throttled_at_alices_update(self: Channel, **kwargs: Any) -> Any:
        if kwargs["type"] == "presence.update" and kwargs["data"]["memberId"] == "alice" and next(failures, False):
            raise StoreUnavailable("DynamoDB ProvisionedThroughputExceededException (after retries)")
        return original(self, **kwargs)

    monkeypatch.setattr(Channel, "publish", throttled_at_alices_update)
    first = PresenceOutbox(rt).publish(records)
    assert len(first.failed) == 2, "alice's update and, unpublished, her leave"
    # Members are independent (published at once): the order is per member, not across them.
    assert sorted((e.type, e.data["memberId"]) for e in room_events(rt, "R")) == [
        ("presence.join", "alice"),
        ("presence.join", "bob"),
    ], "nothing of alice overtakes her failed update"
    assert [e.type for e in room_events(rt, "other")] == ["presence.join", "presence.update"], "others go on"

    # The event source mapping retries from the lowest failed record, the rest of the batch with it.
    numbers = [r["dynamodb"]["SequenceNumber"] for r in records]
    second = PresenceOutbox(rt).publish(records[min(numbers.index(n) for n in first.failed) :])
    assert second.failed == []
    events = [(e.type, e.data["memberId"]) for e in room_events(rt, "R")]
    assert [kind for kind, member in events if member == "alice"] == [
        "presence.join",
        "presence.update",
        "presence.leave",
    ], "alice's changes in her order"
    assert [kind for kind, member in events if member == "bob"] == ["presence.join"]
    assert len(room_events(rt, "other")) == 2, "replayed, not doubled"


def test_other_items_and_namespaces_are_not_presence(rt: Realtime, aws: Any, settings_factory: Any) -> None:
    rt.connections.put_connection(Connection("c1", "alice", ("room_*",), 2_000_000_000, 1_700_000_000_000))
    rt.connections.subscribe("c1", "transport#room_R")
    presence = Presence(rt, "R")
    presence.join("c1", "alice")
    PresenceRegistry(rt).heartbeat("c1")
    presence.join("c2", "alice")  # a tab: MODIFY without a rev change
    presence.leave("c2")
    foreign = Realtime("elsewhere", settings=settings_factory(CONNECTIONS_TABLE_NAME=TABLE), secret=b"s" * 32)
    Presence(foreign, "R").join("c9", "zed")

    records = stream_records(TABLE)
    changes = [presence_change(r, rt.name) for r in records]
    assert [(c.kind, c.member_id) for c in changes if c] == [("presence.join", "alice")]
    ignored = [r["dynamodb"]["Keys"]["sk"]["S"].split("#")[0] for r, c in zip(records, changes, strict=True) if not c]
    assert {"meta", "sub", "room", "count", "member"} <= set(ignored)
    assert [c.member_id for c in (presence_change(r, "elsewhere") for r in records) if c] == ["zed"]
    result = PresenceOutbox(rt).publish(records)
    assert len(result.published) == 1 and result.failed == []


def test_a_remove_by_ttl_is_a_timeout(rt: Realtime, aws: Any) -> None:
    presence = Presence(rt, "R")
    joined = presence.join("c1", "alice")
    # What DynamoDB's TTL does to an expired item: it deletes it, with the service as the identity.
    aws.delete_item(TableName=TABLE, Key={"pk": {"S": presence.key}, "sk": {"S": "member#alice"}})
    (removed,) = [r for r in stream_records(TABLE) if r["eventName"] == "REMOVE"]
    by_ttl = copy.deepcopy(removed)
    by_ttl["userIdentity"] = {"type": "Service", "principalId": "dynamodb.amazonaws.com"}
    change = presence_change(by_ttl, rt.name)
    assert change is not None and change.data == {"memberId": "alice", "reason": "timeout", "session": joined.session}
    PresenceOutbox(rt).publish([by_ttl])
    assert [(e.type, e.data["reason"]) for e in room_events(rt, "R")] == [("presence.leave", "timeout")]


def test_a_lambda_event_record_is_read_like_a_streams_record(rt: Realtime, aws: Any) -> None:
    """The event source mapping hands over the same record with a few extra fields."""
    Presence(rt, "R").join("c1", "alice")
    (insert,) = [r for r in stream_records(TABLE) if r["dynamodb"]["Keys"]["sk"]["S"].startswith("member#")]
    lambda_record = {**insert, "eventSource": "aws:dynamodb", "eventSourceARN": "arn:aws:dynamodb:...:stream/x"}
    change = presence_change(lambda_record, rt.name)
    assert change is not None and change.kind == "presence.join" and change.rev == 1
