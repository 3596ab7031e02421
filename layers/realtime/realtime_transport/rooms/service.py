"""Rooms as the HTTP API serves them: thin operations over `Room` and its presence, in feeds.py's style.

    rooms = Rooms(realtime)
    rooms.get("design-review")                          # RoomView(..., etag='"3"')
    rooms.patch("design-review", 3, merge_patch={...})  # PatchResult
    rooms.history("design-review", limit=50)            # the channel room_design-review

Every refusal is a `RealtimeError` (rooms/errors.py, errors.py) raised before anything is
written; the adapters map them to statuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..channel import HistoryPage
from ..feeds import authorize_channel_reader
from .room import MAX_BY_LENGTH, MetadataResult, PatchResult, Room, etag_of, room

if TYPE_CHECKING:
    from ..realtime import Realtime
    from .presence import MembersPage


@dataclass(frozen=True)
class RoomView:
    """A room from one consistent read: state and metadata of one version, and its member count."""

    room_id: str
    metadata: dict[str, Any]
    version: int
    doc: dict[str, Any]
    member_count: int

    @property
    def etag(self) -> str:
        return etag_of(self.version)


def author(user_arn: str | None, user_id: str | None = None) -> str | None:
    """Who made a change, for the room's events: the caller's IAM identity, when there is one.

    An ARN with a long path can exceed what a room records as its author; the principal's
    unique id (`AIDA...` or `AROA...:session`) names the same caller in fewer characters.
    """
    for candidate in (user_arn, user_id):
        if candidate and len(candidate) <= MAX_BY_LENGTH:
            return candidate
    return None


class Rooms:
    def __init__(self, realtime: Realtime) -> None:
        self.realtime = realtime

    def room(self, room_id: str) -> Room:
        return room(self.realtime, room_id)

    def get(self, room_id: str) -> RoomView:
        r = self.room(room_id)
        snapshot = r.get()
        return RoomView(
            room_id=r.id,
            metadata=snapshot["metadata"],
            version=snapshot["state"]["version"],
            doc=snapshot["state"]["doc"],
            member_count=snapshot["memberCount"],
        )

    def set_metadata(
        self, room_id: str, metadata: dict[str, Any], *, if_match: str | None = None, by: str | None = None
    ) -> MetadataResult:
        return self.room(room_id).set_metadata(metadata, if_match=if_match, by=by)

    def patch(
        self,
        room_id: str,
        version: int,
        *,
        merge_patch: dict[str, Any] | None = None,
        operations: list[dict[str, Any]] | None = None,
        if_match: str | None = None,
        by: str | None = None,
    ) -> PatchResult:
        return self.room(room_id).patch(
            version, merge_patch=merge_patch, operations=operations, if_match=if_match, by=by
        )

    def members(self, room_id: str, *, limit: int = 100, cursor: str | None = None) -> MembersPage:
        return self.room(room_id).presence.members(limit=limit, cursor=cursor)

    def authorize_reader(self, room_id: str, authorization: str | None, *, required: bool) -> None:
        """The subscriber token check of feed history, for the room's channel `room_{id}`."""
        authorize_channel_reader(self.realtime, self.room(room_id).channel_name, authorization, required=required)

    def history(self, room_id: str, *, limit: int = 100, cursor: str | None = None) -> HistoryPage:
        return self.realtime.channel(self.room(room_id).channel_name).history(limit=limit, cursor=cursor)
