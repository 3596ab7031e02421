"""The room actions of the WebSocket (join, leave, members, update, patch) on in-process moto.

Room events reach `room_R` only through the outboxes (the tables' streams), so these tests run
both outboxes over the real stream records of moto's tables, as the deployed consumer would.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest

from realtime_transport import Realtime, tokens
from realtime_transport.live import LiveService
from realtime_transport.rooms.outbox import RoomOutbox
from realtime_transport.rooms.patches import apply_merge_patch
from realtime_transport.rooms.presence import Presence
from realtime_transport.rooms.presence_outbox import PresenceOutbox
from realtime_transport.rooms.room import room
from tests.conftest import stream_records

from .doubles import RecordingPusher

SECRET = b"unit-test-secret-long-enough-for-hs256"


@pytest.fixture
def live(aws: Any, settings_factory: Any) -> tuple[LiveService, RecordingPusher]:
    realtime = Realtime(settings=settings_factory(CONNECTIONS_TABLE_NAME="test-connections"), secret=SECRET)
    pusher = RecordingPusher()
    return LiveService(realtime, pusher), pusher


def connect(
    service: LiveService,
    connection_id: str,
    sub: str,
    channels: list[str] | None = None,
    write: list[str] | None = None,
) -> None:
    service.connect(
        connection_id, tokens.issue(SECRET, sub=sub, channels=channels or ["room_*"], write=write, ttl_seconds=600)
    )


def send(service: LiveService, connection_id: str, message: dict[str, Any] | str) -> None:
    service.handle(connection_id, message if isinstance(message, str) else json.dumps(message))


def ask(
    service: LiveService, pusher: RecordingPusher, connection_id: str, message: dict[str, Any] | str
) -> dict[str, Any]:
    """Send one action; its answer (the last frame it produced)."""
    send(service, connection_id, message)
    frames = pusher.take(connection_id)
    assert frames, f"no answer to {message}"
    return frames[-1]


def run_outboxes(realtime: Realtime) -> None:
    """Publish every room change committed so far (a replay publishes nothing twice)."""
    assert RoomOutbox(realtime).publish(stream_records("test-events")).failed == []
    assert PresenceOutbox(realtime).publish(stream_records("test-connections")).failed == []


def room_events(realtime: Realtime, room_id: str, cursor: str | None = None) -> list[Any]:
    channel = realtime.channel(f"room_{room_id}")
    return channel.history(limit=500, cursor=cursor or channel.cursor(0)).items


def presence_events(realtime: Realtime, room_id: str) -> list[tuple[str, str, str | None]]:
    return [
        (e.type, e.data["memberId"], e.data.get("reason"))
        for e in room_events(realtime, room_id)
        if e.type.startswith("presence.")
    ]


class RoomCopy:
    """A client's copy of a room, kept by the rules the protocol states (idempotent application)."""

    def __init__(self, joined: dict[str, Any]) -> None:
        self.members = {m["memberId"]: m for m in joined["members"]}
        self.held = {m["memberId"]: (m["session"], m["rev"]) for m in joined["members"]}
        self.metadata = joined["metadata"]
        self.version = joined["state"]["version"]
        self.doc = joined["state"]["doc"]

    def apply(self, event: dict[str, Any]) -> None:
        kind, data = event["type"], event["data"]
        if kind in {"presence.join", "presence.update"}:
            mark = (data["session"], data["rev"])
            if self.held.get(data["memberId"], ("", 0)) < mark:
                self.held[data["memberId"]] = mark
                self.members[data["memberId"]] = {"memberId": data["memberId"], "member": data["member"]}
        elif kind == "presence.leave":
            if self.held.get(data["memberId"], ("", 0))[0] <= data["session"]:
                self.held[data["memberId"]] = (data["session"], 1 << 62)
                self.members.pop(data["memberId"], None)
        elif kind in {"room.state", "room.metadata"} and data["version"] == self.version + 1:
            self.version = data["version"]
            if kind == "room.metadata":
                self.metadata = data["metadata"]
            elif "patch" in data:
                self.doc = apply_merge_patch(self.doc, data["patch"])
            else:
                import jsonpatch  # type: ignore[import-untyped]

                self.doc = jsonpatch.apply_patch(self.doc, data["operations"])


