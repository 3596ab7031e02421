"""realtime_transport: ordered, idempotent, replayable channels over DynamoDB."""

from .channel import Channel, HistoryPage, PublishResult
from .errors import (
    EventTooLarge,
    IdempotencyConflict,
    InvalidChannel,
    InvalidCursor,
    InvalidInput,
    RealtimeError,
    StoreUnavailable,
)
from .models.envelope import Event
from .realtime import Realtime
from .settings import Settings, get_settings

__all__ = [
    "Channel",
    "Event",
    "EventTooLarge",
    "HistoryPage",
    "IdempotencyConflict",
    "InvalidChannel",
    "InvalidCursor",
    "InvalidInput",
    "PublishResult",
    "Realtime",
    "RealtimeError",
    "Settings",
    "StoreUnavailable",
    "get_settings",
]
