"""Frames to API Gateway WebSocket connections, through the management API.

`POST {endpoint}/@connections/{id}` with the frame as the body, SigV4-signed for
`execute-api`. 2xx is delivered, 410 means the connection is gone, 429 / 5xx /
network errors are transient and retried with backoff and jitter (up to
`max_attempts`; a 429, the account's throttle, for as long as a `budget_s` lasts and
backing off at most `throttle_backoff_cap`),
any other 4xx (400, 403, 413) cannot succeed on a retry. `DELETE {endpoint}/@connections/{id}`
closes a connection ("Use @connections commands in your backend service": DELETE
disconnects the client; API Gateway then runs `$disconnect`), with the same answers
and retries (`disconnect_many`: a farewell frame first, then the close).

Why not boto3's `post_to_connection`: it spends about 0.8 ms of CPU per call
(signing alone 0.27 ms, re-deriving the signing key every time) and needs a
thread per request in flight, so a fan-out to thousands of connections is CPU-
and GIL-bound. Here the signing key is derived once a day, each request is a
few string operations, and the requests in flight are coroutines on one event
loop over pooled keep-alive connections (`realtime_transport.http1`, which beats
aiohttp and httpx in CPU per delivery: its docstring has the figures): about a
tenth of the CPU per delivery (see bench/fanout.py).
The loop runs in a daemon thread owned by the `Pusher`, so the keep-alive
connections survive between invocations of a warm Lambda; callers stay
synchronous.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import re
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar
from urllib.parse import quote, urlsplit

from .errors import ConfigurationError, RealtimeError

if TYPE_CHECKING:
    import asyncio

    from .settings import Settings

_T = TypeVar("_T")

SERVICE = "execute-api"
_EXECUTE_API_HOST = re.compile(r"^[a-z0-9]+\.execute-api\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")


class DeliveryFailed(RealtimeError):
    """A frame could not be delivered after the bounded retries (the connection is not known gone)."""

    code = "delivery_failed"

    def __init__(self, connection_id: str, reason: str) -> None:
        super().__init__(f"could not deliver to {connection_id}: {reason}")
        self.connection_id = connection_id
        self.reason = reason


class Credentials(NamedTuple):
    """What botocore's `get_frozen_credentials()` returns: one consistent snapshot."""

    access_key: str
    secret_key: str
    token: str | None = None


CredentialsProvider = Callable[[], Credentials]


def session_credentials() -> Credentials:
    """The boto3 session's credentials, refreshed by botocore when they are about to expire."""
    from .clients import session

    credentials = session().get_credentials()
    if credentials is None:
        raise ConfigurationError("no AWS credentials to sign management API requests with")
    frozen = credentials.get_frozen_credentials()
    return Credentials(frozen.access_key, frozen.secret_key, frozen.token)


def _default_region(host: str) -> str:
    # The API's own region is in its host name; boto3 would sign with the session's region
    # instead, which API Gateway refuses when the two differ.
    match = _EXECUTE_API_HOST.match(host)
    if match:
        return match.group(1)
    from .clients import session

    return str(session().region_name or "us-east-1")


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


class SigV4Signer:
    """AWS Signature Version 4 for one region and service: the headers botocore's `SigV4Auth` adds.

    The signing key depends only on the secret, the day, the region and the service,
    so it is derived once and kept (botocore derives it again on every request).
    Signed headers: host, x-amz-date and x-amz-security-token (as botocore signs them
    for execute-api); the canonical URI is the request path URI-encoded once more, as
    SigV4 requires for every service but S3.
    """

    def __init__(self, region: str, service: str = SERVICE) -> None:
        self.region = region
        self.service = service
        self._key: tuple[str, str, bytes] | None = None

    def _signing_key(self, secret_key: str, day: str) -> bytes:
        cached = self._key
        if cached is not None and cached[0] == secret_key and cached[1] == day:
            return cached[2]
        key = _hmac(f"AWS4{secret_key}".encode(), day)
        for part in (self.region, self.service, "aws4_request"):
            key = _hmac(key, part)
        self._key = (secret_key, day, key)  # one tuple: threads see the old or the new key, never a mix
        return key

    def headers(
        self,
        credentials: Credentials,
        method: str,
        host: str,
        path: str,
        body: bytes,
        amz_date: str | None = None,
    ) -> list[tuple[str, str]]:
        """The X-Amz-Date, X-Amz-Security-Token (with a session token) and Authorization headers."""
        amz_date = amz_date or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        day = amz_date[:8]
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        token = credentials.token
        if token:
            canonical_headers = f"host:{host}\nx-amz-date:{amz_date}\nx-amz-security-token:{token}\n"
            signed_headers = "host;x-amz-date;x-amz-security-token"
        else:
            canonical_headers = f"host:{host}\nx-amz-date:{amz_date}\n"
            signed_headers = "host;x-amz-date"
        canonical_request = "\n".join(
            (
                method,
                quote(path, safe="/~"),
                "",  # no query string
                canonical_headers,
                signed_headers,
                hashlib.sha256(body).hexdigest(),
            )
        )
        string_to_sign = (
            f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical_request.encode()).hexdigest()}"
        )
        signature = hmac.new(
            self._signing_key(credentials.secret_key, day), string_to_sign.encode(), hashlib.sha256
        ).hexdigest()
        headers = [("X-Amz-Date", amz_date)]
        if token:
            headers.append(("X-Amz-Security-Token", token))
        headers.append(
            (
                "Authorization",
                f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
                f"SignedHeaders={signed_headers}, Signature={signature}",
            )
        )
        return headers


