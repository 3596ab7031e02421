"""functions/fanout fed DynamoDB Streams events, on in-process moto, delivering to a local management API."""

from __future__ import annotations

import copy
import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import pytest

from realtime_transport.connections import Connection, ConnectionStore, Subscriber, bucket_keys, subscriber_bucket
from realtime_transport.delivery import Pusher
from realtime_transport.errors import StoreUnavailable
from tests.conftest import TABLE_NAMES, LambdaContext, load_function, sample_event
from tests.unit.test_delivery import FakeManagementApi, _Handler

CONNECTIONS = TABLE_NAMES["ConnectionsTable"]
FEED_42 = "transport#feed_42"
FEED_7 = "transport#feed_7"


class _ClosingHandler(_Handler):
    """Also plays `DELETE @connections/{id}` (204, or the connection's next scripted answer)."""

    def do_DELETE(self) -> None:
        api: ClosingManagementApi = self.server.api  # type: ignore[assignment]
        _, marker, raw_id = self.path.partition("/@connections/")
        connection_id = unquote(raw_id)
        answer = int(api.next_answer(connection_id)) if marker else 404
        status = 204 if answer == 200 else answer
        posted = len(api.requests_for(connection_id))
        with api.lock:
            api.deletes.append((connection_id, status, posted))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()


class ClosingManagementApi(FakeManagementApi):
    def __init__(self, stage: str = "") -> None:
        super().__init__(stage)
        # (connection id, status, POSTs it had received before) of every DELETE
        self.deletes: list[tuple[str, int, int]] = []
        self._server.RequestHandlerClass = _ClosingHandler

    def closed(self) -> list[str]:
        with self.lock:
            return [connection_id for connection_id, status, _ in self.deletes if status < 300]


@pytest.fixture
def api() -> Iterator[ClosingManagementApi]:
    server = ClosingManagementApi(stage="/live")
    yield server
    server.stop()


@pytest.fixture
def store(aws: Any) -> ConnectionStore:
    tables = aws.list_tables()["TableNames"]
    if CONNECTIONS not in tables:  # until template.yaml has ConnectionsTable: the same schema by hand
        aws.create_table(
            TableName=CONNECTIONS,
            AttributeDefinitions=[
                {"AttributeName": name, "AttributeType": "S"} for name in ("pk", "sk", "channel", "connectionId")
            ],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": "by-channel",
                    "KeySchema": [
                        {"AttributeName": "channel", "KeyType": "HASH"},
                        {"AttributeName": "connectionId", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "KEYS_ONLY"},
                }
            ],
            BillingMode="PAY_PER_REQUEST",
        )
    return ConnectionStore(aws, CONNECTIONS)


CURSOR_SECRET = "fanout-test-secret-long-enough-for-hmac"


def cursor_of(channel: str, seq: int) -> str:
    from realtime_transport.cursor import CursorCodec

    return CursorCodec(CURSOR_SECRET.encode()).encode(f"transport#{channel}", seq)


