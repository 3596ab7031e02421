"""aiohttp and httpx as `delivery.Transport`s, so bench/fanout.py measures them under the same Pusher:
the same SigV4 signer, retries, backoff, budgets and concurrency; only the HTTP/1.1 client differs.

Both keep a pool of at most `max_connections` keep-alive connections, as the Pusher's own does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from realtime_transport.delivery import Transport
from realtime_transport.http1 import TransportError


def _origin(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc}"


class AiohttpTransport:
    def __init__(self, endpoint: str, max_connections: int, idle_timeout: float) -> None:
        self._origin = _origin(endpoint)
        self._max_connections = max_connections
        self._idle_timeout = idle_timeout
        self._session: Any = None

    async def request(
        self, method: str, path: str, headers: Sequence[tuple[str, str]], body: bytes, timeout: float
    ) -> tuple[int, bytes]:
        import aiohttp
        from yarl import URL

        if self._session is None:  # made on the Pusher's loop, where it is used
            connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=self._idle_timeout)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        try:
            async with self._session.request(
                method,
                URL(self._origin + path, encoded=True),  # the path is quoted already, as it was signed
                data=body,
                headers=list(headers),
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                return response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransportError(repr(exc)) from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class HttpxTransport:
    def __init__(self, endpoint: str, max_connections: int, idle_timeout: float) -> None:
        self._origin = _origin(endpoint)
        self._max_connections = max_connections
        self._idle_timeout = idle_timeout
        self._client: Any = None

    async def request(
        self, method: str, path: str, headers: Sequence[tuple[str, str]], body: bytes, timeout: float
    ) -> tuple[int, bytes]:
        import httpx

        if self._client is None:
            limits = httpx.Limits(
                max_connections=self._max_connections,
                max_keepalive_connections=self._max_connections,
                keepalive_expiry=self._idle_timeout,
            )
            self._client = httpx.AsyncClient(base_url=self._origin, limits=limits, http1=True, http2=False)
        try:
            response = await self._client.request(method, path, content=body, headers=list(headers), timeout=timeout)
        except httpx.TransportError as exc:  # connect, read, write, pool timeouts and protocol errors
            raise TransportError(repr(exc)) from exc
        return response.status_code, response.content

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


CLIENTS: dict[str, type[AiohttpTransport] | type[HttpxTransport] | None] = {
    "http1": None,  # the Pusher's default: realtime_transport.http1
    "aiohttp": AiohttpTransport,
    "httpx": HttpxTransport,
}


def transport_factory(name: str, endpoint: str, max_connections: int = 128) -> Callable[[], Transport] | None:
    """The Pusher's `transport=` option for the named client (None: its own http1 pool)."""
    cls = CLIENTS[name]
    if cls is None:
        return None
    return lambda: cls(endpoint, max_connections, 20.0)


if __name__ == "__main__":
    print("the HTTP clients bench/fanout.py measures the Pusher over; nothing to measure here")
