"""`realtime-transport publish` and `tail` against the local stack, as separate processes."""

from __future__ import annotations

import asyncio
import io
import json
import os
import selectors
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest

from realtime_devstack.tools import Tail

from .conftest import Http, Stack

pytestmark = pytest.mark.integration


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "realtime_devstack.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def start_tail(stack: Stack, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "realtime_devstack.cli", "tail", "--url", stack.ws_url, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# What was read from a child's stdout past its last complete line, by pid.
_unread: dict[int, bytes] = {}


def read_lines(process: subprocess.Popen[str], count: int, timeout: float = 30) -> list[dict[str, Any]]:
    """Up to `count` JSON lines, never blocking past the deadline."""
    return [json.loads(line) for line in read_text_lines(process, count, timeout)]


def read_text_lines(process: subprocess.Popen[str], count: int, timeout: float = 30) -> list[str]:
    """Up to `count` lines, never blocking past the deadline.

    Reads the pipe itself: a buffered readline() would keep lines that arrived together
    (a packed catch-up prints several at once) where select() never reports them.
    """
    assert process.stdout is not None
    fd = process.stdout.fileno()
    data = _unread.pop(process.pid, b"")
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            while b"\n" in data and len(lines) < count:
                line, data = data.split(b"\n", 1)
                lines.append(line.decode())
            if len(lines) >= count or time.monotonic() >= deadline:
                break
            if selector.select(timeout=max(0.0, deadline - time.monotonic())):
                chunk = os.read(fd, 65536)
                if not chunk:
                    break  # the process exited
                data += chunk
    _unread[process.pid] = data
    return lines


def test_publish_prints_the_stored_event_and_is_idempotent(stack: Stack) -> None:
    feed_id = uuid.uuid4().hex[:8]
    args = ["publish", feed_id, "--type", "order.created", "--payload", '{"total": 3}', "--event-id", "cli-1"]
    first = cli(*args, "--url", stack.url)
    assert first.returncode == 0, first.stdout + first.stderr
    created = json.loads(first.stdout)
    assert created["duplicate"] is False and created["event"]["data"]["payload"] == {"total": 3}
    again = json.loads(cli(*args, "--url", stack.url).stdout)
    assert again["duplicate"] is True and again["event"]["id"] == created["event"]["id"]


def test_publish_reports_errors_with_a_nonzero_exit(stack: Stack) -> None:
    refused = cli("publish", "bad feed", "--type", "t", "--url", stack.url)
    assert refused.returncode == 1 and json.loads(refused.stdout)["error"] == "validation_error"
    bad_json = cli("publish", "f", "--type", "t", "--payload", "{nope", "--url", stack.url)
    assert bad_json.returncode != 0 and "not valid JSON" in bad_json.stderr


def test_tail_prints_events_in_order_and_resumes_after_a_dropped_connection(stack: Stack, http: Http) -> None:
    feed_id = uuid.uuid4().hex[:8]
    channel = f"feed_{feed_id}"
    # Start from the empty channel's cursor: nothing published after it can be missed.
    cursor = http.get(f"/feeds/{feed_id}/events")[1]["nextCursor"]
    tail = start_tail(stack, channel, "--cursor", cursor)
    try:
        for n in range(5):
            http.post(f"/feeds/{feed_id}/events", {"eventId": f"a{n}", "type": "t", "payload": n})
        first = read_lines(tail, 5)
        assert [e["seq"] for e in first] == [1, 2, 3, 4, 5], tail.stderr

        # Drop every live socket from the server side, publish meanwhile, and expect no gap or repeat.
        status, body = http.post("/dev/connections/drop")
        assert status == 200 and body["dropped"] >= 1
        for n in range(5, 12):
            http.post(f"/feeds/{feed_id}/events", {"eventId": f"a{n}", "type": "t", "payload": n})
        rest = read_lines(tail, 7)
        assert [e["seq"] for e in rest] == list(range(6, 13))
        assert [e["data"]["payload"] for e in first + rest] == list(range(12))
    finally:
        tail.terminate()
        tail.wait(timeout=10)


