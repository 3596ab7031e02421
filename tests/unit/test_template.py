"""template.yaml is the deployable system: hold it to the design, and the local tooling to it."""

from __future__ import annotations

import graphlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, get_args

import boto3
import pytest
from moto import mock_aws

from realtime_devstack.template import (
    TEMPLATE_PATH,
    TemplateError,
    create_tables,
    evaluate_condition,
    event_source_mappings,
    function_environment,
    function_property,
    functions,
    http_routes,
    load_template,
    parameter_defaults,
    parse_template,
    rate_seconds,
    referenced_logical_ids,
    resolve_conditionals,
    resolve_parameters,
    resources,
    schedules,
    table_definitions,
    ttl_attribute,
    websocket_route_selection,
    websocket_routes,
)
from realtime_transport import Realtime, clients, tokens
from realtime_transport.batch import BatchItem
from realtime_transport.connections import BY_CHANNEL_INDEX, Connection, ConnectionStore
from realtime_transport.delivery import CloseReport, DeliveryReport
from realtime_transport.fanout import WORKER_READ_TIMEOUT_SECONDS, WORKER_TIMEOUT_SECONDS, Fanout
from realtime_transport.live import LiveService
from realtime_transport.models.items import Kind, idempotency_item, position_item
from realtime_transport.models.stream import StreamRecord
from realtime_transport.models.websocket import ClientMessage
from realtime_transport.rooms import PresenceRegistry, Room, room_channel_name
from realtime_transport.rooms.outbox import RoomOutbox, room_change
from realtime_transport.rooms.presence_outbox import PresenceOutbox
from realtime_transport.settings import Settings
from realtime_transport.shards import SubscriberCache
from tests.conftest import TABLE_NAMES

ROOT = Path(__file__).resolve().parents[2]

PRODUCER_ROUTES = {
    ("POST", "/feeds/{feedId}/events"),
    ("POST", "/feeds/{feedId}/events/batch"),
    ("POST", "/feeds/{feedId}/control"),
    # the backend's room routes: IAM like the producers'
    ("GET", "/rooms/{roomId}"),
    ("PUT", "/rooms/{roomId}/metadata"),
    ("GET", "/rooms/{roomId}/members"),
    ("PATCH", "/rooms/{roomId}/state"),
}
# Browsers read history with `Authorization: Bearer <subscriber token>`, checked by the function.
TOKEN_ROUTES = {("GET", "/feeds/{feedId}/events"), ("GET", "/rooms/{roomId}/events")}
PUBLIC_ROUTES = {("GET", "/openapi.json"), ("ANY", "/$default")}

WEBSOCKET_ROUTE_KEYS = {
    "$connect",
    "$disconnect",
    "subscribe",
    "unsubscribe",
    "ping",
    "join",
    "leave",
    "members",
    "update",
    "patch",
    "auth",
    "$default",
}
MANAGE_CONNECTIONS_ARN = (
    "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${WebSocketApi}/${WebSocketStageName}"
    "/POST/@connections/*"
)
# The presence sweeper only asks about connections (GET @connections/{id}), it never posts.
PROBE_CONNECTIONS_ARN = MANAGE_CONNECTIONS_ARN.replace("/POST/", "/GET/")
# The fan-out closes a connection whose token expired (DELETE @connections/{id}); nobody else may.
CLOSE_CONNECTIONS_ARN = MANAGE_CONNECTIONS_ARN.replace("/POST/", "/DELETE/")
WEBSOCKET_MANAGEMENT_URL = "https://${WebSocketApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}/${WebSocketStageName}"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


