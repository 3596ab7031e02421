"""The presence outbox: member items' changes, from the connections table's stream to `room_{id}`.

What everyone in a room sees of presence is derived from the member item alone
(`presence_store.py`), so it is published from that item's stream records, like the room
changes of `outbox.py`:

| stream record (sk `member#…`)           | event on `room_{roomId}` | data                                  |
| --------------------------------------- | ------------------------ | ------------------------------------- |
| INSERT                                  | `presence.join`          | memberId, member, session, rev        |
| MODIFY with NewImage.rev > OldImage.rev | `presence.update`        | memberId, member, session, rev        |
| REMOVE                                  | `presence.leave`         | memberId, reason, session             |
| anything else (a tab came or went, a    | nothing                  |                                       |
| grace period began or ended, TTL renew) |                          |                                       |

A leave's `reason` is the OldImage's `leaveReason`, except when DynamoDB's TTL deleted the item:
such a record carries `userIdentity` `{"type": "Service", "principalId": "dynamodb.amazonaws.com"}`
(DynamoDB Streams API reference, "Record": userIdentity, and "Identity"; see also "Change data
capture for DynamoDB Streams" on TTL deletions in the stream), and the member timed out.

- Exactly once: each event carries the idempotency key
  `presence:{session}:{rev | "leave"}:{sha256(memberId) hex[:24]}`, so a retried record (Lambda
  retries a batch from its lowest reported failure) replays the event it stored. The session
  makes a rejoin after a leave a new key; the hash keeps the key short whatever the memberId.
- In order per member: records are handled in stream order (DynamoDB Streams keeps each item's
  records in order), and once one of a member's records fails, its later records in the batch
  are reported failed without being published; other members go on.
- Only this namespace's rooms (pk `room#{ns}#{roomId}`); connections, memberships and count
  shards are not member items and are ignored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .outbox import OutboxResult, publish_in_order
from .presence_store import MEMBER_PREFIX, split_room_key

if TYPE_CHECKING:
    from ..clock import Deadline
    from ..realtime import Realtime

JOIN = "presence.join"
UPDATE = "presence.update"
LEAVE = "presence.leave"
TTL_PRINCIPAL = "dynamodb.amazonaws.com"
# A member item deleted by something other than presence (no leaveReason): it is gone, and no
# one said why; the reason a client can least misread is that it timed out.
_UNKNOWN_REASON = "timeout"


@dataclass(frozen=True)
class PresenceChange:
    """One presence event a stream record carries."""

    sequence_number: str
    room_id: str
    member_id: str
    kind: str  # presence.join | presence.update | presence.leave
    session: str
    rev: int | None  # None for a leave
    data: dict[str, Any]

    @property
    def order_key(self) -> Hashable:
        return (self.room_id, self.member_id)

    @property
    def idempotency_key(self) -> str:
        digest = hashlib.sha256(self.member_id.encode()).hexdigest()[:24]
        return f"presence:{self.session}:{'leave' if self.rev is None else self.rev}:{digest}"


def presence_change(record: Any, namespace: str) -> PresenceChange | None:
    """The presence event of a stream record, or None for anything that is not one (other items,
    other namespaces, a tab coming or going, a grace period)."""
    raw: Mapping[str, Any] = getattr(record, "raw_event", record)
    stream: Mapping[str, Any] = raw.get("dynamodb") or {}
    keys: Mapping[str, Any] = stream.get("Keys") or {}
    new: Mapping[str, Any] = stream.get("NewImage") or {}
    old: Mapping[str, Any] = stream.get("OldImage") or {}
    pk = str(keys.get("pk", {}).get("S", ""))
    sk = str(keys.get("sk", {}).get("S", ""))
    parsed = split_room_key(pk)
    if not sk.startswith(MEMBER_PREFIX) or parsed is None or parsed[0] != namespace:
        return None
    room_id = parsed[1]
    number = str(stream.get("SequenceNumber", ""))
    event = raw.get("eventName")
    try:
        if event == "INSERT" or (event == "MODIFY" and _rev(new) > _rev(old)):
            session = new["session"]["S"]
            rev = _rev(new)
            member_id = new["memberId"]["S"]
            data = {"memberId": member_id, "member": json.loads(new["member"]["S"]), "session": session, "rev": rev}
            return PresenceChange(number, room_id, member_id, JOIN if event == "INSERT" else UPDATE, session, rev, data)
        if event == "REMOVE" and old:
            session = old["session"]["S"]
            member_id = old["memberId"]["S"]
            identity: Mapping[str, Any] = raw.get("userIdentity") or {}
            if identity.get("principalId") == TTL_PRINCIPAL:
                reason = "timeout"
            else:
                reason = str(old.get("leaveReason", {}).get("S") or _UNKNOWN_REASON)
            data = {"memberId": member_id, "reason": reason, "session": session}
            return PresenceChange(number, room_id, member_id, LEAVE, session, None, data)
    except (KeyError, TypeError, ValueError):
        return None  # not a member item as presence writes it
    return None


def _rev(image: Mapping[str, Any]) -> int:
    value = image.get("rev", {}).get("N")
    return int(value) if value is not None else 0


class PresenceOutbox:
    def __init__(self, realtime: Realtime) -> None:
        self.realtime = realtime

    def publish(self, records: Iterable[Any], deadline: Deadline | None = None) -> OutboxResult:
        """Publish every presence event of a stream batch, in order per member; report what must
        come again (`outbox.publish_in_order`)."""
        changes = (presence_change(record, self.realtime.name) for record in records)
        return publish_in_order(self.realtime, (c for c in changes if c is not None), deadline)
