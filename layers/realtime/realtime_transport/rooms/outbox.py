"""The rooms outbox: every committed room change, from the events table's stream to `room_{id}`.

A room change is one conditional write of the room item, and its stream record (INSERT or
MODIFY, NewImage) carries the change in `lastChange`. Publishing from the stream rather than from
the writer means a function that dies right after its write loses nothing: the record stays in
the stream until a consumer has handled it. DynamoDB Streams delivers each item's modifications
exactly once and in order ("Change data capture for DynamoDB Streams"), and Lambda's event
source mapping retries a failed batch from its lowest reported failure ("Using Lambda with
DynamoDB": partial batch responses), so:

- exactly once on the channel: each change is published with the idempotency key
  `room:v{version}`, so a retried record replays the event it already stored;
- in version order: records are handled one by one in stream order, and once one of a room's
  records fails, every later record of that room in the batch is reported failed without being
  published, so nothing overtakes it; other rooms go on.

`functions/rooms_outbox` runs it (and `presence_outbox.py`) on the tables' streams; the loop
both share is `publish_in_order`.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import RealtimeError
from .room import room_channel_name
from .store import KIND

if TYPE_CHECKING:
    from ..clock import Deadline
    from ..realtime import Realtime

_PUBLISHED_EVENTS = {"INSERT", "MODIFY"}
_ROOM_KEY = "#room#"


@dataclass(frozen=True)
class RoomChange:
    """One committed room change, as its stream record carries it."""

    sequence_number: str
    room_id: str
    version: int
    kind: str  # room.state | room.metadata
    data: dict[str, Any]

    @property
    def idempotency_key(self) -> str:
        return f"room:v{self.version}"

    @property
    def order_key(self) -> Hashable:
        return self.room_id


@dataclass
class OutboxResult:
    published: list[Any] = field(default_factory=list)  # the changes (RoomChange, PresenceChange)
    duplicates: list[Any] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # sequence numbers, for batchItemFailures

    def batch_item_failures(self) -> dict[str, list[dict[str, str]]]:
        return {"batchItemFailures": [{"itemIdentifier": number} for number in self.failed]}


def room_change(record: Any, namespace: str) -> RoomChange | None:
    """The change a stream record carries, or None for any record that is not a room change
    of this namespace (events, tombstones, removes, other namespaces)."""
    raw: Mapping[str, Any] = getattr(record, "raw_event", record)
    stream: Mapping[str, Any] = raw.get("dynamodb") or {}
    image: Mapping[str, Any] = stream.get("NewImage") or {}
    if raw.get("eventName") not in _PUBLISHED_EVENTS or image.get("kind", {}).get("S") != KIND:
        return None
    pk = str(image.get("pk", {}).get("S", ""))
    prefix = f"{namespace}{_ROOM_KEY}"
    change_json = image.get("lastChange", {}).get("S")
    if not pk.startswith(prefix) or not isinstance(change_json, str):
        return None
    change = json.loads(change_json)
    # What subscribers see: the change itself, not the store's bookkeeping.
    data = {k: v for k, v in change.items() if k not in {"token", "kind", "at"}}
    return RoomChange(
        sequence_number=str(stream.get("SequenceNumber", "")),
        room_id=pk.removeprefix(prefix),
        version=int(change["version"]),
        kind=str(change["kind"]),
        data=data,
    )


class Change(Protocol):
    """What an outbox publishes: one stream record's event on its room's channel."""

    @property
    def sequence_number(self) -> str: ...
    @property
    def room_id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def data(self) -> dict[str, Any]: ...
    @property
    def idempotency_key(self) -> str: ...
    @property
    def order_key(self) -> Hashable:
        """Changes with one key are published in stream order (a room's versions; a member's changes)."""
        ...


def publish_in_order(realtime: Realtime, changes: Iterable[Change], deadline: Deadline | None = None) -> OutboxResult:
    """Publish each change on `room_{id}`, in stream order; report what must come again.

    After a change fails, every later change with its `order_key` is reported failed without
    being published, so nothing overtakes it; other keys go on. When `deadline` passes, every
    change not yet published is reported failed: a function that ran into its Timeout would
    instead fail the whole batch with nothing reported, and bisect it.
    """
    result = OutboxResult()
    blocked: set[Hashable] = set()
    for change in changes:
        if change.order_key in blocked or (deadline is not None and deadline.passed()):
            result.failed.append(change.sequence_number)
            continue
        try:
            published = realtime.channel(room_channel_name(change.room_id)).publish(
                type=change.kind,
                data=change.data,
                metadata={"source": "room"},
                idempotency_key=change.idempotency_key,
            )
        except RealtimeError:
            blocked.add(change.order_key)
            result.failed.append(change.sequence_number)
            continue
        (result.duplicates if published.duplicate else result.published).append(change)
    return result


class RoomOutbox:
    def __init__(self, realtime: Realtime) -> None:
        self.realtime = realtime

    def publish(self, records: Iterable[Any], deadline: Deadline | None = None) -> OutboxResult:
        """Publish every room change of a stream batch, in order; report what must come again."""
        changes = (room_change(record, self.realtime.name) for record in records)
        return publish_in_order(self.realtime, (c for c in changes if c is not None), deadline)
