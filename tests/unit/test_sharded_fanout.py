"""Sharded delivery, the warm subscriber cache and packed live frames, on in-process moto.

The delivery worker is the real `functions/delivery_worker` handler, called in process by an
invoker double that goes through JSON both ways (as Lambda's Invoke does) and can make a shard's
invocation fail, also midway (some of its connections delivered, then a FunctionError).
"""

# ruff: noqa: F811 - the fixtures of test_fanout, imported, are redefined as parameters by pytest's design
from __future__ import annotations

import itertools
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from realtime_transport.connections import ConnectionStore, Subscriber, bucket_keys, subscriber_bucket
from realtime_transport.delivery import DeliveryReport, Pusher
from realtime_transport.limits import FRAME_BYTES
from realtime_transport.models.frames import packed_frames
from realtime_transport.shards import SubscriberCache
from realtime_transport.workers import (
    ReadRequest,
    ReadResult,
    ShardFailed,
    ShardRequest,
    ShardResult,
    read_and_deliver,
)
from tests.conftest import LambdaContext, load_function
from tests.unit.test_fanout import (  # noqa: F401 - fixtures
    CURSOR_SECRET,
    FEED_42,
    ClosingManagementApi,
    api,
    connect,
    cursor_of,
    fanout,
    frames,
    invoke,
    record,
    seqs,
    store,
)

SHARD = 3


class RecordingStore(ConnectionStore):
    """The worker's store: every range it reads, and what it found there."""

    def __init__(self, client: Any, table: str) -> None:
        super().__init__(client, table)
        self.lock = threading.Lock()
        self.ranges: list[tuple[str, str | None, str | None, list[str]]] = []

    def range_entries(
        self, index_key: str, lo: str | None, hi: str | None, page_size: int = 1000
    ) -> Iterator[list[Subscriber]]:
        pages = list(super().range_entries(index_key, lo, hi, page_size))
        with self.lock:
            self.ranges.append((index_key, lo, hi, [e.connection_id for page in pages for e in page]))
        return iter(pages)


class Midway:
    """A worker's pusher that delivers to the first `count` connections of its plan, then crashes."""

    def __init__(self, pusher: Pusher, count: int) -> None:
        self.pusher, self.count = pusher, count

    def send_many(self, plan: Any, *, budget_s: float | None = None) -> DeliveryReport:
        first = dict(list(plan.items())[: self.count])
        if first:
            self.pusher.send_many(first, budget_s=budget_s)
        raise RuntimeError("the worker crashed midway")

    def disconnect_many(self, farewells: Any, *, budget_s: float | None = None) -> Any:
        return self.pusher.disconnect_many(farewells, budget_s=budget_s)


class Workers:
    """`ShardInvoker` over the real worker handler; `fail_first`: connections whose shard's first
    invocation fails after delivering to the first `midway` of its connections; `fail_read_first`:
    index keys whose read-and-deliver request's first invocation does the same."""

    def __init__(self, module: Any) -> None:
        self.module = module
        self.lock = threading.Lock()
        self.calls: list[list[str]] = []
        self.reads: list[list[tuple[str, str | None, str | None]]] = []  # each read request's units
        self.sizes: list[int] = []  # of each request, as JSON
        self.fail_first: set[str] = set()
        self.fail_always: set[str] = set()
        self.fail_read_first: set[str] = set()
        self.midway = 1
        self.before: Callable[[], None] | None = None

    def invoke_read(self, request: ReadRequest) -> ReadResult:
        payload = json.loads(request.model_dump_json(exclude_none=True))
        units = [(u["key"], u.get("lo"), u.get("hi")) for u in payload["units"]]
        with self.lock:
            self.reads.append(units)
            self.sizes.append(len(json.dumps(payload)))
            hook, self.before = self.before, None
            crash = bool(self.fail_read_first & {key for key, _, _ in units})
            self.fail_read_first -= {key for key, _, _ in units}
        if hook is not None:
            hook()
        if crash:
            try:
                read_and_deliver(
                    Midway(self.module.pusher, self.midway),
                    self.module._store(),
                    ReadRequest.model_validate(payload),
                    remaining_ms=10_000,
                )
            except RuntimeError as exc:
                raise ShardFailed(f"Unhandled: {exc}") from exc
        answer = self.module.lambda_handler(payload, LambdaContext())
        return ReadResult.model_validate_json(json.dumps(answer))

    def invoke(self, request: ShardRequest) -> ShardResult:
        payload = json.loads(request.model_dump_json(exclude_none=True))
        ids = [c for group in request.groups for c in group.connections]
        with self.lock:
            self.calls.append(ids)
            self.sizes.append(len(json.dumps(payload)))
            hook, self.before = self.before, None
            doomed = bool(self.fail_always & set(ids))
            crash = doomed or bool(self.fail_first & set(ids))
            self.fail_first -= set(ids)
        if hook is not None:
            hook()
        if crash:
            # Midway: the first connections of the shard get their frames, then the worker dies.
            part = dict(payload)
            part["groups"] = [
                {"frames": group["frames"], "connections": [c for c in group["connections"] if c in ids[: self.midway]]}
                for group in payload["groups"]
            ]
            part["groups"] = [g for g in part["groups"] if g["connections"]]
            if part["groups"]:
                self.module.lambda_handler(part, LambdaContext())
            raise ShardFailed("Unhandled: the worker crashed")
        answer = self.module.lambda_handler(payload, LambdaContext())
        return ShardResult.model_validate_json(json.dumps(answer))

    def shards_of(self, call_range: slice) -> list[list[str]]:
        with self.lock:
            return self.calls[call_range]


