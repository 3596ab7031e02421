"""realtime_devstack.faithful: the substrate behaves as AWS documents, when asked to.

On in-process moto with the real tables from template.yaml (the ``aws`` fixture) and the
``faithful`` fixture, which configures ``Faults`` and puts the kind defaults back afterwards.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from realtime_devstack import faithful as substrate
from realtime_devstack import template
from realtime_devstack.lambda_host import FunctionHost, FunctionTimedOut
from realtime_devstack.stream_poller import EventSourceMapping
from realtime_devstack.ttl_sweeper import TtlSweeper
from tests.conftest import TABLE_NAMES
from tests.unit.test_devstack import recorded, wait_for, write_function

EVENTS = TABLE_NAMES["EventsTable"]
CONNECTIONS = TABLE_NAMES["ConnectionsTable"]
WINDOW_MS = 400.0


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


def in_background(call: Callable[[], Any]) -> Future[Any]:
    """Start ``call`` on a thread now."""
    pool = ThreadPoolExecutor(1)
    future = pool.submit(call)
    pool.shutdown(wait=False)
    return future


def holding() -> None:
    """Wait until a transaction holds items (between its checks and its writes)."""
    from realtime_devstack import moto_dynamodb

    wait_for(lambda: moto_dynamodb._HELD, timeout=WINDOW_MS / 2000)


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
    holding()  # the first one holds its items now
    # The same item "b" at index 1, a free one at index 0.
    second = error_of(
        lambda: aws.transact_write_items(
            TransactItems=[put(event_item("c", 1)), put(event_item("b", 1, v={"S": "second"}))]
        )
    )
    assert not first.done()  # refused while the first one is under way, not after it
    assert second["Code"] == "TransactionCanceledException" and second["Status"] == 400
    assert second["CancellationReasons"] == [
        {"Code": "None"},
        {"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"},
    ]
    first.result(timeout=10)  # the first one commits
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
    holding()
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
    assert not done.done()  # all of it while the transaction was under way
    done.result(timeout=10)
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
    first.result(timeout=10)
    second.result(timeout=10)
    # Both windows ran at once: the backend lock is not held through a window.
    assert time.monotonic() - started < 1.75 * WINDOW_MS / 1000
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


def test_jitter_is_random_seeded_and_spent_outside_the_lock(
    aws: Any, faithful: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from realtime_devstack import moto_dynamodb

    faithful(request_jitter_ms=200, seed=1)
    draws = [substrate.jitter_seconds() for _ in range(50)]
    assert all(0 <= draw <= 0.2 for draw in draws) and len(set(draws)) == 50
    faithful(request_jitter_ms=200, seed=1)
    assert [substrate.jitter_seconds() for _ in range(50)] == draws
    monkeypatch.setattr(substrate, "jitter_seconds", lambda: 0.5)
    writing = in_background(lambda: aws.put_item(TableName=EVENTS, Item=event_item("j", 1)))
    time.sleep(0.1)
    # The request is waiting out its jitter: the backend lock is free meanwhile.
    assert moto_dynamodb._LOCK.acquire(timeout=0.2)
    moto_dynamodb._LOCK.release()
    assert not writing.done()
    writing.result(timeout=10)
    assert aws.scan(TableName=EVENTS)["Count"] == 1


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
    holding()
    second = error_of(lambda: client.transact_write_items(TransactItems=[put(event_item("a", 1))]))
    assert second["CancellationReasons"] == [
        {"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"}
    ]
    assert error_of(lambda: client.put_item(TableName=EVENTS, Item=event_item("a", 1)))["Status"] == 400
    first.result(timeout=10)
    substrate.configure(substrate.Faults(lost_response_rates={"PutItem": 1.0}))
    lost = error_of(lambda: client.put_item(TableName=EVENTS, Item=event_item("b", 1)))
    assert (lost["Code"], lost["Status"]) == ("InternalServerError", 500)
    assert client.get_item(TableName=EVENTS, Key=event_item("b", 1))["Item"]


# --- Lambda: timeouts ------------------------------------------------------------------------

# Notes what it sees in a log next to it; sleeps as asked; then writes through boto3 (directly, or
# from a thread pool), noting whether the write went through, was swallowed or was refused.
SLOW_STUB = """
import json, pathlib, time, uuid
from concurrent.futures import Future, ThreadPoolExecutor

