"""Rooms: a channel (`room_{id}`) plus a shared JSON document and metadata its members edit together.

This package holds the state and metadata core (issue 8, first slice): patch application,
the path-level conflict rule, the room item's data access, and `Room`; and presence
(`presence.py` over `presence_store.py`, published by `presence_outbox.py`): who is in a room.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from .room import PatchResult, Room, RoomState, room_channel_name

# Each name's module, imported on first access (PEP 562): importing one submodule (the HTTP
# function's `rooms.service`, the fan-out's `rooms.presence`) no longer imports every other one
# at cold start. The factory `room` is not among them: the submodule `rooms.room` has that name
# (import it from `rooms.room`).
_EXPORTS = {
    **dict.fromkeys(
        (
            "MemberTooLarge",
            "MetadataTooLarge",
            "NotInRoom",
            "PatchTestFailed",
            "PreconditionFailed",
            "RoomContended",
            "RoomTooLarge",
            "StateConflict",
            "StateTooLarge",
        ),
        "errors",
    ),
    **dict.fromkeys(("Member", "MembersPage", "Presence", "PresenceRegistry", "SweepReport"), "presence"),
    **dict.fromkeys(("PatchResult", "Room", "RoomState", "room_channel_name"), "room"),
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


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
    "room_channel_name",
]
