"""Presence: who is in a room, with their tabs, their data, and their leaving.

    from realtime_transport.rooms import Presence, PresenceRegistry
    from realtime_transport.rooms.room import room

    presence = room(realtime, "R").presence            # or Presence(realtime, "R")
    presence.join(connection_id, member_id, member=None) -> Member
    presence.update(connection_id, member_id, member) -> Member
    presence.leave(connection_id, reason="left") -> bool
    presence.members(limit=100, cursor=None) -> MembersPage
    presence.count() -> int

    registry = PresenceRegistry(realtime)              # what spans every room of a connection
    registry.heartbeat(connection_id) -> int
    registry.connection_gone(connection_id) -> list[str]
    registry.sweep(now, probe) -> SweepReport

A member is the token's `sub`; it is present while at least one of its connections has joined,
and one member item stands for all of them (`connections` counts tabs). Each join also writes
a membership on the connection's side, with a lease the connection's heartbeats renew (`ping`
or any room action: the WebSocket layer calls `heartbeat`). What everyone else sees comes from
the member item's stream (`presence_outbox.py`): its creation is `presence.join`, a data change
(`rev` + 1) `presence.update`, its deletion `presence.leave`; adding or removing a tab changes
neither, so a second tab or a reload is invisible.

Leaving, three ways:
- `left` (the client said so) and `timeout` (the sweeper found the socket gone or silent): the
  member item goes as soon as its last connection does.
- `disconnected` (`$disconnect`, a 410 in the fan-out: `connection_gone`, called BEFORE
  `ConnectionStore.delete_connection`): the member stays listed for PRESENCE_GRACE_SECONDS; a
  join within it (a reload) takes the member back with no leave and no join; after it the
  sweeper deletes the member and `presence.leave` says `disconnected`.
- A socket that vanished without `$disconnect` (API Gateway delivers it best effort) stops
  heartbeating; when its lease ran out the sweeper asks the management API (`probe`) and takes
  it out with `timeout` unless it was active within the lease.

Every operation is a constant number of DynamoDB requests whatever the room's size (join: 2 to
4; leave: 3 or 4); `heartbeat` and `connection_gone` are that per room of the connection.
All data access is `presence_store.py`'s; its failures are `StoreUnavailable` (503).

Robustness, beyond the spec's sketch: a leave's one UpdateItem also puts the member on the
sweeper's index (`sweep`, `deadline`: now + grace for `disconnected`, now otherwise), and the
membership is deleted last, so a function that dies half-way through a leave leaves nothing
stranded: the sweeper finishes it.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import clock
from ..errors import InvalidInput, RealtimeError
from .errors import MemberTooLarge, NotInRoom, RoomContended
from .presence_store import (
    CONN_PREFIX,
    MAX_ATTEMPTS,
    MEMBER_PREFIX,
    MEMBER_TTL_SECONDS,
    MEMBERSHIP_TTL_SECONDS,
    ROOM_PREFIX,
    SWEEP_SHARDS,
    ConditionFailed,
    MemberAbsent,
    MemberExists,
    MemberRecord,
    MembershipRecord,
    PresenceStore,
    dumps_member,
    membership_sk,
    room_pk,
    split_room_key,
)

if TYPE_CHECKING:
    from ..clock import Deadline
    from ..realtime import Realtime

MAX_MEMBER_BYTES = 1024  # compact UTF-8 JSON
MAX_MEMBER_ID_LENGTH = 256
DEFAULT_MEMBERS_LIMIT = 100
MAX_MEMBERS_LIMIT = 1000
LEAVE_REASONS = ("left", "disconnected", "timeout")

# probe(connection_id) -> the connection's lastActiveAt (epoch seconds), or None if it is gone
# (the management API's GET @connections/{id}: 410).
Probe = Callable[[str], float | None]


def _now() -> float:
    return clock.now_ms() / 1000


@dataclass(frozen=True)
class Member:
    """A member as shown everywhere (WebSocket and HTTP): `to_dict()`."""

    member_id: str
    member: dict[str, Any]
    connections: int
    joined_at_ms: int
    session: str
    rev: int

    @classmethod
    def of(cls, record: MemberRecord) -> Member:
        return cls(
            member_id=record.member_id,
            member=record.member,
            connections=len(record.connections),
            joined_at_ms=record.joined_at_ms,
            session=record.session,
            rev=record.rev,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "memberId": self.member_id,
            "member": self.member,
            "connections": self.connections,
            "joinedAt": self.joined_at_ms,
            "session": self.session,
            "rev": self.rev,
        }


@dataclass(frozen=True)
class MembersPage:
    items: list[Member]
    next_cursor: str | None
    has_more: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "items": [m.to_dict() for m in self.items],
            "nextCursor": self.next_cursor,
            "hasMore": self.has_more,
        }


@dataclass
class SweepReport:
    """What one sweep pass did."""

    examined: int = 0  # index entries found due
    deleted: list[tuple[str, str]] = field(default_factory=list)  # (roomId, memberId): grace over
    timed_out: list[tuple[str, str]] = field(default_factory=list)  # (roomId, connectionId): gone or silent
    renewed: int = 0  # memberships whose connection was still active: lease moved on
    errors: int = 0  # entries left for the next pass (store or probe failure)
    stopped: bool = False  # the pass ran out of the invocation's time; the rest waits for the next


def _store(realtime: Realtime) -> PresenceStore:
    from ..clients import dynamodb

    return PresenceStore(dynamodb(), realtime.settings.connections_table_name)


class Presence:
    """The presence of one room of a `Realtime` instance."""

    def __init__(self, realtime: Realtime, room_id: str, *, store: PresenceStore | None = None) -> None:
        from .room import ROOM_ID_PATTERN

        if not isinstance(room_id, str) or not ROOM_ID_PATTERN.fullmatch(room_id):
            raise InvalidInput("room id must be 1-128 of A-Z a-z 0-9 _ . : -", field="roomId")
        self.realtime = realtime
        self.room_id = room_id
        self.key = room_pk(realtime.name, room_id)
        self.membership_key = membership_sk(realtime.name, room_id)
        self.store = store or _store(realtime)

    def __repr__(self) -> str:
        return f"Presence({self.room_id!r})"

    # --- changes --------------------------------------------------------------------------

    def join(self, connection_id: str, member_id: str, member: dict[str, Any] | None = None) -> Member:
        """Join the room as `member_id` from `connection_id`; returns the member as stored after the join.

        `member` (a JSON object of at most 1 KiB) replaces the member's data when given and
        different (a `presence.update` for everyone); None keeps what is stored ({} for a new
        member). Joining again from the same connection is harmless (it renews the lease).
        """
        _check_id(connection_id, "connectionId")
        _check_id(member_id, "memberId")
        data = None if member is None else _member_data(member)
        now = _now()
        settings = self.realtime.settings
        self.store.put_membership(
            connection_id,
            self.membership_key,
            member_id,
            now + settings.presence_lease_seconds,
            int(now) + MEMBERSHIP_TTL_SECONDS,
        )
        expires_at = int(now) + MEMBER_TTL_SECONDS
        for _attempt in range(MAX_ATTEMPTS):
            # Present (another tab, or within its grace period): one UpdateItem. Absent: created
            # with its count in one transaction. Each lost race (created or deleted meanwhile)
            # means the other path now applies.
            try:
                return Member.of(self.store.add_connection(self.key, member_id, connection_id, data, expires_at))
            except MemberAbsent:
                pass
            joined_at = clock.now_ms()
            record = MemberRecord(
                member_id=member_id,
                member=data if data is not None else {},
                session=f"{joined_at:013d}.{secrets.token_hex(4)}",
                rev=1,
                joined_at_ms=joined_at,
                connections=frozenset({connection_id}),
            )
            try:
                self.store.create_member(self.key, record, expires_at)
            except MemberExists:
                continue
            return Member.of(record)
        raise RoomContended(f"room {self.room_id}: member {member_id!r} kept being created and deleted; retry")

    def update(self, connection_id: str, member_id: str, member: dict[str, Any]) -> Member:
        """Replace the member's data (`presence.update`); the same data writes nothing.

        `NotInRoom` unless `connection_id` has joined as `member_id`.
        """
        _check_id(connection_id, "connectionId")
        _check_id(member_id, "memberId")
        data = _member_data(member)
        try:
            record = self.store.update_member_data(self.key, member_id, connection_id, data)
        except ConditionFailed as failed:
            current = MemberRecord.from_item(failed.item) if failed.item else None
            if current is None or connection_id not in current.connections:
                raise NotInRoom(f"this connection has not joined room {self.room_id}", field="room") from None
            return Member.of(current)  # the data is what is stored already
        return Member.of(record)

    def leave(self, connection_id: str, reason: str = "left") -> bool:
        """Take the connection out of the room; False if it was not in it.

        `reason`: `left` or `timeout` delete the member with its last connection; `disconnected`
        keeps it for the grace period (the sweeper deletes it after, unless it rejoins).
        """
        _check_id(connection_id, "connectionId")
        if reason not in LEAVE_REASONS:
            raise InvalidInput(f"reason must be one of {', '.join(LEAVE_REASONS)}", field="reason")
        membership = self.store.membership(connection_id, self.membership_key)
        if membership is None:
            return False
        self._leave(membership, reason)
        return True

    def _leave(self, membership: MembershipRecord, reason: str) -> None:
        now = _now()
        grace = self.realtime.settings.presence_grace_seconds
        deadline = now + grace if reason == "disconnected" else now
        before = self.store.remove_connection(
            self.key, membership.member_id, membership.connection_id, reason, deadline
        )
        # The item as it was before is exact: what remains is it less this connection (and a
        # retried request whose first response was lost sees the same remainder).
        if before is not None and not before.connections - {membership.connection_id} and reason != "disconnected":
            self.store.delete_member(self.key, membership.member_id)
        # Last: until here a dying function leaves the membership for the sweeper to finish.
        self.store.delete_membership(membership.connection_id, self.membership_key)

    # --- reads ----------------------------------------------------------------------------

    def members(self, limit: int = DEFAULT_MEMBERS_LIMIT, cursor: str | None = None) -> MembersPage:
        """One page of members in memberId order (members in their grace period included)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_MEMBERS_LIMIT:
            raise InvalidInput(f"limit must be an integer from 1 to {MAX_MEMBERS_LIMIT}", field="limit")
        after = None if cursor is None else decode_cursor(cursor)
        records, has_more = self.store.members(self.key, limit, after)
        items = [Member.of(r) for r in records]
        next_cursor = encode_cursor(items[-1].member_id) if has_more and items else None
        return MembersPage(items, next_cursor, has_more)

    def member(self, member_id: str) -> Member | None:
        _check_id(member_id, "memberId")
        record = self.store.member(self.key, member_id)
        return Member.of(record) if record else None

    def count(self) -> int:
        return self.store.count(self.key)


