"""Terminal tools: `publish` an event over HTTP, `tail` channels over the WebSocket."""

from __future__ import annotations

import asyncio
import json
import random
import sys
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any, TextIO
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


@dataclass
class _ChannelState:
    cursor: str | None = None
    last_seq: int = 0
    subscribed: bool = False
    pending: dict[int, dict[str, Any]] = field(default_factory=dict)


class Tail:
    """Prints each channel's events once and in order, resuming from its cursor after a drop."""

    def __init__(self, url: str, token: str, channels: list[str], cursor: str | None, out: TextIO) -> None:
        self.url = url
        self.token = token
        self.out = out
        self.channels = {name: _ChannelState(cursor=cursor) for name in channels}
        self.max_backoff = 30.0

    def _emit(self, state: _ChannelState) -> None:
        while state.last_seq + 1 in state.pending:
            state.last_seq += 1
            self.out.write(json.dumps(state.pending.pop(state.last_seq)) + "\n")
        self.out.flush()

    async def _subscribe(self, ws: Any, name: str) -> None:
        message: dict[str, Any] = {"action": "subscribe", "channel": name}
        if self.channels[name].cursor:
            message["cursor"] = self.channels[name].cursor
        await ws.send(json.dumps(message))

    async def _on_message(self, ws: Any, message: dict[str, Any]) -> None:
        kind = message.get("type")
        state = self.channels.get(str(message.get("channel")))
        if kind == "event" and state is not None:
            seq = int(message["event"]["seq"])
            if seq > state.last_seq:
                state.pending[seq] = message["event"]
                self._emit(state)
            # A gap that outlives a live batch: ask for it (the catch-up answers in order).
            if state.subscribed and state.pending and min(state.pending) > state.last_seq + 1:
                state.subscribed = False
                await self._subscribe(ws, str(message["channel"]))
        elif kind == "subscribed" and state is not None:
            state.cursor, state.subscribed = message["cursor"], True
            if message.get("truncated"):
                sys.stderr.write(f"tail: {message['channel']}: history window passed; some events were lost\n")
            # Every position up to here is resolved: a seq missing below it is a tombstone.
            position = int(message.get("position", 0))
            while state.last_seq < position:
                state.last_seq += 1
                event = state.pending.pop(state.last_seq, None)
                if event is not None:
                    self.out.write(json.dumps(event) + "\n")
            self._emit(state)
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
                    for state in self.channels.values():
                        state.subscribed = False
                    for name in self.channels:
                        await self._subscribe(ws, name)
                    async for raw in ws:
                        await self._on_message(ws, json.loads(raw))
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
