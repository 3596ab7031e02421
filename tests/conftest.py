"""Shared fixtures: in-process moto with tables built from template.yaml."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from realtime_devstack.aws_env import use_local_aws

REPO = Path(__file__).resolve().parents[1]
EVENTS = REPO / "events"

# Before anything imports boto3: fake credentials, no real endpoint, no metrics on stdout.
use_local_aws(os.environ)
os.environ.update(
    POWERTOOLS_METRICS_NAMESPACE="RealtimeTransportTests",
    POWERTOOLS_SERVICE_NAME="tests",
    POWERTOOLS_METRICS_DISABLED="true",
    POWERTOOLS_LOG_LEVEL="WARNING",
    EVENTS_TABLE_NAME="test-events",
    CONNECTIONS_TABLE_NAME="test-connections",
)

TABLE_NAMES = {"EventsTable": "test-events", "ConnectionsTable": "test-connections"}


@pytest.fixture
def aws() -> Iterator[Any]:
    """moto in-process (with our transaction fix), tables created from template.yaml."""
    import boto3
    from moto import mock_aws

    from realtime_devstack import moto_dynamodb, template
    from realtime_transport import clients

    moto_dynamodb.install()
    with mock_aws():
        clients.session.cache_clear()
        clients.client.cache_clear()
        client = boto3.client("dynamodb")
        definitions = template.table_definitions(template.load_template())
        template.create_tables(client, {k: v for k, v in TABLE_NAMES.items() if k in definitions})
        yield client
        clients.session.cache_clear()
        clients.client.cache_clear()


@pytest.fixture
def faithful(aws: Any) -> Iterator[Callable[..., Any]]:
    """``faithful(**kwargs)`` turns on AWS's documented behaviours (``realtime_devstack.faithful.Faults``)
    over the ``aws`` fixture's moto; everything is back to the kind defaults at teardown."""
    from realtime_devstack import faithful as substrate

    def configure(**kwargs: Any) -> Any:
        faults = substrate.Faults(**kwargs)
        substrate.configure(faults)
        return faults

    try:
        yield configure
    finally:
        substrate.reset()


@pytest.fixture
def settings_factory() -> Callable[..., Any]:
    from realtime_transport import Settings

    def make(**overrides: Any) -> Settings:
        # Both tables the `aws` fixture creates (Room.get() reads the member count from the connections table).
        values = {
            "EVENTS_TABLE_NAME": TABLE_NAMES["EventsTable"],
            "CONNECTIONS_TABLE_NAME": TABLE_NAMES["ConnectionsTable"],
            **overrides,
        }
        return Settings.model_validate(values)

    return make


@pytest.fixture
def realtime(aws: Any, settings_factory: Callable[..., Any]) -> Any:
    from realtime_transport import Realtime

    return Realtime(history_limit=500, settings=settings_factory(), secret=b"unit-test-secret")


@pytest.fixture
def http_handler(aws: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[dict[str, Any]], Any]]:
    """functions/http_api's handler, freshly imported (a cold start) over the `aws` fixture's tables."""
    from realtime_transport.settings import get_settings

    get_settings.cache_clear()
    monkeypatch.setenv("REALTIME_TOKEN_SECRET", "unit-test-secret-long-enough-for-hs256")
    module = load_function("http_api")
    yield lambda event: module.lambda_handler(event, LambdaContext())
    get_settings.cache_clear()


def load_function(name: str) -> Any:
    """Import functions/<name>/app.py afresh (a cold start), with its folder on the path as on Lambda."""
    code_dir = REPO / "functions" / name
    if str(code_dir) not in sys.path:
        sys.path.insert(0, str(code_dir))
    spec = importlib.util.spec_from_file_location(f"_fn_{name}_{uuid.uuid4().hex}", code_dir / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class LambdaContext:
    function_name = "test-function"
    function_version = "$LATEST"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:test-function"
    aws_request_id = "00000000-0000-0000-0000-000000000000"
    log_group_name = "/aws/lambda/test-function"
    log_stream_name = "test"

    def get_remaining_time_in_millis(self) -> int:
        return 10_000


def sample_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / f"{name}.json").read_text())


def stream_records(table: str, after: str | None = None) -> list[dict[str, Any]]:
    """Every record of a table's stream so far (after sequence number `after`), oldest first:
    what an outbox's event source mapping would hand over, read from moto's real stream."""
    import boto3

    streams: Any = boto3.client("dynamodbstreams")
    arn = boto3.client("dynamodb").describe_table(TableName=table)["Table"]["LatestStreamArn"]
    records: list[dict[str, Any]] = []
    for shard in streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]:
        iterator = streams.get_shard_iterator(
            StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        while iterator:
            page = streams.get_records(ShardIterator=iterator, Limit=1000)
            records.extend(page["Records"])
            iterator = page.get("NextShardIterator") if page["Records"] else None
    if after is not None:
        numbers = [r["dynamodb"]["SequenceNumber"] for r in records]
        records = records[numbers.index(after) + 1 :]
    return records
