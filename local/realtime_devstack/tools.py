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
from collections.abc import Awaitable, Callable, Mapping
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
SUBSCRIBE_TIMEOUT = 10.0  # a catch-up silent this long is taken as lost, and the subscribe sent again
MAX_BACKOFF = 10.0  # the longest wait between two connection attempts (a restarted stack is back soon)
# Errors that answer a subscribe and that no retry can cure: tail exits with the reason.
FATAL_CHANNEL_ERRORS = frozenset({"forbidden", "invalid_channel"})
EXIT_REFUSED = 2  # the token, a channel or a cursor was refused: retrying cannot help


class TailExit(Exception):
    """Stop tailing: `code` is the exit status, `reason` what to tell the user."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class _Reconnect(Exception):
    """Drop this connection and open another (a server that lost track of it)."""


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
    # The cursor the user gave (--cursor): refused before anything was printed, tail exits.
    given_cursor: str | None = None
    # A cursor naming position 0 (a `subscribed` on the empty channel): valid on this channel's
    # log whatever was written since, so a log that restarted (a restarted local stack keeps
    # nothing) is read again from its start with it.
    origin_cursor: str | None = None
    printed: int = 0
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
        cursor: str | Mapping[str, str] | None,
        out: TextIO,
        *,
        ping_interval: float = PING_INTERVAL,
        head_check: float = HEAD_CHECK,
        reorder: float = REORDER,
        room_events: Literal["text", "json"] = "text",
        show_cursors: bool = False,
        new_token: Callable[[], str] | None = None,
        err: TextIO | None = None,
        subscribe_timeout: float = SUBSCRIBE_TIMEOUT,
    ) -> None:
        """`cursor`: where to resume, one for every channel (a string) or per channel (a mapping).
        `show_cursors`: each printed event carries a cursor to resume after it. `new_token`: how
        to mint another token when the server refuses this one as expired (tail's own
        development token); None: an expired token ends tail with the reason."""
        self.url = url
        self.room_events = room_events
        self.token = token
        self.new_token = new_token
        self.out = out
        self.err = err
        self.show_cursors = show_cursors
        cursors = dict(cursor) if isinstance(cursor, Mapping) else dict.fromkeys(channels, cursor)
        self.channels = {
            name: _ChannelState(cursor=cursors.get(name), given_cursor=cursors.get(name)) for name in channels
        }
        self.max_backoff = MAX_BACKOFF
        self.subscribe_timeout = subscribe_timeout
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

    def _warn(self, text: str) -> None:
        (self.err or sys.stderr).write(f"tail: {text}\n")
        (self.err or sys.stderr).flush()

    def _print(self, state: _ChannelState, event: dict[str, Any]) -> None:
        """A room's own events as a line of text (unless `room_events="json"`), the rest as JSON.

        With `show_cursors`, each carries a cursor to resume after it: its own when the server
        sent one with it (a live event, the last of a packed frame), else the last one before it,
        from which a resume repeats a few events already printed (dropped by seq) but skips none.
        """
        state.printed += 1
        self._adopt_cursors(state)
        cursor = state.cursor if self.show_cursors else None
        line = format_room_event(event) if self.room_events == "text" else None
        if line is not None:
            line = f"{line} cursor={cursor}" if cursor else line
        else:
            line = json.dumps({**event, "cursor": cursor} if cursor else event)
        self.out.write(line + "\n")

    def _emit(self, state: _ChannelState) -> None:
        while state.last_seq + 1 in state.pending:
            state.last_seq += 1
            self._print(state, state.pending.pop(state.last_seq))
        self.out.flush()
        self._adopt_cursors(state)

    @staticmethod
    def _adopt_cursors(state: _ChannelState) -> None:
        """A frame's cursor covers its seq: the resume point once everything up to it is printed."""
        for seq in sorted(s for s in state.cursors if s <= state.last_seq):
            cursor = state.cursors.pop(seq)
            if seq > state.cursor_seq:
                state.cursor, state.cursor_seq = cursor, seq

    def _catching_up(self, state: _ChannelState) -> bool:
        """A subscribe is in flight and not given up on (answers and events keep it alive)."""
        return not state.subscribed and time.monotonic() - state.busy_since < self.subscribe_timeout

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
        if not state.subscribed and state.sent_cursor and state.last_seq == 0 and taken[0][0] == 1:
            # Seq 1 answers a subscribe from this cursor (a catch-up starts right after it; a live
            # event after subscribing was written after it): it names position 0.
            state.origin_cursor = state.sent_cursor
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
                self._print(state, event)
        self._emit(state)
        cursor = message.get("cursor")
        if isinstance(cursor, str) and resolved == 0:
            state.origin_cursor = cursor
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
        elif kind == "unsubscribed" and state is not None and message.get("reason"):
            # The server ended the subscription itself (e.g. a renewed token without the channel).
            raise TailExit(EXIT_REFUSED, f"{name}: the server ended the subscription ({message['reason']})")
        elif kind == "error":
            await self._on_error(ws, message)

    async def _on_error(self, ws: Any, message: dict[str, Any]) -> None:
        """An error frame: recovered from where a retry can help, else tail ends with the reason."""
        code, text, name = message.get("code"), message.get("message"), message.get("channel")
        state = self.channels.get(str(name)) if name is not None else None
        if code in ("unauthorized", "token_expired"):
            if (code == "token_expired" or "expired" in str(text)) and self.new_token is None:
                raise TailExit(EXIT_REFUSED, f"the token was refused ({text}): pass a new one with --token")
            raise _Reconnect(f"unauthorized: {text}")  # a new connection (with a new token if tail mints it)
        if state is None:
            self._warn(f"error {code}: {text}")
            return
        if code in FATAL_CHANNEL_ERRORS:
            raise TailExit(EXIT_REFUSED, f"{name}: {code}: {text}")
        if code == "invalid_cursor":
            await self._on_refused_cursor(ws, str(name), state, str(text))
            return
        self._warn(f"{name}: error {code}: {text}; subscribing again")
        state.busy_since = time.monotonic()  # the watchdog resubscribes if nothing follows

    async def _on_refused_cursor(self, ws: Any, name: str, state: _ChannelState, text: str) -> None:
        refused = state.sent_cursor
        if refused is not None and refused == state.given_cursor and state.printed == 0:
            raise TailExit(EXIT_REFUSED, f"{name}: the --cursor given was refused: {text}")
        # The cursor tail was following no longer fits the channel's log: the log restarted (a
        # local stack keeps nothing across a restart) or is signed with another secret now.
        # Everything tail knew of the channel is void: start over, from the log's start if a
        # cursor for it is known, else from its head, and say so.
        origin = state.origin_cursor if state.origin_cursor != refused else None
        state.cursor = state.given_cursor = None
        state.cursor_seq = state.last_seq = 0
        state.pending.clear()
        state.cursors.clear()
        if origin is not None:
            self._warn(f"{name}: the resume cursor was refused ({text}): the log restarted; reading it from its start")
        else:
            state.origin_cursor = None
            self._warn(
                f"{name}: the resume cursor was refused ({text}): the channel's log restarted or its secret "
                "changed; following it from its head (events written since may not be printed)"
            )
        await self._subscribe(ws, name, origin)

    async def _watch_subscribes(self, ws: Any) -> None:
        """A subscribe nobody answered (a reply lost on the way) is sent again: tail never waits forever."""
        while True:
            await asyncio.sleep(min(1.0, self.subscribe_timeout / 4))
            for name, state in self.channels.items():
                if not self._catching_up(state) and not state.subscribed:
                    self._warn(f"{name}: no answer to the subscribe for {self.subscribe_timeout:g} s; sending it again")
                    await self._subscribe(ws, name, state.sent_cursor)

    async def run(self, max_reconnects: int | None = None) -> int:
        """Tail until stopped; the exit status when it cannot go on (the reason is on stderr):
        2 when the token, a channel or a cursor was refused, 1 after `max_reconnects` failed
        attempts in a row. A connection that is lost or refused with a 5xx (a stack restarting)
        is retried with capped, jittered backoff."""
        import websockets
        from websockets.exceptions import ConnectionClosed, InvalidStatus

        backoff, attempts = 0.5, 0
        while True:
            try:
                async with websockets.connect(f"{self.url}?token={quote(self.token)}") as ws:
                    backoff, attempts = 0.5, 0
                    try:
                        for name in self.channels:
                            await self._subscribe(ws, name)
                        if self.ping_interval > 0:
                            self._later(self.ping_interval, lambda: self._ping_every(ws))
                        if self.subscribe_timeout > 0:
                            self._later(0, lambda: self._watch_subscribes(ws))
                        async for raw in ws:
                            await self._on_message(ws, json.loads(raw))
                    finally:
                        self._stop_timers()
                # The server closed the connection cleanly (e.g. 1001 when the stack stops): go on.
                self._warn(f"connection closed by the server; reconnecting in {backoff:.1f}s")
            except TailExit as exc:
                self._warn(exc.reason)
                return exc.code
            except _Reconnect as exc:
                if self.new_token is not None:
                    self.token = self.new_token()
                self._warn(f"{exc}; reconnecting in {backoff:.1f}s")
            except InvalidStatus as exc:
                status = exc.response.status_code
                reason = _body_message(exc.response.body)
                if status == 401 and self.new_token is not None and attempts == 0:
                    self.token = self.new_token()  # tail's own token ran out: mint another, once
                elif status < 500:
                    self._warn(f"connection refused with HTTP {status}{reason}")
                    return EXIT_REFUSED
                else:
                    self._warn(f"connection refused with HTTP {status}{reason}; reconnecting in {backoff:.1f}s")
            except (ConnectionClosed, OSError) as exc:
                self._warn(f"connection lost ({exc}); reconnecting in {backoff:.1f}s")
            attempts += 1
            if max_reconnects is not None and attempts > max_reconnects:
                self._warn(f"gave up after {attempts} attempts in a row")
                return 1
            await asyncio.sleep(backoff * (0.5 + random.random() / 2))  # noqa: S311 - jitter, not crypto
            backoff = min(backoff * 2, self.max_backoff)


def _body_message(body: bytes | None) -> str:
    """`: <message>` from a refused handshake's JSON body (what $connect or the gateway said), or ''."""
    try:
        message = json.loads(body or b"").get("message")
    except (ValueError, AttributeError):
        return ""
    return f": {message}" if isinstance(message, str) and message else ""


def _closed_error() -> type[Exception]:
    """websockets' ConnectionClosed (imported late, like the rest of websockets here)."""
    from websockets.exceptions import ConnectionClosed

    return ConnectionClosed
