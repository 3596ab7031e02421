"""Subscriber shards and the warm subscriber cache of the fan-out.

Shards: a batch whose plan reaches more than `FANOUT_SHARD_SIZE` connections is cut into
consecutive shards of at most that many, each delivered by one delivery worker (`workers.py`).
The default, 2,000, comes from the measured per-invocation rate (bench/fanout.py: about 4,640
deliveries/s at 20 ms per request): a shard takes about 0.43 s, long against a synchronous
invocation's overhead (tens of ms), short against the stream's batch cadence; 100,000
subscribers are 50 workers, well inside Lambda's scaling of 1,000 environments per 10 s, and a
shard's payload (2,000 ids of ~20 bytes plus the frames) stays far below the 6 MB limit.

The cache: a warm fan-out keeps each channel's index entries (`tokenExp` hints included) keyed by
the channel's version item (`ConnectionStore.channel_version`, bumped after every subscription
write). A batch reads the version (one consistent GetItem) and uses the entries when the
version is the one they were read under, and they were read at least `trust_after_ms` after
the version last changed: the index lags its table, so a read right after a bump may miss the
newest subscriber; such an entry is used for its batch but re-read for the next. What the index
itself misses is what it missed before the cache existed: the client's pong head check catches
it up from history (docs/design.md, "Heads").
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .connections import ChannelVersion, Subscriber

DEFAULT_SHARD_SIZE = 2000


def shards(connection_ids: Sequence[str], size: int) -> list[list[str]]:
    """Consecutive slices of at most `size` (a stable cut: a retried shard is the same connections)."""
    if size < 1:
        raise ValueError("shard size must be at least 1")
    return [list(connection_ids[start : start + size]) for start in range(0, len(connection_ids), size)]


@dataclass
class _Entry:
    version: ChannelVersion
    filled_at_ms: int
    subscribers: dict[str, Subscriber]


class SubscriberCache:
    """Channel key -> its subscribers, as last read from the index, under a version (LRU-bounded)."""

    def __init__(self, *, trust_after_ms: int = 2000, max_channels: int = 1024) -> None:
        self.trust_after_ms = trust_after_ms
        self.max_channels = max_channels
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()  # the fan-out looks channels up side by side
        self.hits = 0
        self.misses = 0

    def get(self, channel_key: str, version: ChannelVersion) -> list[Subscriber] | None:
        """The cached subscribers, if read under this version and late enough after its change."""
        with self._lock:
            entry = self._entries.get(channel_key)
            if (
                entry is None
                or entry.version != version
                or entry.filled_at_ms < version.changed_at_ms + self.trust_after_ms
            ):
                self.misses += 1
                return None
            self._entries.move_to_end(channel_key)
            self.hits += 1
            return list(entry.subscribers.values())

    def put(self, channel_key: str, version: ChannelVersion, filled_at_ms: int, entries: Iterable[Subscriber]) -> None:
        """Entries read from the index starting at `filled_at_ms`, under `version` (read before them)."""
        entry = _Entry(version, filled_at_ms, {e.connection_id: e for e in entries})
        with self._lock:
            self._entries[channel_key] = entry
            self._entries.move_to_end(channel_key)
            while len(self._entries) > self.max_channels:
                self._entries.popitem(last=False)

    def drop_connections(self, connection_ids: Iterable[str]) -> None:
        """Connections deleted as gone leave every cached channel at once."""
        gone = list(connection_ids)
        if not gone:
            return
        with self._lock:
            for entry in self._entries.values():
                for connection_id in gone:
                    entry.subscribers.pop(connection_id, None)

    def renew_hint(self, connection_id: str, token_exp: int) -> None:
        """A connection's token was found renewed: its cached hint follows (no read per batch for it)."""
        with self._lock:
            for entry in self._entries.values():
                if connection_id in entry.subscribers:
                    entry.subscribers[connection_id] = Subscriber(connection_id, token_exp)

    def cached(self, channel_key: str) -> list[str] | None:
        """The connection ids held for a channel (None: nothing held), whatever the version."""
        with self._lock:
            entry = self._entries.get(channel_key)
            return None if entry is None else list(entry.subscribers)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