class PresenceRegistry:
    """Presence operations that span every room: a connection's heartbeat and disappearance, the sweep.

    Only rooms of this instance's namespace (`realtime.name`) are touched, as the outbox publishes
    only those.
    """

    def __init__(self, realtime: Realtime, *, store: PresenceStore | None = None) -> None:
        self.realtime = realtime
        self.store = store or _store(realtime)

    def _room_of(self, key: str) -> str | None:
        parsed = split_room_key(key)
        return parsed[1] if parsed and parsed[0] == self.realtime.name else None

    def presence(self, room_id: str) -> Presence:
        return Presence(self.realtime, room_id, store=self.store)

    def heartbeat(self, connection_id: str) -> int:
        """Renew the lease of each of the connection's room memberships; returns how many."""
        _check_id(connection_id, "connectionId")
        deadline = _now() + self.realtime.settings.presence_lease_seconds
        renewed = 0
        for membership in self.store.memberships(connection_id):
            if self._room_of(membership.room_key) is not None:
                renewed += self.store.renew_membership(connection_id, membership.room_key, deadline)
        return renewed

    def connection_gone(self, connection_id: str) -> list[str]:
        """The connection closed: leave each of its rooms with `disconnected`; returns their ids.

        Call it before `ConnectionStore.delete_connection` (which deletes the memberships too).
        """
        _check_id(connection_id, "connectionId")
        rooms: list[str] = []
        for membership in self.store.memberships(connection_id):
            room_id = self._room_of(membership.room_key)
            if room_id is not None:
                self.presence(room_id)._leave(membership, "disconnected")
                rooms.append(room_id)
        return rooms

    def sweep(self, now: float, probe: Probe, deadline: Deadline | None = None) -> SweepReport:
        """One pass over the 16 shards of the `by-deadline` index: what is due at `now` (epoch s).

        - a member whose grace period ended and that still has no connection is deleted
          (`presence.leave` with the reason stored: `disconnected`); one that has connections
          again is taken off the index;
        - a membership whose lease ended: `probe(connectionId)`; gone (None) or inactive for
          longer than the lease -> `leave(..., "timeout")` (no grace: the lease waited longer);
          otherwise the lease is renewed to lastActiveAt + lease.
        The index is eventually consistent, so each decision is re-checked against the item.
        A pass stops when `deadline` passes; what it did not reach is still due at the next one.
        """
        lease = self.realtime.settings.presence_lease_seconds
        report = SweepReport()
        probed: dict[str, float | None] = {}
        for shard in range(SWEEP_SHARDS):
            try:
                due = list(self.store.due(shard, now))
            except RealtimeError:
                report.errors += 1
                continue
            for entry in due:
                if deadline is not None and deadline.passed():
                    report.stopped = True
                    return report
                report.examined += 1
                try:
                    if entry.pk.startswith(ROOM_PREFIX) and entry.sk.startswith(MEMBER_PREFIX):
                        self._sweep_member(entry.pk, entry.sk.removeprefix(MEMBER_PREFIX), now, report)
                    elif entry.pk.startswith(CONN_PREFIX) and entry.sk.startswith(ROOM_PREFIX):
                        self._sweep_membership(
                            entry.pk.removeprefix(CONN_PREFIX), entry.sk, now, lease, probe, probed, report
                        )
                except RealtimeError:
                    report.errors += 1
        return report

    def _sweep_member(self, key: str, member_id: str, now: float, report: SweepReport) -> None:
        room_id = self._room_of(key)
        if room_id is None:
            return
        # Deleted only if still without connections and still due (a rejoin and a new leave may
        # have moved the deadline on): the transaction's condition decides, not the index.
        if self.store.delete_member(key, member_id, due_by=now):
            report.deleted.append((room_id, member_id))
        else:
            self.store.clear_deadline(key, member_id)  # only if it has connections (not leaving)

    def _sweep_membership(
        self,
        connection_id: str,
        room_key: str,
        now: float,
        lease: float,
        probe: Probe,
        probed: dict[str, float | None],
        report: SweepReport,
    ) -> None:
        room_id = self._room_of(room_key)
        if room_id is None:
            return
        membership = self.store.membership(connection_id, room_key)
        if membership is None or membership.deadline > now:
            return  # left, or a heartbeat renewed it after the index was read
        if connection_id not in probed:
            try:
                probed[connection_id] = probe(connection_id)
            except Exception:  # the management API failed: ask again next pass, decide nothing now
                report.errors += 1
                return
        last_active = probed[connection_id]
        if last_active is None or now - last_active > lease:
            self.presence(room_id)._leave(membership, "timeout")
            report.timed_out.append((room_id, connection_id))
        else:
            self.store.renew_membership(connection_id, room_key, last_active + lease)
            report.renewed += 1


