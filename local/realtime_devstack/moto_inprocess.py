"""The stack's own DynamoDB requests answered by moto in this process, without HTTP.

Over HTTP, each DynamoDB request of a function cost the stack about as much CPU as the function
itself: urllib3 and ``http.client`` on the way out, werkzeug, Flask and moto's domain dispatcher
on the way in, a thread per connection, all on the one core the GIL gives the process. Measured
with py-spy on one publishing producer: half the stack's samples were in moto's HTTP server.

:func:`serve` names the endpoint (moto's server URL, which keeps serving other processes: the
tests, ``tail``, a developer's AWS CLI); every botocore request of this process whose URL starts
with it is handed straight to moto's response handler (``DynamoHandler`` or
``DynamoDBStreamsHandler``, chosen by ``X-Amz-Target`` as moto's server chooses) on the calling
thread. The request is still signed, serialised and parsed by botocore, and answered with the
status, headers and body moto's server would send, so botocore's retries, CRC32 check, error
parsing, the Lambda host's deadline guard (``Endpoint.create_request``) and ``faithful``'s hooks
(patched into moto's handlers, not its server) behave exactly as over HTTP. Only the socket hop
is gone.

Hooked at ``Endpoint._send``, after botocore's ``before-send`` event, so a test's ``mock_aws``
(which answers in ``before-send``) still wins, and URLs that are not moto's go out as before.

Such a request is not SigV4-signed (``RequestSigner.sign``, ~0.25 ms, a fifth of a GetItem's
cost here): it carries the ``Authorization`` header's credential scope (access key, date,
region, service), which is all moto reads (for the account and region), with a placeholder
signature. moto verifies no signature, in process or over HTTP, so nothing it accepts changes.
"""

from __future__ import annotations

import datetime
import io
import sys
import threading
import time
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["serve", "served", "stats", "stop"]

_LOCK = threading.Lock()
_MARK = "_realtime_devstack_in_process"
_PREFIXES: set[str] = set()  # endpoint URLs answered here, with their trailing "/"
# operation -> [requests answered in process, thread CPU seconds moto spent on them] (/dev/stats)
_ANSWERED: dict[str, list[float]] = {}


def serve(url: str) -> None:
    """Answer this process's requests to ``url`` (moto's server, ``http://host:port``) in process."""
    _install()
    with _LOCK:
        _PREFIXES.add(url.rstrip("/") + "/")


def stop(url: str) -> None:
    """Requests to ``url`` go over HTTP again (the stack stopped, its moto server with it)."""
    with _LOCK:
        _PREFIXES.discard(url.rstrip("/") + "/")


def served(url: str) -> bool:
    return url.rstrip("/") + "/" in _PREFIXES


def stats() -> dict[str, dict[str, float]]:
    """Per operation (``X-Amz-Target``'s, e.g. ``PutItem``): requests answered in process, and the
    CPU milliseconds moto spent on them (thread time: its lock waits and faithful's sleeps excluded)."""
    return {op: {"requests": int(n), "cpu_ms": round(cpu * 1000, 1)} for op, (n, cpu) in sorted(_ANSWERED.items())}


def _matches(url: str) -> bool:
    # A request URL is the endpoint plus "/" (DynamoDB's JSON protocol posts to the root).
    return any(url.startswith(prefix) or url + "/" == prefix for prefix in _PREFIXES)


def _install() -> None:
    from botocore.endpoint import Endpoint
    from botocore.signers import RequestSigner

    with _LOCK:
        if getattr(Endpoint, _MARK, False):
            return
        send = Endpoint._send  # type: ignore[attr-defined]  # private, stable since botocore 1.x
        sign = RequestSigner.sign

        def _send(self: Any, request: Any) -> Any:
            if _PREFIXES and _matches(request.url):
                return _answer(request)
            return send(self, request)

        def _sign(
            self: Any,
            operation_name: str,
            request: Any,
            region_name: str | None = None,
            signing_type: str = "standard",
            expires_in: int | None = None,
            signing_name: str | None = None,
        ) -> None:
            if _PREFIXES and signing_type == "standard" and _matches(request.url):
                _stamp(self, request, region_name, signing_name)
                return
            sign(self, operation_name, request, region_name, signing_type, expires_in, signing_name)

        setattr(Endpoint, "_send", _send)  # noqa: B010
        setattr(RequestSigner, "sign", _sign)  # noqa: B010
        setattr(Endpoint, _MARK, True)


