"""Wall-clock helpers: one place for timestamps so tests can reason about them."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now_ms() -> int:
    return int(time.time() * 1000)


def iso_ms(epoch_ms: int) -> str:
    """RFC 3339 with milliseconds and a Z, as every envelope timestamp is written."""
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (f"{epoch_ms % 1000:03d}Z")
