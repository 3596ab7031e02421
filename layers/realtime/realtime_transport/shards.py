"""Subscriber shards and the warm subscriber cache of the fan-out.

Shards: a batch whose plan reaches more than `FANOUT_SHARD_SIZE` connections is cut into
consecutive shards of at most that many, each delivered by one delivery worker (`workers.py`).
The default, 2,000, comes from the measured per-invocation rate (bench/fanout.py: about 4,640
deliveries/s at 20 ms per request): a shard takes about 0.43 s, long against a synchronous
invocation's overhead (tens of ms), short against the stream's batch cadence; 100,000
subscribers are 50 workers, well inside Lambda's scaling of 1,000 environments per 10 s, and a
shard's payload (2,000 ids of ~20 bytes plus the frames) stays far below the 6 MB limit.

The cache: a warm fan-out keeps each channel's index entries (`tokenExp` hints included) per
read unit (each of the 16 buckets, and the bare legacy key), keyed by that unit's version
(`unit_version`: the bucket's version item and the legacy one; the bare key's: the legacy one),
all read in one consistent BatchGetItem per channel per batch (`ConnectionStore.channel_versions`).
A unit's entries are used when they were read under its current version, at least
`trust_after_ms` after that version last changed: the index lags its table, so a read right
after a bump may miss the newest subscriber; such an entry is used for its batch but re-read for
the next. So a subscribe re-reads one bucket, not the channel. What the index itself misses is
what it missed before the cache existed: the client's pong head check catches it up from
history (docs/design.md, "Heads").

Read ranges: a large channel's stale units are read by the delivery workers themselves
(`workers.ReadRequest`), a bucket whose approximate count passes K in `ceil(n / K)` connectionId
ranges (`id_ranges`). API Gateway documents no format for connection ids (its examples look like
base64: "L0SM9cOFvHcCIhw=", "Use @connections commands in your backend service"); the ranges
treat ids as opaque strings, so they are disjoint and cover the key whatever the ids are, and
only their balance assumes first characters spread over the base64 alphabet.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import NamedTuple

from .connections import SUBSCRIBER_BUCKETS, ChannelVersions, Subscriber

DEFAULT_SHARD_SIZE = 2000
# The read unit of the bare channel key (subscriptions older than the buckets); buckets are 0..15.
LEGACY_UNIT = -1
# The base64 alphabet, in code point order (the order of DynamoDB's string sort key, UTF-8 bytes).
ID_ALPHABET = "".join(sorted("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"))
MAX_RANGES = len(ID_ALPHABET) ** 2


class UnitVersion(NamedTuple):
    """What a cached unit was read under, and when that last changed (epoch ms)."""

    stamp: tuple[int, ...]
    changed_at_ms: int


def unit_version(versions: ChannelVersions, unit: int) -> UnitVersion:
    """A bucket's version is its own item's and the legacy item's (the previous release's writers
    bump that one alone, also for subscriptions they write under a bucket); the bare key's is the
    legacy item's (writers bump it whenever they remove or replace a subscription under it)."""
    items = [versions.legacy] if unit == LEGACY_UNIT else [versions.buckets[unit], versions.legacy]
    return UnitVersion(
        tuple(n for item in items for n in (item.version, item.changed_at_ms)), max(i.changed_at_ms for i in items)
    )


def read_units(legacy: bool) -> list[int]:
    return [*range(SUBSCRIBER_BUCKETS), *([LEGACY_UNIT] if legacy else [])]


def id_ranges(parts: int) -> list[tuple[str | None, str | None]]:
    """`parts` disjoint [lo, hi) ranges of connection ids covering every string (None: unbounded),
    cut evenly over the base64 alphabet (two characters deep past 64 parts)."""
    parts = max(1, min(parts, MAX_RANGES))
    base = len(ID_ALPHABET)
    digits = 1 if parts <= base else 2
    space = base**digits
    points: list[str] = []
    for i in range(1, parts):
        x = i * space // parts
        chars = [ID_ALPHABET[(x // base**d) % base] for d in reversed(range(digits))]
        point = "".join(chars).rstrip(ID_ALPHABET[0]) or ID_ALPHABET[0]
        if not points or point > points[-1]:
            points.append(point)
    bounds: list[str | None] = [None, *points, None]
    return list(pairwise(bounds))


def pack(estimates: Sequence[int], size: int) -> list[list[int]]:
    """Consecutive groups of indexes whose estimates add up to at most `size` (a larger one alone):
    small or empty units share one worker instead of one each."""
    groups: list[list[int]] = []
    total = 0
    for index, estimate in enumerate(estimates):
        if groups and total + estimate <= size:
            groups[-1].append(index)
            total += estimate
        else:
            groups.append([index])
            total = estimate
    return groups


def shards(connection_ids: Sequence[str], size: int) -> list[list[str]]:
    """Consecutive slices of at most `size` (a stable cut: a retried shard is the same connections)."""
    if size < 1:
        raise ValueError("shard size must be at least 1")
    return [list(connection_ids[start : start + size]) for start in range(0, len(connection_ids), size)]


@dataclass
class _Entry:
    version: UnitVersion
    filled_at_ms: int
    subscribers: dict[str, Subscriber]


class SubscriberCache:
    """(channel key, read unit) -> its subscribers, as last read from the index, under a version
    (LRU-bounded)."""

    def __init__(self, *, trust_after_ms: int = 2000, max_channels: int = 1024) -> None:
        self.trust_after_ms = trust_after_ms
        self.max_entries = max_channels * (SUBSCRIBER_BUCKETS + 1)
        self._entries: OrderedDict[tuple[str, int], _Entry] = OrderedDict()
        self._lock = threading.Lock()  # the fan-out looks channels up side by side
        self.hits = 0
        self.misses = 0

    def get(self, channel_key: str, unit: int, version: UnitVersion) -> list[Subscriber] | None:
        """The unit's cached subscribers, if read under this version and late enough after its change."""
        with self._lock:
            entry = self._entries.get((channel_key, unit))
            if (
                entry is None
                or entry.version != version
                or entry.filled_at_ms < version.changed_at_ms + self.trust_after_ms
            ):
                self.misses += 1
                return None
            self._entries.move_to_end((channel_key, unit))
            self.hits += 1
            return list(entry.subscribers.values())

    def put(
        self, channel_key: str, unit: int, version: UnitVersion, filled_at_ms: int, entries: Iterable[Subscriber]
    ) -> None:
        """A unit's entries read from the index starting at `filled_at_ms`, under `version` (read before them)."""
        entry = _Entry(version, filled_at_ms, {e.connection_id: e for e in entries})
        with self._lock:
            self._entries[(channel_key, unit)] = entry
            self._entries.move_to_end((channel_key, unit))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def drop_connections(self, connection_ids: Iterable[str]) -> None:
        """Connections deleted as gone leave every cached unit at once."""
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
        """The connection ids held for a channel (None: nothing held), whatever the versions."""
        with self._lock:
            held = [entry for (key, _), entry in self._entries.items() if key == channel_key]
            return None if not held else [c for entry in held for c in entry.subscribers]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
