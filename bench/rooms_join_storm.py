"""Join storm: N WebSocket connections join one room within a second on the local stack.

Prints the time until every member sees the complete presence (its `joined` snapshot plus the
`presence.join` events after it, applied by the protocol's rules), the presence events delivered
(management-API posts), and the stack's DynamoDB-bound work per join. The per-join DynamoDB
request count at 10 and at 10,000 members is `bench/rooms_requests.py`'s (in-process moto).

    .venv/bin/python bench/rooms_join_storm.py [--members 500] [--faithful]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
import uuid
from typing import Any

import websockets
from _common import STACK_SECRET, goal, start_stack, stop_stack, table

from realtime_transport import tokens


class Member:
    def __init__(self, n: int) -> None:
        self.name = f"m{n:05d}"
        self.seen: dict[str, tuple[str, int]] = {}
        self.left: set[str] = set()
        self.frames = 0
        self.complete_at: float | None = None

    def apply(self, event: dict[str, Any]) -> None:
        data = event.get("data") or {}
        if event.get("type") in {"presence.join", "presence.update"}:
            mark = (data["session"], data["rev"])
            if self.seen.get(data["memberId"], ("", 0)) < mark:
                self.seen[data["memberId"]] = mark


async def run_member(
    member: Member, url: str, room: str, start_at: float, total: int, done: asyncio.Event, timeout: float
) -> None:
    token = tokens.issue(STACK_SECRET.encode(), sub=member.name, channels=[f"room_{room}"], ttl_seconds=3600)
    async with websockets.connect(f"{url}?token={token}", max_queue=None, open_timeout=60) as ws:
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        await ws.send(json.dumps({"action": "join", "room": room, "member": {"n": member.name}}))
        heartbeat = asyncio.create_task(_ping_every(ws, 10.0))  # as the browser client does in a room
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not done.is_set():
            try:
                raw = await asyncio.wait_for(ws.recv(), timeout=max(0.05, deadline - time.monotonic()))
            except TimeoutError:
                break
            frame = json.loads(raw)
            member.frames += 1
            if frame["type"] == "joined":
                for m in frame.get("members", []):
                    member.apply({"type": "presence.join", "data": m})
                if frame.get("membersCursor"):
                    await ws.send(json.dumps({"action": "members", "room": room, "cursor": frame["membersCursor"]}))
            elif frame["type"] == "members":
                for m in frame["items"]:
                    member.apply({"type": "presence.join", "data": m})
                if frame.get("hasMore"):
                    await ws.send(json.dumps({"action": "members", "room": room, "cursor": frame["nextCursor"]}))
            elif frame["type"] == "event":
                member.apply(frame["event"])
            elif frame["type"] == "events":
                for event in frame["events"]:
                    member.apply(event)
            if member.complete_at is None and len(member.seen) >= total:
                member.complete_at = time.monotonic()
                break
        # Stay (and ping) until everyone is complete: a member that leaves early is a presence change.
        await done.wait() if member.complete_at is not None else None
        heartbeat.cancel()


async def _ping_every(ws: Any, seconds: float) -> None:
    """The presence heartbeat: a connection that stops pinging is taken out of the room."""
    while True:
        await asyncio.sleep(seconds)
        await ws.send(json.dumps({"action": "ping"}))


async def storm(url: str, count: int, timeout: float) -> tuple[list[Member], float]:
    room = f"storm-{uuid.uuid4().hex[:8]}"
    members = [Member(n) for n in range(count)]
    done = asyncio.Event()
    start_at = time.monotonic() + 5.0  # every socket opens first; the joins then land within a second
    spread = 1.0 / count
    tasks = [
        asyncio.create_task(run_member(m, url, room, start_at + n * spread, count, done, timeout))
        for n, m in enumerate(members)
    ]
    deadline = time.monotonic() + timeout + 10
    while time.monotonic() < deadline and not all(m.complete_at is not None for m in members):
        if all(task.done() for task in tasks):
            break
        await asyncio.sleep(0.2)
    done.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return members, start_at


def _timeline(stack: Any, began: float) -> None:
    """Every 5 s, where the stack's work is: frames posted and each function's invocations."""
    while True:
        time.sleep(5)
        try:
            stats = stack.stats()
        except OSError:
            return
        calls = {name: f["invocations"] for name, f in stats["functions"].items()}
        print(
            f"t={time.monotonic() - began:5.0f}s posts={stats['management']['posts']} invocations={calls}",
            file=sys.stderr,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=500)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--faithful", action="store_true")
    args = parser.parse_args()

    stack = start_stack(*(["--faithful"] if args.faithful else []))
    try:
        before = stack.stats()
        began = time.monotonic()
        watch = threading.Thread(target=_timeline, args=(stack, began), daemon=True)
        watch.start()
        members, start_at = asyncio.run(storm(stack.ws_url, args.members, args.timeout))
        wall = time.monotonic() - began
        after = stack.stats()
    finally:
        stop_stack(stack)

    complete = [m.complete_at - start_at for m in members if m.complete_at is not None]
    posts = after.get("management", {}).get("posts", 0) - before.get("management", {}).get("posts", 0)
    rows = [
        ("members joining", args.members),
        ("members that saw complete presence", len(complete)),
        ("time until all saw it (s)", max(complete) if len(complete) == args.members else float("nan")),
        ("median member complete at (s)", sorted(complete)[len(complete) // 2] if complete else float("nan")),
        ("frames posted to members", posts),
        ("frames per member", posts / args.members),
        ("wall time (s)", wall),
    ]
    table(("join storm", "value"), rows)
    goal(len(complete) == args.members, f"every one of {args.members} members sees the complete presence")


if __name__ == "__main__":
    main()