@pytest.fixture
def workers(fanout: Any, api: ClosingManagementApi) -> Iterator[Workers]:
    module = load_function("delivery_worker")
    wired = module.pusher
    module.pusher = Pusher(api.url, backoff_base=0.002, backoff_cap=0.01, max_attempts=3, max_concurrency=8)
    module.store = RecordingStore(fanout.fanout.connections._client, fanout.fanout.connections._table)
    double = Workers(module)
    fanout.fanout.invoker = double
    fanout.fanout.shard_size = SHARD
    yield double
    module.pusher.close()
    wired.close()


@pytest.fixture
def old_store(store: ConnectionStore) -> ConnectionStore:
    """Writes subscriptions as if made 10 s ago: past the cache's settle time."""
    import time

    return ConnectionStore(store._client, store._table, clock_ms=lambda: int(time.time() * 1000) - 10_000)


def deduplicated(values: list[int]) -> list[int]:
    """What a client keeps: a seq it has already seen is dropped."""
    kept: list[int] = []
    for value in values:
        if not kept or value > kept[-1]:
            kept.append(value)
    return kept


SUBSCRIBERS = [f"s{n}" for n in range(8)]


def ids_in_bucket(bucket: int, firsts: str) -> list[str]:
    """One connection id per first character, each in `bucket` (API Gateway-like base64 characters)."""
    found: list[str] = []
    for first in firsts:
        n = 0
        while subscriber_bucket(f"{first}q{n}") != bucket:
            n += 1
        found.append(f"{first}q{n}")
    return found


def warm_up(fanout: Any, seq: int = 1) -> None:
    """One batch, so the next ones find every bucket cached (subscriptions made by old_store)."""
    assert invoke(fanout, {"Records": [record("feed_42", seq)]}) == []


def _coordinator_index_queries(fanout: Any) -> list[str]:
    """Index Queries made outside the worker's reader threads (the double runs it in process)."""
    queries: list[str] = []

    def seen(params: dict[str, Any], **_: Any) -> None:
        if params.get("IndexName") and not threading.current_thread().name.startswith("worker-read"):
            queries.append(params["ExpressionAttributeValues"][":c"]["S"])

    fanout.fanout.connections._client.meta.events.register("provide-client-params.dynamodb.Query", seen)
    return queries


