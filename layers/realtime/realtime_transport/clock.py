"""Wall-clock helpers: one place for timestamps so tests can reason about them."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime


def now_ms() -> int:
    return int(time.time() * 1000)


def iso_ms(epoch_ms: int) -> str:
    """RFC 3339 with milliseconds and a Z, as every envelope timestamp is written."""
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (f"{epoch_ms % 1000:03d}Z")


# Of an invocation's remaining time, what a handler leaves for its last answer and the return.
_RESERVE_MS = 1500
_RESERVE_SHARE = 0.2


class Deadline:
    """When a handler must stop working: the Lambda function's remaining time less a reserve.

    Built from `context.get_remaining_time_in_millis`; a function that runs past its Timeout is
    stopped mid-work ("Configure Lambda function timeout"), so handlers that loop check this
    instead and hand back what is left (a `hasMore`, a partial batch response)."""

    def __init__(self, remaining_ms: Callable[[], int] | None) -> None:
        if remaining_ms is None:
            self._at = None
            return
        left = remaining_ms()
        self._at = time.monotonic() + max(0.0, left - max(_RESERVE_MS, left * _RESERVE_SHARE)) / 1000

    def passed(self) -> bool:
        return self._at is not None and time.monotonic() >= self._at
