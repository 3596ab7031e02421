"""Read a JSON request body as API Gateway delivers it, before Powertools validates it.

API Gateway (HTTP API, payload format 2.0) passes the body as text for text content types and
base64-encodes any other body, with `isBase64Encoded: true` ("If the content type of the request is
binary, the body is base64-encoded": Create AWS Lambda proxy integrations for HTTP APIs,
https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-develop-integrations-lambda.html).
So a body may arrive encoded whatever it is, and a direct invocation may flag anything as base64.

Every way a body can fail to be JSON is raised here as one of the exceptions below (or, for JSON
itself, as Powertools' RequestValidationError); http_errors maps them to statuses.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from aws_lambda_powertools.event_handler.middlewares.openapi_validation import OpenAPIRequestValidationMiddleware
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.utilities.data_classes.common import BaseProxyEvent

JSON_MEDIA_TYPE = "application/json"
# The request body's size in bytes, in the resolver's context for http_errors (routes with a body only).
BODY_SIZE = "request_body_size"


class UnsupportedMediaType(Exception):
    """The request declares a content type other than JSON (a form, multipart, text ...)."""

    def __init__(self, content_type: str) -> None:
        super().__init__(content_type)
        self.content_type = content_type


class UnreadableBody(Exception):
    """The body is not base64 though flagged so, or its bytes are not UTF-8 (so not JSON text)."""

    def __init__(self, problem: str, size: int | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.size = size  # bytes, when known


def media_type(event: BaseProxyEvent) -> str:
    """The Content-Type's media type, lower case, without parameters ("" when there is none).

    Media types are case-insensitive (RFC 9110, section 8.3.1).
    """
    value = event.headers.get("content-type") or ""
    return value.split(";", 1)[0].strip().lower()


def body_bytes(event: BaseProxyEvent) -> bytes | None:
    """The body's bytes, as the client sent them; None when there is none."""
    body = event.body
    if not body:
        return None
    if event.is_base64_encoded:
        try:
            # Strict: the lenient default skips characters outside the alphabet and reads JSON
            # text flagged as base64 as garbage bytes. API Gateway's base64 has no line breaks.
            return base64.b64decode(body, validate=True)
        except ValueError:  # binascii.Error, or a non-ASCII str
            raise UnreadableBody("isBase64Encoded is true, but the body is not valid base64") from None
    try:
        return body.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates in the event's string: no UTF-8 sent them
        raise UnreadableBody("request body is not valid UTF-8") from None


def body_text(event: BaseProxyEvent) -> str | None:
    """The body as text; None when there is none."""
    raw = body_bytes(event)
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        # JSON text is UTF-8 (RFC 8259, section 8.1).
        raise UnreadableBody(f"request body is not valid UTF-8 (byte {exc.start})", size=len(raw)) from None


def body_size(event: BaseProxyEvent) -> int:
    """The body's size in bytes, for any body (0 when it cannot be read)."""
    try:
        raw = body_bytes(event)
    except UnreadableBody:
        return 0
    return len(raw) if raw is not None else 0


class _NotJson(ValueError):
    pass


class _OutOfRange(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    # Python's json reads NaN and Infinity; JSON has no such values (RFC 8259, section 6).
    raise _NotJson(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _OutOfRange(f"the number {text[:40]} is too large")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits())
        raise _OutOfRange(f"an integer of {len(text)} digits is too large") from None


def parse_json(text: str) -> Any:
    """Parse JSON text, refusing what could not be stored and read back as the same JSON."""
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_int)
    except json.JSONDecodeError as exc:  # as Powertools reports it
        raise RequestValidationError([_json_invalid(exc.pos, exc.msg)], body=text) from exc
    except _NotJson as exc:
        raise RequestValidationError([_json_invalid(0, str(exc))], body=text) from exc
    except _OutOfRange as exc:
        error: dict[str, Any] = {"type": "number_out_of_range", "loc": ("body",), "msg": str(exc), "input": {}}
        raise RequestValidationError([error], body=text) from exc


def _json_invalid(position: int, problem: str) -> dict[str, Any]:
    return {
        "type": "json_invalid",
        "loc": ("body", position),
        "msg": "JSON decode error",
        "input": {},
        "ctx": {"error": problem},
    }


def read_json_body(event: BaseProxyEvent) -> Any:
    """The parsed JSON body (None when there is none), or the reason it cannot be one.

    A missing Content-Type is read as JSON, as Powertools does.
    """
    declared = media_type(event)
    if declared and declared != JSON_MEDIA_TYPE:
        raise UnsupportedMediaType(event.headers.get("content-type") or "")
    text = body_text(event)
    return None if text is None else parse_json(text)


class _JsonBodyValidation(OpenAPIRequestValidationMiddleware):
    """Powertools' request validation, with the body read by `read_json_body`.

    Powertools' own reader accepts forms and multipart for any route, raises on a multipart type
    without a boundary, and decodes base64 and UTF-8 unchecked (a ValueError: a 500).
    """

    def _get_body(self, app: Any) -> Any:
        event = app.current_event
        app.append_context(**{BODY_SIZE: body_size(event)})
        body = read_json_body(event)
        if not isinstance(body, dict):  # every body of this API is an object
            problem = "a JSON object is required" if body is None else "must be a JSON object"
            raise RequestValidationError([{"type": "json_not_object", "loc": ("body",), "msg": problem, "input": {}}])
        return body


def install(app: APIGatewayHttpResolver) -> None:
    """Read every JSON body of `app`'s routes with `read_json_body`.

    Powertools 3.37 (pinned in pyproject.toml) keeps its request validation middleware in
    `_request_validation_middleware` and reads bodies in its `_get_body`; tests/unit/test_http_bodies.py
    fails if either moves.
    """
    app._request_validation_middleware = _JsonBodyValidation()