def test_a_cold_large_channel_is_read_by_workers_each_its_own_bucket_or_range_with_a_failure_midway(
    fanout: Any, workers: Workers, old_store: ConnectionStore, api: ClosingManagementApi
) -> None:
    heavy = ids_in_bucket(5, "AKTcksz")  # 7 more in bucket 5, more than a shard: read in 3 ranges
    everyone = [*SUBSCRIBERS, *heavy]
    for connection_id in everyone:
        connect(old_store, connection_id, FEED_42)
    coordinator = _coordinator_index_queries(fanout)
    doomed_key = f"{FEED_42}#{subscriber_bucket('s3')}"
    workers.fail_read_first = {doomed_key}  # that request's worker delivers to one, then crashes
    workers.midway = 1

    assert invoke(fanout, {"Records": [record("feed_42", n) for n in (1, 2, 3)]}) == []
    first_reads = list(workers.reads)
    assert invoke(fanout, {"Records": [record("feed_42", n) for n in (4, 5, 6)]}) == []

    assert coordinator == [], "the coordinator made no index Query: the workers read"
    assert workers.reads == first_reads, "batch 2 found every bucket cached: no read at all"
    assert sorted(c for ids in workers.calls for c in ids) == sorted(everyone), "batch 2: explicit shards"
    requested = [unit for units in first_reads for unit in units]
    assert sorted({key for key, _, _ in requested}) == sorted(bucket_keys(FEED_42)), "every bucket and the bare key"
    read = workers.module.store.ranges
    assert all((key, lo, hi) in requested for key, lo, hi, _ in read), "each worker read only its own units"
    # The failed request was invoked again, for its units only; every other unit was read once.
    (failed,) = [units for units in first_reads if any(key == doomed_key for key, _, _ in units)][:1]
    assert first_reads.count(failed) == 2 and all(first_reads.count(u) == 1 for u in first_reads if u != failed)
    heavy_key = f"{FEED_42}#5"
    ranges = [(lo, hi) for key, lo, hi in requested if key == heavy_key]
    assert len(ranges) == 3 and ranges[0][0] is None and ranges[-1][1] is None
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges)), "contiguous cut points"
    found = [ids for key, _, _, ids in read if key == heavy_key]
    assert len(found) == 3 and all(ids for ids in found), "each range holds some of the bucket"
    in_bucket = [c for c in everyone if subscriber_bucket(c) == 5]
    assert sorted(c for ids in found for c in ids) == sorted(in_bucket), "disjoint, and together the whole bucket"

    in_failed = {c for key, lo, hi, ids in read if (key, lo, hi) in failed for c in ids}
    repeated = [c for c in everyone if seqs(api, c) != [1, 2, 3, 4, 5, 6]]
    assert len(repeated) == 1 and repeated[0] in in_failed, "only the crashed worker's first connection"
    assert seqs(api, repeated[0]) == [1, 2, 3, 1, 2, 3, 4, 5, 6], "delivered before the crash, again by the retry"
    for connection_id in everyone:
        assert deduplicated(seqs(api, connection_id)) == [1, 2, 3, 4, 5, 6], connection_id


def test_a_subscribe_to_one_bucket_invalidates_that_bucket_only(
    fanout: Any, workers: Workers, old_store: ConnectionStore, api: ClosingManagementApi
) -> None:
    for connection_id in SUBSCRIBERS:
        connect(old_store, connection_id, FEED_42)
    warm_up(fanout)
    workers.reads.clear()
    workers.module.store.ranges.clear()

    connect(old_store, "late", FEED_42)
    assert invoke(fanout, {"Records": [record("feed_42", 2)]}) == []

    assert workers.reads == [[(f"{FEED_42}#{subscriber_bucket('late')}", None, None)]], "one bucket re-read"
    (only,) = workers.module.store.ranges
    late_bucket = {c for c in [*SUBSCRIBERS, "late"] if subscriber_bucket(c) == subscriber_bucket("late")}
    assert set(only[3]) == late_bucket
    shards_of = {c for ids in workers.calls for c in ids}
    assert shards_of == set(SUBSCRIBERS) - late_bucket, "the other buckets came from the cache"
    assert seqs(api, "late") == [2] and all(seqs(api, c) == [1, 2] for c in SUBSCRIBERS)


