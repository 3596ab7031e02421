"""Stored DynamoDB items of the events table, in the low-level attribute-value form.

One table holds three kinds of item, told apart by `kind` (the stream filter
passes only `event` INSERTs):

| kind        | pk                        | sk  | what it is                                         |
| ----------- | ------------------------- | --- | -------------------------------------------------- |
| `head`      | `{name}#{channel}`        | 0   | last allocated position; never expires             |
| `event`     | `{name}#{channel}`        | seq | the envelope as JSON in `event`                    |
| `tombstone` | `{name}#{channel}`        | seq | an abandoned position; skipped, never a gap        |
| `idem`      | `{name}#{channel}#key#{k}`| 0   | the envelope an idempotency key maps to            |

Every item but the head carries the TTL attribute `ttl` (epoch seconds).

Allocation times are what lets a reader tell a position nobody has written yet from one
that TTL has already deleted (DynamoDB deletes expired items days late, but it does delete
them): the head keeps `allocatedAt` (of the head position), `prevAllocatedAt` (of the one
before it) and `createdAt` (of position 1), and every position item keeps the first two for
itself. For events and a writer's own tombstones these are exact; a reader's tombstone only
knows bounds, so it stores an upper bound in `allocatedAt` and a lower one in `allocatedAfter`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from .base import Model
from .envelope import Event

AttributeMap = dict[str, Any]

HEAD_SK = 0


class Kind(StrEnum):
    HEAD = "head"
    EVENT = "event"
    TOMBSTONE = "tombstone"
    IDEMPOTENCY = "idem"


def channel_key(namespace: str, channel: str) -> str:
    return f"{namespace}#{channel}"


def idempotency_pk(chan_key: str, key: str) -> str:
    return f"{chan_key}#key#{key}"


class Position(Model):
    """One log position as read back: an event, or a tombstone."""

    seq: int
    kind: Kind
    allocated_at_ms: int  # exact, or (a reader's tombstone) an upper bound
    expires_at: int | None
    event_json: str | None = None
    # When seq - 1 was allocated, at the latest (None on items written before this was kept).
    prev_allocated_at_ms: int | None = None
    # A reader's tombstone: the earliest its position can have been allocated.
    allocated_after_ms: int | None = None

    def expired(self, now_s: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now_s

    @property
    def earliest_ms(self) -> int:
        """No later than this position's allocation (so no later than any position above it)."""
        return self.allocated_at_ms if self.allocated_after_ms is None else self.allocated_after_ms

    def latest_ms_of(self, seq: int) -> int:
        """No earlier than the allocation of `seq` (at or below this position)."""
        if seq < self.seq and self.prev_allocated_at_ms is not None:
            return self.prev_allocated_at_ms
        return self.allocated_at_ms

    @classmethod
    def from_item(cls, item: AttributeMap) -> Position:
        return cls(
            seq=int(item["sk"]["N"]),
            kind=Kind(item["kind"]["S"]),
            allocated_at_ms=int(item.get("allocatedAt", {"N": "0"})["N"]),
            expires_at=int(item["ttl"]["N"]) if "ttl" in item else None,
            event_json=item["event"]["S"] if "event" in item else None,
            prev_allocated_at_ms=int(item["prevAllocatedAt"]["N"]) if "prevAllocatedAt" in item else None,
            allocated_after_ms=int(item["allocatedAfter"]["N"]) if "allocatedAfter" in item else None,
        )

    def event(self) -> Event:
        """The envelope (ValueError if the item holds none, or not a valid one)."""
        if self.event_json is None:
            raise ValueError(f"position {self.seq} holds no envelope")
        return Event.model_validate_json(self.event_json)

    def event_id(self) -> str | None:
        if self.kind is not Kind.EVENT or not self.event_json:
            return None
        try:
            return self.event().id
        except ValueError:
            return None


class IdempotencyRecord(Model):
    fingerprint: str
    event_json: str
    expires_at: int

    @classmethod
    def from_item(cls, item: AttributeMap) -> IdempotencyRecord:
        return cls(
            fingerprint=item["fingerprint"]["S"],
            event_json=item["event"]["S"],
            expires_at=int(item["ttl"]["N"]),
        )

    def event(self) -> Event:
        return Event.model_validate_json(self.event_json)


class Head(Model):
    seq: int
    allocated_at_ms: int
    prev_allocated_at_ms: int | None = None  # when seq - 1 was allocated
    created_at_ms: int = 0  # when position 1 was: no position of the channel is older

    @classmethod
    def from_item(cls, item: AttributeMap | None) -> Head:
        if not item:
            return cls(seq=0, allocated_at_ms=0)
        prev, created = item.get("prevAllocatedAt"), item.get("createdAt")
        return cls(
            seq=int(item["head"]["N"]),
            allocated_at_ms=int(item["allocatedAt"]["N"]),
            prev_allocated_at_ms=int(prev["N"]) if prev else None,
            created_at_ms=int(created["N"]) if created else 0,
        )

    def latest_ms_of(self, seq: int) -> int:
        """No earlier than the allocation of `seq` (at or below the head)."""
        if seq < self.seq and self.prev_allocated_at_ms is not None:
            return self.prev_allocated_at_ms
        return self.allocated_at_ms


class Allocation(Model):
    """A position just taken, and when the one before it was taken."""

    seq: int
    allocated_at_ms: int
    prev_allocated_at_ms: int


def position_item(
    chan_key: str,
    seq: int,
    kind: Kind,
    allocated_at_ms: int,
    expires_at: int,
    event_json: str | None = None,
    *,
    prev_allocated_at_ms: int | None = None,
    allocated_after_ms: int | None = None,
) -> AttributeMap:
    item: AttributeMap = {
        "pk": {"S": chan_key},
        "sk": {"N": str(seq)},
        "kind": {"S": kind.value},
        "allocatedAt": {"N": str(allocated_at_ms)},
        "ttl": {"N": str(expires_at)},
    }
    if prev_allocated_at_ms is not None:
        item["prevAllocatedAt"] = {"N": str(prev_allocated_at_ms)}
    if allocated_after_ms is not None:
        item["allocatedAfter"] = {"N": str(allocated_after_ms)}
    if event_json is not None:
        item["event"] = {"S": event_json}
    return item


def idempotency_item(chan_key: str, key: str, fingerprint: str, event_json: str, expires_at: int) -> AttributeMap:
    return {
        "pk": {"S": idempotency_pk(chan_key, key)},
        "sk": {"N": str(HEAD_SK)},
        "kind": {"S": Kind.IDEMPOTENCY.value},
        "fingerprint": {"S": fingerprint},
        "event": {"S": event_json},
        "ttl": {"N": str(expires_at)},
    }
