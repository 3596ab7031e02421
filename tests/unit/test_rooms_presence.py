"""Room presence on moto (tables from template.yaml): tabs, grace, leases, member data, paging,
requests per join, and races under DynamoDB's real transaction conflicts (the faithful substrate).

Presence events are what `PresenceOutbox` makes of the connections table's real stream records."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from realtime_transport import Realtime
from realtime_transport.connections import Connection, ConnectionStore
from realtime_transport.errors import InvalidInput
from realtime_transport.rooms import (
    MemberTooLarge,
    NotInRoom,
    Presence,
    PresenceRegistry,
)
from realtime_transport.rooms.presence_outbox import PresenceOutbox
from realtime_transport.rooms.presence_store import COUNT_SHARDS, MemberRecord
from realtime_transport.rooms.room import room
from tests.conftest import stream_records

TABLE = "test-connections"


@pytest.fixture
def rt(aws: Any, settings_factory: Any) -> Realtime:
    return Realtime(settings=settings_factory(CONNECTIONS_TABLE_NAME=TABLE), secret=b"unit-test-secret" * 2)


class Events:
    """Runs the presence outbox over the stream records not yet seen; returns the new room events."""

    def __init__(self, rt: Realtime, aws: Any) -> None:
        self.rt, self.aws = rt, aws
        self.last: str | None = None
        self.seen: dict[str, int] = {}

    def new(self, room_id: str = "R") -> list[tuple[str, dict[str, Any]]]:
        records = stream_records(TABLE, after=self.last)
        if records:
            self.last = records[-1]["dynamodb"]["SequenceNumber"]
        result = PresenceOutbox(self.rt).publish(records)
        assert result.failed == []
        channel = self.rt.channel(f"room_{room_id}")
        items = channel.history(limit=500, cursor=channel.cursor(0)).items
        fresh = items[self.seen.get(room_id, 0) :]
        self.seen[room_id] = len(items)
        return [(e.type, e.data) for e in fresh]


@pytest.fixture
def events(rt: Realtime, aws: Any) -> Events:
    return Events(rt, aws)


def member_items(aws: Any, room_id: str = "R") -> dict[str, dict[str, Any]]:
    items = aws.query(
        TableName=TABLE,
        KeyConditionExpression="pk = :pk AND begins_with(sk, :m)",
        ExpressionAttributeValues={":pk": {"S": f"room#transport#{room_id}"}, ":m": {"S": "member#"}},
        ConsistentRead=True,
    )["Items"]
    return {item["memberId"]["S"]: item for item in items}


def kinds(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [kind for kind, _ in events]


# --- tabs, leaving, grace ---------------------------------------------------------------------


def test_two_tabs_are_one_member_and_leave_only_with_the_last(rt: Realtime, aws: Any, events: Events) -> None:
    presence = room(rt, "R").presence
    first = presence.join("tab1", "alice", {"name": "Alice"})
    second = presence.join("tab2", "alice")
    assert (first.connections, second.connections) == (1, 2)
    assert second.session == first.session and second.rev == 1 and second.member == {"name": "Alice"}
    assert list(member_items(aws)) == ["alice"] and presence.count() == 1
    assert set(member_items(aws)["alice"]["connections"]["SS"]) == {"tab1", "tab2"}
    joined = events.new()
    assert kinds(joined) == ["presence.join"]
    assert joined[0][1] == {"memberId": "alice", "member": {"name": "Alice"}, "session": first.session, "rev": 1}

    assert presence.leave("tab1") is True
    assert presence.count() == 1 and presence.members().items[0].connections == 1
    assert events.new() == [], "a tab closing is not a leave"

    assert presence.leave("tab2") is True
    assert member_items(aws) == {} and presence.count() == 0
    assert events.new() == [("presence.leave", {"memberId": "alice", "reason": "left", "session": first.session})]
    assert presence.leave("tab2") is False, "not in the room any more"
    assert room(rt, "R").get()["memberCount"] == 0


def test_a_reload_within_grace_is_neither_leave_nor_join(rt: Realtime, aws: Any, events: Events) -> None:
    presence, registry = Presence(rt, "R"), PresenceRegistry(rt)
    joined = presence.join("old-tab", "alice", {"cursor": [1, 2]})
    assert registry.connection_gone("old-tab") == ["R"]
    in_grace = presence.members().items
    assert [(m.member_id, m.connections) for m in in_grace] == [("alice", 0)], "listed during its grace"
    assert presence.count() == 1

    reloaded = presence.join("new-tab", "alice")
    assert reloaded.session == joined.session and reloaded.connections == 1
    assert "deadline" not in member_items(aws)["alice"], "the rejoin ended the grace period"
    report = registry.sweep(time.time(), probe=lambda _: None)
    assert report.deleted == [] and report.timed_out == []
    assert kinds(events.new()) == ["presence.join"], "one join, no leave, no second join"

    # The new tab goes too, and nobody comes back: after the grace period the member leaves.
    registry.connection_gone("new-tab")
    assert registry.sweep(time.time(), probe=lambda _: None).deleted == []
    assert presence.count() == 1
    grace = rt.settings.presence_grace_seconds
    report = registry.sweep(time.time() + grace + 1, probe=lambda _: None)
    assert report.deleted == [("R", "alice")]
    assert member_items(aws) == {} and presence.count() == 0
    assert events.new() == [
        ("presence.leave", {"memberId": "alice", "reason": "disconnected", "session": joined.session})
    ]


def test_a_lease_that_ran_out_is_a_timeout_unless_the_socket_was_active(rt: Realtime, aws: Any, events: Events) -> None:
    presence, registry = Presence(rt, "R"), PresenceRegistry(rt)
    presence.join("vanished", "alice")
    presence.join("quiet", "bob")
    events.new()
    lease = rt.settings.presence_lease_seconds
    now = time.time() + lease + 1
    probed: list[str] = []

    def probe(connection_id: str) -> float | None:
        probed.append(connection_id)
        return None if connection_id == "vanished" else now - 2  # active 2 s ago, no ping (say, sending)

    report = registry.sweep(now, probe)
    assert sorted(probed) == ["quiet", "vanished"]
    assert report.timed_out == [("R", "vanished")] and report.renewed == 1
    assert [m.member_id for m in presence.members().items] == ["bob"] and presence.count() == 1
    leave = events.new()
    assert [(kind, data["memberId"], data["reason"]) for kind, data in leave] == [
        ("presence.leave", "alice", "timeout")
    ]

    membership = presence.store.membership("quiet", presence.membership_key)
    assert membership is not None and membership.deadline == pytest.approx(now - 2 + lease)
    assert registry.sweep(now, probe).examined == 0, "renewed past now: not due again"
    assert events.new() == []


class PassesAfter:
    """A deadline that passes after `n` checks: the sweeper's invocation running out of time."""

    def __init__(self, n: int) -> None:
        self.left = n

    def passed(self) -> bool:
        self.left -= 1
        return self.left < 0


