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
| signed with another access key | 403 ``UnrecognizedClientException``                              |

The stage may prefix the path (``/{stage}/@connections/{id}``), as in the deployed endpoint URL.

The size limit is API Gateway's ("Quotas for configuring and running a WebSocket in API Gateway"):
a message payload is at most 128 KB, and "this applies to @connections commands"; API Gateway
splits a message over the 32 KB frame size into several frames. Here a message goes out as one
frame: a WebSocket client reassembles fragments before its application sees the message, so the
two cannot be told apart.

``requests``, ``posts`` (frames delivered), ``post_bytes`` and ``gone`` count the calls, for
tests and benchmarks (``stats()``; the local stack serves them at ``GET /dev/stats``).

On AWS the signature proves an IAM identity that holds ``execute-api:ManageConnections``.
Locally there is no IAM, but the stack makes up per-run credentials at start (``LocalStack``
puts them in the functions' environment as ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``)
and hands their access key id here (``access_key_id``): a call signed with any other key is
refused as API Gateway refuses an unknown key (403 ``UnrecognizedClientException``, "The
security token included in the request is invalid."), so nothing but the stack's own functions
(and whoever read its start-up output) can post to, read or close a socket. The key id is taken
from the ``Credential`` of the SigV4 ``Authorization`` header or of a presigned URL's
``X-Amz-Credential`` ("Authenticating Requests: Using the Authorization Header (AWS Signature
Version 4)"); the signature itself is not recomputed. A caller that does not sign at all gets
API Gateway's 403 ``ForbiddenException`` ("Missing Authentication Token"). Without
``access_key_id`` (unit tests of the gateway alone) any signed call is taken.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import re

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


# `Credential=AKIDEXAMPLE/20150830/us-east-1/execute-api/aws4_request`: the key id is before the first /.
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")


def access_key_id_of(request: web.Request) -> str | None:
    """The access key id a SigV4-signed request names (header or presigned query), or None."""
    found = _CREDENTIAL.search(request.headers.get("Authorization", ""))
    if found:
        return found.group(1)
    key_id, slash, _ = request.query.get("X-Amz-Credential", "").partition("/")
    return key_id if slash and key_id else None


class ManagementApi:
    def __init__(
        self, registry: ConnectionRegistry, *, require_signature: bool = True, access_key_id: str | None = None
    ) -> None:
        self.registry = registry
        self.require_signature = require_signature
        # The only key a call may be signed with (None: any); see the module's docstring.
        self.access_key_id = access_key_id
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
        if self.access_key_id is not None and not hmac.compare_digest(
            (access_key_id_of(request) or "").encode(), self.access_key_id.encode()
        ):
            return _error(403, "UnrecognizedClientException", "The security token included in the request is invalid.")
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
