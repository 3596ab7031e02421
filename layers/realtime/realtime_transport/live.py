"""Live subscriptions over the WebSocket: connect, subscribe with catch-up, unsubscribe, ping;
the room actions (join, leave, members, update, patch) are `live_rooms.py`'s.

Every reply goes out through the management API (`Pusher`), like the fan-out's
events, so a client sees one ordered stream of frames per connection.

Catch-up must finish inside the function's timeout: one management-API call costs 10 to
20 ms on AWS, so missed events travel packed, as many as fit a 32 KB frame, and a catch-up
that runs short of time answers `subscribed` with `hasMore` and where it got to; the client
subscribes again from there. A `pong` carries the head of every channel the connection is
subscribed to, so a client on a quiet channel learns of an event the live path never brought
(the fan-out reads subscribers from an index that lags: a subscription can miss the first
events after it, and a lost delivery of a channel's last event shows no gap until the next).

A token's expiry holds after the handshake: every subscription carries it (the fan-out stops
delivering to, and closes, a connection whose token has run out), and `auth` renews it on the
open connection with a new token of the same `sub` (see `_auth`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from pydantic import ValidationError

from . import tokens
from .channel import MAX_PAGE, Channel
from .clock import Deadline, now_ms
from .connections import Connection
from .delivery import DeliveryFailed
from .errors import Forbidden, RealtimeError, StoreUnavailable, Unauthorized
from .limits import FRAME_BYTES
from .models.frames import packed_frames
from .models.websocket import (
    ACTIONS,
    AUTH_REFUSED,
    TOKEN_EXPIRED,
    Auth,
    Authed,
    ErrorMessage,
    Left,
    Ping,
    Pong,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    client_message,
)
from .models.websocket import RoomMessage as _RoomMessage
from .observability import logger
from .realtime import Realtime
from .rooms import room_channel_name
from .rooms.errors import PreconditionFailed, StateConflict
from .rooms.presence import Presence
from .rooms.presence_store import split_room_key


class TokenExpired(Unauthorized):
    """The connection's token ran out after the handshake: renew it (`auth`) or reconnect."""

    code = TOKEN_EXPIRED


class AuthRefused(RealtimeError):
    """An `auth` whose token cannot replace the connection's: the current one stays."""

    code = AUTH_REFUSED


# Why the server ended a subscription or a membership itself (`unsubscribed` / `left`).
NOT_ALLOWED = "not_allowed"


class Pusher(Protocol):
    def send(self, connection_id: str, data: bytes) -> bool:
        """Deliver one frame; False when the connection is gone."""
        ...


def _frame(message: ErrorMessage | Subscribed | Unsubscribed | Pong | Authed | Left) -> bytes:
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
        return "unknown_action", f"action must be one of {', '.join(ACTIONS)}"
    field = loc[-1] if loc else "message"
    if field == "channel":
        return "invalid_channel", f"channel: {first['msg']}"
    if kind == "extra_forbidden":
        return "invalid_message", f"{field}: is not a recognised field"
    return "invalid_message", f"{field}: {first['msg']}"


# A pong reports at most this many channels' heads (one consistent GetItem each).
MAX_HEADS = 100


