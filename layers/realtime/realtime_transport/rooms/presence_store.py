"""The data access layer of presence: the only presence code that talks to DynamoDB.

Presence lives in the connections table (pk S, sk S), beside the connections themselves:

| item         | pk                    | sk                    | attributes                                      |
| ------------ | --------------------- | --------------------- | ----------------------------------------------- |
| membership   | `conn#{connId}`       | `room#{ns}#{roomId}`  | memberId, sweep, deadline (lease end), ttl      |
| member       | `room#{ns}#{roomId}`  | `member#{memberId}`   | memberId, member (S JSON), session, rev,        |
|              |                       |                       | joinedAt (ms), connections (SS, absent when     |
|              |                       |                       | empty), leaveReason, sweep + deadline while     |
|              |                       |                       | leaving (grace end), ttl (3 h, renewed by joins)|
| count shard  | `room#{ns}#{roomId}`  | `count#{0..15}`       | n (N)                                           |

- A membership is the connection's side of a join: it is found from the connection (Query of its
  partition, sk begins_with `room#`) for heartbeats and `$disconnect`, and from the `by-deadline`
  index when its lease ran out.
- A member is one per memberId (the token's `sub`), whatever its number of connections (tabs).
  `session` is set when the item is created (`{joinedAt:013d}.{8 hex}`, so lexicographic order is
  time order) and `rev` counts its data changes: the stream of this item is the presence outbox's
  input (`rooms/presence_outbox.py`).
- The member count is 16 shards (shard = sha256(memberId) % 16) so that joins to one room spread
  their writes; memberCount is their sum (one consistent Query). A member item is created together
  with its shard's `ADD n 1` in one TransactWriteItems and deleted with `ADD n -1` in another, so
  the count is exact. Everything else on a member item is a plain conditional UpdateItem.
- GSI `by-deadline` (hash `sweep` S, range `deadline` N, KEYS_ONLY) is sparse: only memberships and
  leaving members carry `sweep` (`sweep#{0..15}`: sha256 of the connection id / member id, so
  heartbeats spread over index partitions) and `deadline`. The sweeper reads what is due with one
  Query per shard and re-checks every decision with a condition on the base item: the index is
  eventually consistent.

Every method is one DynamoDB request except that transactions retry a `TransactionConflict`
(below). Failures after botocore's own retries become `StoreUnavailable` (a 503).

**Transaction conflicts.** DynamoDB does not make a write wait for a transaction in flight on
the same item: a TransactWriteItems is cancelled (TransactionCanceledException whose
CancellationReasons has `TransactionConflict` at that item), and a single-item write fails with
TransactionConflictException (Amazon DynamoDB Developer Guide, "Transaction conflict handling in
DynamoDB"). Nothing was written either way, and botocore does not retry them, so every write
here retries them itself with capped, fully jittered exponential backoff. A cancelled
transaction's reasons are read item by item: `ConditionalCheckFailed` is an answer (the member
exists / still has connections), not an error.

**Lost responses.** botocore retries a 5xx with the same request; TransactWriteItems carries a
`ClientRequestToken` that botocore fills in and keeps across its retries, so a retried
transaction that already committed succeeds again without writing twice (TransactWriteItems, API
reference: "ClientRequestToken"). Single-item writes here are written to be harmless to repeat
(ADD/DELETE of a set element, SET of the same values).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import StoreUnavailable
from .errors import RoomContended

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

BY_DEADLINE_INDEX = "by-deadline"
COUNT_SHARDS = 16
SWEEP_SHARDS = 16
MEMBER_TTL_SECONDS = 3 * 3600  # renewed by every join; past API Gateway's 2-hour connection limit
MEMBERSHIP_TTL_SECONDS = 3 * 3600  # as the connection's own items (connections.CONNECTION_TTL_SECONDS)
MEMBER_PREFIX = "member#"
COUNT_PREFIX = "count#"
ROOM_PREFIX = "room#"
CONN_PREFIX = "conn#"

# Conflicts: each one means a transaction was in flight on the item for a few milliseconds.
# 24 attempts of capped full jitter keep a writer trying for seconds, far beyond any real burst.
MAX_ATTEMPTS = 24
_BACKOFF_BASE_S = 0.004
_BACKOFF_CAP_S = 0.2

# No connections left: DynamoDB has no empty sets ("AttributeValueUpdate", API reference: "set
# type attributes must not be empty"), so a DELETE that empties `connections` leaves no such
# attribute. The condition also accepts an empty set, so it does not depend on that reading.
_NO_CONNECTIONS = "(attribute_not_exists(#c) OR size(#c) = :zero)"

_T = TypeVar("_T")


def shard_of(value: str, shards: int) -> int:
    """A stable shard (Python's own `hash()` differs per process)."""
    return int.from_bytes(hashlib.sha256(value.encode()).digest()[:8], "big") % shards


def sweep_shard(value: str) -> str:
    return f"sweep#{shard_of(value, SWEEP_SHARDS)}"


def room_pk(namespace: str, room_id: str) -> str:
    return f"{ROOM_PREFIX}{namespace}#{room_id}"


def membership_sk(namespace: str, room_id: str) -> str:
    return f"{ROOM_PREFIX}{namespace}#{room_id}"  # the same text as the room's pk, on the connection's side


def connection_pk(connection_id: str) -> str:
    return f"{CONN_PREFIX}{connection_id}"


def member_sk(member_id: str) -> str:
    return f"{MEMBER_PREFIX}{member_id}"


def split_room_key(key: str) -> tuple[str, str] | None:
    """(namespace, roomId) of `room#{ns}#{roomId}`; namespaces and room ids have no `#`."""
    if not key.startswith(ROOM_PREFIX):
        return None
    namespace, sep, room_id = key.removeprefix(ROOM_PREFIX).partition("#")
    return (namespace, room_id) if sep and namespace and room_id else None


def _number(value: float) -> str:
    return f"{value:.3f}"


@dataclass(frozen=True)
class MemberRecord:
    """A member item as stored."""

    member_id: str
    member: dict[str, Any]
    session: str
    rev: int
    joined_at_ms: int
    connections: frozenset[str]
    leave_reason: str | None = None
    deadline: float | None = None

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> MemberRecord:
        return cls(
            member_id=item["memberId"]["S"],
            member=json.loads(item["member"]["S"]),
            session=item["session"]["S"],
            rev=int(item["rev"]["N"]),
            joined_at_ms=int(item["joinedAt"]["N"]),
            connections=frozenset(item.get("connections", {}).get("SS", [])),
            leave_reason=item.get("leaveReason", {}).get("S"),
            deadline=float(item["deadline"]["N"]) if "deadline" in item else None,
        )


@dataclass(frozen=True)
class MembershipRecord:
    connection_id: str
    room_key: str  # room#{ns}#{roomId}
    member_id: str
    deadline: float


@dataclass(frozen=True)
class DueKey:
    """One index entry whose deadline passed: a membership (pk conn#) or a leaving member (pk room#)."""

    pk: str
    sk: str
    deadline: float


class MemberAbsent(Exception):
    """The member item does not exist (never created, or deleted meanwhile)."""


class MemberExists(Exception):
    """A member item was created meanwhile: the caller updates it instead."""


class ConditionFailed(Exception):
    """A conditional UpdateItem failed; `item` is the item as it was (None: absent)."""

    def __init__(self, item: dict[str, Any] | None) -> None:
        super().__init__("condition failed")
        self.item = item


class _Conflict(Exception):
    """A transaction was in flight on an item: nothing was written, try again."""


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class PresenceStore:
    def __init__(self, client: DynamoDBClient, table_name: str) -> None:
        self.client = client
        self._table = table_name

    # --- memberships ----------------------------------------------------------------------

    def put_membership(
        self, connection_id: str, room_key: str, member_id: str, deadline: float, expires_at: int
    ) -> None:
        self._retrying(
            lambda: self._call(
                self.client.put_item,
                TableName=self._table,
                Item={
                    "pk": {"S": connection_pk(connection_id)},
                    "sk": {"S": room_key},
                    "memberId": {"S": member_id},
                    "sweep": {"S": sweep_shard(connection_id)},
                    "deadline": {"N": _number(deadline)},
                    "ttl": {"N": str(expires_at)},
                },
            )
        )

    def membership(self, connection_id: str, room_key: str) -> MembershipRecord | None:
        item = self._call(
            self.client.get_item,
            TableName=self._table,
            Key={"pk": {"S": connection_pk(connection_id)}, "sk": {"S": room_key}},
            ConsistentRead=True,
        ).get("Item")
        return _membership(item) if item else None

    def memberships(self, connection_id: str) -> list[MembershipRecord]:
        """Every room membership of a connection (a connection is in a handful of rooms)."""
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :room)",
            "ExpressionAttributeValues": {":pk": {"S": connection_pk(connection_id)}, ":room": {"S": ROOM_PREFIX}},
            "ConsistentRead": True,
        }
        return [_membership(item) for item in self._query_all(kwargs)]

    def renew_membership(self, connection_id: str, room_key: str, deadline: float) -> bool:
        """Move a membership's lease end; False when the membership is gone (never resurrected)."""
        try:
            self._retrying(
                lambda: self._call(
                    self.client.update_item,
                    TableName=self._table,
                    Key={"pk": {"S": connection_pk(connection_id)}, "sk": {"S": room_key}},
                    UpdateExpression="SET deadline = :d",
                    ConditionExpression="attribute_exists(pk)",
                    ExpressionAttributeValues={":d": {"N": _number(deadline)}},
                    _conditional=True,
                )
            )
        except ConditionFailed:
            return False
        return True

    def delete_membership(self, connection_id: str, room_key: str) -> None:
        self._retrying(
            lambda: self._call(
                self.client.delete_item,
                TableName=self._table,
                Key={"pk": {"S": connection_pk(connection_id)}, "sk": {"S": room_key}},
            )
        )

    # --- members --------------------------------------------------------------------------

    def member(self, room_key: str, member_id: str) -> MemberRecord | None:
        item = self._call(
            self.client.get_item,
            TableName=self._table,
            Key={"pk": {"S": room_key}, "sk": {"S": member_sk(member_id)}},
            ConsistentRead=True,
        ).get("Item")
        return MemberRecord.from_item(item) if item else None

    def create_member(self, room_key: str, record: MemberRecord, expires_at: int) -> None:
        """Put a new member item and count it, in one transaction; `MemberExists` if it is there already."""
        item: dict[str, Any] = {
            "pk": {"S": room_key},
            "sk": {"S": member_sk(record.member_id)},
            "memberId": {"S": record.member_id},
            "member": {"S": dumps_member(record.member)},
            "session": {"S": record.session},
            "rev": {"N": str(record.rev)},
            "joinedAt": {"N": str(record.joined_at_ms)},
            "connections": {"SS": sorted(record.connections)},
            "ttl": {"N": str(expires_at)},
        }
        created = self._transact(
            [
                {
                    "Put": {
                        "TableName": self._table,
                        "Item": item,
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
                self._count_update(room_key, record.member_id, +1),
            ]
        )
        if not created:
            raise MemberExists

    def add_connection(
        self, room_key: str, member_id: str, connection_id: str, member: dict[str, Any] | None, expires_at: int
    ) -> MemberRecord:
        """Add a connection to an existing member, end any grace period, renew its TTL, and change its
        data (rev + 1) when `member` is given and differs. `MemberAbsent` if there is no member item.

        One request in the usual case. The data comparison is done by DynamoDB (`#m <> :m`), so two
        joins racing with different data both count as changes; when the data is the same, the
        condition fails and (ReturnValuesOnConditionCheckFailure, "UpdateItem", API reference) the
        item comes back, so the plain update follows without a read.
        """
        names = {"#c": "connections", "#m": "member", "#ttl": "ttl"}
        values: dict[str, Any] = {":c": {"SS": [connection_id]}, ":ttl": {"N": str(expires_at)}}
        plain = "ADD #c :c SET #ttl = :ttl REMOVE sweep, deadline, leaveReason"
        if member is not None:
            changed = {**values, ":m": {"S": dumps_member(member)}, ":one": {"N": "1"}}
            try:
                return self._update_member(
                    room_key,
                    member_id,
                    "ADD #c :c SET #ttl = :ttl, #m = :m, rev = rev + :one REMOVE sweep, deadline, leaveReason",
                    "attribute_exists(pk) AND #m <> :m",
                    names,
                    changed,
                )
            except ConditionFailed as failed:
                if failed.item is None:
                    raise MemberAbsent from None
                # Same data as stored: fall through to the plain update.
        try:
            return self._update_member(room_key, member_id, plain, "attribute_exists(pk)", names, values)
        except ConditionFailed:
            raise MemberAbsent from None

    def update_member_data(
        self, room_key: str, member_id: str, connection_id: str, member: dict[str, Any]
    ) -> MemberRecord:
        """SET member, rev + 1 if the connection is the member's and the data differs.

        Returns the member as stored after the change; raises `ConditionFailed` (with the item as
        it is, or None) when the connection is not the member's or the data is the same. `contains`
        on a string set tests membership of an element ("Condition and filter expressions,
        operators, and functions", Developer Guide: contains(path, operand)).
        """
        return self._update_member(
            room_key,
            member_id,
            "SET #m = :m, rev = rev + :one",
            "contains(#c, :conn) AND #m <> :m",
            {"#c": "connections", "#m": "member"},
            {":conn": {"S": connection_id}, ":m": {"S": dumps_member(member)}, ":one": {"N": "1"}},
        )

    def remove_connection(
        self, room_key: str, member_id: str, connection_id: str, reason: str, deadline: float
    ) -> MemberRecord | None:
        """Take a connection out of the member; returns the member as it was BEFORE (None: no member).

        The same write records the reason and puts the member under the sweeper's eye
        (`sweep`, `deadline`): if this was its last connection, the member is due at `deadline`
        even if the caller dies before its next request. A join removes both again; a member the
        sweeper finds with connections is simply taken off the index.
        """
        try:
            record = self._update_member(
                room_key,
                member_id,
                "DELETE #c :c SET leaveReason = :r, sweep = :s, deadline = :d",
                "attribute_exists(pk)",
                {"#c": "connections"},
                {
                    ":c": {"SS": [connection_id]},
                    ":r": {"S": reason},
                    ":s": {"S": sweep_shard(member_id)},
                    ":d": {"N": _number(deadline)},
                },
                return_values="ALL_OLD",
            )
        except ConditionFailed:
            return None
        return record

    def delete_member(self, room_key: str, member_id: str, due_by: float | None = None) -> bool:
        """Delete a member that has no connection left, and uncount it, in one transaction.

        False (nothing written) if the member is absent, has a connection again, or (with
        `due_by`, the sweeper) its deadline moved past `due_by`. `attribute_exists(pk)` matters:
        on an absent item `attribute_not_exists(connections)` holds, and the count would be
        decremented for a member deleted already.
        """
        condition = f"attribute_exists(pk) AND {_NO_CONNECTIONS}"
        values: dict[str, Any] = {":zero": {"N": "0"}}
        if due_by is not None:
            condition += " AND deadline <= :now"
            values[":now"] = {"N": _number(due_by)}
        return self._transact(
            [
                {
                    "Delete": {
                        "TableName": self._table,
                        "Key": {"pk": {"S": room_key}, "sk": {"S": member_sk(member_id)}},
                        "ConditionExpression": condition,
                        "ExpressionAttributeNames": {"#c": "connections"},
                        "ExpressionAttributeValues": values,
                    }
                },
                self._count_update(room_key, member_id, -1),
            ]
        )

    def clear_deadline(self, room_key: str, member_id: str) -> None:
        """Take a member that has connections off the sweeper's index (it is not leaving)."""
        with contextlib.suppress(ConditionFailed):  # no connections: it is leaving, keep its deadline
            self._update_member(
                room_key, member_id, "REMOVE sweep, deadline", "attribute_exists(#c)", {"#c": "connections"}, None
            )

    def members(self, room_key: str, limit: int, after_member_id: str | None) -> tuple[list[MemberRecord], bool]:
        """Up to `limit` members in memberId order after `after_member_id`, and whether more follow."""
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :member)",
            "ExpressionAttributeValues": {":pk": {"S": room_key}, ":member": {"S": MEMBER_PREFIX}},
            "ConsistentRead": True,
        }
        if after_member_id is not None:
            kwargs["ExclusiveStartKey"] = {"pk": {"S": room_key}, "sk": {"S": member_sk(after_member_id)}}
        items: list[MemberRecord] = []
        # One more than asked says whether more follow; a Query page also stops at 1 MB ("Query",
        # API reference), so a page of large members may take a few requests (bounded by `limit`).
        while True:
            kwargs["Limit"] = limit + 1 - len(items)
            response = self._call(self.client.query, **kwargs)
            items.extend(MemberRecord.from_item(item) for item in response.get("Items", []))
            if len(items) > limit:
                return items[:limit], True
            if "LastEvaluatedKey" not in response:
                return items, False
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def count(self, room_key: str) -> int:
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :count)",
            "ExpressionAttributeValues": {":pk": {"S": room_key}, ":count": {"S": COUNT_PREFIX}},
            "ConsistentRead": True,
        }
        return sum(int(item.get("n", {"N": "0"})["N"]) for item in self._query_all(kwargs))

    # --- the sweeper's index --------------------------------------------------------------

    def due(self, shard: int, now: float) -> Iterator[DueKey]:
        """Index entries of one sweep shard whose deadline is at or before `now` (eventually consistent)."""
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": BY_DEADLINE_INDEX,
            "KeyConditionExpression": "sweep = :s AND deadline <= :now",
            "ExpressionAttributeValues": {":s": {"S": f"sweep#{shard}"}, ":now": {"N": _number(now)}},
        }
        for item in self._query_all(kwargs):
            yield DueKey(item["pk"]["S"], item["sk"]["S"], float(item["deadline"]["N"]))

    # --- plumbing -------------------------------------------------------------------------

    def _count_update(self, room_key: str, member_id: str, delta: int) -> dict[str, Any]:
        return {
            "Update": {
                "TableName": self._table,
                "Key": {"pk": {"S": room_key}, "sk": {"S": f"{COUNT_PREFIX}{shard_of(member_id, COUNT_SHARDS)}"}},
                "UpdateExpression": "ADD n :delta",
                "ExpressionAttributeValues": {":delta": {"N": str(delta)}},
            }
        }

    def _update_member(
        self,
        room_key: str,
        member_id: str,
        update: str,
        condition: str,
        names: dict[str, str],
        values: dict[str, Any] | None,
        return_values: str = "ALL_NEW",
    ) -> MemberRecord:
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "Key": {"pk": {"S": room_key}, "sk": {"S": member_sk(member_id)}},
            "UpdateExpression": update,
            "ConditionExpression": condition,
            "ReturnValues": return_values,
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        used = {name: attr for name, attr in names.items() if name in update or name in condition}
        if used:
            kwargs["ExpressionAttributeNames"] = used
        if values:
            kwargs["ExpressionAttributeValues"] = values
        response = self._retrying(lambda: self._call(self.client.update_item, _conditional=True, **kwargs))
        return MemberRecord.from_item(response["Attributes"])

    def _transact(self, items: list[Any]) -> bool:
        """One TransactWriteItems, retried on conflicts; False when the condition of item 0 failed."""
        from botocore.exceptions import BotoCoreError, ClientError

        def attempt() -> bool:
            try:
                self.client.transact_write_items(TransactItems=items)
                return True
            except ClientError as exc:
                if _code(exc) != "TransactionCanceledException":
                    if _code(exc) == "TransactionConflictException":
                        raise _Conflict from exc
                    raise StoreUnavailable(f"DynamoDB {_code(exc)}: {exc}") from exc
                # CancellationReasons: one per item, in request order; "None" where the item was fine
                # ("TransactWriteItems", API reference; "Transaction conflict handling in DynamoDB").
                response: dict[str, Any] = dict(exc.response)
                reasons = [r.get("Code") for r in response.get("CancellationReasons") or []]
                if reasons and reasons[0] == "ConditionalCheckFailed":
                    return False
                if "TransactionConflict" in reasons:
                    raise _Conflict from exc
                raise StoreUnavailable(f"transaction cancelled: {reasons}") from exc
            except BotoCoreError as exc:
                raise StoreUnavailable(f"DynamoDB unreachable: {exc}") from exc

        return self._retrying(attempt)

    def _query_all(self, kwargs: dict[str, Any]) -> Iterator[dict[str, Any]]:
        while True:
            response = self._call(self.client.query, **kwargs)
            yield from response.get("Items", [])
            if "LastEvaluatedKey" not in response:
                return
            kwargs = {**kwargs, "ExclusiveStartKey": response["LastEvaluatedKey"]}

    @staticmethod
    def _retrying(operation: Callable[[], _T]) -> _T:
        """Run `operation`, retrying transaction conflicts with capped full jitter."""
        for attempt in range(MAX_ATTEMPTS):
            try:
                return operation()
            except _Conflict:
                delay = min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2**attempt)
                time.sleep(random.uniform(0, delay))  # noqa: S311 - backoff jitter, not cryptography
        raise RoomContended(f"presence: a transaction held the item through {MAX_ATTEMPTS} attempts; retry")

    @staticmethod
    def _call(operation: Any, *, _conditional: bool = False, **kwargs: Any) -> Any:
        """One request. A conflict with a transaction becomes `_Conflict` (retried by `_retrying`);
        a failed condition `ConditionFailed` when `_conditional`; the rest `StoreUnavailable`."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return operation(**kwargs)
        except ClientError as exc:
            code = _code(exc)
            if code == "TransactionConflictException":
                raise _Conflict from exc
            if _conditional and code == "ConditionalCheckFailedException":
                response: dict[str, Any] = dict(exc.response)
                raise ConditionFailed(response.get("Item")) from exc
            raise StoreUnavailable(f"DynamoDB {code}: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(f"DynamoDB unreachable: {exc}") from exc


def _membership(item: dict[str, Any]) -> MembershipRecord:
    return MembershipRecord(
        connection_id=item["pk"]["S"].removeprefix(CONN_PREFIX),
        room_key=item["sk"]["S"],
        member_id=item["memberId"]["S"],
        deadline=float(item["deadline"]["N"]),
    )


def dumps_member(value: Any) -> str:
    """Member data as stored and as measured: compact UTF-8 JSON, keys sorted so that the same
    object is the same text (the store compares texts to see whether the data changed)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False, sort_keys=True)
