"""`Room`: a room's shared state document and metadata, changed by one conditional write each.

    from realtime_transport.rooms.room import room
    r = room(realtime, "design-review")
    r.state()                                   # RoomState(version=0, doc={})
    r.patch(0, merge_patch={"title": "Q3"})     # PatchResult(version=1, doc={...}, paths=["/title"])
    r.patch(0, operations=[{"op": "add", "path": "/owner", "value": "ana"}])  # still applies: no overlap
    r.set_metadata({"topic": "roadmap"}, if_match='"2"')

One version counts every committed change of the room, state and metadata alike, so the
room's changes have one order; the ETag is `"<version>"`. A patch carries the version it was
computed from and applies when none of its paths changed since (`conflicts.py`); `if_match`
asks for strict compare-and-set instead. A metadata change touches no path of the document,
so it never makes a state patch conflict.

Events: nothing is published here yet. Every committed change must appear on `room_{id}`
exactly once and in version order even if the function dies right after the write, so the
publishing belongs to a consumer of the events table's stream (an outbox), added by a later
session: each committed version is one INSERT/MODIFY stream record of the room item, in order
(DynamoDB Streams keeps a key's records in order, exactly once in the stream), and its
NewImage's `lastChange` holds the event data: `version`, `kind` (`room.state` or
`room.metadata`), `patch` or `operations` (state) or `metadata`, `paths`, `by`, `at`, plus
`base` (the version the patch was computed from) and a `token` (the store's own).
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..clock import now_ms
from ..errors import InvalidInput
from .errors import MetadataTooLarge, PatchTestFailed, PreconditionFailed, RoomContended, StateConflict, StateTooLarge
from .patches import (
    ROOT,
    apply_json_patch,
    apply_merge_patch,
    json_patch_paths,
    merge_patch_paths,
    validate_operations,
)
from .store import RoomRecord, RoomStore, VersionMoved, dumps, room_key

if TYPE_CHECKING:
    from ..realtime import Realtime
    from .presence import Presence

ROOM_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
MAX_DOC_BYTES = 64 * 1024  # the document after a patch, as compact UTF-8 JSON
MAX_METADATA_BYTES = 16 * 1024
MAX_PATCH_BYTES = 64 * 1024  # a patch is stored in `lastChange` too: keep the item inside 400 KB
MAX_BY_LENGTH = 256
# Each lost race means another writer committed, so this bounds only how long a room that many
# writers hammer can keep one of them waiting; far above 20 concurrent writers.
MAX_ATTEMPTS = 64

STATE_KIND = "room.state"
METADATA_KIND = "room.metadata"


def room_channel_name(room_id: str) -> str:
    return f"room_{room_id}"


def etag_of(version: int) -> str:
    return f'"{version}"'


@dataclass(frozen=True)
class RoomState:
    version: int
    doc: dict[str, Any]


@dataclass(frozen=True)
class PatchResult:
    version: int
    doc: dict[str, Any]
    paths: list[str]  # what the patch changed; [] when it changed nothing (and nothing was written)


@dataclass(frozen=True)
class MetadataResult:
    version: int
    metadata: dict[str, Any]


class Room:
    """One room of a `Realtime` instance: `room_{id}` plus its state document and metadata."""

    def __init__(self, realtime: Realtime, room_id: str, *, store: RoomStore | None = None) -> None:
        if not isinstance(room_id, str) or not ROOM_ID_PATTERN.fullmatch(room_id):
            raise InvalidInput("room id must be 1-128 of A-Z a-z 0-9 _ . : -", field="roomId")
        self.realtime = realtime
        self.id = room_id
        self.channel_name = room_channel_name(room_id)
        self.key = room_key(realtime.name, room_id)
        self._store = store

    def __repr__(self) -> str:
        return f"Room({self.id!r})"

    @property
    def presence(self) -> Presence:
        """Who is in the room (`presence.py`): join, update, leave, members, count."""
        from .presence import Presence

        return Presence(self.realtime, self.id)

    @property
    def store(self) -> RoomStore:
        if self._store is None:
            from ..clients import dynamodb

            self._store = RoomStore(dynamodb(), self.realtime.settings.events_table_name)
        return self._store

    # --- reads ----------------------------------------------------------------------------

    def state(self) -> RoomState:
        record = self.store.get(self.key)
        return RoomState(record.version, record.doc)

    def metadata(self) -> dict[str, Any]:
        return self.store.get(self.key).metadata

    def get(self) -> dict[str, Any]:
        """The room as `GET /rooms/{roomId}` shows it: state and metadata from one consistent read
        (so one version), and the member count (the connections table, read right after)."""
        record = self.store.get(self.key)
        return {
            "roomId": self.id,
            "metadata": record.metadata,
            "state": {"version": record.version, "doc": record.doc},
            "memberCount": self.presence.count(),
            "etag": etag_of(record.version),
        }

    # --- changes --------------------------------------------------------------------------

    def patch(
        self,
        version: Any,
        *,
        merge_patch: Any = None,
        operations: Any = None,
        if_match: int | str | None = None,
        by: str | None = None,
    ) -> PatchResult:
        """Apply an RFC 7396 merge patch or RFC 6902 operations computed from `version`.

        Refusals, each leaving the room as it was: `InvalidInput` (400), `StateConflict` (409),
        `PreconditionFailed` (412), `StateTooLarge` (413), `PatchTestFailed` (422).
        """
        base = _version(version)
        expected = _if_match(if_match)
        _check_by(by)
        if (merge_patch is None) == (operations is None):
            raise InvalidInput("give exactly one of patch (merge patch) and operations (JSON Patch)", field="patch")
        if operations is not None:
            validate_operations(operations)
            change: dict[str, Any] = {"operations": operations}
        else:
            if not isinstance(merge_patch, dict):
                raise InvalidInput("a merge patch must be an object: the document stays an object", field="patch")
            change = {"patch": merge_patch}
        if _size(change, "patch") > MAX_PATCH_BYTES:
            raise StateTooLarge(f"the patch is larger than {MAX_PATCH_BYTES} bytes", field="patch")

        record = self.store.get(self.key)
        for _attempt in range(MAX_ATTEMPTS):
            _check_precondition(record, expected)
            if base > record.version:
                raise StateConflict(record.version, record.doc, [ROOT])
            doc, paths = self._apply(record, base, merge_patch, operations)
            conflicts = record.changes.conflicts(base, paths)
            if conflicts:
                raise StateConflict(record.version, record.doc, conflicts)
            if not paths or dumps(doc) == dumps(record.doc):
                return PatchResult(record.version, record.doc, [])
            if _size(doc, "doc") > MAX_DOC_BYTES:
                raise StateTooLarge(f"the document would be larger than {MAX_DOC_BYTES} bytes", field="patch")
            new_version = record.version + 1
            last = {"version": new_version, "kind": STATE_KIND, **change, "paths": paths, "base": base, "by": by}
            committed = self._commit(
                record,
                RoomRecord(new_version, doc, record.metadata, record.changes.record(new_version, paths)),
                last,
            )
            if committed is None:
                return PatchResult(new_version, doc, paths)
            record = committed
        raise RoomContended(f"room {self.id} changed under {MAX_ATTEMPTS} attempts in a row; retry")

    def set_metadata(
        self, metadata: Any, *, if_match: int | str | None = None, by: str | None = None
    ) -> MetadataResult:
        """Replace the metadata (a JSON object of at most 16 KiB); `if_match` makes it compare-and-set."""
        if not isinstance(metadata, dict):
            raise InvalidInput("metadata must be an object", field="metadata")
        if _size(metadata, "metadata") > MAX_METADATA_BYTES:
            raise MetadataTooLarge(f"metadata is larger than {MAX_METADATA_BYTES} bytes", field="metadata")
        expected = _if_match(if_match)
        _check_by(by)
        record = self.store.get(self.key)
        for _attempt in range(MAX_ATTEMPTS):
            _check_precondition(record, expected)
            if dumps(metadata) == dumps(record.metadata):
                return MetadataResult(record.version, record.metadata)
            new_version = record.version + 1
            last = {"version": new_version, "kind": METADATA_KIND, "metadata": metadata, "paths": [], "by": by}
            committed = self._commit(record, RoomRecord(new_version, record.doc, metadata, record.changes), last)
            if committed is None:
                return MetadataResult(new_version, metadata)
            record = committed
        raise RoomContended(f"room {self.id} changed under {MAX_ATTEMPTS} attempts in a row; retry")

    # --- internals ------------------------------------------------------------------------

    @staticmethod
    def _apply(record: RoomRecord, base: int, merge_patch: Any, operations: Any) -> tuple[dict[str, Any], list[str]]:
        if operations is None:
            return apply_merge_patch(record.doc, merge_patch), merge_patch_paths(merge_patch)
        try:
            doc, paths = apply_json_patch(record.doc, operations)
        except (InvalidInput, PatchTestFailed):
            # An operation that cannot apply (say, to a path someone removed) is a conflict
            # when it overlaps a later change: the client needs the fresh document, not a 400.
            conflicts = record.changes.conflicts(base, json_patch_paths(operations))
            if conflicts:
                raise StateConflict(record.version, record.doc, conflicts) from None
            raise
        if not isinstance(doc, dict):
            raise InvalidInput("the document must stay a JSON object", field="operations")
        return doc, paths

    def _commit(self, record: RoomRecord, new: RoomRecord, last: dict[str, Any]) -> RoomRecord | None:
        """One conditional write; None when it committed, else the room as it now is."""
        at = now_ms()
        last = {**last, "at": at, "token": secrets.token_hex(8)}
        new = RoomRecord(new.version, new.doc, new.metadata, new.changes, last, at)
        try:
            self.store.commit(self.key, record.version, new, at)
        except VersionMoved as moved:
            # The winner may not have touched our paths: the caller re-evaluates on what won.
            # A short random pause spreads out writers that lost the same race.
            time.sleep(secrets.randbelow(3_000) / 1_000_000)
            return moved.current if moved.current is not None else self.store.get(self.key)
        return None


def room(realtime: Realtime, room_id: str) -> Room:
    """The room `room_id` of `realtime` (a later session adds `live.room(id)` on top of this)."""
    return Room(realtime, room_id)


def _version(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput("version must be a non-negative integer", field="version")
    return value


def _if_match(value: int | str | None) -> int | Literal["*"] | None:
    """`If-Match` as a version: an int, `"<n>"` (the ETag), `<n>`, or `*` (any version)."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return _version(value)
    if isinstance(value, str):
        text = value.strip()
        if text == "*":
            return "*"
        if len(text) >= 2 and text[0] == text[-1] == '"':
            text = text[1:-1]
        if text.isascii() and text.isdigit():
            return int(text)
    raise InvalidInput('If-Match must be an ETag of the room, "<version>"', field="ifMatch")


def _check_precondition(record: RoomRecord, expected: int | Literal["*"] | None) -> None:
    if expected is None or expected == "*":
        return
    if expected != record.version:
        raise PreconditionFailed(record.version, expected)


def _check_by(by: str | None) -> None:
    if by is not None and (not isinstance(by, str) or not 1 <= len(by) <= MAX_BY_LENGTH):
        raise InvalidInput(f"by must be a string of 1-{MAX_BY_LENGTH} characters", field="by")


def _size(value: Any, field: str) -> int:
    try:
        return len(dumps(value).encode())
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{field} is not JSON: {exc}", field=field) from exc