def test_a_sweep_out_of_time_stops_and_leaves_the_rest_due(rt: Realtime) -> None:
    presence, registry = Presence(rt, "R"), PresenceRegistry(rt)
    for n in range(3):
        presence.join(f"c{n}", f"m{n}")
    now = time.time() + rt.settings.presence_lease_seconds + 1

    first = registry.sweep(now, lambda _: None, PassesAfter(1))  # type: ignore[arg-type]

    assert first.stopped and len(first.timed_out) == 1 and presence.count() == 2
    second = registry.sweep(now, lambda _: None)
    assert not second.stopped and len(second.timed_out) == 2 and presence.count() == 0


def test_heartbeat_moves_every_lease_of_the_connection(rt: Realtime, monkeypatch: pytest.MonkeyPatch) -> None:
    from realtime_transport import clock

    registry = PresenceRegistry(rt)
    for room_id in ("A", "B"):
        Presence(rt, room_id).join("c1", "alice")
    Presence(rt, "C").join("c2", "bob")
    before = {m.room_key: m.deadline for m in registry.store.memberships("c1")}
    started = clock.now_ms()
    monkeypatch.setattr(clock, "now_ms", lambda: started + 5_000)  # the library's clock, 5 s on
    assert registry.heartbeat("c1") == 2
    after = {m.room_key: m.deadline for m in registry.store.memberships("c1")}
    assert after.keys() == before.keys() and all(after[k] > before[k] for k in before)
    assert registry.heartbeat("nobody") == 0
    other = registry.store.memberships("c2")
    assert len(other) == 1 and other[0].deadline < min(after.values()), "another connection's lease is untouched"


