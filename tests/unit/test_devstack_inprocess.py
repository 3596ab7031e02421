"""The local stack's fast paths: DynamoDB answered in process (moto_inprocess), moto's JSON shortcut
and parse cache (moto_dynamodb), and the stream poller's idle peek (stream_poller)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from realtime_devstack import faithful, moto_dynamodb, moto_inprocess
from realtime_devstack.aws_env import LOCAL_AWS_ENV
from realtime_devstack.lambda_host import _DEADLINE, SandboxTimedOut, install_deadline_guard
from realtime_devstack.stream_poller import EventSourceMapping, StreamPoller
from tests.unit.test_devstack import mapping_settings

NO_RETRIES = Config(retries={"max_attempts": 1, "mode": "standard"})


@pytest.fixture(autouse=True)
def _fake_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in LOCAL_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def moto_url() -> Iterator[str]:
    """moto's HTTP server (for other processes), answered in process for this one."""
    from moto.moto_api._internal.models import moto_api_backend
    from moto.server import ThreadedMotoServer

    moto_dynamodb.install()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    moto_inprocess.serve(url)
    try:
        yield url
    finally:
        moto_inprocess.stop(url)
        server.stop()
        moto_api_backend.reset()
        faithful.reset()


def client(service: str, url: str, **kwargs: Any) -> Any:
    return boto3.client(service, endpoint_url=url, region_name="us-east-1", **kwargs)  # type: ignore[call-overload]


def create_table(ddb: Any, name: str = "t") -> str:
    ddb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "N"},
        ],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    return str(ddb.describe_table(TableName=name)["Table"]["LatestStreamArn"])


def answered() -> int:
    return sum(int(op["requests"]) for op in moto_inprocess.stats().values())


def test_requests_are_answered_in_process_and_the_http_endpoint_sees_the_same_tables(moto_url: str) -> None:
    ddb = client("dynamodb", moto_url)
    before = answered()
    create_table(ddb)
    ddb.put_item(TableName="t", Item={"pk": {"S": "a"}, "sk": {"N": "1"}, "v": {"S": "x"}})
    assert answered() - before == 3  # CreateTable, DescribeTable, PutItem: none crossed a socket
    assert moto_inprocess.served(moto_url)
    # Another process's view (HTTP, as the tests and `tail` have it): same backend, same item.
    moto_inprocess.stop(moto_url)
    try:
        over_http = client("dynamodb", moto_url).get_item(TableName="t", Key={"pk": {"S": "a"}, "sk": {"N": "1"}})
    finally:
        moto_inprocess.serve(moto_url)
    assert over_http["Item"]["v"] == {"S": "x"}
    assert answered() - before == 3


