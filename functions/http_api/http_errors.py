"""Turn every failure into a JSON error body that names the problem (never a stack trace),
and document each route's error statuses with that same shape."""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from http import HTTPStatus
from typing import Any

import http_bodies
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
)
from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse, OpenAPIResponseHeader
from pydantic import BaseModel

from realtime_transport import errors, rooms
from realtime_transport.models.http import (
    ErrorDetail,
    ErrorResponse,
    GatewayError,
    PreconditionFailedResponse,
    StateConflictResponse,
)
from realtime_transport.observability import logger, metrics

_STATUS: dict[type[errors.RealtimeError], HTTPStatus] = {
    errors.InvalidCursor: HTTPStatus.BAD_REQUEST,
    errors.InvalidInput: HTTPStatus.UNPROCESSABLE_ENTITY,
    errors.EventTooLarge: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    errors.IdempotencyConflict: HTTPStatus.CONFLICT,
    rooms.StateConflict: HTTPStatus.CONFLICT,
    rooms.PreconditionFailed: HTTPStatus.PRECONDITION_FAILED,
    rooms.RoomTooLarge: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    rooms.PatchTestFailed: HTTPStatus.UNPROCESSABLE_ENTITY,
    errors.Unauthorized: HTTPStatus.UNAUTHORIZED,
    errors.Forbidden: HTTPStatus.FORBIDDEN,
    errors.StoreUnavailable: HTTPStatus.SERVICE_UNAVAILABLE,
    errors.ConfigurationError: HTTPStatus.INTERNAL_SERVER_ERROR,
}
# Validation errors that mean the body is not a JSON object at all: a 400, not a 422.
_MALFORMED = {"json_invalid", "json_not_object"}
# What a body over the cap is called, by route: each names what it would have been.
_TOO_LARGE_CODES = {"/metadata": rooms.MetadataTooLarge.code, "/state": rooms.StateTooLarge.code}
# RFC 5789, section 3.1: Accept-Patch names the patch formats a resource takes. PATCH
# /rooms/{roomId}/state takes one JSON body (version plus a merge patch or JSON Patch), so only
# application/json: application/merge-patch+json and application/json-patch+json would each
# declare a body that is the patch alone, which this route's body is not.
ACCEPT_PATCH = "application/json"


