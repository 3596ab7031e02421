"""The management API client (`realtime_transport.delivery`) against a real local HTTP server.

`FakeManagementApi` plays API Gateway's `POST /@connections/{id}` on 127.0.0.1: it records
every request (headers, body, which TCP connection it came on) and answers each connection
id from a script of statuses (200 by default), `"drop"` (close without an answer) or
`"hang"` (answer 200 after 3 s).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from unittest import mock
from urllib.parse import unquote

import pytest

from realtime_devstack.aws_env import LOCAL_AWS_ENV
from realtime_transport.delivery import Credentials, DeliveryFailed, Pusher, SigV4Signer


@dataclass
class Received:
    connection_id: str
    path: str
    body: bytes
    headers: dict[str, str]
    peer: tuple[str, int]
    answer: int | str


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # many concurrent connects; the default backlog of 5 stalls them
    api: FakeManagementApi

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and hung up is part of the tests, not an error


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as API Gateway
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.api.sockets.append(self.connection)

    def do_POST(self) -> None:
        api = self.server.api
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        _, marker, raw_id = self.path.partition("/@connections/")
        connection_id = unquote(raw_id)
        answer = api.next_answer(connection_id) if marker else 404
        with api.lock:
            api.received.append(
                Received(connection_id, self.path, body, dict(self.headers.items()), self.client_address, answer)
            )
        if api.delay:
            time.sleep(api.delay)
        if answer == "drop":
            self.close_connection = True  # no answer at all: the socket just closes
            return
        if answer == "hang":
            time.sleep(3.0)
            answer = 200
        status = int(answer)
        payload = b"" if status < 300 else json.dumps({"message": HTTPStatus(status).phrase}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class FakeManagementApi:
    def __init__(self, stage: str = "") -> None:
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.script: dict[str, list[int | str]] = {}
        self.delay = 0.0
        self.sockets: list[socket.socket] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.api = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}{stage}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def next_answer(self, connection_id: str) -> int | str:
        with self.lock:
            script = self.script.get(connection_id)
            return script.pop(0) if script else 200

    def requests_for(self, connection_id: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.connection_id == connection_id]

    def delivered(self, connection_id: str) -> list[bytes]:
        """The bodies answered 2xx, in the order they arrived."""
        return [r.body for r in self.requests_for(connection_id) if isinstance(r.answer, int) and r.answer < 300]

    def close_connections(self) -> None:
        """Close every open keep-alive connection from the server's side (as an idle timeout does)."""
        for sock in self.sockets:
            with contextlib.suppress(OSError):  # already closed by the client
                sock.shutdown(socket.SHUT_RDWR)
        self.sockets.clear()

    def stop(self) -> None:
        self._server.shutdown()
        self.close_connections()
        self._server.server_close()


@pytest.fixture
def api() -> Iterator[FakeManagementApi]:
    server = FakeManagementApi()
    yield server
    server.stop()


@pytest.fixture
def pushers() -> Iterator[list[Pusher]]:
    made: list[Pusher] = []
    yield made
    for pusher in made:
        pusher.close()


@pytest.fixture
def make_pusher(pushers: list[Pusher]) -> Any:
    def make(url: str, **options: Any) -> Pusher:
        settings: dict[str, Any] = {"backoff_base": 0.002, "backoff_cap": 0.01, "max_concurrency": 8, **options}
        pusher = Pusher(url, **settings)
        pushers.append(pusher)
        return pusher

    return make


