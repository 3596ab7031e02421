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

Only the wiring is missing (a function with this consumer and its event source mapping,
filtered on `kind = room`); this module is the whole behaviour, tested on its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import RealtimeError
from .room import room_channel_name
from .store import KIND

if TYPE_CHECKING:
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


@dataclass
class OutboxResult:
    published: list[RoomChange] = field(default_factory=list)
    duplicates: list[RoomChange] = field(default_factory=list)
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


class RoomOutbox:
    def __init__(self, realtime: Realtime) -> None:
        self.realtime = realtime

    def publish(self, records: Iterable[Any]) -> OutboxResult:
        """Publish every room change of a stream batch, in order; report what must come again."""
        result = OutboxResult()
        blocked: set[str] = set()  # rooms with a failed record earlier in this batch
        for record in records:
            change = room_change(record, self.realtime.name)
            if change is None:
                continue
            if change.room_id in blocked:
                result.failed.append(change.sequence_number)
                continue
            try:
                published = self.realtime.channel(room_channel_name(change.room_id)).publish(
                    type=change.kind,
                    data=change.data,
                    metadata={"source": "room"},
                    idempotency_key=change.idempotency_key,
                )
            except RealtimeError:
                blocked.add(change.room_id)
                result.failed.append(change.sequence_number)
                continue
            (result.duplicates if published.duplicate else result.published).append(change)
        return result