@pytest.fixture
def dynamodb(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("AWS_ACCOUNT_ID_ENDPOINT_MODE", "disabled")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB"):
        monkeypatch.delenv(name, raising=False)
    with mock_aws():
        yield boto3.client("dynamodb", region_name="us-east-1")


def props(template: dict[str, Any], logical_id: str) -> dict[str, Any]:
    properties: dict[str, Any] = template["Resources"][logical_id]["Properties"]
    return properties


# --- the loader -------------------------------------------------------------------------


def test_loader_reads_cloudformation_short_form_tags() -> None:
    doc = parse_template(
        """
        AWSTemplateFormatVersion: 2010-09-09
        Conditions:
          IsOn: !Equals [!Ref Mode, "on"]
          Both: !And [!Condition IsOn, !Not [!Equals [!Ref Mode, "off"]]]
        Resources:
          R:
            Properties:
              A: !GetAtt Table.StreamArn
              B: !GetAtt [Table, Arn]
              C: !Sub "${AWS::StackName}-x"
              D: !Sub ["${X}", {X: !Ref Y}]
              E: !If [IsOn, !Ref AWS::NoValue, 3]
              F: !Join [",", !Split [",", !Ref L]]
              G: !Select [0, !GetAZs ""]
              H: !FindInMap [M, !Ref AWS::Region, K]
              I: !Base64 text
              J: !ImportValue other-stack-output
        """
    )
    assert doc["AWSTemplateFormatVersion"] == "2010-09-09"  # a string, not a date
    assert doc["Conditions"]["IsOn"] == {"Fn::Equals": [{"Ref": "Mode"}, "on"]}
    assert doc["Conditions"]["Both"] == {
        "Fn::And": [{"Condition": "IsOn"}, {"Fn::Not": [{"Fn::Equals": [{"Ref": "Mode"}, "off"]}]}]
    }
    p = doc["Resources"]["R"]["Properties"]
    assert p["A"] == {"Fn::GetAtt": ["Table", "StreamArn"]}
    assert p["B"] == {"Fn::GetAtt": ["Table", "Arn"]}
    assert p["C"] == {"Fn::Sub": "${AWS::StackName}-x"}
    assert p["D"] == {"Fn::Sub": ["${X}", {"X": {"Ref": "Y"}}]}
    assert p["E"] == {"Fn::If": ["IsOn", {"Ref": "AWS::NoValue"}, 3]}
    assert p["F"] == {"Fn::Join": [",", {"Fn::Split": [",", {"Ref": "L"}]}]}
    assert p["G"] == {"Fn::Select": [0, {"Fn::GetAZs": ""}]}
    assert p["H"] == {"Fn::FindInMap": ["M", {"Ref": "AWS::Region"}, "K"]}
    assert p["I"] == {"Fn::Base64": "text"}
    assert p["J"] == {"Fn::ImportValue": "other-stack-output"}


def test_load_template_reads_the_repository_template_and_hands_out_copies() -> None:
    assert TEMPLATE_PATH == ROOT / "template.yaml"
    first = load_template()
    assert first["Transform"] == "AWS::Serverless-2016-10-31"
    first["Resources"].clear()
    assert load_template()["Resources"], "a caller's change must not leak into the cache"
    assert load_template(ROOT / "template.yaml") == load_template()


# --- storage ---------------------------------------------------------------------------


def test_events_table_schema(template: dict[str, Any]) -> None:
    table = template["Resources"]["EventsTable"]
    assert table["Type"] == "AWS::DynamoDB::Table"
    assert table["DeletionPolicy"] == "Retain"
    assert table["UpdateReplacePolicy"] == "Retain"
    p = table["Properties"]
    assert p["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    assert sorted((a["AttributeName"], a["AttributeType"]) for a in p["AttributeDefinitions"]) == [
        ("pk", "S"),
        ("sk", "N"),
    ]
    assert p["BillingMode"] == "PAY_PER_REQUEST"
    assert p["StreamSpecification"] == {"StreamViewType": "NEW_IMAGE"}
    assert p["TimeToLiveSpecification"] == {"AttributeName": "ttl", "Enabled": True}
    assert p["SSESpecification"]["SSEEnabled"] is True
    assert p["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert ttl_attribute(template, "EventsTable") == "ttl"


def test_table_definitions_are_the_templates_own(template: dict[str, Any]) -> None:
    definitions = table_definitions(template)
    assert set(definitions) == set(resources(template, "AWS::DynamoDB::Table"))
    events = definitions["EventsTable"]
    p = props(template, "EventsTable")
    assert "TableName" not in events
    assert events["KeySchema"] == p["KeySchema"]
    assert events["AttributeDefinitions"] == p["AttributeDefinitions"]
    assert events["BillingMode"] == "PAY_PER_REQUEST"
    assert events["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"}


def test_create_tables_builds_the_template_schema_in_moto(template: dict[str, Any], dynamodb: Any) -> None:
    create_tables(dynamodb, {"EventsTable": "rt-events-test"})

    table = dynamodb.describe_table(TableName="rt-events-test")["Table"]
    p = props(template, "EventsTable")
    assert table["KeySchema"] == p["KeySchema"]
    assert sorted(table["AttributeDefinitions"], key=lambda a: a["AttributeName"]) == sorted(
        p["AttributeDefinitions"], key=lambda a: a["AttributeName"]
    )
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert table["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"}
    assert table["LatestStreamArn"]
    ttl = dynamodb.describe_time_to_live(TableName="rt-events-test")["TimeToLiveDescription"]
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "ttl"}

    # The schema works the way the log uses it: numeric positions under a channel key.
    for seq in (2, 10, 1):
        dynamodb.put_item(
            TableName="rt-events-test",
            Item={"pk": {"S": "transport#feed_1"}, "sk": {"N": str(seq)}, "ttl": {"N": "4102444800"}},
        )
    items = dynamodb.query(
        TableName="rt-events-test",
        KeyConditionExpression="pk = :pk AND sk > :after",
        ExpressionAttributeValues={":pk": {"S": "transport#feed_1"}, ":after": {"N": "1"}},
    )["Items"]
    assert [item["sk"]["N"] for item in items] == ["2", "10"]


def test_connections_table_schema(template: dict[str, Any]) -> None:
    table = template["Resources"]["ConnectionsTable"]
    assert table["Type"] == "AWS::DynamoDB::Table"
    assert table["DeletionPolicy"] == "Retain"
    assert table["UpdateReplacePolicy"] == "Retain"
    p = table["Properties"]
    assert p["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    assert sorted((a["AttributeName"], a["AttributeType"]) for a in p["AttributeDefinitions"]) == [
        ("channel", "S"),
        ("connectionId", "S"),
        ("deadline", "N"),
        ("pk", "S"),
        ("sk", "S"),
        ("sweep", "S"),
    ]
    assert p["StreamSpecification"] == {"StreamViewType": "NEW_AND_OLD_IMAGES"}
    assert p["GlobalSecondaryIndexes"] == [
        {
            "IndexName": "by-channel",
            "KeySchema": [
                {"AttributeName": "channel", "KeyType": "HASH"},
                {"AttributeName": "connectionId", "KeyType": "RANGE"},
            ],
            # the fan-out's hint of each subscriber's token expiry
            "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["tokenExp"]},
        },
        {
            "IndexName": "by-deadline",
            "KeySchema": [
                {"AttributeName": "sweep", "KeyType": "HASH"},
                {"AttributeName": "deadline", "KeyType": "RANGE"},
            ],
            "Projection": {"ProjectionType": "KEYS_ONLY"},
        },
    ]
    assert p["BillingMode"] == "PAY_PER_REQUEST"
    assert p["TimeToLiveSpecification"] == {"AttributeName": "ttl", "Enabled": True}
    assert p["SSESpecification"]["SSEEnabled"] is True
    assert p["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert ttl_attribute(template, "ConnectionsTable") == "ttl"


def test_connections_table_index_name_is_the_libraries(template: dict[str, Any]) -> None:
    index_names = [index["IndexName"] for index in props(template, "ConnectionsTable")["GlobalSecondaryIndexes"]]
    assert index_names == [BY_CHANNEL_INDEX, "by-deadline"]  # by-deadline: rooms.presence_store


def test_create_tables_builds_the_connections_table_in_moto(dynamodb: Any) -> None:
    create_tables(dynamodb, {"ConnectionsTable": "rt-connections-test"})

    table = dynamodb.describe_table(TableName="rt-connections-test")["Table"]
    indexes = {index["IndexName"]: index for index in table["GlobalSecondaryIndexes"]}
    assert sorted(indexes) == ["by-channel", "by-deadline"]
    assert indexes["by-channel"]["Projection"] == {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["tokenExp"]}
    assert indexes["by-deadline"]["Projection"] == {"ProjectionType": "KEYS_ONLY"}
    assert table["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
    ttl = dynamodb.describe_time_to_live(TableName="rt-connections-test")["TimeToLiveDescription"]
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "ttl"}

    # A connection item stays out of the index; its subscriptions are found by channel.
    expires = {"N": "4102444800"}
    dynamodb.put_item(
        TableName="rt-connections-test", Item={"pk": {"S": "conn#A"}, "sk": {"S": "meta"}, "ttl": expires}
    )
    for connection_id, channel in (("A", "transport#feed_1"), ("B", "transport#feed_1"), ("B", "transport#feed_2")):
        dynamodb.put_item(
            TableName="rt-connections-test",
            Item={
                "pk": {"S": f"conn#{connection_id}"},
                "sk": {"S": f"sub#{channel}"},
                "channel": {"S": channel},
                "connectionId": {"S": connection_id},
                "tokenExp": {"N": "1700000600"},
                "ttl": expires,
            },
        )
    items = dynamodb.query(
        TableName="rt-connections-test",
        IndexName="by-channel",
        KeyConditionExpression="channel = :c",
        ExpressionAttributeValues={":c": {"S": "transport#feed_1"}},
    )["Items"]
    assert sorted(item["connectionId"]["S"] for item in items) == ["A", "B"]
    # the projected expiry comes with each entry, `ttl` (not projected) does not
    assert all(item["tokenExp"] == {"N": "1700000600"} and "ttl" not in item for item in items)


def test_create_tables_rejects_a_logical_id_that_is_not_a_table(dynamodb: Any) -> None:
    with pytest.raises(KeyError):
        create_tables(dynamodb, {"HttpApiFunction": "nope"})


def test_secret_signs_cursors(template: dict[str, Any]) -> None:
    secret = template["Resources"]["RealtimeSecret"]
    assert secret["Type"] == "AWS::SecretsManager::Secret"
    generated = secret["Properties"]["GenerateSecretString"]
    assert generated["PasswordLength"] >= 48
    assert "SecretString" not in secret["Properties"], "the key is generated, never written in the template"


# --- parameters and settings -----------------------------------------------------------


def test_parameters_and_their_bounds(template: dict[str, Any]) -> None:
    parameters = template["Parameters"]
    assert parameter_defaults(template) == {
        "HistoryLimit": "500",
        "HistoryTtlHours": "168",
        "IdempotencyTtlHours": "168",
        "MaxEventBytes": "65536",
        "ProducerAuth": "IAM",
        "CorsAllowOrigins": "*",
        "LogLevel": "INFO",
        "WebSocketStageName": "live",
        "WebSocketThrottlingBurstLimit": "500",
        "WebSocketThrottlingRateLimit": "1000",
        "WebSocketAccessLogs": "Disabled",
        "HttpThrottlingBurstLimit": "1000",
        "HttpThrottlingRateLimit": "2000",
        "KmsKeyArn": "",
        "HttpApiReservedConcurrency": "0",
        "WebSocketReservedConcurrency": "0",
        "FanoutReservedConcurrency": "0",
        "DeliveryWorkerReservedConcurrency": "0",
        "FanoutShardSize": "2000",
        "RoomsOutboxReservedConcurrency": "0",
        "PresenceSweeperReservedConcurrency": "0",
        "PresenceGraceSeconds": "10",
        "PresenceLeaseSeconds": "30",
        "PresenceSweepSeconds": "10",
        "AlarmTopicArn": "",
    }
    assert parameters["FanoutShardSize"]["Type"] == "Number"
    assert (parameters["FanoutShardSize"]["MinValue"], parameters["FanoutShardSize"]["MaxValue"]) == (1, 100000)
    assert parameters["HistoryLimit"]["Type"] == "Number"
    assert (parameters["HistoryLimit"]["MinValue"], parameters["HistoryLimit"]["MaxValue"]) == (1, 10000)
    assert parameters["HistoryTtlHours"]["Type"] == "Number"
    assert parameters["IdempotencyTtlHours"]["Type"] == "Number"
    assert "HistoryTtlHours" in parameters["IdempotencyTtlHours"]["Description"]
    # The whole frame must fit API Gateway's 128 KB message limit (limits.py), whatever KB means.
    from realtime_transport.limits import MAX_MESSAGE_BYTES

    assert parameters["MaxEventBytes"]["MaxValue"] == MAX_MESSAGE_BYTES == 128_000
    assert "128 KB" in parameters["MaxEventBytes"]["Description"]
    assert parameters["ProducerAuth"]["AllowedValues"] == ["IAM", "NONE"]
    assert parameters["CorsAllowOrigins"]["Type"] == "CommaDelimitedList"
    assert "INFO" in parameters["LogLevel"]["AllowedValues"]
    stage_pattern = re.compile(parameters["WebSocketStageName"]["AllowedPattern"])
    assert stage_pattern.fullmatch("live")
    assert not stage_pattern.fullmatch("live/x"), "a stage name is one path segment of every URL and ARN"
    assert parameters["WebSocketAccessLogs"]["AllowedValues"] == ["Enabled", "EnabledWithAccountRole", "Disabled"]
    key_pattern = re.compile(parameters["KmsKeyArn"]["AllowedPattern"])
    assert key_pattern.fullmatch("")
    assert key_pattern.fullmatch("arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab")
    assert not key_pattern.fullmatch("alias/aws/dynamodb"), "an ARN: the roles' policy names the key itself"
    topic_pattern = re.compile(parameters["AlarmTopicArn"]["AllowedPattern"])
    assert topic_pattern.fullmatch("")
    assert topic_pattern.fullmatch("arn:aws:sns:eu-west-1:123456789012:ops-alerts")
    assert not topic_pattern.fullmatch("arn:aws:sqs:eu-west-1:123456789012:not-a-topic")
    for name in ("PresenceGraceSeconds", "PresenceLeaseSeconds", "PresenceSweepSeconds"):
        assert parameters[name]["Type"] == "Number", name
        assert parameters[name]["MinValue"] >= 1, "the settings take only a positive number of seconds"
    # the sweeper passes at least every 30 s, so a vanished socket leaves within about a minute
    assert parameters["PresenceSweepSeconds"]["MaxValue"] <= 30
    defaults = Settings()
    assert (defaults.presence_grace_seconds, defaults.presence_lease_seconds, defaults.presence_sweep_seconds) == (
        10,
        30,
        10,
    ), "the library's defaults are the template's"


def test_function_globals(template: dict[str, Any]) -> None:
    for logical_id in resources(template, "AWS::Serverless::Function"):
        assert function_property(template, logical_id, "Runtime") == "python3.13"
        assert function_property(template, logical_id, "Architectures") == ["arm64"]
        # No X-Ray: no code traces (see the Globals' comment for the Tracer's measured cost).
        assert function_property(template, logical_id, "Tracing") == "PassThrough"
        assert {"Ref": "RealtimeLayer"} in function_property(template, logical_id, "Layers")


SHARED_ENVIRONMENT = {
    "EVENTS_TABLE_NAME": {"Ref": "EventsTable"},
    "CONNECTIONS_TABLE_NAME": {"Ref": "ConnectionsTable"},
    "REALTIME_NAME": "transport",
    "HISTORY_LIMIT": {"Ref": "HistoryLimit"},
    "HISTORY_TTL_HOURS": {"Ref": "HistoryTtlHours"},
    "IDEMPOTENCY_TTL_HOURS": {"Ref": "IdempotencyTtlHours"},
    "MAX_EVENT_BYTES": {"Ref": "MaxEventBytes"},
    "WRITER_TIMEOUT_SECONDS": 10,
    "REALTIME_SECRET_ARN": {"Ref": "RealtimeSecret"},
    "WEBSOCKET_MANAGEMENT_URL": {"Fn::Sub": WEBSOCKET_MANAGEMENT_URL},
    "PRESENCE_GRACE_SECONDS": {"Ref": "PresenceGraceSeconds"},
    "PRESENCE_LEASE_SECONDS": {"Ref": "PresenceLeaseSeconds"},
    "PRESENCE_SWEEP_SECONDS": {"Ref": "PresenceSweepSeconds"},
    "POWERTOOLS_METRICS_NAMESPACE": "RealtimeTransport",
    "POWERTOOLS_LOG_LEVEL": {"Ref": "LogLevel"},
    "PYDANTIC_DISABLE_PLUGINS": "__all__",
}


def test_http_api_function_environment(template: dict[str, Any]) -> None:
    env = function_environment(template, "HttpApiFunction")
    assert env == {
        **SHARED_ENVIRONMENT,
        "POWERTOOLS_SERVICE_NAME": "realtime-http-api",
        # history takes the subscriber token, since API Gateway no longer asks for SigV4 there
        "REQUIRE_HISTORY_TOKEN": "true",
    }
    assert Settings.model_validate({"REQUIRE_HISTORY_TOKEN": env["REQUIRE_HISTORY_TOKEN"]}).require_history_token


def test_websocket_and_fanout_function_environments(template: dict[str, Any]) -> None:
    assert function_environment(template, "WebSocketFunction") == {
        **SHARED_ENVIRONMENT,
        "POWERTOOLS_SERVICE_NAME": "realtime-websocket",
    }
    assert function_environment(template, "FanoutFunction") == {
        **SHARED_ENVIRONMENT,
        "POWERTOOLS_SERVICE_NAME": "realtime-fanout",
        "FANOUT_SHARD_SIZE": {"Ref": "FanoutShardSize"},
        "DELIVERY_WORKER_FUNCTION": {"Ref": "DeliveryWorkerFunction"},
    }
    assert function_environment(template, "DeliveryWorkerFunction") == {
        **SHARED_ENVIRONMENT,
        "POWERTOOLS_SERVICE_NAME": "realtime-delivery-worker",
    }


def test_rooms_outbox_and_presence_sweeper_environments(template: dict[str, Any]) -> None:
    assert function_environment(template, "RoomsOutboxFunction") == {
        **SHARED_ENVIRONMENT,
        "POWERTOOLS_SERVICE_NAME": "realtime-rooms-outbox",
    }
    assert function_environment(template, "PresenceSweeperFunction") == {
        **SHARED_ENVIRONMENT,
        "POWERTOOLS_SERVICE_NAME": "realtime-presence-sweeper",
    }


def test_every_setting_a_function_gets_is_one_the_library_reads(template: dict[str, Any]) -> None:
    aliases = {field.alias for field in Settings.model_fields.values()}
    # Read by Powertools and by pydantic itself, not by the settings model.
    libraries = ("POWERTOOLS_", "PYDANTIC_")
    for logical_id in resources(template, "AWS::Serverless::Function"):
        names = {name for name in function_environment(template, logical_id) if not name.startswith(libraries)}
        assert names <= aliases, (logical_id, names - aliases)


def test_management_url_names_the_api_and_its_stage_never_the_stage_resource(template: dict[str, Any]) -> None:
    # Function -> Stage would close a cycle (Stage -> Deployment -> Route -> Integration -> Function).
    url = template["Globals"]["Function"]["Environment"]["Variables"]["WEBSOCKET_MANAGEMENT_URL"]
    assert referenced_logical_ids(url) - {"AWS::Region", "AWS::URLSuffix"} == {"WebSocketApi", "WebSocketStageName"}
    assert props(template, "WebSocketStage")["StageName"] == {"Ref": "WebSocketStageName"}


def test_writer_timeout_is_the_ingest_functions_timeout(template: dict[str, Any]) -> None:
    # A reader tombstones a hole older than WRITER_TIMEOUT_SECONDS: no live writer may be older.
    env = function_environment(template, "HttpApiFunction")
    assert int(str(env["WRITER_TIMEOUT_SECONDS"])) == function_property(template, "HttpApiFunction", "Timeout")


def test_http_api_function(template: dict[str, Any]) -> None:
    p = props(template, "HttpApiFunction")
    assert p["CodeUri"] == "functions/http_api/"
    assert p["Handler"] == "app.lambda_handler"
    assert p["Timeout"] == 10
    assert p["MemorySize"] == 512


def test_functions_code_and_sizes(template: dict[str, Any]) -> None:
    assert functions(template) == {
        "HttpApiFunction": {
            "code_uri": "functions/http_api/",
            "handler": "app.lambda_handler",
            "timeout": 10,
            "memory": 512,
        },
        "WebSocketFunction": {
            "code_uri": "functions/websocket/",
            "handler": "app.lambda_handler",
            "timeout": 10,
            "memory": 512,
        },
        # more memory is more CPU, for signing hundreds of posts per batch
        "FanoutFunction": {
            "code_uri": "functions/fanout/",
            "handler": "app.lambda_handler",
            "timeout": 60,
            "memory": 1024,
        },
        # a shard of a large channel: below the fan-out's timeout (it outlives a hung worker)
        "DeliveryWorkerFunction": {
            "code_uri": "functions/delivery_worker/",
            "handler": "app.lambda_handler",
            "timeout": 30,
            "memory": 1024,
        },
        "RoomsOutboxFunction": {
            "code_uri": "functions/rooms_outbox/",
            "handler": "app.lambda_handler",
            "timeout": 30,
            "memory": 512,
        },
        # the schedule fires every minute; passes run for most of it, the last one needs room to end
        "PresenceSweeperFunction": {
            "code_uri": "functions/presence_sweeper/",
            "handler": "app.lambda_handler",
            "timeout": 70,
            "memory": 256,
        },
    }


def test_functions_fill_in_globals_and_lambda_defaults() -> None:
    doc = parse_template(
        """
        Globals:
          Function:
            Timeout: 30
        Resources:
          A:
            Type: AWS::Serverless::Function
            Properties: {CodeUri: src/a/, Handler: main.handle}
          B:
            Type: AWS::Serverless::Function
            Properties: {CodeUri: src/b/, Handler: main.handle, Timeout: 5, MemorySize: 256}
        """
    )
    assert functions(doc) == {
        "A": {"code_uri": "src/a/", "handler": "main.handle", "timeout": 30, "memory": 128},
        "B": {"code_uri": "src/b/", "handler": "main.handle", "timeout": 5, "memory": 256},
    }
    no_code = parse_template("Resources: {C: {Type: AWS::Serverless::Function, Properties: {Handler: x.y}}}")
    with pytest.raises(TemplateError):
        functions(no_code)


def test_every_function_logs_to_a_log_group_with_retention(template: dict[str, Any]) -> None:
    for logical_id in resources(template, "AWS::Serverless::Function"):
        log_group_ref = props(template, logical_id)["LoggingConfig"]["LogGroup"]
        log_group = template["Resources"][log_group_ref["Ref"]]
        assert log_group["Type"] == "AWS::Logs::LogGroup"
        assert log_group["Properties"]["RetentionInDays"] > 0


def test_every_function_points_at_its_handler_module(template: dict[str, Any]) -> None:
    for logical_id in resources(template, "AWS::Serverless::Function"):
        p = props(template, logical_id)
        module, _, function = p["Handler"].rpartition(".")
        assert (ROOT / p["CodeUri"] / f"{module}.py").is_file(), logical_id
        assert function


def test_layer(template: dict[str, Any]) -> None:
    layer = template["Resources"]["RealtimeLayer"]
    assert layer["Type"] == "AWS::Serverless::LayerVersion"
    assert layer["Metadata"] == {"BuildMethod": "python3.13", "BuildArchitecture": "arm64"}
    p = layer["Properties"]
    assert p["ContentUri"] == "layers/realtime/"
    assert p["CompatibleRuntimes"] == ["python3.13"]
    assert p["CompatibleArchitectures"] == ["arm64"]
    assert (ROOT / "layers/realtime/realtime_transport/__init__.py").is_file()
    assert (ROOT / "layers/realtime/requirements.txt").is_file()


def test_layer_requirements_are_generated_from_pyproject() -> None:
    result = subprocess.run(  # noqa: S603 - our own script, run by this interpreter
        [sys.executable, str(ROOT / "scripts/layer_requirements.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = (ROOT / "layers/realtime/requirements.txt").read_text().splitlines()
    assert lines[0].startswith("# Generated by scripts/layer_requirements.py")
    names = {re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0].lower() for line in lines if not line.startswith("#")}
    assert "pydantic" in names
    assert not names & {"boto3", "botocore"}, "the Lambda runtime ships boto3 and botocore"


# --- HTTP API ----------------------------------------------------------------------------


def route_auth(routes: list[Any]) -> dict[tuple[str, str], str]:
    return {(route["method"], route["path"]): route["authorizer"] for route in routes}


def test_producer_routes_default_to_iam_auth(template: dict[str, Any]) -> None:
    routes = http_routes(template)
    assert {route["function"] for route in routes} == {"HttpApiFunction"}
    assert {route["api"] for route in routes} == {"HttpApi"}
    auth = route_auth(routes)
    assert set(auth) == PRODUCER_ROUTES | TOKEN_ROUTES | PUBLIC_ROUTES
    assert {auth[route] for route in PRODUCER_ROUTES} == {"AWS_IAM"}
    assert auth[("GET", "/openapi.json")] == "NONE"
    assert route_auth(http_routes(template, {"ProducerAuth": "IAM"})) == auth


def test_history_route_takes_the_subscriber_token_not_iam(template: dict[str, Any]) -> None:
    # A browser cannot sign SigV4: API Gateway lets the request through and the function
    # checks `Authorization: Bearer <subscriber token>` (REQUIRE_HISTORY_TOKEN).
    for producer_auth in ("IAM", "NONE"):
        auth = route_auth(http_routes(template, {"ProducerAuth": producer_auth}))
        assert {auth[route] for route in TOKEN_ROUTES} == {"NONE"}, producer_auth
    paths = props(template, "HttpApi")["DefinitionBody"]["paths"]
    assert "get" not in paths["/feeds/{feedId}/events"], "no security entry may put IAM back on history"
    assert "/rooms/{roomId}/events" not in paths, "a room's history takes the subscriber token, as a feed's"
    assert function_environment(template, "HttpApiFunction")["REQUIRE_HISTORY_TOKEN"] == "true"
    assert "authorization" in props(template, "HttpApi")["CorsConfiguration"]["AllowHeaders"]


def test_producer_auth_none_opens_every_route(template: dict[str, Any]) -> None:
    auth = route_auth(http_routes(template, {"ProducerAuth": "NONE"}))
    assert set(auth) == PRODUCER_ROUTES | TOKEN_ROUTES | PUBLIC_ROUTES
    assert set(auth.values()) == {"NONE"}


def test_http_api_iam_authorizer_and_cors(template: dict[str, Any]) -> None:
    p = props(template, "HttpApi")
    assert p["Auth"]["EnableIamAuthorizer"] is True
    assert "DefaultAuthorizer" not in p["Auth"], "openapi.json must stay public"
    assert p["CorsConfiguration"]["AllowOrigins"] == {"Ref": "CorsAllowOrigins"}
    # PUT metadata and PATCH state from a browser; If-Match in, ETag out (the room's version)
    assert p["CorsConfiguration"]["AllowMethods"] == ["GET", "POST", "PUT", "PATCH", "OPTIONS"]
    assert "if-match" in p["CorsConfiguration"]["AllowHeaders"]
    assert p["CorsConfiguration"]["ExposeHeaders"] == ["etag"]
    assert template["Conditions"]["UseIamAuth"] == {"Fn::Equals": [{"Ref": "ProducerAuth"}, "IAM"]}


def test_outputs(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    assert outputs["HttpApiUrl"]["Value"] == {
        "Fn::Sub": "https://${HttpApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}"
    }
    assert outputs["EventsTableName"]["Value"] == {"Ref": "EventsTable"}
    assert outputs["RealtimeSecretArn"]["Value"] == {"Ref": "RealtimeSecret"}
    assert outputs["ConnectionsTableName"]["Value"] == {"Ref": "ConnectionsTable"}
    assert outputs["WebSocketUrl"]["Value"] == {
        "Fn::Sub": "wss://${WebSocketApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}/${WebSocketStageName}"
    }
    # the very endpoint the functions post to
    assert outputs["WebSocketManagementUrl"]["Value"] == {"Fn::Sub": WEBSOCKET_MANAGEMENT_URL}
    assert outputs["FanoutDeadLetterQueueUrl"]["Value"] == {"Ref": "FanoutDeadLetterQueue"}
    assert outputs["RoomsOutboxDeadLetterQueueUrl"]["Value"] == {"Ref": "RoomsOutboxDeadLetterQueue"}


# --- WebSocket API ---------------------------------------------------------------------------


def test_websocket_api_routes_every_action_to_the_websocket_function(template: dict[str, Any]) -> None:
    api = props(template, "WebSocketApi")
    assert template["Resources"]["WebSocketApi"]["Type"] == "AWS::ApiGatewayV2::Api"
    assert api["ProtocolType"] == "WEBSOCKET"
    assert websocket_route_selection(template) == "$request.body.action"
    assert websocket_route_selection(template, "WebSocketApi") == "$request.body.action"
    assert websocket_routes(template) == dict.fromkeys(WEBSOCKET_ROUTE_KEYS, "WebSocketFunction")
    # the actions of the client messages the library accepts (and nothing it does not)
    (union, *_) = get_args(ClientMessage)
    actions = {action for model in get_args(union) for action in get_args(model.model_fields["action"].annotation)}
    assert actions == WEBSOCKET_ROUTE_KEYS - {"$connect", "$disconnect", "$default"}


def test_websocket_routes_are_lambda_proxy_without_gateway_auth(template: dict[str, Any]) -> None:
    routes = resources(template, "AWS::ApiGatewayV2::Route")
    assert {route["Properties"]["RouteKey"] for route in routes.values()} == WEBSOCKET_ROUTE_KEYS
    for logical_id, route in routes.items():
        p = route["Properties"]
        assert p["ApiId"] == {"Ref": "WebSocketApi"}, logical_id
        # $connect checks `?token=` in the function (401/403 refuse the handshake)
        assert p["AuthorizationType"] == "NONE", logical_id
        # one-way: the function replies through @connections, so no route response may echo its return value
        assert "RouteResponseSelectionExpression" not in p, logical_id
    assert not resources(template, "AWS::ApiGatewayV2::RouteResponse")
    (integration,) = resources(template, "AWS::ApiGatewayV2::Integration").values()
    p = integration["Properties"]
    assert (p["ApiId"], p["IntegrationType"], p["IntegrationMethod"]) == ({"Ref": "WebSocketApi"}, "AWS_PROXY", "POST")
    assert p["IntegrationUri"] == {
        "Fn::Sub": "arn:${AWS::Partition}:apigateway:${AWS::Region}:lambda:path/2015-03-31/functions/"
        "${WebSocketFunction.Arn}/invocations"
    }


def test_websocket_stage_deploys_every_route_on_every_update(template: dict[str, Any]) -> None:
    # A Deployment resource is a snapshot taken once: a route added later would never go live.
    # The stage deploys itself whenever the API changes, and waits for every route the first time.
    assert not resources(template, "AWS::ApiGatewayV2::Deployment")
    stage = template["Resources"]["WebSocketStage"]
    assert stage["Properties"]["AutoDeploy"] is True
    assert "DeploymentId" not in stage["Properties"], "a fixed deployment would pin the stage"
    assert set(stage["DependsOn"]) == set(resources(template, "AWS::ApiGatewayV2::Route"))


def test_websocket_stage_is_throttled_and_logs_only_on_request(template: dict[str, Any]) -> None:
    p = props(template, "WebSocketStage")
    assert p["ApiId"] == {"Ref": "WebSocketApi"}
    assert p["StageName"] == {"Ref": "WebSocketStageName"}
    assert p["DefaultRouteSettings"] == {
        "ThrottlingBurstLimit": {"Ref": "WebSocketThrottlingBurstLimit"},
        "ThrottlingRateLimit": {"Ref": "WebSocketThrottlingRateLimit"},
    }
    # Access logs need API Gateway's account-level CloudWatch role: off unless asked for.
    assert "AccessLogSettings" not in resolve_conditionals(template, p, resolve_parameters(template))
    enabled = resolve_conditionals(template, p, resolve_parameters(template, {"WebSocketAccessLogs": "Enabled"}))
    assert enabled["AccessLogSettings"]["DestinationArn"] == {"Fn::GetAtt": ["WebSocketAccessLogGroup", "Arn"]}
    access_log_format = json.loads(enabled["AccessLogSettings"]["Format"])
    assert {"requestId", "eventType", "routeKey", "connectionId", "status"} <= set(access_log_format)
    log_group = template["Resources"]["WebSocketAccessLogGroup"]
    assert log_group["Condition"] == "UseWebSocketAccessLogs"
    assert log_group["Properties"]["RetentionInDays"] > 0
    # EnabledWithAccountRole logs too, and only it sets the account's CloudWatch role.
    for value, logs, role in (
        ("Disabled", False, False),
        ("Enabled", True, False),
        ("EnabledWithAccountRole", True, True),
    ):
        parameters = resolve_parameters(template, {"WebSocketAccessLogs": value})
        assert evaluate_condition(template, "UseWebSocketAccessLogs", parameters) is logs, value
        assert evaluate_condition(template, "CreateApiGatewayAccountRole", parameters) is role, value
    for logical_id in ("ApiGatewayCloudWatchRole", "ApiGatewayAccount"):
        assert template["Resources"][logical_id]["Condition"] == "CreateApiGatewayAccountRole"
    account = props(template, "ApiGatewayAccount")
    assert account["CloudWatchRoleArn"] == {"Fn::GetAtt": ["ApiGatewayCloudWatchRole", "Arn"]}
    role = props(template, "ApiGatewayCloudWatchRole")
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": "apigateway.amazonaws.com"}
    # the stage waits for the account's role when the stack sets it (a reference under the same condition)
    with_role = resolve_conditionals(
        template, p, resolve_parameters(template, {"WebSocketAccessLogs": "EnabledWithAccountRole"})
    )
    assert "ApiGatewayAccount" in referenced_logical_ids(with_role["Description"])
    by_default = resolve_conditionals(template, p, resolve_parameters(template))
    assert "ApiGatewayAccount" not in referenced_logical_ids(by_default)


def test_http_api_stage_is_throttled_and_always_logs(template: dict[str, Any]) -> None:
    p = props(template, "HttpApi")
    assert p["DefaultRouteSettings"] == {
        "ThrottlingBurstLimit": {"Ref": "HttpThrottlingBurstLimit"},
        "ThrottlingRateLimit": {"Ref": "HttpThrottlingRateLimit"},
    }
    # HTTP APIs need no account-level role for access logs: unconditional
    assert p["AccessLogSettings"]["DestinationArn"] == {"Fn::GetAtt": ["HttpApiAccessLogGroup", "Arn"]}
    access_log_format = json.loads(p["AccessLogSettings"]["Format"])
    assert {"requestId", "method", "routeKey", "status", "ip", "integrationError"} <= set(access_log_format)
    assert all(value.startswith("$context.") for value in access_log_format.values())
    log_group = template["Resources"]["HttpApiAccessLogGroup"]
    assert "Condition" not in log_group
    assert log_group["Properties"]["RetentionInDays"] > 0
    parameters = template["Parameters"]
    for name in ("HttpThrottlingBurstLimit", "HttpThrottlingRateLimit"):
        assert parameters[name]["Type"] == "Number" and parameters[name]["MinValue"] >= 1, name


def test_only_this_apis_stage_may_invoke_the_websocket_function(template: dict[str, Any]) -> None:
    (permission,) = (
        resource
        for resource in resources(template, "AWS::Lambda::Permission").values()
        if resource["Properties"]["FunctionName"] == {"Ref": "WebSocketFunction"}
    )
    p = permission["Properties"]
    assert p["Action"] == "lambda:InvokeFunction"
    assert p["Principal"] == "apigateway.amazonaws.com"
    assert p["SourceArn"] == {
        "Fn::Sub": "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${WebSocketApi}"
        "/${WebSocketStageName}/*"
    }


def test_websocket_function(template: dict[str, Any]) -> None:
    p = props(template, "WebSocketFunction")
    assert "Events" not in p, "invoked through the WebSocket API's integration, not a SAM event"
    assert function_environment(template, "WebSocketFunction")["POWERTOOLS_SERVICE_NAME"] == "realtime-websocket"


# --- fan-out and its alarms --------------------------------------------------------------------


def test_fanout_function(template: dict[str, Any]) -> None:
    p = props(template, "FanoutFunction")
    assert set(p["Events"]) == {"EventsStream"}
    assert p["Events"]["EventsStream"]["Type"] == "DynamoDB"
    assert p["Events"]["EventsStream"]["Properties"]["Stream"] == {"Fn::GetAtt": ["EventsTable", "StreamArn"]}
    # a batch of 100 must be deliverable within the timeout, retries to slow connections included
    assert p["Timeout"] >= 30


def test_rooms_outbox_function(template: dict[str, Any]) -> None:
    p = props(template, "RoomsOutboxFunction")
    assert set(p["Events"]) == {"RoomChanges", "PresenceChanges"}
    assert p["Events"]["RoomChanges"]["Properties"]["Stream"] == {"Fn::GetAtt": ["EventsTable", "StreamArn"]}
    assert p["Events"]["PresenceChanges"]["Properties"]["Stream"] == {"Fn::GetAtt": ["ConnectionsTable", "StreamArn"]}
    # a member's leave needs the item as it was
    assert props(template, "ConnectionsTable")["StreamSpecification"]["StreamViewType"] == "NEW_AND_OLD_IMAGES"
    assert "Events" not in props(template, "WebSocketFunction")


def test_presence_sweeper_runs_every_minute_and_passes_within_it(template: dict[str, Any]) -> None:
    p = props(template, "PresenceSweeperFunction")
    assert p["Events"] == {
        "Sweep": {
            "Type": "ScheduleV2",
            "Properties": {
                "ScheduleExpression": "rate(1 minute)",
                "Description": "Presence sweeper (leases and grace periods)",
                "FlexibleTimeWindow": {"Mode": "OFF"},
                "RetryPolicy": {"MaximumRetryAttempts": 0},
            },
        }
    }
    assert schedules(template) == [
        {
            "function": "PresenceSweeperFunction",
            "event": "Sweep",
            "type": "ScheduleV2",
            "expression": "rate(1 minute)",
            "rate_seconds": 60,
            "input": None,
            "enabled": True,
        }
    ]
    # an invocation passes for the whole minute, and its last pass still fits the timeout
    assert 60 < p["Timeout"] <= 90
    assert template["Parameters"]["PresenceSweepSeconds"]["MaxValue"] < 60


def test_schedules_read_rates_and_refuse_what_the_local_stack_cannot_run() -> None:
    assert rate_seconds("rate(1 minute)") == 60
    assert rate_seconds("rate(5 minutes)") == 300
    assert rate_seconds("rate(2 hours)") == 7200
    assert rate_seconds("rate(1 day)") == 86400
    for expression in ("rate(1 minutes)", "rate(2 minute)", "rate(0 minutes)", "cron(0 12 * * ? *)", "rate(10 s)"):
        with pytest.raises(TemplateError):
            rate_seconds(expression)
    doc = parse_template(
        """
        Resources:
          Job:
            Type: AWS::Serverless::Function
            Properties:
              Events:
                Old:
                  Type: Schedule
                  Properties: {Schedule: rate(5 minutes), Enabled: false, Input: '{"a": 1}'}
                New:
                  Type: ScheduleV2
                  Properties: {ScheduleExpression: rate(1 hour), State: DISABLED}
                Api:
                  Type: HttpApi
        """
    )
    assert [(s["event"], s["type"], s["rate_seconds"], s["input"], s["enabled"]) for s in schedules(doc)] == [
        ("Old", "Schedule", 300, '{"a": 1}', False),
        ("New", "ScheduleV2", 3600, None, False),
    ]


def test_fanout_dead_letter_queue(template: dict[str, Any]) -> None:
    queue = template["Resources"]["FanoutDeadLetterQueue"]
    assert queue["Type"] == "AWS::SQS::Queue"
    encryption = resolve_conditionals(template, queue["Properties"], resolve_parameters(template))
    assert encryption["SqsManagedSseEnabled"] is True and "KmsMasterKeyId" not in encryption
    assert queue["Properties"]["MessageRetentionPeriod"] == 14 * 24 * 3600


KMS_KEY = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def _encryption(template: dict[str, Any], overrides: dict[str, str] | None = None) -> dict[str, Any]:
    """What each encrypted resource is given, with KmsKeyArn as in `overrides`."""
    parameters = resolve_parameters(template, overrides)
    found: dict[str, Any] = {}
    for logical_id, resource in template["Resources"].items():
        if "Condition" in resource and not evaluate_condition(template, resource["Condition"], parameters):
            continue
        p = resolve_conditionals(template, resource.get("Properties") or {}, parameters)
        kind = resource["Type"]
        if kind == "AWS::DynamoDB::Table":
            found[logical_id] = p["SSESpecification"]
        elif kind == "AWS::SQS::Queue":
            found[logical_id] = {k: p[k] for k in ("SqsManagedSseEnabled", "KmsMasterKeyId") if k in p}
        elif kind in ("AWS::Logs::LogGroup", "AWS::SecretsManager::Secret"):
            found[logical_id] = p.get("KmsKeyId")
    return found


def test_a_customer_kms_key_encrypts_tables_queues_log_groups_and_the_secret(template: dict[str, Any]) -> None:
    key = {"Ref": "KmsKeyArn"}
    with_key = _encryption(template, {"KmsKeyArn": KMS_KEY, "WebSocketAccessLogs": "Enabled"})
    tables = {"EventsTable", "ConnectionsTable"}
    queues = {"FanoutDeadLetterQueue", "RoomsOutboxDeadLetterQueue"}
    log_groups = set(resources(template, "AWS::Logs::LogGroup"))
    assert set(with_key) == tables | queues | log_groups | {"RealtimeSecret"}
    for logical_id in tables:
        assert with_key[logical_id] == {"SSEEnabled": True, "SSEType": "KMS", "KMSMasterKeyId": key}, logical_id
    for logical_id in queues:
        assert with_key[logical_id] == {"KmsMasterKeyId": key}, "SQS-managed SSE and a key are exclusive"
    for logical_id in log_groups | {"RealtimeSecret"}:
        assert with_key[logical_id] == key, logical_id
    globals_key = resolve_conditionals(
        template, template["Globals"]["Function"], resolve_parameters(template, {"KmsKeyArn": KMS_KEY})
    )
    assert globals_key["KmsKeyArn"] == key, "and the functions' environment"
    # without one: AWS-managed (tables, secret) and SQS-managed keys, still encrypted at rest
    without = _encryption(template, {"WebSocketAccessLogs": "Enabled"})
    for logical_id in tables:
        assert without[logical_id] == {"SSEEnabled": True}, logical_id
    for logical_id in queues:
        assert without[logical_id] == {"SqsManagedSseEnabled": True}, logical_id
    assert all(without[logical_id] is None for logical_id in log_groups | {"RealtimeSecret"})
    assert "KmsKeyArn" not in resolve_conditionals(
        template, template["Globals"]["Function"], resolve_parameters(template)
    )


def test_the_functions_roles_may_use_the_key_through_the_services_only(template: dict[str, Any]) -> None:
    policy = template["Resources"]["FunctionsKmsKeyPolicy"]
    assert policy["Type"] == "AWS::IAM::ManagedPolicy" and policy["Condition"] == "UseKmsKey"
    p = policy["Properties"]
    # SAM names the role it makes for a function <function>Role
    assert p["Roles"] == [{"Ref": f"{f}Role"} for f in resources(template, "AWS::Serverless::Function")]
    (statement,) = p["PolicyDocument"]["Statement"]
    assert statement["Action"] == ["kms:Decrypt", "kms:GenerateDataKey"]
    assert statement["Resource"] == {"Ref": "KmsKeyArn"}
    services = {item["Fn::Sub"].split(".")[0] for item in statement["Condition"]["StringEquals"]["kms:ViaService"]}
    assert services == {"dynamodb", "secretsmanager", "sqs", "lambda"}


def test_reserved_concurrency_is_a_parameter_per_function_and_0_leaves_it_unreserved(template: dict[str, Any]) -> None:
    for logical_id in resources(template, "AWS::Serverless::Function"):
        name = logical_id.removesuffix("Function") + "ReservedConcurrency"
        parameter = template["Parameters"][name]
        assert (parameter["Type"], parameter["Default"], parameter["MinValue"]) == ("Number", 0, 0), name
        value = props(template, logical_id)["ReservedConcurrentExecutions"]
        # Lambda's 0 would throttle every invocation: the parameter's 0 means "no reservation"
        unset = resolve_conditionals(template, {"v": value}, resolve_parameters(template))
        assert unset == {}, logical_id
        assert resolve_conditionals(template, {"v": value}, resolve_parameters(template, {name: "5"})) == {
            "v": {"Ref": name}
        }, logical_id


def test_the_secret_outlives_the_stack(template: dict[str, Any]) -> None:
    # it signs every token and cursor: a deleted or replaced secret invalidates all of them
    secret = template["Resources"]["RealtimeSecret"]
    assert (secret["DeletionPolicy"], secret["UpdateReplacePolicy"]) == ("Retain", "Retain")


CHECKOV_SKIPS = {
    # DLQs apply to asynchronous invocations; VPC for functions that reach only AWS endpoints
    "HttpApiFunction": {"CKV_AWS_116", "CKV_AWS_117"},
    "WebSocketFunction": {"CKV_AWS_116", "CKV_AWS_117"},
    "FanoutFunction": {"CKV_AWS_116", "CKV_AWS_117"},
    "DeliveryWorkerFunction": {"CKV_AWS_116", "CKV_AWS_117"},
    "RoomsOutboxFunction": {"CKV_AWS_116", "CKV_AWS_117"},
    "PresenceSweeperFunction": {"CKV_AWS_116", "CKV_AWS_117"},
    # access logs on request (they need the account-level CloudWatch role)
    "WebSocketStage": {"CKV_AWS_95"},
}


def test_every_checkov_skip_is_listed_and_says_why(template: dict[str, Any]) -> None:
    skips = {
        logical_id: {skip["id"]: skip.get("comment", "") for skip in resource["Metadata"]["checkov"]["skip"]}
        for logical_id, resource in template["Resources"].items()
        if "checkov" in (resource.get("Metadata") or {})
    }
    assert {logical_id: set(ids) for logical_id, ids in skips.items()} == CHECKOV_SKIPS
    for logical_id, ids in skips.items():
        for check, comment in ids.items():
            assert len(comment.split()) >= 8, f"{logical_id} {check}: a skip needs its reason"


def _alarm(template: dict[str, Any], metric: str, target: str = "Fanout") -> dict[str, Any]:
    """The alarm on `metric` of the fan-out's function or queue (`target`: "Fanout", "RoomsOutbox", ...)."""
    (alarm,) = (
        resource["Properties"]
        for resource in resources(template, "AWS::CloudWatch::Alarm").values()
        if resource["Properties"]["MetricName"] == metric
        and referenced_logical_ids(resource["Properties"]["Dimensions"])
        & {f"{target}Function", f"{target}DeadLetterQueue"}
    )
    return alarm


def test_every_alarm_watches_a_function_or_a_dead_letter_queue(template: dict[str, Any]) -> None:
    watched = sorted(
        (resource["Properties"]["MetricName"], *sorted(referenced_logical_ids(resource["Properties"]["Dimensions"])))
        for resource in resources(template, "AWS::CloudWatch::Alarm").values()
    )
    assert watched == [
        ("ApproximateNumberOfMessagesVisible", "FanoutDeadLetterQueue"),
        ("ApproximateNumberOfMessagesVisible", "RoomsOutboxDeadLetterQueue"),
        ("Errors", "FanoutFunction"),
        ("Errors", "PresenceSweeperFunction"),
        ("Errors", "RoomsOutboxFunction"),
        ("IteratorAge", "FanoutFunction"),
        ("IteratorAge", "RoomsOutboxFunction"),
    ]


def test_rooms_outbox_and_sweeper_alarms_are_the_fanouts(template: dict[str, Any]) -> None:
    """The same thresholds as the fan-out's: any dead letter, a minute of lag, any function error."""
    same = ("Namespace", "Statistic", "Period", "EvaluationPeriods", "Threshold", "ComparisonOperator")
    for metric in ("ApproximateNumberOfMessagesVisible", "IteratorAge", "Errors"):
        fanout, outbox = _alarm(template, metric), _alarm(template, metric, "RoomsOutbox")
        assert {k: outbox[k] for k in same} == {k: fanout[k] for k in same}, metric
        assert outbox["TreatMissingData"] == "notBreaching"
    sweeper = _alarm(template, "Errors", "PresenceSweeper")
    assert {k: sweeper[k] for k in same} == {k: _alarm(template, "Errors")[k] for k in same}
    assert props(template, "RoomsOutboxDeadLetterQueue") == props(template, "FanoutDeadLetterQueue")


def test_delivery_alarms(template: dict[str, Any]) -> None:
    dead_letters = _alarm(template, "ApproximateNumberOfMessagesVisible")
    assert dead_letters["Namespace"] == "AWS/SQS"
    assert dead_letters["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["FanoutDeadLetterQueue", "QueueName"]}}
    ]
    assert (dead_letters["ComparisonOperator"], dead_letters["Threshold"]) == ("GreaterThanThreshold", 0)

    lag = _alarm(template, "IteratorAge")
    assert lag["Namespace"] == "AWS/Lambda"
    assert lag["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": "FanoutFunction"}}]
    assert (lag["Statistic"], lag["Period"], lag["EvaluationPeriods"]) == ("Maximum", 300, 1)
    assert (lag["ComparisonOperator"], lag["Threshold"]) == ("GreaterThanThreshold", 60000)

    errors = _alarm(template, "Errors")
    assert errors["Namespace"] == "AWS/Lambda"
    assert errors["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": "FanoutFunction"}}]
    assert (errors["Statistic"], errors["ComparisonOperator"], errors["Threshold"]) == (
        "Sum",
        "GreaterThanThreshold",
        0,
    )
    for alarm in (dead_letters, lag, errors):
        assert alarm["TreatMissingData"] == "notBreaching", "no traffic is not an incident"


def test_alarms_notify_the_topic_only_when_one_is_given(template: dict[str, Any]) -> None:
    topic = "arn:aws:sns:eu-west-1:123456789012:ops-alerts"
    for logical_id, alarm in resources(template, "AWS::CloudWatch::Alarm").items():
        silent = resolve_conditionals(template, alarm["Properties"], resolve_parameters(template))
        assert "AlarmActions" not in silent and "OKActions" not in silent, logical_id
        loud = resolve_conditionals(
            template, alarm["Properties"], resolve_parameters(template, {"AlarmTopicArn": topic})
        )
        assert loud["AlarmActions"] == [{"Ref": "AlarmTopicArn"}], logical_id
        assert loud["OKActions"] == [{"Ref": "AlarmTopicArn"}], logical_id


# --- the resource graph -------------------------------------------------------------------------


def test_resources_depend_on_each_other_without_a_cycle(template: dict[str, Any]) -> None:
    graph = {
        logical_id: (referenced_logical_ids(resource.get("Properties") or {}) | set(resource.get("DependsOn") or []))
        & set(template["Resources"])
        for logical_id, resource in template["Resources"].items()
    }
    # the Globals (every function's environment and layers) count for every function
    globals_refs = referenced_logical_ids(template["Globals"]["Function"]) & set(template["Resources"])
    for logical_id in resources(template, "AWS::Serverless::Function"):
        graph[logical_id] |= globals_refs
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError
    for logical_id in resources(template, "AWS::Serverless::Function"):
        assert "WebSocketStage" not in graph[logical_id], logical_id


# --- least privilege ---------------------------------------------------------------------

_SUB_REFERENCE = re.compile(r"\$\{([A-Za-z0-9]+)(?:\.[A-Za-z]+)?\}")


def policy_targets(resource: Any) -> set[str]:
    """Logical ids a policy statement's Resource names (a literal "*" is returned as "*")."""
    if isinstance(resource, list):
        return set().union(*(policy_targets(item) for item in resource)) if resource else set()
    if resource == "*":
        return {"*"}
    if isinstance(resource, dict) and "Ref" in resource:
        return {resource["Ref"]}
    if isinstance(resource, dict) and "Fn::GetAtt" in resource:
        return {resource["Fn::GetAtt"][0]}
    if isinstance(resource, dict) and "Fn::Sub" in resource:
        text = resource["Fn::Sub"] if isinstance(resource["Fn::Sub"], str) else resource["Fn::Sub"][0]
        return {name for name in _SUB_REFERENCE.findall(text) if not name.startswith("AWS")}
    raise AssertionError(f"cannot tell what {resource!r} grants access to")


def statements(template: dict[str, Any], logical_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for policy in props(template, logical_id).get("Policies", []):
        assert isinstance(policy, dict) and "Statement" in policy, (
            f"{logical_id}: only inline statements, no managed policies or broad SAM policy templates"
        )
        found.extend(policy["Statement"])
    return found


def test_every_function_policy_names_only_what_it_uses(template: dict[str, Any]) -> None:
    types = {logical_id: resource["Type"] for logical_id, resource in template["Resources"].items()}
    mappings = event_source_mappings(template)
    for logical_id in resources(template, "AWS::Serverless::Function"):
        env_refs = {target for value in function_environment(template, logical_id).values() for target in _refs(value)}
        for statement in statements(template, logical_id):
            assert statement["Effect"] == "Allow"
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            assert all("*" not in action for action in actions), (logical_id, actions)
            services = {action.split(":")[0] for action in actions}
            assert len(services) == 1, f"{logical_id}: one service per statement, {statement}"
            service = services.pop()
            targets = policy_targets(statement["Resource"])
            assert "*" not in targets, (logical_id, statement)
            assert targets, (logical_id, statement)
            if service == "execute-api":
                # only this stack's WebSocket API, on the stage the functions post to (or, for the
                # sweeper's probe, read from)
                assert actions == ["execute-api:ManageConnections"], (logical_id, statement)
                assert statement["Resource"] in (
                    {"Fn::Sub": MANAGE_CONNECTIONS_ARN},
                    {"Fn::Sub": PROBE_CONNECTIONS_ARN},
                    {"Fn::Sub": CLOSE_CONNECTIONS_ARN},
                ), (logical_id, statement)
                assert env_refs >= {"WebSocketApi"}, logical_id
                continue
            for target in targets:
                expected_type = {
                    "dynamodb": "AWS::DynamoDB::Table",
                    "secretsmanager": "AWS::SecretsManager::Secret",
                    "sqs": "AWS::SQS::Queue",
                    "lambda": "AWS::Serverless::Function",
                }[service]
                assert types.get(target) == expected_type, (logical_id, statement)
                if service == "sqs":
                    # the stream mapping's failure destination: Lambda writes there with the function's role
                    assert target in {m["on_failure_target"] for m in mappings if m["function"] == logical_id}
                else:
                    # the function is configured to use what it may touch
                    assert target in env_refs, (logical_id, target)


def _refs(value: Any) -> set[str]:
    return referenced_logical_ids(value)


def grants(template: dict[str, Any], logical_id: str) -> set[tuple[str, str]]:
    """(action, resource) pairs a function's inline policy allows; resources as written, rendered as JSON."""
    return {
        (action, json.dumps(resource, sort_keys=True))
        for statement in statements(template, logical_id)
        for action in (statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]])
        for resource in (statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]])
    }


