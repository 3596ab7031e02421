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
from concurrent.futures import ThreadPoolExecutor
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


# Changes of different rooms (or members) are independent: this many publish at once. Each
# publish is 2 or 3 DynamoDB requests in a row, so a busy stream shard's batch of 100 would
# otherwise take 100 round trips end to end (measured by bench/load.py on the local stack: the
# outbox published about 7 records per invocation before its deadline, one at a time).
PUBLISH_WORKERS = 8


def publish_in_order(realtime: Realtime, changes: Iterable[Change], deadline: Deadline | None = None) -> OutboxResult:
    """Publish each change on `room_{id}`; changes with one `order_key` in stream order, one at a
    time, different keys at once (up to PUBLISH_WORKERS). Reports what must come again.

    After a change fails, every later change with its `order_key` is reported failed without
    being published, so nothing overtakes it; other keys go on. When `deadline` passes, every
    change not yet published is reported failed: a function that ran into its Timeout would
    instead fail the whole batch with nothing reported, and bisect it. The result lists are in
    stream order.
    """
    ordered = list(changes)
    groups: dict[Hashable, list[Change]] = {}
    for change in ordered:
        groups.setdefault(change.order_key, []).append(change)

    def run(group: list[Change]) -> dict[str, str]:
        outcome: dict[str, str] = {}
        for index, change in enumerate(group):
            if deadline is not None and deadline.passed():
                outcome.update((c.sequence_number, "failed") for c in group[index:])
                break
            try:
                published = realtime.channel(room_channel_name(change.room_id)).publish(
                    type=change.kind,
                    data=change.data,
                    metadata={"source": "room"},
                    idempotency_key=change.idempotency_key,
                )
            except RealtimeError:
                outcome.update((c.sequence_number, "failed") for c in group[index:])
                break
            outcome[change.sequence_number] = "duplicate" if published.duplicate else "published"
        return outcome

    outcomes: dict[str, str] = {}
    if len(groups) <= 1:
        for group in groups.values():
            outcomes.update(run(group))
    else:
        with ThreadPoolExecutor(max_workers=min(PUBLISH_WORKERS, len(groups))) as pool:
            for outcome in pool.map(run, groups.values()):
                outcomes.update(outcome)
    result = OutboxResult()
    for change in ordered:
        kind = outcomes[change.sequence_number]
        if kind == "failed":
            result.failed.append(change.sequence_number)
        else:
            (result.duplicates if kind == "duplicate" else result.published).append(change)
    return result


class RoomOutbox:
    def __init__(self, realtime: Realtime) -> None:
        self.realtime = realtime

    def publish(self, records: Iterable[Any], deadline: Deadline | None = None) -> OutboxResult:
        """Publish every room change of a stream batch, in order; report what must come again."""
        changes = (room_change(record, self.realtime.name) for record in records)
        return publish_in_order(self.realtime, (c for c in changes if c is not None), deadline)
