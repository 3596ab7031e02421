"""The data access layer of the events table: the only code that talks to DynamoDB about events.

Each method is one DynamoDB request; the log algorithm lives in `channel.py`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import StoreUnavailable
from .models.items import (
    HEAD_SK,
    Allocation,
    AttributeMap,
    Head,
    IdempotencyRecord,
    Kind,
    Position,
    idempotency_item,
    idempotency_pk,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

_NOT_EXISTS = "attribute_not_exists(pk)"


class PositionTaken(Exception):
    """The position was already filled: by a reader's tombstone, or by our own retried put."""

    def __init__(self, existing: Position | None = None) -> None:
        super().__init__("position taken")
        self.existing = existing


class KeyTaken(Exception):
    """The idempotency key already maps to an event."""

    def __init__(self, record: IdempotencyRecord | None) -> None:
        super().__init__("idempotency key taken")
        self.record = record


class TransactionCancelled(Exception):
    """A TransactWriteItems was cancelled: nothing of it was written.

    `reasons` are DynamoDB's CancellationReasons, one per item in request order, each with a
    `Code` ("None" for an item that did not fail, "ConditionalCheckFailed" with the item as it
    is under ReturnValuesOnConditionCheckFailure, "TransactionConflict", "ThrottlingError" ...:
    TransactWriteItems, Amazon DynamoDB API Reference).
    """

    def __init__(self, reasons: list[dict[str, Any]]) -> None:
        super().__init__("transaction cancelled")
        self.reasons = reasons


class WriteConflict(Exception):
    """DynamoDB refused the write because a transaction was in progress on one of its items.

    Transient, and nothing was written: "TransactionConflict" in a cancelled transaction's
    reasons, or TransactionConflictException for a single-item write that met one
    (Amazon DynamoDB Developer Guide, "Transaction conflict handling in DynamoDB").
    botocore does not retry either, so the caller re-reads and decides.
    """


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