def arn_of(logical_id: str) -> str:
    return json.dumps({"Fn::GetAtt": [logical_id, "Arn"]})


BY_CHANNEL_INDEX_ARN = json.dumps({"Fn::Sub": "${ConnectionsTable.Arn}/index/by-channel"})
BY_DEADLINE_INDEX_ARN = json.dumps({"Fn::Sub": "${ConnectionsTable.Arn}/index/by-deadline"})
SECRET = json.dumps({"Ref": "RealtimeSecret"})
MANAGE_CONNECTIONS = json.dumps({"Fn::Sub": MANAGE_CONNECTIONS_ARN})
PROBE_CONNECTIONS = json.dumps({"Fn::Sub": PROBE_CONNECTIONS_ARN})
CLOSE_CONNECTIONS = json.dumps({"Fn::Sub": CLOSE_CONNECTIONS_ARN})


def test_http_api_function_policy_is_exactly_what_ingest_and_history_need(template: dict[str, Any]) -> None:
    granted = {
        (action, next(iter(policy_targets(statement["Resource"]))))
        for statement in statements(template, "HttpApiFunction")
        for action in (statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]])
    }
    assert granted == {
        ("dynamodb:GetItem", "EventsTable"),
        ("dynamodb:PutItem", "EventsTable"),
        ("dynamodb:UpdateItem", "EventsTable"),
        ("dynamodb:Query", "EventsTable"),
        ("dynamodb:BatchGetItem", "EventsTable"),  # a batch publish reads its keys at once
        # a room's members and count: consistent Queries of its items, reads only
        ("dynamodb:Query", "ConnectionsTable"),
        ("secretsmanager:GetSecretValue", "RealtimeSecret"),
    }
    for statement in statements(template, "HttpApiFunction"):
        if statement["Action"] != "secretsmanager:GetSecretValue":
            assert "Fn::GetAtt" in statement["Resource"], "the tables, not their indexes"
    connections = {action for action, resource in grants(template, "HttpApiFunction") if "ConnectionsTable" in resource}
    assert connections == {"dynamodb:Query"}, "presence is written over the WebSocket only"


