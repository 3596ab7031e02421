"""DynamoDB Streams records of the events table, as the fan-out reads them.

Only what delivery needs is taken from a record (low-level attribute values, no
`TypeDeserializer`): the event name, and from the NEW_IMAGE the item's `kind`,
`pk` (the channel key), `sk` (seq) and `event` (the envelope JSON, embedded as
is in the frame). The envelope is parsed only when a field of it is needed.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from functools import cached_property
from typing import Any

from pydantic import ConfigDict

from .base import Model
from .envelope import Event
from .items import Kind

INSERT = "INSERT"


class StreamRecord(Model):
    """One stream record of the events table (NEW_IMAGE view)."""

    model_config = ConfigDict(frozen=True)

    event_name: str
    sequence_number: str
    kind: str | None = None
    channel_key: str | None = None
    seq: int | None = None
    event_json: str | None = None

    @classmethod
    def from_record(cls, record: Any) -> StreamRecord:
        """From a Powertools `DynamoDBRecord` or the raw record dict Lambda hands over."""
        raw: Mapping[str, Any] = getattr(record, "raw_event", record)
        stream: Mapping[str, Any] = raw.get("dynamodb") or {}
        image: Mapping[str, Any] = stream.get("NewImage") or {}
        sk = _scalar(image, "sk", "N")
        return cls(
            event_name=str(raw.get("eventName", "")),
            sequence_number=str(stream.get("SequenceNumber", "")),
            kind=_scalar(image, "kind", "S"),
            channel_key=_scalar(image, "pk", "S"),
            seq=int(sk) if sk is not None and sk.isdigit() else None,
            event_json=_scalar(image, "event", "S"),
        )

    @property
    def deliverable(self) -> bool:
        """A newly committed event: what the template's filter criteria pass on AWS."""
        return (
            self.event_name == INSERT
            and self.kind == Kind.EVENT.value
            and self.channel_key is not None
            and "#" in self.channel_key
            and self.seq is not None
            and bool(self.event_json)
        )

    @property
    def channel(self) -> str:
        """The channel name clients know: the key without its namespace (neither may hold '#')."""
        assert self.channel_key is not None  # noqa: S101 - only asked of deliverable records
        return self.channel_key.partition("#")[2]

    @cached_property
    def event(self) -> Event:
        """The envelope, parsed (raises pydantic's ValidationError on a corrupt item)."""
        assert self.event_json is not None  # noqa: S101 - only asked of deliverable records
        return Event.model_validate_json(self.event_json)

    @property
    def valid_envelope(self) -> bool:
        try:
            return self.event is not None
        except ValueError:  # pydantic's ValidationError is a ValueError too
            return False

    def published_at_ms(self) -> int | None:
        """The envelope's publishedAt in epoch ms, or None if it cannot be read."""
        try:
            stamp = self.event.published_at
            return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000)
        except ValueError:  # pydantic's ValidationError is a ValueError too
            return None


def _scalar(image: Mapping[str, Any], name: str, type_: str) -> str | None:
    value = image.get(name)
    if isinstance(value, Mapping) and isinstance(value.get(type_), str):
        return str(value[type_])
    return None
