"""API Gateway HTTP API (payload format 2.0) in front of a FunctionHost, on aiohttp.

Routes come from the template's `HttpApi` events, so the local gateway routes exactly as the
deployed one would: a route matching the request's path and method, else the `$default` route
if there is one, else API Gateway's own `{"message":"Not Found"}`
(https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-develop-routes.html).
"""

from __future__ import annotations

import base64
import json
import logging
import mimetypes
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from .lambda_host import FunctionHost

log = logging.getLogger("realtime_devstack.http")

MAX_PAYLOAD_BYTES = 10 * 1024 * 1024  # API Gateway's HTTP API request limit
# Content types whose bodies API Gateway passes to Lambda as text; it base64-encodes every other
# body, including one without a content type and (surprisingly) a form. AWS documents the rule
# ("If the content type of the request is binary, the body is base64-encoded": Create AWS Lambda
# proxy integrations for HTTP APIs) but not the list: this one is what deployed HTTP APIs have been
# observed to pass as text. Treating a type as binary when in doubt is the safe side: the handler
# decodes base64 and refuses what is not UTF-8 JSON either way.
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript")
DEFAULT_ROUTE_PATH = "/$default"  # how SAM writes the $default route (Path /$default, Method ANY)


@dataclass(frozen=True)
class HttpRoute:
    method: str
    path: str  # as in the template, e.g. /feeds/{feedId}/events, or /$default
    function: FunctionHost

    @property
    def is_default(self) -> bool:
        return self.path == DEFAULT_ROUTE_PATH

    @property
    def route_key(self) -> str:
        return "$default" if self.is_default else f"{self.method} {self.path}"

    @property
    def precedence(self) -> tuple[bool, bool, int, bool]:
        """Sort key, best first: API Gateway picks a full match of route and method, then a match
        with a greedy path variable ({proxy+}), then $default (Routing API requests, in Create
        routes for HTTP APIs); among full matches, fewer path variables, then a method over ANY."""
        return self.is_default, "+}" in self.path, self.path.count("{"), self.method == "ANY"

    def match(self, method: str, path: str) -> dict[str, str] | None:
        if self.is_default:
            return {}
        if method != self.method and self.method != "ANY":
            return None
        pattern = "^" + re.sub(r"\\\{(\w+)\\\+\\\}$", r"(?P<\1>.+)", re.escape(self.path)) + "$"
        pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", pattern)
        found = re.match(pattern, path)
        return found.groupdict() if found else None


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


def _build_event(request: web.Request, route: HttpRoute, params: dict[str, str], body: bytes) -> dict[str, Any]:
    now = time.time()
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    query: dict[str, str] = {}
    for name, value in request.query.items():
        query[name] = f"{query[name]},{value}" if name in query else value
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route.route_key,
        "rawPath": request.path,
        "rawQueryString": request.query_string,
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "local",
            "domainName": request.host,
            "domainPrefix": request.host.split(".")[0],
            "http": {
                "method": request.method,
                "path": request.path,
                "protocol": f"HTTP/{request.version.major}.{request.version.minor}",
                "sourceIp": request.remote or "127.0.0.1",
                "userAgent": request.headers.get("User-Agent", ""),
            },
            "requestId": uuid.uuid4().hex[:16],
            "routeKey": route.route_key,
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": False,
    }
    if request.cookies:
        event["cookies"] = [f"{k}={v}" for k, v in request.cookies.items()]
    if query:
        event["queryStringParameters"] = query
    if params:
        event["pathParameters"] = params
    if body:
        text = _as_text(body, headers.get("content-type", ""))
        if text is None:
            event["body"] = base64.b64encode(body).decode()
            event["isBase64Encoded"] = True
        else:
            event["body"] = text
    return event


def _as_text(body: bytes, content_type: str) -> str | None:
    """The body as API Gateway hands it over as text, or None when it base64-encodes it."""
    if not content_type.strip().lower().startswith(_TEXT_TYPES):
        return None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        # Undocumented for a text type; an event (JSON) cannot carry the bytes as text, and
        # base64 hands the function exactly what the client sent.
        return None


def _to_response(result: Any) -> web.Response:
    # Payload format 2.0: a dict without statusCode is itself the JSON body.
    if not isinstance(result, dict) or "statusCode" not in result:
        return web.json_response(result)
    body = result.get("body") or ""
    raw = base64.b64decode(body) if result.get("isBase64Encoded") else str(body).encode()
    response = web.Response(status=int(result["statusCode"]), body=raw)
    for name, value in (result.get("headers") or {}).items():
        response.headers[name] = str(value)
    for name, values in (result.get("multiValueHeaders") or {}).items():
        for value in values:
            response.headers.add(name, str(value))
    for cookie in result.get("cookies") or []:
        response.headers.add("Set-Cookie", cookie)
    return response