def test_websocket_function_policy_is_exactly_what_subscribing_needs(template: dict[str, Any]) -> None:
    assert grants(template, "WebSocketFunction") == {
        # catch-up reads history, and tombstones a position whose writer died
        ("dynamodb:GetItem", arn_of("EventsTable")),
        ("dynamodb:Query", arn_of("EventsTable")),
        ("dynamodb:PutItem", arn_of("EventsTable")),
        # the connection, its subscriptions and presence, always by key (never an index); a
        # member's creation and deletion are transactions: their Put/Update/Delete need these
        ("dynamodb:GetItem", arn_of("ConnectionsTable")),
        ("dynamodb:PutItem", arn_of("ConnectionsTable")),
        ("dynamodb:UpdateItem", arn_of("ConnectionsTable")),
        ("dynamodb:DeleteItem", arn_of("ConnectionsTable")),
        ("dynamodb:Query", arn_of("ConnectionsTable")),
        ("dynamodb:BatchWriteItem", arn_of("ConnectionsTable")),
        ("secretsmanager:GetSecretValue", SECRET),
        # replies (pong, subscribed, errors, missed events) go out through @connections
        ("execute-api:ManageConnections", MANAGE_CONNECTIONS),
    }


def test_fanout_function_policy_is_exactly_what_delivery_needs(template: dict[str, Any]) -> None:
    assert grants(template, "FanoutFunction") == {
        # subscribers by channel; a gone connection's items by its key, deleted in one batch
        ("dynamodb:Query", BY_CHANNEL_INDEX_ARN),
        ("dynamodb:Query", arn_of("ConnectionsTable")),
        ("dynamodb:BatchWriteItem", arn_of("ConnectionsTable")),
        # before that, its room memberships leave (`disconnected`): membership deleted, member updated
        ("dynamodb:DeleteItem", arn_of("ConnectionsTable")),
        ("dynamodb:UpdateItem", arn_of("ConnectionsTable")),
        ("execute-api:ManageConnections", MANAGE_CONNECTIONS),
        # a subscriber whose index entry says its token expired: its connection item (consistent),
        # then, still expired, DELETE @connections/{id}
        ("dynamodb:GetItem", arn_of("ConnectionsTable")),
        ("execute-api:ManageConnections", CLOSE_CONNECTIONS),
        # a channel's bucket versions, one consistent BatchGetItem per channel per batch
        ("dynamodb:BatchGetItem", arn_of("ConnectionsTable")),
        # live frames carry their event's signed cursor
        ("secretsmanager:GetSecretValue", SECRET),
        # the mapping's on-failure destination (the stream itself: SAM's AWSLambdaDynamoDBExecutionRole)
        ("sqs:SendMessage", arn_of("FanoutDeadLetterQueue")),
        # large batches: one synchronous Invoke per shard, of the delivery worker only
        ("lambda:InvokeFunction", arn_of("DeliveryWorkerFunction")),
    }
    assert not any("EventsTable" in resource for _, resource in grants(template, "FanoutFunction")), (
        "the fan-out reads events from the stream, never the table"
    )
    env = function_environment(template, "FanoutFunction")
    assert env["DELIVERY_WORKER_FUNCTION"] == {"Ref": "DeliveryWorkerFunction"}
    assert env["FANOUT_SHARD_SIZE"] == {"Ref": "FanoutShardSize"}


