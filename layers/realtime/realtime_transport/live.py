"""Live subscriptions over the WebSocket: connect, subscribe with catch-up, unsubscribe, ping.

Every reply goes out through the management API (`Pusher`), like the fan-out's
events, so a client sees one ordered stream of frames per connection.
"""

from __future__ import annotations

import time
from typing import Protocol

from pydantic import ValidationError

from . import tokens
from .channel import MAX_PAGE, Channel
from .clock import now_ms
from .connections import Connection
from .delivery import DeliveryFailed
from .errors import Forbidden, RealtimeError, Unauthorized
from .models.websocket import (
    ErrorMessage,
    Ping,
    Pong,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    client_message,
    event_frame,
)
from .observability import logger
from .realtime import Realtime


class Pusher(Protocol):
    def send(self, connection_id: str, data: bytes) -> bool:
        """Deliver one frame; False when the connection is gone."""
        ...


def _frame(message: ErrorMessage | Subscribed | Unsubscribed | Pong) -> bytes:
    return message.model_dump_json(exclude_none=True).encode()


def _error_for(exc: ValidationError) -> tuple[str, str]:
    """A code and a sentence for a message that did not validate."""
    first = exc.errors()[0]
    kind, loc = first["type"], [str(part) for part in first["loc"]]
    if kind == "json_invalid":
        return "invalid_json", "message is not valid JSON"
    if kind in {"union_tag_not_found", "model_attributes_type", "model_type"}:
        return "invalid_message", "message must be a JSON object with an 'action'"
    if kind == "union_tag_invalid":
        return "unknown_action", "action must be one of subscribe, unsubscribe, ping"
    field = loc[-1] if loc else "message"
    if field == "channel":
        return "invalid_channel", f"channel: {first['msg']}"
    if kind == "extra_forbidden":
        return "invalid_message", f"{field}: is not a recognised field"
    return "invalid_message", f"{field}: {first['msg']}"


class LiveService:
    def __init__(self, realtime: Realtime, pusher: Pusher) -> None:
        self.realtime = realtime
        self.pusher = pusher

    # --- connection life cycle -------------------------------------------------------------

    def connect(self, connection_id: str, token: str | None) -> tokens.Claims:
        """Check the token at the handshake (Unauthorized -> 401, Forbidden -> 403) and record the connection."""
        claims = tokens.verify(self.realtime.secret, token)
        if not claims.channels:
            raise Forbidden("token grants no channels", field="token")
        self.realtime.connections.put_connection(
            Connection(
                connection_id=connection_id,
                sub=claims.sub,
                channels=claims.channels,
                token_expires_at=claims.exp,
                connected_at_ms=now_ms(),
            )
        )
        return claims

    def disconnect(self, connection_id: str) -> None:
        self.realtime.connections.delete_connection(connection_id)

    # --- messages ------------------------------------------------------------------------------

    def handle(self, connection_id: str, body: str | None) -> None:
        try:
            message = client_message.validate_json(body or "")
        except ValidationError as exc:
            code, text = _error_for(exc)
            self._send_error(connection_id, code, text)
            return
        try:
            if isinstance(message, Subscribe):
                self._subscribe(connection_id, message)
            elif isinstance(message, Unsubscribe):
                channel = self._channel(message.channel)
                self.realtime.connections.unsubscribe(connection_id, channel.key)
                self.pusher.send(connection_id, _frame(Unsubscribed(channel=channel.name)))
            elif isinstance(message, Ping):
                self.pusher.send(connection_id, _frame(Pong()))
        except DeliveryFailed as exc:
            # The client cannot be reached right now; it resubscribes with its cursor when it can.
            logger.warning("reply not delivered", extra={"connection_id": connection_id, "reason": str(exc)})
        except RealtimeError as exc:
            channel_name = message.channel if isinstance(message, Subscribe | Unsubscribe) else None
            self._send_error(connection_id, exc.code, exc.message, channel_name)

    def _channel(self, name: str) -> Channel:
        return self.realtime.channel(name)

    def _subscribe(self, connection_id: str, message: Subscribe) -> None:
        connection = self.realtime.connections.connection(connection_id)
        if connection is None:
            raise Unauthorized("connection is not registered; reconnect")
        if connection.token_expires_at + 5 < time.time():
            raise Unauthorized("token has expired; reconnect with a new one")
        claims = tokens.Claims(sub=connection.sub, exp=connection.token_expires_at, channels=connection.channels)
        channel = self._channel(message.channel)
        # Refused before anything is read: a forbidden channel leaks nothing, not even existence.
        claims.require(channel.name)
        if message.cursor is not None:
            channel.decode_cursor(message.cursor)  # a bad cursor is refused before subscribing
        # Subscribe first, then read: an event committed from now on reaches this connection
        # through the fan-out, and everything before it comes from history (duplicates are
        # dropped by seq on the client).
        self.realtime.connections.subscribe(connection_id, channel.key)
        self.pusher.send(connection_id, _frame(self._catch_up(connection_id, channel, message.cursor)))

    def _catch_up(self, connection_id: str, channel: Channel, cursor: str | None) -> Subscribed:
        """Send the events after `cursor` (up to the history window); the answer names where it got to."""
        if cursor is None:
            latest = channel.history(limit=1)
            return Subscribed(channel=channel.name, cursor=latest.next_cursor, position=latest.position)
        truncated = False
        while True:
            page = channel.history(limit=MAX_PAGE, cursor=cursor)
            truncated = truncated or page.truncated
            reached = Subscribed(
                channel=channel.name, cursor=page.next_cursor, truncated=truncated, position=page.position
            )
            for event in page.items:
                frame = event_frame(channel.name, event.to_json(), channel.cursor(event.seq))
                if not self.pusher.send(connection_id, frame):
                    return reached  # the client left mid catch-up
            progressed = page.next_cursor != cursor
            cursor = page.next_cursor
            if not page.has_more or not progressed:
                return reached  # caught up, or stopped at a write still in flight

    def _send_error(self, connection_id: str, code: str, message: str, channel: str | None = None) -> None:
        self.pusher.send(connection_id, _frame(ErrorMessage(code=code, message=message, channel=channel)))