# --- member data ------------------------------------------------------------------------------


def test_a_data_change_is_one_update_and_the_same_data_writes_nothing(rt: Realtime, aws: Any, events: Events) -> None:
    presence = Presence(rt, "R")
    joined = presence.join("c1", "alice", {"status": "here"})
    events.new()
    changed = presence.update("c1", "alice", {"status": "away"})
    assert changed.rev == 2 and changed.session == joined.session and changed.member == {"status": "away"}
    assert events.new() == [
        ("presence.update", {"memberId": "alice", "member": {"status": "away"}, "session": joined.session, "rev": 2})
    ]

    records_before = len(stream_records(TABLE))
    same = presence.update("c1", "alice", {"status": "away"})
    assert same.rev == 2
    assert len(stream_records(TABLE)) == records_before, "same data: no write at all"

    rejoined = presence.join("c2", "alice", {"status": "away"})  # a new tab with the same data
    assert rejoined.rev == 2 and rejoined.connections == 2
    again = presence.join("c3", "alice", {"status": "busy"})  # a new tab with new data
    assert again.rev == 3
    assert kinds(events.new()) == ["presence.update"], "exactly one update, never leave + join"


def test_update_from_a_connection_not_in_the_room_is_not_joined(rt: Realtime) -> None:
    presence = Presence(rt, "R")
    with pytest.raises(NotInRoom) as refused:
        presence.update("c1", "alice", {"a": 1})
    assert refused.value.code == "not_joined"
    presence.join("c1", "alice")
    with pytest.raises(NotInRoom):
        presence.update("c2", "alice", {"a": 1})
    presence.leave("c1")
    with pytest.raises(NotInRoom):
        presence.update("c1", "alice", {"a": 1})


def test_member_data_over_1_kib_or_not_an_object_is_refused_and_nothing_is_stored(rt: Realtime, aws: Any) -> None:
    presence = Presence(rt, "R")
    with pytest.raises(MemberTooLarge) as too_large:
        presence.join("c1", "alice", {"bio": "x" * 1020})
    assert too_large.value.code == "member_too_large" and too_large.value.field == "member"
    exactly = {"b": "x" * (1024 - len('{"b":""}'))}
    assert presence.join("c2", "bob", exactly).member == exactly, "1024 bytes is allowed"
    presence.leave("c2")
    for bad in (["not", "an", "object"], "text", 3, {"n": float("nan")}, {"s": {1, 2}}):
        with pytest.raises(InvalidInput) as invalid:
            presence.join("c1", "alice", bad)  # type: ignore[arg-type]
        assert invalid.value.field == "member"
    with pytest.raises(MemberTooLarge):
        presence.update("c1", "alice", {"bio": "é" * 600})  # 1200 bytes in UTF-8
    assert (
        aws.scan(
            TableName=TABLE, FilterExpression="begins_with(sk, :m)", ExpressionAttributeValues={":m": {"S": "member#"}}
        )["Items"]
        == []
    )
    assert presence.store.memberships("c1") == []


# --- a large room -----------------------------------------------------------------------------


def seed_members(presence: Presence, n: int, prefix: str = "m") -> list[str]:
    """n members as join creates them (one transaction each: the member and its count)."""
    ids = [f"{prefix}{i:04d}" for i in range(n)]
    for i, member_id in enumerate(ids):
        record = MemberRecord(member_id, {"i": i}, f"{i:013d}.00000000", 1, i, frozenset({f"conn-{member_id}"}))
        presence.store.create_member(presence.key, record, 4_102_444_800)
    return ids