def test_a_shard_that_fails_twice_is_given_up_alone_and_never_fails_the_batch(
    fanout: Any, workers: Workers, old_store: ConnectionStore, api: ClosingManagementApi
) -> None:
    from realtime_transport.observability import metrics

    for connection_id in SUBSCRIBERS:
        connect(old_store, connection_id, FEED_42)
    warm_up(fanout)
    workers.fail_always = {"s5"}
    workers.midway = 0
    metrics.clear_metrics()

    result = fanout.fanout.deliver([record("feed_42", 2)])

    values = {name: metric["Value"] for name, metric in metrics.metric_set.items()}
    metrics.clear_metrics()
    (doomed,) = [ids for ids in workers.calls if "s5" in ids][:1]
    assert sorted(result.report.failed) == sorted(doomed) and all(
        result.report.errors[c].startswith("shard failed") for c in doomed
    )
    assert result.shards.given_up == 1 and result.shards.retried == 1
    assert values["ShardFailures"] == [1.0] and values["DeliveryShards"] == [3.0] and values["ReadShards"] == [0.0]
    for connection_id in SUBSCRIBERS:
        assert seqs(api, connection_id) == ([1] if connection_id in doomed else [1, 2])
    assert result.failed_channels == set(), "kept out of batchItemFailures: everyone else would get it twice"


@pytest.mark.parametrize(("remaining_ms", "retried"), [(60_000, True), (30_000, False)])
def test_a_failed_shard_is_retried_only_while_a_whole_worker_run_fits_before_the_deadline(
    fanout: Any,
    workers: Workers,
    old_store: ConnectionStore,
    api: ClosingManagementApi,
    remaining_ms: int,
    retried: bool,
) -> None:
    """With 60 s left the delivery deadline (80%) leaves 48 s: room for a retry that may run the
    worker's whole 30 s Timeout. With 30 s left it leaves 24 s: a second hung worker would outlive
    the fan-out's own Timeout and make the whole batch come again, so the shard is given up."""
    from realtime_transport.fanout import WORKER_TIMEOUT_SECONDS

    assert (remaining_ms * 0.8 / 1000 > WORKER_TIMEOUT_SECONDS) == retried
    for connection_id in SUBSCRIBERS:
        connect(old_store, connection_id, FEED_42)
    warm_up(fanout)
    workers.fail_first = {"s5"}
    workers.midway = 0

    result = fanout.fanout.deliver([record("feed_42", 2)], remaining_ms=remaining_ms)

    (doomed,) = [ids for ids in workers.calls if "s5" in ids][:1]
    assert result.shards.retried == (1 if retried else 0)
    assert result.shards.given_up == (0 if retried else 1)
    for connection_id in SUBSCRIBERS:
        expected = [1] if connection_id in doomed and not retried else [1, 2]
        assert seqs(api, connection_id) == expected
    assert result.failed_channels == set()


def test_a_read_request_that_fails_twice_is_given_up_alone(
    fanout: Any, workers: Workers, old_store: ConnectionStore, api: ClosingManagementApi, monkeypatch: Any
) -> None:
    for connection_id in SUBSCRIBERS:
        connect(old_store, connection_id, FEED_42)
    doomed_key = f"{FEED_42}#{subscriber_bucket('s5')}"
    real = workers.invoke_read

    def failing(request: ReadRequest) -> ReadResult:
        if any(unit.key == doomed_key for unit in request.units):
            workers.reads.append([(u.key, u.lo, u.hi) for u in request.units])
            raise ShardFailed("Unhandled: always")
        return real(request)

    monkeypatch.setattr(workers, "invoke_read", failing)
    result = fanout.fanout.deliver([record("feed_42", 1)])

    assert result.shards.given_up == 1 and result.shards.retried == 1 and result.failed_channels == set()
    (doomed,) = [units for units in workers.reads if any(k == doomed_key for k, _, _ in units)][:1]
    lost = {c for c in SUBSCRIBERS if f"{FEED_42}#{subscriber_bucket(c)}" in {k for k, _, _ in doomed}}
    assert "s5" in lost
    for connection_id in SUBSCRIBERS:
        assert seqs(api, connection_id) == ([] if connection_id in lost else [1])
    monkeypatch.undo()
    assert invoke(fanout, {"Records": [record("feed_42", 2)]}) == []
    assert all(seqs(api, c)[-1:] == [2] for c in SUBSCRIBERS), "its bucket was not cached: read again next batch"