def error_response(
    status: HTTPStatus,
    code: str,
    message: str,
    details: list[ErrorDetail] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    return error_body(status, ErrorResponse(error=code, message=message, details=details or []), headers)


def error_body(status: HTTPStatus, body: BaseModel, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body=body.model_dump_json(),
        headers=dict(headers or {}),
    )


def _field_name(loc: tuple[Any, ...]) -> tuple[str, str]:
    location = str(loc[0]) if loc else "request"
    path = [str(part) for part in loc[1:] if not isinstance(part, int) or location != "body"]
    if location == "body" and loc[1:2] and isinstance(loc[1], int):
        return "body", "body"  # a JSON syntax error: pydantic reports the character offset
    return ".".join(path) or location, location


def _validation_details(exc: RequestValidationError) -> list[ErrorDetail]:
    details = []
    for error in exc.errors():
        field, location = _field_name(tuple(error.get("loc", ())))
        problem = str(error.get("msg", "is invalid"))
        if error.get("type") == "json_invalid":
            problem = f"request body is not valid JSON ({error.get('ctx', {}).get('error', 'parse error')})"
        elif error.get("type") == "extra_forbidden":
            problem = "is not a recognised field"
        details.append(ErrorDetail(field=field, location=location, problem=problem))
    return details


def _too_large(path: str, size: int, limit: int) -> Response:
    metrics.add_metric(name="RequestsRejected", unit="Count", value=1)
    code = next(
        (c for suffix, c in _TOO_LARGE_CODES.items() if path.startswith("/rooms/") and path.endswith(suffix)), None
    )
    return error_response(
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        code or errors.EventTooLarge.code,
        f"request body is {size} bytes; the limit is {limit}",
        [ErrorDetail(field="body", location="body", problem=f"is larger than {limit} bytes")],
    )


def _unsupported_media_type(method: str, content_type: str) -> Response:
    metrics.add_metric(name="RequestsRejected", unit="Count", value=1)
    return error_response(
        HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        f"content-type {content_type!r} is not accepted; send application/json",
        [ErrorDetail(field="content-type", location="header", problem="must be application/json")],
        # RFC 5789, section 2.2: a PATCH refused for its media type SHOULD say which it takes.
        headers={"Accept-Patch": ACCEPT_PATCH} if method.upper() == "PATCH" else None,
    )


def body_too_large(path: str, size: int, limit: int) -> Response:
    """413 for a body over the route's cap (the batch route checks its own)."""
    return _too_large(path, size, limit)


# POST /feeds/{feedId}/events/batch (http_batch.py) and its body cap.
BATCH_PATH_SUFFIX = "/events/batch"
# The whole body. API Gateway takes 10 MB ("Quotas for HTTP APIs"), but the function behind it
# is invoked synchronously, 6 MB each way ("Lambda quotas": invocation payload), and the event
# and the answer both carry the body as an escaped JSON string (a quote or backslash doubles,
# non-ASCII text may become \uXXXX escapes); the answer also repeats every event's envelope.
# 1 MiB keeps both well inside 6 MB, and a transaction of 50 events, each stored twice (event
# and key record), inside TransactWriteItems' 4 MB. Each event is still held to MaxEventBytes.
MAX_BATCH_BODY_BYTES = 1024 * 1024
_BATCH_TOO_LARGE = "batch_too_large"


def _body_limit(path: str, max_body_bytes: int) -> int:
    return MAX_BATCH_BODY_BYTES if path.endswith(BATCH_PATH_SUFFIX) else max_body_bytes


def validation_error_body(errors: list[dict[str, Any]]) -> tuple[HTTPStatus, ErrorResponse]:
    """The status and body of a validation failure (`loc`s as Powertools gives them: body first).

    400 when the body is not a JSON object, or a batch's `events` is empty; 413 when it holds
    more than the route takes; 422 for the rest.
    """
    details = _validation_details(RequestValidationError(errors))
    types = {(error.get("type"), tuple(error.get("loc", ()))) for error in errors}
    code = "validation_error"
    if any(kind in _MALFORMED for kind, _ in types) or ("too_short", ("body", "events")) in types:
        status = HTTPStatus.BAD_REQUEST
    elif ("too_long", ("body", "events")) in types:
        status, code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE, _BATCH_TOO_LARGE
    else:
        status = HTTPStatus.UNPROCESSABLE_ENTITY
    message = "; ".join(f"{d.field}: {d.problem}" for d in details) or "request is invalid"
    return status, ErrorResponse(error=code, message=message, details=details)


def domain_error_body(exc: errors.RealtimeError) -> tuple[HTTPStatus, ErrorResponse]:
    """The status and body `register`'s handler answers for a domain error (rooms' aside)."""
    status = next((s for cls, s in _STATUS.items() if isinstance(exc, cls)), HTTPStatus.BAD_REQUEST)
    details = [ErrorDetail(field=exc.field, location="request", problem=exc.message)] if exc.field else []
    return status, ErrorResponse(error=exc.code, message=exc.message, details=details)


def register(app: APIGatewayHttpResolver, max_body_bytes: int) -> None:
    @app.exception_handler(RequestValidationError)
    def invalid_request(exc: RequestValidationError) -> Response:
        # Size first: a body over the cap is refused as such, whatever else is wrong with it.
        size = int(app.context.get(http_bodies.BODY_SIZE, 0))
        limit = _body_limit(app.current_event.path, max_body_bytes)
        if size > limit:
            return _too_large(app.current_event.path, size, limit)
        status, body = validation_error_body(list(exc.errors()))
        metrics.add_metric(name="RequestsRejected", unit="Count", value=1)
        return error_body(status, body)

    @app.exception_handler(http_bodies.UnreadableBody)
    def unreadable_body(exc: http_bodies.UnreadableBody) -> Response:
        limit = _body_limit(app.current_event.path, max_body_bytes)
        if exc.size is not None and exc.size > limit:
            return _too_large(app.current_event.path, exc.size, limit)
        metrics.add_metric(name="RequestsRejected", unit="Count", value=1)
        return error_response(
            HTTPStatus.BAD_REQUEST,
            "validation_error",
            f"body: {exc.problem}",
            [ErrorDetail(field="body", location="body", problem=exc.problem)],
        )

    @app.exception_handler(http_bodies.UnsupportedMediaType)
    def unsupported_media_type(exc: http_bodies.UnsupportedMediaType) -> Response:
        return _unsupported_media_type(app.current_event.http_method, exc.content_type)

    @app.exception_handler(RequestUnsupportedContentType)
    def unsupported_content_type(_exc: RequestUnsupportedContentType) -> Response:
        event = app.current_event
        return _unsupported_media_type(event.http_method, event.headers.get("content-type", ""))

    @app.exception_handler(errors.RealtimeError)
    def domain_error(exc: errors.RealtimeError) -> Response:
        status = next((s for cls, s in _STATUS.items() if isinstance(exc, cls)), HTTPStatus.BAD_REQUEST)
        if status >= HTTPStatus.INTERNAL_SERVER_ERROR:
            logger.exception("request failed", extra={"error_code": exc.code})
        if isinstance(exc, errors.IdempotencyConflict):
            metrics.add_metric(name="IdempotencyConflicts", unit="Count", value=1)
        details = [ErrorDetail(field=exc.field, location="request", problem=exc.message)] if exc.field else []
        if isinstance(exc, rooms.StateConflict):
            metrics.add_metric(name="RoomConflicts", unit="Count", value=1)
            conflict = StateConflictResponse(
                error=exc.code,
                message=exc.message,
                details=[ErrorDetail(field="version", location="body", problem=exc.message)],
                version=exc.version,
                doc=exc.doc,
                conflicts=exc.conflicts,
            )
            return error_body(status, conflict)
        if isinstance(exc, rooms.PreconditionFailed):
            failed = PreconditionFailedResponse(
                error=exc.code,
                message=exc.message,
                details=[ErrorDetail(field="if-match", location="header", problem=exc.message)],
                version=exc.version,
            )
            return error_body(status, failed)
        return error_response(status, exc.code, exc.message, details)

    register_unrouted(app, routes_of=app, routed=True)


def _segments(route_path: str) -> list[str | None]:
    """A route's path as segments: a literal, or None for a path parameter (`<feedId>`)."""
    return [None if re.fullmatch(r"<\w+>", segment) else segment for segment in route_path.split("/")]


def _shape_matches(route_path: str, path: str) -> bool:
    """`path` has the route's shape: its literal segments, and any one segment per parameter.

    API Gateway routes on that shape (a parameter takes any segment); Powertools' own rule also
    limits the characters of a parameter, so a segment it refuses is a bad parameter, not an
    unknown path.
    """
    want, have = _segments(route_path), path.split("/")
    return len(want) == len(have) and all(h != "" if w is None else w == h for w, h in zip(want, have, strict=True))


def _routes(app: APIGatewayHttpResolver) -> list[Any]:
    """Powertools' route table (`_static_routes`, `_dynamic_routes`: Powertools 3.37, pinned;
    tests/unit/test_http_handler.py checks the 405s and 422s built from it)."""
    return [*app._static_routes, *app._dynamic_routes]


def allowed_methods(app: APIGatewayHttpResolver, path: str) -> list[str]:
    """The methods `app` has a route for at `path`'s shape (none: the path is unknown)."""
    return sorted({route.method.upper() for route in _routes(app) if _shape_matches(route.path, path)})


def _refused_parameters(app: APIGatewayHttpResolver, method: str, path: str) -> list[ErrorDetail]:
    """The path parameters of `method` at `path`'s shape whose segment the route's rule refuses."""
    details: list[ErrorDetail] = []
    for route in _routes(app):
        if route.method.upper() != method or not _shape_matches(route.path, path):
            continue
        for template, segment in zip(route.path.split("/"), path.split("/"), strict=True):
            name = template[1:-1]
            if template.startswith("<") and not re.fullmatch(_PARAMETER_CHARACTERS, segment):
                details.append(ErrorDetail(field=name, location="path", problem="must match the documented pattern"))
    return details


# What Powertools' router takes in one path parameter (api_gateway._NAMED_GROUP_BOUNDARY_PATTERN):
# RFC 3986's unreserved and sub-delims, a few more, and word characters.
_PARAMETER_CHARACTERS = r"[-._~()'!*:@,;=+&$%<> \[\]{}|^\w]+"


def register_unrouted(
    resolver: APIGatewayHttpResolver, routes_of: APIGatewayHttpResolver, *, routed: bool = False
) -> None:
    """Answer what no route of `routes_of` takes: 405 with Allow for a known path, else 404.

    `routed`: API Gateway matched the request to one of the API's routes (a path parameter takes
    any non-empty segment there), so a path of a route's shape that Powertools' rule refuses is
    a bad parameter of that route: 422. The $default route's requests matched none: 404 or 405.
    """

    @resolver.not_found
    def not_found(_exc: NotFoundError) -> Response:
        event = resolver.current_event
        method, path = event.http_method.upper(), event.path
        allowed = allowed_methods(routes_of, path)
        if allowed and method not in allowed:
            # RFC 9110, section 15.5.6: a 405 response carries Allow.
            listed = ", ".join(allowed)
            return error_response(
                HTTPStatus.METHOD_NOT_ALLOWED,
                "method_not_allowed",
                f"{method} is not allowed on {path}; allowed: {listed}",
                [ErrorDetail(field="method", location="request", problem=f"must be one of {listed}")],
                headers={"Allow": listed},
            )
        refused = _refused_parameters(routes_of, method, path) if routed and allowed else []
        if refused:
            # The route exists (API Gateway routed it here); an id in its path cannot be one.
            names = ", ".join(detail.field for detail in refused)
            return error_response(
                HTTPStatus.UNPROCESSABLE_ENTITY, "validation_error", f"invalid path parameter: {names}", refused
            )
        return error_response(HTTPStatus.NOT_FOUND, "not_found", f"no route for {method} {path}")


# --- documentation ----------------------------------------------------------------------


def error_responses(
    descriptions: Mapping[int, str],
    *,
    by_api_gateway: Collection[int] = (),
    models: Mapping[int, type[ErrorResponse]] | None = None,
    headers: Mapping[int, dict[str, OpenAPIResponseHeader]] | None = None,
) -> dict[int, OpenAPIResponse]:
    """OpenAPI responses for error statuses: ErrorResponse bodies (or the subclass `models`
    names for the status), or GatewayError for the statuses API Gateway answers itself on that route."""
    responses: dict[int, OpenAPIResponse] = {}
    for status, description in descriptions.items():
        model = GatewayError if status in by_api_gateway else (models or {}).get(status, ErrorResponse)
        response: OpenAPIResponse = {
            "description": description,
            "content": {content_types.APPLICATION_JSON: {"model": model}},
        }
        if headers and status in headers:
            response["headers"] = headers[status]
        responses[status] = response
    return responses


_BODY_400 = (
    "`validation_error`: the body is not a JSON object: malformed JSON, not UTF-8, flagged "
    "`isBase64Encoded` but not base64, NaN or Infinity, or not an object."
)
_BODY_422 = (
    "`validation_error`: a field is missing, not recognised or invalid, feedId does not match its "
    "pattern, or a number is too large (details name each); `invalid_request`: the payload holds "
    "text that is not valid Unicode."
)
PUBLISH_ERRORS = error_responses(
    {
        400: _BODY_400,
        403: (
            "From API Gateway, not the function (when deployed with ProducerAuth=IAM): the request "
            "is not signed (SigV4) by a principal allowed execute-api:Invoke."
        ),
        409: "`idempotency_conflict`: this key was already used for another event (type or payload).",
        413: "`event_too_large`: the body or the stored event is over MaxEventBytes.",
        415: "`unsupported_media_type`: the Content-Type is not application/json (forms and multipart included).",
        422: _BODY_422,
        503: "`unavailable`: DynamoDB is unavailable after retries; nothing was stored, retry with the same key.",
    },
    by_api_gateway={403},
)
BATCH_ERRORS = error_responses(
    {
        400: _BODY_400 + " Or `events` is empty.",
        403: (
            "From API Gateway, not the function (when deployed with ProducerAuth=IAM): the request "
            "is not signed (SigV4) by a principal allowed execute-api:Invoke."
        ),
        413: "`batch_too_large`: more than 100 events; `event_too_large`: the body is over 1 MiB. Nothing stored. "
        "(An event over MaxEventBytes is a 413 in its own result.)",
        415: "`unsupported_media_type`: the Content-Type is not application/json (forms and multipart included).",
        422: '`validation_error`: the body is not `{"events": [...]}`, feedId does not match its pattern, or '
        "a number is too large (details name each). An invalid event is a 4xx in its own result instead.",
    },
    by_api_gateway={403},
)
HISTORY_ERRORS = error_responses(
    {
        400: "`invalid_cursor`: the cursor is malformed, forged, or from another channel.",
        401: "`unauthorized`: the Authorization header is missing (where required), not Bearer, or its token is "
        "malformed, forged or expired.",
        403: "`forbidden`: the token's channels do not include this feed's.",
        422: "`validation_error`: feedId, limit or cursor is invalid (details name it).",
        500: "`configuration_error`: the deployment cannot read its signing secret.",
        503: "`unavailable`: DynamoDB is unavailable after retries.",
    }
)
_IAM_403 = (
    "From API Gateway, not the function (when deployed with ProducerAuth=IAM): the request "
    "is not signed (SigV4) by a principal allowed execute-api:Invoke."
)
_ROOM_ID_422 = "`validation_error`: roomId does not match ^[A-Za-z0-9_.:-]{1,128}$ (details name it)."
_ROOM_BODY_422 = (
    "`validation_error`: a field is missing, not recognised or invalid, roomId does not match its "
    "pattern, If-Match is not an ETag of the room, or a number is too large (details name each); "
    "`invalid_request`: the body holds text that is not valid Unicode"
)
_ROOM_503 = "`unavailable`: DynamoDB is unavailable after retries, or the room kept changing under the request; retry."
_ROOM_WRITE_503 = (
    "`unavailable`: DynamoDB is unavailable after retries, or the room kept changing under the "
    "change for too many attempts; nothing was written, retry."
)
_ROOM_412 = (
    "`precondition_failed`: If-Match names another version than the room's; `version` is the current "
    "one. Nothing was written."
)
_ROOM_415 = "`unsupported_media_type`: the Content-Type is not application/json."
_ACCEPT_PATCH_HEADER: dict[str, OpenAPIResponseHeader] = {
    "Accept-Patch": {"description": "The media type this route takes (RFC 5789).", "schema": {"type": "string"}}
}
ROOM_READ_ERRORS = error_responses(
    {403: _IAM_403, 422: _ROOM_ID_422, 503: "`unavailable`: DynamoDB is unavailable after retries."},
    by_api_gateway={403},
)
MEMBERS_ERRORS = error_responses(
    {
        403: _IAM_403,
        422: "`validation_error`: roomId, limit or cursor is invalid; `invalid_request`: the cursor is not "
        "one this route gave out (details name it).",
        503: "`unavailable`: DynamoDB is unavailable after retries.",
    },
    by_api_gateway={403},
)
METADATA_ERRORS = error_responses(
    {
        400: _BODY_400,
        403: _IAM_403,
        412: _ROOM_412,
        413: "`metadata_too_large`: the metadata is over 16 KiB as compact JSON, or the body is over "
        "MaxEventBytes and not valid.",
        415: _ROOM_415,
        422: _ROOM_BODY_422 + ".",
        503: _ROOM_WRITE_503,
    },
    by_api_gateway={403},
    models={412: PreconditionFailedResponse},
)
STATE_ERRORS = error_responses(
    {
        400: _BODY_400,
        403: _IAM_403,
        409: "`conflict`: a path the patch changes was changed after its `version` (or that version is "
        'older than the room remembers: conflicts `[""]`); the body carries the current `version` and '
        "`doc` and the `conflicts` (JSON Pointers). Nothing was written.",
        412: _ROOM_412,
        413: "`state_too_large`: the patch or the document after it is over 64 KiB as compact JSON, or the "
        "body is over MaxEventBytes and not valid.",
        415: "`unsupported_media_type`: the Content-Type is not application/json; Accept-Patch names it.",
        422: _ROOM_BODY_422 + "; `patch_test_failed`: a JSON Patch `test` operation does not hold; "
        "`invalid_request`: an operation is malformed or cannot apply to the document (a missing path, "
        "an index out of range), or the result would not be an object.",
        503: _ROOM_WRITE_503,
    },
    by_api_gateway={403},
    models={409: StateConflictResponse, 412: PreconditionFailedResponse},
    headers={415: _ACCEPT_PATCH_HEADER},
)
ROOM_HISTORY_ERRORS = error_responses(
    {
        400: "`invalid_cursor`: the cursor is malformed, forged, or from another channel.",
        401: "`unauthorized`: the Authorization header is missing (where required), not Bearer, or its token is "
        "malformed, forged or expired.",
        403: "`forbidden`: the token's channels do not include this room's (room_{roomId}).",
        422: "`validation_error`: roomId, limit or cursor is invalid (details name it).",
        500: "`configuration_error`: the deployment cannot read its signing secret.",
        503: "`unavailable`: DynamoDB is unavailable after retries.",
    }
)
API_DESCRIPTION = """\
Every error the function answers is JSON in one shape, ErrorResponse:
`{"error": code, "message": text, "details": [{"field", "location", "problem"}]}`.
Two room errors add fields to it: a 409 `conflict` carries the room's current `version`, `doc`
and the `conflicts` (JSON Pointers), a 412 `precondition_failed` its current `version`.
A path this document does not list answers 404 (`not_found`), and another method on a listed
path 405 (`method_not_allowed`, with an Allow header), in that same shape. A refused request
stores nothing.

Rooms: one version counts every change of a room's state and metadata; the ETag of a room is
`"<version>"`, and `If-Match` with it (or `*`) makes a change strict compare-and-set.

API Gateway answers some requests itself before the function runs, with `{"message": text}`
(GatewayError): 403 on the producer and room routes (all but room history) without a valid
SigV4 signature (ProducerAuth=IAM), 413 for a body over 10 MB, 429 when throttled, and 500,
503 or 504 when the function fails or times out.
"""


_POWERTOOLS_422 = "#/components/schemas/HTTPValidationError"
_ITEM_SCHEMAS = [("PublishBatchRequest", "events", "PublishEventRequest")]


def as_sent(document: dict[str, Any]) -> dict[str, Any]:
    """Powertools' generated `document` without the validation error shapes it adds, which this
    API never sends, and with each operation's responses in status order.

    Powertools lists a 422 with its HTTPValidationError body on every operation (the routes
    that send a 422 document their own) and adds HTTPValidationError, ValidationError and
    ResponseValidationError to the schemas. Left: the schemas something refers to.
    """
    for item in document.get("paths", {}).values():
        for operation in item.values():
            responses = operation.get("responses", {})
            kept = {s: r for s, r in responses.items() if _POWERTOOLS_422 not in json.dumps(r)}
            operation["responses"] = dict(sorted(kept.items()))
    schemas: dict[str, Any] = document.get("components", {}).get("schemas", {})
    # A batch's events are validated one by one (each may fail alone), so the model takes any
    # value; the document names what each should be.
    for model, property_name, item in _ITEM_SCHEMAS:
        if model in schemas and item in schemas:
            schemas[model]["properties"][property_name]["items"] = {"$ref": f"#/components/schemas/{item}"}
    used: set[str] = set()
    pending = [json.dumps({key: value for key, value in document.items() if key != "components"})]
    while pending:
        text = pending.pop()
        for name in schemas:
            if name not in used and f'"#/components/schemas/{name}"' in text:
                used.add(name)
                pending.append(json.dumps(schemas[name]))
    document["components"]["schemas"] = {name: schema for name, schema in schemas.items() if name in used}
    return document