def test_tail_prints_a_catch_up_once_and_in_order_however_it_is_packed(stack: Stack, http: Http) -> None:
    """Published before tail subscribes: the catch-up brings them (packed into `events` frames
    by a server that packs, one `event` frame each by one that does not)."""
    feed_id = uuid.uuid4().hex[:8]
    channel = f"feed_{feed_id}"
    cursor = http.get(f"/feeds/{feed_id}/events")[1]["nextCursor"]
    for n in range(20):
        http.post(f"/feeds/{feed_id}/events", {"eventId": f"b{n}", "type": "t", "payload": n})
    tail = start_tail(stack, channel, "--cursor", cursor)
    try:
        lines = read_lines(tail, 20)
        assert [e["seq"] for e in lines] == list(range(1, 21))
        http.post(f"/feeds/{feed_id}/events", {"eventId": "b20", "type": "t", "payload": 20})
        assert [e["seq"] for e in read_lines(tail, 1)] == [21]
        assert read_lines(tail, 1, timeout=1) == [], "nothing twice"
    finally:
        tail.terminate()
        tail.wait(timeout=10)


def test_tail_prints_a_rooms_events_readably(stack: Stack, http: Http) -> None:
    """`tail room_R` is a plain subscriber of the room's channel: presence changes (from a member's
    WebSocket actions) and room changes (from the HTTP routes) print as one line of text each."""
    room = f"tail-{uuid.uuid4().hex[:8]}"
    channel = f"room_{room}"
    status, history = http.get(f"/rooms/{room}/events")
    assert status == 200, history
    tail = start_tail(stack, channel, "--cursor", history["nextCursor"])

    async def next_line() -> str:
        lines = await asyncio.to_thread(read_text_lines, tail, 1)
        assert lines, f"tail printed nothing; stderr: {tail.stderr}"
        return lines[0]

    async def scenario() -> None:
        import websockets

        from realtime_transport.secrets import DEVELOPMENT_SECRET
        from realtime_transport.tokens import issue

        secret = os.environ.get("REALTIME_TOKEN_SECRET") or DEVELOPMENT_SECRET
        token = issue(secret.encode(), sub="ada", channels=["room_*"])
        async with websockets.connect(f"{stack.ws_url}?token={token}") as ws:

            async def ask(message: dict[str, Any], answer: str) -> dict[str, Any]:
                await ws.send(json.dumps({**message, "room": room}))
                while True:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 15))
                    if frame.get("type") in (answer, "error"):
                        assert frame["type"] == answer, frame
                        return frame

            # One change at a time, each printed before the next: presence and room events come
            # from two streams, so their relative order is not the test's to assume.
            joined = await ask({"action": "join", "member": {"name": "Ada"}}, "joined")
            session = joined["self"]["session"]
            assert await next_line() == f'{channel} #1 presence.join ada rev 1 {{"name":"Ada"}} (session {session})'
            await ask({"action": "update", "member": {"name": "Al"}}, "updated")
            assert await next_line() == f'{channel} #2 presence.update ada rev 2 {{"name":"Al"}} (session {session})'
            status, body = http.request("PUT", f"/rooms/{room}/metadata", {"metadata": {"title": "Q3"}})
            assert status == 200, body
            assert await next_line() == f'{channel} #3 room.metadata v{body["version"]} {{"title":"Q3"}}'
            patch = {"cards": {"a": "todo"}, "title": "x"}
            status, body = http.request("PATCH", f"/rooms/{room}/state", {"version": body["version"], "patch": patch})
            assert status == 200, body
            line = await next_line()
            assert line.startswith(f"{channel} #4 room.state v{body['version']} "), line
            assert "/cards/a" in line and "/title" in line, line
            await ask({"action": "leave"}, "left")
            assert await next_line() == f"{channel} #5 presence.leave ada: left (session {session})"

    try:
        asyncio.run(scenario())
    finally:
        tail.terminate()
        tail.wait(timeout=10)