def _request(request: Any) -> Any:
    """moto's Request for a prepared botocore request: what ``moto.core.request.normalize_request``
    builds, from a WSGI environ made directly rather than through werkzeug's ``EnvironBuilder``
    (a sixth of a GetItem's cost here). A JSON-protocol POST: method, URL, headers, body."""
    from moto.core.request import PRESERVED_HEADER_NAMES_ENVIRON_KEY, Request, environ_key_for_header

    url = urlsplit(request.url)
    body = request.body
    if body is None:
        body = b""
    elif isinstance(body, str):
        body = body.encode()
    elif not isinstance(body, bytes):
        body = body.read()  # a stream (DynamoDB's bodies are bytes; be safe)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote(url.path) or "/",
        "RAW_URI": url.path or "/",
        "QUERY_STRING": url.query,
        "SERVER_NAME": url.hostname or "localhost",
        "SERVER_PORT": str(url.port or (443 if url.scheme == "https" else 80)),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": url.netloc,
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": url.scheme,
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        PRESERVED_HEADER_NAMES_ENVIRON_KEY: {},
    }
    for name, value in request.headers.items():
        if name.lower() != "transfer-encoding":
            environ[environ_key_for_header(name)] = value.decode() if isinstance(value, bytes) else value
    return Request(environ)


def _stamp(signer: Any, request: Any, region_name: str | None, signing_name: str | None) -> None:
    """The headers a SigV4 signature puts on ``request``, with a placeholder signature."""
    credentials = signer._credentials.get_frozen_credentials() if signer._credentials is not None else None
    if credentials is None:
        return  # botocore would not sign either (an anonymous client)
    now = datetime.datetime.now(datetime.UTC)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    scope = f"{stamp[:8]}/{region_name or signer.region_name}/{signing_name or signer.signing_name}/aws4_request"
    for name in ("Authorization", "X-Amz-Date", "X-Amz-Security-Token"):
        if name in request.headers:
            del request.headers[name]
    request.headers["X-Amz-Date"] = stamp
    if credentials.token:
        request.headers["X-Amz-Security-Token"] = credentials.token
    request.headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
        f"SignedHeaders=host;x-amz-date, Signature={_PLACEHOLDER_SIGNATURE}"
    )


_PLACEHOLDER_SIGNATURE = "0" * 64


def _answer(request: Any) -> Any:
    """moto's answer to one prepared botocore request, as an ``AWSResponse``."""
    from botocore.awsrequest import AWSResponse
    from botocore.compat import HTTPHeaders
    from moto.core.botocore_stubber import MockRawResponse
    from moto.core.exceptions import HTTPException
    from moto.dynamodb.responses import DynamoHandler
    from moto.dynamodbstreams.responses import DynamoDBStreamsHandler

    target = request.headers.get("X-Amz-Target") or b""
    if isinstance(target, bytes):
        target = target.decode()
    # moto's server: "DynamoDBStreams_..." targets go to the streams backend, the rest to DynamoDB.
    handler = DynamoDBStreamsHandler if target.startswith("DynamoDBStreams") else DynamoHandler
    started = time.thread_time()
    normalized = _request(request)
    try:
        status, headers, body = handler.dispatch(normalized, normalized.raw_url, normalized.headers)
    except HTTPException as exc:
        status, headers, body = exc.code, exc.get_headers(), exc.get_body()
    operation = target.rpartition(".")[2] or "unknown"
    counts = _ANSWERED.setdefault(operation, [0, 0.0])
    counts[0] += 1  # under the GIL: a lost increment only blurs a benchmark figure
    counts[1] += time.thread_time() - started
    # moto's "status" pseudo-header is for its own server; botocore gets the real status.
    response_headers = HTTPHeaders()
    for name, value in dict(headers).items():
        if name != "status":
            response_headers[str(name)] = str(value)
    return AWSResponse(request.url, int(status), response_headers, MockRawResponse(body))
