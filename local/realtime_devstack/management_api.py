"""The API Gateway management API (``@connections``) of the local WebSocket API.

The functions reach it exactly as on AWS, through the endpoint URL: boto3's
``apigatewaymanagementapi`` client (``endpoint_url=WEBSOCKET_MANAGEMENT_URL``, or boto3's own
``AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI``) or any SigV4 signer over HTTP.

| request                        | answer                                                           |
| ------------------------------ | ---------------------------------------------------------------- |
| ``POST /@connections/{id}``    | 200, the body sent to the socket as one frame                    |
| ``GET /@connections/{id}``     | 200 ``{"connectedAt", "identity": {sourceIp, userAgent}, "lastActiveAt"}`` |
| ``DELETE /@connections/{id}``  | 204, the socket closed (its ``$disconnect`` follows)             |
| unknown or closed connection   | 410 ``GoneException``                                           |
| data over 128 KB (131,072 B)   | 413 ``PayloadTooLargeException``                                 |
| no SigV4 ``Authorization``     | 403 ``ForbiddenException`` ("Missing Authentication Token")      |

The stage may prefix the path (``/{stage}/@connections/{id}``), as in the deployed endpoint URL.

The size limit is API Gateway's ("Quotas for configuring and running a WebSocket in API Gateway"):
a message payload is at most 128 KB, and "this applies to @connections commands"; API Gateway
splits a message over the 32 KB frame size into several frames. Here a message goes out as one
frame: a WebSocket client reassembles fragments before its application sees the message, so the
two cannot be told apart.

``requests``, ``posts`` (frames delivered), ``post_bytes`` and ``gone`` count the calls, for
tests and benchmarks (``stats()``; the local stack serves them at ``GET /dev/stats``).

Signatures are required but not verified. On AWS the signature proves an IAM identity that
holds ``execute-api:ManageConnections``; locally there is no IAM: every caller signs with the
stack's fake credentials (``local``/``local``, or whatever a developer's shell holds), so a
check would only reject callers for which key they picked, and the server listens on loopback
only. What is still worth catching is a caller that does not sign at all, since API Gateway
refuses those: that gets the 403.
"""

from __future__ import annotations

import contextlib
import json
import logging

from aiohttp import web

from .ws_gateway import DELETED, ConnectionRegistry, iso_time

log = logging.getLogger("realtime_devstack.management")

# "Quotas for configuring and running a WebSocket in API Gateway": message payload size 128 KB,
# WebSocket frame size 32 KB (a larger message is several frames).
MAX_DATA_BYTES = 128 * 1024
FRAME_BYTES = 32 * 1024
PATHS = ("/@connections/{connection_id}", "/{stage}/@connections/{connection_id}")


def _error(status: int, error_type: str, message: str | None) -> web.Response:
    # rest-json errors: botocore reads the code from x-amzn-ErrorType (then the body's __type).
    response = web.json_response({"message": message}, status=status)
    response.headers["x-amzn-ErrorType"] = error_type
    return response


def _signed(request: web.Request) -> bool:
    authorization = request.headers.get("Authorization", "")
    return authorization.startswith("AWS4-HMAC-SHA256 ") or "X-Amz-Signature" in request.query


class ManagementApi:
    def __init__(self, registry: ConnectionRegistry, *, require_signature: bool = True) -> None:
        self.registry = registry
        self.require_signature = require_signature
        self.requests = 0  # every call, whatever its answer
        self.posts = 0  # messages delivered (POST answered 200)
        self.post_bytes = 0  # bytes of those messages
        self.gone = 0  # calls answered 410
        self.too_large = 0  # POSTs answered 413

    def stats(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "posts": self.posts,
            "post_bytes": self.post_bytes,
            "gone": self.gone,
            "too_large": self.too_large,
        }

    def add_routes(self, router: web.UrlDispatcher) -> None:
        for path in PATHS:
            router.add_route("*", path, self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        response = await self._handle(request)
        if response.status == 410:
            self.gone += 1
        return response

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ("POST", "GET", "DELETE"):
            return _error(404, "NotFoundException", "Not Found")
        if self.require_signature and not _signed(request):
            return _error(403, "ForbiddenException", "Missing Authentication Token")
        connection_id = request.match_info["connection_id"]
        connection = self.registry.get(connection_id)
        if request.method == "POST":
            data = await request.read()
            if len(data) > MAX_DATA_BYTES:
                self.too_large += 1
                return _error(413, "PayloadTooLargeException", f"Message too long: {len(data)} bytes")
            if connection is None:
                return _error(410, "GoneException", None)
            try:
                await connection.send(data)
            except (ConnectionError, RuntimeError):
                return _error(410, "GoneException", None)  # closed while we were sending
            self.posts += 1
            self.post_bytes += len(data)
            return web.Response(status=200)
        if connection is None:
            return _error(410, "GoneException", None)
        if request.method == "GET":
            identity = {"sourceIp": connection.source_ip}
            if connection.user_agent:
                identity["userAgent"] = connection.user_agent
            body = {
                "connectedAt": iso_time(connection.connected_at),
                "identity": identity,
                "lastActiveAt": iso_time(connection.last_active_at),
            }
            return web.Response(status=200, text=json.dumps(body), content_type="application/json")
        with contextlib.suppress(ConnectionError, RuntimeError):
            await connection.close(*DELETED)
        return web.Response(status=204)
