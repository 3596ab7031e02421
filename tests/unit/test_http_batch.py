"""POST /feeds/{feedId}/events/batch through functions/http_api, fed API Gateway HTTP API v2 events."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import sample_event


def post(handler: Any, body: Any = None, *, raw: str | None = None, **headers: str) -> tuple[int, Any]:
    event = sample_event("http_post_events_batch")
    if body is not None or raw is not None:
        event["body"] = raw if raw is not None else json.dumps(body)
    event["headers"].update(headers)
    response = handler(event)
    assert response["headers"]["Content-Type"].startswith("application/json"), response["headers"]
    return response["statusCode"], json.loads(response["body"])


def event(event_id: str, payload: Any = 1, **extra: Any) -> dict[str, Any]:
    return {"eventId": event_id, "type": "order.created", "payload": payload, **extra}


def history(handler: Any) -> list[dict[str, Any]]:
    page = handler(sample_event("http_get_history"))  # feed 42, as the batch sample
    return json.loads(page["body"])["items"]


def stored(aws: Any) -> int:
    return aws.scan(TableName="test-events", Select="COUNT")["Count"]


def test_the_sample_batch_is_stored_in_order(http_handler: Any) -> None:
    status, body = post(http_handler)
    assert status == 200
    results = body["results"]
    assert [r["status"] for r in results] == [201, 201]
    assert [r["event"]["seq"] for r in results] == [1, 2] and [r["duplicate"] for r in results] == [False, False]
    assert results[1]["event"]["metadata"] == {"source": "billing"}
    assert results[0]["event"]["data"]["eventId"] == "e-1" and results[0]["event"]["idempotencyKey"] == "e-1"
    assert [e["id"] for e in history(http_handler)] == [r["event"]["id"] for r in results]
    # The same batch again: each a duplicate of its first event.
    status, again = post(http_handler)
    assert status == 200 and [(r["status"], r["duplicate"]) for r in again["results"]] == [(200, True)] * 2
    assert [r["event"]["id"] for r in again["results"]] == [r["event"]["id"] for r in results]


def test_each_event_gets_the_single_routes_answer(http_handler: Any) -> None:
    single = sample_event("http_post_event")  # eventId e-1 on feed 42
    assert http_handler(single)["statusCode"] == 201
    body = {
        "events": [
            event("e-1", {"orderId": "o-7", "total": 12.5}),  # the single route's event: a duplicate
            event("e-1", "other"),  # its key reused: 409
            [1, 2],  # not an object: 400
            {"eventId": "e-3", "type": "t"},  # no payload: 422
            event("e-4", "x" * 70_000),  # over MaxEventBytes: 413
            event("e-5", extra=1),  # an unknown field: 422
            event("e-6", "six"),  # new: 201
            event("e-6", "six"),  # the same key earlier in this batch: 200
            event("e-6", "seven"),  # ... for another event: 409
        ]
    }
    status, answer = post(http_handler, body)
    assert status == 200
    results = answer["results"]
    assert [r["status"] for r in results] == [200, 409, 400, 422, 413, 422, 201, 200, 409]
    errors = [r["error"] for r in results if "error" in r]
    assert [e["error"] for e in errors] == [
        "idempotency_conflict",
        "validation_error",
        "validation_error",
        "event_too_large",
        "validation_error",
        "idempotency_conflict",
    ]
    assert errors[2]["details"][0]["field"] == "payload" and errors[4]["details"][0]["field"] == "extra"
    assert all(e["message"] for e in errors)
    assert results[7]["event"]["id"] == results[6]["event"]["id"] and results[7]["duplicate"] is True
    assert [e["data"]["eventId"] for e in history(http_handler)] == ["e-1", "e-6"]


@pytest.mark.parametrize(
    ("raw", "status", "error", "field"),
    [
        (json.dumps({"events": []}), 400, "validation_error", "events"),
        (json.dumps({"events": [event(f"e-{n}") for n in range(101)]}), 413, "batch_too_large", "events"),
        ('{"events": [', 400, "validation_error", "body"),
        ("[]", 400, "validation_error", "body"),
        ("", 400, "validation_error", "body"),
        (json.dumps({"events": {"eventId": "e"}}), 422, "validation_error", "events"),
        (json.dumps({"events": "e"}), 422, "validation_error", "events"),
        (json.dumps({"events": [event("e")], "extra": 1}), 422, "validation_error", "extra"),
        (json.dumps({"event": [event("e")]}), 422, "validation_error", "events"),
        ('{"events": [{"eventId": "e", "type": "t", "payload": 1e999}]}', 422, "validation_error", "body"),
        # Over 1 MiB, valid or not: refused as too large before anything else.
        (json.dumps({"events": [event(f"e-{n}", "x" * 60_000) for n in range(20)]}), 413, "event_too_large", "body"),
        ('{"events": [{"payload": "' + "x" * 1_100_000, 413, "event_too_large", "body"),
    ],
)
def test_bad_requests_are_refused_whole_and_store_nothing(
    http_handler: Any, aws: Any, raw: str, status: int, error: str, field: str
) -> None:
    got, body = post(http_handler, raw=raw)
    assert (got, body["error"]) == (status, error), body
    assert body["message"] and field in [d["field"] for d in body["details"]], body
    assert stored(aws) == 0


def test_a_body_under_the_batch_cap_but_over_one_events_is_taken(http_handler: Any) -> None:
    """The batch's cap is its own (1 MiB), not MaxEventBytes: 10 events of 60 KB each are fine."""
    status, body = post(http_handler, {"events": [event(f"e-{n}", "x" * 60_000) for n in range(10)]})
    assert status == 200 and [r["status"] for r in body["results"]] == [201] * 10