def test_an_expired_token_found_by_a_worker_gets_token_expired_and_delete_a_renewed_one_is_delivered(
    fanout: Any, workers: Workers, old_store: ConnectionStore, api: ClosingManagementApi
) -> None:
    import time

    from realtime_transport.connections import Connection

    for connection_id in SUBSCRIBERS:
        connect(old_store, connection_id, FEED_42)
    past = int(time.time()) - 600
    connect(old_store, "x", FEED_42, exp=past)  # expired, and its connection item says so
    connect(old_store, "r", FEED_42, exp=past)  # its index hint says expired, but an auth renewed it
    old_store.put_connection(Connection("r", "user", ("feed_*",), 2_000_000_000, 1_700_000_000_000))

    result = fanout.fanout.deliver([record("feed_42", 1)])

    assert result.shards.reads and result.expired == ["x"] and result.renewed == ["r"]
    assert result.closing.closed == ["x"] and api.closed() == ["x"]
    assert [(f["type"], f.get("code")) for f in frames(api, "x")] == [("error", "token_expired")]
    assert seqs(api, "r") == [1] and all(seqs(api, c) == [1] for c in SUBSCRIBERS)
    again = fanout.fanout.deliver([record("feed_42", 2)])
    assert again.renewed == [] and seqs(api, "r") == [1, 2], "the renewed hint was cached: no check again"


def test_a_subscribe_during_a_sharded_delivery_joins_with_the_next_batch(
    fanout: Any, workers: Workers, old_store: ConnectionStore, store: ConnectionStore, api: ClosingManagementApi
) -> None:
    for connection_id in SUBSCRIBERS:
        connect(old_store, connection_id, FEED_42)
    warm_up(fanout, 1)
    # While batch 2 (seqs 2-4, committed) is being delivered, "late" subscribes: its catch-up
    # reads history up to the head it finds, 4, so it is owed every event after 4, once.
    workers.before = lambda: connect(store, "late", FEED_42)
    assert invoke(fanout, {"Records": [record("feed_42", n) for n in (2, 3, 4)]}) == []
    caught_up_to = 4
    workers.reads.clear()
    assert invoke(fanout, {"Records": [record("feed_42", n) for n in (5, 6, 7)]}) == []

    live = seqs(api, "late")
    assert [s for s in live if s > caught_up_to] == [5, 6, 7], "the version bump made batch 3 read it"
    assert deduplicated([2, 3, 4, *live]) == [2, 3, 4, 5, 6, 7]
    assert workers.reads == [[(f"{FEED_42}#{subscriber_bucket('late')}", None, None)]], "its bucket alone"


def test_a_small_batch_keeps_the_single_invocation_path(
    fanout: Any, workers: Workers, old_store: ConnectionStore, api: ClosingManagementApi
) -> None:
    for connection_id in SUBSCRIBERS[:SHARD]:
        connect(old_store, connection_id, FEED_42)

    assert invoke(fanout, {"Records": [record("feed_42", 1), record("feed_42", 2)]}) == []

    assert workers.calls == [] and workers.reads == [], "no worker invoked"
    for connection_id in SUBSCRIBERS[:SHARD]:
        assert seqs(api, connection_id) == [1, 2]


def _index_queries(fanout: Any) -> list[str]:
    queries: list[str] = []
    client = fanout.fanout.connections._client

    def seen(params: dict[str, Any], **_: Any) -> None:
        if params.get("IndexName"):
            queries.append(params["ExpressionAttributeValues"][":c"]["S"])

    client.meta.events.register("provide-client-params.dynamodb.Query", seen)
    return queries


def _batch_gets(fanout: Any) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    client = fanout.fanout.connections._client
    client.meta.events.register("provide-client-params.dynamodb.BatchGetItem", lambda params, **_: calls.append(params))
    return calls


def test_a_warm_instance_reads_again_only_the_buckets_whose_version_changed(
    fanout: Any, old_store: ConnectionStore, store: ConnectionStore, api: ClosingManagementApi
) -> None:
    for connection_id in ("a", "b"):
        connect(old_store, connection_id, FEED_42)
    queries = _index_queries(fanout)
    gets = _batch_gets(fanout)

    invoke(fanout, {"Records": [record("feed_42", 1)]})
    assert sorted(queries) == sorted(bucket_keys(FEED_42)), "every bucket, once"
    queries.clear()
    invoke(fanout, {"Records": [record("feed_42", 2)]})
    assert queries == [], "same versions, cache filled well after their change: no Query"

    connect(old_store, "c", FEED_42)  # a subscribe bumps its bucket's version
    invoke(fanout, {"Records": [record("feed_42", 3)]})
    assert queries == [f"{FEED_42}#{subscriber_bucket('c')}"]
    queries.clear()
    old_store.unsubscribe("a", FEED_42)  # so does an unsubscribe
    invoke(fanout, {"Records": [record("feed_42", 4)]})
    assert queries == [f"{FEED_42}#{subscriber_bucket('a')}"]
    queries.clear()
    old_store.unsubscribe("a", FEED_42)  # unsubscribing nothing changes nothing
    invoke(fanout, {"Records": [record("feed_42", 5)]})
    assert queries == []

    assert len(gets) == 5, "one BatchGetItem of the versions per channel per batch"
    assert seqs(api, "a") == [1, 2, 3] and seqs(api, "b") == [1, 2, 3, 4, 5] and seqs(api, "c") == [3, 4, 5]