def stop_tail(tail: subprocess.Popen[str]) -> str:
    """Stop a running tail; what it wrote to stderr."""
    if tail.poll() is None:
        tail.terminate()
    _, err = tail.communicate(timeout=10)
    return err


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_tail_goes_on_after_the_stack_restarts_on_the_same_port() -> None:
    """The restarted stack keeps nothing: tail's resume cursor is ahead of the new log and refused;
    tail says so, reads the new log from its start (the cursor of the empty channel it began
    with) and prints the new events, none lost, without anyone restarting it."""
    from realtime_devstack import process

    port = str(free_port())
    first = process.start("--port", port)
    feed_id = uuid.uuid4().hex[:8]
    channel = f"feed_{feed_id}"
    tail: subprocess.Popen[str] | None = None
    second: Stack | None = None
    try:
        http = Http(first.url)
        cursor = http.get(f"/feeds/{feed_id}/events")[1]["nextCursor"]
        tail = start_tail(first, channel, "--cursor", cursor)
        for n in range(3):
            assert http.post(f"/feeds/{feed_id}/events", {"eventId": f"r{n}", "type": "t", "payload": n})[0] == 201
        assert [e["data"]["payload"] for e in read_lines(tail, 3)] == [0, 1, 2]
        assert first.stop() == 0
        second = process.start("--port", port)
        assert second.url == first.url
        http = Http(second.url)
        # Published as soon as the new stack is up, whether tail is back yet or not.
        for n in range(3, 5):
            assert http.post(f"/feeds/{feed_id}/events", {"eventId": f"r{n}", "type": "t", "payload": n})[0] == 201
        again = read_lines(tail, 2, timeout=45)
        assert [(e["seq"], e["data"]["payload"]) for e in again] == [(1, 3), (2, 4)], stop_tail(tail)
        assert tail.poll() is None, "still tailing"
    finally:
        err = stop_tail(tail) if tail is not None else ""
        for running in (first, second):
            if running is not None and running.process.poll() is None:
                running.stop()
    assert "log restarted" in err, err


def test_tail_exits_with_the_reason_when_a_channel_or_its_cursor_is_refused(stack: Stack) -> None:
    from realtime_transport.secrets import DEVELOPMENT_SECRET
    from realtime_transport.tokens import issue

    secret = os.environ.get("REALTIME_TOKEN_SECRET") or DEVELOPMENT_SECRET
    token = issue(secret.encode(), sub="t", channels=["feed_mine*"])
    forbidden = start_tail(stack, "feed_mine1", "feed_other", "--token", token)
    assert forbidden.wait(timeout=30) == 2
    err = stop_tail(forbidden)
    assert "feed_other: forbidden" in err, err

    refused = start_tail(stack, "feed_mine1", "--cursor", "feed_mine1=" + "A" * 36, "--token", token)
    assert refused.wait(timeout=30) == 2
    err = stop_tail(refused)
    assert "feed_mine1: the --cursor given was refused" in err and "Traceback" not in err, err

    # A bad --cursor argument never gets as far as the stack.
    two = cli("tail", "--url", stack.ws_url, "feed_a", "feed_b", "--cursor", "AAAA")
    assert two.returncode == 2 and "--cursor CHANNEL=CURSOR" in two.stderr, two.stderr
    stranger = cli("tail", "--url", stack.ws_url, "feed_a", "--cursor", "feed_b=AAAA")
    assert stranger.returncode == 2 and "'feed_b' is not one of the channels" in stranger.stderr, stranger.stderr