@dataclass
class DeliveryReport:
    """What `send_many` did; per-connection failures are reported here, never raised."""

    delivered: int = 0  # frames API Gateway accepted
    gone: list[str] = field(default_factory=list)  # 410: the connection no longer exists
    failed: list[str] = field(default_factory=list)  # given up after retries (or a 4xx no retry can fix)
    skipped: int = 0  # frames never sent because their connection went or failed first
    requests: int = 0  # HTTP responses received (every attempt that reached the endpoint)
    retries: int = 0  # attempts after the first, whatever their cause
    throttled: int = 0  # answers 429 (API Gateway's account throttle)
    errors: dict[str, str] = field(default_factory=dict)  # failed connection -> its last error
    elapsed_ms: float = 0.0


@dataclass
class CloseReport:
    """What `disconnect_many` did; failures are reported here, never raised."""

    closed: list[str] = field(default_factory=list)  # DELETE answered 2xx: API Gateway closes it
    gone: list[str] = field(default_factory=list)  # 410: it was already gone
    failed: list[str] = field(default_factory=list)  # the DELETE gave up after retries (or out of time)
    farewells: int = 0  # farewell frames delivered before the close
    errors: dict[str, str] = field(default_factory=dict)  # failed connection -> its last error


class _Outcome(Enum):
    DELIVERED = "delivered"
    GONE = "gone"
    FAILED = "failed"


class Transport(Protocol):
    """What the Pusher sends its signed requests through (one per event loop)."""

    async def request(
        self, method: str, path: str, headers: Sequence[tuple[str, str]], body: bytes, timeout: float
    ) -> tuple[int, bytes]:
        """Status and body; `http1.TransportError` when no answer came (connect, reset, timeout)."""
        ...

    async def aclose(self) -> None: ...