def test_bucket_versions_are_one_consistent_batch_get_item_and_unprocessed_keys_are_retried(
    store: ConnectionStore,
) -> None:
    for connection_id in ("a", "b", "c", "d"):
        connect(store, connection_id, FEED_42)
    connect(store, "a", FEED_42)  # a repeated subscribe: counted once
    real = store._client
    calls: list[dict[str, Any]] = []

    class Partial:
        """The first BatchGetItem answers half its keys and hands the rest back (as under throttling)."""

        def batch_get_item(self, **kwargs: Any) -> dict[str, Any]:
            calls.append(kwargs)
            if len(calls) > 1:
                return dict(real.batch_get_item(**kwargs))
            ((table, request),) = kwargs["RequestItems"].items()
            keys = request["Keys"]
            answered = real.batch_get_item(RequestItems={table: {**request, "Keys": keys[::2]}})
            return {**answered, "UnprocessedKeys": {table: {**request, "Keys": keys[1::2]}}}

    partial = ConnectionStore(Partial(), store._table)  # type: ignore[arg-type]
    versions = partial.channel_versions(FEED_42)

    assert len(calls) == 2
    (first,) = calls[0]["RequestItems"].values()
    assert first["ConsistentRead"] is True and len(first["Keys"]) == len(bucket_keys(FEED_42))
    assert versions == store.channel_versions(FEED_42)
    assert versions.subscribers == 4
    for connection_id in ("a", "b", "c", "d"):
        assert versions.buckets[subscriber_bucket(connection_id)].version >= 1

    class Never:
        def batch_get_item(self, **kwargs: Any) -> dict[str, Any]:
            return {"Responses": {}, "UnprocessedKeys": kwargs["RequestItems"]}

    from realtime_transport.errors import StoreUnavailable

    with pytest.raises(StoreUnavailable):
        ConnectionStore(Never(), store._table).channel_versions(FEED_42)  # type: ignore[arg-type]


def test_a_cache_filled_soon_after_a_change_is_not_trusted(
    fanout: Any, store: ConnectionStore, api: ClosingManagementApi
) -> None:
    # The index lags: a read right after the bump may miss the newest subscriber, so it is used
    # for its own batch, then read again until a read lands SUBSCRIBER_CACHE_SETTLE_SECONDS late.
    assert isinstance(fanout.fanout.cache, SubscriberCache) and fanout.fanout.cache.trust_after_ms == 2000
    connect(store, "a", FEED_42)  # just now
    queries = _index_queries(fanout)
    for seq in (1, 2):
        invoke(fanout, {"Records": [record("feed_42", seq)]})
    assert Counter(queries) == dict.fromkeys(bucket_keys(FEED_42), 1) | {f"{FEED_42}#{subscriber_bucket('a')}": 2}
    fanout.fanout.cache.trust_after_ms = 0  # (as if the settle time had passed)
    invoke(fanout, {"Records": [record("feed_42", 3)]})
    queries.clear()
    invoke(fanout, {"Records": [record("feed_42", 4)]})
    assert queries == []
    assert seqs(api, "a") == [1, 2, 3, 4]


def test_a_gone_connection_leaves_the_cache_at_once(
    fanout: Any, old_store: ConnectionStore, api: ClosingManagementApi
) -> None:
    connect(old_store, "gone", FEED_42)
    connect(old_store, "alive", FEED_42)
    invoke(fanout, {"Records": [record("feed_42", 1)]})
    assert sorted(fanout.fanout.cache.cached(FEED_42)) == ["alive", "gone"]
    api.script = {"gone": [410]}

    invoke(fanout, {"Records": [record("feed_42", 2)]})

    assert fanout.fanout.cache.cached(FEED_42) == ["alive"]
    invoke(fanout, {"Records": [record("feed_42", 3)]})
    assert len(api.requests_for("gone")) == 2 and seqs(api, "alive") == [1, 2, 3]