@pytest.fixture
def fanout(aws: Any, store: ConnectionStore, api: FakeManagementApi, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The handler module, cold-started against the fake management API (fast retries)."""
    from realtime_transport.settings import get_settings

    get_settings.cache_clear()
    monkeypatch.setenv("WEBSOCKET_MANAGEMENT_URL", api.url)
    monkeypatch.setenv("REALTIME_TOKEN_SECRET", CURSOR_SECRET)
    module = load_function("fanout")
    wired = module.fanout.pusher
    assert isinstance(wired, Pusher) and wired.endpoint == api.url  # the settings' endpoint
    module.fanout.pusher = Pusher(api.url, backoff_base=0.002, backoff_cap=0.01, max_attempts=3, max_concurrency=8)
    yield module
    module.fanout.pusher.close()
    wired.close()
    get_settings.cache_clear()


class FanoutContext(LambdaContext):
    """A fresh invocation of FanoutFunction: its whole Timeout from template.yaml is left."""

    def get_remaining_time_in_millis(self) -> int:
        from realtime_devstack import template

        return int(template.function_property(template.load_template(), "FanoutFunction", "Timeout")) * 1000


def invoke(module: Any, event: dict[str, Any]) -> list[str]:
    """The sequence numbers in batchItemFailures."""
    response = module.lambda_handler(event, FanoutContext())
    return [failure["itemIdentifier"] for failure in response["batchItemFailures"]]


FAR = 2_000_000_000  # a token expiry far ahead (2033)


def connect(store: ConnectionStore, connection_id: str, *channel_keys: str, exp: int = FAR) -> None:
    """A connection whose token expires at `exp`, subscribed under it (the index carries `exp` too)."""
    store.put_connection(Connection(connection_id, "user", ("feed_*",), exp, 1_700_000_000_000))
    for key in channel_keys:
        store.subscribe(connection_id, key, token_exp=exp)


def frames(api: FakeManagementApi, connection_id: str) -> list[dict[str, Any]]:
    return [json.loads(body) for body in api.delivered(connection_id)]


def seqs(api: FakeManagementApi, connection_id: str, channel: str | None = None) -> list[int]:
    """The seqs delivered, in order, whether one per `event` frame or several in an `events` frame."""
    return [
        event["seq"]
        for f in frames(api, connection_id)
        if channel is None or f["channel"] == channel
        for event in (f["events"] if f["type"] == "events" else [f["event"]])
    ]


def record(channel: str, seq: int, *, name: str = "INSERT", kind: str = "event", number: int | None = None) -> dict:
    """A stream record shaped like the sample's, for another channel / seq / event name / kind."""
    base = copy.deepcopy(sample_event("dynamodb_stream_insert")["Records"][0])
    envelope = json.loads(base["dynamodb"]["NewImage"]["event"]["S"])
    envelope.update(channel=channel, seq=seq, id=f"01ID{channel}{seq:04d}")
    image = {
        "pk": {"S": f"transport#{channel}"},
        "sk": {"N": str(seq)},
        "kind": {"S": kind},
        "allocatedAt": {"N": "1795838400012"},
        "ttl": {"N": "1796443200"},
    }
    if kind == "event":
        image["event"] = {"S": json.dumps(envelope, separators=(",", ":"))}
    base["eventName"] = name
    base["dynamodb"]["Keys"] = {"pk": image["pk"], "sk": image["sk"]}
    base["dynamodb"]["NewImage"] = image
    base["dynamodb"]["SequenceNumber"] = str(number if number is not None else 10**20 + seq)
    return base


# --- the sample event ------------------------------------------------------------------------------------


def test_sample_event_reaches_every_subscriber_in_order(fanout: Any, store: ConnectionStore, api: Any) -> None:
    connect(store, "a", FEED_42)
    connect(store, "b", FEED_42)
    connect(store, "c", FEED_7)
    connect(store, "both", FEED_42, FEED_7)
    connect(store, "idle")  # connected, subscribed to nothing
    event = sample_event("dynamodb_stream_insert")

    assert invoke(fanout, event) == []

    stored = [json.loads(r["dynamodb"]["NewImage"]["event"]["S"]) for r in event["Records"]]
    # A channel's events of one batch travel together (`events`), with the last one's cursor: a
    # client resumes from it. One event alone is an `event` frame with its own cursor.
    assert frames(api, "a") == [
        {"type": "events", "channel": "feed_42", "events": stored[:2], "cursor": cursor_of("feed_42", 18)},
    ]
    assert seqs(api, "b") == [17, 18]
    assert frames(api, "c") == [
        {"type": "event", "channel": "feed_7", "event": stored[2], "cursor": cursor_of("feed_7", 3)}
    ]
    assert seqs(api, "both", "feed_42") == [17, 18] and seqs(api, "both", "feed_7") == [3]
    assert api.requests_for("idle") == []
    assert {r.path.rpartition("/")[2] for r in api.received} == {"a", "b", "c", "both"}
    assert all(r.path.startswith("/live/@connections/") for r in api.received)


def test_events_of_a_channel_go_out_in_seq_order_whatever_the_record_order(
    fanout: Any, store: ConnectionStore, api: Any
) -> None:
    connect(store, "a", FEED_42)
    records = [record("feed_42", 5), record("feed_42", 3), record("feed_42", 6), record("feed_42", 4)]
    records.append(record("feed_42", 4))  # a repeat is sent once

    assert invoke(fanout, {"Records": records}) == []
    assert seqs(api, "a") == [3, 4, 5, 6]


def test_only_inserts_of_event_items_are_delivered(fanout: Any, store: ConnectionStore, api: Any) -> None:
    connect(store, "a", FEED_42)
    ignored = [
        record("feed_42", 1, name="MODIFY"),
        record("feed_42", 2, name="REMOVE"),
        record("feed_42", 0, kind="head"),
        record("feed_42", 3, kind="tombstone"),
        record("feed_42", 4, kind="idem"),
    ]
    del ignored[1]["dynamodb"]["NewImage"]  # a REMOVE carries no new image

    assert invoke(fanout, {"Records": ignored}) == []
    assert api.received == []

    assert invoke(fanout, {"Records": [*ignored, record("feed_42", 5)]}) == []
    assert seqs(api, "a") == [5]


def test_an_item_whose_envelope_is_not_valid_json_is_never_spliced_into_a_frame(
    fanout: Any, store: ConnectionStore, api: Any
) -> None:
    connect(store, "a", FEED_42)
    corrupt = record("feed_42", 1)
    corrupt["dynamodb"]["NewImage"]["event"] = {"S": '{"id": "x", "seq": 1, '}  # cut short
    not_an_envelope = record("feed_42", 2)
    not_an_envelope["dynamodb"]["NewImage"]["event"] = {"S": "[1, 2]"}
    assert invoke(fanout, {"Records": [corrupt, not_an_envelope, record("feed_42", 3)]}) == []
    assert seqs(api, "a") == [3], "the well-formed event still goes out, the others never"
    for frame in api.delivered("a"):
        json.loads(frame)


# --- connections that cannot be reached ------------------------------------------------------------------


def test_a_gone_connection_is_deleted_with_its_subscriptions(fanout: Any, store: ConnectionStore, api: Any) -> None:
    connect(store, "gone", FEED_42, FEED_7)
    connect(store, "alive", FEED_42, FEED_7)
    api.script = {"gone": [410]}

    assert invoke(fanout, sample_event("dynamodb_stream_insert")) == []

    assert len(api.requests_for("gone")) == 1  # its other frames were skipped
    assert store.connection("gone") is None and store.subscriptions("gone") == []
    assert [page for key in (FEED_42, FEED_7) for page in store.subscribers(key)] == [["alive"], ["alive"]]
    assert sorted(seqs(api, "alive")) == [3, 17, 18]
    assert store.connection("alive") is not None


def test_transient_failures_are_retried_and_never_fail_the_batch(fanout: Any, store: ConnectionStore, api: Any) -> None:
    for connection_id in ("throttled", "flaky", "broken", "fine"):
        connect(store, connection_id, FEED_42)
    api.script = {"throttled": [429, 200, 429, 200], "flaky": [500, 502, 200], "broken": [500] * 20}

    assert invoke(fanout, sample_event("dynamodb_stream_insert")) == []

    for connection_id in ("throttled", "flaky", "fine"):
        assert seqs(api, connection_id) == [17, 18]
    assert len(api.requests_for("broken")) == 3  # given up after the bounded attempts, for it alone
    assert store.connection("broken") is not None  # not gone: kept, its client fills the gap from history
    assert len(api.requests_for("fine")) == 1  # one message of both events: nobody else got anything twice


def test_an_unresponsive_endpoint_cannot_run_the_invocation_out_of_time(
    fanout: Any, store: ConnectionStore, api: Any
) -> None:
    class ShortContext(LambdaContext):
        def get_remaining_time_in_millis(self) -> int:
            return 600

    for n in range(4):
        connect(store, f"c{n}", FEED_42)
    api.script = {f"c{n}": ["hang"] * 5 for n in range(4)}  # each answer takes 3 s
    started = time.monotonic()

    response = fanout.lambda_handler(sample_event("dynamodb_stream_insert"), ShortContext())

    assert time.monotonic() - started < 2.5  # not 3 s a connection, nor the 5 s timeout
    assert response["batchItemFailures"] == []  # given up per connection, not a failed batch


def test_metrics_count_deliveries_failures_gone_and_latency(fanout: Any, store: ConnectionStore, api: Any) -> None:
    from realtime_transport.observability import metrics

    connect(store, "ok", FEED_42)
    connect(store, "gone", FEED_42)
    connect(store, "broken", FEED_7)
    api.script = {"gone": [410], "broken": [500] * 10}
    metrics.clear_metrics()

    fanout.fanout.deliver(sample_event("dynamodb_stream_insert")["Records"])

    values = {name: metric["Value"] for name, metric in metrics.metric_set.items()}
    metrics.clear_metrics()
    # "ok" gets feed_42's two events in one message: one delivery.
    assert values["Deliveries"] == [1.0] and values["GoneConnections"] == [1.0]
    assert values["DeliveryFailures"] == [1.0]
    assert len(values["FanoutLatency"]) == 3 and all(v > 0 for v in values["FanoutLatency"])


# --- reading subscribers -------------------------------------------------------------------------------


def _channel_of(index_key: str) -> str:
    """The channel key of a by-channel partition key value (a bucket's, or the bare legacy one)."""
    head, _, tail = index_key.rpartition("#")
    return head if tail.isdigit() else index_key


def test_an_unreadable_channel_fails_only_its_own_records(
    fanout: Any, store: ConnectionStore, api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    connect(store, "a", FEED_42, FEED_7)
    real = ConnectionStore.keys_entries

    def flaky(self: ConnectionStore, index_keys: list[str], page_size: int = 1000) -> list[list[Subscriber]]:
        if any(_channel_of(key) == FEED_7 for key in index_keys):
            raise StoreUnavailable("connections table: throttled")
        return real(self, index_keys, page_size)

    monkeypatch.setattr(ConnectionStore, "keys_entries", flaky)
    event = sample_event("dynamodb_stream_insert")

    assert invoke(fanout, event) == [event["Records"][2]["dynamodb"]["SequenceNumber"]]
    assert seqs(api, "a", "feed_42") == [17, 18] and seqs(api, "a", "feed_7") == []


def test_a_batch_whose_every_lookup_fails_lists_every_record(
    fanout: Any, store: ConnectionStore, api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(self: ConnectionStore, index_keys: list[str], page_size: int = 1000) -> list[list[Subscriber]]:
        raise StoreUnavailable("connections table: unavailable")

    monkeypatch.setattr(ConnectionStore, "keys_entries", down)
    event = sample_event("dynamodb_stream_insert")
    event["Records"].insert(0, record("feed_42", 1, name="MODIFY"))  # ignored: never a failure

    failures = invoke(fanout, event)

    assert failures == [r["dynamodb"]["SequenceNumber"] for r in event["Records"][1:]]
    assert api.received == []


def test_each_channel_is_looked_up_once_per_batch_across_all_pages(
    fanout: Any, store: ConnectionStore, api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    subscribers = [f"s{n}" for n in range(5)]
    for connection_id in subscribers:
        connect(store, connection_id, FEED_42)
    connect(store, "other", FEED_7)
    calls: Counter[str] = Counter()
    real = ConnectionStore.keys_entries

    def counted(self: ConnectionStore, index_keys: list[str], page_size: int = 1000) -> list[list[Subscriber]]:
        calls.update({_channel_of(key) for key in index_keys})
        return real(self, index_keys, page_size)

    monkeypatch.setattr(ConnectionStore, "keys_entries", counted)
    queries: list[dict[str, Any]] = []
    client = fanout.fanout.connections._client
    client.meta.events.register("provide-client-params.dynamodb.Query", lambda params, **_: queries.append(params))
    fanout.fanout._page_size = 2  # 5 subscribers: 3 pages

    records = [record("feed_42", n) for n in (1, 2, 3)] + [record("feed_7", n) for n in (1, 2)]
    assert invoke(fanout, {"Records": records}) == []

    assert calls == {FEED_42: 1, FEED_7: 1}
    # Every bucket of each channel (and the bare key of subscriptions older than the buckets), each
    # paged: a page of `Limit` items comes with a LastEvaluatedKey, so n items take n // 2 + 1 reads.
    by_key = Counter(q["ExpressionAttributeValues"][":c"]["S"] for q in queries if q.get("IndexName"))
    in_bucket = Counter(f"{FEED_42}#{subscriber_bucket(c)}" for c in subscribers)
    in_bucket[f"{FEED_7}#{subscriber_bucket('other')}"] += 1
    expected = {key: in_bucket[key] // 2 + 1 for key in [*bucket_keys(FEED_42), *bucket_keys(FEED_7)]}
    assert by_key == expected
    for connection_id in subscribers:
        assert seqs(api, connection_id) == [1, 2, 3]
    assert seqs(api, "other") == [1, 2]


def test_an_empty_batch_does_nothing(fanout: Any, api: Any) -> None:
    result = fanout.fanout.deliver([])
    assert result.records == 0 and result.channels == {} and result.report.delivered == 0
    assert api.received == []


# --- gone connections and presence --------------------------------------------------------------------


def test_a_gone_room_member_enters_its_grace_period_and_its_connection_is_deleted(
    fanout: Any, store: ConnectionStore, api: Any
) -> None:
    from realtime_transport.rooms.presence import Presence

    registry = fanout.fanout.presence  # wired by Fanout.from_settings
    presence = Presence(registry.realtime, "R")
    connect(store, "gone", FEED_42)
    connect(store, "alive", FEED_42)
    presence.join("gone", "alice")
    presence.join("alive", "bob")
    api.script = {"gone": [410]}

    assert invoke(fanout, sample_event("dynamodb_stream_insert")) == []

    assert store.connection("gone") is None and store.subscriptions("gone") == []
    # Still listed (its grace period: a reload comes back without a leave), with no connection left.
    alice = presence.member("alice")
    assert alice is not None and alice.connections == 0
    assert sorted(member.member_id for member in presence.members().items) == ["alice", "bob"]
    # The grace period is on the sweeper's index: once it is over, the sweeper deletes alice (reason
    # `disconnected`, as stored), and nobody else.
    grace = registry.realtime.settings.presence_grace_seconds
    report = registry.sweep(time.time() + grace + 1, lambda connection_id: time.time())
    assert report.deleted == [("R", "alice")]
    assert presence.member("alice") is None and presence.member("bob") is not None
    assert sorted(seqs(api, "alive")) == [17, 18]  # feed_42's events


class _Presence:
    """Records when connection_gone runs (was the connection still stored?); fails if told to."""

    def __init__(self, store: ConnectionStore, error: Exception | None = None) -> None:
        self.store = store
        self.error = error
        self.calls: list[tuple[str, bool]] = []

    def connection_gone(self, connection_id: str) -> list[str]:
        self.calls.append((connection_id, self.store.connection(connection_id) is not None))
        if self.error is not None:
            raise self.error
        return ["R"]


def test_a_gone_connection_leaves_its_rooms_before_it_is_deleted(fanout: Any, store: ConnectionStore, api: Any) -> None:
    fanout.fanout.presence = spy = _Presence(store)
    connect(store, "gone", FEED_42)
    api.script = {"gone": [410]}

    event = sample_event("dynamodb_stream_insert")
    result = fanout.fanout.deliver(event["Records"])

    assert spy.calls == [("gone", True)]  # it left while its items (memberships included) were still there
    assert result.deleted == ["gone"] and result.left_rooms == {"gone": ["R"]}
    assert store.connection("gone") is None


def test_a_failure_to_leave_rooms_never_fails_the_batch_and_keeps_the_connection(
    fanout: Any, store: ConnectionStore, api: Any
) -> None:
    fanout.fanout.presence = spy = _Presence(store, StoreUnavailable("connections table: throttled"))
    connect(store, "gone", FEED_42, FEED_7)
    connect(store, "alive", FEED_42, FEED_7)
    api.script = {"gone": [410]}

    assert invoke(fanout, sample_event("dynamodb_stream_insert")) == []

    assert spy.calls == [("gone", True)]
    # Kept: deleting it would strand its memberships; it answers 410 again next time (or the sweeper
    # finds its leases over) and leaves then.
    assert store.connection("gone") is not None
    assert store.subscriptions("gone") != []
    assert sorted(seqs(api, "alive")) == [3, 17, 18]

    api.script = {"gone": [410]}
    spy.error = None
    assert invoke(fanout, sample_event("dynamodb_stream_insert")) == []
    assert spy.calls[-1] == ("gone", True) and store.connection("gone") is None


# --- token expiry ---------------------------------------------------------------------------------------

EXPIRED_FRAME = {
    "type": "error",
    "code": "token_expired",
    "message": "token has expired; renew it (auth) or reconnect with a new one",
}


def past() -> int:
    return int(time.time()) - 60  # beyond the tokens' 5 s leeway


def test_a_connection_whose_token_expired_gets_no_events_and_is_closed_with_the_reason(
    fanout: Any, store: ConnectionStore, api: ClosingManagementApi
) -> None:
    connect(store, "expired", FEED_42, FEED_7, exp=past())
    connect(store, "valid", FEED_42, FEED_7)

    result = fanout.fanout.deliver(sample_event("dynamodb_stream_insert")["Records"])

    assert sorted(seqs(api, "valid")) == [3, 17, 18]
    assert frames(api, "expired") == [EXPIRED_FRAME]  # once, whatever the number of its channels
    assert api.deletes == [("expired", 204, 1)], "closed after the error frame arrived"
    assert result.expired == ["expired"] and result.closing.closed == ["expired"]
    assert "expired" not in {c for batch in result.channels.values() for c in batch.subscribers}
    # API Gateway runs $disconnect after the DELETE: that cleans up, not the fan-out
    assert store.connection("expired") is not None and result.deleted == []


def test_a_stale_index_entry_of_a_renewed_token_is_confirmed_and_delivered_to(
    fanout: Any, store: ConnectionStore, api: ClosingManagementApi
) -> None:
    connect(store, "renewed", FEED_42, exp=past())  # subscribed under the old token
    store.put_connection(Connection("renewed", "user", ("feed_*",), FAR, 1_700_000_000_000))  # auth since

    result = fanout.fanout.deliver(sample_event("dynamodb_stream_insert")["Records"])

    assert seqs(api, "renewed") == [17, 18]
    assert api.deletes == [] and result.expired == [] and result.renewed == ["renewed"]


def test_a_subscription_without_an_expiry_is_checked_against_its_connection(
    fanout: Any, store: ConnectionStore, api: ClosingManagementApi
) -> None:
    # Written before subscriptions carried tokenExp (or by a caller that gave none).
    for connection_id, exp in (("old-valid", FAR), ("old-expired", past())):
        store.put_connection(Connection(connection_id, "user", ("feed_*",), exp, 1_700_000_000_000))
        store.subscribe(connection_id, FEED_42)
    store.subscribe("no-item", FEED_42)  # its connection item is gone: nothing may be authorised on it

    result = fanout.fanout.deliver(sample_event("dynamodb_stream_insert")["Records"])

    assert seqs(api, "old-valid") == [17, 18]
    assert result.renewed == ["old-valid"]
    assert sorted(result.expired) == ["no-item", "old-expired"] and sorted(api.closed()) == ["no-item", "old-expired"]
    assert frames(api, "old-expired") == [EXPIRED_FRAME] and frames(api, "no-item") == [EXPIRED_FRAME]


def test_an_unreadable_connection_item_is_not_delivered_to_nor_closed(
    fanout: Any, store: ConnectionStore, api: ClosingManagementApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    connect(store, "unsure", FEED_42, exp=past())
    connect(store, "valid", FEED_42)
    real = ConnectionStore.connection

    def flaky(self: ConnectionStore, connection_id: str) -> Connection | None:
        if connection_id == "unsure":
            raise StoreUnavailable("connections table: throttled")
        return real(self, connection_id)

    monkeypatch.setattr(ConnectionStore, "connection", flaky)

    assert invoke(fanout, sample_event("dynamodb_stream_insert")) == [], "never fails the batch"
    assert api.requests_for("unsure") == [] and api.deletes == []
    assert seqs(api, "valid") == [17, 18]


def test_an_expired_connection_already_gone_is_forgotten(
    fanout: Any, store: ConnectionStore, api: ClosingManagementApi
) -> None:
    connect(store, "left-long-ago", FEED_42, exp=past())
    api.script = {"left-long-ago": [410]}  # the farewell finds it gone: no DELETE

    result = fanout.fanout.deliver(sample_event("dynamodb_stream_insert")["Records"])

    assert api.deletes == [] and result.closing.gone == ["left-long-ago"]
    assert result.deleted == ["left-long-ago"]
    assert store.connection("left-long-ago") is None and store.subscriptions("left-long-ago") == []


def test_a_close_that_fails_is_tried_again_with_the_next_batch(
    fanout: Any, store: ConnectionStore, api: ClosingManagementApi
) -> None:
    connect(store, "expired", FEED_42, exp=past())
    api.script = {"expired": [200, 403]}  # the farewell arrives, the DELETE is refused

    first = fanout.fanout.deliver([record("feed_42", 1)])
    assert first.closing.failed == ["expired"] and "403" in first.closing.errors["expired"]

    second = fanout.fanout.deliver([record("feed_42", 2)])
    assert second.closing.closed == ["expired"]
    assert frames(api, "expired") == [EXPIRED_FRAME, EXPIRED_FRAME], "no event, the reason twice"


def test_after_auth_the_fanout_delivers_past_the_old_expiry(
    fanout: Any, store: ConnectionStore, api: ClosingManagementApi, settings_factory: Any
) -> None:
    from realtime_transport import Realtime, tokens
    from realtime_transport.live import LiveService

    secret = CURSOR_SECRET.encode()
    replies: list[tuple[str, dict[str, Any]]] = []

    class Replies:
        def send(self, connection_id: str, data: bytes) -> bool:
            replies.append((connection_id, json.loads(data)))
            return True

    live = LiveService(Realtime(settings=settings_factory(), secret=secret), Replies())
    for connection_id in ("renews", "does-not"):
        live.connect(connection_id, tokens.issue(secret, sub="u", channels=["feed_*"], ttl_seconds=60))
        live.handle(connection_id, json.dumps({"action": "subscribe", "channel": "feed_42"}))
    renewal = tokens.issue(secret, sub="u", channels=["feed_*"], ttl_seconds=3600)
    live.handle("renews", json.dumps({"action": "auth", "token": renewal}))
    assert replies[-1] == ("renews", {"type": "authed", "exp": tokens.verify(secret, renewal).exp})

    fanout.fanout.clock = lambda: time.time() + 600  # past the first tokens' expiry, before the renewal's
    result = fanout.fanout.deliver(sample_event("dynamodb_stream_insert")["Records"])

    assert seqs(api, "renews") == [17, 18]
    assert result.renewed == [], "the subscription carries the new expiry: not even a read"
    assert frames(api, "does-not") == [EXPIRED_FRAME] and api.closed() == ["does-not"]
