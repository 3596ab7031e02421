"""realtime_devstack.moto_dynamodb: moto's DynamoDB, locked and with O(touched items) transactions.

Parity with unpatched moto is checked against a fresh interpreter that runs the same scenario
without install() (this file doubles as that script: ``python test_moto_dynamodb.py --unpatched``).
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.server import ThreadedMotoServer

from realtime_devstack import moto_dynamodb
from realtime_devstack.aws_env import LOCAL_AWS_ENV

FAKE_ENV = LOCAL_AWS_ENV
REGION = "us-east-1"


@pytest.fixture(autouse=True)
def _fake_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in FAKE_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    moto_dynamodb.install()


@pytest.fixture
def aws() -> Iterator[None]:
    with mock_aws():
        yield


# --- helpers ---------------------------------------------------------------------------------------


def client(service: str, **kwargs: Any) -> Any:
    """An untyped boto3 client: the tests pass moto plain dicts, not the stubs' TypedDicts."""
    return boto3.client(service, region_name=REGION, **kwargs)  # type: ignore[call-overload]


def create_events_table(ddb: Any, name: str = "events") -> None:
    """(channel, seq) like the real events table, with a NEW_AND_OLD_IMAGES stream."""
    ddb.create_table(
        TableName=name,
        KeySchema=[
            {"AttributeName": "channel", "KeyType": "HASH"},
            {"AttributeName": "seq", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "channel", "AttributeType": "S"},
            {"AttributeName": "seq", "AttributeType": "N"},
        ],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )


def create_flat_table(ddb: Any, name: str = "flat") -> None:
    ddb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )


def ev(channel: str, seq: int, **attrs: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"channel": {"S": channel}, "seq": {"N": str(seq)}}
    item.update(attrs)
    return item


def put_new(table: str, item: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"Put": {"TableName": table, "Item": item, "ConditionExpression": "attribute_not_exists(seq)", **extra}}


def stream_records(ddb_streams: Any, ddb: Any, table: str) -> list[dict[str, Any]]:
    """All records of a table's stream, from the start, minus the fields that are random."""
    arn = ddb.describe_table(TableName=table)["Table"]["LatestStreamArn"]
    shard = ddb_streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    start = ddb_streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    iterator, records = start["ShardIterator"], []
    while True:
        page = ddb_streams.get_records(ShardIterator=iterator, Limit=1000)
        if not page["Records"]:
            break
        records += page["Records"]
        iterator = page["NextShardIterator"]
    return [
        {
            "eventName": r["eventName"],
            "SequenceNumber": r["dynamodb"]["SequenceNumber"],
            "Keys": r["dynamodb"]["Keys"],
            "NewImage": r["dynamodb"].get("NewImage"),
            "OldImage": r["dynamodb"].get("OldImage"),
        }
        for r in records
    ]


def table_state(ddb: Any, table: str) -> list[dict[str, Any]]:
    items = ddb.scan(TableName=table, ConsistentRead=True)["Items"]
    return sorted(items, key=lambda i: json.dumps(i, sort_keys=True))


def outcome(call: Callable[[], Any]) -> dict[str, Any]:
    try:
        call()
    except ClientError as e:
        return {
            "Code": e.response["Error"]["Code"],
            "Message": e.response["Error"]["Message"],
            "CancellationReasons": e.response.get("CancellationReasons"),
        }
    return {"Code": None}


# --- parity scenario (runs here patched, and in a subprocess unpatched) ----------------------------

BIG = "x" * 410_000  # over moto's 405,000-byte item limit


