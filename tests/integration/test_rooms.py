"""Rooms over real sockets: presence through the outbox, the sweeper and the grace period.

Each stack here runs with short presence timings (grace 2 s, lease 3 s, a sweep every second),
so the bounds are seconds instead of a minute; the code paths are the deployed ones: `$disconnect`
or a vanished socket, the presence sweeper on its schedule, the rooms outbox on both streams.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import websockets

from realtime_transport import tokens
from realtime_transport.secrets import DEVELOPMENT_SECRET

from .conftest import INDEX_LAG_SECONDS, Http, Stack, start_stack, stop_stack

pytestmark = pytest.mark.integration
SECRET = DEVELOPMENT_SECRET.encode()
GRACE, LEASE, SWEEP = 2, 3, 1
TIMINGS = (
    "--presence-grace-seconds",
    str(GRACE),
    "--presence-lease-seconds",
    str(LEASE),
    "--presence-sweep-seconds",
    str(SWEEP),
)
# From a socket's last sign of life to its leave: the lease, then the next sweep, plus the index's
# lag and the outbox's and fan-out's stream polling; generous, the stack shares two cores.
BOUND = LEASE + SWEEP + 6


@pytest.fixture(scope="module")
def rooms_stack() -> Iterator[Stack]:
    running = start_stack("--faithful", *TIMINGS)
    yield running
    assert stop_stack(running) == 0


@pytest.fixture(scope="module")
def vanishing_stack() -> Iterator[Stack]:
    """$disconnect is best effort on AWS: here it never runs, so only the lease can notice."""
    running = start_stack("--faithful", *TIMINGS, "--fault", "disconnect:lost:1.0")
    yield running
    assert stop_stack(running) == 0


def a_room() -> str:
    return f"r-{uuid.uuid4().hex[:10]}"


class Member:
    """One WebSocket connection of a member, recording every frame."""

    def __init__(self, ws: Any, name: str) -> None:
        self.ws = ws
        self.name = name
        self.frames: list[dict[str, Any]] = []
        # What the browser client does in a room: ping well within the lease.
        self.heartbeat = asyncio.create_task(self._ping_every(LEASE / 3))

    async def _ping_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            await self.send({"action": "ping"})

    async def close(self) -> None:
        self.heartbeat.cancel()
        await self.ws.close()

    def vanish(self) -> None:
        """Gone without a close frame (a laptop lid, a dead network): the TCP connection just ends."""
        self.heartbeat.cancel()
        self.ws.transport.abort()

    @classmethod
    async def open(cls, stack: Stack, name: str, write: bool = False) -> Member:
        token = tokens.issue(SECRET, sub=name, channels=["room_*"], write=["room_*"] if write else None)
        return cls(await websockets.connect(f"{stack.ws_url}?token={token}"), name)

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def until(self, predicate: Any, timeout: float = 15) -> dict[str, Any]:
        for frame in self.frames:
            if predicate(frame):
                return frame
        deadline = time.monotonic() + timeout
        while True:
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), max(0.01, deadline - time.monotonic())))
            self.frames.append(frame)
            if predicate(frame):
                return frame

    async def join(self, room: str, member: dict[str, Any] | None = None) -> dict[str, Any]:
        await self.send({"action": "join", "room": room, **({"member": member} if member else {})})
        joined = await self.until(lambda f: f["type"] in {"joined", "error"} and f.get("room") == room)
        await asyncio.sleep(INDEX_LAG_SECONDS)  # until the fan-out's index shows the subscription
        return joined

    async def drain(self, seconds: float) -> None:
        """Record what arrives for `seconds`."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                self.frames.append(json.loads(await asyncio.wait_for(self.ws.recv(), left)))
            except TimeoutError:
                return

    def events(self, prefix: str = "") -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for frame in self.frames:
            batch = [frame["event"]] if frame["type"] == "event" else frame.get("events", [])
            found.extend(e for e in batch if e["type"].startswith(prefix))
        return found

    def presence(self, member_id: str) -> list[tuple[str, str | None]]:
        """The presence events about one member, as (type, reason)."""
        return [
            (e["type"], e["data"].get("reason")) for e in self.events("presence.") if e["data"]["memberId"] == member_id
        ]


def saw(member_id: str, kind: str) -> Any:
    def predicate(frame: dict[str, Any]) -> bool:
        batch = [frame["event"]] if frame["type"] == "event" else frame.get("events", [])
        return any(e["type"] == kind and e["data"].get("memberId") == member_id for e in batch)

    return predicate


def test_two_tabs_of_one_member_join_once_and_leave_when_the_last_goes(rooms_stack: Stack) -> None:
    asyncio.run(_test_two_tabs_of_one_member_join_once_and_leave_when_the_last_goes(rooms_stack))


