"""Lambda's Invoke API for the local stack: one function invoking another (the fan-out its workers).

``POST /2015-03-31/functions/{FunctionName}/invocations``, as the Lambda API reference's "Invoke"
describes it, for ``RequestResponse`` only (the template invokes nothing asynchronously):

* the function is named by its logical id, its name, or an ARN ending in ``function:{name}``
  (with an optional qualifier); unknown: 404 ``ResourceNotFoundException``;
* a payload over 6 MB ("Lambda quotas": 6 MB for synchronous invocations) is refused with 413
  ``RequestTooLargeException``; one that is not JSON with 400 ``InvalidRequestContentException``;
  an ``X-Amz-Invocation-Type`` other than ``RequestResponse`` with 400
  ``InvalidParameterValueException`` (a local stack without an event queue must not pretend);
* the function's answer is the body (200); a handler that raised, or ran past its Timeout, is
  still a 200, with ``X-Amz-Function-Error: Unhandled`` and ``{"errorMessage", "errorType"}``.

Calls must be SigV4-signed with the stack's per-run access key, as the management API's.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from .lambda_host import FunctionHost, FunctionTimedOut
from .management_api import access_key_id_of

PATH = "/2015-03-31/functions/{name}/invocations"
MAX_SYNC_PAYLOAD_BYTES = 6 * 1024 * 1024

log = logging.getLogger("realtime_devstack.lambda_api")


def _error(status: int, error_type: str, message: str) -> web.Response:
    # rest-json errors: botocore reads the code from x-amzn-ErrorType.
    response = web.json_response({"Type": "User", "message": message}, status=status)
    response.headers["x-amzn-ErrorType"] = error_type
    return response


def function_name(raw: str) -> str:
    """The bare name of `name`, `arn:aws:lambda:{region}:{account}:function:{name}[:qualifier]`."""
    if raw.startswith("arn:"):
        parts = raw.split(":")
        return parts[6] if len(parts) >= 7 else ""
    return raw.partition(":")[0]


class LambdaApi:
    def __init__(self, functions: Mapping[str, FunctionHost], *, access_key_id: str | None = None) -> None:
        self.functions = functions
        self.access_key_id = access_key_id
        self.invocations = 0

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post(PATH, self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        if self.access_key_id is not None and not hmac.compare_digest(
            (access_key_id_of(request) or "").encode(), self.access_key_id.encode()
        ):
            return _error(403, "AccessDeniedException", "not signed with this stack's credentials")
        name = function_name(request.match_info["name"])
        host = self.functions.get(name)
        if host is None:
            return _error(404, "ResourceNotFoundException", f"Function not found: {name}")
        kind = request.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        if kind != "RequestResponse":
            return _error(400, "InvalidParameterValueException", f"only RequestResponse is served locally, not {kind}")
        body = await request.read()
        if len(body) > MAX_SYNC_PAYLOAD_BYTES:
            return _error(413, "RequestTooLargeException", "Request must be smaller than 6291456 bytes")
        try:
            event = json.loads(body or b"{}")
        except ValueError:
            return _error(400, "InvalidRequestContentException", "Could not parse request body into json")
        self.invocations += 1
        try:
            result: Any = await host.invoke(event)
        except FunctionTimedOut as exc:
            return self._function_error(exc.error_type, str(exc))
        except Exception as exc:  # the handler raised: Lambda answers 200 with the error
            return self._function_error(type(exc).__name__, str(exc))
        response = web.Response(body=json.dumps(result).encode(), content_type="application/json")
        response.headers["X-Amz-Executed-Version"] = "$LATEST"
        return response

    @staticmethod
    def _function_error(error_type: str, message: str) -> web.Response:
        response = web.json_response({"errorMessage": message, "errorType": error_type})
        response.headers["X-Amz-Function-Error"] = "Unhandled"
        response.headers["X-Amz-Executed-Version"] = "$LATEST"
        return response