import boto3

HERE = pathlib.Path(__file__).parent
INSTANCE = uuid.uuid4().hex  # a new one per import: per sandbox


def note(**fields):
    with (HERE / "log.jsonl").open("a") as log:
        log.write(json.dumps({"instance": INSTANCE, **fields}) + "\\n")


def lambda_handler(event, context):
    note(remaining=context.get_remaining_time_in_millis())
    time.sleep(event.get("sleep", 0))
    note(remaining=context.get_remaining_time_in_millis())
    if event.get("write"):
        def write():
            boto3.client("dynamodb").put_item(TableName=event["write"], Item={"pk": {"S": "late"}, "sk": {"N": "1"}})
        try:
            if event.get("pool"):
                with ThreadPoolExecutor(1) as pool:
                    pool.submit(write).result()
            else:
                write()
            note(write="written")
        except Exception as exc:
            note(write="swallowed " + type(exc).__name__)
        except BaseException as exc:
            note(write="refused " + type(exc).__name__)
            raise
    return {"instance": INSTANCE}
"""


def notes(directory: Path) -> list[dict[str, Any]]:
    return recorded(directory, "log.jsonl")


@pytest.fixture
def slow(tmp_path: Path) -> Any:
    host = FunctionHost("SlowFunction", write_function(tmp_path / "slow", SLOW_STUB), timeout=0.5)
    try:
        yield host
    finally:
        host.close()


def test_remaining_time_counts_down_from_the_timeout(aws: Any, slow: FunctionHost) -> None:
    first = slow.invoke_sync({"sleep": 0.15})  # a cold start: the import is not counted
    second = slow.invoke_sync({})
    assert first == second  # the same sandbox, warm
    before, after = (note["remaining"] for note in notes(slow.code_dir)[:2])
    assert 420 < before <= 500
    assert 250 < after <= before - 140


@pytest.mark.parametrize("pool", [False, True], ids=["direct", "from-a-thread-pool"])
def test_a_handler_past_its_timeout_fails_and_can_write_nothing_more(
    aws: Any, faithful: Callable[..., Any], slow: FunctionHost, pool: bool
) -> None:
    faithful()  # the kind substrate: timeouts are Lambda's own, always on (and counted)
    warm = slow.invoke_sync({})["instance"]
    started = time.monotonic()
    with pytest.raises(FunctionTimedOut) as timed_out:
        slow.invoke_sync({"sleep": 1.5, "write": EVENTS, "pool": pool})
    assert 0.45 < time.monotonic() - started < 1.2  # at its Timeout, not when the handler ends
    assert "Task timed out after 0.50 seconds" in str(timed_out.value)
    assert timed_out.value.error_type == "Sandbox.Timedout"
    assert slow.timeouts == 1 and substrate.injected() == {"timeout:SlowFunction": 1}
    # The handler runs on in the background, but its write is refused, and not swallowed by its
    # `except Exception`.
    outcome = wait_for(lambda: [note["write"] for note in notes(slow.code_dir) if "write" in note])
    assert outcome == ["refused SandboxTimedOut"]
    assert aws.scan(TableName=EVENTS)["Count"] == 0
    # The timed-out sandbox is discarded: the next invocation is a fresh import.
    assert slow.invoke_sync({})["instance"] != warm


def test_the_same_from_asyncio_and_api_gateways_own_timeout(aws: Any, slow: FunctionHost) -> None:
    async def scenario() -> None:
        with pytest.raises(FunctionTimedOut):
            await slow.invoke({"sleep": 0.8})
        # API Gateway gives up first (its integration timeout), and answers for the function.
        slow.integration_timeout = 0.2
        slow.integration_timeout_response = {"statusCode": 503, "body": '{"message":"Service Unavailable"}'}
        started = time.monotonic()
        assert (await slow.invoke({"sleep": 0.45}))["statusCode"] == 503
        assert time.monotonic() - started < 0.42  # before the function itself ended
        await asyncio.sleep(0.35)  # the function finished in time: no timeout, sandbox kept
        assert slow.timeouts == 1
        assert (await slow.invoke({"sleep": 0.8}))["statusCode"] == 503
        await asyncio.sleep(0.45)  # ... and this one ran out of its own Timeout
        assert slow.timeouts == 2

    asyncio.run(scenario())


# Times out on the first batch it gets (a file counts the batches), and whenever record "3" is in
# a batch when asked to; records every batch.
STREAM_STUB = """
import json, pathlib, time

