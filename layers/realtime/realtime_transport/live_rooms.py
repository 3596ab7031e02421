"""The room actions of the WebSocket: join, leave, members, update, patch.

A room `R` is the channel `room_R` plus presence (`rooms.presence`) and a state document and
metadata (`rooms.room`). Every room change reaches members as an event on `room_R`, published
from the tables' streams (the rooms outbox), never from here: these handlers only change the
tables and answer the connection that asked.

`join` writes the membership (which validates the member data, so a refused join leaves nothing),
subscribes the connection to `room_R`, reads the channel's head (`cursor`), then reads the snapshot
(state, metadata, the first page of members, the count). Every event at or before `cursor` was published from a change
already committed, so the snapshot reflects it; an event after `cursor` may be reflected too,
which is harmless because clients apply room events idempotently (presence by `session` and
`rev`, state and metadata by the room's version). A join with the `cursor` of an earlier one (a
reconnect) replays the channel from there instead of sending a snapshot, which repairs a client's
copy of presence, metadata and state at once; if the history window has passed, it sends the
snapshot and says `truncated`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import Forbidden
from .models.websocket import (
    Join,
    Joined,
    Leave,
    Left,
    Members,
    MembersPageMessage,
    MemberView,
    Patch,
    Patched,
    RoomMessage,
    StateView,
    Update,
    Updated,
)
from .rooms import Room, room_channel_name
from .rooms.presence import Member, Presence, PresenceRegistry

if TYPE_CHECKING:
    from pydantic import BaseModel

    from . import tokens
    from .clock import Deadline
    from .live import LiveService

# Members in a `joined` snapshot; the client pages for the rest with `members`.
FIRST_PAGE = 100


def member_view(member: Member) -> MemberView:
    """The wire shape of a `rooms.presence.Member`."""
    return MemberView.model_validate(member.to_dict())


class LiveRooms:
    def __init__(self, live: LiveService) -> None:
        self.live = live
        self.realtime = live.realtime
        self.registry = PresenceRegistry(self.realtime)

    def handle(self, connection_id: str, message: RoomMessage, claims: tokens.Claims, deadline: Deadline) -> None:
        """One room action of an authenticated connection (RealtimeError -> an `error` frame)."""
        room = Room(self.realtime, message.room)
        # Refused before anything is read: a room outside the token leaks nothing, not even existence.
        claims.require(room.channel_name)
        if isinstance(message, Join):
            self._send(connection_id, self._join(connection_id, room, message, claims, deadline))
        elif isinstance(message, Leave):
            Presence(self.realtime, room.id).leave(connection_id, reason="left")
            self.realtime.connections.unsubscribe(connection_id, self.realtime.channel(room.channel_name).key)
            self._send(connection_id, Left(room=room.id))
        elif isinstance(message, Members):
            page = Presence(self.realtime, room.id).members(limit=message.limit, cursor=message.cursor)
            self._send(
                connection_id,
                MembersPageMessage(
                    room=room.id,
                    items=[member_view(m) for m in page.items],
                    next_cursor=page.next_cursor,
                    has_more=page.has_more,
                ),
            )
        elif isinstance(message, Update):
            updated = Presence(self.realtime, room.id).update(connection_id, claims.sub, message.member)
            self._send(connection_id, Updated(room=room.id, self_=member_view(updated)))
        elif isinstance(message, Patch):
            if not claims.may_write(room.channel_name):
                raise Forbidden(f"token has no write claim for room {room.id!r}", field="write")
            result = room.patch(
                message.version, merge_patch=message.patch, operations=message.operations, by=claims.sub
            )
            self._send(connection_id, Patched(room=room.id, version=result.version))

    def _join(self, connection_id: str, room: Room, message: Join, claims: tokens.Claims, deadline: Deadline) -> Joined:
        channel = self.realtime.channel(room_channel_name(room.id))
        if message.cursor is not None:
            channel.decode_cursor(message.cursor)  # a bad cursor is refused before anything changes
        presence = Presence(self.realtime, room.id)
        # The membership first: it validates the member data, so a refused join leaves nothing.
        me = presence.join(connection_id, claims.sub, message.member)
        self.realtime.connections.subscribe(connection_id, channel.key, token_exp=claims.exp)  # the fan-out's hint
        truncated = False
        if message.cursor is not None:
            replayed = self.live.catch_up(connection_id, channel, message.cursor, deadline)
            if not replayed.truncated and not replayed.has_more:
                return Joined(
                    room=room.id,
                    self_=member_view(me),
                    cursor=replayed.cursor,
                    position=replayed.position,
                    resumed=True,
                )
            truncated = True
        head = channel.history(limit=1)  # the head, read before the snapshot
        snapshot = room.get()
        page = presence.members(limit=FIRST_PAGE)
        return Joined(
            room=room.id,
            self_=member_view(me),
            cursor=head.next_cursor,
            position=head.position,
            truncated=truncated,
            members=[member_view(m) for m in page.items],
            members_cursor=page.next_cursor if page.has_more else None,
            member_count=snapshot["memberCount"],
            metadata=snapshot["metadata"],
            state=StateView(**snapshot["state"]),
        )

    def _send(self, connection_id: str, message: BaseModel) -> None:
        self.live.pusher.send(connection_id, message.model_dump_json(exclude_none=True, by_alias=True).encode())