def test_a_thousand_members_page_in_order_each_exactly_once(rt: Realtime) -> None:
    presence = Presence(rt, "big")
    ids = seed_members(presence, 1000)
    assert presence.count() == 1000
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = presence.members(limit=128, cursor=cursor)
        pages += 1
        seen.extend(m.member_id for m in page.items)
        if not page.has_more:
            assert page.next_cursor is None
            break
        assert page.next_cursor is not None
        cursor = page.next_cursor
    assert seen == sorted(ids) and pages == 8
    whole = presence.members(limit=1000)
    assert [m.member_id for m in whole.items] == seen and not whole.has_more and whole.next_cursor is None
    assert presence.members(limit=999).has_more

    for bad in ("!!!", "", "bTAwMDE=", "bTAwMDE===", 5):  # not base64url / padded / not canonical / not text
        with pytest.raises(InvalidInput) as invalid:
            presence.members(cursor=bad)  # type: ignore[arg-type]
        assert invalid.value.field == "cursor"
    for limit in (0, 1001, True, "10"):
        with pytest.raises(InvalidInput):
            presence.members(limit=limit)  # type: ignore[arg-type]


def count_requests(presence: Presence, action: Any) -> Counter[str]:
    calls: Counter[str] = Counter()

    def count(event_name: str, **_: Any) -> None:
        calls[event_name.rsplit(".", 1)[-1]] += 1

    events = presence.store.client.meta.events
    events.register("before-call.dynamodb", count)
    try:
        action()
    finally:
        events.unregister("before-call.dynamodb", count)
    return calls


def test_the_requests_of_a_join_do_not_grow_with_the_room(rt: Realtime) -> None:
    small, large = Presence(rt, "small"), Presence(rt, "large")
    seed_members(small, 10)
    seed_members(large, 1000)
    per_room = {}
    for presence in (small, large):
        per_room[presence.room_id] = (
            count_requests(presence, lambda p=presence: p.join("new-conn", "newcomer", {"a": 1})),
            count_requests(presence, lambda p=presence: p.join("second-tab", "newcomer")),
            count_requests(presence, lambda p=presence: p.update("second-tab", "newcomer", {"a": 2})),
            count_requests(presence, lambda p=presence: p.leave("second-tab")),
            count_requests(presence, lambda p=presence: p.leave("new-conn")),
        )
    assert per_room["small"] == per_room["large"]
    first_join = per_room["large"][0]
    assert first_join == Counter({"PutItem": 1, "UpdateItem": 1, "TransactWriteItems": 1})
    assert sum(first_join.values()) == 3 and sum(per_room["large"][1].values()) == 2
    assert small.count() == 10 and large.count() == 1000


# --- races, under DynamoDB's real transaction conflicts ----------------------------------------


def test_twenty_concurrent_joins_leave_exactly_the_right_members_and_count(
    rt: Realtime, aws: Any, faithful: Any
) -> None:
    from realtime_devstack import faithful as substrate

    faithful(seed=11, transaction_window_ms=30, request_jitter_ms=3)
    presence = Presence(rt, "R")
    joins = [(f"conn-{i}", f"member-{i}") for i in range(14)] + [(f"shared-{i}", "shared") for i in range(6)]
    start = threading.Barrier(len(joins))

    def join(args: tuple[str, str]) -> Any:
        start.wait()
        return presence.join(*args)

    with ThreadPoolExecutor(len(joins)) as pool:
        results = list(pool.map(join, joins))
    assert substrate.injected().get("TransactionConflict", 0) > 0, "the joins must really have conflicted"
    faithful()  # judge what was stored with the faults off
    items = member_items(aws)
    assert sorted(items) == sorted({m for _, m in joins})
    assert set(items["shared"]["connections"]["SS"]) == {f"shared-{i}" for i in range(6)}
    assert presence.count() == 15
    assert len({r.session for r in results if r.member_id == "shared"}) == 1, "one member item, one session"
    shards = aws.query(
        TableName=TABLE,
        KeyConditionExpression="pk = :pk AND begins_with(sk, :c)",
        ExpressionAttributeValues={":pk": {"S": presence.key}, ":c": {"S": "count#"}},
    )["Items"]
    assert len(shards) <= COUNT_SHARDS and sum(int(s["n"]["N"]) for s in shards) == 15