def test_a_form_is_a_415(http_handler: Any, aws: Any) -> None:
    got, body = post(http_handler, raw="events=1", **{"content-type": "application/x-www-form-urlencoded"})
    assert (got, body["error"]) == (415, "unsupported_media_type")
    assert stored(aws) == 0


def test_a_store_outage_is_a_503_per_event_and_no_hole(http_handler: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from realtime_transport import StoreUnavailable
    from realtime_transport.store import EventStore

    def throttled(*_: Any, **__: Any) -> Any:
        raise StoreUnavailable("DynamoDB ProvisionedThroughputExceededException")

    monkeypatch.setattr(EventStore, "put_keyed_events", throttled)
    status, body = post(http_handler)
    assert status == 200 and [(r["status"], r["error"]["error"]) for r in body["results"]] == [(503, "unavailable")] * 2
    monkeypatch.undo()
    assert history(http_handler) == []  # both positions tombstoned: the reader passes them
    status, body = post(http_handler)
    assert [r["status"] for r in body["results"]] == [201, 201]
    assert [r["event"]["seq"] for r in body["results"]] == [3, 4]
    assert [e["seq"] for e in history(http_handler)] == [3, 4]


def test_the_openapi_document_describes_the_route(http_handler: Any) -> None:
    document = json.loads(http_handler(sample_event("http_get_openapi"))["body"])
    operation = document["paths"]["/feeds/{feedId}/events/batch"]["post"]
    assert set(operation["responses"]) == {"200", "400", "403", "413", "415", "422"}
    schemas = document["components"]["schemas"]
    request = schemas["PublishBatchRequest"]["properties"]["events"]
    assert (request["minItems"], request["maxItems"]) == (1, 100)
    assert request["items"] == {"$ref": "#/components/schemas/PublishEventRequest"}
    error_result = schemas["BatchErrorResult"]["properties"]["status"]
    assert sorted(error_result["enum"]) == [400, 409, 413, 422, 503]
    assert sorted(schemas["BatchEventResult"]["properties"]["status"]["enum"]) == [200, 201]
