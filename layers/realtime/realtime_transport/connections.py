"""The data access layer of the connections table: WebSocket connections and their subscriptions.

| item            | pk             | sk              | GSI `by-channel` (channel, connectionId; INCLUDE tokenExp)     |
| --------------- | -------------- | --------------- | -------------------------------------------------------------- |
| connection      | `conn#{id}`    | `meta`          | -                                                              |
| subscription    | `conn#{id}`    | `sub#{chanKey}` | channel = `{chanKey}#{bucket}`, connectionId = id, tokenExp    |
| bucket version  | `chan#{key}#{bucket}` | `version` | - (`v`: a counter, `n`: ~subscribers, `changedAt`: epoch ms)   |
| legacy version  | `chan#{key}`   | `version`       | - (`v`, `changedAt`: see "Versions" below)                      |

A subscription carries the expiry (`tokenExp`, epoch seconds) of the token it was made under,
projected into `by-channel`, so the fan-out sees from the index alone which subscribers' tokens
have run out. The index is a hint (it lags, and an `auth` renewal updates the connection item
before its subscriptions): the connection item's `tokenExp` is the truth, read consistently
before anything is closed (`Fanout`). Subscriptions written before the attribute existed carry
none: the fan-out checks those against the connection item too.

Index partitions: a channel's subscriptions are spread over `SUBSCRIBER_BUCKETS` index partition
key values (`{chanKey}#{bucket}`, bucket = a stable hash of the connection id), so one large
channel's lookups never concentrate on one partition ("Best practices for designing and using
partition keys effectively"; a partition, of a GSI too, serves at most 3,000 read units/s).
Readers query every bucket (`subscriber_entries`, one paged Query per bucket, side by side),
plus the bare `{chanKey}` that subscriptions written before the buckets carry (at most 3 h: their
`ttl`; `LEGACY_UNBUCKETED` can go once every deployment has run that long with buckets).

Versions: every subscribe, unsubscribe and `delete_connection` bumps the version item of the
subscription's bucket (`chan#{key}#{bucket}`) after its subscription write, with ONE UpdateItem
that also keeps the bucket's approximate subscriber count (`ADD v :1, n :delta`), so one channel's
churn spreads over 16 items on 16 partitions (a partition takes at most 1,000 write units/s: "Best
practices for designing and using partition keys effectively") and a warm fan-out re-reads only
the buckets whose version changed (`shards.SubscriberCache`). `n` is for planning only (how the
fan-out splits a read), never for correctness: a TTL-deleted subscription is not seen, and
subscriptions made before the counts existed are not counted. The writes return the item they
replaced (`ReturnValues: ALL_OLD`), so a repeated subscribe counts 0, an unsubscribe of nothing
bumps nothing. The bare `chan#{key}` item, the only version before the buckets, is still read
(`channel_versions`, one BatchGetItem of all 17) and is part of every bucket's version: it is
bumped when a subscription under the bare index key (`LEGACY_UNBUCKETED`) is removed or replaced,
and it is what writers of the previous release bump. Every version item's `ttl` follows the
subscriptions' (none outlives it); should one expire and come back at 1, its `changedAt`
differs, so a cache keyed by both never mistakes it for the old one.

The same partition also holds the connection's room memberships (`room#{ns}#{roomId}`) and the
table holds room members and member counts: those are `rooms/presence_store.py`'s. Here,
`subscriptions()` reads only `sub#` items, and `delete_connection()` deletes every item of the
connection's partition (memberships included: presence's `connection_gone` runs first).

Everything carries `ttl` past API Gateway's two-hour connection limit, since
`$disconnect` is not guaranteed.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from .errors import StoreUnavailable

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

BY_CHANNEL_INDEX = "by-channel"
CONNECTION_TTL_SECONDS = 3 * 3600  # API Gateway closes every connection after 2 hours
_META = "meta"
_SUB = "sub#"
# Index partition key values per channel. Not to be changed casually: readers must read every
# bucket a subscription can be in, so changing it means writing subscriptions under both schemes
# (and reading both) for the 3 h a subscription lives. 16 partitions of 3,000 read units/s each
# read a channel of 100,000 subscribers (with tokenExp, ~100 bytes an entry: ~2,500 entries per
# 1 MB page of eventually consistent reads at 0.5 unit per 4 KB) many times a second.
SUBSCRIBER_BUCKETS = 16
# Subscriptions written before the buckets sit under the bare channel key (see the docstring).
LEGACY_UNBUCKETED = True
_VERSION = "version"


def subscriber_bucket(connection_id: str) -> int:
    """The index bucket of a connection's subscriptions: stable across processes (not `hash()`)."""
    return zlib.crc32(connection_id.encode()) % SUBSCRIBER_BUCKETS


