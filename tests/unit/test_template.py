"""template.yaml is the deployable system: hold it to the design, and the local tooling to it."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from realtime_devstack.template import (
    TEMPLATE_PATH,
    create_tables,
    event_source_mappings,
    function_environment,
    function_property,
    http_routes,
    load_template,
    parameter_defaults,
    parse_template,
    resources,
    table_definitions,
    ttl_attribute,
)

ROOT = Path(__file__).resolve().parents[2]

PRODUCER_ROUTES = {
    ("POST", "/feeds/{feedId}/events"),
    ("GET", "/feeds/{feedId}/events"),
    ("POST", "/feeds/{feedId}/control"),
}
PUBLIC_ROUTES = {("GET", "/openapi.json")}


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
    }
    assert parameters["HistoryLimit"]["Type"] == "Number"
    assert (parameters["HistoryLimit"]["MinValue"], parameters["HistoryLimit"]["MaxValue"]) == (1, 10000)
    assert parameters["HistoryTtlHours"]["Type"] == "Number"
    assert parameters["IdempotencyTtlHours"]["Type"] == "Number"
    assert "HistoryTtlHours" in parameters["IdempotencyTtlHours"]["Description"]
    # API Gateway caps a WebSocket frame at 128 KiB: an event must always fit in one.
    assert parameters["MaxEventBytes"]["MaxValue"] <= 131072
    assert "128 KiB" in parameters["MaxEventBytes"]["Description"]
    assert parameters["ProducerAuth"]["AllowedValues"] == ["IAM", "NONE"]
    assert parameters["CorsAllowOrigins"]["Type"] == "CommaDelimitedList"
    assert "INFO" in parameters["LogLevel"]["AllowedValues"]


def test_function_globals(template: dict[str, Any]) -> None:
    for logical_id in resources(template, "AWS::Serverless::Function"):
        assert function_property(template, logical_id, "Runtime") == "python3.13"
        assert function_property(template, logical_id, "Architectures") == ["arm64"]
        assert function_property(template, logical_id, "Tracing") == "Active"
        assert {"Ref": "RealtimeLayer"} in function_property(template, logical_id, "Layers")


def test_http_api_function_environment(template: dict[str, Any]) -> None:
    env = function_environment(template, "HttpApiFunction")
    assert env == {
        "EVENTS_TABLE_NAME": {"Ref": "EventsTable"},
        "REALTIME_NAME": "transport",
        "HISTORY_LIMIT": {"Ref": "HistoryLimit"},
        "HISTORY_TTL_HOURS": {"Ref": "HistoryTtlHours"},
        "IDEMPOTENCY_TTL_HOURS": {"Ref": "IdempotencyTtlHours"},
        "MAX_EVENT_BYTES": {"Ref": "MaxEventBytes"},
        "WRITER_TIMEOUT_SECONDS": 10,
        "REALTIME_SECRET_ARN": {"Ref": "RealtimeSecret"},
        "POWERTOOLS_SERVICE_NAME": "realtime-http-api",
        "POWERTOOLS_METRICS_NAMESPACE": "RealtimeTransport",
        "POWERTOOLS_LOG_LEVEL": {"Ref": "LogLevel"},
    }


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


def test_routes_default_to_iam_auth(template: dict[str, Any]) -> None:
    routes = http_routes(template)
    assert {route["function"] for route in routes} == {"HttpApiFunction"}
    assert {route["api"] for route in routes} == {"HttpApi"}
    auth = route_auth(routes)
    assert set(auth) == PRODUCER_ROUTES | PUBLIC_ROUTES
    assert {auth[route] for route in PRODUCER_ROUTES} == {"AWS_IAM"}
    assert auth[("GET", "/openapi.json")] == "NONE"
    assert route_auth(http_routes(template, {"ProducerAuth": "IAM"})) == auth


def test_producer_auth_none_opens_every_route(template: dict[str, Any]) -> None:
    auth = route_auth(http_routes(template, {"ProducerAuth": "NONE"}))
    assert set(auth) == PRODUCER_ROUTES | PUBLIC_ROUTES
    assert set(auth.values()) == {"NONE"}


def test_http_api_iam_authorizer_and_cors(template: dict[str, Any]) -> None:
    p = props(template, "HttpApi")
    assert p["Auth"]["EnableIamAuthorizer"] is True
    assert "DefaultAuthorizer" not in p["Auth"], "openapi.json must stay public"
    assert p["CorsConfiguration"]["AllowOrigins"] == {"Ref": "CorsAllowOrigins"}
    assert template["Conditions"]["UseIamAuth"] == {"Fn::Equals": [{"Ref": "ProducerAuth"}, "IAM"]}


def test_outputs(template: dict[str, Any]) -> None:
    outputs = template["Outputs"]
    assert outputs["HttpApiUrl"]["Value"] == {
        "Fn::Sub": "https://${HttpApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}"
    }
    assert outputs["EventsTableName"]["Value"] == {"Ref": "EventsTable"}
    assert outputs["RealtimeSecretArn"]["Value"] == {"Ref": "RealtimeSecret"}


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
    for logical_id in resources(template, "AWS::Serverless::Function"):
        env_refs = {target for value in function_environment(template, logical_id).values() for target in _refs(value)}
        for statement in statements(template, logical_id):
            assert statement["Effect"] == "Allow"
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            assert all("*" not in action for action in actions), (logical_id, actions)
            targets = policy_targets(statement["Resource"])
            assert "*" not in targets, (logical_id, statement)
            for target in targets:
                service = actions[0].split(":")[0]
                expected_type = {
                    "dynamodb": "AWS::DynamoDB::Table",
                    "secretsmanager": "AWS::SecretsManager::Secret",
                }.get(service)
                if expected_type:
                    assert types.get(target) == expected_type, (logical_id, statement)
                    # the function is configured to use what it may touch
                    assert target in env_refs, (logical_id, target)


def _refs(value: Any) -> set[str]:
    if isinstance(value, dict):
        if "Ref" in value:
            return {value["Ref"]}
        if "Fn::GetAtt" in value:
            return {value["Fn::GetAtt"][0]}
    return set()


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
        ("dynamodb:ConditionCheckItem", "EventsTable"),
        ("secretsmanager:GetSecretValue", "RealtimeSecret"),
    }
    table_statement = next(s for s in statements(template, "HttpApiFunction") if "dynamodb:Query" in s["Action"])
    assert table_statement["Resource"] == {"Fn::GetAtt": ["EventsTable", "Arn"]}, "the table, not its indexes"


# --- stream mappings -----------------------------------------------------------------------


def test_no_stream_mapping_yet(template: dict[str, Any]) -> None:
    assert event_source_mappings(template) == []


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
        "maximum_retry_attempts": 3,
        "bisect_batch_on_function_error": True,
        "function_response_types": ["ReportBatchItemFailures"],
        "on_failure_destination": {"Fn::GetAtt": ["Dlq", "Arn"]},
        "enabled": True,
    }
    assert other["function"] == "Other"
    assert (other["batch_size"], other["maximum_retry_attempts"]) == (100, -1)
    assert other["bisect_batch_on_function_error"] is False
    assert other["function_response_types"] == []
    assert other["filter_criteria"] is None