class LiveService:
    def __init__(self, realtime: Realtime, pusher: Pusher) -> None:
        from .live_rooms import LiveRooms

        self.realtime = realtime
        self.pusher = pusher
        self.rooms = LiveRooms(self)

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
                write=claims.write,
            )
        )
        return claims

    def disconnect(self, connection_id: str) -> None:
        """`$disconnect`: the connection's rooms start their grace period, then its items go.

        If presence cannot be updated now, nothing is deleted: the connection's room leases then
        expire and the presence sweeper takes it out of its rooms (`$disconnect` is best effort on
        AWS anyway, so that path exists regardless)."""
        try:
            self.rooms.registry.connection_gone(connection_id)
        except StoreUnavailable as exc:
            logger.warning(
                "presence not updated at disconnect", extra={"connection_id": connection_id, "error": str(exc)}
            )
            return
        self.realtime.connections.delete_connection(connection_id)

    # --- messages ------------------------------------------------------------------------------

    def handle(self, connection_id: str, body: str | None, remaining_ms: Callable[[], int] | None = None) -> None:
        """One client message. `remaining_ms` is the invocation's clock (Lambda's
        `context.get_remaining_time_in_millis`): a catch-up stops in time to answer."""
        deadline = Deadline(remaining_ms)
        try:
            message = client_message.validate_json(body or "")
        except ValidationError as exc:
            code, text = _error_for(exc)
            self._send_error(connection_id, code, text)
            return
        try:
            if isinstance(message, Subscribe):
                self._subscribe(connection_id, message, deadline)
            elif isinstance(message, Unsubscribe):
                channel = self._channel(message.channel)
                self.realtime.connections.unsubscribe(connection_id, channel.key)
                self.pusher.send(connection_id, _frame(Unsubscribed(channel=channel.name)))
            elif isinstance(message, Ping):
                self._heartbeat(connection_id)
                self.pusher.send(connection_id, _frame(Pong(heads=self._heads(connection_id))))
            elif isinstance(message, Auth):
                self._auth(connection_id, message)
            else:
                self.rooms.handle(connection_id, message, self._claims(connection_id), deadline)
        except DeliveryFailed as exc:
            # The client cannot be reached right now; it resubscribes with its cursor when it can.
            logger.warning("reply not delivered", extra={"connection_id": connection_id, "reason": str(exc)})
        except RealtimeError as exc:
            channel_name = message.channel if isinstance(message, Subscribe | Unsubscribe) else None
            room = message.room if isinstance(message, _RoomMessage) else None
            details = _details_of(exc)
            self._send_error(connection_id, exc.code, exc.message, channel_name, room=room, details=details)

    def _channel(self, name: str) -> Channel:
        return self.realtime.channel(name)

    def _heads(self, connection_id: str) -> dict[str, int] | None:
        """The head of every channel this connection is subscribed to (None if unreadable:
        a pong must still answer, it is also the client's liveness check)."""
        prefix = f"{self.realtime.name}#"
        try:
            keys = [key for key in self.realtime.connections.subscriptions(connection_id) if key.startswith(prefix)]
            return {key.removeprefix(prefix): self.realtime.store.head(key).seq for key in keys[:MAX_HEADS]}
        except StoreUnavailable as exc:
            logger.warning("heads unreadable for a pong", extra={"connection_id": connection_id, "error": str(exc)})
            return None

    def _heartbeat(self, connection_id: str) -> None:
        """A ping renews the connection's room leases (presence's heartbeat); a pong must still
        answer when that fails, it is also the client's liveness check."""
        try:
            self.rooms.registry.heartbeat(connection_id)
        except StoreUnavailable as exc:
            logger.warning("room leases not renewed", extra={"connection_id": connection_id, "error": str(exc)})

    def _claims(self, connection_id: str) -> tokens.Claims:
        """The claims the connection's token carried at the handshake, while they are valid."""
        connection = self.realtime.connections.connection(connection_id)
        if connection is None:
            raise Unauthorized("connection is not registered; reconnect")
        claims = tokens.Claims(
            sub=connection.sub, exp=connection.token_expires_at, channels=connection.channels, write=connection.write
        )
        if claims.expired(time.time()):
            raise TokenExpired("token has expired; renew it (auth) or reconnect with a new one")
        return claims

    def _auth(self, connection_id: str, message: Auth) -> None:
        """Renew the connection's token: the same secret and `sub`, else refused and the old one stays.

        The connection item takes the new rights and expiry first (the fan-out confirms a stale
        index hint against it), then every subscription its new `tokenExp`. A subscription the new
        token no longer allows is dropped (`unsubscribed` with reason `not_allowed`), and a room it
        no longer allows is left (`left`, reason `not_allowed`; the other members see a leave), each
        before the `authed` answer, which lists them. An expired connection may renew too, as long
        as its item is still there: the fan-out may have closed it already, then the client
        reconnects with the new token."""
        connection = self.realtime.connections.connection(connection_id)
        if connection is None:
            raise Unauthorized("connection is not registered; reconnect")
        try:
            claims = tokens.verify(self.realtime.secret, message.token)
        except Unauthorized as exc:
            raise AuthRefused(f"new token refused: {exc.message}; the current token stays", field="token") from exc
        if claims.sub != connection.sub:
            raise AuthRefused(
                f"new token is for sub {claims.sub!r}, this connection is {connection.sub!r}; the current token stays",
                field="token",
            )
        if not claims.channels:
            raise AuthRefused("new token grants no channels; the current token stays", field="token")
        if not self.realtime.connections.renew(connection_id, claims.sub, claims.channels, claims.write, claims.exp):
            raise Unauthorized("connection is not registered; reconnect")  # gone between the read and the write
        left = self._leave_rooms_not_allowed(connection_id, claims)
        kept: list[str] = []
        dropped: list[str] = []
        for key in self.realtime.connections.subscriptions(connection_id):
            _, _, name = key.partition("#")
            if claims.allows(name):
                kept.append(key)
            else:
                self.realtime.connections.unsubscribe(connection_id, key)
                dropped.append(name)
                self.pusher.send(connection_id, _frame(Unsubscribed(channel=name, reason=NOT_ALLOWED)))
        self.realtime.connections.retime_subscriptions(connection_id, kept, claims.exp)
        logger.info(
            "token renewed",
            extra={"connection_id": connection_id, "exp": claims.exp, "dropped": dropped, "left": left},
        )
        self.pusher.send(connection_id, _frame(Authed(exp=claims.exp, unsubscribed=dropped or None, left=left or None)))

    def _leave_rooms_not_allowed(self, connection_id: str, claims: tokens.Claims) -> list[str]:
        """Leave each room of this namespace the new token does not allow (its channel is dropped after)."""
        left: list[str] = []
        for membership in self.rooms.registry.store.memberships(connection_id):
            parsed = split_room_key(membership.room_key)
            if parsed is None or parsed[0] != self.realtime.name or claims.allows(room_channel_name(parsed[1])):
                continue
            Presence(self.realtime, parsed[1]).leave(connection_id, reason="left")
            left.append(parsed[1])
            self.pusher.send(connection_id, _frame(Left(room=parsed[1], reason=NOT_ALLOWED)))
        return left

    def _subscribe(self, connection_id: str, message: Subscribe, deadline: Deadline) -> None:
        claims = self._claims(connection_id)
        channel = self._channel(message.channel)
        # Refused before anything is read: a forbidden channel leaks nothing, not even existence.
        claims.require(channel.name)
        if message.cursor is not None:
            channel.decode_cursor(message.cursor)  # a bad cursor is refused before subscribing
        # Subscribe first, then read: an event committed from now on reaches this connection
        # through the fan-out, and everything before it comes from history (duplicates are
        # dropped by seq on the client). The token's expiry goes with it: the fan-out's hint.
        self.realtime.connections.subscribe(connection_id, channel.key, token_exp=claims.exp)
        self.pusher.send(connection_id, _frame(self.catch_up(connection_id, channel, message.cursor, deadline)))

    def catch_up(self, connection_id: str, channel: Channel, cursor: str | None, deadline: Deadline) -> Subscribed:
        """Send the events after `cursor` (up to the history window), packed into as few messages
        as fit; the answer names where it got to, and says `hasMore` if time ran short first."""
        if cursor is None:
            latest = channel.history(limit=1)
            return Subscribed(channel=channel.name, cursor=latest.next_cursor, position=latest.position)
        truncated = False
        position = channel.decode_cursor(cursor)
        while True:
            page = channel.history(limit=MAX_PAGE, cursor=cursor)
            truncated = truncated or page.truncated
            events = [(event.seq, event.to_json()) for event in page.items]
            for frame, last_seq in packed_frames(channel.name, events, channel.cursor, FRAME_BYTES):
                if deadline.passed():
                    return self._stopped_at(channel, position, truncated)
                if not self.pusher.send(connection_id, frame):
                    return self._stopped_at(channel, position, truncated)  # the client left mid catch-up
                position = last_seq
            progressed = page.next_cursor != cursor
            cursor = page.next_cursor
            position = page.position
            if not page.has_more or not progressed:
                # Caught up, or stopped at a write still in flight (the live path brings it).
                return Subscribed(channel=channel.name, cursor=cursor, truncated=truncated, position=position)
            if deadline.passed():
                return self._stopped_at(channel, position, truncated)

    @staticmethod
    def _stopped_at(channel: Channel, position: int, truncated: bool) -> Subscribed:
        return Subscribed(
            channel=channel.name,
            cursor=channel.cursor(position),
            truncated=truncated,
            position=position,
            has_more=True,
        )

    def _send_error(
        self,
        connection_id: str,
        code: str,
        message: str,
        channel: str | None = None,
        *,
        room: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        error = ErrorMessage(code=code, message=message, channel=channel, room=room, details=details)
        self.pusher.send(connection_id, _frame(error))


def _details_of(exc: RealtimeError) -> dict[str, Any] | None:
    """What a client needs to act on an error without another read (a conflict's fresh state)."""
    if isinstance(exc, StateConflict):
        return {"paths": exc.conflicts, "version": exc.version, "doc": exc.doc}
    if isinstance(exc, PreconditionFailed):
        return {"version": exc.version}
    return None
