"""Read ``template.yaml``: the one source of truth for tables, settings and wiring.

The local stack and the tests build their DynamoDB tables, function environments and
stream mappings from the deployed template itself, so they cannot drift from it.

CloudFormation short-form tags are read as their long form: ``!Ref X`` becomes
``{"Ref": "X"}``, ``!GetAtt A.B`` becomes ``{"Fn::GetAtt": ["A", "B"]}``, ``!Sub s`` becomes
``{"Fn::Sub": "s"}`` and so on.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import yaml

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "template.yaml"

TABLE_TYPE = "AWS::DynamoDB::Table"
FUNCTION_TYPE = "AWS::Serverless::Function"
HTTP_API_TYPE = "AWS::Serverless::HttpApi"
ESM_TYPE = "AWS::Lambda::EventSourceMapping"
GATEWAY_API_TYPE = "AWS::ApiGatewayV2::Api"
GATEWAY_ROUTE_TYPE = "AWS::ApiGatewayV2::Route"
GATEWAY_INTEGRATION_TYPE = "AWS::ApiGatewayV2::Integration"

# Lambda's defaults for a function without Timeout or MemorySize.
DEFAULT_FUNCTION_TIMEOUT_SECONDS = 3
DEFAULT_FUNCTION_MEMORY_MB = 128

# Lambda's defaults for a DynamoDB stream event source mapping.
DEFAULT_STREAM_BATCH_SIZE = 100
DEFAULT_MAXIMUM_RETRY_ATTEMPTS = -1  # retry until the record expires
DEFAULT_BATCHING_WINDOW_SECONDS = 0
DEFAULT_MAXIMUM_RECORD_AGE_SECONDS = -1  # no limit: until the record expires
DEFAULT_PARALLELIZATION_FACTOR = 1


class TemplateError(ValueError):
    """The template holds something this module cannot read without deploying it."""


# --- YAML with CloudFormation tags --------------------------------------------------------


class CloudFormationLoader(yaml.SafeLoader):
    """A safe loader for CloudFormation YAML.

    Short-form intrinsic tags become their JSON form, and timestamps stay strings
    (CloudFormation reads ``2010-09-09`` as text, PyYAML would make it a date).
    """


CloudFormationLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _construct_node(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    raise yaml.constructor.ConstructorError(None, None, f"unexpected YAML node {node!r}", node.start_mark)


def _construct_intrinsic(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    value = _construct_node(loader, node)
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "Condition":
        return {"Condition": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        resource, _, attribute = value.partition(".")
        return {"Fn::GetAtt": [resource, attribute]}
    return {f"Fn::{tag_suffix}": value}


CloudFormationLoader.add_multi_constructor("!", _construct_intrinsic)


def parse_template(text: str) -> dict[str, Any]:
    document = yaml.load(text, Loader=CloudFormationLoader)  # noqa: S506 - a SafeLoader subclass
    if not isinstance(document, dict):
        raise TemplateError("a template is a YAML mapping")
    return document


@functools.cache
def _load_cached(path: Path) -> dict[str, Any]:
    return parse_template(path.read_text(encoding="utf-8"))


def load_template(path: Path | None = None) -> dict[str, Any]:
    """The parsed template (the repository's ``template.yaml`` by default).

    Parsed once per path; every call returns its own copy, free to change.
    """
    return copy.deepcopy(_load_cached((path or TEMPLATE_PATH).resolve()))


# --- helpers --------------------------------------------------------------------------


def resources(template: Mapping[str, Any], resource_type: str | None = None) -> dict[str, dict[str, Any]]:
    """Logical id -> resource, optionally only those of one type."""
    found: dict[str, dict[str, Any]] = template.get("Resources") or {}
    return {
        logical_id: resource
        for logical_id, resource in found.items()
        if resource_type is None or resource.get("Type") == resource_type
    }


def _resource(template: Mapping[str, Any], logical_id: str, resource_type: str) -> dict[str, Any]:
    resource = resources(template).get(logical_id)
    if resource is None or resource.get("Type") != resource_type:
        raise KeyError(f"{logical_id} is not a {resource_type} in the template")
    return resource


def _properties(resource: Mapping[str, Any]) -> dict[str, Any]:
    properties: dict[str, Any] = resource.get("Properties") or {}
    return properties


def is_intrinsic(value: Any) -> bool:
    """True for ``{"Ref": ...}``, ``{"Condition": ...}`` and ``{"Fn::...": ...}``."""
    if not isinstance(value, dict) or len(value) != 1:
        return False
    key = next(iter(value))
    return isinstance(key, str) and (key in {"Ref", "Condition"} or key.startswith("Fn::"))


def _literal(value: Any, where: str) -> Any:
    """``value`` if it holds no intrinsic function, else a TemplateError naming ``where``."""
    if is_intrinsic(value):
        raise TemplateError(f"{where} must be a literal value to be used locally, not {value!r}")
    if isinstance(value, dict):
        return {key: _literal(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [_literal(item, f"{where}[{index}]") for index, item in enumerate(value)]
    return value


def _is_true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def referenced_logical_id(value: Any) -> str | None:
    """The logical id a ``Ref`` or ``Fn::GetAtt`` points at, if ``value`` is one."""
    if isinstance(value, dict) and len(value) == 1:
        if "Ref" in value and isinstance(value["Ref"], str):
            return value["Ref"]
        if "Fn::GetAtt" in value:
            target = value["Fn::GetAtt"]
            if isinstance(target, list) and target and isinstance(target[0], str):
                return target[0]
    return None


_SUB_PLACEHOLDER = re.compile(r"\$\{([^}!][^}]*)\}")


def referenced_logical_ids(value: Any) -> set[str]:
    """Every name ``value`` refers to: Refs, GetAtts and ``${...}`` in Fn::Sub, at any depth.

    Parameters and pseudo parameters (``AWS::Region``) are included; intersect the result
    with the logical ids of interest.
    """
    found: set[str] = set()
    if isinstance(value, list):
        for item in value:
            found |= referenced_logical_ids(item)
        return found
    if not isinstance(value, dict):
        return found
    target = referenced_logical_id(value)
    if target is not None:
        return {target}
    if set(value) == {"Fn::Sub"}:
        argument = value["Fn::Sub"]
        text, variables = (argument, {}) if isinstance(argument, str) else (argument[0], argument[1])
        for name in _SUB_PLACEHOLDER.findall(text):
            if name not in variables:
                found.add(name.split(".", 1)[0])
        return found | referenced_logical_ids(list(variables.values()))
    for item in value.values():
        found |= referenced_logical_ids(item)
    return found


# --- tables ---------------------------------------------------------------------------

_GSI_KEYS = ("IndexName", "KeySchema", "Projection", "ProvisionedThroughput", "OnDemandThroughput")
_LSI_KEYS = ("IndexName", "KeySchema", "Projection")


def table_definitions(template: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Logical id -> keyword arguments for boto3 ``create_table`` (without ``TableName``).

    Taken from the template's own key schema, attribute definitions, indexes, stream and
    billing settings.
    """
    definitions: dict[str, dict[str, Any]] = {}
    for logical_id, resource in resources(template, TABLE_TYPE).items():
        props = _properties(resource)
        where = f"{logical_id}.Properties"
        billing_mode = _literal(props.get("BillingMode", "PROVISIONED"), f"{where}.BillingMode")
        kwargs: dict[str, Any] = {
            "KeySchema": _literal(props["KeySchema"], f"{where}.KeySchema"),
            "AttributeDefinitions": _literal(props["AttributeDefinitions"], f"{where}.AttributeDefinitions"),
            "BillingMode": billing_mode,
        }
        if "ProvisionedThroughput" in props:
            kwargs["ProvisionedThroughput"] = _literal(props["ProvisionedThroughput"], f"{where}.ProvisionedThroughput")
        if props.get("GlobalSecondaryIndexes"):
            kwargs["GlobalSecondaryIndexes"] = [
                {key: index[key] for key in _GSI_KEYS if key in index}
                for index in _literal(props["GlobalSecondaryIndexes"], f"{where}.GlobalSecondaryIndexes")
            ]
        if props.get("LocalSecondaryIndexes"):
            kwargs["LocalSecondaryIndexes"] = [
                {key: index[key] for key in _LSI_KEYS if key in index}
                for index in _literal(props["LocalSecondaryIndexes"], f"{where}.LocalSecondaryIndexes")
            ]
        stream = props.get("StreamSpecification")
        if stream:
            view_type = _literal(stream.get("StreamViewType"), f"{where}.StreamSpecification.StreamViewType")
            kwargs["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": view_type}
        definitions[logical_id] = kwargs
    return definitions


def ttl_attribute(template: Mapping[str, Any], logical_id: str) -> str | None:
    """The table's TTL attribute name, or None when TTL is not enabled on it."""
    spec = _properties(_resource(template, logical_id, TABLE_TYPE)).get("TimeToLiveSpecification")
    if not spec or not _is_true(spec.get("Enabled")):
        return None
    name = _literal(spec.get("AttributeName"), f"{logical_id}.TimeToLiveSpecification.AttributeName")
    return str(name) if name else None


def create_tables(
    client: DynamoDBClient,
    names: Mapping[str, str],
    *,
    template: Mapping[str, Any] | None = None,
) -> None:
    """Create each table (logical id -> physical name) as the template defines it, with its TTL."""
    template = load_template() if template is None else template
    definitions = table_definitions(template)
    for logical_id, table_name in names.items():
        if logical_id not in definitions:
            raise KeyError(f"{logical_id} is not a {TABLE_TYPE} in the template")
        client.create_table(TableName=table_name, **definitions[logical_id])
        client.get_waiter("table_exists").wait(TableName=table_name, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        attribute = ttl_attribute(template, logical_id)
        if attribute:
            client.update_time_to_live(
                TableName=table_name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": attribute},
            )


# --- functions and parameters ---------------------------------------------------------


def function_environment(template: Mapping[str, Any], logical_id: str) -> dict[str, object]:
    """A function's raw environment variables: Globals first, the function's own on top.

    Values are as written in the template (``{"Ref": "HistoryLimit"}`` stays a dict).
    """
    function = _resource(template, logical_id, FUNCTION_TYPE)
    globals_function = (template.get("Globals") or {}).get("Function") or {}
    merged: dict[str, object] = {}
    for source in (globals_function, _properties(function)):
        variables = (source.get("Environment") or {}).get("Variables") or {}
        merged.update(variables)
    return merged


def function_property(template: Mapping[str, Any], logical_id: str, name: str) -> Any:
    """A function property as deployed: the function's own value, else the Globals one."""
    props = _properties(_resource(template, logical_id, FUNCTION_TYPE))
    if name in props:
        return props[name]
    return ((template.get("Globals") or {}).get("Function") or {}).get(name)


class FunctionSpec(TypedDict):
    code_uri: str  # relative to the template's directory, e.g. "functions/fanout/"
    handler: str  # "module.function"
    timeout: int  # seconds
    memory: int  # MB


def functions(template: Mapping[str, Any]) -> dict[str, FunctionSpec]:
    """Logical id -> where a function's code is and how it runs (Globals and Lambda defaults filled in)."""
    specs: dict[str, FunctionSpec] = {}
    for logical_id in resources(template, FUNCTION_TYPE):
        code_uri = _function_setting(template, logical_id, "CodeUri", None)
        handler = _function_setting(template, logical_id, "Handler", None)
        if not isinstance(code_uri, str) or not isinstance(handler, str):
            raise TemplateError(f"{logical_id} needs a local CodeUri and a Handler to be run locally")
        specs[logical_id] = {
            "code_uri": code_uri,
            "handler": handler,
            "timeout": int(_function_setting(template, logical_id, "Timeout", DEFAULT_FUNCTION_TIMEOUT_SECONDS)),
            "memory": int(_function_setting(template, logical_id, "MemorySize", DEFAULT_FUNCTION_MEMORY_MB)),
        }
    return specs


def _function_setting(template: Mapping[str, Any], logical_id: str, name: str, default: Any) -> Any:
    value = function_property(template, logical_id, name)
    return _literal(default if value is None else value, f"{logical_id}.Properties.{name}")


def parameter_defaults(template: Mapping[str, Any]) -> dict[str, str]:
    """Parameter name -> its Default, as the string CloudFormation would pass."""
    defaults: dict[str, str] = {}
    for name, parameter in (template.get("Parameters") or {}).items():
        if "Default" not in parameter:
            continue
        default = parameter["Default"]
        if isinstance(default, bool):
            defaults[name] = str(default).lower()
        elif isinstance(default, list):
            defaults[name] = ",".join(str(item) for item in default)
        else:
            defaults[name] = str(default)
    return defaults


def resolve_parameters(template: Mapping[str, Any], overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """Parameter values of a deployment: the defaults with ``overrides`` on top."""
    values = parameter_defaults(template)
    unknown = set(overrides or {}) - set(template.get("Parameters") or {})
    if unknown:
        raise KeyError(f"unknown parameters: {sorted(unknown)}")
    values.update(overrides or {})
    return values


def evaluate_condition(template: Mapping[str, Any], condition: Any, parameters: Mapping[str, str]) -> bool:
    """Evaluate a condition name or expression (Fn::Equals/Not/And/Or, Condition, Ref to a parameter)."""
    conditions = template.get("Conditions") or {}
    if isinstance(condition, str):
        if condition not in conditions:
            raise TemplateError(f"unknown condition {condition!r}")
        return evaluate_condition(template, conditions[condition], parameters)
    if not isinstance(condition, dict) or len(condition) != 1:
        raise TemplateError(f"cannot evaluate condition {condition!r}")
    function, argument = next(iter(condition.items()))
    if function == "Condition":
        return evaluate_condition(template, argument, parameters)
    if function == "Fn::Not":
        return not evaluate_condition(template, argument[0], parameters)
    if function == "Fn::And":
        return all(evaluate_condition(template, item, parameters) for item in argument)
    if function == "Fn::Or":
        return any(evaluate_condition(template, item, parameters) for item in argument)
    if function == "Fn::Equals":
        left, right = (_condition_value(item, parameters) for item in argument)
        return left == right
    raise TemplateError(f"cannot evaluate condition function {function}")


def _condition_value(value: Any, parameters: Mapping[str, str]) -> str:
    if isinstance(value, dict) and set(value) == {"Ref"}:
        if value["Ref"] not in parameters:
            raise TemplateError(f"condition refers to {value['Ref']!r}, which has no value")
        return parameters[value["Ref"]]
    if is_intrinsic(value):
        raise TemplateError(f"cannot evaluate {value!r} in a condition")
    return str(value).lower() if isinstance(value, bool) else str(value)


def resolve_conditionals(template: Mapping[str, Any], value: Any, parameters: Mapping[str, str]) -> Any:
    """``value`` with every Fn::If decided and every AWS::NoValue dropped (other intrinsics kept)."""
    no_value = object()

    def walk(item: Any) -> Any:
        if isinstance(item, dict):
            if set(item) == {"Fn::If"}:
                name, when_true, when_false = item["Fn::If"]
                chosen = when_true if evaluate_condition(template, name, parameters) else when_false
                return walk(chosen)
            if item == {"Ref": "AWS::NoValue"}:
                return no_value
            walked = {key: walk(child) for key, child in item.items()}
            return {key: child for key, child in walked.items() if child is not no_value}
        if isinstance(item, list):
            return [child for child in (walk(entry) for entry in item) if child is not no_value]
        return item

    result = walk(value)
    return None if result is no_value else result


# --- HTTP routes ----------------------------------------------------------------------


class HttpRoute(TypedDict):
    function: str  # logical id of the function the route invokes
    event: str  # name of the function's HttpApi event
    api: str | None  # logical id of the AWS::Serverless::HttpApi (None: the implicit API)
    method: str  # upper case, or ANY
    path: str
    authorizer: str  # "AWS_IAM", "NONE" or the name of another authorizer


def http_routes(template: Mapping[str, Any], parameters: Mapping[str, str] | None = None) -> list[HttpRoute]:
    """The HTTP API routes as a deployment with ``parameters`` (over the defaults) has them.

    A route's authorizer comes from its event's ``Auth.Authorizer``, else the ``security`` of
    the path in the API's DefinitionBody (conditions resolved), else the API's
    ``DefaultAuthorizer``, else NONE.
    """
    values = resolve_parameters(template, parameters)
    apis = resources(template, HTTP_API_TYPE)
    routes: list[HttpRoute] = []
    for function_id, function in resources(template, FUNCTION_TYPE).items():
        for event_name, event in (_properties(function).get("Events") or {}).items():
            if event.get("Type") != "HttpApi":
                continue
            props = event.get("Properties") or {}
            api_id = referenced_logical_id(props.get("ApiId"))
            method = str(props.get("Method", "ANY")).upper()
            path = str(props.get("Path", "/$default"))
            api_props = _properties(apis[api_id]) if api_id in apis else {}
            routes.append(
                {
                    "function": function_id,
                    "event": event_name,
                    "api": api_id,
                    "method": method,
                    "path": path,
                    "authorizer": _route_authorizer(template, api_props, props, method, path, values),
                }
            )
    return routes


def _route_authorizer(
    template: Mapping[str, Any],
    api_props: Mapping[str, Any],
    event_props: Mapping[str, Any],
    method: str,
    path: str,
    parameters: Mapping[str, str],
) -> str:
    event_authorizer = (event_props.get("Auth") or {}).get("Authorizer")
    if event_authorizer:
        return str(event_authorizer)
    body = resolve_conditionals(template, api_props.get("DefinitionBody") or {}, parameters)
    operation = ((body.get("paths") or {}).get(path) or {}).get(method.lower())
    if isinstance(operation, dict) and "security" in operation:
        schemes = [name for requirement in operation["security"] for name in requirement]
        return schemes[0] if schemes else "NONE"
    default = (api_props.get("Auth") or {}).get("DefaultAuthorizer")
    return str(default) if default else "NONE"


# --- stream event source mappings -----------------------------------------------------


class EventSourceMapping(TypedDict):
    function: str  # logical id of the function invoked
    event: str | None  # the SAM event's name (None for an AWS::Lambda::EventSourceMapping)
    table: str  # logical id of the table whose stream is read
    batch_size: int
    maximum_batching_window_seconds: int
    starting_position: str | None
    filter_criteria: dict[str, Any] | None  # raw: {"Filters": [{"Pattern": "..."}]}
    filter_patterns: list[dict[str, Any]]  # each Pattern parsed from JSON; a record passes if any matches
    maximum_retry_attempts: int  # -1: until the record expires
    bisect_batch_on_function_error: bool
    function_response_types: list[str]  # ["ReportBatchItemFailures"] for partial batch responses
    on_failure_destination: Any | None  # raw DestinationConfig.OnFailure.Destination
    on_failure_target: str | None  # logical id that destination refers to (a queue or topic), if any
    maximum_record_age_seconds: int  # -1: until the record expires
    parallelization_factor: int  # concurrent batches per shard (1 keeps a shard's order)
    enabled: bool


def _stream_table(stream_arn: Any) -> str | None:
    if isinstance(stream_arn, dict) and "Fn::GetAtt" in stream_arn:
        target = stream_arn["Fn::GetAtt"]
        if isinstance(target, list) and len(target) == 2 and target[1] in {"StreamArn", "LatestStreamArn"}:
            return str(target[0])
    return None


def _mapping(function_id: str, event: str | None, table: str, props: Mapping[str, Any]) -> EventSourceMapping:
    where = f"{function_id}.Events.{event}" if event else f"EventSourceMapping of {function_id}"

    def setting(name: str, default: Any) -> Any:
        return _literal(props.get(name, default), f"{where}.{name}")

    destination = ((props.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination")
    filter_criteria = props.get("FilterCriteria")
    return {
        "function": function_id,
        "event": event,
        "table": table,
        "batch_size": int(setting("BatchSize", DEFAULT_STREAM_BATCH_SIZE)),
        "maximum_batching_window_seconds": int(
            setting("MaximumBatchingWindowInSeconds", DEFAULT_BATCHING_WINDOW_SECONDS)
        ),
        "starting_position": setting("StartingPosition", None),
        "filter_criteria": filter_criteria,
        "filter_patterns": _filter_patterns(filter_criteria, f"{where}.FilterCriteria"),
        "maximum_retry_attempts": int(setting("MaximumRetryAttempts", DEFAULT_MAXIMUM_RETRY_ATTEMPTS)),
        "bisect_batch_on_function_error": _is_true(setting("BisectBatchOnFunctionError", False)),
        "function_response_types": list(setting("FunctionResponseTypes", None) or []),
        "on_failure_destination": destination,
        "on_failure_target": referenced_logical_id(destination),
        "maximum_record_age_seconds": int(setting("MaximumRecordAgeInSeconds", DEFAULT_MAXIMUM_RECORD_AGE_SECONDS)),
        "parallelization_factor": int(setting("ParallelizationFactor", DEFAULT_PARALLELIZATION_FACTOR)),
        "enabled": _is_true(setting("Enabled", True)),
    }


def _filter_patterns(filter_criteria: Any, where: str) -> list[dict[str, Any]]:
    """The Pattern of every filter, parsed (Lambda's event filtering takes them as JSON text)."""
    if not filter_criteria:
        return []
    criteria = _literal(filter_criteria, where)
    filters = criteria.get("Filters") if isinstance(criteria, dict) else None
    if not isinstance(filters, list):
        raise TemplateError(f"{where} must be {{'Filters': [{{'Pattern': '<JSON>'}}, ...]}}")
    patterns: list[dict[str, Any]] = []
    for index, entry in enumerate(filters):
        text = entry.get("Pattern") if isinstance(entry, dict) else None
        if not isinstance(text, str):
            raise TemplateError(f"{where}.Filters[{index}].Pattern must be a JSON string")
        try:
            pattern = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TemplateError(f"{where}.Filters[{index}].Pattern is not valid JSON: {exc}") from exc
        if not isinstance(pattern, dict):
            raise TemplateError(f"{where}.Filters[{index}].Pattern must be a JSON object")
        patterns.append(pattern)
    return patterns


def event_source_mappings(template: Mapping[str, Any]) -> list[EventSourceMapping]:
    """Every DynamoDB stream -> function mapping, with Lambda's defaults filled in.

    Both SAM ``DynamoDB`` events on functions and plain ``AWS::Lambda::EventSourceMapping``
    resources count; mappings of other sources (SQS, Kinesis, ...) are left out.
    """
    mappings: list[EventSourceMapping] = []
    tables = resources(template, TABLE_TYPE)
    for function_id, function in resources(template, FUNCTION_TYPE).items():
        for event_name, event in (_properties(function).get("Events") or {}).items():
            if event.get("Type") != "DynamoDB":
                continue
            props = event.get("Properties") or {}
            table = _stream_table(props.get("Stream"))
            if table is None or table not in tables:
                raise TemplateError(
                    f"{function_id}.Events.{event_name}.Stream must be !GetAtt <table>.StreamArn "
                    "of a table in this template"
                )
            mappings.append(_mapping(function_id, event_name, table, props))
    for logical_id, resource in resources(template, ESM_TYPE).items():
        props = _properties(resource)
        table = _stream_table(props.get("EventSourceArn"))
        if table is None or table not in tables:
            continue
        target = referenced_logical_id(props.get("FunctionName"))
        if target is None:
            raise TemplateError(f"{logical_id}.FunctionName must refer to a function in this template")
        mappings.append(_mapping(target, None, table, props))
    return mappings


# --- WebSocket API --------------------------------------------------------------------


def _websocket_api(template: Mapping[str, Any], api: str | None) -> str:
    apis = [
        logical_id
        for logical_id, resource in resources(template, GATEWAY_API_TYPE).items()
        if _properties(resource).get("ProtocolType") == "WEBSOCKET"
    ]
    if api is not None:
        if api not in apis:
            raise KeyError(f"{api} is not a WebSocket {GATEWAY_API_TYPE} in the template")
        return api
    if len(apis) != 1:
        raise TemplateError(f"expected one WebSocket API in the template, found {sorted(apis)}; name one")
    return apis[0]


def websocket_route_selection(template: Mapping[str, Any], api: str | None = None) -> str:
    """The WebSocket API's RouteSelectionExpression, e.g. ``$request.body.action``.

    ``api`` names the API's logical id; it may be left out when the template has only one.
    """
    api_id = _websocket_api(template, api)
    where = f"{api_id}.Properties.RouteSelectionExpression"
    expression = _literal(_properties(resources(template)[api_id]).get("RouteSelectionExpression"), where)
    if not isinstance(expression, str) or not expression:
        raise TemplateError(f"{where} is missing")
    return expression


def websocket_routes(template: Mapping[str, Any], api: str | None = None) -> dict[str, str]:
    """Route key (``$connect``, ``subscribe``, ``$default``, ...) -> logical id of the function it invokes.

    Read from the API's ``AWS::ApiGatewayV2::Route`` resources through their Target
    (``integrations/${Integration}``) to the Lambda proxy integration's IntegrationUri.
    """
    api_id = _websocket_api(template, api)
    function_ids = set(resources(template, FUNCTION_TYPE))
    integrations = resources(template, GATEWAY_INTEGRATION_TYPE)
    routes: dict[str, str] = {}
    for logical_id, resource in resources(template, GATEWAY_ROUTE_TYPE).items():
        props = _properties(resource)
        if referenced_logical_id(props.get("ApiId")) != api_id:
            continue
        route_key = _literal(props.get("RouteKey"), f"{logical_id}.Properties.RouteKey")
        targets = referenced_logical_ids(props.get("Target")) & set(integrations)
        if len(targets) != 1:
            raise TemplateError(f"{logical_id}.Properties.Target must name one integration of this template")
        integration_id = targets.pop()
        integration = _properties(integrations[integration_id])
        if integration.get("IntegrationType") != "AWS_PROXY":
            raise TemplateError(f"{integration_id} must be a Lambda proxy (AWS_PROXY) integration to run locally")
        invoked = referenced_logical_ids(integration.get("IntegrationUri")) & function_ids
        if len(invoked) != 1:
            raise TemplateError(f"{integration_id}.Properties.IntegrationUri must name one function of this template")
        if route_key in routes:
            raise TemplateError(f"route {route_key!r} is defined twice")
        routes[str(route_key)] = invoked.pop()
    return routes


# --- schedules ------------------------------------------------------------------------

SCHEDULE_EVENT_TYPES = ("Schedule", "ScheduleV2")
_RATE = re.compile(r"^rate\(\s*(\d+)\s+(minute|minutes|hour|hours|day|days)\s*\)$")
_RATE_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


class Schedule(TypedDict):
    function: str  # logical id of the function invoked
    event: str  # the SAM event's name
    type: str  # "Schedule" (an EventBridge rule) or "ScheduleV2" (EventBridge Scheduler)
    expression: str  # e.g. "rate(1 minute)"
    rate_seconds: int  # the interval the expression names
    input: str | None  # the event's Input (JSON text), if it sets one
    enabled: bool


def rate_seconds(expression: str) -> int:
    """The interval of a ``rate(N unit)`` expression, in seconds.

    "Schedule types on EventBridge Scheduler": a rate is a positive whole number and a unit of
    minute(s), hour(s) or day(s) (singular for 1). Cron expressions have no interval: they are a
    TemplateError here (the local stack runs rate schedules only).
    """
    match = _RATE.fullmatch(expression.strip())
    if match is None:
        raise TemplateError(f"{expression!r} is not rate(<n> minute|minutes|hour|hours|day|days)")
    value, unit = int(match.group(1)), match.group(2)
    if value < 1 or (value == 1) != (not unit.endswith("s")):
        raise TemplateError(f"{expression!r}: a rate is at least 1, with a singular unit for 1 and a plural one above")
    return value * _RATE_UNIT_SECONDS[unit.rstrip("s")]


def schedules(template: Mapping[str, Any]) -> list[Schedule]:
    """Every function's ``Schedule`` / ``ScheduleV2`` event (SAM), read as the local stack runs it."""
    found: list[Schedule] = []
    for function_id, function in resources(template, FUNCTION_TYPE).items():
        for event_name, event in (_properties(function).get("Events") or {}).items():
            event_type = event.get("Type")
            if event_type not in SCHEDULE_EVENT_TYPES:
                continue
            props = event.get("Properties") or {}
            where = f"{function_id}.Events.{event_name}.Properties"
            expression = _literal(props.get("Schedule" if event_type == "Schedule" else "ScheduleExpression"), where)
            if not isinstance(expression, str):
                raise TemplateError(f"{where} needs a schedule expression")
            if event_type == "Schedule":
                enabled = _is_true(_literal(props.get("Enabled", True), f"{where}.Enabled"))
            else:
                enabled = str(_literal(props.get("State", "ENABLED"), f"{where}.State")).upper() == "ENABLED"
            raw_input = _literal(props.get("Input"), f"{where}.Input")
            found.append(
                {
                    "function": function_id,
                    "event": event_name,
                    "type": str(event_type),
                    "expression": expression,
                    "rate_seconds": rate_seconds(expression),
                    "input": raw_input if isinstance(raw_input, str) else None,
                    "enabled": enabled,
                }
            )
    return found
