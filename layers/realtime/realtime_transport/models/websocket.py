"""WebSocket messages: what clients send (validated) and what the server answers."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, TypeAdapter
from pydantic.alias_generators import to_camel

from .base import Model
from .envelope import Event

ChannelName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,200}$")]
RoomId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
Cursor = Annotated[str, Field(min_length=1, max_length=256)]
# Sizes are the library's to check (rooms.presence, rooms.room): it names the limit it enforces.
JsonObject = dict[str, Any]


class _In(Model):
    model_config = ConfigDict(extra="forbid")


class Subscribe(_In):
    action: Literal["subscribe"]
    channel: ChannelName
    cursor: Annotated[str, Field(min_length=1, max_length=256)] | None = None


class Unsubscribe(_In):
    action: Literal["unsubscribe"]
    channel: ChannelName


class Ping(_In):
    action: Literal["ping"]


class Auth(_In):
    """A new token for the open connection (the same `sub`), sent before the current one expires."""

    action: Literal["auth"]
    # A JWT is three base64url parts; 8 KB is far above any token this transport issues.
    token: Annotated[str, Field(min_length=1, max_length=8192)]


class Join(_In):
    action: Literal["join"]
    room: RoomId
    member: JsonObject | None = None
    # A reconnect: replay the room's channel from here instead of sending a snapshot.
    cursor: Cursor | None = None


class Leave(_In):
    action: Literal["leave"]
    room: RoomId


class Members(_In):
    action: Literal["members"]
    room: RoomId
    cursor: Cursor | None = None
    limit: Annotated[int, Field(strict=True, ge=1, le=1000)] = 100


class Update(_In):
    action: Literal["update"]
    room: RoomId
    member: JsonObject


class Patch(_In):
    action: Literal["patch"]
    room: RoomId
    # Strict: "3" or 3.0 or true is not a version (the library refuses negatives).
    version: Annotated[int, Field(strict=True)]
    patch: JsonObject | None = None
    operations: list[Any] | None = None


RoomMessage = Join | Leave | Members | Update | Patch
ClientMessages = Subscribe | Unsubscribe | Ping | Auth | Join | Leave | Members | Update | Patch
ClientMessage = Annotated[ClientMessages, Field(discriminator="action")]
client_message: TypeAdapter[ClientMessages] = TypeAdapter(ClientMessage, config=ConfigDict(defer_build=True))
ACTIONS = ("subscribe", "unsubscribe", "ping", "auth", "join", "leave", "members", "update", "patch")


class Subscribed(Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True)

    type: Literal["subscribed"] = "subscribed"
    channel: str
    cursor: str
    truncated: bool = False
    # Every position up to here is resolved (an event sent, or a tombstone that never will be):
    # a client waiting for a missing seq at or below it can stop waiting.
    position: int = 0
    # The catch-up stopped to fit the function's time: subscribe again with `cursor` for the rest.
    has_more: bool = False


class Unsubscribed(Model):
    type: Literal["unsubscribed"] = "unsubscribed"
    channel: str
    # Set when the server ended the subscription itself: "not_allowed" (an `auth` token that no
    # longer grants the channel). Absent in the answer to the client's own `unsubscribe`.
    reason: str | None = None


class Authed(Model):
    """The answer to `auth`: the connection now runs on the new token, until `exp` (epoch s)."""

    type: Literal["authed"] = "authed"
    exp: int
    # Channels the new token no longer allows, dropped (each had its `unsubscribed` frame first).
    unsubscribed: list[str] | None = None
    # Rooms left for the same reason (each had its `left` frame first).
    left: list[str] | None = None


class Pong(Model):
    type: Literal["pong"] = "pong"
    # The last allocated seq of each channel the connection is subscribed to: a client behind it
    # may have missed an event the live path never brought (a quiet channel's last one).
    heads: dict[str, int] | None = None


class ErrorMessage(Model):
    type: Literal["error"] = "error"
    code: str
    message: str
    channel: str | None = None  # the channel of the subscribe/unsubscribe it answers, when known
    room: str | None = None  # the room of the room action it answers, when known
    details: dict[str, Any] | None = None


# The error code of a connection whose token ran out after the handshake: the fan-out sends it
# before it closes the connection, subscribe and the room actions answer it. A client renews
# (`auth`, or a new connection with a new token) or stops.
TOKEN_EXPIRED = "token_expired"  # noqa: S105 - an error code, not a secret
# The error code of an `auth` that was refused: the connection goes on with its current token.
AUTH_REFUSED = "auth_refused"


class _Out(Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True)


class MemberView(_Out):
    """A member as every answer shows it; `session` and `rev` order its presence events."""

    member_id: str
    member: dict[str, Any]
    connections: int
    joined_at: int
    session: str
    rev: int


class StateView(Model):
    version: int
    doc: dict[str, Any]


class Joined(_Out):
    """The answer to `join`. The connection is subscribed to the room's channel first; a
    snapshot is read after `cursor`, so it reflects every event up to it (and maybe later ones:
    room events apply idempotently). `resumed`: the missed events were replayed from the join's
    cursor instead, and no snapshot is sent."""

    type: Literal["joined"] = "joined"
    room: str
    self_: MemberView = Field(alias="self")
    cursor: str
    # As in `subscribed`: every position of room_R up to here is resolved (sent or a tombstone).
    position: int = 0
    resumed: bool = False
    truncated: bool = False
    members: list[MemberView] | None = None
    members_cursor: str | None = None
    member_count: int | None = None
    metadata: dict[str, Any] | None = None
    state: StateView | None = None


class Left(Model):
    type: Literal["left"] = "left"
    room: str
    reason: str | None = None  # as in `unsubscribed`: "not_allowed" when the server left for the client


class MembersPageMessage(_Out):
    type: Literal["members"] = "members"
    room: str
    items: list[MemberView]
    next_cursor: str | None = None
    has_more: bool = False


class Updated(_Out):
    type: Literal["updated"] = "updated"
    room: str
    self_: MemberView = Field(alias="self")


class Patched(Model):
    type: Literal["patched"] = "patched"
    room: str
    version: int


class EventMessage(Model):
    type: Literal["event"] = "event"
    channel: str
    event: Event
    # The cursor of this event: once a client has everything up to it, it resumes from here.
    cursor: str | None = None


class EventsMessage(Model):
    """Several events of one channel in one message, in seq order; `cursor` names the last one."""

    type: Literal["events"] = "events"
    channel: str
    events: list[Event]
    cursor: str
