"""Terminal tools: `publish` an event over HTTP, `tail` channels over the WebSocket.

`tail` prints each event as a JSON line, except a room's own events (presence and room
changes on a `room_{id}` channel), which read better as one line of text each; see
`format_room_event`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO
from urllib.parse import quote, urlsplit

DEFAULT_HTTP_URL = "http://127.0.0.1:3000"
DEFAULT_WS_URL = "ws://127.0.0.1:3000/ws"


def _is_aws(url: str) -> bool:
    return (urlsplit(url).hostname or "").endswith(".amazonaws.com")


def _sigv4_headers(method: str, url: str, body: bytes, headers: dict[str, str]) -> dict[str, str]:
    """Sign for API Gateway (execute-api) with the usual AWS credentials chain."""
    import boto3
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    session = boto3.session.Session()
    credentials = session.get_credentials()
    if credentials is None:
        raise SystemExit("no AWS credentials found to sign the request (aws configure, AWS_PROFILE, ...)")
    host = urlsplit(url).hostname or ""
    region = host.split(".")[2] if host.count(".") >= 4 else (session.region_name or "us-east-1")
    request = AWSRequest(method=method, url=url, data=body, headers=headers)
    SigV4Auth(credentials.get_frozen_credentials(), "execute-api", region).add_auth(request)
    return dict(request.headers.items())


def publish(
    base_url: str,
    feed_id: str,
    *,
    type: str,
    payload: Any,
    event_id: str | None = None,
    source: str | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """POST one event; prints the response body and returns an exit code (0 on 200/201)."""
    body: dict[str, Any] = {"eventId": event_id or str(uuid.uuid4()), "type": type, "payload": payload}
    if source:
        body["source"] = source
    data = json.dumps(body).encode()
    url = f"{base_url.rstrip('/')}/feeds/{quote(feed_id, safe='')}/events"
    headers = {"content-type": "application/json"}
    if _is_aws(url):
        headers = _sigv4_headers("POST", url, data, headers)
    request = urllib.request.Request(url, data=data, method="POST", headers=headers)  # noqa: S310 - user's URL
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            out.write(response.read().decode() + "\n")
            return 0
    except urllib.error.HTTPError as error:
        out.write(error.read().decode() + "\n")
        return 1
    except urllib.error.URLError as error:
        out.write(json.dumps({"error": "unreachable", "message": str(error.reason)}) + "\n")
        return 2


# `tail` follows the browser client (web/realtime-client.js) on the protocol's timing.
PING_INTERVAL = 60.0  # a ping this often: its pong's heads reveal a quiet channel's missed last event
HEAD_CHECK = 3.0  # and one this long after a subscribe is answered (the fan-out's index lags it)
REORDER = 0.3  # how long an event the heads say exists may take to arrive live
SUBSCRIBE_TIMEOUT = 10.0  # a catch-up silent this long is taken as lost


# The events a room publishes on its channel (`room_{id}`): presence and room changes.
ROOM_EVENT_TYPES = frozenset({"presence.join", "presence.update", "presence.leave", "room.metadata", "room.state"})
_PREVIEW_CHARS = 120


def _compact(value: Any) -> str:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text if len(text) <= _PREVIEW_CHARS else text[: _PREVIEW_CHARS - 1] + "…"


def format_room_event(event: dict[str, Any]) -> str | None:
    """One readable line for a room event, or None when `event` is not one (it prints as JSON).

    `room_R #12 presence.join alice rev 1 {"name":"Ada"} (session …)`,
    `room_R #13 presence.leave alice: disconnected (session …)`,
    `room_R #14 room.metadata v5 by ops {"title":"Q3"}`,
    `room_R #15 room.state v6 /cards/a /title by bob (base 5)`.
    """
    channel, kind, data = event.get("channel"), event.get("type"), event.get("data")
    if not isinstance(channel, str) or not channel.startswith("room_") or kind not in ROOM_EVENT_TYPES:
        return None
    if not isinstance(data, dict):
        return None
    head = f"{channel} #{event.get('seq')} {kind}"
    by = f" by {data['by']}" if data.get("by") else ""
    if kind == "presence.leave":
        return f"{head} {data.get('memberId')}: {data.get('reason', 'left')} (session {data.get('session')})"
    if kind in ("presence.join", "presence.update"):
        member = _compact(data.get("member"))
        return f"{head} {data.get('memberId')} rev {data.get('rev')} {member} (session {data.get('session')})"
    if kind == "room.metadata":
        return f"{head} v{data.get('version')}{by} {_compact(data.get('metadata'))}"
    paths = data.get("paths")
    shown = " ".join(str(path) or "/" for path in paths) if isinstance(paths, list) and paths else "/"
    base = f" (base {data['base']})" if data.get("base") is not None else ""
    return f"{head} v{data.get('version')} {shown}{by}{base}"


@dataclass
class _ChannelState:
    cursor: str | None = None
    # The seq `cursor` names, when known: a frame's cursor is adopted only beyond it.
    cursor_seq: int = 0
    last_seq: int = 0
    # The last subscribe is answered in full: no catch-up is in flight.
    subscribed: bool = False
    sent_cursor: str | None = None
    # When the catch-up in flight was sent or last brought an event.
    busy_since: float = 0.0
    pending: dict[int, dict[str, Any]] = field(default_factory=dict)
    # Cursors live and catch-up frames carried, by the seq they name: adopted once delivered.
    cursors: dict[int, str] = field(default_factory=dict)


class Tail:
    """Prints each channel's events once and in order, resuming from its cursor after a drop.

    Frames: `event` and `events` (several events of one channel; the cursor names the last)
    are taken alike. A `subscribed` with `hasMore` (a catch-up that stopped to fit the
    server's time limit) is continued from its cursor until one without. A ping goes out
    every `ping_interval` seconds and `head_check` seconds after a subscribe is answered;
    a channel its pong's `heads` show behind gets `reorder` seconds for the event to arrive
    live, then one catch-up (a subscribe with its cursor).
    """

    def __init__(
        self,
        url: str,
        token: str,
        channels: list[str],
        cursor: str | None,
        out: TextIO,
        *,
        ping_interval: float = PING_INTERVAL,
        head_check: float = HEAD_CHECK,
        reorder: float = REORDER,
        room_events: Literal["text", "json"] = "text",
    ) -> None:
        self.url = url
        self.room_events = room_events
        self.token = token
        self.out = out
        self.channels = {name: _ChannelState(cursor=cursor) for name in channels}
        self.max_backoff = 30.0
        self.ping_interval = ping_interval
        self.head_check = head_check
        self.reorder = reorder
        self._tasks: set[asyncio.Task[None]] = set()
        self._head_ping: asyncio.Task[None] | None = None
        self._head_ping_at = 0.0
        self._heads_check: asyncio.Task[None] | None = None
        # Channels a pong showed behind their head, with the highest head seen.
        self._behind: dict[str, int] = {}

    # --- timers: tasks that end with the connection -------------------------------------------

    def _later(self, delay: float, action: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        async def run() -> None:
            await asyncio.sleep(delay)
            with contextlib.suppress(ConnectionError, OSError, _closed_error()):
                await action()

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _stop_timers(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self._tasks.clear()
        self._head_ping = self._heads_check = None
        self._behind.clear()

    async def _ping_every(self, ws: Any) -> None:
        await ws.send(json.dumps({"action": "ping"}))
        self._later(self.ping_interval, lambda: self._ping_every(ws))

    def _ping_soon(self, ws: Any) -> None:
        """A ping `head_check` after the last of answers in quick succession."""
        if self.head_check <= 0:
            return
        self._head_ping_at = time.monotonic() + self.head_check
        if self._head_ping is None or self._head_ping.done():
            self._head_ping = self._later(0, lambda: self._head_ping_when_due(ws))

    async def _head_ping_when_due(self, ws: Any) -> None:
        while (wait := self._head_ping_at - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        await ws.send(json.dumps({"action": "ping"}))

    # --- channels ---------------------------------------------------------------------------------

    def _print(self, event: dict[str, Any]) -> None:
        """A room's own events as a line of text (unless `room_events="json"`), the rest as JSON."""
        line = format_room_event(event) if self.room_events == "text" else None
        self.out.write((line if line is not None else json.dumps(event)) + "\n")

    def _emit(self, state: _ChannelState) -> None:
        while state.last_seq + 1 in state.pending:
            state.last_seq += 1
            self._print(state.pending.pop(state.last_seq))
        self.out.flush()
        self._adopt_cursors(state)

    @staticmethod
    def _adopt_cursors(state: _ChannelState) -> None:
        """A frame's cursor covers its seq: the resume point once everything up to it is printed."""
        for seq in sorted(s for s in state.cursors if s <= state.last_seq):
            cursor = state.cursors.pop(seq)
            if seq > state.cursor_seq:
                state.cursor, state.cursor_seq = cursor, seq

    @staticmethod
    def _catching_up(state: _ChannelState) -> bool:
        """A subscribe is in flight and not given up on (answers and events keep it alive)."""
        return not state.subscribed and time.monotonic() - state.busy_since < SUBSCRIBE_TIMEOUT

    async def _subscribe(self, ws: Any, name: str, cursor: str | None = None) -> None:
        state = self.channels[name]
        cursor = cursor or state.cursor
        message: dict[str, Any] = {"action": "subscribe", "channel": name}
        if cursor:
            message["cursor"] = cursor
        state.subscribed, state.sent_cursor, state.busy_since = False, cursor, time.monotonic()
        await ws.send(json.dumps(message))

    async def _take(self, ws: Any, name: str, state: _ChannelState, events: list[Any], cursor: Any) -> None:
        """Events of one channel in seq order (an `event` frame's one, an `events` frame's list)."""
        taken: list[tuple[int, Any]] = []
        for event in events:
            seq = event.get("seq") if isinstance(event, dict) else None
            if not isinstance(seq, int) or isinstance(seq, bool):
                sys.stderr.write(f"tail: {name}: an event without an integer seq was skipped\n")
                continue
            taken.append((seq, event))
            if seq > state.last_seq:
                state.pending[seq] = event
        if not taken:
            return
        last_seq, last_event = taken[-1]
        if isinstance(cursor, str) and last_event is events[-1] and last_seq > state.last_seq:
            state.cursors[last_seq] = cursor  # it names the last event only
        if not state.subscribed:
            state.busy_since = time.monotonic()  # a catch-up streaming in is not lost
        self._emit(state)
        # A gap that outlives a live batch: ask for it (the catch-up answers in order).
        if not self._catching_up(state) and state.pending and min(state.pending) > state.last_seq + 1:
            await self._subscribe(ws, name)

    async def _on_subscribed(self, ws: Any, name: str, state: _ChannelState, message: dict[str, Any]) -> None:
        if message.get("truncated"):
            sys.stderr.write(f"tail: {name}: history window passed; some events were lost\n")
        # Every position up to here is resolved: a seq missing below it is a tombstone.
        position = message.get("position")
        resolved = position if isinstance(position, int) and not isinstance(position, bool) else None
        while state.last_seq < (resolved or 0):
            state.last_seq += 1
            event = state.pending.pop(state.last_seq, None)
            if event is not None:
                self._print(event)
        self._emit(state)
        cursor = message.get("cursor")
        if isinstance(cursor, str) and (resolved is None or resolved >= state.cursor_seq):
            state.cursor, state.cursor_seq = cursor, state.last_seq if resolved is None else resolved
        if message.get("hasMore") is True and isinstance(cursor, str) and cursor != state.sent_cursor:
            # The catch-up stopped to fit the server's time limit: go on from where it got to.
            await self._subscribe(ws, name, cursor)
            return
        state.subscribed = True
        self._ping_soon(ws)

    def _on_pong(self, ws: Any, message: dict[str, Any]) -> None:
        heads = message.get("heads")
        if not isinstance(heads, dict):
            return
        for name, head in heads.items():
            state = self.channels.get(name)
            if state is not None and isinstance(head, int) and head > state.last_seq:
                self._behind[name] = max(head, self._behind.get(name, head))
        if self._behind and (self._heads_check is None or self._heads_check.done()):
            self._heads_check = self._later(self.reorder, lambda: self._check_heads(ws))

    async def _check_heads(self, ws: Any) -> None:
        """The reorder window after a pong is over: one catch-up for each channel still behind."""
        behind, self._behind = self._behind, {}
        for name, head in behind.items():
            state = self.channels[name]
            if state.last_seq >= head or self._catching_up(state) or state.pending or not state.cursor:
                continue  # arrived live, or a catch-up in flight or a gap's reaches it
            await self._subscribe(ws, name)

    async def _on_message(self, ws: Any, message: dict[str, Any]) -> None:
        kind = message.get("type")
        name = str(message.get("channel"))
        state = self.channels.get(name)
        if kind == "event" and state is not None:
            await self._take(ws, name, state, [message.get("event")], message.get("cursor"))
        elif kind == "events" and state is not None and isinstance(message.get("events"), list):
            await self._take(ws, name, state, message["events"], message.get("cursor"))
        elif kind == "subscribed" and state is not None:
            await self._on_subscribed(ws, name, state, message)
        elif kind == "pong":
            self._on_pong(ws, message)
        elif kind == "error":
            sys.stderr.write(f"tail: error {message.get('code')}: {message.get('message')}\n")

    async def run(self, max_reconnects: int | None = None) -> int:
        import websockets
        from websockets.exceptions import ConnectionClosed, InvalidStatus

        backoff, attempts = 0.5, 0
        while True:
            try:
                async with websockets.connect(f"{self.url}?token={quote(self.token)}") as ws:
                    backoff = 0.5
                    try:
                        for name in self.channels:
                            await self._subscribe(ws, name)
                        if self.ping_interval > 0:
                            self._later(self.ping_interval, lambda: self._ping_every(ws))
                        async for raw in ws:
                            await self._on_message(ws, json.loads(raw))
                    finally:
                        self._stop_timers()
            except InvalidStatus as exc:
                sys.stderr.write(f"tail: connection refused with HTTP {exc.response.status_code}\n")
                return 2
            except (ConnectionClosed, OSError) as exc:
                sys.stderr.write(f"tail: connection lost ({exc}); reconnecting in {backoff:.1f}s\n")
            attempts += 1
            if max_reconnects is not None and attempts > max_reconnects:
                return 1
            await asyncio.sleep(backoff * (0.5 + random.random() / 2))  # noqa: S311 - jitter, not crypto
            backoff = min(backoff * 2, self.max_backoff)


def _closed_error() -> type[Exception]:
    """websockets' ConnectionClosed (imported late, like the rest of websockets here)."""
    from websockets.exceptions import ConnectionClosed

    return ConnectionClosed
