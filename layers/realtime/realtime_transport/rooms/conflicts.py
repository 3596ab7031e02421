"""The path-level conflict rule of Kubernetes server-side apply, on a room's own change log.

A patch based on version `v` applies when none of the paths it changes overlaps a path changed
after `v`. Two JSON Pointers overlap when one is a prefix of the other on segment boundaries
(`/a` overlaps `/a/b`, not `/ab`), so a change anywhere inside a value conflicts with a change
of the value itself. The order of arrival never decides: a stale base that touched nothing
anyone else touched is as good as a current one.

The log `{path: version_last_changed}` is bounded (`MAX_ENTRIES` entries, `MAX_BYTES` of JSON)
because it lives in the room's DynamoDB item. Pruning drops the oldest entries and raises
`floor`, the lowest version after which every change is still known; a patch based on a version
older than that cannot be checked, so it conflicts on the whole document (`""`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from .patches import ROOT, split

MAX_ENTRIES = 1_000
MAX_BYTES = 128_000  # with a 64 KiB document and 16 KiB of metadata, far inside DynamoDB's 400 KB item


def overlaps(a: str, b: str) -> bool:
    """Whether one pointer is a prefix of the other, segment by segment."""
    sa, sb = split(a), split(b)
    n = min(len(sa), len(sb))
    return sa[:n] == sb[:n]


@dataclass(frozen=True)
class ChangeLog:
    """When each path last changed. Immutable: `record` returns the next log."""

    changes: dict[str, int] = field(default_factory=dict)
    floor: int = 0  # every change made after version `floor` is in `changes`

    def conflicts(self, base: int, paths: Iterable[str]) -> list[str]:
        """The paths among `paths` that overlap a change made after version `base`."""
        wanted = list(dict.fromkeys(paths))
        if not wanted:
            return []
        if base < self.floor:
            return [ROOT]
        later = [path for path, version in self.changes.items() if version > base]
        return [path for path in wanted if any(overlaps(path, changed) for changed in later)]

    def record(
        self, version: int, paths: Iterable[str], *, max_entries: int | None = None, max_bytes: int | None = None
    ) -> ChangeLog:
        """The log after `paths` changed at `version`.

        An entry below a newly changed path is dropped: the new entry is newer and overlaps
        everything the old one did, so the rule gives the same answers with fewer entries.
        """
        max_entries = MAX_ENTRIES if max_entries is None else max_entries
        max_bytes = MAX_BYTES if max_bytes is None else max_bytes
        new = list(dict.fromkeys(paths))
        if not new:
            return self
        kept = {
            path: at
            for path, at in self.changes.items()
            if not any(overlaps(path, p) and len(split(p)) <= len(split(path)) for p in new)
        }
        kept.update(dict.fromkeys(new, version))
        floor = self.floor
        sizes = {path: _entry_bytes(path, at) for path, at in kept.items()}
        total = sum(sizes.values()) + _OVERHEAD
        if len(kept) > max_entries or total > max_bytes:
            ordered = sorted(kept.items(), key=lambda item: item[1], reverse=True)  # oldest last
            while ordered and (len(ordered) > max_entries or total > max_bytes):
                path, dropped = ordered.pop()
                total -= sizes[path]
                floor = max(floor, dropped)
            kept = dict(ordered)
        return ChangeLog(kept, floor)

    def to_json(self) -> str:
        return json.dumps({"floor": self.floor, "paths": self.changes}, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | None) -> ChangeLog:
        if not text:
            return cls()
        data = json.loads(text)
        return cls({str(k): int(v) for k, v in data.get("paths", {}).items()}, int(data.get("floor", 0)))


_OVERHEAD = len('{"floor":,"paths":{}}') + 20  # 20: the digits of any floor


def _entry_bytes(path: str, version: int) -> int:
    """An entry's share of `to_json()`: the quoted path, a colon, the version, a comma."""
    return len(json.dumps(path, ensure_ascii=False).encode()) + len(str(version)) + 2
