"""POST /feeds/{feedId}/events/batch: up to 100 events in one request, one result per event.

The request is refused as a whole (nothing stored) only for what concerns all of it: a body that
is not JSON, an empty list (400), more than 100 events or a body over MAX_BATCH_BODY_BYTES
(413). Each event is then checked as POST /feeds/{feedId}/events checks it, and an event that
fails gets the status and error body that route would answer, in its own result; the others are
still stored. The answer is a 200 whose `results` say what became of each event, in order: 207
Multi-Status is WebDAV's (RFC 4918), with a multistatus XML body this API does not send.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import http_bodies
import http_errors
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse
from pydantic import ValidationError

from realtime_transport import PublishResult, RealtimeError
from realtime_transport.batch import BatchItem, feed_event
from realtime_transport.feeds import Feeds
from realtime_transport.models.http import (
    BatchErrorResult,
    BatchEventResult,
    ErrorDetail,
    ErrorResponse,
    PublishBatchRequest,
    PublishBatchResponse,
    PublishEventRequest,
)
from realtime_transport.observability import metrics

__all__ = ["MAX_BATCH_BODY_BYTES", "RESPONSES", "PublishBatchRequest", "PublishBatchResponse", "publish"]

MAX_BATCH_BODY_BYTES = http_errors.MAX_BATCH_BODY_BYTES

RESPONSES: dict[int, OpenAPIResponse] = {
    200: {
        "description": "Every event's result, in request order: `201` stored, `200` a duplicate of the event first "
        "stored with its eventId (earlier, or earlier in this batch), `409` the eventId was used for another "
        "event, `400`/`413`/`422` the event is invalid (as POST /feeds/{feedId}/events would answer), `503` "
        "DynamoDB failed after retries (nothing of that event stored; retry it with the same eventId).",
        "content": {content_types.APPLICATION_JSON: {"model": PublishBatchResponse}},
    },
    **http_errors.BATCH_ERRORS,
}


def publish(app: APIGatewayHttpResolver, feeds: Feeds, feed_id: str, request: PublishBatchRequest) -> Response[Any]:
    size = int(app.context.get(http_bodies.BODY_SIZE, 0))
    if size > MAX_BATCH_BODY_BYTES:
        return http_errors.body_too_large(app.current_event.path, size, MAX_BATCH_BODY_BYTES)
    results: list[BatchEventResult | BatchErrorResult | None] = [None] * len(request.events)
    items: list[BatchItem] = []
    positions: list[int] = []
    for index, raw in enumerate(request.events):
        refused = _refused(raw)
        if refused is not None:
            results[index] = refused
            continue
        event = PublishEventRequest.model_validate(raw)
        items.append(
            feed_event(feed_id, event_id=event.event_id, type=event.type, payload=event.payload, source=event.source)
        )
        positions.append(index)
    if items:
        outcomes = feeds.channel(feed_id).broadcast_batch(items)
        for index, outcome in zip(positions, outcomes, strict=True):
            results[index] = _result(outcome)
    final = [result for result in results if result is not None]
    _count(final)
    return Response(
        status_code=HTTPStatus.OK,
        content_type=content_types.APPLICATION_JSON,
        body=PublishBatchResponse(results=final).model_dump_json(by_alias=True),
    )


def _refused(raw: Any) -> BatchErrorResult | None:
    """The single route's 400 or 422 for one event, or None if it is valid."""
    if not isinstance(raw, dict):
        problem = "must be a JSON object"
        error = ErrorResponse(
            error="validation_error",
            message=f"body: {problem}",
            details=[ErrorDetail(field="body", location="body", problem=problem)],
        )
        return BatchErrorResult(status=400, error=error)
    try:
        PublishEventRequest.model_validate(raw)
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error.get("loc", ()))} for error in exc.errors()]
        status, body = http_errors.validation_error_body(errors)
        return BatchErrorResult(status=status, error=body)
    return None


def _result(outcome: PublishResult | RealtimeError) -> BatchEventResult | BatchErrorResult:
    if isinstance(outcome, PublishResult):
        return BatchEventResult(
            status=200 if outcome.duplicate else 201, event=outcome.event, duplicate=outcome.duplicate
        )
    status, body = http_errors.domain_error_body(outcome)
    # What a stored event can meet: invalid (422, 413), a key conflict (409), DynamoDB (503).
    return BatchErrorResult(status=status if status in (400, 409, 413, 422) else 503, error=body)


def _count(results: list[BatchEventResult | BatchErrorResult]) -> None:
    statuses = [result.status for result in results]
    metrics.add_metric(name="EventsPublished", unit="Count", value=statuses.count(201))
    metrics.add_metric(name="DuplicatesSuppressed", unit="Count", value=statuses.count(200))
    metrics.add_metric(name="IdempotencyConflicts", unit="Count", value=statuses.count(409))
    metrics.add_metric(name="BatchEventsRefused", unit="Count", value=sum(s in (400, 413, 422) for s in statuses))
    metrics.add_metric(name="BatchEventsUnavailable", unit="Count", value=statuses.count(503))