# --- several events per message ---------------------------------------------------------------------


def sized(seq: int, size: int) -> dict[str, Any]:
    """A stream record of feed_42 whose envelope is padded to about `size` bytes."""
    item = record("feed_42", seq)
    image = item["dynamodb"]["NewImage"]
    envelope = json.loads(image["event"]["S"])
    envelope["data"] = {"pad": ""}
    base = len(json.dumps(envelope, separators=(",", ":")))
    envelope["data"]["pad"] = "x" * max(0, size - base)
    image["event"]["S"] = json.dumps(envelope, separators=(",", ":"))
    return item


def test_a_burst_is_packed_into_messages_of_at_most_32000_bytes(
    fanout: Any, old_store: ConnectionStore, api: ClosingManagementApi
) -> None:
    connect(old_store, "a", FEED_42)
    connect(old_store, "b", FEED_42)
    # Mixed sizes up to the largest event (MAX_EVENT_BYTES, 64 KiB by default, as a whole frame).
    sizes = [300, 500, 12_000, 31_000, 200, 40_000, 64_000, 800, 15_000, 15_000, 2_000] + [500] * 30
    records = [sized(n + 1, size) for n, size in enumerate(sizes)]

    assert invoke(fanout, {"Records": records}) == []

    expected = list(range(1, len(sizes) + 1))
    envelopes = [(r["dynamodb"]["NewImage"]["sk"]["N"], r["dynamodb"]["NewImage"]["event"]["S"]) for r in records]
    packing = list(
        packed_frames("feed_42", [(int(s), e) for s, e in envelopes], lambda s: cursor_of("feed_42", s), FRAME_BYTES)
    )
    for connection_id in ("a", "b"):
        bodies = api.delivered(connection_id)
        assert len(bodies) == len(packing) < len(sizes)
        assert bodies == [frame for frame, _ in packing]
        for body in bodies:
            message = json.loads(body)
            if message["type"] == "events":
                assert len(body) <= FRAME_BYTES and len(message["events"]) > 1
            else:
                # one event alone: it did not fit beside its neighbours in 32,000 bytes
                assert message["type"] == "event"
            last = message["events"][-1] if message["type"] == "events" else message["event"]
            assert message["cursor"] == cursor_of("feed_42", last["seq"]), "the last event's cursor"
        assert seqs(api, connection_id) == expected, "every event once, in order"
    big = [len(b) for b in api.delivered("a") if len(b) > FRAME_BYTES]
    assert len(big) == 2, "the 40,000 and 64,000-byte events travel alone"


def test_fifty_events_to_a_hundred_subscribers_take_a_hundred_requests_not_five_thousand(
    fanout: Any, old_store: ConnectionStore, api: ClosingManagementApi
) -> None:
    subscribers = [f"c{n:03d}" for n in range(100)]
    for connection_id in subscribers:
        connect(old_store, connection_id, FEED_42)

    assert invoke(fanout, {"Records": [sized(n, 500) for n in range(1, 51)]}) == []

    assert len(api.received) == 100, "one message per subscriber instead of one per event (5,000)"
    for connection_id in subscribers[::17]:
        assert seqs(api, connection_id) == list(range(1, 51))


# --- the worker boundary ----------------------------------------------------------------------------


def test_a_shard_whose_frames_pass_the_payload_limit_goes_in_parts_in_order(
    fanout: Any, workers: Workers, old_store: ConnectionStore, api: ClosingManagementApi
) -> None:
    for connection_id in SUBSCRIBERS:
        connect(old_store, connection_id, FEED_42)
    warm_up(fanout)
    workers.sizes.clear()
    fanout.fanout.max_payload_bytes = 30_000  # (4 MB in production): about one 20 KB frame per request
    api.script = {"s2": [410]}  # gone at its first frame: left out of its shard's later parts
    records = [sized(n, 20_000) for n in range(2, 6)]

    assert invoke(fanout, {"Records": records}) == []

    assert len(workers.calls) == 3 * 4, "four parts per shard, one after another"
    assert all(size < 30_000 for size in workers.sizes)
    with_s2 = [call for call in workers.calls if "s2" in call]
    assert len(with_s2) == 1, "gone after the first part: left out of its shard's later parts"
    assert sum(1 for call in workers.calls if set(call) == set(with_s2[0]) - {"s2"}) == 3
    for connection_id in SUBSCRIBERS:
        assert seqs(api, connection_id) == ([1] if connection_id == "s2" else [1, 2, 3, 4, 5])