class Pusher:
    """Pushes frames to WebSocket connections through one API Gateway management endpoint.

    `send` is for one frame (replies, catch-up); `send_many` fans frames out to many
    connections concurrently, in order per connection. Thread-safe: every request runs
    on the pusher's own event loop thread.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        region: str | None = None,
        credentials: CredentialsProvider | None = None,
        max_concurrency: int = 128,
        max_attempts: int = 4,
        backoff_base: float = 0.05,
        backoff_cap: float = 1.0,
        throttle_backoff_cap: float = 0.25,
        connect_timeout: float = 2.0,
        timeout: float = 5.0,
        idle_timeout: float = 20.0,
        transport: Callable[[], Transport] | None = None,
    ) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"management endpoint must be an http(s) URL, not {endpoint!r}")
        if max_concurrency < 1 or max_attempts < 1:
            raise ValueError("max_concurrency and max_attempts must be at least 1")
        self.endpoint = endpoint
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        name = f"[{self._host}]" if ":" in self._host else self._host  # an IPv6 literal
        # The Host header (and the signed host) carries the port only when it is not the default.
        self._host_header = name if parts.port in (None, 443 if self._tls else 80) else f"{name}:{parts.port}"
        self._base_path = parts.path.rstrip("/")
        self._signer = SigV4Signer(region or _default_region(self._host))
        self._credentials = credentials or session_credentials
        self._max_concurrency = max_concurrency
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        # The account's bucket refills continuously: a frame asleep longer after a 429 wastes quota
        # that another could use (bench/fanout_model.py: 100,000 frames at 10,000/s take 10.3 s with
        # the 1 s cap, 9.95 s with this, against a floor of 9.8 s).
        self._throttle_backoff_cap = min(throttle_backoff_cap, backoff_cap)
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._idle_timeout = idle_timeout
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        # Another HTTP client for the signed requests (bench/fanout.py measures aiohttp and httpx
        # this way); by default the pool of realtime_transport.http1.
        self._make_transport = transport
        self._transport: Transport | None = None  # made and used on the loop thread only

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> Pusher:
        if not settings.websocket_management_url:
            raise ConfigurationError("WEBSOCKET_MANAGEMENT_URL is not set: nowhere to deliver frames")
        return cls(settings.websocket_management_url, **options)

    @property
    def region(self) -> str:
        return self._signer.region

    # --- the synchronous API ----------------------------------------------------------

    def send(self, connection_id: str, data: bytes) -> bool:
        """Deliver one frame: True when delivered, False when the connection is gone (410).

        Raises `DeliveryFailed` when throttling, 5xx or network errors outlast the retries,
        or on a 4xx that no retry can fix.
        """
        report = DeliveryReport()
        outcome, reason = self._run(self._push(connection_id, data, self._credentials(), report, None))
        if outcome is _Outcome.FAILED:
            raise DeliveryFailed(connection_id, reason)
        return outcome is _Outcome.DELIVERED

    def send_many(self, plan: Mapping[str, Sequence[bytes]], *, budget_s: float | None = None) -> DeliveryReport:
        """Deliver each connection's frames in order, many connections at once.

        A connection's next frame goes only after its previous one was accepted. A gone
        connection (410) or one that keeps failing is given up alone, its remaining frames
        skipped; every other connection still gets everything. With `budget_s`, nothing is
        sent or retried after that many seconds: what is left is reported failed, so an
        unreachable endpoint cannot run the caller out of time.
        """
        if not plan:
            return DeliveryReport()
        return self._run(self._send_many(list(plan.items()), self._credentials(), budget_s))

    def disconnect_many(self, farewells: Mapping[str, bytes | None], *, budget_s: float | None = None) -> CloseReport:
        """Close these WebSocket connections, many at once: each gets its farewell frame (if not
        None) and then `DELETE @connections/{id}`, in that order, so the client reads why before
        the close. A farewell that fails does not keep the connection open; one answered 410
        means it is gone already (no DELETE). With `budget_s`, nothing starts after that long."""
        if not farewells:
            return CloseReport()
        return self._run(self._disconnect_many(list(farewells.items()), self._credentials(), budget_s))

    def close(self) -> None:
        """Close the pooled connections and stop the loop thread (a later call starts a new one)."""
        import asyncio

        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        if thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._close_transport(), loop).result(timeout=5)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
        loop.close()

    def _run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self._event_loop()).result()

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        # asyncio (and the HTTP/1.1 pool) load with the loop, at the first delivery: a handler
        # that sends nothing (the WebSocket $connect) never pays their ~25 ms of import.
        import asyncio

        with self._lock:
            if self._loop is None or self._thread is None or not self._thread.is_alive():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="realtime-delivery", daemon=True)
                thread.start()
                self._loop, self._thread, self._transport = loop, thread, None
            return self._loop

    # --- on the loop ------------------------------------------------------------------

    async def _send_many(
        self, plan: list[tuple[str, Sequence[bytes]]], credentials: Credentials, budget_s: float | None
    ) -> DeliveryReport:
        import asyncio

        report = DeliveryReport()
        started = time.perf_counter()
        deadline = None if budget_s is None else asyncio.get_running_loop().time() + budget_s
        pending = iter(plan)

        async def worker() -> None:
            # Workers share one iterator: each connection is taken by exactly one of them,
            # which keeps that connection's frames in order.
            for connection_id, frames in pending:
                await self._deliver(connection_id, frames, credentials, report, deadline)

        await asyncio.gather(*(worker() for _ in range(min(self._max_concurrency, len(plan)))))
        report.elapsed_ms = (time.perf_counter() - started) * 1000
        return report

    async def _disconnect_many(
        self, plan: list[tuple[str, bytes | None]], credentials: Credentials, budget_s: float | None
    ) -> CloseReport:
        import asyncio

        closing = CloseReport()
        scratch = DeliveryReport()  # request and retry counts, not reported
        deadline = None if budget_s is None else asyncio.get_running_loop().time() + budget_s
        pending = iter(plan)

        async def worker() -> None:
            for connection_id, farewell in pending:
                try:
                    await self._close_one(connection_id, farewell, credentials, scratch, deadline, closing)
                except Exception as exc:  # a bug must not leave the others open
                    closing.failed.append(connection_id)
                    closing.errors[connection_id] = f"unexpected {exc!r}"

        await asyncio.gather(*(worker() for _ in range(min(self._max_concurrency, len(plan)))))
        return closing

    async def _close_one(
        self,
        connection_id: str,
        farewell: bytes | None,
        credentials: Credentials,
        report: DeliveryReport,
        deadline: float | None,
        closing: CloseReport,
    ) -> None:
        if farewell is not None:
            outcome, _ = await self._push(connection_id, farewell, credentials, report, deadline)
            if outcome is _Outcome.GONE:
                closing.gone.append(connection_id)
                return
            if outcome is _Outcome.DELIVERED:
                closing.farewells += 1
        outcome, reason = await self._push(connection_id, b"", credentials, report, deadline, method="DELETE")
        if outcome is _Outcome.DELIVERED:
            closing.closed.append(connection_id)
        elif outcome is _Outcome.GONE:
            closing.gone.append(connection_id)
        else:
            closing.failed.append(connection_id)
            closing.errors[connection_id] = reason

    async def _deliver(
        self,
        connection_id: str,
        frames: Sequence[bytes],
        credentials: Credentials,
        report: DeliveryReport,
        deadline: float | None,
    ) -> None:
        for index, frame in enumerate(frames):
            try:
                outcome, reason = await self._push(connection_id, frame, credentials, report, deadline)
            except Exception as exc:  # a bug must not take every other connection down with it
                outcome, reason = _Outcome.FAILED, f"unexpected {exc!r}"
            if outcome is _Outcome.DELIVERED:
                report.delivered += 1
                continue
            report.skipped += len(frames) - index - 1
            if outcome is _Outcome.GONE:
                report.gone.append(connection_id)
            else:
                report.failed.append(connection_id)
                report.errors[connection_id] = reason
            return

    async def _push(
        self,
        connection_id: str,
        data: bytes,
        credentials: Credentials,
        report: DeliveryReport,
        deadline: float | None,
        method: str = "POST",
    ) -> tuple[_Outcome, str]:
        import asyncio

        from .http1 import TransportError

        path = f"{self._base_path}/@connections/{quote(connection_id, safe='-_.~')}"
        reason = ""
        loop = asyncio.get_running_loop()
        attempt = failures = 0  # failures: the attempts that count against max_attempts
        throttled = False  # the last answer was a 429
        while failures < self._max_attempts:
            pause = self._backoff(attempt, throttled) if attempt else 0.0
            timeout = self._timeout
            if deadline is not None:
                timeout = min(timeout, deadline - loop.time() - pause)
                if timeout <= 0:
                    return _Outcome.FAILED, reason or "out of time"
            if attempt:
                report.retries += 1
                await asyncio.sleep(pause)
            attempt += 1
            try:
                headers = self._signer.headers(credentials, method, self._host_header, path, data)
                status, body = await self._transport_on_loop().request(method, path, headers, data, timeout)
            except TransportError as exc:
                reason = str(exc)
                failures += 1
                throttled = False
                continue
            report.requests += 1
            if 200 <= status < 300:
                return _Outcome.DELIVERED, ""
            if status == 410:
                return _Outcome.GONE, "410 Gone"
            reason = f"HTTP {status} {body[:200].decode(errors='replace')}".rstrip()
            throttled = status == 429
            if throttled:
                report.throttled += 1
                if deadline is not None:
                    # The account's token bucket said "later", not "no": within a budget, a throttled
                    # frame is retried (backing off, capped) until the budget runs out, so a fan-out
                    # above the quota is slowed to it instead of losing frames after max_attempts.
                    continue
            elif status < 500:
                break  # 400 / 403 / 413: the same request will be refused again
            failures += 1
        return _Outcome.FAILED, reason

    def _backoff(self, attempt: int, throttled: bool = False) -> float:
        # Exponential, capped, with jitter so throttled connections do not retry in lockstep.
        cap = self._throttle_backoff_cap if throttled else self._backoff_cap
        ceiling = min(cap, self._backoff_base * 2 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not a secret

    def _transport_on_loop(self) -> Transport:
        if self._transport is None:
            self._transport = self._make_transport() if self._make_transport else self._http1()
        return self._transport

    def _http1(self) -> Transport:
        from .http1 import Http1Pool

        return Http1Pool(
            self._host,
            self._port,
            tls=self._tls,
            host_header=self._host_header,
            max_idle=self._max_concurrency,
            connect_timeout=self._connect_timeout,
            idle_timeout=self._idle_timeout,
        )

    async def _close_transport(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.aclose()
