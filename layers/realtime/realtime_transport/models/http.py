"""HTTP request and response bodies (camelCase on the wire)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StringConstraints, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from .base import Model
from .envelope import Event

FEED_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
# Printable: anything but control characters.
_PRINTABLE = r"^[^\x00-\x1f\x7f]+$"


EventId = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=_PRINTABLE)]
EventType = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=_PRINTABLE)]
Source = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=_PRINTABLE)]


class _Body(Model):
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


class ErrorDetail(Model):
    model_config = ConfigDict(extra="forbid")

    field: str = Field(description="What is wrong: a body field (eventId), body, content-type, limit, cursor ...")
    location: str = Field(description="Where it is: body, path, query, header or request.")
    problem: str


class ErrorResponse(Model):
    """Every error the function answers with, whatever its status."""

    model_config = ConfigDict(extra="forbid")

    error: str = Field(description="Stable machine-readable code, e.g. validation_error, idempotency_conflict.")
    message: str = Field(description="What went wrong, for people.")
    details: list[ErrorDetail] = Field(description="One entry per problem found; may be empty.")


class GatewayError(Model):
    """What API Gateway itself answers when it refuses a request before the function runs."""

    message: str = Field(description='e.g. "Forbidden".')


# --- batch publish (POST /feeds/{feedId}/events/batch) --------------------------------------

MAX_BATCH_EVENTS = 100  # realtime_transport.batch.MAX_BATCH_EVENTS


class PublishBatchRequest(_Body):
    """Up to 100 events, each as POST /feeds/{feedId}/events takes it.

    Each event is checked on its own: one that is not valid gets its own 4xx result and the
    others are still stored. An empty list is a 400, more than 100 a 413, for the whole request.
    """

    events: list[Any] = Field(
        min_length=1,
        max_length=MAX_BATCH_EVENTS,
        # The document names the items PublishEventRequest (http_errors.as_sent); validated one by one.
        description="1 to 100 events (PublishEventRequest); an invalid one is refused alone, in its result.",
    )


class BatchEventResult(_Body):
    """A stored event: 201 new, 200 a duplicate (the event first stored with its key)."""

    status: Literal[200, 201]
    event: Event
    duplicate: bool


class BatchErrorResult(_Body):
    """An event that was not stored, with the status and error the single route would answer."""

    status: Literal[400, 409, 413, 422, 503] = Field(
        description="400 not an object; 409 key reused for another event; 413 over MaxEventBytes; "
        "422 invalid field or text that is not valid Unicode; 503 DynamoDB failed after retries "
        "(retry it with the same eventId)."
    )
    error: ErrorResponse


class PublishBatchResponse(_Body):
    results: list[BatchEventResult | BatchErrorResult] = Field(
        description="One per event, in request order; stored events hold increasing seqs in that order."
    )


# --- rooms ---------------------------------------------------------------------------------

# A room's version: one counter for every committed change of its state and metadata. Strict:
# `"3"`, `3.0` and `true` are not versions. Bounded by what a JavaScript client reads exactly.
Version = Annotated[int, Field(strict=True, ge=0, le=2**53 - 1)]
# RFC 6901: "" (the whole document) or "/"-separated reference tokens, "~" escaped as ~0 or ~1.
JsonPointer = Annotated[str, StringConstraints(pattern=r"^(/([^~/]|~[01])*)*$")]


class RoomStateView(_Body):
    version: Version = Field(description="The room's version; the ETag is its quoted value.")
    doc: dict[str, Any] = Field(description="The shared state document (a JSON object).")


class RoomResponse(_Body):
    """A room as one consistent read shows it (state and metadata of one version)."""

    room_id: str
    metadata: dict[str, Any]
    state: RoomStateView
    member_count: int = Field(ge=0, description="Members present, those in their grace period included.")


class MetadataRequest(_Body):
    """The room's new metadata, replacing the old (a JSON object of at most 16 KiB as compact JSON)."""

    metadata: dict[str, Any]


class MetadataResponse(_Body):
    room_id: str
    version: Version = Field(description="The room's version after the change (unchanged when nothing changed).")
    metadata: dict[str, Any]


class _Operation(Model):
    # RFC 6902, section 4: members an operation does not define "MUST be ignored"; they are
    # dropped, so neither stored nor published.
    model_config = ConfigDict(extra="ignore")

    path: JsonPointer