def events_of(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for frame in frames:
        if frame["type"] == "event":
            found.append(frame["event"])
        elif frame["type"] == "events":
            found.extend(frame["events"])
    return found


# --- join ------------------------------------------------------------------------------------


def test_join_answers_a_snapshot_and_subscribes_to_the_rooms_channel(live: tuple[LiveService, RecordingPusher]) -> None:
    service, pusher = live
    room(service.realtime, "board").patch(0, merge_patch={"title": "Q4"})
    room(service.realtime, "board").set_metadata({"topic": "planning"})
    connect(service, "c1", "ana")

    joined = ask(service, pusher, "c1", {"action": "join", "room": "board", "member": {"name": "Ana"}})

    assert joined["type"] == "joined" and joined["room"] == "board"
    assert joined["self"]["memberId"] == "ana" and joined["self"]["member"] == {"name": "Ana"}
    assert [m["memberId"] for m in joined["members"]] == ["ana"] and joined["memberCount"] == 1
    assert joined["state"] == {"version": 2, "doc": {"title": "Q4"}}
    assert joined["metadata"] == {"topic": "planning"}
    assert joined["resumed"] is False and joined["truncated"] is False
    assert service.realtime.channel("room_board").key in service.realtime.connections.subscriptions("c1")
    # The room's two changes are not on room_board yet (the outbox has not run): the head is 0.
    assert service.realtime.channel("room_board").decode_cursor(joined["cursor"]) == joined["position"] == 0


def test_a_room_outside_the_token_is_refused_and_nothing_is_written(live: tuple[LiveService, RecordingPusher]) -> None:
    service, pusher = live
    connect(service, "c1", "ana", channels=["room_mine*"])

    error = ask(service, pusher, "c1", {"action": "join", "room": "theirs"})

    assert error == {**error, "type": "error", "code": "forbidden", "room": "theirs"}
    assert Presence(service.realtime, "theirs").count() == 0
    assert service.realtime.connections.subscriptions("c1") == []
    for action in (
        {"action": "members", "room": "theirs"},
        {"action": "patch", "room": "theirs", "version": 0, "patch": {"a": 1}},
    ):
        assert ask(service, pusher, "c1", action)["code"] == "forbidden"
    assert room(service.realtime, "theirs").state().version == 0


def test_two_tabs_of_one_member_are_one_member_until_the_last_leaves(live: tuple[LiveService, RecordingPusher]) -> None:
    service, pusher = live
    connect(service, "tab1", "ana")
    connect(service, "tab2", "ana")
    connect(service, "bob", "bob")
    ask(service, pusher, "tab1", {"action": "join", "room": "r"})
    second = ask(service, pusher, "tab2", {"action": "join", "room": "r"})
    assert second["memberCount"] == 1 and second["self"]["connections"] == 2
    ask(service, pusher, "bob", {"action": "join", "room": "r"})

    assert ask(service, pusher, "tab1", {"action": "leave", "room": "r"}) == {"type": "left", "room": "r"}
    run_outboxes(service.realtime)
    assert sorted(presence_events(service.realtime, "r")) == [
        ("presence.join", "ana", None),
        ("presence.join", "bob", None),
    ]

    ask(service, pusher, "tab2", {"action": "leave", "room": "r"})
    run_outboxes(service.realtime)
    assert presence_events(service.realtime, "r")[-1] == ("presence.leave", "ana", "left")
    assert Presence(service.realtime, "r").count() == 1


def test_members_page_through_the_websocket(live: tuple[LiveService, RecordingPusher]) -> None:
    service, pusher = live
    for n in range(7):
        connect(service, f"c{n}", f"m{n}")
        ask(service, pusher, f"c{n}", {"action": "join", "room": "r"})
    seen: list[str] = []
    cursor = None
    while True:
        page = ask(
            service,
            pusher,
            "c0",
            {"action": "members", "room": "r", "limit": 3, **({"cursor": cursor} if cursor else {})},
        )
        seen += [m["memberId"] for m in page["items"]]
        if not page["hasMore"]:
            break
        cursor = page["nextCursor"]
    assert sorted(seen) == [f"m{n}" for n in range(7)] and len(seen) == 7


def test_update_replaces_member_data_as_one_presence_update(live: tuple[LiveService, RecordingPusher]) -> None:
    service, pusher = live
    connect(service, "c1", "ana")
    ask(service, pusher, "c1", {"action": "join", "room": "r", "member": {"status": "here"}})

    updated = ask(service, pusher, "c1", {"action": "update", "room": "r", "member": {"status": "away"}})

    assert updated["type"] == "updated" and updated["self"]["member"] == {"status": "away"}
    run_outboxes(service.realtime)
    assert presence_events(service.realtime, "r") == [("presence.join", "ana", None), ("presence.update", "ana", None)]


# --- patch ------------------------------------------------------------------------------------


def test_a_patch_needs_the_write_claim(live: tuple[LiveService, RecordingPusher]) -> None:
    service, pusher = live
    connect(service, "reader", "ana")
    connect(service, "writer", "bob", write=["room_*"])

    refused = ask(service, pusher, "reader", {"action": "patch", "room": "r", "version": 0, "patch": {"a": 1}})
    patched = ask(service, pusher, "writer", {"action": "patch", "room": "r", "version": 0, "patch": {"a": 1}})

    assert refused["code"] == "forbidden" and refused["room"] == "r"
    assert patched == {"type": "patched", "room": "r", "version": 1}
    run_outboxes(service.realtime)
    (event,) = room_events(service.realtime, "r")
    assert event.type == "room.state" and event.data["by"] == "bob" and event.data["paths"] == ["/a"]


def _race(service: LiveService, pusher: RecordingPusher, patches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for n in range(len(patches)):
        connect(service, f"w{n}", f"writer{n}", write=["room_*"])
    barrier = threading.Barrier(len(patches))

    def run(n: int) -> None:
        barrier.wait()
        send(service, f"w{n}", {"action": "patch", "room": "race", "version": 0, **patches[n]})

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(patches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [pusher.take(f"w{n}")[-1] for n in range(len(patches))]


def test_twenty_patches_of_one_path_on_one_version_one_wins(live: tuple[LiveService, RecordingPusher]) -> None:
    service, pusher = live
    answers = _race(service, pusher, [{"patch": {"title": f"by {n}"}} for n in range(20)])

    wins = [n for n, answer in enumerate(answers) if answer["type"] == "patched"]
    conflicts = [answer for answer in answers if answer.get("code") == "conflict"]
    assert len(wins) == 1 and len(conflicts) == 19
    assert all(c["details"]["paths"] == ["/title"] and c["details"]["version"] == 1 for c in conflicts)
    assert room(service.realtime, "race").state().doc == {"title": f"by {wins[0]}"}


def test_twenty_patches_of_distinct_paths_on_one_version_all_apply(live: tuple[LiveService, RecordingPusher]) -> None:
    service, pusher = live
    answers = _race(service, pusher, [{"operations": [{"op": "add", "path": f"/k{n}", "value": n}]} for n in range(20)])

    assert [answer["type"] for answer in answers] == ["patched"] * 20
    assert sorted(answer["version"] for answer in answers) == list(range(1, 21))
    assert room(service.realtime, "race").state().doc == {f"k{n}": n for n in range(20)}


def test_a_failed_json_patch_test_changes_nothing(live: tuple[LiveService, RecordingPusher]) -> None:
    service, pusher = live
    connect(service, "w", "bob", write=["room_*"])
    ask(service, pusher, "w", {"action": "patch", "room": "r", "version": 0, "patch": {"n": 1}})
    operations = [{"op": "replace", "path": "/n", "value": 2}, {"op": "test", "path": "/n", "value": 99}]

    error = ask(service, pusher, "w", {"action": "patch", "room": "r", "version": 1, "operations": operations})

    assert error["code"] == "patch_test_failed" and error["room"] == "r"
    assert room(service.realtime, "r").state().version == 1 and room(service.realtime, "r").state().doc == {"n": 1}


BAD_ACTIONS: list[tuple[dict[str, Any], str]] = [
    ({"action": "join", "room": "r", "member": {"bio": "x" * 2000}}, "member_too_large"),
    ({"action": "join", "room": "r", "member": ["not", "an", "object"]}, "invalid_message"),
    ({"action": "join", "room": "bad room id"}, "invalid_message"),
    ({"action": "join", "room": "r", "colour": "red"}, "invalid_message"),
    ({"action": "join", "room": "r", "cursor": "not-a-cursor"}, "invalid_cursor"),
    ({"action": "patch", "room": "r", "version": "0", "patch": {"a": 1}}, "invalid_message"),
    ({"action": "patch", "room": "r", "version": 0.5, "patch": {"a": 1}}, "invalid_message"),
    ({"action": "patch", "room": "r", "version": True, "patch": {"a": 1}}, "invalid_message"),
    ({"action": "patch", "room": "r", "version": -1, "patch": {"a": 1}}, "invalid_request"),
    ({"action": "patch", "room": "r", "version": 0}, "invalid_request"),
    ({"action": "patch", "room": "r", "version": 0, "patch": {"a": 1}, "operations": []}, "invalid_request"),
    ({"action": "patch", "room": "r", "version": 0, "operations": [{"op": "jump", "path": "/a"}]}, "invalid_request"),
    ({"action": "patch", "room": "r", "version": 0, "patch": {"big": "x" * 70_000}}, "state_too_large"),
    ({"action": "update", "room": "r", "member": {"a": 1}}, "not_joined"),
    ({"action": "members", "room": "r", "cursor": "!!"}, "invalid_request"),
    ({"action": "members", "room": "r", "limit": 5000}, "invalid_message"),
]


@pytest.mark.parametrize(
    ("message", "code"), BAD_ACTIONS, ids=[f"{m['action']}-{c}-{n}" for n, (m, c) in enumerate(BAD_ACTIONS)]
)
def test_every_bad_room_action_is_refused_clearly_and_changes_nothing(
    live: tuple[LiveService, RecordingPusher], message: dict[str, Any], code: str
) -> None:
    service, pusher = live
    connect(service, "c1", "ana", write=["room_*"])

    error = ask(service, pusher, "c1", message)

    assert error["type"] == "error" and error["code"] == code, error
    assert error["message"]
    assert room(service.realtime, "r").state().version == 0
    assert Presence(service.realtime, "r").count() == 0
    assert service.realtime.connections.subscriptions("c1") == []


# --- reconnect ---------------------------------------------------------------------------------


def test_a_rejoin_with_a_cursor_repairs_presence_metadata_and_state_from_the_channel(
    live: tuple[LiveService, RecordingPusher],
) -> None:
    service, pusher = live
    realtime = service.realtime
    connect(service, "ana1", "ana")
    connect(service, "bob", "bob", write=["room_*"])
    ask(service, pusher, "bob", {"action": "join", "room": "r", "member": {"n": "Bob"}})
    run_outboxes(realtime)
    first = ask(service, pusher, "ana1", {"action": "join", "room": "r"})
    copy = RoomCopy(first)
    service.disconnect("ana1")  # the network drops; ana is in her grace period

    for version in range(3):
        ask(service, pusher, "bob", {"action": "patch", "room": "r", "version": version, "patch": {"step": version}})
    room(realtime, "r").set_metadata({"topic": "rejoined"})
    connect(service, "cy", "cy")
    ask(service, pusher, "cy", {"action": "join", "room": "r", "member": {"n": "Cy"}})
    run_outboxes(realtime)

    connect(service, "ana2", "ana")
    send(service, "ana2", {"action": "join", "room": "r", "cursor": first["cursor"]})
    frames = pusher.take("ana2")
    joined = frames[-1]
    assert joined["type"] == "joined" and joined["resumed"] is True and "state" not in joined
    assert joined["position"] == max(event["seq"] for event in events_of(frames))
    for event in events_of(frames):
        copy.apply(event)
    run_outboxes(realtime)

    server = room(realtime, "r").state()
    assert (copy.version, copy.doc, copy.metadata) == (server.version, server.doc, {"topic": "rejoined"})
    assert sorted(copy.members) == sorted(m.member_id for m in Presence(realtime, "r").members(limit=100).items)
    assert sorted(copy.members) == ["ana", "bob", "cy"]
    # Back within the grace period: no leave, no second join of ana.
    assert [e for e in presence_events(realtime, "r") if e[1] == "ana"] == [("presence.join", "ana", None)]


def test_a_snapshot_newer_than_its_cursor_applies_idempotently(live: tuple[LiveService, RecordingPusher]) -> None:
    """Events after `cursor` that the snapshot already reflects change nothing when applied."""
    service, pusher = live
    connect(service, "w", "bob", write=["room_*"])
    ask(service, pusher, "w", {"action": "join", "room": "r"})
    ask(service, pusher, "w", {"action": "patch", "room": "r", "version": 0, "patch": {"a": 1}})
    connect(service, "ana", "ana")
    joined = ask(service, pusher, "ana", {"action": "join", "room": "r"})  # before the outbox ran
    copy = RoomCopy(joined)
    run_outboxes(service.realtime)
    for event in room_events(service.realtime, "r", joined["cursor"]):
        copy.apply(event.model_dump(mode="json"))
    assert (copy.version, copy.doc) == (1, {"a": 1}) and sorted(copy.members) == ["ana", "bob"]


def test_a_ping_renews_the_room_leases(
    live: tuple[LiveService, RecordingPusher], monkeypatch: pytest.MonkeyPatch
) -> None:
    service, pusher = live
    connect(service, "c1", "ana")
    ask(service, pusher, "c1", {"action": "join", "room": "r"})
    renewed: list[str] = []
    original: Callable[[str], Any] = service.rooms.registry.heartbeat
    monkeypatch.setattr(service.rooms.registry, "heartbeat", lambda cid: (renewed.append(cid), original(cid))[1])

    pong = ask(service, pusher, "c1", {"action": "ping"})

    assert pong["type"] == "pong" and renewed == ["c1"]