# --- validation and cursors ---------------------------------------------------------------


def _check_id(value: Any, name: str) -> None:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_MEMBER_ID_LENGTH:
        raise InvalidInput(f"{name} must be a string of 1-{MAX_MEMBER_ID_LENGTH} characters", field=name)


def _member_data(member: Any) -> dict[str, Any]:
    if not isinstance(member, dict):
        raise InvalidInput("member must be a JSON object", field="member")
    try:
        size = len(dumps_member(member).encode())
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"member is not JSON: {exc}", field="member") from exc
    if size > MAX_MEMBER_BYTES:
        raise MemberTooLarge(f"member data is larger than {MAX_MEMBER_BYTES} bytes", field="member")
    return member


def encode_cursor(member_id: str) -> str:
    """The opaque members cursor: base64url (unpadded) of the last memberId of the page."""
    return base64.urlsafe_b64encode(member_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: Any) -> str:
    if not isinstance(cursor, str) or not 1 <= len(cursor) <= 4 * MAX_MEMBER_ID_LENGTH:
        raise InvalidInput("cursor is not a members cursor", field="cursor")
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        member_id = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        raise InvalidInput("cursor is not a members cursor", field="cursor") from None
    if not member_id or encode_cursor(member_id) != cursor:
        raise InvalidInput("cursor is not a members cursor", field="cursor")
    return member_id
