"""The local stack is safe on a laptop, over real sockets: only its own Host names are answered
(DNS rebinding), /dev/* and the management API need this run's secrets, it stays on loopback
unless told it is unsafe, and CORS is the template's CorsAllowOrigins."""

from __future__ import annotations

import base64
import http.client
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from realtime_devstack import process

from .conftest import Stack

pytestmark = pytest.mark.integration

SECRET_HEADER = "X-Devstack-Secret"


def raw(
    stack: Stack, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None
) -> tuple[int, http.client.HTTPResponse, Any]:
    """One request with exactly these headers (http.client sends Host itself unless given one)."""
    parts = urlsplit(stack.url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        given = dict(headers or {})
        connection.putrequest(method, path, skip_host="Host" in given, skip_accept_encoding=True)
        for name, value in given.items():
            connection.putheader(name, value)
        connection.putheader("Content-Length", str(len(body or b"")))
        connection.endheaders(body)
        response = connection.getresponse()
        data = response.read()
        try:
            payload = json.loads(data) if data else None
        except ValueError:
            payload = data
        return response.status, response, payload
    finally:
        connection.close()


def port_of(stack: Stack) -> int:
    return int(urlsplit(stack.url).port or 0)


UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
}


@pytest.mark.parametrize(
    ("method", "path", "extra"),
    [
        ("GET", "/feeds/x/events", {}),  # the HTTP API
        ("GET", "/", {}),  # the dashboard
        ("GET", "/dev/token", {}),  # with the secret, even
        ("GET", "/ws", UPGRADE),  # the WebSocket upgrade
        ("POST", "/@connections/AAAAAAAAAAAAAAA=", {}),  # the management API
    ],
)
def test_a_host_that_is_not_the_stacks_is_refused_everywhere(
    stack: Stack, method: str, path: str, extra: dict[str, str]
) -> None:
    port = port_of(stack)
    headers = {**extra, SECRET_HEADER: stack.dev_secret}
    for host in (f"rebound.example:{port}", f"127.0.0.1:{port + 1}", "127.0.0.1", f"localhost.evil:{port}"):
        status, _, body = raw(stack, method, path, {"Host": host, **headers})
        assert status == 421, (host, status, body)
        assert host in body["message"] and "DNS rebinding" in body["message"]
    # Its own names are answered (here: the 200s and 426 the routes give).
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}"):
        status, _, body = raw(stack, method, path, {"Host": host, **headers})
        assert status not in (400, 421), (host, status, body)


def test_dev_endpoints_need_this_runs_secret(stack: Stack) -> None:
    for method, path in (("GET", "/dev/token"), ("GET", "/dev/stats"), ("POST", "/dev/connections/drop")):
        status, _, body = raw(stack, method, path)
        assert status == 403 and "Dev secret" in body["message"], (path, status, body)
        status, _, body = raw(stack, method, path, {SECRET_HEADER: "not-" + stack.dev_secret})
        assert status == 403, (path, status, body)
    status, _, body = raw(stack, "GET", "/dev/token", {SECRET_HEADER: stack.dev_secret})
    assert status == 200 and body["token"].count(".") == 2
    # A preflight for /dev/* gets no CORS answer: no other origin's script may call it.
    status, response, _ = raw(
        stack, "OPTIONS", "/dev/token", {"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"}
    )
    assert status == 403 and response.getheader("Access-Control-Allow-Origin") is None


def test_the_dashboard_page_hands_the_secret_over_as_a_strict_http_only_cookie(stack: Stack) -> None:
    status, response, _ = raw(stack, "GET", "/")
    assert status == 200
    cookie = response.getheader("Set-Cookie") or ""
    name = f"devstack_{port_of(stack)}"
    assert cookie.startswith(f"{name}={stack.dev_secret};"), cookie
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/dev"} <= attributes, cookie
    # What the page's own fetch('/dev/token') then sends.
    status, _, body = raw(stack, "GET", "/dev/token", {"Cookie": f"{name}={stack.dev_secret}"})
    assert status == 200 and "token" in body
    status, _, _ = raw(stack, "GET", "/dev/token", {"Cookie": f"devstack_1={stack.dev_secret}"})
    assert status == 403, "another port's cookie is not this stack's"


