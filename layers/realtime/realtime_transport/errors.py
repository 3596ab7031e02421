"""Domain errors. Adapters map them to HTTP statuses and WebSocket error codes."""

from __future__ import annotations


class RealtimeError(Exception):
    """Base class; `code` is the stable machine-readable name clients see."""

    code = "error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(RealtimeError):
    code = "invalid_request"


class InvalidChannel(InvalidInput):
    code = "invalid_channel"


class InvalidCursor(InvalidInput):
    code = "invalid_cursor"


class EventTooLarge(RealtimeError):
    code = "event_too_large"


class IdempotencyConflict(RealtimeError):
    """An idempotency key reused with a different type or payload."""

    code = "idempotency_conflict"


class Unauthorized(RealtimeError):
    code = "unauthorized"


class Forbidden(RealtimeError):
    code = "forbidden"


class ConfigurationError(RealtimeError):
    code = "configuration_error"


class StoreUnavailable(RealtimeError):
    """The store failed after boto3's own retries: a 503, never the caller's fault."""

    code = "unavailable"
