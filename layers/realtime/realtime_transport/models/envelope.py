"""The stored event envelope, exactly as every client sees it (camelCase on the wire)."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field
from pydantic.alias_generators import to_camel

from .base import Model


class Event(Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    id: str
    channel: str
    seq: int = Field(ge=1)
    type: str
    data: Any
    metadata: dict[str, Any] = Field(default_factory=dict)
    published_at: str
    idempotency_key: str | None = None

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)