class EventStore:
    def __init__(self, client: DynamoDBClient, table_name: str) -> None:
        self._client = client
        self._table = table_name

    # --- writes ---------------------------------------------------------------------------

    def allocate(self, chan_key: str, now_ms: int, token: str) -> Allocation:
        """Take the next position with one atomic ADD: no retries, no contention collapse.

        `token` makes the request idempotent: if boto3 retries an ADD whose response was
        lost after it committed, the condition fails and the position the first attempt took
        comes back (ALL_OLD) instead of a second position that would become a hole.
        The head also remembers when the previous position was taken: every right-hand side
        of an update expression reads the item as it was before the update (Amazon DynamoDB
        Developer Guide, "Using update expressions in DynamoDB").
        """
        return _allocation(
            self._add_to_head(
                chan_key,
                1,
                "SET prevAllocatedAt = if_not_exists(allocatedAt, :zero), allocatedAt = :now, ",
                now_ms,
                token,
            )
        )

    def _add_to_head(self, chan_key: str, count: int, assignments: str, now_ms: int, token: str) -> dict[str, Any]:
        """The head item after `ADD head count` with `assignments` (then the bookkeeping every
        allocation sets), made idempotent by `token`: a retry whose first attempt committed gets
        that attempt's item (ALL_OLD on the failed condition) instead of more positions."""
        try:
            response = self._call(
                self._client.update_item,
                TableName=self._table,
                Key={"pk": {"S": chan_key}, "sk": {"N": str(HEAD_SK)}},
                UpdateExpression=(
                    f"ADD head :count {assignments}"
                    "createdAt = if_not_exists(createdAt, :now), kind = :kind, lastAlloc = :token"
                ),
                ConditionExpression="attribute_not_exists(lastAlloc) OR lastAlloc <> :token",
                ExpressionAttributeValues={
                    ":count": {"N": str(count)},
                    ":zero": {"N": "0"},
                    ":now": {"N": str(now_ms)},
                    ":kind": {"S": Kind.HEAD.value},
                    ":token": {"S": token},
                },
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
                _expected=("ConditionalCheckFailedException",),
            )
        except _ExpectedFailure as exc:
            item: dict[str, Any] = exc.response["Item"]
            return item
        attributes: dict[str, Any] = response["Attributes"]
        return attributes

    def put_position(self, item: AttributeMap) -> None:
        """Fill a position (event or tombstone) unless something is already there."""
        try:
            self._call(
                self._client.put_item,
                TableName=self._table,
                Item=item,
                ConditionExpression=_NOT_EXISTS,
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
                _expected=("ConditionalCheckFailedException", "TransactionConflictException"),
            )
        except _ExpectedFailure as exc:
            if exc.code == "TransactionConflictException":
                raise WriteConflict("a transaction is writing this position") from exc
            old = exc.response.get("Item")
            raise PositionTaken(Position.from_item(old) if old else None) from exc

    def put_keyed_event(
        self, event_item: AttributeMap, chan_key: str, key: str, fingerprint: str, key_expires_at: int, now_s: int
    ) -> None:
        """Event and idempotency record in one transaction, each only if absent.

        An expired record (TTL deletion runs days late) counts as absent.
        """
        try:
            self._call(
                self._client.transact_write_items,
                TransactItems=self._keyed_puts(event_item, chan_key, key, fingerprint, key_expires_at, now_s),
                _expected=("TransactionCanceledException",),
            )
        except _ExpectedFailure as exc:
            reasons = exc.response.get("CancellationReasons") or [{}, {}]
            key_reason = reasons[1] if len(reasons) > 1 else {}
            if key_reason.get("Code") == "ConditionalCheckFailed":
                old = key_reason.get("Item")
                raise KeyTaken(IdempotencyRecord.from_item(old) if old else None) from exc
            if reasons[0].get("Code") == "ConditionalCheckFailed":
                old = reasons[0].get("Item")
                raise PositionTaken(Position.from_item(old) if old else None) from exc
            if any(reason.get("Code") == "TransactionConflict" for reason in reasons):
                raise WriteConflict("another transaction holds the idempotency key or the position") from exc
            raise StoreUnavailable(f"transaction cancelled: {reasons}") from exc

    def _keyed_puts(
        self, event_item: AttributeMap, chan_key: str, key: str, fingerprint: str, key_expires_at: int, now_s: int
    ) -> list[dict[str, Any]]:
        """The two conditional Puts of a keyed event: its position, and its idempotency record."""
        record = idempotency_item(chan_key, key, fingerprint, event_item["event"]["S"], key_expires_at)
        return [
            {
                "Put": {
                    "TableName": self._table,
                    "Item": event_item,
                    "ConditionExpression": _NOT_EXISTS,
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            },
            {
                "Put": {
                    "TableName": self._table,
                    "Item": record,
                    "ConditionExpression": f"{_NOT_EXISTS} OR #ttl <= :now",
                    "ExpressionAttributeNames": {"#ttl": "ttl"},
                    "ExpressionAttributeValues": {":now": {"N": str(now_s)}},
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            },
        ]

    # --- batch writes (batch.py holds the algorithm) ----------------------------------------

    def allocate_many(self, chan_key: str, count: int, now_ms: int, token: str) -> list[Allocation]:
        """Take `count` consecutive positions with one atomic ADD (the batch owns head-count+1..head).

        All of them are allocated at `now_ms`, so the head's prevAllocatedAt (when head - 1 was
        allocated) is `now_ms` too; the first one's predecessor was allocated when the previous
        head was, which the head keeps in `firstPrevAllocatedAt` (read from the item before the
        update, as `allocate` reads it). The token makes a retried ADD return the positions its
        first attempt took, as `allocate`'s does: the item as it is (ALL_OLD on the failed
        condition) is then the first attempt's ALL_NEW.
        """
        if count == 1:
            return [self.allocate(chan_key, now_ms, token)]
        item = self._add_to_head(
            chan_key,
            count,
            "SET firstPrevAllocatedAt = if_not_exists(allocatedAt, :zero), prevAllocatedAt = :now, "
            "allocatedAt = :now, ",
            now_ms,
            token,
        )
        head, at = int(item["head"]["N"]), int(item["allocatedAt"]["N"])
        first_prev = int(item.get("firstPrevAllocatedAt", {"N": "0"})["N"])
        return [
            Allocation(seq=seq, allocated_at_ms=at, prev_allocated_at_ms=first_prev if n == 0 else at)
            for n, seq in enumerate(range(head - count + 1, head + 1))
        ]

    def idempotency_records(self, chan_key: str, keys: list[str]) -> tuple[dict[str, IdempotencyRecord], list[str]]:
        """One consistent BatchGetItem of up to 100 keys' records: (found by key, keys left unprocessed).

        "BatchGetItem" (Amazon DynamoDB API Reference): at most 100 items a request, ConsistentRead
        per table, and keys it did not get to come back in UnprocessedKeys, to be asked again.
        """
        by_pk = {idempotency_pk(chan_key, key): key for key in keys}
        response = self._call(
            self._client.batch_get_item,
            RequestItems={
                self._table: {
                    "Keys": [{"pk": {"S": pk}, "sk": {"N": str(HEAD_SK)}} for pk in by_pk],
                    "ConsistentRead": True,
                }
            },
        )
        found = {
            by_pk[item["pk"]["S"]]: IdempotencyRecord.from_item(item)
            for item in response.get("Responses", {}).get(self._table, [])
            if item["pk"]["S"] in by_pk
        }
        left = response.get("UnprocessedKeys", {}).get(self._table, {}).get("Keys", [])
        return found, [by_pk[key["pk"]["S"]] for key in left if key["pk"]["S"] in by_pk]

    def put_positions(self, items: list[AttributeMap]) -> list[AttributeMap]:
        """Write up to 25 positions with one BatchWriteItem; returns the items it did not write.

        BatchWriteItem takes no condition (a put replaces what is there), so it only ever writes
        positions this writer owns and nobody else can fill before the writer timeout; the
        writer stops retrying well inside it and tombstones the rest conditionally. Items
        DynamoDB did not get to (throttled, or an item held by a transaction) come back in
        UnprocessedItems and must be retried ("BatchWriteItem", Amazon DynamoDB API Reference).
        """
        response = self._call(
            self._client.batch_write_item,
            RequestItems={self._table: [{"PutRequest": {"Item": item}} for item in items]},
        )
        left = response.get("UnprocessedItems", {}).get(self._table, [])
        return [request["PutRequest"]["Item"] for request in left if "PutRequest" in request]

    def put_keyed_events(self, entries: list[tuple[AttributeMap, str, str, int]], chan_key: str, now_s: int) -> None:
        """Up to 50 keyed events, each its position and its record (100 items), in one TransactWriteItems.

        `entries` are (event item, idempotency key, fingerprint, key expiry). Every Put is
        conditional as in `put_keyed_event`. A cancelled transaction writes nothing and raises
        TransactionCancelled with one reason per item: 2n for the event, 2n + 1 for its record.
        """
        transact: list[dict[str, Any]] = []
        for event_item, key, fingerprint, expires_at in entries:
            transact += self._keyed_puts(event_item, chan_key, key, fingerprint, expires_at, now_s)
        try:
            self._call(
                self._client.transact_write_items,
                TransactItems=transact,
                _expected=("TransactionCanceledException",),
            )
        except _ExpectedFailure as exc:
            reasons = list(exc.response.get("CancellationReasons") or [])
            raise TransactionCancelled(reasons + [{}] * (len(transact) - len(reasons))) from exc

    # --- reads ----------------------------------------------------------------------------

    def head(self, chan_key: str) -> Head:
        response = self._call(
            self._client.get_item,
            TableName=self._table,
            Key={"pk": {"S": chan_key}, "sk": {"N": str(HEAD_SK)}},
            ConsistentRead=True,
        )
        return Head.from_item(response.get("Item"))

    def idempotency_record(self, chan_key: str, key: str) -> IdempotencyRecord | None:
        response = self._call(
            self._client.get_item,
            TableName=self._table,
            Key={"pk": {"S": idempotency_pk(chan_key, key)}, "sk": {"N": str(HEAD_SK)}},
            ConsistentRead=True,
        )
        item = response.get("Item")
        return IdempotencyRecord.from_item(item) if item else None

    def positions(self, chan_key: str, first: int, last: int) -> dict[int, Position]:
        """Every stored position in [first, last], consistent, keyed by seq."""
        found: dict[int, Position] = {}
        if last < first:
            return found
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk AND sk BETWEEN :first AND :last",
            "ExpressionAttributeValues": {
                ":pk": {"S": chan_key},
                ":first": {"N": str(first)},
                ":last": {"N": str(last)},
            },
            "ConsistentRead": True,
        }
        while True:
            response = self._call(self._client.query, **kwargs)
            for item in response.get("Items", []):
                position = Position.from_item(item)
                found[position.seq] = position
            if "LastEvaluatedKey" not in response:
                return found
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def next_position(self, chan_key: str, after: int) -> Position | None:
        """The first stored position above `after` (evidence of when a hole was allocated)."""
        response = self._call(
            self._client.query,
            TableName=self._table,
            KeyConditionExpression="pk = :pk AND sk > :after",
            ExpressionAttributeValues={":pk": {"S": chan_key}, ":after": {"N": str(after)}},
            ConsistentRead=True,
            Limit=1,
        )
        items = response.get("Items", [])
        return Position.from_item(items[0]) if items else None

    def previous_position(self, chan_key: str, before: int) -> Position | None:
        """The last stored position below `before` (evidence of the earliest a hole was allocated)."""
        response = self._call(
            self._client.query,
            TableName=self._table,
            KeyConditionExpression="pk = :pk AND sk BETWEEN :first AND :last",
            ExpressionAttributeValues={
                ":pk": {"S": chan_key},
                ":first": {"N": str(HEAD_SK + 1)},
                ":last": {"N": str(before - 1)},
            },
            ConsistentRead=True,
            ScanIndexForward=False,
            Limit=1,
        )
        items = response.get("Items", [])
        return Position.from_item(items[0]) if items else None

    def position(self, chan_key: str, seq: int) -> Position | None:
        response = self._call(
            self._client.get_item,
            TableName=self._table,
            Key={"pk": {"S": chan_key}, "sk": {"N": str(seq)}},
            ConsistentRead=True,
        )
        item = response.get("Item")
        return Position.from_item(item) if item else None

    # --- plumbing -------------------------------------------------------------------------

    @staticmethod
    def _call(operation: Any, *, _expected: tuple[str, ...] = (), **kwargs: Any) -> Any:
        """One request; expected conditional failures pass through, the rest become StoreUnavailable."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return operation(**kwargs)
        except ClientError as exc:
            if _error_code(exc) in _expected:
                raise _ExpectedFailure(dict(exc.response)) from exc
            raise StoreUnavailable(f"DynamoDB {_error_code(exc)}: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(f"DynamoDB unreachable: {exc}") from exc


class _ExpectedFailure(Exception):
    def __init__(self, response: dict[str, Any]) -> None:
        self.code = str(response.get("Error", {}).get("Code", ""))
        super().__init__(self.code)
        self.response = response


def _allocation(item: AttributeMap) -> Allocation:
    return Allocation(
        seq=int(item["head"]["N"]),
        allocated_at_ms=int(item["allocatedAt"]["N"]),
        prev_allocated_at_ms=int(item.get("prevAllocatedAt", {"N": "0"})["N"]),
    )