def parity_cases() -> dict[str, list[dict[str, Any]]]:
    one = {":one": {"N": "1"}}
    return {
        "all_pass": [
            put_new("events", ev("a", 10, v={"N": "0"})),
            {
                "Update": {
                    "TableName": "events",
                    "Key": ev("a", 1),
                    "UpdateExpression": "SET v = v + :one",
                    "ConditionExpression": "attribute_exists(seq)",
                    "ExpressionAttributeValues": one,
                }
            },
            {"Delete": {"TableName": "events", "Key": ev("a", 2), "ConditionExpression": "attribute_exists(seq)"}},
            {
                "ConditionCheck": {
                    "TableName": "flat",
                    "Key": {"pk": {"S": "x1"}},
                    "ConditionExpression": "n = :one",
                    "ExpressionAttributeValues": one,
                }
            },
            {"Put": {"TableName": "flat", "Item": {"pk": {"S": "x9"}, "n": {"N": "9"}}}},
        ],
        "second_of_three_fails_all_old": [
            put_new("events", ev("b", 1, v={"N": "1"})),
            put_new("events", ev("a", 3, v={"N": "99"}), ReturnValuesOnConditionCheckFailure="ALL_OLD"),
            {
                "Update": {
                    "TableName": "events",
                    "Key": ev("a", 1),
                    "UpdateExpression": "SET v = :one",
                    "ExpressionAttributeValues": one,
                }
            },
        ],
        "delete_fails_without_all_old": [
            {
                "Delete": {
                    "TableName": "flat",
                    "Key": {"pk": {"S": "x2"}},
                    "ConditionExpression": "n = :one",
                    "ExpressionAttributeValues": one,
                }
            },
            {"Put": {"TableName": "flat", "Item": {"pk": {"S": "x7"}}}},
        ],
        "condition_checks_fail": [
            {
                "ConditionCheck": {
                    "TableName": "flat",
                    "Key": {"pk": {"S": "x1"}},
                    "ConditionExpression": "n = :one",
                    "ExpressionAttributeValues": one,
                }
            },
            {
                "ConditionCheck": {
                    "TableName": "flat",
                    "Key": {"pk": {"S": "x2"}},
                    "ConditionExpression": "attribute_not_exists(pk)",
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            },
            {
                "ConditionCheck": {
                    "TableName": "flat",
                    "Key": {"pk": {"S": "nope"}},
                    "ConditionExpression": "attribute_exists(pk)",
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            },
            {
                "ConditionCheck": {
                    "TableName": "events",
                    "Key": ev("a", 3),
                    "ConditionExpression": "v = :one",
                    "ExpressionAttributeValues": one,
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            },
        ],
        "duplicate_item": [
            put_new("events", ev("c", 1)),
            {
                "Update": {
                    "TableName": "events",
                    "Key": ev("c", 1),
                    "UpdateExpression": "SET v = :one",
                    "ExpressionAttributeValues": one,
                }
            },
        ],
        "item_too_large": [
            put_new("events", ev("d", 1)),
            {"Put": {"TableName": "flat", "Item": {"pk": {"S": "big"}, "blob": {"S": BIG}}}},
        ],
        "condition_fail_then_too_large": [
            put_new("events", ev("a", 1)),
            {"Put": {"TableName": "flat", "Item": {"pk": {"S": "big"}, "blob": {"S": BIG}}}},
        ],
        "update_of_missing_attribute": [
            put_new("events", ev("e", 1)),
            {
                "Update": {
                    "TableName": "flat",
                    "Key": {"pk": {"S": "x1"}},
                    "UpdateExpression": "SET n = nothere + :one",
                    "ExpressionAttributeValues": one,
                }
            },
        ],
        "number_overflow": [
            put_new("events", ev("f", 1)),
            {"Put": {"TableName": "flat", "Item": {"pk": {"S": "x8"}, "n": {"N": "1E+200"}}}},
        ],
        "unknown_table_condition_check": [
            put_new("events", ev("g", 1)),
            {
                "ConditionCheck": {
                    "TableName": "nosuch",
                    "Key": {"pk": {"S": "x"}},
                    "ConditionExpression": "attribute_exists(pk)",
                }
            },
        ],
        "all_pass_again": [
            put_new("events", ev("a", 11)),
            {"Update": {"TableName": "flat", "Key": {"pk": {"S": "x2"}}, "UpdateExpression": "REMOVE n"}},
        ],
    }


def run_parity_scenario() -> dict[str, Any]:
    """Seed two tables, run every case in order; report each outcome, the final state and streams."""
    with mock_aws():
        ddb = client("dynamodb")
        streams = client("dynamodbstreams")
        create_events_table(ddb)
        create_flat_table(ddb)
        for seq in (1, 2, 3):
            ddb.put_item(TableName="events", Item=ev("a", seq, v={"N": str(seq)}))
        for pk, n in (("x1", "1"), ("x2", "2")):
            ddb.put_item(TableName="flat", Item={"pk": {"S": pk}, "n": {"N": n}})
        outcomes = {
            name: outcome(functools.partial(ddb.transact_write_items, TransactItems=items))
            for name, items in parity_cases().items()
        }
        # a failing UpdateItem of a new item: moto keeps the keys-only stub it created, and its INSERT
        outcomes["update_item_too_large"] = outcome(
            functools.partial(
                ddb.update_item,
                TableName="events",
                Key=ev("h", 1),
                UpdateExpression="SET bigattr = :b",
                ExpressionAttributeValues={":b": {"S": BIG}},
            )
        )
        return {
            "outcomes": outcomes,
            "state": {t: table_state(ddb, t) for t in ("events", "flat")},
            "streams": {t: stream_records(streams, ddb, t) for t in ("events", "flat")},
        }


@pytest.fixture(scope="module")
def unpatched_result() -> dict[str, Any]:
    env = {**os.environ, **FAKE_ENV}
    proc = subprocess.run(  # noqa: S603 - our own interpreter and file
        [sys.executable, __file__, "--unpatched"], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_cancellation_reasons_match_unpatched_moto(unpatched_result: dict[str, Any]) -> None:
    patched = run_parity_scenario()
    assert patched["outcomes"] == unpatched_result["outcomes"]
    # the cases really cover what they claim to
    out = patched["outcomes"]
    assert out["all_pass"] == {"Code": None}
    reasons = out["second_of_three_fails_all_old"]["CancellationReasons"]
    assert [r["Code"] for r in reasons] == ["None", "ConditionalCheckFailed", "None"]
    assert reasons[1]["Item"] == {"channel": {"S": "a"}, "seq": {"N": "3"}, "v": {"N": "3"}}
    assert [r["Code"] for r in out["condition_checks_fail"]["CancellationReasons"]] == ["None"] + [
        "ConditionalCheckFailed"
    ] * 3
    assert "Item" not in out["condition_checks_fail"]["CancellationReasons"][2]  # missing item: no ALL_OLD
    assert out["duplicate_item"]["Code"] == "ValidationException"
    assert "multiple operations on one item" in out["duplicate_item"]["Message"]
    assert out["item_too_large"]["Code"] == "ValidationException"
    assert out["condition_fail_then_too_large"]["Code"] == "ValidationException"
    assert "attribute that does not exist" in out["update_of_missing_attribute"]["Message"]
    assert [r["Code"] for r in out["number_overflow"]["CancellationReasons"]] == ["None", "ValidationException"]
    reasons = out["unknown_table_condition_check"]["CancellationReasons"]
    assert [r["Code"] for r in reasons] == ["None", "ResourceNotFoundException"]
    assert out["update_item_too_large"]["Message"] == "Item size to update has exceeded the maximum allowed size"


def test_final_state_and_stream_records_match_unpatched_moto(unpatched_result: dict[str, Any]) -> None:
    patched = run_parity_scenario()
    assert patched["state"] == unpatched_result["state"]
    assert patched["streams"] == unpatched_result["streams"]
    assert len(patched["streams"]["events"]) > 3  # the seed, plus the applied transactions
    # moto keeps the keys-only stub of the failed UpdateItem; its INSERT must be there too
    assert {"channel": {"S": "h"}, "seq": {"N": "1"}} in patched["state"]["events"]
    assert patched["streams"]["events"][-1]["NewImage"] == {"channel": {"S": "h"}, "seq": {"N": "1"}}


# --- behaviour -------------------------------------------------------------------------------------


def test_two_put_transaction_emits_two_inserts_and_cancelled_one_nothing(aws: None) -> None:
    ddb = client("dynamodb")
    streams = client("dynamodbstreams")
    create_events_table(ddb)
    ddb.put_item(TableName="events", Item=ev("a", 1, v={"N": "1"}))

    ddb.transact_write_items(TransactItems=[put_new("events", ev("a", 2)), put_new("events", ev("a", 3))])
    records = stream_records(streams, ddb, "events")
    assert [r["eventName"] for r in records] == ["INSERT", "INSERT", "INSERT"]
    assert [r["Keys"]["seq"]["N"] for r in records[1:]] == ["2", "3"]
    before = table_state(ddb, "events")

    # the update of a-1 comes first and passes; the put of a-2 fails: nothing may be applied
    cancelled = [
        {
            "Update": {
                "TableName": "events",
                "Key": ev("a", 1),
                "UpdateExpression": "SET v = :v",
                "ExpressionAttributeValues": {":v": {"N": "42"}},
            }
        },
        put_new("events", ev("a", 4)),
        put_new("events", ev("a", 2)),
    ]
    with pytest.raises(ClientError) as err:
        ddb.transact_write_items(TransactItems=cancelled)
    assert err.value.response["Error"]["Code"] == "TransactionCanceledException"
    assert [r["Code"] for r in err.value.response["CancellationReasons"]] == ["None", "None", "ConditionalCheckFailed"]
    assert table_state(ddb, "events") == before
    assert stream_records(streams, ddb, "events") == records


def test_stream_iterator_survives_a_cancelled_transaction(aws: None) -> None:
    """Unpatched moto swaps the Table for a deep copy on rollback: old shard iterators go deaf."""
    ddb = client("dynamodb")
    streams = client("dynamodbstreams")
    create_events_table(ddb)
    ddb.put_item(TableName="events", Item=ev("a", 1))
    arn = ddb.describe_table(TableName="events")["Table"]["LatestStreamArn"]
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="LATEST")["ShardIterator"]

    with pytest.raises(ClientError):
        ddb.transact_write_items(TransactItems=[put_new("events", ev("a", 1))])
    ddb.transact_write_items(TransactItems=[put_new("events", ev("a", 2))])

    got = streams.get_records(ShardIterator=iterator)["Records"]
    assert [(r["eventName"], r["dynamodb"]["Keys"]["seq"]["N"]) for r in got] == [("INSERT", "2")]


def test_update_item_emits_one_record(aws: None) -> None:
    ddb = client("dynamodb")
    streams = client("dynamodbstreams")
    create_events_table(ddb)
    update = {"UpdateExpression": "SET v = :v", "ExpressionAttributeValues": {":v": {"N": "1"}}}
    ddb.update_item(TableName="events", Key=ev("a", 1), **update)  # creates
    ddb.update_item(TableName="events", Key=ev("a", 1), **update)  # modifies
    ddb.transact_write_items(TransactItems=[{"Update": {"TableName": "events", "Key": ev("a", 2), **update}}])

    records = stream_records(streams, ddb, "events")
    assert [(r["eventName"], r["Keys"]["seq"]["N"]) for r in records] == [
        ("INSERT", "1"),
        ("MODIFY", "1"),
        ("INSERT", "2"),
    ]
    assert records[0]["NewImage"] == ev("a", 1, v={"N": "1"})
    assert records[1]["OldImage"] == ev("a", 1, v={"N": "1"})
    assert [int(r["SequenceNumber"]) for r in records] == list(
        range(int(records[0]["SequenceNumber"]), int(records[0]["SequenceNumber"]) + 3)
    )


def test_failure_while_applying_undoes_the_applied_writes(aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes are dry-run first, so applying should not fail; if it does, nothing stays applied."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.dynamodb.models import dynamodb_backends
    from moto.dynamodb.models.table import StreamShard

    ddb = client("dynamodb")
    streams = client("dynamodbstreams")
    create_events_table(ddb)
    for seq in (1, 2):
        ddb.put_item(TableName="events", Item=ev("a", seq, v={"N": "1"}))
    state, records = table_state(ddb, "events"), stream_records(streams, ddb, "events")

    calls, real_add = [], StreamShard.add

    def flaky_add(shard: StreamShard, old: Any, new: Any) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        real_add(shard, old, new)

    monkeypatch.setattr(StreamShard, "add", flaky_add)
    items = [
        {
            "Update": {
                "TableName": "events",
                "Key": ev("a", 1),
                "UpdateExpression": "SET v = :v",
                "ExpressionAttributeValues": {":v": {"N": "42"}},
            }
        },
        put_new("events", ev("a", 3)),
        {"Delete": {"TableName": "events", "Key": ev("a", 2)}},
    ]
    with pytest.raises(RuntimeError, match="boom"):
        dynamodb_backends[DEFAULT_ACCOUNT_ID][REGION].transact_write_items(items)
    monkeypatch.undo()
    assert table_state(ddb, "events") == state
    assert stream_records(streams, ddb, "events") == records


def test_transaction_cost_does_not_grow_with_table_size(aws: None) -> None:
    ddb = client("dynamodb")
    create_events_table(ddb)
    filled = 0
    counter = iter(range(10**9))

    def fill_to(n: int) -> None:
        nonlocal filled
        while filled < n:
            batch = [{"PutRequest": {"Item": ev("fill", filled + i, pad={"S": "p" * 200})}} for i in range(25)]
            ddb.batch_write_item(RequestItems={"events": batch})
            filled += 25

    def median_ms(runs: int = 25) -> float:
        times = []
        for _ in range(runs):
            k = next(counter)
            items = [put_new("events", ev("bench", 2 * k)), put_new("events", ev("bench", 2 * k + 1))]
            start = time.perf_counter()
            ddb.transact_write_items(TransactItems=items)
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1000

    fill_to(500)
    median_ms(5)  # warm up
    small = median_ms()
    fill_to(5000)
    large = median_ms()
    assert large < 3 * small, f"{large:.2f} ms at 5,000 items vs {small:.2f} ms at 500"


def test_install_is_idempotent_and_thread_safe() -> None:
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.responses import DynamoHandler

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: moto_dynamodb.install(), range(64)))

    def depth(fn: Any) -> int:
        n = 0
        while hasattr(fn, "__wrapped__"):
            fn, n = fn.__wrapped__, n + 1
        return n

    assert depth(DynamoDBBackend.get_item) == 1  # one lock, not one per install()
    assert depth(DynamoDBBackend.transact_write_items) == 1
    # faithful's faults (outside the lock) over our lock over moto's own @amz_crc32
    assert depth(DynamoHandler.call_action) == 3


@pytest.fixture
def moto_server() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def test_concurrent_writers_on_threaded_server(moto_server: str) -> None:
    """8 threads: transactions (applied and cancelled), puts, queries and stream tailing at once."""
    config = Config(retries={"max_attempts": 1, "mode": "standard"}, max_pool_connections=16)
    ddb = client("dynamodb", endpoint_url=moto_server, config=config)
    streams = client("dynamodbstreams", endpoint_url=moto_server, config=config)
    table = f"concurrent-{time.monotonic_ns()}"
    create_events_table(ddb, table)
    seeded = 250  # big enough that unpatched moto's table deep copy takes a while
    for start in range(0, seeded, 25):
        batch = [{"PutRequest": {"Item": ev("seed", seq)}} for seq in range(start, start + 25)]
        ddb.batch_write_item(RequestItems={table: batch})
    arn = ddb.describe_table(TableName=table)["Table"]["LatestStreamArn"]
    shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
    threads, rounds = 8, 25
    barrier = threading.Barrier(threads, timeout=120)

    def worker(w: int) -> list[int]:
        try:
            return work(w)
        except BaseException:
            barrier.abort()  # don't leave the other workers waiting for this one
            raise

    def work(w: int) -> list[int]:
        """Writes its own channel, and tails the whole stream like the fanout poller does."""
        channel, seen = f"w{w}", list[int]()
        iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
        position = iterator["ShardIterator"]

        def tail() -> int:
            nonlocal position
            page = streams.get_records(ShardIterator=position)
            seen.extend(int(r["dynamodb"]["SequenceNumber"]) for r in page["Records"])
            position = page["NextShardIterator"]
            return len(page["Records"])

        barrier.wait()
        for r in range(rounds):
            ddb.transact_write_items(
                TransactItems=[put_new(table, ev(channel, 3 * r)), put_new(table, ev(channel, 3 * r + 1))]
            )
            with pytest.raises(ClientError) as err:  # a duplicate: cancelled, writes nothing
                ddb.transact_write_items(
                    TransactItems=[put_new(table, ev(channel, 3 * r + 2)), put_new(table, ev(channel, 3 * r))]
                )
            assert err.value.response["Error"]["Code"] == "TransactionCanceledException"
            ddb.put_item(TableName=table, Item=ev(channel, 3 * r + 2))
            got = ddb.query(
                TableName=table,
                KeyConditionExpression="channel = :c",
                ExpressionAttributeValues={":c": {"S": channel}},
                ConsistentRead=True,
            )["Items"]
            assert [int(i["seq"]["N"]) for i in got] == list(range(3 * r + 3))
            tail()
        barrier.wait()  # every write is done: drain the stream
        while tail():
            pass
        return seen

    with ThreadPoolExecutor(threads) as pool:
        seen_by_worker = list(pool.map(worker, range(threads)))

    per_channel = {
        f"w{w}": [
            int(i["seq"]["N"])
            for i in ddb.query(
                TableName=table,
                KeyConditionExpression="channel = :c",
                ExpressionAttributeValues={":c": {"S": f"w{w}"}},
            )["Items"]
        ]
        for w in range(threads)
    }
    assert per_channel == {f"w{w}": list(range(3 * rounds)) for w in range(threads)}
    records = stream_records(streams, ddb, table)
    assert len(records) == seeded + threads * rounds * 3
    assert all(r["eventName"] == "INSERT" for r in records)
    seqs = [int(r["SequenceNumber"]) for r in records]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert all(seen == seqs for seen in seen_by_worker)  # every tailer saw every record, once, in order


if __name__ == "__main__":
    # The reference run for the parity tests: same scenario, moto exactly as shipped.
    if sys.argv[1:] != ["--unpatched"]:
        sys.exit("usage: test_moto_dynamodb.py --unpatched")
    os.environ.update(FAKE_ENV)
    print(json.dumps(run_parity_scenario()))


def test_fast_serializer_matches_motos_own_for_reads() -> None:
    """The json.dumps shortcut for Query/GetItem/Scan must produce what moto's serializer does."""
    import json as _json

    import boto3
    from moto.dynamodb.responses import DynamoHandler
    from moto.server import ThreadedMotoServer

    from realtime_devstack import moto_dynamodb

    moto_dynamodb.install()
    fast = DynamoHandler.serialized
    slow = fast.__wrapped__  # type: ignore[attr-defined]
    compared: list[str] = []

    def both(self: DynamoHandler, action_result: object) -> object:
        quick, full = fast(self, action_result), slow(self, action_result)
        if self._get_action() in {"Query", "GetItem", "Scan"}:
            assert quick[0] == full[0] and _json.loads(quick[2]) == _json.loads(full[2])
            compared.append(self._get_action())
        return full

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    DynamoHandler.serialized = both  # type: ignore[method-assign]
    try:
        host, port = server.get_host_and_port()
        client = boto3.client("dynamodb", endpoint_url=f"http://{host}:{port}")
        client.create_table(
            TableName="t",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "N"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        item = {
            "pk": {"S": "p"},
            "sk": {"N": "1"},
            "n": {"N": "12.50"},
            "l": {"L": [{"S": "x"}, {"NULL": True}, {"BOOL": False}]},
            "m": {"M": {"k": {"SS": ["a", "b"]}, "ns": {"NS": ["1", "2"]}}},
        }
        client.put_item(TableName="t", Item=item)
        got = client.get_item(TableName="t", Key={"pk": {"S": "p"}, "sk": {"N": "1"}})["Item"]
        assert got == item
        client.query(TableName="t", KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": {"S": "p"}})
        client.scan(TableName="t")
        client.get_item(TableName="t", Key={"pk": {"S": "missing"}, "sk": {"N": "1"}})
        # Binary values are not JSON: they take moto's own path and still round-trip.
        client.put_item(TableName="t", Item={"pk": {"S": "b"}, "sk": {"N": "1"}, "b": {"B": b"\x00\x01"}})
        binary = client.get_item(TableName="t", Key={"pk": {"S": "b"}, "sk": {"N": "1"}})["Item"]
        assert binary["b"] == {"B": b"\x00\x01"}
    finally:
        DynamoHandler.serialized = fast  # type: ignore[method-assign]
        server.stop()
    assert sorted(set(compared)) == ["GetItem", "Query", "Scan"]
