"""Test doubles shared by the WebSocket tests."""

from __future__ import annotations

import json
import threading
from typing import Any


class RecordingPusher:
    """A `Pusher` stand-in that records each connection's frames, in order, parsed.

    Thread-safe: the live service sends from several threads at once (room joins, catch-up).
    A connection in `gone` answers as a 410 would (`send` returns False).
    """

    def __init__(self) -> None:
        self.frames: dict[str, list[dict[str, Any]]] = {}
        self.gone: set[str] = set()
        self.lock = threading.Lock()

    def send(self, connection_id: str, data: bytes) -> bool:
        with self.lock:
            if connection_id in self.gone:
                return False
            self.frames.setdefault(connection_id, []).append(json.loads(data))
        return True

    def take(self, connection_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return self.frames.pop(connection_id, [])
