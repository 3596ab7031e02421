"""Rooms: a channel (`room_{id}`) plus a shared JSON document and metadata its members edit together.

This package holds the state and metadata core (issue 8, first slice): patch application,
the path-level conflict rule, the room item's data access, and `Room`; and presence
(`presence.py` over `presence_store.py`, published by `presence_outbox.py`): who is in a room.
"""

from __future__ import annotations

from .errors import (
    MemberTooLarge,
    MetadataTooLarge,
    NotInRoom,
    PatchTestFailed,
    PreconditionFailed,
    RoomContended,
    RoomTooLarge,
    StateConflict,
    StateTooLarge,
)
from .presence import Member, MembersPage, Presence, PresenceRegistry, SweepReport
from .room import PatchResult, Room, RoomState, room, room_channel_name

__all__ = [
    "Member",
    "MemberTooLarge",
    "MembersPage",
    "MetadataTooLarge",
    "NotInRoom",
    "PatchResult",
    "PatchTestFailed",
    "PreconditionFailed",
    "Presence",
    "PresenceRegistry",
    "Room",
    "RoomContended",
    "RoomState",
    "RoomTooLarge",
    "StateConflict",
    "StateTooLarge",
    "SweepReport",
    "room",
    "room_channel_name",
]
