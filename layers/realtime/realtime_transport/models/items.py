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
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel

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


class Position(BaseModel):
    """One log position as read back: an event, or a tombstone."""

    seq: int
    kind: Kind
    allocated_at_ms: int
    expires_at: int | None
    event_json: str | None = None

    def expired(self, now_s: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now_s

    @classmethod
    def from_item(cls, item: AttributeMap) -> Position:
        return cls(
            seq=int(item["sk"]["N"]),
            kind=Kind(item["kind"]["S"]),
            allocated_at_ms=int(item.get("allocatedAt", {"N": "0"})["N"]),
            expires_at=int(item["ttl"]["N"]) if "ttl" in item else None,
            event_json=item["event"]["S"] if "event" in item else None,
        )

    def event(self) -> Event:
        assert self.event_json is not None  # noqa: S101 - only called on kind == EVENT
        return Event.model_validate_json(self.event_json)

    def event_id(self) -> str | None:
        return self.event().id if self.kind is Kind.EVENT and self.event_json else None


class IdempotencyRecord(BaseModel):
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


class Head(BaseModel):
    seq: int
    allocated_at_ms: int

    @classmethod
    def from_item(cls, item: AttributeMap | None) -> Head:
        if not item:
            return cls(seq=0, allocated_at_ms=0)
        return cls(seq=int(item["head"]["N"]), allocated_at_ms=int(item["allocatedAt"]["N"]))


def position_item(
    chan_key: str, seq: int, kind: Kind, allocated_at_ms: int, expires_at: int, event_json: str | None = None
) -> AttributeMap:
    item: AttributeMap = {
        "pk": {"S": chan_key},
        "sk": {"N": str(seq)},
        "kind": {"S": kind.value},
        "allocatedAt": {"N": str(allocated_at_ms)},
        "ttl": {"N": str(expires_at)},
    }
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
