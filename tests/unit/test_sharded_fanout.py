"""Sharded delivery, the warm subscriber cache and packed live frames, on in-process moto.

The delivery worker is the real `functions/delivery_worker` handler, called in process by an
invoker double that goes through JSON both ways (as Lambda's Invoke does) and can make a shard's
invocation fail, also midway (some of its connections delivered, then a FunctionError).
"""

# ruff: noqa: F811 - the fixtures of test_fanout, imported, are redefined as parameters by pytest's design
from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from realtime_transport.connections import ConnectionStore, bucket_keys
from realtime_transport.delivery import Pusher
from realtime_transport.limits import FRAME_BYTES
from realtime_transport.models.frames import packed_frames
from realtime_transport.shards import SubscriberCache
from realtime_transport.workers import ShardFailed, ShardRequest, ShardResult
from tests.conftest import LambdaContext, load_function
from tests.unit.test_fanout import (  # noqa: F401 - fixtures
    CURSOR_SECRET,
    FEED_42,
    ClosingManagementApi,
    api,
    connect,
    cursor_of,
    fanout,
    invoke,
    record,
    seqs,
    store,
)

SHARD = 3


class Workers:
    """`ShardInvoker` over the real worker handler; `fail_first`: connections whose shard's first
    invocation fails after delivering to the first `midway` of its connections."""

    def __init__(self, module: Any) -> None:
        self.module = module
        self.lock = threading.Lock()
        self.calls: list[list[str]] = []
        self.sizes: list[int] = []  # of each request, as JSON
        self.fail_first: set[str] = set()
        self.fail_always: set[str] = set()
        self.midway = 1
        self.before: Callable[[], None] | None = None

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


def test_a_large_channel_is_sharded_and_a_failed_worker_is_retried_for_its_shard_only(
    fanout: Any, workers: Workers, old_store: ConnectionStore, api: ClosingManagementApi
) -> None:
    for connection_id in SUBSCRIBERS:
        connect(old_store, connection_id, FEED_42)
    workers.fail_first = {"s3"}  # the shard holding s3 dies midway through its first invocation
    workers.midway = 1

    assert invoke(fanout, {"Records": [record("feed_42", n) for n in (1, 2, 3)]}) == []
    assert invoke(fanout, {"Records": [record("feed_42", n) for n in (4, 5, 6)]}) == []

    first, second = workers.shards_of(slice(0, 4)), workers.shards_of(slice(4, None))
    distinct = [ids for n, ids in enumerate(first) if ids not in first[:n]]
    assert sorted(len(ids) for ids in distinct) == [2, 3, 3], "three shards of at most 3"
    assert sorted(c for ids in distinct for c in ids) == sorted(SUBSCRIBERS)
    (failed,) = [ids for ids in distinct if first.count(ids) == 2]  # invoked again: that shard only
    assert "s3" in failed
    assert sorted(c for ids in second for c in ids) == sorted(SUBSCRIBERS) and len(second) == 3
    for connection_id in SUBSCRIBERS:
        got = seqs(api, connection_id)
        assert deduplicated(got) == [1, 2, 3, 4, 5, 6], connection_id  # every event, in order
        if connection_id in failed[:1]:
            assert got == [1, 2, 3, 1, 2, 3, 4, 5, 6], "delivered before the crash, again by the retry"
        else:
            assert got == [1, 2, 3, 4, 5, 6], f"{connection_id}: nobody else gets anything twice"


def test_a_shard_that_fails_twice_is_given_up_alone_and_never_fails_the_batch(
    fanout: Any, workers: Workers, old_store: ConnectionStore, api: ClosingManagementApi
) -> None:
    from realtime_transport.observability import metrics

    for connection_id in SUBSCRIBERS:
        connect(old_store, connection_id, FEED_42)
    workers.fail_always = {"s5"}
    workers.midway = 0
    metrics.clear_metrics()

    result = fanout.fanout.deliver([record("feed_42", 1)])

    values = {name: metric["Value"] for name, metric in metrics.metric_set.items()}
    metrics.clear_metrics()
    (doomed,) = [ids for ids in workers.calls if "s5" in ids][:1]
    assert sorted(result.report.failed) == sorted(doomed) and all(
        result.report.errors[c].startswith("shard failed") for c in doomed
    )
    assert result.shards.given_up == 1 and result.shards.retried == 1
    assert values["ShardFailures"] == [1.0] and values["DeliveryShards"] == [3.0]
    for connection_id in SUBSCRIBERS:
        assert seqs(api, connection_id) == ([] if connection_id in doomed else [1])
    assert result.failed_channels == set(), "kept out of batchItemFailures: everyone else would get it twice"