async def _test_two_tabs_of_one_member_join_once_and_leave_when_the_last_goes(rooms_stack: Stack) -> None:
    room = a_room()
    observer = await Member.open(rooms_stack, "observer")
    await observer.join(room)
    tab1, tab2 = await Member.open(rooms_stack, "ana"), await Member.open(rooms_stack, "ana")
    await tab1.join(room, {"name": "Ana"})
    second = await tab2.join(room, {"name": "Ana"})
    assert second["memberCount"] == 2 and second["self"]["connections"] == 2
    await observer.until(saw("ana", "presence.join"))

    await tab1.close()
    await observer.drain(GRACE + SWEEP + 2)  # past the grace period: the other tab still holds her
    assert observer.presence("ana") == [("presence.join", None)]

    await tab2.close()
    await observer.until(saw("ana", "presence.leave"), timeout=GRACE + BOUND)
    assert observer.presence("ana") == [("presence.join", None), ("presence.leave", "disconnected")]
    await observer.close()


def test_a_reload_within_the_grace_period_is_neither_a_leave_nor_a_join(rooms_stack: Stack) -> None:
    asyncio.run(_test_a_reload_within_the_grace_period_is_neither_a_leave_nor_a_join(rooms_stack))


async def _test_a_reload_within_the_grace_period_is_neither_a_leave_nor_a_join(rooms_stack: Stack) -> None:
    room = a_room()
    observer = await Member.open(rooms_stack, "observer")
    await observer.join(room)
    page = await Member.open(rooms_stack, "bo")
    await page.join(room, {"name": "Bo"})
    await observer.until(saw("bo", "presence.join"))

    await page.close()  # the reload: the old page goes, the new one joins a moment later
    reloaded = await Member.open(rooms_stack, "bo")
    joined = await reloaded.join(room, {"name": "Bo"})
    assert joined["type"] == "joined"

    await observer.drain(GRACE + SWEEP + 3)
    assert observer.presence("bo") == [("presence.join", None)]
    await reloaded.close()
    await observer.close()


def test_a_socket_that_vanishes_without_a_close_leaves_within_the_bound(vanishing_stack: Stack) -> None:
    asyncio.run(_test_a_socket_that_vanishes_without_a_close_leaves_within_the_bound(vanishing_stack))


async def _test_a_socket_that_vanishes_without_a_close_leaves_within_the_bound(vanishing_stack: Stack) -> None:
    room = a_room()
    observer = await Member.open(vanishing_stack, "observer")
    await observer.join(room)
    ghost = await Member.open(vanishing_stack, "ghost")
    await ghost.join(room)
    await observer.until(saw("ghost", "presence.join"))

    vanished_at = time.monotonic()
    ghost.vanish()  # no close frame, and this stack loses every $disconnect
    await observer.until(saw("ghost", "presence.leave"), timeout=BOUND + 10)
    waited = time.monotonic() - vanished_at

    assert observer.presence("ghost") == [("presence.join", None), ("presence.leave", "timeout")]
    # A member that pings stays. (Its own presence.join may come before the index shows its
    # subscription, and so reach it through the heads rather than live: only the leave matters.)
    assert [kind for kind, _ in observer.presence("observer")] in ([], ["presence.join"]), "a member that pings stays"
    print(f"vanished socket left after {waited:.1f} s (lease {LEASE} s, sweep every {SWEEP} s)")
    await observer.close()


def test_a_producers_patch_reaches_the_rooms_members_as_one_event(rooms_stack: Stack) -> None:
    asyncio.run(_test_a_producers_patch_reaches_the_rooms_members_as_one_event(rooms_stack))


async def _test_a_producers_patch_reaches_the_rooms_members_as_one_event(rooms_stack: Stack) -> None:
    http = Http(rooms_stack.url)
    room = a_room()
    ana = await Member.open(rooms_stack, "ana", write=True)
    joined = await ana.join(room)
    assert joined["state"] == {"version": 0, "doc": {}}

    status, body = http.request("PATCH", f"/rooms/{room}/state", {"version": 0, "patch": {"title": "Q4"}})
    assert (status, body["version"]) == (200, 1)
    await ana.send({"action": "patch", "room": room, "version": 0, "patch": {"owner": "ana"}})
    assert (await ana.until(lambda f: f["type"] == "patched"))["version"] == 2
    status, body = http.request("PUT", f"/rooms/{room}/metadata", {"metadata": {"topic": "plans"}})
    assert status == 200

    await ana.until(lambda f: len(ana.events("room.")) >= 3)
    assert [(e["type"], e["data"]["version"]) for e in ana.events("room.")] == [
        ("room.state", 1),
        ("room.state", 2),
        ("room.metadata", 3),
    ]
    status, snapshot = http.get(f"/rooms/{room}")
    assert status == 200 and snapshot["state"] == {"version": 3, "doc": {"title": "Q4", "owner": "ana"}}
    assert snapshot["memberCount"] == 1 and snapshot["metadata"] == {"topic": "plans"}
    await ana.close()