def test_tail_resumes_after_the_last_event_it_printed_with_no_false_loss_warning(stack: Stack, http: Http) -> None:
    """More events than the history window (50 on this stack) go by live after tail's first
    `subscribed`; a dropped connection resumes from the last one printed (well inside the
    window), so nothing is said to be lost. `--cursors` prints each event's cursor, and
    `--cursor CHANNEL=...` starts another tail from any of them: right after its event, or, for an
    event that arrived inside a packed message (a burst), a few events before it (the cursor of the
    last event before it that had one), never after it."""
    feed_id = uuid.uuid4().hex[:8]
    channel = f"feed_{feed_id}"
    start = http.get(f"/feeds/{feed_id}/events")[1]["nextCursor"]  # the empty channel's
    tail = start_tail(stack, channel, "--cursors", "--cursor", start)
    err = ""
    try:
        for n in range(60):
            http.post(f"/feeds/{feed_id}/events", {"eventId": f"w{n}", "type": "t", "payload": n})
        first = read_lines(tail, 60)
        assert [e["seq"] for e in first] == list(range(1, 61))
        assert all(isinstance(e["cursor"], str) for e in first)
        status, body = http.post("/dev/connections/drop")
        assert status == 200 and body["dropped"] >= 1
        for n in range(60, 63):
            http.post(f"/feeds/{feed_id}/events", {"eventId": f"w{n}", "type": "t", "payload": n})
        assert [e["seq"] for e in read_lines(tail, 3)] == [61, 62, 63]
    finally:
        err = stop_tail(tail)
    assert "connection lost" in err, "the drop was seen"
    assert "window passed" not in err and "were lost" not in err, err

    after_58 = first[57]["cursor"]
    resumed = start_tail(stack, channel, "--cursor", f"{channel}={after_58}")
    try:
        lines = read_lines(resumed, 1)
        resumed_at = lines[0]["seq"]
        assert 1 <= resumed_at <= 59, "58's cursor never skips 59"
        lines += read_lines(resumed, 63 - resumed_at)
        assert [e["seq"] for e in lines] == list(range(resumed_at, 64))
        assert all("cursor" not in e for e in lines), "without --cursors, the events as they are"
    finally:
        stop_tail(resumed)


def test_token_with_an_empty_channel_pattern_is_a_clear_error() -> None:
    empty = cli("token", "--channels", "")
    assert empty.returncode == 2, empty.stderr
    assert "may not be empty" in empty.stderr and "Traceback" not in empty.stderr, empty.stderr
    write = cli("token", "--channels", "feed_*", "--write", " ")
    assert write.returncode == 2 and "may not be empty" in write.stderr, write.stderr
    ttl = cli("token", "--channels", "feed_*", "--ttl", "0")
    assert ttl.returncode == 2 and "--ttl must be a positive" in ttl.stderr, ttl.stderr


def test_dev_on_a_taken_port_says_how_to_pick_another(stack: Stack) -> None:
    port = stack.url.rsplit(":", 1)[1]
    taken = cli("dev", "--port", port, timeout=60)
    assert taken.returncode == 1, taken.stderr
    assert "already in use" in taken.stderr and "--port" in taken.stderr, taken.stderr
    assert 'make dev ARGS="--port' in taken.stderr and "Traceback" not in taken.stderr, taken.stderr


# --- tail's protocol handling against a scripted socket (no stack needed) -------------------------