class AddOperation(_Operation):
    op: Literal["add"]
    value: Any


class RemoveOperation(_Operation):
    op: Literal["remove"]


class ReplaceOperation(_Operation):
    op: Literal["replace"]
    value: Any


class MoveOperation(_Operation):
    op: Literal["move"]
    from_: JsonPointer = Field(alias="from")


class CopyOperation(_Operation):
    op: Literal["copy"]
    from_: JsonPointer = Field(alias="from")


class TestOperation(_Operation):
    op: Literal["test"]
    value: Any


JsonPatchOperation = Annotated[
    AddOperation | RemoveOperation | ReplaceOperation | MoveOperation | CopyOperation | TestOperation,
    Field(discriminator="op"),
]


_CHANGES = {"patch": "an object", "operations": "an array"}


def _one_change_schema(schema: dict[str, Any]) -> None:
    """The schema says what the validator enforces: exactly one of the two, and neither null."""
    properties = schema["properties"]
    for name in _CHANGES:
        options = properties[name].pop("anyOf")
        properties[name].pop("default", None)
        properties[name].update(next(option for option in options if option.get("type") != "null"))
    schema["oneOf"] = [{"required": [name]} for name in _CHANGES]


class StatePatchRequest(_Body):
    """A change of the state document computed from `version`: exactly one of `patch` and `operations`.

    It applies when no path it changes was changed after `version` (a stale version that
    touched nothing anyone else touched is fine); otherwise the answer is a 409 with the
    current version and document. `If-Match` asks for strict compare-and-set instead.
    """

    model_config = ConfigDict(json_schema_extra=_one_change_schema)

    version: Version = Field(description="The version the change was computed from.")
    # Optional only in Python: absent is allowed, null is refused below (and not in the schema).
    patch: dict[str, Any] | None = Field(
        None, description="An RFC 7396 JSON Merge Patch (an object: the document stays an object)."
    )
    operations: list[JsonPatchOperation] | None = Field(
        None, description="RFC 6902 JSON Patch operations, applied all or none (`test` included)."
    )

    @model_validator(mode="after")
    def _one_change(self) -> StatePatchRequest:
        given = [name for name in _CHANGES if name in self.model_fields_set]
        if len(given) != 1:
            raise PydanticCustomError(
                "one_change", "give exactly one of patch (a merge patch) and operations (a JSON Patch)"
            )
        if getattr(self, given[0]) is None:
            raise PydanticCustomError("one_change", f"{given[0]} must be {_CHANGES[given[0]]}, not null")
        return self

    def operations_as_json(self) -> list[dict[str, Any]] | None:
        """The operations as RFC 6902 objects (only the members each operation defines)."""
        if self.operations is None:
            return None
        return [op.model_dump(by_alias=True) for op in self.operations]


class StateResponse(_Body):
    version: Version = Field(description="The room's version after the patch (unchanged when it changed nothing).")
    doc: dict[str, Any]


class Member(_Body):
    """A member of a room: a token's `sub`, present through one or more connections."""

    member_id: str = Field(description="The token's `sub`.")
    member: dict[str, Any] = Field(description="The member's data (a JSON object of at most 1 KiB; {} when none).")
    connections: int = Field(ge=0, description="Open connections of the member in the room (0 in the grace period).")
    joined_at: int = Field(description="Epoch milliseconds of the join that created this session.")
    session: str = Field(description="Changes at each new join after a leave; ordered as time.")
    rev: int = Field(ge=1, description="1 at the join, +1 at each change of the member's data.")


class MembersResponse(_Body):
    items: list[Member]
    next_cursor: str | None = Field(description="Opaque; pass it back as `cursor` for the next page (null: none).")
    has_more: bool


class StateConflictResponse(ErrorResponse):
    """`conflict`: the patch overlaps changes made after its version. Nothing was written."""

    version: Version = Field(description="The room's current version.")
    doc: dict[str, Any] = Field(description="The current document, to recompute the change from.")
    conflicts: list[str] = Field(
        description='JSON Pointers changed since the patch\'s version ("": the whole document).'
    )


class PreconditionFailedResponse(ErrorResponse):
    """`precondition_failed`: If-Match named another version. Nothing was written."""

    version: Version = Field(description="The room's current version.")
