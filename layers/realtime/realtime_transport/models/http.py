"""HTTP request and response bodies (camelCase on the wire)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

from .envelope import Event

FEED_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
# Printable: anything but control characters.
_PRINTABLE = r"^[^\x00-\x1f\x7f]+$"


EventId = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=_PRINTABLE)]
EventType = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=_PRINTABLE)]
Source = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=_PRINTABLE)]


class _Body(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class PublishEventRequest(_Body):
    """A producer's event; `eventId` is its idempotency key."""

    event_id: EventId = Field(description="Idempotency key: every retry with it returns the same stored event.")
    type: EventType
    payload: Any = Field(description="Any JSON value.")
    source: Source | None = None


class ControlRequest(_Body):
    """A control command for a feed; `commandId` is its idempotency key."""

    command_id: EventId
    action: EventType
    target: Any = None


class PublishResponse(_Body):
    event: Event
    duplicate: bool


class HistoryResponse(_Body):
    items: list[Event]
    next_cursor: str = Field(description="Opaque; pass it back as `cursor` to continue after this page.")
    has_more: bool
    truncated: bool = Field(description="True when events after the cursor fell out of the history window.")


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    field: str = Field(description="What is wrong: a body field (eventId), body, content-type, limit, cursor ...")
    location: str = Field(description="Where it is: body, path, query, header or request.")
    problem: str


class ErrorResponse(BaseModel):
    """Every error the function answers with, whatever its status."""

    model_config = ConfigDict(extra="forbid")

    error: str = Field(description="Stable machine-readable code, e.g. validation_error, idempotency_conflict.")
    message: str = Field(description="What went wrong, for people.")
    details: list[ErrorDetail] = Field(description="One entry per problem found; may be empty.")


class GatewayError(BaseModel):
    """What API Gateway itself answers when it refuses a request before the function runs."""

    message: str = Field(description='e.g. "Forbidden".')