def index_key(channel_key: str, bucket: int) -> str:
    """The `by-channel` partition key value of a bucket (a negative one: the bare legacy key)."""
    return channel_key if bucket < 0 else f"{channel_key}#{bucket}"


def bucket_keys(channel_key: str) -> list[str]:
    """Every `by-channel` partition key value under which the channel's subscriptions can be."""
    keys = [f"{channel_key}#{bucket}" for bucket in range(SUBSCRIBER_BUCKETS)]
    return [*keys, channel_key] if LEGACY_UNBUCKETED else keys


def _pk(connection_id: str) -> str:
    return f"conn#{connection_id}"


def _version_key(channel_key: str, bucket: int | None) -> dict[str, Any]:
    pk = f"chan#{channel_key}" if bucket is None else f"chan#{channel_key}#{bucket}"
    return {"pk": {"S": pk}, "sk": {"S": _VERSION}}


def _bucketed(old: dict[str, Any] | None, channel_key: str) -> bool:
    """The replaced subscription item was under a bucket (counted), not the bare key (or none)."""
    return old is not None and old.get("channel", {}).get("S", channel_key) != channel_key


@dataclass(frozen=True)
class Connection:
    connection_id: str
    sub: str
    channels: tuple[str, ...]
    token_expires_at: int
    connected_at_ms: int
    # The token's `write` claim: patterns of the room channels whose state and metadata this
    # connection may change.
    write: tuple[str, ...] = ()


class Subscriber(NamedTuple):
    """One entry of the `by-channel` index: who, and (a hint) when their token expires."""

    connection_id: str
    token_exp: int | None  # None: a subscription written before subscriptions carried it


class ChannelVersion(NamedTuple):
    """One version item: (0, 0, 0) when nobody (un)subscribed there since its ttl."""

    version: int
    changed_at_ms: int
    subscribers: int = 0  # the bucket's approximate subscriber count (`n`; never below 0 here)


class ChannelVersions(NamedTuple):
    """A channel's bucket versions (index = bucket) and the legacy bare-key one."""

    buckets: tuple[ChannelVersion, ...]
    legacy: ChannelVersion

    @property
    def subscribers(self) -> int:
        """The channel's approximate subscriber count (planning only)."""
        return sum(bucket.subscribers for bucket in self.buckets)


# BatchGetItem's retries of UnprocessedKeys ("BatchGetItem": a partial result under throttling
# is not an error; retry what it hands back, backing off).
_BATCH_GET_ATTEMPTS = 5


