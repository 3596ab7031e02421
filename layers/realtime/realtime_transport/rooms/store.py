"""The data access layer of rooms: the only room code that talks to DynamoDB.

A room is one item of the events table (no new table, no new permission):

| attribute    | type | what it is                                                             |
| ------------ | ---- | ---------------------------------------------------------------------- |
| `pk`         | S    | `{namespace}#room#{roomId}` (a channel key is `{namespace}#{channel}`, |
|              |      | and channel names have no `#`, so the two can never meet)              |
| `sk`         | N    | 0                                                                      |
| `kind`       | S    | `room` (the fan-out stream filter passes only `event` INSERTs)         |
| `version`    | N    | the room's version: every committed change of state or metadata is +1  |
| `doc`        | S    | the state document, JSON                                               |
| `metadata`   | S    | the metadata, JSON                                                     |
| `changes`    | S    | the change log of `conflicts.ChangeLog`, JSON                          |
| `lastChange` | S    | JSON of the change that made this version (what the outbox publishes)  |
| `updatedAt`  | N    | epoch milliseconds of the last change                                  |

No `ttl`: a room never expires. A version-0 room is a room nobody has changed: no item.

Every change is one conditional PutItem on the version it was computed from
(`version = :expected`, or `attribute_not_exists(pk)` for version 0), so two writers racing
from the same version cannot both commit: the loser gets `VersionMoved` with the item that won
(ReturnValuesOnConditionCheckFailure, so no second read) and re-evaluates. `lastChange` carries
a random `token`: when botocore retries a put whose response was lost after it committed, the
retry's condition fails on our own write, and the token tells us it was ours.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import StoreUnavailable
from .conflicts import ChangeLog

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

KIND = "room"
ROOM_SK = 0


def room_key(namespace: str, room_id: str) -> str:
    return f"{namespace}#room#{room_id}"


def dumps(value: Any) -> str:
    """Compact JSON, as stored and as measured against the limits."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True)
class RoomRecord:
    """A room as stored (or as it is before anyone changed it: version 0)."""

    version: int = 0
    doc: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    changes: ChangeLog = field(default_factory=ChangeLog)
    last_change: dict[str, Any] | None = None
    updated_at_ms: int | None = None

    @classmethod
    def from_item(cls, item: dict[str, Any] | None) -> RoomRecord:
        if not item:
            return cls()
        return cls(
            version=int(item["version"]["N"]),
            doc=json.loads(item["doc"]["S"]),
            metadata=json.loads(item["metadata"]["S"]),
            changes=ChangeLog.from_json(item.get("changes", {}).get("S")),
            last_change=json.loads(item["lastChange"]["S"]) if "lastChange" in item else None,
            updated_at_ms=int(item["updatedAt"]["N"]) if "updatedAt" in item else None,
        )


class VersionMoved(Exception):
    """The room is no longer at the version the change was computed from; nothing was written."""

    def __init__(self, current: RoomRecord | None) -> None:
        super().__init__("room version moved")
        self.current = current  # None when DynamoDB did not say (a transaction held the item)


class RoomStore:
    def __init__(self, client: DynamoDBClient, table_name: str) -> None:
        self._client = client
        self._table = table_name

    def get(self, key: str) -> RoomRecord:
        response = self._call(
            self._client.get_item,
            TableName=self._table,
            Key={"pk": {"S": key}, "sk": {"N": str(ROOM_SK)}},
            ConsistentRead=True,
        )
        return RoomRecord.from_item(response.get("Item"))

    def commit(self, key: str, expected_version: int, record: RoomRecord, now_ms: int) -> None:
        """Write `record` (whose `last_change` must carry a unique `token`) iff the room is at `expected_version`."""
        assert record.last_change is not None and "token" in record.last_change  # noqa: S101 (a programming error)
        item = {
            "pk": {"S": key},
            "sk": {"N": str(ROOM_SK)},
            "kind": {"S": KIND},
            "version": {"N": str(record.version)},
            "doc": {"S": dumps(record.doc)},
            "metadata": {"S": dumps(record.metadata)},
            "changes": {"S": record.changes.to_json()},
            "lastChange": {"S": dumps(record.last_change)},
            "updatedAt": {"N": str(now_ms)},
        }
        condition: dict[str, Any]
        if expected_version == 0:
            condition = {"ConditionExpression": "attribute_not_exists(pk)"}
        else:
            condition = {
                "ConditionExpression": "version = :expected",
                "ExpressionAttributeValues": {":expected": {"N": str(expected_version)}},
            }
        from botocore.exceptions import ClientError

        try:
            self._call(
                self._client.put_item,
                TableName=self._table,
                Item=item,
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
                _raise=True,
                **condition,
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "TransactionConflictException":
                # A transaction is writing the item (Developer Guide, "Transaction conflict
                # handling"): nothing was written; re-read and decide, as store.WriteConflict.
                raise VersionMoved(None) from exc
            if code != "ConditionalCheckFailedException":
                raise StoreUnavailable(f"DynamoDB {code}: {exc}") from exc
            old: Any = dict(exc.response).get("Item")
            current = RoomRecord.from_item(old) if old else RoomRecord()
            if current.last_change and current.last_change.get("token") == record.last_change["token"]:
                return  # our own write, committed before its response was lost
            raise VersionMoved(current) from exc

    @staticmethod
    def _call(operation: Any, *, _raise: bool = False, **kwargs: Any) -> Any:
        """One request; store failures become StoreUnavailable (a 503), conditional ones pass when `_raise`."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return operation(**kwargs)
        except ClientError as exc:
            if _raise:
                raise
            raise StoreUnavailable(f"DynamoDB {exc.response.get('Error', {}).get('Code', '')}: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(f"DynamoDB unreachable: {exc}") from exc
