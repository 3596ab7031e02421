"""Room errors. Adapters map them to HTTP statuses and WebSocket error codes, as the library's own.

| error               | HTTP | why                                                                 |
| ------------------- | ---- | ------------------------------------------------------------------- |
| `StateConflict`     | 409  | a path the patch changes was changed after the patch's base version |
| `NotInRoom`         | 409  | a presence change from a connection that has not joined the room    |
| `PreconditionFailed`| 412  | `If-Match` named another version than the current one               |
| `StateTooLarge`     | 413  | the document would exceed its limit after the patch                 |
| `MetadataTooLarge`  | 413  | the metadata exceeds its limit                                      |
| `MemberTooLarge`    | 413  | a member's presence data exceeds 1 KiB                              |
| `PatchTestFailed`   | 422  | a JSON Patch `test` operation did not hold                          |
| `RoomContended`     | 503  | the room kept changing under us for too many attempts: retry        |
"""

from __future__ import annotations

from typing import Any

from ..errors import RealtimeError, StoreUnavailable


class StateConflict(RealtimeError):
    """The patch overlaps a change made after its base version: nothing was written.

    Carries what the client needs to decide without another read: the current version and
    document, and the conflicting paths (JSON Pointers; `""` is the whole document).
    """

    code = "conflict"

    def __init__(self, version: int, doc: Any, conflicts: list[str]) -> None:
        super().__init__(f"the room changed at {', '.join(repr(p) for p in conflicts)} since the patch's version")
        self.version = version
        self.doc = doc
        self.conflicts = conflicts


class PreconditionFailed(RealtimeError):
    """Strict compare-and-set (`If-Match`) failed: the room is at another version."""

    code = "precondition_failed"

    def __init__(self, version: int, expected: int | None) -> None:
        super().__init__(f"the room is at version {version}, not {expected}")
        self.version = version
        self.expected = expected


class PatchTestFailed(RealtimeError):
    """A JSON Patch `test` operation failed; the patch is all or nothing, so nothing changed."""

    code = "patch_test_failed"


class RoomTooLarge(RealtimeError):
    """Base of the 413s: a room's stored item must stay well inside DynamoDB's 400 KB."""

    code = "room_too_large"


class StateTooLarge(RoomTooLarge):
    code = "state_too_large"


class MetadataTooLarge(RoomTooLarge):
    code = "metadata_too_large"


class MemberTooLarge(RoomTooLarge):
    """A member's presence data is larger than 1 KiB (compact UTF-8 JSON): nothing was stored."""

    code = "member_too_large"


class NotInRoom(RealtimeError):
    """The connection has not joined the room (or has left it), so it cannot change its presence there."""

    code = "not_joined"


class RoomContended(StoreUnavailable):
    """Every attempt lost the race to another writer (each attempt means someone else committed).

    A 503 like any store trouble: the caller may retry, nothing of this change was written.
    """

    code = "unavailable"
