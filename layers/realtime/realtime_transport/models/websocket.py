"""WebSocket messages: what clients send (validated) and what the server answers."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from .envelope import Event

ChannelName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,200}$")]


class _In(BaseModel):
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


ClientMessage = Annotated[Subscribe | Unsubscribe | Ping, Field(discriminator="action")]
client_message: TypeAdapter[Subscribe | Unsubscribe | Ping] = TypeAdapter(ClientMessage)


class Subscribed(BaseModel):
    type: Literal["subscribed"] = "subscribed"
    channel: str
    cursor: str
    truncated: bool = False
    # Every position up to here is resolved (an event sent, or a tombstone that never will be):
    # a client waiting for a missing seq at or below it can stop waiting.
    position: int = 0


class Unsubscribed(BaseModel):
    type: Literal["unsubscribed"] = "unsubscribed"
    channel: str


class Pong(BaseModel):
    type: Literal["pong"] = "pong"


class ErrorMessage(BaseModel):
    type: Literal["error"] = "error"
    code: str
    message: str
    channel: str | None = None  # the channel of the subscribe/unsubscribe it answers, when known
    details: dict[str, Any] | None = None


class EventMessage(BaseModel):
    type: Literal["event"] = "event"
    channel: str
    event: Event
    # The cursor of this event: once a client has everything up to it, it resumes from here.
    cursor: str | None = None


def event_frame(channel: str, event_json: str, cursor: str | None = None) -> bytes:
    """An `EventMessage` frame built around the stored envelope JSON without re-serialising it."""
    import json

    tail = f',"cursor":{json.dumps(cursor)}' if cursor is not None else ""
    return ('{"type":"event","channel":' + json.dumps(channel) + ',"event":' + event_json + tail + "}").encode()