def test_a_subscribe_during_a_sharded_delivery_joins_with_the_next_batch(
    fanout: Any, workers: Workers, old_store: ConnectionStore, store: ConnectionStore, api: ClosingManagementApi
) -> None:
    for connection_id in SUBSCRIBERS:
        connect(old_store, connection_id, FEED_42)
    # While batch 1 (seqs 1-3, committed) is being delivered, "late" subscribes: its catch-up
    # reads history up to the head it finds, 3, so it is owed every event after 3, once.
    workers.before = lambda: connect(store, "late", FEED_42)
    assert invoke(fanout, {"Records": [record("feed_42", n) for n in (1, 2, 3)]}) == []
    caught_up_to = 3
    assert invoke(fanout, {"Records": [record("feed_42", n) for n in (4, 5, 6)]}) == []

    live = seqs(api, "late")
    assert [s for s in live if s > caught_up_to] == [4, 5, 6], "the version bump made batch 2 read it"
    assert deduplicated([1, 2, 3, *live]) == [1, 2, 3, 4, 5, 6]
    assert "late" in {c for ids in workers.calls[3:] for c in ids}


def test_a_small_batch_keeps_the_single_invocation_path(
    fanout: Any, workers: Workers, old_store: ConnectionStore, api: ClosingManagementApi
) -> None:
    for connection_id in SUBSCRIBERS[:SHARD]:
        connect(old_store, connection_id, FEED_42)

    assert invoke(fanout, {"Records": [record("feed_42", 1), record("feed_42", 2)]}) == []

    assert workers.calls == [], "no worker invoked"
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


def test_a_warm_instance_reads_the_index_again_only_when_the_channel_version_changed(
    fanout: Any, old_store: ConnectionStore, store: ConnectionStore, api: ClosingManagementApi
) -> None:
    for connection_id in ("a", "b"):
        connect(old_store, connection_id, FEED_42)
    queries = _index_queries(fanout)

    invoke(fanout, {"Records": [record("feed_42", 1)]})
    assert sorted(queries) == sorted(bucket_keys(FEED_42)), "every bucket, once"
    queries.clear()
    invoke(fanout, {"Records": [record("feed_42", 2)]})
    assert queries == [], "same version, cache filled well after its change: no Query"

    connect(old_store, "c", FEED_42)  # a subscribe bumps the version
    invoke(fanout, {"Records": [record("feed_42", 3)]})
    assert len(queries) == len(bucket_keys(FEED_42))
    queries.clear()
    old_store.unsubscribe("a", FEED_42)  # so does an unsubscribe
    invoke(fanout, {"Records": [record("feed_42", 4)]})
    assert len(queries) == len(bucket_keys(FEED_42))

    assert seqs(api, "a") == [1, 2, 3] and seqs(api, "b") == [1, 2, 3, 4] and seqs(api, "c") == [3, 4]


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
    assert Counter(queries) == dict.fromkeys(bucket_keys(FEED_42), 2)
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
    fanout.fanout.max_payload_bytes = 30_000  # (4 MB in production): about one 20 KB frame per request
    api.script = {"s2": [410]}  # gone at its first frame: left out of its shard's later parts
    records = [sized(n, 20_000) for n in range(1, 5)]

    assert invoke(fanout, {"Records": records}) == []

    assert len(workers.calls) == 3 * 4, "four parts per shard, one after another"
    assert all(size < 30_000 for size in workers.sizes)
    with_s2 = [call for call in workers.calls if "s2" in call]
    assert len(with_s2) == 1, "gone after the first part: left out of its shard's later parts"
    assert sum(1 for call in workers.calls if set(call) == set(with_s2[0]) - {"s2"}) == 3
    for connection_id in SUBSCRIBERS:
        assert seqs(api, connection_id) == ([] if connection_id == "s2" else [1, 2, 3, 4])


def test_the_worker_refuses_a_request_that_is_not_a_shard_request(workers: Workers) -> None:
    from pydantic import ValidationError

    bad: dict[str, Any]
    for bad in ({}, {"frames": [], "groups": []}, {"frames": ["{}"], "groups": [{"frames": [0], "connections": []}]}):
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
    for answer in (
        {"StatusCode": 200, "FunctionError": "Unhandled", "Payload": b'{"errorType": "Sandbox.Timedout"}'},
        {"StatusCode": 200, "Payload": b'{"unexpected": true}'},
        {"StatusCode": 200, "Payload": b"not json"},
    ):
        with pytest.raises(ShardFailed):
            LambdaInvoker("worker", read_timeout_s=1, client=_LambdaClient(answer)).invoke(request)