def test_the_management_api_takes_only_the_per_run_credentials(stack: Stack) -> None:
    import boto3

    printed = stack.printed("Management:")
    line = next(line for line in stack.output if "AWS_ACCESS_KEY_ID=" in line)
    key_id = line.split("AWS_ACCESS_KEY_ID=")[1].split()[0]
    secret_key = line.split("AWS_SECRET_ACCESS_KEY=")[1].split()[0].rstrip(")")
    assert printed.startswith(stack.url)

    def client(key: str, secret: str) -> Any:
        return boto3.client(
            "apigatewaymanagementapi",
            endpoint_url=stack.url,
            region_name="us-east-1",
            aws_access_key_id=key,
            aws_secret_access_key=secret,
        )

    stranger = client("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    with pytest.raises(stranger.exceptions.ClientError) as refused:
        stranger.post_to_connection(ConnectionId="AAAAAAAAAAAAAAA=", Data=b"x")
    assert refused.value.response["Error"]["Code"] == "UnrecognizedClientException"
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    own = client(key_id, secret_key)
    with pytest.raises(own.exceptions.GoneException):  # let in: the connection just does not exist
        own.post_to_connection(ConnectionId="AAAAAAAAAAAAAAA=", Data=b"x")


def test_cors_preflight_follows_the_templates_default_origins(stack: Stack) -> None:
    status, response, _ = raw(
        stack,
        "OPTIONS",
        "/feeds/x/events",
        {"Origin": "https://anyone.example", "Access-Control-Request-Method": "POST"},
    )
    assert status == 204
    assert response.getheader("Access-Control-Allow-Origin") == "*"  # CorsAllowOrigins' default
    assert "authorization" in (response.getheader("Access-Control-Allow-Headers") or "")
    assert response.getheader("Access-Control-Max-Age") == "600"


def test_a_non_loopback_host_needs_unsafe_expose() -> None:
    refused = subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "realtime_devstack.cli", "dev", "--host", "0.0.0.0", "--port", "0"],  # noqa: S104
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2, refused.stderr
    assert "refusing to listen on 0.0.0.0" in refused.stderr and "--unsafe-expose" in refused.stderr
    assert "Traceback" not in refused.stderr and "ready" not in refused.stdout


@pytest.fixture(scope="module")
def exposed() -> Iterator[Stack]:
    """Beyond loopback, as asked for, with a name of its own and one allowed origin."""
    running = process.start(
        "--host",
        "0.0.0.0",  # noqa: S104 - the point of the test
        "--unsafe-expose",
        "--allow-host",
        "devbox.test",
        "--cors-allow-origins",
        "https://app.example,https://other.example",
    )
    yield running
    assert running.stop() == 0


def test_unsafe_expose_listens_and_still_checks_the_host_and_cors(exposed: Stack) -> None:
    assert any("not loopback (--unsafe-expose)" in line for line in exposed.output)
    port = port_of(exposed)
    assert raw(exposed, "GET", "/feeds/x/events", {"Host": f"devbox.test:{port}"})[0] == 200
    assert raw(exposed, "GET", "/feeds/x/events", {"Host": f"127.0.0.1:{port}"})[0] == 200
    assert raw(exposed, "GET", "/feeds/x/events", {"Host": f"elsewhere.test:{port}"})[0] == 421

    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    status, response, _ = raw(exposed, "OPTIONS", "/feeds/x/events", {"Origin": "https://app.example", **preflight})
    assert status == 204 and response.getheader("Access-Control-Allow-Origin") == "https://app.example"
    assert "POST" in (response.getheader("Access-Control-Allow-Methods") or "")
    status, response, _ = raw(exposed, "OPTIONS", "/feeds/x/events", {"Origin": "https://evil.example", **preflight})
    assert status == 204 and response.getheader("Access-Control-Allow-Origin") is None
    # On the answer itself: the allowed origin named (and the ETag exposed), no header for another.
    status, response, _ = raw(exposed, "GET", "/feeds/x/events", {"Origin": "https://other.example"})
    assert status == 200 and response.getheader("Access-Control-Allow-Origin") == "https://other.example"
    assert response.getheader("Access-Control-Expose-Headers") == "etag"
    status, response, _ = raw(exposed, "GET", "/feeds/x/events", {"Origin": "https://evil.example"})
    assert status == 200 and response.getheader("Access-Control-Allow-Origin") is None
