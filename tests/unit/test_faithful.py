"""realtime_devstack.faithful: the substrate behaves as AWS documents, when asked to.

On in-process moto with the real tables from template.yaml (the ``aws`` fixture) and the
``faithful`` fixture, which configures ``Faults`` and puts the kind defaults back afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from realtime_devstack import faithful as substrate
from realtime_devstack.ttl_sweeper import TtlSweeper
from tests.conftest import TABLE_NAMES

EVENTS = TABLE_NAMES["EventsTable"]
CONNECTIONS = TABLE_NAMES["ConnectionsTable"]
WINDOW_MS = 200.0


def event_item(pk: str, sk: int, **attrs: Any) -> dict[str, Any]:
    return {"pk": {"S": pk}, "sk": {"N": str(sk)}, **attrs}


def put(item: dict[str, Any], table: str = EVENTS) -> dict[str, Any]:
    return {"Put": {"TableName": table, "Item": item}}


def error_of(call: Callable[[], Any]) -> dict[str, Any]:
    with pytest.raises(ClientError) as raised:
        call()
    response = raised.value.response
    return {
        "Code": response["Error"]["Code"],
        "Status": response["ResponseMetadata"]["HTTPStatusCode"],
        "CancellationReasons": response.get("CancellationReasons"),
    }


def in_background(call: Callable[[], Any]) -> Callable[[], Any]:
    """Start ``call`` on a thread now; the returned function waits for its result (or error)."""
    pool = ThreadPoolExecutor(1)
    future = pool.submit(call)
    pool.shutdown(wait=False)
    return lambda: future.result(timeout=10)


def no_retries() -> Any:
    return boto3.client("dynamodb", config=Config(retries={"mode": "standard", "total_max_attempts": 1}))


# --- configuration ---------------------------------------------------------------------------


def test_the_defaults_are_kind_and_configure_takes_effect_at_once(faithful: Callable[..., Any]) -> None:
    assert substrate.current() == substrate.Faults()
    assert not substrate.enabled()
    faithful(gsi_lag_ms=50, seed=3)
    assert substrate.current().gsi_lag_ms == 50 and substrate.enabled()
    substrate.reset()
    assert substrate.current() == substrate.Faults() and substrate.injected() == {}
    defaults = substrate.FAITHFUL_DEFAULTS
    assert defaults.transaction_window_ms > 0 and defaults.gsi_lag_ms > 0
    assert defaults.ttl_max_delay_s > 0 and defaults.request_jitter_ms > 0


@pytest.mark.parametrize(
    "faults",
    [
        substrate.Faults(gsi_lag_ms=-1),
        substrate.Faults(error_rates={"PutItem": {"NoSuchError": 0.1}}),
        substrate.Faults(error_rates={"PutItem": {"InternalServerError": 1.5}}),
        substrate.Faults(error_rates={"*": {"InternalServerError": 0.6, "ThrottlingException": 0.6}}),
        substrate.Faults(lost_response_rates={"PutItem": -0.1}),
    ],
)
def test_nonsense_is_refused(faults: substrate.Faults) -> None:
    with pytest.raises(ValueError):
        substrate.configure(faults)
    assert substrate.current() == substrate.Faults()


# --- transaction conflicts -------------------------------------------------------------------


def test_overlapping_transactions_on_one_item_one_is_cancelled(aws: Any, faithful: Callable[..., Any]) -> None:
    faithful(transaction_window_ms=WINDOW_MS)
    first = in_background(
        lambda: aws.transact_write_items(TransactItems=[put(event_item("a", 1)), put(event_item("b", 1))])
    )
    time.sleep(WINDOW_MS / 4000)  # the first one holds its items now
    started = time.monotonic()
    # The same item "b" at index 1, a free one at index 0.
    second = error_of(
        lambda: aws.transact_write_items(
            TransactItems=[put(event_item("c", 1)), put(event_item("b", 1, v={"S": "second"}))]
        )
    )
    assert time.monotonic() - started < WINDOW_MS / 2000  # refused at once, not after the window
    assert second["Code"] == "TransactionCanceledException" and second["Status"] == 400
    assert second["CancellationReasons"] == [
        {"Code": "None"},
        {"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"},
    ]
    first()  # the first one commits
    items = aws.scan(TableName=EVENTS, ConsistentRead=True)["Items"]
    assert sorted(item["pk"]["S"] for item in items) == ["a", "b"]
    assert "v" not in next(item for item in items if item["pk"]["S"] == "b")
    assert substrate.injected()["TransactionConflict"] == 1


def test_single_item_writes_of_a_held_item_conflict_and_reads_see_the_committed_value(
    aws: Any, faithful: Callable[..., Any]
) -> None:
    aws.put_item(TableName=EVENTS, Item=event_item("a", 1, v={"S": "old"}))
    faithful(transaction_window_ms=WINDOW_MS)
    update = {
        "Update": {
            "TableName": EVENTS,
            "Key": event_item("a", 1),
            "UpdateExpression": "SET v = :new",
            "ExpressionAttributeValues": {":new": {"S": "new"}},
        }
    }
    done = in_background(lambda: aws.transact_write_items(TransactItems=[update]))
    time.sleep(WINDOW_MS / 4000)
    client = no_retries()
    for call in (
        lambda: client.put_item(TableName=EVENTS, Item=event_item("a", 1)),
        lambda: client.update_item(
            TableName=EVENTS,
            Key=event_item("a", 1),
            UpdateExpression="SET w = :w",
            ExpressionAttributeValues={":w": {"S": "w"}},
        ),
        lambda: client.delete_item(TableName=EVENTS, Key=event_item("a", 1)),
    ):
        assert error_of(call) == {"Code": "TransactionConflictException", "Status": 400, "CancellationReasons": None}
    # GetItem and Query do not conflict: they read the last committed value.
    read = aws.get_item(TableName=EVENTS, Key=event_item("a", 1), ConsistentRead=True)["Item"]
    assert read["v"] == {"S": "old"}
    queried = aws.query(
        TableName=EVENTS, KeyConditionExpression="pk = :pk", ExpressionAttributeValues={":pk": {"S": "a"}}
    )
    assert queried["Items"][0]["v"] == {"S": "old"}
    # A TransactGetItems is cancelled; a BatchWriteItem hands the held item back.
    get = error_of(
        lambda: client.transact_get_items(
            TransactItems=[
                {"Get": {"TableName": EVENTS, "Key": event_item("z", 9)}},
                {"Get": {"TableName": EVENTS, "Key": event_item("a", 1)}},
            ]
        )
    )
    assert get["CancellationReasons"] == [
        {"Code": "None"},
        {"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"},
    ]
    batch = client.batch_write_item(
        RequestItems={
            EVENTS: [{"PutRequest": {"Item": event_item("a", 1)}}, {"PutRequest": {"Item": event_item("b", 2)}}]
        }
    )
    assert batch["UnprocessedItems"] == {EVENTS: [{"PutRequest": {"Item": event_item("a", 1)}}]}
    done()
    after = aws.get_item(TableName=EVENTS, Key=event_item("a", 1), ConsistentRead=True)["Item"]
    assert after["v"] == {"S": "new"}  # the transaction's write, not the refused ones
    assert aws.get_item(TableName=EVENTS, Key=event_item("b", 2))["Item"]  # the batch's other item
    assert substrate.injected()["TransactionConflict"] == 5
    # Released: the item is writable again.
    client.put_item(TableName=EVENTS, Item=event_item("a", 1, v={"S": "later"}))


def test_transactions_on_different_items_both_commit_concurrently(aws: Any, faithful: Callable[..., Any]) -> None:
    faithful(transaction_window_ms=WINDOW_MS)
    started = time.monotonic()
    first = in_background(lambda: aws.transact_write_items(TransactItems=[put(event_item("a", 1))]))
    second = in_background(lambda: aws.transact_write_items(TransactItems=[put(event_item("b", 1))]))
    first()
    second()
    # Both windows ran at once: the backend lock is not held through a window.
    assert time.monotonic() - started < 2 * WINDOW_MS / 1000
    assert aws.scan(TableName=EVENTS)["Count"] == 2
    assert "TransactionConflict" not in substrate.injected()


def test_without_a_window_concurrent_transactions_never_conflict(aws: Any, faithful: Callable[..., Any]) -> None:
    faithful(request_jitter_ms=1.0)  # faults on, but no window: today's behaviour
    counter = {"Update": {"TableName": EVENTS, "Key": event_item("n", 0), "UpdateExpression": "ADD c :one"}}
    counter["Update"]["ExpressionAttributeValues"] = {":one": {"N": "1"}}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: aws.transact_write_items(TransactItems=[counter]), range(40)))
    assert aws.get_item(TableName=EVENTS, Key=event_item("n", 0))["Item"]["c"] == {"N": "40"}


def test_a_retried_transaction_is_not_applied_twice(aws: Any, faithful: Callable[..., Any]) -> None:
    faithful(transaction_window_ms=1.0)
    add = {"Update": {"TableName": EVENTS, "Key": event_item("n", 0), "UpdateExpression": "ADD c :one"}}
    add["Update"]["ExpressionAttributeValues"] = {":one": {"N": "1"}}
    aws.transact_write_items(TransactItems=[add], ClientRequestToken="token-1")
    aws.transact_write_items(TransactItems=[add], ClientRequestToken="token-1")  # a retry: no change
    assert aws.get_item(TableName=EVENTS, Key=event_item("n", 0))["Item"]["c"] == {"N": "1"}
    assert substrate.injected()["idempotent_replay"] == 1
    other = {"Put": {"TableName": EVENTS, "Item": event_item("m", 0)}}
    mismatch = error_of(lambda: aws.transact_write_items(TransactItems=[other], ClientRequestToken="token-1"))
    assert mismatch["Code"] == "IdempotentParameterMismatchException" and mismatch["Status"] == 400


# --- GSI lag ---------------------------------------------------------------------------------


def subscription(connection: str, channel: str) -> dict[str, Any]:
    return {
        "pk": {"S": f"conn#{connection}"},
        "sk": {"S": f"sub#{channel}"},
        "channel": {"S": channel},
        "connectionId": {"S": connection},
    }


def subscribers(aws: Any, channel: str) -> list[str]:
    response = aws.query(
        TableName=CONNECTIONS,
        IndexName="by-channel",
        KeyConditionExpression="channel = :c",
        ExpressionAttributeValues={":c": {"S": channel}},
    )
    return [item["connectionId"]["S"] for item in response["Items"]]


def indexed(aws: Any) -> list[str]:
    items = aws.scan(TableName=CONNECTIONS, IndexName="by-channel")["Items"]
    return sorted(f"{item['channel']['S']}/{item['connectionId']['S']}" for item in items)


def test_a_gsi_query_right_after_a_put_does_not_see_it_and_does_after_the_lag(
    aws: Any, faithful: Callable[..., Any]
) -> None:
    aws.put_item(TableName=CONNECTIONS, Item=subscription("old", "c"))  # before the lag: visible at once
    faithful(gsi_lag_ms=300)
    aws.put_item(TableName=CONNECTIONS, Item=subscription("new", "c"))
    assert subscribers(aws, "c") == ["old"]
    assert indexed(aws) == ["c/old"]  # a Scan of the index too
    # The base table is read-your-writes.
    key = {"pk": {"S": "conn#new"}, "sk": {"S": "sub#c"}}
    assert aws.get_item(TableName=CONNECTIONS, Key=key, ConsistentRead=True)["Item"]
    assert substrate.injected()["gsi_hidden"] == 2
    time.sleep(0.35)
    assert sorted(subscribers(aws, "c")) == ["new", "old"]


def test_an_index_shows_the_previous_image_of_an_update_and_a_ghost_of_a_delete(
    aws: Any, faithful: Callable[..., Any]
) -> None:
    aws.put_item(TableName=CONNECTIONS, Item=subscription("moved", "c"))
    aws.put_item(TableName=CONNECTIONS, Item=subscription("gone", "c"))
    faithful(gsi_lag_ms=300)
    moved = {"pk": {"S": "conn#moved"}, "sk": {"S": "sub#c"}}
    aws.update_item(
        TableName=CONNECTIONS,
        Key=moved,
        UpdateExpression="SET channel = :d",
        ExpressionAttributeValues={":d": {"S": "d"}},
    )
    aws.delete_item(TableName=CONNECTIONS, Key={"pk": {"S": "conn#gone"}, "sk": {"S": "sub#c"}})
    assert sorted(subscribers(aws, "c")) == ["gone", "moved"]  # still under its old key; a ghost
    assert subscribers(aws, "d") == []
    time.sleep(0.35)
    assert subscribers(aws, "c") == [] and subscribers(aws, "d") == ["moved"]


# --- TTL -------------------------------------------------------------------------------------


def test_the_sweeper_deletes_each_expired_item_after_its_own_delay(aws: Any, faithful: Callable[..., Any]) -> None:
    faithful(ttl_max_delay_s=100, seed=7)
    now = int(time.time())
    keys = [{"pk": {"S": f"item{n}"}, "sk": {"N": "0"}} for n in range(30)]
    for key in keys:
        aws.put_item(TableName=EVENTS, Item={**key, "ttl": {"N": str(now - 1)}})
    delays = {key["pk"]["S"]: substrate.ttl_delay_seconds(EVENTS, key) for key in keys}
    assert all(0 <= delay <= 100 for delay in delays.values()) and len(set(delays.values())) == 30
    sweeper = TtlSweeper(aws)

    def left() -> set[str]:
        return {item["pk"]["S"] for item in aws.scan(TableName=EVENTS, ConsistentRead=True)["Items"]}

    sweeper.sweep_once(now=now)
    assert left() == set(delays)  # expired a second ago, every delay still running
    assert substrate.injected()["ttl_delayed"] == 30
    sweeper.sweep_once(now=now + 50)
    assert left() == {name for name, delay in delays.items() if now - 1 + delay >= now + 50}
    assert 0 < len(left()) < 30
    assert substrate.injected()["ttl_delayed"] == 30  # each counted once, however often it waits
    sweeper.sweep_once(now=now + 100)
    assert left() == set()
    # The delays are a function of the seed and the key: the same run again gets the same ones.
    substrate.configure(substrate.Faults(ttl_max_delay_s=100, seed=7))
    assert {name: substrate.ttl_delay_seconds(EVENTS, key) for name, key in zip(delays, keys, strict=True)} == delays


# --- injected errors and lost responses ------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "rate", "puts"),
    [
        ("legacy", 0.5, 10),  # boto3's default: DynamoDB retries back off from 50 ms
        ("standard", 0.5, 3),  # the library's clients: from up to 1 s, so fewer here
    ],
)
def test_injected_throttles_and_500s_are_retried_by_botocore(
    aws: Any, faithful: Callable[..., Any], mode: str, rate: float, puts: int
) -> None:
    faithful(
        seed=11,
        error_rates={"PutItem": {"ProvisionedThroughputExceededException": rate / 2, "InternalServerError": rate / 2}},
    )
    client = boto3.client("dynamodb", config=Config(retries={"mode": mode, "total_max_attempts": 10}))
    retried = 0
    for n in range(puts):
        response = client.put_item(TableName=EVENTS, Item=event_item("t", n))
        retried += response["ResponseMetadata"]["RetryAttempts"]
    assert aws.scan(TableName=EVENTS)["Count"] == puts  # each written once, in the end
    counts = substrate.injected()
    assert retried == sum(counts.values()) > 0
    assert set(counts) <= {"PutItem:ProvisionedThroughputExceededException", "PutItem:InternalServerError"}


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("ProvisionedThroughputExceededException", 400),
        ("ThrottlingException", 400),
        ("RequestLimitExceeded", 400),
        ("TransactionConflictException", 400),
        ("InternalServerError", 500),
        ("ServiceUnavailable", 503),
    ],
)
def test_injected_errors_have_dynamodbs_code_and_status_and_write_nothing(
    aws: Any, faithful: Callable[..., Any], code: str, status: int
) -> None:
    faithful(error_rates={"*": {code: 1.0}})
    failure = error_of(lambda: no_retries().put_item(TableName=EVENTS, Item=event_item("e", 1)))
    assert (failure["Code"], failure["Status"]) == (code, status)
    substrate.reset()
    assert aws.scan(TableName=EVENTS)["Count"] == 0


def test_a_lost_response_has_the_write_applied(aws: Any, faithful: Callable[..., Any]) -> None:
    faithful(lost_response_rates={"PutItem": 1.0})
    failure = error_of(lambda: no_retries().put_item(TableName=EVENTS, Item=event_item("l", 1)))
    assert (failure["Code"], failure["Status"]) == ("InternalServerError", 500)
    assert aws.get_item(TableName=EVENTS, Key=event_item("l", 1))["Item"]  # applied all the same
    # botocore retries a 500: a conditional put then finds its own write, as against AWS.
    retrying = boto3.client("dynamodb", config=Config(retries={"mode": "standard", "max_attempts": 3}))
    conditional = error_of(
        lambda: retrying.put_item(
            TableName=EVENTS, Item=event_item("l", 2), ConditionExpression="attribute_not_exists(pk)"
        )
    )
    assert conditional["Code"] == "ConditionalCheckFailedException"
    assert substrate.injected()["lost:PutItem"] == 2


def test_a_lost_transaction_response_is_retried_with_its_token(aws: Any, faithful: Callable[..., Any]) -> None:
    faithful(seed=5, lost_response_rates={"TransactWriteItems": 0.5})
    client = boto3.client("dynamodb", config=Config(retries={"mode": "standard", "max_attempts": 10}))
    add = {"Update": {"TableName": EVENTS, "Key": event_item("n", 0), "UpdateExpression": "ADD c :one"}}
    add["Update"]["ExpressionAttributeValues"] = {":one": {"N": "1"}}
    for _ in range(10):
        client.transact_write_items(TransactItems=[add])  # every one succeeds in the end
    assert aws.get_item(TableName=EVENTS, Key=event_item("n", 0))["Item"]["c"] == {"N": "10"}  # once each
    assert substrate.injected()["lost:TransactWriteItems"] == substrate.injected()["idempotent_replay"] > 0


def test_jitter_is_spent_outside_the_lock(aws: Any, faithful: Callable[..., Any]) -> None:
    faithful(request_jitter_ms=200, seed=1)
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: aws.put_item(TableName=EVENTS, Item=event_item("j", n)), range(8)))
    # Eight uniform waits of up to 200 ms each: about 0.8 s in a row, about 0.2 s side by side.
    assert time.monotonic() - started < 0.45
    assert aws.scan(TableName=EVENTS)["Count"] == 8


# --- the same over moto's threaded server (what the local stack runs) ------------------------


@pytest.fixture
def moto_server() -> Any:
    from moto.moto_api._internal.models import moto_api_backend
    from moto.server import ThreadedMotoServer

    from realtime_devstack import moto_dynamodb, template

    moto_dynamodb.install()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    template.create_tables(boto3.client("dynamodb", endpoint_url=url), {"EventsTable": EVENTS})
    try:
        yield url
    finally:
        substrate.reset()
        server.stop()
        moto_api_backend.reset()


def test_conflicts_and_lost_responses_over_the_threaded_server(moto_server: str) -> None:
    client = boto3.client(
        "dynamodb", endpoint_url=moto_server, config=Config(retries={"mode": "standard", "total_max_attempts": 1})
    )
    substrate.configure(substrate.Faults(transaction_window_ms=WINDOW_MS))
    first = in_background(lambda: client.transact_write_items(TransactItems=[put(event_item("a", 1))]))
    time.sleep(WINDOW_MS / 4000)
    second = error_of(lambda: client.transact_write_items(TransactItems=[put(event_item("a", 1))]))
    assert second["CancellationReasons"] == [
        {"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"}
    ]
    assert error_of(lambda: client.put_item(TableName=EVENTS, Item=event_item("a", 1)))["Status"] == 400
    first()
    substrate.configure(substrate.Faults(lost_response_rates={"PutItem": 1.0}))
    lost = error_of(lambda: client.put_item(TableName=EVENTS, Item=event_item("b", 1)))
    assert (lost["Code"], lost["Status"]) == ("InternalServerError", 500)
    assert client.get_item(TableName=EVENTS, Key=event_item("b", 1))["Item"]