class ScriptedSocket:
    """What tail sends; the test plays the server by calling tail's frame handler."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, data: str) -> None:
        self.sent.append(json.loads(data))

    def subscribes(self) -> list[str | None]:
        return [m.get("cursor") for m in self.sent if m["action"] == "subscribe"]

    def pings(self) -> int:
        return sum(1 for m in self.sent if m["action"] == "ping")


CHANNEL = "feed_t"


def envelope(seq: int) -> dict[str, Any]:
    return {"id": f"id{seq}", "channel": CHANNEL, "seq": seq, "type": "t", "data": {}, "metadata": {}}


def events(*seqs: int) -> dict[str, Any]:
    return {"type": "events", "channel": CHANNEL, "events": [envelope(s) for s in seqs], "cursor": f"c{seqs[-1]}"}


def event(seq: int) -> dict[str, Any]:
    return {"type": "event", "channel": CHANNEL, "event": envelope(seq), "cursor": f"c{seq}"}


def subscribed(position: int, has_more: bool = False, **extra: Any) -> dict[str, Any]:
    return {"type": "subscribed", "channel": CHANNEL, "cursor": f"c{position}", "position": position, **extra} | (
        {"hasMore": True} if has_more else {}
    )


def scripted(cursor: str | None = "c0", **options: Any) -> tuple[Tail, ScriptedSocket, io.StringIO]:
    out = io.StringIO()
    options = {"ping_interval": 0, "head_check": 0, "reorder": 0.05, **options}
    return Tail("ws://unused", "token", [CHANNEL], cursor, out, **options), ScriptedSocket(), out


def printed(out: io.StringIO) -> list[int]:
    return [json.loads(line)["seq"] for line in out.getvalue().splitlines()]


def test_tail_takes_events_frames_as_their_events_one_by_one() -> None:
    async def scenario() -> None:
        tail, ws, out = scripted()
        await tail._subscribe(ws, CHANNEL)
        await tail._on_message(ws, events(1, 2, 3))
        await tail._on_message(ws, event(2))  # the same event, live
        await tail._on_message(ws, events(3, 4, 5))
        await tail._on_message(ws, subscribed(5))
        await tail._on_message(ws, event(6))
        assert printed(out) == [1, 2, 3, 4, 5, 6]
        assert tail.channels[CHANNEL].cursor == "c6", "resumes after the last event printed"
        await tail._on_message(ws, events(9, 10))  # ahead of its turn: waits, and asks for 7 and 8
        assert ws.subscribes() == ["c0", "c6"]
        assert tail.channels[CHANNEL].cursor == "c6", "c10 would skip 7 and 8"
        await tail._on_message(ws, events(7, 8))
        await tail._on_message(ws, subscribed(8))
        assert printed(out) == list(range(1, 11))
        assert tail.channels[CHANNEL].cursor == "c10"

    asyncio.run(scenario())


def test_tail_continues_a_catch_up_answered_with_has_more() -> None:
    async def scenario() -> None:
        tail, ws, out = scripted()
        await tail._subscribe(ws, CHANNEL)
        await tail._on_message(ws, events(1, 2, 3))
        await tail._on_message(ws, subscribed(3, has_more=True))
        assert ws.subscribes() == ["c0", "c3"]
        await tail._on_message(ws, events(4, 5))
        await tail._on_message(ws, subscribed(7, has_more=True))  # 6 and 7 are tombstones
        await tail._on_message(ws, events(8))
        await tail._on_message(ws, subscribed(8))
        assert ws.subscribes() == ["c0", "c3", "c7"]
        assert printed(out) == [1, 2, 3, 4, 5, 8]
        assert tail.channels[CHANNEL].subscribed

    asyncio.run(scenario())


def test_tail_does_not_continue_a_part_that_got_nowhere() -> None:
    async def scenario() -> None:
        tail, ws, _ = scripted(cursor="c0")
        await tail._subscribe(ws, CHANNEL)
        await tail._on_message(ws, subscribed(0, has_more=True))
        assert ws.subscribes() == ["c0"]

    asyncio.run(scenario())


def test_tail_catches_up_once_when_a_pong_shows_the_channel_behind_its_head() -> None:
    async def scenario() -> None:
        tail, ws, out = scripted()
        await tail._subscribe(ws, CHANNEL)
        await tail._on_message(ws, events(1, 2, 3))
        await tail._on_message(ws, subscribed(3))
        await tail._on_message(ws, {"type": "pong", "heads": {CHANNEL: 3, "feed_other": 9}})
        await tail._on_message(ws, {"type": "pong"})  # a server without heads
        await asyncio.sleep(0.1)
        assert ws.subscribes() == ["c0"], "not behind"

        await tail._on_message(ws, {"type": "pong", "heads": {CHANNEL: 4}})
        await asyncio.sleep(0.02)
        await tail._on_message(ws, event(4))  # it came live inside the reorder window
        await asyncio.sleep(0.1)
        assert ws.subscribes() == ["c0"]

        await tail._on_message(ws, {"type": "pong", "heads": {CHANNEL: 5}})  # 5 never came
        await tail._on_message(ws, {"type": "pong", "heads": {CHANNEL: 5}})
        assert ws.subscribes() == ["c0"], "it may still arrive live"
        await asyncio.sleep(0.1)
        assert ws.subscribes() == ["c0", "c4"], "one catch-up, from the last cursor"
        await tail._on_message(ws, event(5))
        await tail._on_message(ws, subscribed(5))
        await asyncio.sleep(0.1)
        assert ws.subscribes() == ["c0", "c4"]
        assert printed(out) == [1, 2, 3, 4, 5]

    asyncio.run(scenario())


def test_tail_pings_after_a_subscribe_is_answered_and_periodically() -> None:
    async def scenario() -> None:
        tail, ws, _ = scripted(head_check=0.05)
        await tail._subscribe(ws, CHANNEL)
        await tail._on_message(ws, subscribed(0, has_more=False))
        await asyncio.sleep(0.02)
        await tail._on_message(ws, subscribed(0))  # answers in quick succession share one ping
        await asyncio.sleep(0.02)
        assert ws.pings() == 0
        await asyncio.sleep(0.1)
        assert ws.pings() == 1
        tail._stop_timers()

        tail, ws, _ = scripted(ping_interval=0.05)
        tail._later(tail.ping_interval, lambda: tail._ping_every(ws))
        await asyncio.sleep(0.18)
        tail._stop_timers()
        assert 2 <= ws.pings() <= 4

    asyncio.run(scenario())


# --- tail prints a room's own events as text -------------------------------------------------------

ROOM_CHANNEL = "room_board-1"


def room_envelope(seq: int, type_: str, data: dict[str, Any]) -> dict[str, Any]:
    room = {"source": "room"}
    return {"id": f"r{seq}", "channel": ROOM_CHANNEL, "seq": seq, "type": type_, "data": data, "metadata": room}


def test_tail_prints_room_events_readably_and_other_events_as_json() -> None:
    async def scenario() -> None:
        out = io.StringIO()
        tail = Tail("ws://unused", "token", [ROOM_CHANNEL], "c0", out, ping_interval=0, head_check=0)
        ws = ScriptedSocket()
        await tail._subscribe(ws, ROOM_CHANNEL)
        session = "0001733050000000.ab12cd34"
        ada = {"memberId": "ada", "session": session}
        state = {"version": 6, "patch": {"cards": {"a": 1}, "title": "x"}, "paths": ["/cards/a", "/title"], "base": 5}
        frames = [
            room_envelope(1, "presence.join", {**ada, "member": {"name": "Ada"}, "rev": 1}),
            room_envelope(2, "presence.update", {**ada, "member": {"name": "Ada", "away": True}, "rev": 2}),
            room_envelope(3, "room.metadata", {"version": 5, "metadata": {"title": "Q3"}, "paths": [], "by": "ops"}),
            room_envelope(4, "room.state", {**state, "by": "bob"}),
            room_envelope(5, "presence.leave", {**ada, "reason": "disconnected"}),
            room_envelope(6, "note.added", {"text": "not a room event"}),
        ]
        await tail._on_message(ws, {"type": "events", "channel": ROOM_CHANNEL, "events": frames, "cursor": "c6"})
        lines = out.getvalue().splitlines()
        assert lines[:5] == [
            f'room_board-1 #1 presence.join ada rev 1 {{"name":"Ada"}} (session {session})',
            f'room_board-1 #2 presence.update ada rev 2 {{"name":"Ada","away":true}} (session {session})',
            'room_board-1 #3 room.metadata v5 by ops {"title":"Q3"}',
            "room_board-1 #4 room.state v6 /cards/a /title by bob (base 5)",
            f"room_board-1 #5 presence.leave ada: disconnected (session {session})",
        ]
        assert json.loads(lines[5])["type"] == "note.added", "anything else stays a JSON line"

        raw = io.StringIO()
        options: dict[str, Any] = {"ping_interval": 0, "head_check": 0}
        as_json = Tail("ws://unused", "token", [ROOM_CHANNEL], "c0", raw, **options, room_events="json")
        await as_json._on_message(ws, {"type": "event", "channel": ROOM_CHANNEL, "event": frames[0], "cursor": "c1"})
        assert json.loads(raw.getvalue())["data"]["memberId"] == "ada"

    asyncio.run(scenario())


# --- tail recovers, or exits with the reason (scripted) ----------------------------------------------


def test_tail_prints_each_events_cursor_with_cursors() -> None:
    async def scenario() -> None:
        tail, ws, out = scripted(show_cursors=True)
        await tail._subscribe(ws, CHANNEL)
        await tail._on_message(ws, subscribed(0))
        await tail._on_message(ws, events(1, 2, 3))  # packed: only 3's cursor is known
        await tail._on_message(ws, event(4))
        cursors = [json.loads(line)["cursor"] for line in out.getvalue().splitlines()]
        # 1 and 2 carry the last cursor before them: a resume from it repeats, never skips.
        assert cursors == ["c0", "c0", "c3", "c4"]

    asyncio.run(scenario())


def test_tail_exits_2_on_a_forbidden_channel_or_a_refused_given_cursor() -> None:
    from realtime_devstack.tools import TailExit

    async def scenario() -> None:
        tail, ws, _ = scripted()
        await tail._subscribe(ws, CHANNEL)
        with pytest.raises(TailExit) as forbidden:
            await tail._on_message(ws, {"type": "error", "code": "forbidden", "message": "no", "channel": CHANNEL})
        assert forbidden.value.code == 2 and f"{CHANNEL}: forbidden: no" in forbidden.value.reason

        tail, ws, _ = scripted(cursor="bad")
        await tail._subscribe(ws, CHANNEL)
        with pytest.raises(TailExit, match="--cursor given was refused: cursor is malformed"):
            await tail._on_message(
                ws, {"type": "error", "code": "invalid_cursor", "message": "cursor is malformed", "channel": CHANNEL}
            )

        tail, ws, _ = scripted()
        await tail._subscribe(ws, CHANNEL)
        with pytest.raises(TailExit, match="new one with --token"):
            await tail._on_message(ws, {"type": "error", "code": "token_expired", "message": "token has expired"})

        tail, ws, _ = scripted()
        with pytest.raises(TailExit, match="ended the subscription"):
            await tail._on_message(ws, {"type": "unsubscribed", "channel": CHANNEL, "reason": "not_allowed"})

    asyncio.run(scenario())


def test_tail_reads_a_restarted_log_from_its_start_and_resends_an_unanswered_subscribe() -> None:
    async def scenario() -> None:
        err = io.StringIO()
        tail, ws, out = scripted(err=err, subscribe_timeout=0.1)
        await tail._subscribe(ws, CHANNEL)
        await tail._on_message(ws, subscribed(0))
        await tail._on_message(ws, events(1, 2, 3))
        await tail._subscribe(ws, CHANNEL)  # a reconnect: the log is gone
        await tail._on_message(
            ws, {"type": "error", "code": "invalid_cursor", "message": "cursor is ahead", "channel": CHANNEL}
        )
        assert ws.subscribes() == ["c0", "c3", "c0"], "read again from position 0"
        assert "log restarted" in err.getvalue()
        await tail._on_message(ws, events(1, 2))  # the new log's own 1 and 2: printed, not taken as repeats
        await tail._on_message(ws, subscribed(2))
        assert printed(out) == [1, 2, 3, 1, 2]

        # A subscribe nobody answers is sent again (here after 0.1 s).
        watch = asyncio.create_task(tail._watch_subscribes(ws))
        await tail._subscribe(ws, CHANNEL)
        await asyncio.sleep(0.25)
        watch.cancel()
        assert ws.subscribes()[-2:] == ["c2", "c2"] and "no answer to the subscribe" in err.getvalue()

    asyncio.run(scenario())