class ConnectionStore:
    def __init__(
        self, client: DynamoDBClient, table_name: str, *, clock_ms: Callable[[], int] | None = None, readers: int = 8
    ) -> None:
        self._client = client
        self._table = table_name
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))
        self._readers = readers
        self._executor: ThreadPoolExecutor | None = None

    def _expiry(self) -> str:
        return str(int(time.time()) + CONNECTION_TTL_SECONDS)

    def put_connection(self, connection: Connection) -> None:
        self._call(
            self._client.put_item,
            TableName=self._table,
            Item={
                "pk": {"S": _pk(connection.connection_id)},
                "sk": {"S": _META},
                "sub": {"S": connection.sub},
                "patterns": {"L": [{"S": p} for p in connection.channels]},
                "tokenExp": {"N": str(connection.token_expires_at)},
                "connectedAt": {"N": str(connection.connected_at_ms)},
                "write": {"L": [{"S": p} for p in connection.write]},
                "ttl": {"N": self._expiry()},
            },
        )

    def connection(self, connection_id: str) -> Connection | None:
        item = self._call(
            self._client.get_item,
            TableName=self._table,
            Key={"pk": {"S": _pk(connection_id)}, "sk": {"S": _META}},
            ConsistentRead=True,
        ).get("Item")
        if not item or int(item["ttl"]["N"]) <= time.time():
            return None
        return Connection(
            connection_id=connection_id,
            sub=item["sub"]["S"],
            channels=tuple(p["S"] for p in item["patterns"]["L"]),
            token_expires_at=int(item["tokenExp"]["N"]),
            connected_at_ms=int(item["connectedAt"]["N"]),
            # Items written before the claim existed have no `write`: they may write nothing.
            write=tuple(p["S"] for p in item.get("write", {}).get("L", [])),
        )

    def subscribe(self, connection_id: str, channel_key: str, *, token_exp: int | None = None) -> None:
        """Subscribe; `token_exp` is the expiry of the token the subscription is made under (the
        fan-out's hint: pass it, a subscription without one costs the fan-out a read per batch)."""
        item: dict[str, Any] = {
            "pk": {"S": _pk(connection_id)},
            "sk": {"S": f"sub#{channel_key}"},
            "channel": {"S": f"{channel_key}#{subscriber_bucket(connection_id)}"},
            "connectionId": {"S": connection_id},
            "ttl": {"N": self._expiry()},
        }
        if token_exp is not None:
            item["tokenExp"] = {"N": str(token_exp)}
        old = self._call(self._client.put_item, TableName=self._table, Item=item, ReturnValues="ALL_OLD").get(
            "Attributes"
        )
        # After the write: a fan-out that sees the bump re-reads. A repeated subscribe counts 0.
        self._bump_replaced(channel_key, old)
        self.bump_version(channel_key, subscriber_bucket(connection_id), 0 if _bucketed(old, channel_key) else 1)

    def renew(self, connection_id: str, sub: str, channels: tuple[str, ...], write: tuple[str, ...], exp: int) -> bool:
        """A new token on an open connection: its rights and expiry. False when the connection item
        is gone or belongs to another `sub` (nothing is written then).

        The connection item first, its subscriptions' `tokenExp` after (`retime_subscriptions`):
        until they are, the fan-out finds a stale hint and confirms against this item."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.update_item(
                TableName=self._table,
                Key={"pk": {"S": _pk(connection_id)}, "sk": {"S": _META}},
                UpdateExpression="SET patterns = :p, #w = :w, tokenExp = :e",
                # Never create a connection item (UpdateItem would), never take over another subject's.
                ConditionExpression="attribute_exists(pk) AND #s = :s",
                ExpressionAttributeNames={"#w": "write", "#s": "sub"},
                ExpressionAttributeValues={
                    ":p": {"L": [{"S": p} for p in channels]},
                    ":w": {"L": [{"S": p} for p in write]},
                    ":e": {"N": str(exp)},
                    ":s": {"S": sub},
                },
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise StoreUnavailable(f"connections table: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreUnavailable(f"connections table: {exc}") from exc
        return True

    def retime_subscriptions(self, connection_id: str, channel_keys: list[str], exp: int) -> int:
        """Set `tokenExp` on each of these subscriptions that still exists; returns how many."""
        from botocore.exceptions import BotoCoreError, ClientError

        updated = 0
        for key in channel_keys:
            try:
                self._client.update_item(
                    TableName=self._table,
                    Key={"pk": {"S": _pk(connection_id)}, "sk": {"S": f"{_SUB}{key}"}},
                    UpdateExpression="SET tokenExp = :e",
                    # An unsubscribe that raced this must not come back as a bare item.
                    ConditionExpression="attribute_exists(pk)",
                    ExpressionAttributeValues={":e": {"N": str(exp)}},
                )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                    continue
                raise StoreUnavailable(f"connections table: {exc}") from exc
            except BotoCoreError as exc:
                raise StoreUnavailable(f"connections table: {exc}") from exc
            updated += 1
        return updated

    def unsubscribe(self, connection_id: str, channel_key: str) -> None:
        old = self._call(
            self._client.delete_item,
            TableName=self._table,
            Key={"pk": {"S": _pk(connection_id)}, "sk": {"S": f"sub#{channel_key}"}},
            ReturnValues="ALL_OLD",
        ).get("Attributes")
        if old is None:
            return  # nothing was subscribed: nothing changed
        self._bump_replaced(channel_key, old)
        if _bucketed(old, channel_key):
            self.bump_version(channel_key, subscriber_bucket(connection_id), -1)

    def _bump_replaced(self, channel_key: str, old: dict[str, Any] | None) -> None:
        """A subscription under the bare index key was removed or replaced: the legacy version moves."""
        if old is not None and old.get("channel", {}).get("S") == channel_key:
            self.bump_version(channel_key, None, 0)

    def bump_version(self, channel_key: str, bucket: int | None, delta: int) -> None:
        """A bucket's subscribers changed (None: the bare key's): `ADD v 1, n delta`, `changedAt` now."""
        self._call(
            self._client.update_item,
            TableName=self._table,
            Key=_version_key(channel_key, bucket),
            UpdateExpression="ADD v :one, n :delta SET changedAt = :now, #ttl = :ttl",
            ExpressionAttributeNames={"#ttl": "ttl"},
            ExpressionAttributeValues={
                ":one": {"N": "1"},
                ":delta": {"N": str(delta)},
                ":now": {"N": str(self._clock_ms())},
                ":ttl": {"N": self._expiry()},
            },
        )

    def channel_versions(self, channel_key: str) -> ChannelVersions:
        """Every bucket's version item and the legacy one, read consistently in ONE BatchGetItem
        ("BatchGetItem": ConsistentRead is set per table; UnprocessedKeys are retried)."""
        keys = [_version_key(channel_key, b) for b in range(SUBSCRIBER_BUCKETS)] + [_version_key(channel_key, None)]
        found: dict[str, ChannelVersion] = {}
        pending: Any = {self._table: {"Keys": keys, "ConsistentRead": True}}
        for attempt in range(_BATCH_GET_ATTEMPTS):
            response = self._call(self._client.batch_get_item, RequestItems=pending)
            for item in response.get("Responses", {}).get(self._table, []):
                found[item["pk"]["S"]] = ChannelVersion(
                    int(item.get("v", {}).get("N", "0")),
                    int(item.get("changedAt", {}).get("N", "0")),
                    max(0, int(item.get("n", {}).get("N", "0"))),
                )
            pending = response.get("UnprocessedKeys") or {}
            if not pending:
                break
            time.sleep(min(0.2, 0.01 * 2**attempt))
        else:
            raise StoreUnavailable("connections table: channel versions still unprocessed after retries")
        none = ChannelVersion(0, 0)
        return ChannelVersions(
            tuple(found.get(key["pk"]["S"], none) for key in keys[:-1]), found.get(keys[-1]["pk"]["S"], none)
        )

    def subscriptions(self, connection_id: str) -> list[str]:
        """The channel keys the connection is subscribed to (only `sub#` items: not its room memberships)."""
        return [key.removeprefix(_SUB) for key in self._item_keys(connection_id) if key.startswith(_SUB)]

    def delete_connection(self, connection_id: str) -> int:
        """Delete the connection and every item of its partition (subscriptions, memberships); returns how many went."""
        keys, channels = self._item_keys_and_channels(connection_id)
        for start in range(0, len(keys), 25):
            requests: Any = [
                {"DeleteRequest": {"Key": {"pk": {"S": _pk(connection_id)}, "sk": {"S": sk}}}}
                for sk in keys[start : start + 25]
            ]
            pending: Any = {self._table: requests}
            for _ in range(5):  # BatchWriteItem may hand some back under throttling
                response = self._call(self._client.batch_write_item, RequestItems=pending)
                pending = response.get("UnprocessedItems") or {}
                if not pending:
                    break
                time.sleep(0.05)
        # Its subscriptions are gone: warm fan-outs re-read those buckets' subscribers.
        for sk, channel in zip(keys, channels, strict=True):
            if not sk.startswith(_SUB):
                continue
            key = sk.removeprefix(_SUB)
            if channel == key:  # under the bare index key
                self.bump_version(key, None, 0)
            else:
                self.bump_version(key, subscriber_bucket(connection_id), -1)
        return len(keys)

    def subscribers(self, channel_key: str, page_size: int = 1000) -> Iterator[list[str]]:
        """The live connection ids subscribed to a channel, a page at a time."""
        for page in self.subscriber_entries(channel_key, page_size):
            yield [entry.connection_id for entry in page]

    def subscriber_entries(self, channel_key: str, page_size: int = 1000) -> Iterator[list[Subscriber]]:
        """The index entries of a channel's subscribers (id and `tokenExp` hint), a page at a time.

        Every bucket is queried (each paged), the buckets side by side; a connection appears
        once (a subscription written under both schemes is one subscription)."""
        keys = bucket_keys(channel_key)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self._readers, thread_name_prefix="subscribers")
        seen: set[str] = set()
        for pages in self._executor.map(lambda key: list(self._bucket_entries(key, page_size)), keys):
            for page in pages:
                fresh = [entry for entry in page if entry.connection_id not in seen]
                seen.update(entry.connection_id for entry in fresh)
                if fresh:
                    yield fresh

    def keys_entries(self, index_keys: list[str], page_size: int = 1000) -> list[list[Subscriber]]:
        """Every entry of each of these index keys (each paged), the keys side by side."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self._readers, thread_name_prefix="subscribers")

        def read(key: str) -> list[Subscriber]:
            return [entry for page in self._bucket_entries(key, page_size) for entry in page]

        return list(self._executor.map(read, index_keys))

    def _bucket_entries(self, index_key: str, page_size: int) -> Iterator[list[Subscriber]]:
        return self.range_entries(index_key, None, None, page_size)

    def range_entries(
        self, index_key: str, lo: str | None, hi: str | None, page_size: int = 1000
    ) -> Iterator[list[Subscriber]]:
        """The entries of one index key whose connectionId is in [lo, hi) (None: unbounded), paged.

        The sort key takes one condition: `>= lo`, `< hi`, or `BETWEEN lo AND hi` (inclusive on
        both ends), whose `hi` itself is dropped here, so ranges cut at the same points are
        disjoint and cover the key."""
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": BY_CHANNEL_INDEX,
            "KeyConditionExpression": "channel = :c",
            "ExpressionAttributeValues": {":c": {"S": index_key}},
            "Limit": page_size,
        }
        values = kwargs["ExpressionAttributeValues"]
        if lo is not None and hi is not None:
            kwargs["KeyConditionExpression"] += " AND connectionId BETWEEN :lo AND :hi"
            values |= {":lo": {"S": lo}, ":hi": {"S": hi}}
        elif lo is not None:
            kwargs["KeyConditionExpression"] += " AND connectionId >= :lo"
            values[":lo"] = {"S": lo}
        elif hi is not None:
            kwargs["KeyConditionExpression"] += " AND connectionId < :hi"
            values[":hi"] = {"S": hi}
        while True:
            response = self._call(self._client.query, **kwargs)
            entries = [
                Subscriber(item["connectionId"]["S"], int(item["tokenExp"]["N"]) if "tokenExp" in item else None)
                for item in response.get("Items", [])
                if lo is None or hi is None or item["connectionId"]["S"] != hi
            ]
            if entries:
                yield entries
            if "LastEvaluatedKey" not in response:
                return
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def _item_keys(self, connection_id: str) -> list[str]:
        """Every sort key of the connection's partition, as stored."""
        return self._item_keys_and_channels(connection_id)[0]

    def _item_keys_and_channels(self, connection_id: str) -> tuple[list[str], list[str | None]]:
        """Every sort key of the connection's partition, and each item's index key (`channel`) if any."""
        keys: list[str] = []
        channels: list[str | None] = []
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": _pk(connection_id)}},
            "ProjectionExpression": "sk, #c",
            "ExpressionAttributeNames": {"#c": "channel"},
            "ConsistentRead": True,
        }
        while True:
            response = self._call(self._client.query, **kwargs)
            for item in response.get("Items", []):
                keys.append(item["sk"]["S"])
                channels.append(item.get("channel", {}).get("S"))
            if "LastEvaluatedKey" not in response:
                return keys, channels
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    @staticmethod
    def _call(operation: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return operation(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise StoreUnavailable(f"connections table: {exc}") from exc
