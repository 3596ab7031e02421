"""functions/http_api fed real API Gateway HTTP API v2 events (events/*.json) on in-process moto."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import LambdaContext, load_function, sample_event


@pytest.fixture
def handler(http_handler: Any) -> Any:
    return http_handler


def call(handler: Any, name: str, *, body: Any = None, raw: str | None = None, query: dict[str, str] | None = None):
    event = sample_event(name)
    if body is not None or raw is not None:
        event["body"] = raw if raw is not None else json.dumps(body)
    if query is not None:
        event["queryStringParameters"] = query
        event["rawQueryString"] = "&".join(f"{k}={v}" for k, v in query.items())
    response = handler(event)
    return response["statusCode"], json.loads(response["body"]), response


def stored(aws: Any) -> int:
    return aws.scan(
        TableName="test-events", FilterExpression="kind <> :h", ExpressionAttributeValues={":h": {"S": "head"}}
    )["Count"]


def test_the_sample_events_round_trip(handler: Any) -> None:
    status, created, response = call(handler, "http_post_event")
    assert status == 201 and created["duplicate"] is False
    assert response["headers"]["Content-Type"] == "application/json"
    event = created["event"]
    assert event["channel"] == "feed_42" and event["seq"] == 1 and event["type"] == "order.created"
    assert event["data"]["eventId"] == "e-1" and event["data"]["payload"] == {"orderId": "o-7", "total": 12.5}
    assert event["metadata"] == {"source": "api"}

    status, duplicate, _ = call(handler, "http_post_event")
    assert status == 200 and duplicate == {"event": event, "duplicate": True}

    status, control, _ = call(handler, "http_post_control")
    assert status == 201 and control["event"]["seq"] == 2 and control["event"]["type"] == "feed.control"

    status, page, _ = call(handler, "http_get_history")
    assert status == 200
    assert [e["seq"] for e in page["items"]] == [1, 2]
    assert page["hasMore"] is False and page["truncated"] is False


def test_openapi_document_describes_the_routes(handler: Any) -> None:
    status, document, _ = call(handler, "http_get_openapi")
    assert status == 200
    post = document["paths"]["/feeds/{feedId}/events"]["post"]
    schema_ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = document["components"]["schemas"][schema_ref.rsplit("/", 1)[1]]
    assert set(schema["required"]) == {"eventId", "type", "payload"}
    params = {p["name"]: p for p in document["paths"]["/feeds/{feedId}/events"]["get"]["parameters"]}
    assert params["limit"]["schema"]["maximum"] == 500 and params["feedId"]["in"] == "path"


def test_a_source_is_kept_in_metadata(handler: Any) -> None:
    status, created, _ = call(
        handler, "http_post_event", body={"eventId": "s", "type": "t", "payload": None, "source": "billing"}
    )
    assert status == 201 and created["event"]["metadata"] == {"source": "billing"}
    assert created["event"]["data"]["payload"] is None


def test_a_base64_body_is_decoded(handler: Any) -> None:
    import base64

    event = sample_event("http_post_event")
    event["body"] = base64.b64encode(b'{"eventId":"b64","type":"t","payload":[1,2]}').decode()
    event["isBase64Encoded"] = True
    response = handler(event)
    assert response["statusCode"] == 201
    assert json.loads(response["body"])["event"]["data"]["payload"] == [1, 2]


@pytest.mark.parametrize(
    ("raw", "status", "error"),
    [
        ("{", 400, "validation_error"),
        ("null", 400, "validation_error"),
        ('{"eventId": "e", "type": "t"}', 422, "validation_error"),
        ('{"eventId": "e", "type": "t", "payload": 1, "bogus": 1}', 422, "validation_error"),
        # Valid JSON text, but an unpaired surrogate is not Unicode that can be stored or sent.
        ('{"eventId": "e", "type": "t", "payload": "\\ud800"}', 422, "invalid_request"),
        ('{"eventId": "e", "type": "t", "payload": {"\\udc00": 1}}', 422, "invalid_request"),
        ('{"eventId": "\\ud800", "type": "t", "payload": 1}', 422, "validation_error"),
        (json.dumps({"eventId": "e", "type": "t", "payload": "x" * 66_000}), 413, "event_too_large"),
        ('{"eventId": "e", "type": "t", "payload": "' + "x" * 66_000, 413, "event_too_large"),
    ],
)
def test_bad_bodies_are_refused_and_store_nothing(handler: Any, aws: Any, raw: str, status: int, error: str) -> None:
    got, body, _ = call(handler, "http_post_event", raw=raw)
    assert (got, body["error"]) == (status, error)
    assert body["message"]
    assert stored(aws) == 0


def test_conflicting_key_reuse_is_a_409_and_stores_nothing_more(handler: Any, aws: Any) -> None:
    call(handler, "http_post_event")
    before = stored(aws)
    status, body, _ = call(handler, "http_post_event", body={"eventId": "e-1", "type": "order.created", "payload": {}})
    assert status == 409 and body["error"] == "idempotency_conflict"
    assert body["details"][0]["field"] == "idempotencyKey"
    assert stored(aws) == before


def test_a_store_outage_is_a_503_with_a_json_body(handler: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from realtime_transport.store import EventStore

    def boom(*_: Any, **__: Any) -> Any:
        from realtime_transport import StoreUnavailable

        raise StoreUnavailable("DynamoDB ProvisionedThroughputExceededException")

    monkeypatch.setattr(EventStore, "allocate", boom)
    status, body, _ = call(handler, "http_post_event")
    assert status == 503 and body["error"] == "unavailable"


def test_metrics_are_emitted(aws: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from realtime_transport.settings import get_settings

    get_settings.cache_clear()
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    module = load_function("http_api")
    module.metrics.clear_metrics()  # a shared set: other tests added to it with metrics disabled
    module.lambda_handler(sample_event("http_post_event"), LambdaContext())
    module.lambda_handler(sample_event("http_post_event"), LambdaContext())
    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    names = [m["Name"] for blob in emitted for d in blob["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]]
    assert names.count("EventsPublished") == 1 and names.count("DuplicatesSuppressed") == 1
    get_settings.cache_clear()


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        ("Basic abc", 401),
        ("Bearer not-a-token", 401),
        ("Bearer {other}", 403),
        ("Bearer {expired}", 401),
        ("Bearer {good}", 200),
    ],
)
def test_history_takes_the_subscriber_token(
    aws: Any, monkeypatch: pytest.MonkeyPatch, authorization: str | None, status: int
) -> None:
    from realtime_transport import tokens
    from realtime_transport.settings import get_settings

    get_settings.cache_clear()
    monkeypatch.setenv("REALTIME_TOKEN_SECRET", "history-secret-long-enough-for-hs256")
    monkeypatch.setenv("REQUIRE_HISTORY_TOKEN", "true")
    module = load_function("http_api")
    secret = b"history-secret-long-enough-for-hs256"
    values = {
        "good": tokens.issue(secret, sub="browser", channels=["feed_4*"]),
        "other": tokens.issue(secret, sub="browser", channels=["feed_9"]),
        "expired": tokens.issue(secret, sub="browser", channels=["feed_*"], ttl_seconds=-60),
    }
    event = sample_event("http_get_history")
    if authorization is not None:
        event["headers"]["authorization"] = authorization.format(**values)
    response = module.lambda_handler(event, LambdaContext())
    assert response["statusCode"] == status, response["body"]
    if status != 200:
        assert json.loads(response["body"])["error"] in {"unauthorized", "forbidden"}
    get_settings.cache_clear()


# --- routes API Gateway did not match: the $default route --------------------------------


def unrouted(method: str, path: str, body: str | None = None) -> dict[str, Any]:
    """What the $default route delivers: the full request path, no path parameters
    (https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-develop-routes.html)."""
    event = sample_event("http_post_event")
    event["routeKey"] = event["requestContext"]["routeKey"] = "$default"
    event["requestContext"]["http"]["method"] = method
    event["rawPath"] = event["requestContext"]["http"]["path"] = path
    event.pop("pathParameters")
    if body is None:
        event.pop("body")
    else:
        event["body"] = body
    return event


def answer(handler: Any, event: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, Any]]:
    response = handler(event)
    return response["statusCode"], json.loads(response["body"]), response


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/nowhere"), ("POST", "/"), ("PUT", "/feeds/42"), ("GET", "/feeds/42/events/"), ("GET", "/Openapi.json")],
)
def test_an_unknown_route_is_a_404_in_the_error_shape(handler: Any, method: str, path: str) -> None:
    status, body, response = answer(handler, unrouted(method, path, body="{}"))
    assert status == 404 and set(body) == {"error", "message", "details"}
    assert body["error"] == "not_found" and method in body["message"] and path in body["message"]
    assert response["headers"]["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/feeds/42/events", "GET, POST"),
        ("PUT", "/feeds/42/events", "GET, POST"),
        ("GET", "/feeds/42/control", "POST"),
        ("POST", "/openapi.json", "GET"),
    ],
)
def test_a_known_path_with_another_method_is_a_405_that_says_what_is_allowed(
    handler: Any, aws: Any, method: str, path: str, allow: str
) -> None:
    status, body, response = answer(handler, unrouted(method, path, body='{"eventId": "e", "type": "t", "payload": 1}'))
    assert status == 405 and set(body) == {"error", "message", "details"}, body
    assert body["error"] == "method_not_allowed" and allow in body["message"]
    assert response["headers"]["Allow"] == allow  # RFC 9110 15.5.6: a 405 carries Allow
    assert stored(aws) == 0


def test_the_default_route_never_runs_a_route(handler: Any, aws: Any) -> None:
    # $default has no authorizer: if API Gateway sent it a request a route of this function
    # would serve (it never should), the function must not publish it past IAM.
    event = unrouted("POST", "/feeds/42/events", body='{"eventId": "e", "type": "t", "payload": 1}')
    status, body, _ = answer(handler, event)
    assert status == 404 and body["error"] == "not_found"
    assert stored(aws) == 0


def test_a_direct_invocation_of_an_unknown_route_is_a_404_or_405(handler: Any) -> None:
    event = sample_event("http_get_history")  # `sam local invoke` with an edited path
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/nowhere"
    assert answer(handler, event)[:2] == (404, answer(handler, event)[1])
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/feeds/42/control"
    status, body, response = answer(handler, event)
    assert (status, body["error"], response["headers"]["Allow"]) == (405, "method_not_allowed", "POST")


# --- the OpenAPI document says what the function sends ------------------------------------

ERROR_STATUSES = {
    ("post", "/feeds/{feedId}/events"): {400, 403, 409, 413, 415, 422, 503},
    # Each event's own 409 or 503 is in its result of the 200.
    ("post", "/feeds/{feedId}/events/batch"): {400, 403, 413, 415, 422},
    ("post", "/feeds/{feedId}/control"): {400, 403, 409, 413, 415, 422, 503},
    ("get", "/feeds/{feedId}/events"): {400, 401, 403, 422, 500, 503},
    ("get", "/rooms/{roomId}"): {403, 422, 503},
    ("put", "/rooms/{roomId}/metadata"): {400, 403, 412, 413, 415, 422, 503},
    ("get", "/rooms/{roomId}/members"): {403, 422, 503},
    ("patch", "/rooms/{roomId}/state"): {400, 403, 409, 412, 413, 415, 422, 503},
    ("get", "/rooms/{roomId}/events"): {400, 401, 403, 422, 500, 503},
    ("get", "/openapi.json"): set(),
}
# API Gateway's own 403 (IAM) on the IAM-authorized routes; the history routes check a token themselves.
GATEWAY_403 = {
    ("post", "/feeds/{feedId}/events"),
    ("post", "/feeds/{feedId}/events/batch"),
    ("post", "/feeds/{feedId}/control"),
    ("get", "/rooms/{roomId}"),
    ("put", "/rooms/{roomId}/metadata"),
    ("get", "/rooms/{roomId}/members"),
    ("patch", "/rooms/{roomId}/state"),
}
# Error bodies that add fields to ErrorResponse.
ERROR_MODELS = {
    ("patch", "/rooms/{roomId}/state", 409): "StateConflictResponse",
    ("patch", "/rooms/{roomId}/state", 412): "PreconditionFailedResponse",
    ("put", "/rooms/{roomId}/metadata", 412): "PreconditionFailedResponse",
}
SUCCESS_STATUSES = {
    ("post", "/feeds/{feedId}/events"): {200: "PublishResponse", 201: "PublishResponse"},
    ("post", "/feeds/{feedId}/events/batch"): {200: "PublishBatchResponse"},
    ("post", "/feeds/{feedId}/control"): {200: "PublishResponse", 201: "PublishResponse"},
    ("get", "/feeds/{feedId}/events"): {200: "HistoryResponse"},
    ("get", "/rooms/{roomId}"): {200: "RoomResponse"},
    ("put", "/rooms/{roomId}/metadata"): {200: "MetadataResponse"},
    ("get", "/rooms/{roomId}/members"): {200: "MembersResponse"},
    ("patch", "/rooms/{roomId}/state"): {200: "StateResponse"},
    ("get", "/rooms/{roomId}/events"): {200: "HistoryResponse"},
    ("get", "/openapi.json"): {200: None},
}


def schema_refs(content: dict[str, Any]) -> set[str]:
    schema = content["application/json"]["schema"]
    refs = [schema.get("$ref")] + [option.get("$ref") for option in schema.get("anyOf", [])]
    return {ref.rsplit("/", 1)[1] for ref in refs if ref}


def test_the_openapi_document_lists_every_status_each_route_sends(handler: Any) -> None:
    status, document, _ = call(handler, "http_get_openapi")
    assert status == 200
    operations = {
        (method, path): operation for path, item in document["paths"].items() for method, operation in item.items()
    }
    assert set(operations) == set(ERROR_STATUSES)
    for key, operation in operations.items():
        responses = {int(code): response for code, response in operation["responses"].items()}
        assert set(responses) == set(SUCCESS_STATUSES[key]) | ERROR_STATUSES[key], key
        for code, model in SUCCESS_STATUSES[key].items():
            if model:
                assert schema_refs(responses[code]["content"]) == {model}, (key, code)
        for code in ERROR_STATUSES[key]:
            refs = schema_refs(responses[code]["content"])
            expected = {ERROR_MODELS.get((*key, code), "ErrorResponse")}
            if code == 403 and key in GATEWAY_403:
                expected = {"GatewayError"}
            assert refs == expected, (key, code, refs)
            assert responses[code]["description"], (key, code)


def test_the_openapi_document_has_one_error_schema(handler: Any) -> None:
    _, document, _ = call(handler, "http_get_openapi")
    schemas = document["components"]["schemas"]
    assert not {"HTTPValidationError", "ValidationError", "ResponseValidationError"} & set(schemas)
    assert '"detail"' not in json.dumps(document)
    error = schemas["ErrorResponse"]
    assert set(error["required"]) == {"error", "message", "details"} and error["additionalProperties"] is False
    assert schemas["ErrorDetail"]["additionalProperties"] is False
    assert "404" in document["info"]["description"] and "405" in document["info"]["description"]


def test_the_template_routes_every_other_request_to_the_function(aws: Any) -> None:
    from realtime_devstack import template

    for producer_auth in ("IAM", "NONE"):
        routes = template.http_routes(template.load_template(), {"ProducerAuth": producer_auth})
        catch_all = [r for r in routes if r["path"] == "/$default"]
        # The $default route (https://docs.aws.amazon.com/serverless-application-model/latest/
        # developerguide/sam-property-function-httpapi.html) takes no authorizer: the function
        # answers it with 404 or 405 only.
        assert [(r["function"], r["method"], r["authorizer"]) for r in catch_all] == [
            ("HttpApiFunction", "ANY", "NONE")
        ]