@dataclass(frozen=True)
class CorsConfiguration:
    """An HTTP API's ``CorsConfiguration`` ("Configure CORS for HTTP APIs in API Gateway").

    API Gateway then answers every preflight itself (an ``OPTIONS`` with ``Origin`` and
    ``Access-Control-Request-Method``), whatever the routes; adds the configured headers to the
    integration's response when the request's ``Origin`` is allowed; and ignores the CORS headers
    an integration returns. ``allow_origins`` entries: an exact origin, ``*`` (any origin), or a
    scheme wildcard such as ``https://*``.
    """

    allow_origins: tuple[str, ...]
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: int | None = None
    allow_credentials: bool = False

    def allowed(self, origin: str) -> str | None:
        """The ``Access-Control-Allow-Origin`` for a request from ``origin``, or None (not allowed)."""
        for allowed in self.allow_origins:
            if allowed == "*":
                return "*"
            if allowed.endswith("://*") and origin.lower().startswith(allowed[:-1].lower()):
                return origin
            if allowed.lower() == origin.lower():
                return origin
        return None

    def preflight(self, origin: str) -> web.Response:
        response = web.Response(status=204)
        allowed = self.allowed(origin)
        if allowed is None:
            return response  # answered, but with no CORS header: the browser refuses the call
        response.headers["Access-Control-Allow-Origin"] = allowed
        if self.allow_methods:
            response.headers["Access-Control-Allow-Methods"] = ",".join(self.allow_methods)
        if self.allow_headers:
            response.headers["Access-Control-Allow-Headers"] = ",".join(self.allow_headers)
        if self.max_age is not None:
            response.headers["Access-Control-Max-Age"] = str(self.max_age)
        self._common(response, allowed)
        return response

    def apply(self, response: web.StreamResponse, origin: str | None) -> web.StreamResponse:
        for name in [name for name in response.headers if name.lower().startswith("access-control-")]:
            del response.headers[name]  # the integration's own CORS headers are ignored
        allowed = self.allowed(origin) if origin else None
        if allowed is not None:
            response.headers["Access-Control-Allow-Origin"] = allowed
            if self.expose_headers:
                response.headers["Access-Control-Expose-Headers"] = ",".join(self.expose_headers)
            self._common(response, allowed)
        return response

    def _common(self, response: web.StreamResponse, allowed: str) -> None:
        if self.allow_credentials:
            response.headers["Access-Control-Allow-Credentials"] = "true"
        if allowed != "*":
            response.headers["Vary"] = "Origin"  # the answer depends on who asks: caches must know


class HttpGateway:
    """The HTTP API: routes, and CORS when the API has a ``CorsConfiguration`` (None: no CORS
    header at all, and an ``OPTIONS`` is routed like any other method)."""

    def __init__(self, routes: list[HttpRoute], cors: CorsConfiguration | None = None) -> None:
        self.routes = sorted(routes, key=lambda route: route.precedence)
        self.cors = cors

    async def handle(self, request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        preflight = request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
        if self.cors is not None and preflight and origin is not None:
            return self.cors.preflight(origin)
        response = await self._route(request)
        return self.cors.apply(response, origin) if self.cors is not None else response

    async def _route(self, request: web.Request) -> web.StreamResponse:
        for route in self.routes:
            params = route.match(request.method, request.path)
            if params is not None:
                break
        else:
            # No route and no $default route: API Gateway answers itself, without the function.
            return _json_error(404, "Not Found")
        if request.content_length and request.content_length > MAX_PAYLOAD_BYTES:
            return _json_error(413, "Request Entity Too Large")
        body = await request.read()
        event = _build_event(request, route, params, body)
        try:
            result = await route.function.invoke(event)
        except Exception:
            # What API Gateway answers when the function itself fails.
            log.exception("function %s raised", route.function.name)
            return _json_error(500, "Internal Server Error")
        try:
            return _to_response(result)
        except (ValueError, TypeError, json.JSONDecodeError):
            log.exception("function %s returned a malformed response", route.function.name)
            return _json_error(502, "Bad Gateway")


class StaticFiles:
    """The dashboard and the browser client: ``/`` is ``web/dashboard.html``, ``/web/...`` is ``web/...``.

    Whatever exists is served (no caching, for editing while the stack runs); anything else,
    and any path that would leave ``web/``, is a 404.
    """

    INDEX = "dashboard.html"

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/", self.index)
        router.add_get("/web/{path:.*}", self.file)

    async def index(self, request: web.Request) -> web.StreamResponse:
        return self._serve(self.INDEX)

    async def file(self, request: web.Request) -> web.StreamResponse:
        return self._serve(request.match_info["path"])

    def _serve(self, relative: str) -> web.StreamResponse:
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            return _json_error(404, "Not Found")
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if path.suffix in (".js", ".mjs"):
            content_type = "text/javascript"
        response = web.FileResponse(path, headers={"Cache-Control": "no-store", "Content-Type": content_type})
        return response