def test_a_join_racing_the_sweepers_delete_never_loses_the_member_nor_the_count(
    rt: Realtime, aws: Any, faithful: Any
) -> None:
    """Each member in its grace period is rejoined while the sweeper deletes it (the sweeper's own
    conditional delete, on the faithful substrate): whichever goes first, the member ends present
    with its new connection, and counted once."""
    presence, registry = Presence(rt, "R"), PresenceRegistry(rt)
    members = [f"m{i:02d}" for i in range(16)]
    sessions = {}
    for member_id in members:
        sessions[member_id] = presence.join(f"old-{member_id}", member_id).session
        registry.connection_gone(f"old-{member_id}")  # all in their grace period
    assert presence.count() == len(members)
    faithful(seed=7, transaction_window_ms=20, request_jitter_ms=6)
    after_grace = time.time() + rt.settings.presence_grace_seconds + 1
    start = threading.Barrier(2 * len(members))

    def rejoin(member_id: str) -> Any:
        start.wait()
        return presence.join(f"new-{member_id}", member_id)

    def sweep_delete(member_id: str) -> bool:
        start.wait()
        return presence.store.delete_member(presence.key, member_id, due_by=after_grace)

    with ThreadPoolExecutor(2 * len(members)) as pool:
        deletes = {m: pool.submit(sweep_delete, m) for m in members}
        rejoins = {m: pool.submit(rejoin, m) for m in members}
        deleted = {m for m, f in deletes.items() if f.result()}
        rejoined = {m: f.result() for m, f in rejoins.items()}
    faithful()
    items = member_items(aws)
    assert sorted(items) == members, "every member rejoined: none may be missing"
    for member_id in members:
        assert items[member_id]["connections"]["SS"] == [f"new-{member_id}"]
        assert "deadline" not in items[member_id]
        # Deleted first: the join created it anew (a leave, then a join); else the grace simply ended.
        expected_new_session = member_id in deleted
        assert (rejoined[member_id].session != sessions[member_id]) == expected_new_session
    assert presence.count() == len(members), "the count is never off by one"
    assert 0 < len(deleted) < len(members), f"both orders must have happened: {sorted(deleted)}"

    # And the sweep itself, now that nobody is leaving: nothing is due, nothing is deleted.
    assert registry.sweep(after_grace, probe=lambda _: None).deleted == []
    assert presence.count() == len(members)


# --- the connections table's other items ------------------------------------------------------


def test_subscriptions_are_only_sub_items_and_write_round_trips(rt: Realtime) -> None:
    store: ConnectionStore = rt.connections
    store.put_connection(Connection("c1", "alice", ("room_*",), 2_000_000_000, 1_700_000_000_000, write=("room_R",)))
    store.subscribe("c1", "transport#room_R")
    Presence(rt, "R").join("c1", "alice")
    assert store.subscriptions("c1") == ["transport#room_R"], "a room membership is not a subscription"
    connection = store.connection("c1")
    assert connection is not None and connection.write == ("room_R",)
    PresenceRegistry(rt).connection_gone("c1")
    assert store.delete_connection("c1") == 2
    assert store.connection("c1") is None and Presence(rt, "R").store.memberships("c1") == []
    store.put_connection(Connection("c2", "bob", ("feed_*",), 2_000_000_000, 1_700_000_000_000))
    assert store.connection("c2") is not None and store.connection("c2").write == ()  # type: ignore[union-attr]


def test_presence_settings_are_validated() -> None:
    from realtime_transport import Settings
    from realtime_transport.errors import ConfigurationError

    defaults = Settings.from_env({})
    assert (defaults.presence_grace_seconds, defaults.presence_lease_seconds, defaults.presence_sweep_seconds) == (
        10,
        30,
        10,
    )
    assert Settings.from_env({"PRESENCE_LEASE_SECONDS": "45"}).presence_lease_seconds == 45
    for name in ("PRESENCE_GRACE_SECONDS", "PRESENCE_LEASE_SECONDS", "PRESENCE_SWEEP_SECONDS"):
        with pytest.raises(ConfigurationError):
            Settings.from_env({name: "0"})
