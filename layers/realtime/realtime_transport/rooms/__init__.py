"""Rooms: a channel (`room_{id}`) plus a shared JSON document and metadata its members edit together.

This package holds the state and metadata core (issue 8, first slice): patch application,
the path-level conflict rule, the room item's data access, and `Room`. Presence, routes,
WebSocket actions and the outbox that publishes room changes come in later slices.
"""

from __future__ import annotations

from .errors import (
    MetadataTooLarge,
    PatchTestFailed,
    PreconditionFailed,
    RoomContended,
    RoomTooLarge,
    StateConflict,
    StateTooLarge,
)
from .room import PatchResult, Room, RoomState, room, room_channel_name

__all__ = [
    "MetadataTooLarge",
    "PatchResult",
    "PatchTestFailed",
    "PreconditionFailed",
    "Room",
    "RoomContended",
    "RoomState",
    "RoomTooLarge",
    "StateConflict",
    "StateTooLarge",
    "room",
    "room_channel_name",
]