def test_a_read_request_whose_frames_pass_the_payload_limit_sends_the_rest_to_what_it_read(
    fanout: Any, workers: Workers, old_store: ConnectionStore, api: ClosingManagementApi
) -> None:
    for connection_id in SUBSCRIBERS:
        connect(old_store, connection_id, FEED_42)
    fanout.fanout.max_payload_bytes = 30_000
    api.script = {"s2": [410]}  # gone at its first frame (delivered by a read request)
    records = [sized(n, 20_000) for n in range(1, 5)]

    assert invoke(fanout, {"Records": records}) == []

    assert workers.reads and all(size < 30_000 for size in workers.sizes)
    assert workers.calls and all("s2" not in call for call in workers.calls), "the later parts skip the gone"
    for connection_id in SUBSCRIBERS:
        assert seqs(api, connection_id) == ([] if connection_id == "s2" else [1, 2, 3, 4]), connection_id


def test_the_worker_refuses_a_request_that_is_not_a_shard_request(workers: Workers) -> None:
    from pydantic import ValidationError

    bad: dict[str, Any]
    for bad in (
        {},
        {"frames": [], "groups": []},
        {"frames": ["{}"], "groups": [{"frames": [0], "connections": []}]},
        {"units": [], "frames": ["{}"]},
        {"units": [{"key": ""}], "frames": ["{}"]},
        {"units": [{"key": "k", "extra": 1}], "frames": ["{}"]},
    ):
        with pytest.raises(ValidationError):  # Lambda answers FunctionError: Unhandled to the coordinator
            workers.module.lambda_handler(bad, LambdaContext())


class _LambdaClient:
    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = answer
        self.calls: list[dict[str, Any]] = []

    def invoke(self, **kwargs: Any) -> dict[str, Any]:
        import io

        self.calls.append(kwargs)
        return {**self.answer, "Payload": io.BytesIO(self.answer["Payload"])}


def test_the_lambda_invoker_invokes_synchronously_and_maps_every_failure_to_shard_failed() -> None:
    from realtime_transport.workers import LambdaInvoker

    request = ShardRequest(frames=["{}"], groups=[{"frames": [0], "connections": ["a"]}], deadline_ms=1)
    ok = _LambdaClient({"StatusCode": 200, "Payload": b'{"delivered": 1, "elapsed_ms": 2.0}'})
    assert LambdaInvoker("worker", read_timeout_s=1, client=ok).invoke(request).delivered == 1
    (call,) = ok.calls
    assert call["InvocationType"] == "RequestResponse" and call["FunctionName"] == "worker"
    assert ShardRequest.model_validate_json(call["Payload"]) == request
    read = ReadRequest(units=[{"key": "k#1", "lo": "A"}], frames=["{}"])
    answered = _LambdaClient(
        {"StatusCode": 200, "Payload": b'{"delivered": 2, "entries": [[["Ab", 5], ["Ac", null]]]}'}
    )
    result = LambdaInvoker("worker", read_timeout_s=1, client=answered).invoke_read(read)
    assert result.delivered == 2 and result.entries == [[("Ab", 5), ("Ac", None)]]
    assert ReadRequest.model_validate_json(answered.calls[0]["Payload"]) == read
    for answer in (
        {"StatusCode": 200, "FunctionError": "Unhandled", "Payload": b'{"errorType": "Sandbox.Timedout"}'},
        {"StatusCode": 200, "Payload": b'{"unexpected": true}'},
        {"StatusCode": 200, "Payload": b"not json"},
    ):
        with pytest.raises(ShardFailed):
            LambdaInvoker("worker", read_timeout_s=1, client=_LambdaClient(answer)).invoke(request)