def test_delivery_worker_policy_is_exactly_posting_and_reading_its_buckets(template: dict[str, Any]) -> None:
    # Frames arrive built and signed: no secret. Read and deliver: the index (reads only), the
    # connection item of an expired hint, and DELETE for a token confirmed expired.
    assert grants(template, "DeliveryWorkerFunction") == {
        ("execute-api:ManageConnections", MANAGE_CONNECTIONS),
        ("dynamodb:Query", BY_CHANNEL_INDEX_ARN),
        ("dynamodb:GetItem", arn_of("ConnectionsTable")),
        ("execute-api:ManageConnections", CLOSE_CONNECTIONS),
    }
    roles = props(template, "FunctionsKmsKeyPolicy")["Roles"]
    assert {"Ref": "DeliveryWorkerFunctionRole"} in roles, "the table's customer key, when there is one"
    worker = props(template, "DeliveryWorkerFunction")
    assert worker["Timeout"] < props(template, "FanoutFunction")["Timeout"], "the coordinator outlives a hung worker"
    # The fan-out retries a failed shard only while a whole worker run still fits before its
    # deadline: it must know the worker's Timeout, and wait for an answer longer than that.
    assert worker["Timeout"] == WORKER_TIMEOUT_SECONDS < WORKER_READ_TIMEOUT_SECONDS
    assert worker["ReservedConcurrentExecutions"] == {
        "Fn::If": ["ReserveDeliveryWorker", {"Ref": "DeliveryWorkerReservedConcurrency"}, {"Ref": "AWS::NoValue"}]
    }
    # Invoked synchronously: no DLQ nor event invoke config (asynchronous invocations only).
    assert "DeadLetterQueue" not in worker and "EventInvokeConfig" not in worker
    assert not worker.get("Events"), "invoked by the fan-out only"