def botocore_signature(received: Received, region: str = "us-east-1") -> str:
    """What botocore's SigV4Auth computes for the request as it arrived."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials as BotocoreCredentials

    headers = {name: received.headers[name] for name in ("Host", "X-Amz-Date", "X-Amz-Security-Token")}
    request = AWSRequest(
        method="POST", url=f"http://{headers['Host']}{received.path}", data=received.body, headers=headers
    )
    request.context["timestamp"] = headers["X-Amz-Date"]
    key, secret, token = (
        LOCAL_AWS_ENV[name] for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
    )
    auth = SigV4Auth(BotocoreCredentials(key, secret, token), "execute-api", region)
    return str(auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request))


# --- signing ------------------------------------------------------------------------------------


def test_requests_are_sigv4_signed_for_execute_api(api: FakeManagementApi, make_pusher: Any) -> None:
    pusher = make_pusher(api.url)  # credentials from the boto3 session (conftest's fake ones)
    assert pusher.send("L0SM9cOFvHcCIhw=", b'{"type":"pong"}') is True

    [received] = api.received
    assert received.path == "/@connections/L0SM9cOFvHcCIhw%3D"
    assert received.connection_id == "L0SM9cOFvHcCIhw="
    assert received.body == b'{"type":"pong"}'
    authorization = received.headers["Authorization"]
    day = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d")
    key_id = LOCAL_AWS_ENV["AWS_ACCESS_KEY_ID"]
    assert authorization.startswith(f"AWS4-HMAC-SHA256 Credential={key_id}/{day}/us-east-1/execute-api/aws4_request, ")
    assert "SignedHeaders=host;x-amz-date;x-amz-security-token, " in authorization
    assert received.headers["X-Amz-Security-Token"] == LOCAL_AWS_ENV["AWS_SESSION_TOKEN"]
    # The signature is the one AWS would compute for this exact request.
    assert authorization.endswith(f"Signature={botocore_signature(received)}")


@pytest.mark.parametrize("token", ["session-token", None])
@pytest.mark.parametrize("connection_id", ["L0SM9cOFvHcCIhw=", "a/b+c=="])
def test_signer_matches_botocore(token: str | None, connection_id: str) -> None:
    from urllib.parse import quote

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials as BotocoreCredentials

    host = "abc123.execute-api.eu-west-1.amazonaws.com"
    path = f"/live/@connections/{quote(connection_id, safe='-_.~')}"
    request = AWSRequest(method="POST", url=f"https://{host}{path}", data=b"frame")
    fixed = datetime.datetime(2026, 11, 28, 4, 5, 6)
    with mock.patch("botocore.auth.get_current_datetime", return_value=fixed):
        SigV4Auth(BotocoreCredentials("AKID", "SECRET", token), "execute-api", "eu-west-1").add_auth(request)

    signer = SigV4Signer("eu-west-1")
    for _ in range(2):  # the second time from the cached signing key
        ours = dict(
            signer.headers(Credentials("AKID", "SECRET", token), "POST", host, path, b"frame", "20261128T040506Z")
        )
        assert ours["Authorization"] == request.headers["Authorization"]
        assert ours["X-Amz-Date"] == request.headers["X-Amz-Date"]
        assert ours.get("X-Amz-Security-Token") == request.headers.get("X-Amz-Security-Token")


def test_new_credentials_are_picked_up(api: FakeManagementApi, make_pusher: Any) -> None:
    keys = iter([Credentials("AKID1", "secret-1", None), Credentials("AKID2", "secret-2", "tok")])
    pusher = make_pusher(api.url, credentials=lambda: next(keys))
    assert pusher.send("c", b"1") and pusher.send("c", b"2")
    first, second = api.requests_for("c")
    assert "Credential=AKID1/" in first.headers["Authorization"] and "X-Amz-Security-Token" not in first.headers
    assert "Credential=AKID2/" in second.headers["Authorization"] and second.headers["X-Amz-Security-Token"] == "tok"


def test_region_comes_from_the_execute_api_host(make_pusher: Any) -> None:
    assert make_pusher("https://abc123.execute-api.eu-west-1.amazonaws.com/live").region == "eu-west-1"
    assert make_pusher("http://127.0.0.1:9").region == "us-east-1"  # the session's
    assert make_pusher("http://127.0.0.1:9", region="ap-south-2").region == "ap-south-2"


def test_stage_path_is_kept(make_pusher: Any) -> None:
    staged = FakeManagementApi(stage="/live")
    try:
        assert make_pusher(staged.url).send("abc", b"x") is True
        assert [r.path for r in staged.received] == ["/live/@connections/abc"]
    finally:
        staged.stop()


# --- send -----------------------------------------------------------------------------------------


def test_send_reports_gone_and_raises_after_retries(api: FakeManagementApi, make_pusher: Any) -> None:
    pusher = make_pusher(api.url, max_attempts=3)
    api.script = {"gone": [410], "down": [500, 502, 503, 200], "refused": [403]}
    assert pusher.send("gone", b"x") is False
    with pytest.raises(DeliveryFailed) as failed:
        pusher.send("down", b"x")
    assert failed.value.connection_id == "down" and "503" in failed.value.reason
    assert len(api.requests_for("down")) == 3  # bounded
    with pytest.raises(DeliveryFailed):
        pusher.send("refused", b"x")
    assert len(api.requests_for("refused")) == 1  # a 403 is not retried


# --- send_many ----------------------------------------------------------------------------------


def test_frames_arrive_in_order_per_connection(api: FakeManagementApi, make_pusher: Any) -> None:
    api.delay = 0.002  # keep several connections in flight at once
    pusher = make_pusher(api.url, max_concurrency=8)
    plan = {f"conn-{c}": [f"{c}:{n}".encode() for n in range(6)] for c in range(20)}

    report = pusher.send_many(plan)

    assert report.delivered == 120 and report.gone == [] and report.failed == [] and report.retries == 0
    for connection_id, frames in plan.items():
        assert api.delivered(connection_id) == frames
    # Concurrent, and over keep-alive connections: at most one TCP connection per worker.
    assert 1 < len({r.peer for r in api.received}) <= 8


def test_gone_connection_is_reported_and_its_remaining_frames_skipped(api: FakeManagementApi, make_pusher: Any) -> None:
    api.script = {"gone": [200, 410]}
    report = make_pusher(api.url).send_many({"gone": [b"1", b"2", b"3"], "ok": [b"1", b"2", b"3"]})

    assert report.gone == ["gone"] and report.failed == []
    assert [r.body for r in api.requests_for("gone")] == [b"1", b"2"]  # the 3rd was never sent
    assert report.skipped == 1 and report.delivered == 4
    assert api.delivered("ok") == [b"1", b"2", b"3"]


def test_throttling_and_server_errors_are_retried_until_delivered(api: FakeManagementApi, make_pusher: Any) -> None:
    api.script = {"throttled": [429, 429, 200], "flaky": [200, 500, 503, 200]}
    report = make_pusher(api.url, max_attempts=4).send_many({"throttled": [b"a", b"b"], "flaky": [b"a", b"b", b"c"]})

    assert report.failed == [] and report.gone == []
    assert report.delivered == 5 and report.retries == 4
    assert api.delivered("throttled") == [b"a", b"b"]
    assert api.delivered("flaky") == [b"a", b"b", b"c"]
    assert [r.body for r in api.requests_for("flaky")] == [b"a", b"b", b"b", b"b", b"c"]  # in order, b retried


def test_persistent_failure_fails_only_that_connection(api: FakeManagementApi, make_pusher: Any) -> None:
    api.script = {"broken": [500] * 10}
    plan = {"broken": [b"1", b"2"], **{f"ok-{n}": [b"1", b"2"] for n in range(5)}}
    report = make_pusher(api.url, max_attempts=3).send_many(plan)

    assert report.failed == ["broken"] and report.gone == []
    assert "500" in report.errors["broken"]
    assert len(api.requests_for("broken")) == 3 and report.skipped == 1
    assert report.delivered == 10
    for n in range(5):
        assert api.delivered(f"ok-{n}") == [b"1", b"2"]


def test_unreachable_endpoint_fails_every_connection_without_raising(make_pusher: Any) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    report = make_pusher(f"http://127.0.0.1:{port}", max_attempts=2).send_many({"a": [b"1"], "b": [b"1", b"2"]})
    assert sorted(report.failed) == ["a", "b"] and report.delivered == 0 and report.requests == 0
    assert "connect" in report.errors["a"] and report.skipped == 1


def test_dropped_and_timed_out_requests_are_retried(api: FakeManagementApi, make_pusher: Any) -> None:
    api.script = {"dropped": ["drop", "drop", 200], "slow": ["hang", 200]}
    pusher = make_pusher(api.url, max_attempts=4, timeout=0.3)
    report = pusher.send_many({"dropped": [b"x"], "slow": [b"y"]})
    assert report.failed == [] and report.delivered == 2
    assert api.delivered("dropped") == [b"x"]
    assert [r.answer for r in api.requests_for("slow")] == ["hang", 200]


def test_connections_closed_while_idle_are_replaced_without_losing_an_attempt(
    api: FakeManagementApi, make_pusher: Any
) -> None:
    pusher = make_pusher(api.url, max_attempts=1)  # no retries: a stale connection must not cost one
    assert pusher.send_many({f"c{n}": [b"1"] for n in range(8)}).delivered == 8
    api.close_connections()  # the server times the idle keep-alive connections out

    report = pusher.send_many({f"c{n}": [b"2"] for n in range(8)})

    assert report.delivered == 8 and report.failed == [] and report.retries == 0
    for n in range(8):
        assert api.delivered(f"c{n}") == [b"1", b"2"]


def test_a_pooled_connection_closed_under_our_request_is_retried_on_a_new_one(
    api: FakeManagementApi, make_pusher: Any
) -> None:
    # The race the idle check cannot see: the peer closes a kept-alive connection just as we
    # write to it. Nothing reached the API, so it costs no attempt; on a new connection it does.
    api.script = {"c": [200, "drop"], "fresh": ["drop"]}
    pusher = make_pusher(api.url, max_attempts=1, max_concurrency=1)

    report = pusher.send_many({"c": [b"1", b"2"]})
    assert report.delivered == 2 and report.failed == [] and report.retries == 0
    assert [r.answer for r in api.requests_for("c")] == [200, "drop", 200]
    assert len({r.peer for r in api.requests_for("c")}) == 2

    pusher.close()  # no pooled connection left: the next drop is on a brand-new one
    report = pusher.send_many({"fresh": [b"1"]})
    assert report.failed == ["fresh"] and len(api.requests_for("fresh")) == 1


def test_a_time_budget_bounds_send_many(api: FakeManagementApi, make_pusher: Any) -> None:
    plan = {f"c{n}": [b"1", b"2"] for n in range(3)}
    api.script = {connection_id: ["hang"] for connection_id in plan}  # answers after 3 s
    pusher = make_pusher(api.url, max_concurrency=1, max_attempts=4, timeout=5.0)

    started = time.monotonic()
    report = pusher.send_many(plan, budget_s=0.3)

    assert time.monotonic() - started < 2.0  # neither the 5 s timeout nor the retries were waited out
    assert sorted(report.failed) == ["c0", "c1", "c2"] and report.delivered == 0
    assert len(api.received) == 1 and report.skipped == 3


def test_empty_plan_sends_nothing(api: FakeManagementApi, make_pusher: Any) -> None:
    report = make_pusher(api.url).send_many({})
    assert report.delivered == 0 and api.received == []


def test_from_settings_needs_the_management_url(settings_factory: Any) -> None:
    from realtime_transport.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        Pusher.from_settings(settings_factory())
    pusher = Pusher.from_settings(
        settings_factory(WEBSOCKET_MANAGEMENT_URL="https://x.execute-api.sa-east-1.amazonaws.com/p")
    )
    assert pusher.region == "sa-east-1" and pusher.endpoint.endswith("/p")


def test_within_a_budget_throttling_is_retried_past_max_attempts(api: FakeManagementApi, make_pusher: Any) -> None:
    # 429 is the account's token bucket saying "later": with a budget the frame waits for it.
    api.script = {"throttled": [429] * 6 + [200], "broken": [500] * 6 + [200]}
    pusher = make_pusher(api.url, max_attempts=3)

    report = pusher.send_many({"throttled": [b"a"], "broken": [b"a"]}, budget_s=5.0)

    assert report.delivered == 1 and report.failed == ["broken"] and report.throttled == 6
    assert api.delivered("throttled") == [b"a"]
    assert len(api.requests_for("broken")) == 3  # a 5xx is still bounded by max_attempts


def test_without_a_budget_throttling_is_bounded_by_max_attempts(api: FakeManagementApi, make_pusher: Any) -> None:
    api.script = {"throttled": [429] * 6 + [200]}
    report = make_pusher(api.url, max_attempts=3).send_many({"throttled": [b"a"]})
    assert report.failed == ["throttled"] and len(api.requests_for("throttled")) == 3
    assert "429" in report.errors["throttled"]


def test_another_http_client_can_carry_the_signed_requests(api: FakeManagementApi, make_pusher: Any) -> None:
    # The Pusher's transport option (bench/fanout.py measures aiohttp and httpx through it).
    from realtime_transport.http1 import TransportError

    seen: list[tuple[str, str, dict[str, str]]] = []

    class Recording:
        async def request(self, method: str, path: str, headers: Any, body: bytes, timeout: float) -> tuple[int, bytes]:
            seen.append((method, path, dict(headers)))
            if len(seen) == 1:
                raise TransportError("reset")  # retried like any network error
            return 200, b""

        async def aclose(self) -> None:
            pass

    pusher = make_pusher(api.url, transport=Recording, max_attempts=2)
    report = pusher.send_many({"c/1": [b"x"]})
    assert report.delivered == 1 and report.retries == 1 and api.received == []
    assert [(m, p) for m, p, _ in seen] == [("POST", "/@connections/c%2F1")] * 2
    assert seen[0][2]["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=")


def test_a_throttled_frame_backs_off_less_than_a_failing_one(make_pusher: Any) -> None:
    # The account's bucket refills continuously: long sleeps after a 429 would waste quota.
    pusher = make_pusher("http://127.0.0.1:9", backoff_base=0.05, backoff_cap=1.0, throttle_backoff_cap=0.25)
    for _ in range(50):
        assert 0.125 <= pusher._backoff(10, throttled=True) <= 0.25
        assert 0.5 <= pusher._backoff(10) <= 1.0
        assert 0.025 <= pusher._backoff(1, throttled=True) <= 0.05  # the same schedule until the cap
