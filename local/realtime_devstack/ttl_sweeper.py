"""DynamoDB's Time to Live, which moto does not run: expired items are deleted in the background.

Every ``interval`` seconds (default 30) each table with TTL enabled (DescribeTimeToLive) is
scanned for items whose TTL attribute is a Number of epoch seconds in the past, and those are
deleted, each on the condition that its TTL still holds the value seen (an item refreshed
meanwhile stays), as DynamoDB's own sweeper does. Like DynamoDB, values more than five years in
the past are left alone, and an attribute that is not a Number never expires anything.

DynamoDB deletes expired items up to a few days late, so readers filter on the TTL attribute
themselves; the sweeper only keeps local storage bounded and lets the stream see the REMOVEs.
(On AWS those REMOVE records carry ``userIdentity`` = the DynamoDB service; moto's do not.)
With ``faithful``'s ``ttl_max_delay_s`` the sweeper is late too: an item goes only once its TTL
plus its own delay in ``[0, ttl_max_delay_s]`` (fixed by the seed, the table and the key) has
passed. An item held by an ongoing transaction is left for the next sweep.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from . import faithful

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

log = logging.getLogger("realtime_devstack.ttl")

DEFAULT_INTERVAL_SECONDS = 30.0
_SKIPPED = ("ConditionalCheckFailedException", "TransactionConflictException")
_FIVE_YEARS_SECONDS = 5 * 365 * 24 * 3600


class TtlSweeper:
    def __init__(self, client: DynamoDBClient, *, interval: float = DEFAULT_INTERVAL_SECONDS) -> None:
        self.client = client
        self.interval = interval
        self.deleted = 0
        self._postponed: set[tuple[str, str, str]] = set()  # expired, left for later (counted once)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def ttl_tables(self) -> dict[str, str]:
        """Table name -> TTL attribute, for every table whose TTL is enabled."""
        tables: dict[str, str] = {}
        for page in self.client.get_paginator("list_tables").paginate():
            for name in page.get("TableNames", []):
                description = self.client.describe_time_to_live(TableName=name).get("TimeToLiveDescription", {})
                if description.get("TimeToLiveStatus") == "ENABLED" and description.get("AttributeName"):
                    tables[name] = description["AttributeName"]
        return tables

    def sweep_once(self, now: float | None = None) -> int:
        """Delete every expired item now; returns how many went."""
        now = time.time() if now is None else now
        deleted = 0
        for table, attribute in self.ttl_tables().items():
            deleted += self._sweep_table(table, attribute, int(now))
        self.deleted += deleted
        return deleted

    def _sweep_table(self, table: str, attribute: str, now: int) -> int:
        from botocore.exceptions import ClientError

        key_names = [k["AttributeName"] for k in self.client.describe_table(TableName=table)["Table"]["KeySchema"]]
        names = {f"#k{i}": name for i, name in enumerate(key_names)} | {"#ttl": attribute}
        # Filtered here rather than with a FilterExpression: moto's BETWEEN raises on an item whose
        # TTL attribute is not a Number, where DynamoDB would just not match it.
        kwargs: dict[str, Any] = {
            "TableName": table,
            "ProjectionExpression": ", ".join([*names]),
            "ExpressionAttributeNames": names,
            "ConsistentRead": True,
        }
        deleted = 0
        postponed: set[tuple[str, str, str]] = set()
        while True:
            page = self.client.scan(**kwargs)
            for item in page.get("Items", []):
                if not _expired(item.get(attribute), now):
                    continue
                key = {name: item[name] for name in key_names}
                # "DynamoDB typically deletes expired items within two days of expiration"
                # (UpdateTimeToLive, DynamoDB API reference): each item is deleted this much late.
                delay = faithful.ttl_delay_seconds(table, key)
                if delay and float(item[attribute]["N"]) + delay >= now:
                    seen = (table, json.dumps(key, sort_keys=True, default=str), item[attribute]["N"])
                    postponed.add(seen)
                    if seen not in self._postponed:
                        faithful.record("ttl_delayed")
                    continue
                try:
                    self.client.delete_item(
                        TableName=table,
                        Key=key,
                        ConditionExpression="#ttl = :seen",
                        ExpressionAttributeNames={"#ttl": attribute},
                        ExpressionAttributeValues={":seen": item[attribute]},
                    )
                    deleted += 1
                except ClientError as exc:
                    # Refreshed meanwhile (the condition), or held by an ongoing transaction: not now.
                    if exc.response.get("Error", {}).get("Code") not in _SKIPPED:
                        raise
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        self._postponed = {seen for seen in self._postponed if seen[0] != table} | postponed
        if deleted:
            log.info("TTL: deleted %d expired item(s) from %s", deleted, table)
        return deleted

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ttl-sweeper", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sweep_once()
            except Exception:
                if self._stop.is_set():
                    return
                log.exception("TTL sweep failed")


def _expired(value: Any, now: int) -> bool:
    """A Number of epoch seconds in the past, but not more than five years ago."""
    if not isinstance(value, dict) or "N" not in value:
        return False
    try:
        expires = float(value["N"])
    except ValueError:
        return False
    return now - _FIVE_YEARS_SECONDS <= expires < now