def test_rooms_outbox_function_policy_is_exactly_what_publishing_needs(template: dict[str, Any]) -> None:
    assert grants(template, "RoomsOutboxFunction") == {
        # channel.publish with an idempotency key: the key's read, the position's ADD, the
        # transaction's two Puts (and a failed writer's tombstone)
        ("dynamodb:GetItem", arn_of("EventsTable")),
        ("dynamodb:PutItem", arn_of("EventsTable")),
        ("dynamodb:UpdateItem", arn_of("EventsTable")),
        # both mappings' on-failure destination (the streams: SAM's AWSLambdaDynamoDBExecutionRole)
        ("sqs:SendMessage", arn_of("RoomsOutboxDeadLetterQueue")),
    }
    assert not any("ConnectionsTable" in resource for _, resource in grants(template, "RoomsOutboxFunction")), (
        "presence changes come from the stream, the table is never read"
    )


def test_presence_sweeper_function_policy_is_exactly_what_sweeping_needs(template: dict[str, Any]) -> None:
    assert grants(template, "PresenceSweeperFunction") == {
        # what is due: one Query per shard of the by-deadline index
        ("dynamodb:Query", BY_DEADLINE_INDEX_ARN),
        # re-checked against the item, then renewed, or left (membership deleted, member updated),
        # a member deleted with its count shard in one transaction (Delete + Update)
        ("dynamodb:GetItem", arn_of("ConnectionsTable")),
        ("dynamodb:UpdateItem", arn_of("ConnectionsTable")),
        ("dynamodb:DeleteItem", arn_of("ConnectionsTable")),
        # the probe: GET @connections/{id}
        ("execute-api:ManageConnections", PROBE_CONNECTIONS),
    }
    assert not any("EventsTable" in resource for _, resource in grants(template, "PresenceSweeperFunction"))


def test_manage_connections_is_scoped_to_this_api_stage_and_post(template: dict[str, Any]) -> None:
    arn = MANAGE_CONNECTIONS_ARN
    api_and_stage = arn.split(":")[-1]
    assert api_and_stage == "${WebSocketApi}/${WebSocketStageName}/POST/@connections/*"
    assert template["Resources"]["WebSocketApi"]["Type"] == "AWS::ApiGatewayV2::Api"
    assert "WebSocketStageName" in template["Parameters"]
    for logical_id, allowed in (
        ("WebSocketFunction", [{"Fn::Sub": arn}]),
        # the fan-out also closes connections whose token expired: DELETE, never GET
        ("FanoutFunction", [{"Fn::Sub": arn}, {"Fn::Sub": CLOSE_CONNECTIONS_ARN}]),
    ):
        manage = [s for s in statements(template, logical_id) if s["Action"] == "execute-api:ManageConnections"]
        assert [s["Resource"] for s in manage] == allowed, logical_id
    assert CLOSE_CONNECTIONS_ARN.endswith("${WebSocketStageName}/DELETE/@connections/*")
    # the sweeper's probe: GET only (lastActiveAt or 410), it can neither post nor disconnect
    manage = [
        s for s in statements(template, "PresenceSweeperFunction") if s["Action"] == "execute-api:ManageConnections"
    ]
    assert [s["Resource"] for s in manage] == [{"Fn::Sub": PROBE_CONNECTIONS_ARN}]
    assert PROBE_CONNECTIONS_ARN.endswith("${WebSocketStageName}/GET/@connections/*")
    assert not any("ManageConnections" in action for action, _ in grants(template, "RoomsOutboxFunction"))


# --- stream mappings -----------------------------------------------------------------------


def _mapping(template: dict[str, Any], function: str, event: str) -> Any:
    (mapping,) = (m for m in event_source_mappings(template) if (m["function"], m["event"]) == (function, event))
    return mapping


def test_stream_mappings_are_the_fanouts_and_the_rooms_outboxs(template: dict[str, Any]) -> None:
    assert sorted((m["function"], m["event"], m["table"]) for m in event_source_mappings(template)) == [
        ("FanoutFunction", "EventsStream", "EventsTable"),
        ("RoomsOutboxFunction", "PresenceChanges", "ConnectionsTable"),
        ("RoomsOutboxFunction", "RoomChanges", "EventsTable"),
    ]