def test_errors_come_back_as_dynamodb_errors(moto_url: str) -> None:
    ddb = client("dynamodb", moto_url)
    create_table(ddb)
    ddb.put_item(TableName="t", Item={"pk": {"S": "a"}, "sk": {"N": "1"}})
    with pytest.raises(ClientError) as failed:
        ddb.put_item(
            TableName="t",
            Item={"pk": {"S": "a"}, "sk": {"N": "1"}},
            ConditionExpression="attribute_not_exists(pk)",
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
    assert failed.value.response["Error"]["Code"] == "ConditionalCheckFailedException"
    assert dict(failed.value.response)["Item"] == {"pk": {"S": "a"}, "sk": {"N": "1"}}
    with pytest.raises(ClientError) as missing:
        ddb.get_item(TableName="nope", Key={"pk": {"S": "a"}, "sk": {"N": "1"}})
    assert missing.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_faithful_faults_apply_in_process(moto_url: str) -> None:
    ddb = client("dynamodb", moto_url, config=NO_RETRIES)
    create_table(ddb)
    faithful.configure(
        faithful.Faults(
            seed=1,
            error_rates={"GetItem": {"ProvisionedThroughputExceededException": 1.0}},
            lost_response_rates={"PutItem": 1.0},
        )
    )
    with pytest.raises(ClientError) as throttled:
        ddb.get_item(TableName="t", Key={"pk": {"S": "a"}, "sk": {"N": "1"}})
    assert throttled.value.response["Error"]["Code"] == "ProvisionedThroughputExceededException"
    with pytest.raises(ClientError) as lost:
        ddb.put_item(TableName="t", Item={"pk": {"S": "a"}, "sk": {"N": "1"}})
    assert lost.value.response["Error"]["Code"] == "InternalServerError"
    faithful.reset()
    # The lost response's write was applied, as on AWS.
    assert "Item" in ddb.get_item(TableName="t", Key={"pk": {"S": "a"}, "sk": {"N": "1"}})


def test_a_timed_out_invocation_still_cannot_write(moto_url: str) -> None:
    install_deadline_guard()
    ddb = client("dynamodb", moto_url)
    create_table(ddb)
    token = _DEADLINE.set(time.monotonic() - 1)
    try:
        with pytest.raises(SandboxTimedOut):
            ddb.put_item(TableName="t", Item={"pk": {"S": "late"}, "sk": {"N": "1"}})
    finally:
        _DEADLINE.reset(token)
    assert "Item" not in ddb.get_item(TableName="t", Key={"pk": {"S": "late"}, "sk": {"N": "1"}})


def test_fast_serializer_matches_motos_own_on_every_shortcut_action(moto_url: str) -> None:
    """The json.dumps shortcut and moto's serializer give the same JSON, per action it covers."""
    from moto.dynamodb.responses import DynamoHandler
    from moto.dynamodbstreams.responses import DynamoDBStreamsHandler

    compared: set[str] = set()
    patched = {handler: handler.serialized for handler in (DynamoHandler, DynamoDBStreamsHandler)}

    def both(fast: Any) -> Any:
        def serialized(self: Any, action_result: Any) -> Any:
            full = fast.__wrapped__(self, action_result)
            quick = fast(self, action_result)
            assert quick[0] == full[0], self._get_action()
            assert json.loads(quick[2]) == json.loads(full[2]), self._get_action()
            compared.add(self._get_action())
            return quick

        return serialized

    for handler, fast in patched.items():
        handler.serialized = both(fast)  # type: ignore[method-assign]
    try:
        ddb, streams = client("dynamodb", moto_url), client("dynamodbstreams", moto_url)
        arn = create_table(ddb)
        shard = streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
        iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
        key = {"pk": {"S": "a"}, "sk": {"N": "1"}}
        nested = {"m": {"M": {"l": {"L": [{"N": "1.50"}, {"BOOL": True}, {"NULL": True}]}}}, "ss": {"SS": ["x", "y"]}}
        ddb.put_item(TableName="t", Item={**key, **nested}, ReturnValues="ALL_OLD")
        ddb.put_item(TableName="t", Item={**key, "v": {"N": "1"}}, ReturnValues="ALL_OLD")
        ddb.update_item(
            TableName="t",
            Key=key,
            UpdateExpression="ADD v :one SET w = if_not_exists(w, :zero)",
            ExpressionAttributeValues={":one": {"N": "1"}, ":zero": {"N": "0"}},
            ReturnValues="ALL_NEW",
        )
        ddb.get_item(TableName="t", Key=key)
        ddb.query(TableName="t", KeyConditionExpression="pk = :p", ExpressionAttributeValues={":p": {"S": "a"}})
        ddb.scan(TableName="t")
        put = {"Put": {"TableName": "t", "Item": {"pk": {"S": "b"}, "sk": {"N": "1"}}}}
        ddb.transact_write_items(TransactItems=[put])
        ddb.transact_get_items(TransactItems=[{"Get": {"TableName": "t", "Key": key}}])
        ddb.batch_get_item(RequestItems={"t": {"Keys": [key]}})
        ddb.batch_write_item(RequestItems={"t": [{"PutRequest": {"Item": {"pk": {"S": "c"}, "sk": {"N": "1"}}}}]})
        ddb.delete_item(TableName="t", Key={"pk": {"S": "c"}, "sk": {"N": "1"}}, ReturnValues="ALL_OLD")
        page = streams.get_records(ShardIterator=iterator["ShardIterator"])
        streams.get_records(ShardIterator=page["NextShardIterator"])  # an empty page
    finally:
        for handler, fast in patched.items():
            handler.serialized = fast  # type: ignore[method-assign]
    assert page["Records"] and page["Records"][0]["dynamodb"]["NewImage"]["ss"] == {"SS": ["x", "y"]}
    shortcuts = moto_dynamodb._FAST_ACTIONS["dynamodb"] | moto_dynamodb._FAST_ACTIONS["dynamodbstreams"]
    assert shortcuts <= compared


def test_the_update_expression_cache_hands_out_fresh_trees_and_keeps_refusing_bad_ones(moto_url: str) -> None:
    ddb = client("dynamodb", moto_url)
    create_table(ddb)
    key = {"pk": {"S": "counter"}, "sk": {"N": "0"}}
    # The same expression with other values: a shared, mutated tree would apply the first values again.
    heads = [
        ddb.update_item(
            TableName="t",
            Key=key,
            UpdateExpression="ADD head :n SET note = :note",
            ExpressionAttributeValues={":n": {"N": str(n)}, ":note": {"S": f"call {n}"}},
            ReturnValues="ALL_NEW",
        )["Attributes"]
        for n in (1, 2, 3)
    ]
    assert [(h["head"]["N"], h["note"]["S"]) for h in heads] == [("1", "call 1"), ("3", "call 2"), ("6", "call 3")]
    for _ in range(2):  # not cached as anything: refused every time
        with pytest.raises(ClientError) as refused:
            ddb.update_item(
                TableName="t", Key=key, UpdateExpression="SET = :x", ExpressionAttributeValues={":x": {"N": "1"}}
            )
        assert refused.value.response["Error"]["Code"] == "ValidationException"


def test_the_poller_skips_getrecords_on_an_unchanged_shard_and_still_delivers(moto_url: str) -> None:
    ddb, streams = client("dynamodb", moto_url), client("dynamodbstreams", moto_url)
    arn = create_table(ddb)
    assert moto_dynamodb.stream_length("arn:aws:dynamodb:us-east-1:123456789012:table/none/stream/x") is None
    delivered: list[str] = []

    def invoke(event: dict[str, Any]) -> None:
        delivered.extend(record["dynamodb"]["Keys"]["sk"]["N"] for record in event["Records"])

    mapping = EventSourceMapping(settings=mapping_settings(), invoke=invoke)  # the template's filter: events
    poller = StreamPoller(mapping, streams, arn, interval=0.01, peek=lambda: moto_dynamodb.stream_length(arn))
    poller.start()  # positions at LATEST, then polls on its thread
    try:
        deadline = time.monotonic() + 5
        while poller.skipped_polls < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        reads = moto_inprocess.stats().get("GetRecords", {}).get("requests", 0)
        time.sleep(0.1)  # ~10 idle polls
        assert moto_inprocess.stats().get("GetRecords", {}).get("requests", 0) == reads
        for sk in (1, 2, 3):
            ddb.put_item(TableName="t", Item={"pk": {"S": "a"}, "sk": {"N": str(sk)}, "kind": {"S": "event"}})
        while len(delivered) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        poller.stop()
    assert delivered == ["1", "2", "3"]
    assert poller.skipped_polls >= 3


def test_a_stack_option_selects_the_old_transport() -> None:
    from realtime_devstack.cli import build_parser
    from realtime_devstack.stack import StackOptions

    assert StackOptions().dynamodb_in_process is True
    assert build_parser().parse_args(["dev", "--dynamodb-over-http"]).dynamodb_over_http is True
    assert build_parser().parse_args(["dev"]).dynamodb_over_http is False


def test_the_request_moto_gets_is_the_one_normalize_request_builds(moto_url: str) -> None:
    """moto_inprocess builds moto's Request from an environ of its own: same method, URL, headers, body."""
    from botocore.awsrequest import AWSRequest
    from moto.core.request import normalize_request

    body = json.dumps({"TableName": "t", "Key": {"pk": {"S": "ä/b?c"}}}).encode()
    headers = {
        "X-Amz-Target": "DynamoDB_20120810.GetItem",
        "Content-Type": "application/x-amz-json-1.0",
        "Authorization": "AWS4-HMAC-SHA256 Credential=ASIAX/20260101/us-east-1/dynamodb/aws4_request, ...",
        "X-Amz-Date": "20260101T000000Z",
        "amz-sdk-request": b"attempt=1",
    }
    prepared = AWSRequest(method="POST", url=moto_url + "/", data=body, headers=headers).prepare()
    ours, theirs = moto_inprocess._request(prepared), normalize_request(prepared)
    for attribute in ("method", "url", "raw_url", "path", "raw_path", "host", "url_root", "content_type", "data"):
        assert getattr(ours, attribute) == getattr(theirs, attribute), attribute
    assert dict(ours.headers.items()) == dict(theirs.headers.items())
    assert ours.form == theirs.form and not ours.files


def test_a_cached_condition_is_evaluated_against_each_item_and_still_validates(moto_url: str) -> None:
    ddb = client("dynamodb", moto_url)
    create_table(ddb)
    item = {"pk": {"S": "a"}, "sk": {"N": "1"}}
    condition = {"ConditionExpression": "attribute_not_exists(pk)"}
    ddb.put_item(TableName="t", Item=item, **condition)
    for _ in range(2):  # the same expression now fails: it is evaluated against the item, not remembered
        with pytest.raises(ClientError) as taken:
            ddb.put_item(TableName="t", Item=item, **condition)
        assert taken.value.response["Error"]["Code"] == "ConditionalCheckFailedException"
    ddb.put_item(TableName="t", Item={**item, "sk": {"N": "2"}}, **condition)  # another item: passes
    for sk in ("4", "5"):  # names it does use count as used on a hit too (else "unused #v")
        ddb.put_item(
            TableName="t",
            Item={**item, "sk": {"N": sk}},
            ConditionExpression="attribute_not_exists(pk) OR #v = :v",
            ExpressionAttributeNames={"#v": "v"},
            ExpressionAttributeValues={":v": {"N": "1"}},
        )
    for _ in range(2):  # a name the expression does not use is refused, hit or miss
        with pytest.raises(ClientError) as unused:
            ddb.put_item(
                TableName="t",
                Item={**item, "sk": {"N": "3"}},
                ConditionExpression="attribute_not_exists(pk) OR #v = :v",
                ExpressionAttributeNames={"#v": "v", "#unused": "w"},
                ExpressionAttributeValues={":v": {"N": "1"}},
            )
        assert unused.value.response["Error"]["Code"] == "ValidationException"
    transaction = [
        {"Put": {"TableName": "t", "Item": {"pk": {"S": "b"}, "sk": {"N": "1"}}, **condition}},
        {"ConditionCheck": {"TableName": "t", "Key": item, "ConditionExpression": "attribute_exists(pk)"}},
    ]
    ddb.transact_write_items(TransactItems=transaction)
    with pytest.raises(ClientError) as cancelled:
        ddb.transact_write_items(TransactItems=transaction)
    reasons = [reason["Code"] for reason in cancelled.value.response["CancellationReasons"]]
    assert reasons == ["ConditionalCheckFailed", "None"]


def test_stream_length_sees_the_real_shard_in_the_middle_of_an_update(moto_url: str) -> None:
    """UpdateItem swaps the table's shard for a stand-in while it runs; the poller's unlocked peek
    must still count the shard's records (it once raised there, and the poller backed off 200 ms)."""
    from moto.dynamodb.models import dynamodb_backends

    ddb = client("dynamodb", moto_url)
    arn = create_table(ddb)
    ddb.put_item(TableName="t", Item={"pk": {"S": "a"}, "sk": {"N": "1"}})
    table = dynamodb_backends["123456789012"]["us-east-1"].tables["t"]
    real = table.stream_shard
    seen: list[int | None] = []
    add = real.add

    def add_and_peek(old: Any, new: Any) -> None:  # runs inside UpdateItem, the stand-in installed
        seen.append(moto_dynamodb.stream_length(arn))
        add(old, new)

    real.add = add_and_peek  # type: ignore[method-assign]
    try:
        ddb.update_item(
            TableName="t",
            Key={"pk": {"S": "a"}, "sk": {"N": "1"}},
            UpdateExpression="SET v = :v",
            ExpressionAttributeValues={":v": {"N": "1"}},
        )
    finally:
        del real.add
    assert table.stream_shard is real
    assert seen == [1] and moto_dynamodb.stream_length(arn) == 2


def test_a_failing_peek_falls_back_to_getrecords(moto_url: str) -> None:
    ddb, streams = client("dynamodb", moto_url), client("dynamodbstreams", moto_url)
    arn = create_table(ddb)

    def broken() -> int:
        raise AttributeError("items")

    poller = StreamPoller(
        EventSourceMapping(settings=mapping_settings(), invoke=lambda event: None), streams, arn, peek=broken
    )
    poller.mapping.stopping.set()  # its thread ends at once: poll by hand
    poller.start()  # takes the shard iterators
    try:
        reads = moto_inprocess.stats().get("GetRecords", {}).get("requests", 0)
        assert poller.poll_once() == 0
    finally:
        poller.stop()
    assert moto_inprocess.stats()["GetRecords"]["requests"] == reads + 1 and poller.skipped_polls == 0