HERE = pathlib.Path(__file__).parent


def lambda_handler(event, context):
    batches = HERE / "batches.jsonl"
    seen = len(batches.read_text().splitlines()) if batches.exists() else 0
    sequence_numbers = [record["dynamodb"]["SequenceNumber"] for record in event["Records"]]
    with batches.open("a") as log:
        log.write(json.dumps(sequence_numbers) + "\\n")
    poison = (HERE / "poison").read_text() if (HERE / "poison").exists() else None
    if seen == 0 or poison in sequence_numbers:
        time.sleep(context.get_remaining_time_in_millis() / 1000 + 0.2)
    return {"batchItemFailures": []}
"""


def stream_records(count: int) -> list[dict[str, Any]]:
    return [
        {"eventName": "INSERT", "dynamodb": {"SequenceNumber": str(n), "NewImage": {"n": {"N": str(n)}}}}
        for n in range(1, count + 1)
    ]


def mapping_settings(**overrides: Any) -> template.EventSourceMapping:
    settings: template.EventSourceMapping = {
        "function": "FanoutFunction",
        "event": "Stream",
        "table": "EventsTable",
        "batch_size": 100,
        "maximum_batching_window_seconds": 0,
        "starting_position": "LATEST",
        "filter_criteria": None,
        "filter_patterns": [],
        "maximum_retry_attempts": 2,
        "bisect_batch_on_function_error": False,
        "function_response_types": ["ReportBatchItemFailures"],
        "on_failure_destination": None,
        "on_failure_target": None,
        "maximum_record_age_seconds": -1,
        "parallelization_factor": 1,
        "enabled": True,
    }
    settings.update(overrides)  # type: ignore[typeddict-item]
    return settings


def batches(directory: Path) -> list[list[str]]:
    path = directory / "batches.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_stream_batch_that_times_out_is_retried(tmp_path: Path) -> None:
    code = write_function(tmp_path / "fanout", STREAM_STUB)
    host = FunctionHost("FanoutFunction", code, timeout=0.3)
    try:
        mapping = EventSourceMapping(settings=mapping_settings(), invoke=host.invoke_sync, retry_delay=0)
        mapping.deliver(stream_records(3))
    finally:
        host.close()
    assert batches(code) == [["1", "2", "3"], ["1", "2", "3"]]  # timed out, then retried whole
    assert (mapping.invocations, mapping.timeouts, mapping.dead_letters) == (2, 1, [])


def test_a_timeout_bisects_like_any_function_error(tmp_path: Path) -> None:
    code = write_function(tmp_path / "fanout", STREAM_STUB)
    (code / "batches.jsonl").write_text("[]\n")  # not the first batch any more
    (code / "poison").write_text("3")
    host = FunctionHost("FanoutFunction", code, timeout=0.2)
    try:
        settings = mapping_settings(bisect_batch_on_function_error=True, maximum_retry_attempts=1)
        mapping = EventSourceMapping(settings=settings, invoke=host.invoke_sync, retry_delay=0)
        mapping.deliver(stream_records(4))
    finally:
        host.close()
    assert batches(code)[1:] == [["1", "2", "3", "4"], ["1", "2"], ["3", "4"], ["3"], ["3"], ["4"]]
    assert [[r["dynamodb"]["SequenceNumber"] for r in letter.records] for letter in mapping.dead_letters] == [["3"]]
    assert mapping.timeouts == 4