def test_fanout_reads_new_events_from_the_stream(template: dict[str, Any]) -> None:
    mapping = _mapping(template, "FanoutFunction", "EventsStream")
    assert mapping == {
        "function": "FanoutFunction",
        "event": "EventsStream",
        "table": "EventsTable",
        "batch_size": 100,
        "maximum_batching_window_seconds": 0,
        "starting_position": "LATEST",
        "filter_criteria": {
            "Filters": [{"Pattern": '{"eventName": ["INSERT"], "dynamodb": {"NewImage": {"kind": {"S": ["event"]}}}}'}]
        },
        "filter_patterns": [{"eventName": ["INSERT"], "dynamodb": {"NewImage": {"kind": {"S": ["event"]}}}}],
        "maximum_retry_attempts": 5,
        "bisect_batch_on_function_error": True,
        # the handler reports only the records whose subscribers it could not read
        "function_response_types": ["ReportBatchItemFailures"],
        "on_failure_destination": {"Fn::GetAtt": ["FanoutDeadLetterQueue", "Arn"]},
        "on_failure_target": "FanoutDeadLetterQueue",
        "maximum_record_age_seconds": 3600,
        # one batch per shard at a time: a channel's events stay in order
        "parallelization_factor": 1,
        "enabled": True,
    }
    # Written inline (and asserted above), so SAM must not add a second policy from `Type`.
    on_failure = props(template, "FanoutFunction")["Events"]["EventsStream"]["Properties"]["DestinationConfig"]
    assert on_failure == {"OnFailure": {"Destination": {"Fn::GetAtt": ["FanoutDeadLetterQueue", "Arn"]}}}


def _matches(pattern: Any, value: Any) -> bool:
    """Lambda event filtering, as far as the template uses it: nested objects and lists of exact values."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(
            key in value and _matches(sub_pattern, value[key]) for key, sub_pattern in pattern.items()
        )
    return value in pattern


def _stream_record(event_name: str, image: dict[str, Any]) -> dict[str, Any]:
    return {
        "eventName": event_name,
        "eventSource": "aws:dynamodb",
        "dynamodb": {"Keys": {"pk": image["pk"], "sk": image["sk"]}, "NewImage": image, "SequenceNumber": "1"},
    }


def test_stream_filter_passes_exactly_the_records_the_fanout_delivers(template: dict[str, Any]) -> None:
    mapping = _mapping(template, "FanoutFunction", "EventsStream")
    patterns = mapping["filter_patterns"]
    event_json = '{"id": "01J", "channel": "feed_1", "seq": 7}'
    event = position_item("transport#feed_1", 7, Kind.EVENT, 1, 4102444800, event_json)
    tombstone = position_item("transport#feed_1", 8, Kind.TOMBSTONE, 1, 4102444800)
    head = {"pk": {"S": "transport#feed_1"}, "sk": {"N": "0"}, "kind": {"S": "head"}, "head": {"N": "8"}}
    idem = idempotency_item("transport#feed_1", "e-1", "f", event_json, 4102444800)
    records = {
        "event inserted": (_stream_record("INSERT", event), True),
        "event modified": (_stream_record("MODIFY", event), False),
        "event expired": (_stream_record("REMOVE", event), False),
        "tombstone": (_stream_record("INSERT", tombstone), False),
        "head": (_stream_record("MODIFY", head), False),
        "new head": (_stream_record("INSERT", head), False),
        "idempotency key": (_stream_record("INSERT", idem), False),
    }
    sample = json.loads((ROOT / "events/dynamodb_stream_insert.json").read_text())["Records"]
    records.update({f"sample record {n}": (record, True) for n, record in enumerate(sample)})
    for name, (record, delivered) in records.items():
        passes = any(_matches(pattern, record) for pattern in patterns)
        assert passes is delivered, name
        # the library's own test of a record agrees with the filter AWS applies
        assert StreamRecord.from_record(record).deliverable is delivered, name


ROOMS_OUTBOX_MAPPING = {
    "function": "RoomsOutboxFunction",
    "batch_size": 100,
    "maximum_batching_window_seconds": 0,
    # an outbox must see every change, also those written before its mapping polled
    "starting_position": "TRIM_HORIZON",
    "maximum_retry_attempts": 10,
    "bisect_batch_on_function_error": True,
    # the outbox reports a room's (a member's) first failure and everything after it
    "function_response_types": ["ReportBatchItemFailures"],
    "on_failure_destination": {"Fn::GetAtt": ["RoomsOutboxDeadLetterQueue", "Arn"]},
    "on_failure_target": "RoomsOutboxDeadLetterQueue",
    "maximum_record_age_seconds": 3600,
    # one batch per shard at a time: a room's changes, a member's changes, stay in order
    "parallelization_factor": 1,
    "enabled": True,
}


def test_rooms_outbox_reads_room_changes_from_the_events_stream(template: dict[str, Any]) -> None:
    pattern = '{"eventName": ["INSERT", "MODIFY"], "dynamodb": {"NewImage": {"kind": {"S": ["room"]}}}}'
    assert _mapping(template, "RoomsOutboxFunction", "RoomChanges") == {
        **ROOMS_OUTBOX_MAPPING,
        "event": "RoomChanges",
        "table": "EventsTable",
        "filter_criteria": {"Filters": [{"Pattern": pattern}]},
        "filter_patterns": [json.loads(pattern)],
    }


def test_rooms_outbox_reads_member_changes_from_the_connections_stream(template: dict[str, Any]) -> None:
    pattern = '{"dynamodb": {"Keys": {"sk": {"S": [{"prefix": "member#"}]}}}}'
    assert _mapping(template, "RoomsOutboxFunction", "PresenceChanges") == {
        **ROOMS_OUTBOX_MAPPING,
        "event": "PresenceChanges",
        "table": "ConnectionsTable",
        "filter_criteria": {"Filters": [{"Pattern": pattern}]},
        "filter_patterns": [json.loads(pattern)],
    }


def _keyed_record(event_name: str, pk: str, sk: str, image: dict[str, Any] | None = None) -> dict[str, Any]:
    keys = {"pk": {"S": pk}, "sk": {"S": sk}}
    record: dict[str, Any] = {
        "eventName": event_name,
        "eventSource": "aws:dynamodb",
        "dynamodb": {"Keys": keys, "SequenceNumber": "1"},
    }
    if image is not None:
        record["dynamodb"]["NewImage" if event_name != "REMOVE" else "OldImage"] = {**keys, **image}
    return record


def test_rooms_outbox_filters_pass_exactly_room_and_member_changes(template: dict[str, Any]) -> None:
    """Run with the local stack's implementation of Lambda's filter rules (prefix included)."""
    from realtime_devstack.stream_poller import parse_filter_criteria, passes

    rooms = parse_filter_criteria(_mapping(template, "RoomsOutboxFunction", "RoomChanges")["filter_criteria"])
    room_item = {
        "pk": {"S": "transport#room#R"},
        "sk": {"N": "0"},
        "kind": {"S": "room"},
        "lastChange": {"S": json.dumps({"version": 2, "kind": "room.metadata", "metadata": {}, "paths": []})},
    }
    event_json = '{"id": "01J", "channel": "room_R", "seq": 1}'
    room_records = {
        "room created": (_stream_record("INSERT", room_item), True),
        "room changed": (_stream_record("MODIFY", room_item), True),
        "room removed": (_stream_record("REMOVE", room_item), False),
        "event on the room channel": (
            _stream_record("INSERT", position_item("transport#room_R", 1, Kind.EVENT, 1, 4102444800, event_json)),
            False,
        ),
    }
    for name, (record, delivered) in room_records.items():
        assert passes(rooms, record) is delivered, name
        assert (room_change(record, "transport") is not None) is delivered, name

    members = parse_filter_criteria(_mapping(template, "RoomsOutboxFunction", "PresenceChanges")["filter_criteria"])
    member_records = {
        "member joined": (_keyed_record("INSERT", "room#transport#R", "member#alice", {"rev": {"N": "1"}}), True),
        "member updated": (_keyed_record("MODIFY", "room#transport#R", "member#alice", {"rev": {"N": "2"}}), True),
        "member left": (_keyed_record("REMOVE", "room#transport#R", "member#alice", {"rev": {"N": "2"}}), True),
        "count shard": (_keyed_record("MODIFY", "room#transport#R", "count#3", {"n": {"N": "1"}}), False),
        "membership": (_keyed_record("INSERT", "conn#c1", "room#transport#R", {"memberId": {"S": "a"}}), False),
        "connection": (_keyed_record("INSERT", "conn#c1", "meta", {"sub": {"S": "alice"}}), False),
        "subscription": (_keyed_record("INSERT", "conn#c1", "sub#transport#room_R", {}), False),
    }
    for name, (record, delivered) in member_records.items():
        assert passes(members, record) is delivered, name


def test_stream_mappings_are_read_with_lambda_defaults() -> None:
    doc = parse_template(
        """
        Resources:
          EventsTable:
            Type: AWS::DynamoDB::Table
            Properties: {}
          Fanout:
            Type: AWS::Serverless::Function
            Properties:
              Events:
                Stream:
                  Type: DynamoDB
                  Properties:
                    Stream: !GetAtt EventsTable.StreamArn
                    StartingPosition: LATEST
                    BatchSize: 50
                    MaximumRetryAttempts: 3
                    BisectBatchOnFunctionError: true
                    FunctionResponseTypes: [ReportBatchItemFailures]
                    FilterCriteria:
                      Filters:
                        - Pattern: '{"eventName": ["INSERT"]}'
                    DestinationConfig:
                      OnFailure:
                        Destination: !GetAtt Dlq.Arn
                Api:
                  Type: HttpApi
          Other:
            Type: AWS::Serverless::Function
            Properties:
              Events:
                Bare:
                  Type: DynamoDB
                  Properties:
                    Stream: !GetAtt EventsTable.StreamArn
                    StartingPosition: TRIM_HORIZON
        """
    )
    fanout, other = event_source_mappings(doc)
    assert fanout == {
        "function": "Fanout",
        "event": "Stream",
        "table": "EventsTable",
        "batch_size": 50,
        "maximum_batching_window_seconds": 0,
        "starting_position": "LATEST",
        "filter_criteria": {"Filters": [{"Pattern": '{"eventName": ["INSERT"]}'}]},
        "filter_patterns": [{"eventName": ["INSERT"]}],
        "maximum_retry_attempts": 3,
        "bisect_batch_on_function_error": True,
        "function_response_types": ["ReportBatchItemFailures"],
        "on_failure_destination": {"Fn::GetAtt": ["Dlq", "Arn"]},
        "on_failure_target": "Dlq",
        "maximum_record_age_seconds": -1,
        "parallelization_factor": 1,
        "enabled": True,
    }
    assert other["function"] == "Other"
    assert (other["batch_size"], other["maximum_retry_attempts"]) == (100, -1)
    assert other["bisect_batch_on_function_error"] is False
    assert other["function_response_types"] == []
    assert other["filter_criteria"] is None
    assert other["filter_patterns"] == []
    assert (other["on_failure_destination"], other["on_failure_target"]) == (None, None)


@pytest.mark.parametrize("pattern", ["not json", "[1, 2]"])
def test_stream_filter_patterns_must_be_json_objects(pattern: str) -> None:
    doc = parse_template(
        f"""
        Resources:
          EventsTable: {{Type: AWS::DynamoDB::Table, Properties: {{}}}}
          Fanout:
            Type: AWS::Serverless::Function
            Properties:
              Events:
                Stream:
                  Type: DynamoDB
                  Properties:
                    Stream: !GetAtt EventsTable.StreamArn
                    StartingPosition: LATEST
                    FilterCriteria:
                      Filters:
                        - Pattern: '{pattern}'
        """
    )
    with pytest.raises(TemplateError, match="Pattern"):
        event_source_mappings(doc)


# --- the policies cover what the code does -------------------------------------------------

_TRANSACT_ACTIONS = {
    "Put": "dynamodb:PutItem",
    "Update": "dynamodb:UpdateItem",
    "Delete": "dynamodb:DeleteItem",
    "ConditionCheck": "dynamodb:ConditionCheckItem",
}


class DynamoDBRequests:
    """The IAM (action, resource) pairs of the DynamoDB requests made through realtime_transport's clients."""

    def __init__(self, table_ids: dict[str, str]) -> None:
        self._table_ids = table_ids  # physical name -> logical id
        self.made: set[tuple[str, str]] = set()

    def _table(self, name: str, index: str | None = None) -> str:
        logical_id = self._table_ids[name]
        if index:
            return json.dumps({"Fn::Sub": f"${{{logical_id}.Arn}}/index/{index}"})
        return arn_of(logical_id)

    def __call__(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        operation = model.name
        if operation == "TransactWriteItems":
            for item in params["TransactItems"]:
                ((kind, request),) = item.items()
                self.made.add((_TRANSACT_ACTIONS[kind], self._table(request["TableName"])))
        elif operation in {"BatchWriteItem", "BatchGetItem"}:
            for name in params["RequestItems"]:
                self.made.add((f"dynamodb:{operation}", self._table(name)))
        else:
            self.made.add((f"dynamodb:{operation}", self._table(params["TableName"], params.get("IndexName"))))

    def take(self) -> set[tuple[str, str]]:
        made, self.made = self.made, set()
        return made


class _Pusher:
    """Accepts every frame; reports the connections in `gone` as gone (410)."""

    def __init__(self, gone: set[str]) -> None:
        self.gone = gone

    def send(self, connection_id: str, data: bytes) -> bool:
        return connection_id not in self.gone

    def send_many(self, plan: Mapping[str, Sequence[bytes]], *, budget_s: float | None = None) -> DeliveryReport:
        gone = sorted(set(plan) & self.gone)
        return DeliveryReport(delivered=sum(len(plan[c]) for c in plan if c not in self.gone), gone=gone)

    def disconnect_many(self, farewells: Mapping[str, bytes | None], *, budget_s: float | None = None) -> CloseReport:
        return CloseReport(closed=sorted(set(farewells) - self.gone), gone=sorted(set(farewells) & self.gone))


def test_each_functions_policy_covers_the_requests_its_code_makes(template: dict[str, Any], aws: Any) -> None:
    """Producers, subscribers and the fan-out on moto, each DynamoDB request checked against its function's role."""
    requests = DynamoDBRequests({name: logical_id for logical_id, name in TABLE_NAMES.items()})
    events = clients.session().events
    events.register("before-parameter-build.dynamodb", requests)
    try:
        _exercise_every_function(template, requests)
    finally:
        events.unregister("before-parameter-build.dynamodb", requests)


def _exercise_every_function(template: dict[str, Any], requests: DynamoDBRequests) -> None:
    settings = Settings.model_validate(
        {"EVENTS_TABLE_NAME": TABLE_NAMES["EventsTable"], "CONNECTIONS_TABLE_NAME": TABLE_NAMES["ConnectionsTable"]}
    )
    realtime = Realtime(settings=settings, secret=b"policy-test-secret-of-at-least-32-bytes")
    channel = realtime.channel("feed_1")

    # HttpApiFunction: keyed and plain events, a retry, history pages.
    for n in range(3):
        channel.broadcast(type="t", data={"n": n}, idempotency_key=f"e-{n}")
    assert channel.broadcast(type="t", data={"n": 0}, idempotency_key="e-0").duplicate
    channel.publish(type="feed.control", data={"action": "pause"})
    channel.history(limit=2, cursor=channel.history(limit=1).next_cursor)
    event_json = channel.history(limit=1).items[0].model_copy(update={"seq": 6}).to_json()  # for the fan-out
    # POST /feeds/{feedId}/events/batch: its events all carry a key (eventId).
    channel.broadcast_batch([BatchItem(type="t", data=n, idempotency_key=f"b-{n}") for n in range(2)])
    http_requests = requests.take()
    assert http_requests and http_requests <= grants(template, "HttpApiFunction"), http_requests - grants(
        template, "HttpApiFunction"
    )
    http_feed_requests = http_requests

    # WebSocketFunction: connect, subscribe with catch-up, ping, unsubscribe, disconnect.
    live = LiveService(realtime, _Pusher(gone=set()))
    token = tokens.issue(realtime.secret, sub="tester", channels=["feed_*"])
    for connection_id in ("c1", "c2"):
        live.connect(connection_id, token)
        live.handle(
            connection_id, json.dumps({"action": "subscribe", "channel": "feed_1", "cursor": channel.cursor(1)})
        )
    live.handle("c1", json.dumps({"action": "ping"}))
    live.handle("c1", json.dumps({"action": "unsubscribe", "channel": "feed_1"}))
    live.handle("c1", "not json")
    live.disconnect("c1")
    # auth: the connection item renewed, its subscriptions' tokenExp updated
    live.handle(
        "c2", json.dumps({"action": "auth", "token": tokens.issue(realtime.secret, sub="tester", channels=["feed_*"])})
    )
    websocket_requests = requests.take()
    assert websocket_requests and websocket_requests <= grants(template, "WebSocketFunction"), (
        websocket_requests - grants(template, "WebSocketFunction")
    )

    # WebSocketFunction, rooms (what its room actions call): a join that creates the member (a
    # transaction), a second tab, update, members, a patch, a ping's heartbeat, a leave that deletes
    # the member (a transaction), and a $disconnect that starts a grace period.
    registry = PresenceRegistry(realtime)
    rooms = Room(realtime, "R")
    for connection_id, token in (("r1", "alice"), ("r2", "alice"), ("r3", "bob"), ("r4", "bob"), ("c2", "carl")):
        if connection_id != "c2":
            live.connect(connection_id, tokens.issue(realtime.secret, sub=token, channels=["feed_*", "room_*"]))
        rooms.presence.join(connection_id, token, {"name": connection_id})
    rooms.presence.update("r1", "alice", {"name": "Alice"})
    rooms.presence.members(limit=1)
    rooms.patch(0, merge_patch={"title": "T"})
    registry.heartbeat("r1")
    rooms.presence.leave("r3")
    rooms.presence.leave("r1")
    rooms.presence.leave("r2")  # alice's last tab: deleted
    registry.connection_gone("c2")  # $disconnect (before the connection's items are deleted)
    live.disconnect("c2")
    room_requests = requests.take()
    assert ("dynamodb:UpdateItem", arn_of("ConnectionsTable")) in room_requests, "heartbeats and tabs"
    assert room_requests <= grants(template, "WebSocketFunction"), room_requests - grants(template, "WebSocketFunction")
    assert websocket_requests | room_requests == dynamodb_grants(template, "WebSocketFunction"), "nothing unused"
    assert [m.member_id for m in rooms.presence.members().items] == ["bob", "carl"], "r4 is in, carl in grace"

    # HttpApiFunction, rooms: the snapshot (with the member count), metadata, a patch, members, history.
    rooms.get()
    rooms.set_metadata({"topic": "t"}, if_match="*")
    rooms.patch(rooms.state().version, merge_patch={"n": 1})
    rooms.presence.members(limit=10)
    realtime.channel(room_channel_name("R")).history(limit=10)
    http_requests = requests.take()
    assert ("dynamodb:Query", arn_of("ConnectionsTable")) in http_requests
    assert http_requests <= grants(template, "HttpApiFunction"), http_requests - grants(template, "HttpApiFunction")
    assert http_feed_requests | http_requests == dynamodb_grants(template, "HttpApiFunction"), "nothing unused"

    # FanoutFunction: subscribers by channel, then the gone connection r4 leaves its room
    # (`disconnected`: a grace period) and is forgotten.
    fanout = Fanout(
        ConnectionStore(clients.dynamodb(), TABLE_NAMES["ConnectionsTable"]),
        _Pusher(gone={"r4"}),
        presence=PresenceRegistry(realtime),
        cache=SubscriberCache(),  # as deployed: the channel's version item is read too
    )
    live.handle("r4", json.dumps({"action": "subscribe", "channel": "room_R"}))
    # x1's token expired: its index entry says so, its connection item (read to confirm) too
    store = ConnectionStore(clients.dynamodb(), TABLE_NAMES["ConnectionsTable"])
    store.put_connection(Connection("x1", "xavier", ("room_*",), int(time.time()) - 60, 1_700_000_000_000))
    store.subscribe("x1", realtime.channel("room_R").key, token_exp=int(time.time()) - 60)
    requests.take()
    record = _stream_record(
        "INSERT", position_item(realtime.channel("room_R").key, 1, Kind.EVENT, 1, 4102444800, event_json)
    )
    result = fanout.deliver([record])
    assert result.deleted == ["r4"] and result.left_rooms == {"r4": ["R"]}
    assert result.expired == ["x1"] and result.closing.closed == ["x1"]
    fanout_requests = requests.take()
    assert fanout_requests and fanout_requests <= grants(template, "FanoutFunction"), fanout_requests - grants(
        template, "FanoutFunction"
    )
    assert fanout_requests == dynamodb_grants(template, "FanoutFunction"), "nothing unused"

    # DeliveryWorkerFunction, read and deliver: a bucket of room_R (r4 and x1's), x1's expired hint
    # confirmed against its connection item, then closed.
    from realtime_transport.connections import subscriber_bucket
    from realtime_transport.workers import ReadRequest, read_and_deliver

    key = realtime.channel("room_R").key
    units = [{"key": f"{key}#{subscriber_bucket(c)}", "lo": "a"} for c in ("r4", "x1")]
    read = read_and_deliver(_Pusher(gone=set()), store, ReadRequest(units=units, frames=["{}"]), remaining_ms=10_000)
    assert read.expired == ["x1"] and read.closed == ["x1"]
    worker_requests = requests.take()
    assert worker_requests == dynamodb_grants(template, "DeliveryWorkerFunction"), worker_requests ^ dynamodb_grants(
        template, "DeliveryWorkerFunction"
    )

    # PresenceSweeperFunction: grace periods over (bob, after r4's 410; carl; r5's member), a live
    # lease renewed (r6); then, later still, leases over (probe: gone).
    other = Room(realtime, "S").presence
    for connection_id in ("r5", "r6"):
        other.join(connection_id, connection_id)
    registry.connection_gone("r5")
    requests.take()
    far = time.time() + 3600
    report = PresenceRegistry(realtime).sweep(far, lambda connection_id: None if connection_id != "r6" else far)
    assert report.deleted and report.renewed == 1, report
    sweeper_requests = requests.take()
    assert sweeper_requests <= grants(template, "PresenceSweeperFunction"), sweeper_requests - grants(
        template, "PresenceSweeperFunction"
    )
    report = PresenceRegistry(realtime).sweep(far + 3600, lambda connection_id: None)
    assert report.timed_out, report
    timeout_requests = requests.take()
    assert timeout_requests <= grants(template, "PresenceSweeperFunction"), timeout_requests - grants(
        template, "PresenceSweeperFunction"
    )
    assert sweeper_requests | timeout_requests == dynamodb_grants(template, "PresenceSweeperFunction")

    # RoomsOutboxFunction: a room change and a presence change, each published on room_R.
    room_item = {
        "pk": {"S": "transport#room#R"},
        "sk": {"N": "0"},
        "kind": {"S": "room"},
        "lastChange": {
            "S": json.dumps({"version": 9, "kind": "room.metadata", "metadata": {}, "paths": [], "by": None})
        },
    }
    member_image = {
        "pk": {"S": "room#transport#R"},
        "sk": {"S": "member#carol"},
        "memberId": {"S": "carol"},
        "member": {"S": "{}"},
        "session": {"S": "0001700000000000.abcd1234"},
        "rev": {"N": "1"},
        "joinedAt": {"N": "1700000000000"},
    }
    member_record = _keyed_record("INSERT", "room#transport#R", "member#carol")
    member_record["dynamodb"]["NewImage"] = member_image
    member_record["dynamodb"]["SequenceNumber"] = "2"
    outbox_records = [_stream_record("MODIFY", room_item), member_record]
    assert not RoomOutbox(realtime).publish(outbox_records).failed
    assert not PresenceOutbox(realtime).publish(outbox_records).failed
    outbox_requests = requests.take()
    assert outbox_requests == dynamodb_grants(template, "RoomsOutboxFunction"), outbox_requests ^ dynamodb_grants(
        template, "RoomsOutboxFunction"
    )


def dynamodb_grants(template: dict[str, Any], logical_id: str) -> set[tuple[str, str]]:
    return {(action, resource) for action, resource in grants(template, logical_id) if action.startswith("dynamodb:")}
