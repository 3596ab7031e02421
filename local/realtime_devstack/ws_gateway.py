"""API Gateway WebSocket API in front of FunctionHosts, on aiohttp (the same port as the HTTP API).

What a deployed WebSocket API does, and so what this does:

* ``$connect`` runs *before* the upgrade completes: the handshake request (headers, query
  string) becomes a CONNECT event, and a non-2xx ``statusCode`` from the handler refuses the
  handshake with that HTTP status (a client sees its 401 or 403). A ``Sec-WebSocket-Protocol``
  header in the handler's response picks the subprotocol, as on AWS.
* Every data frame is routed by the API's route selection expression (``$request.body.action``:
  the JSON body's ``action`` if it names a route, else ``$default``; a body that is not JSON goes
  to ``$default`` too) and becomes a MESSAGE event whose ``body`` is the frame. When the route is
  two-way (it has a RouteResponse in the template), the ``body`` the handler returns is sent back
  as a frame; a one-way route's is dropped, as API Gateway drops it. A handler that raises gets
  the client API Gateway's ``{"message": "Internal server error", ...}`` frame; a frame with no
  route (and no ``$default``) gets ``{"message": "Forbidden", ...}``.
* ``$disconnect`` runs once the socket is gone, whatever closed it: the client, a dropped TCP
  connection, the management API's DELETE, the idle timeout (10 minutes), the two-hour
  connection limit, or the stack shutting down (close code 1001). It is best effort, as on AWS:
  the ``disconnect:lost:RATE`` fault (``faithful.Faults.disconnect_lost_rate``) loses it.
* A socket that is gone, closed or cut without a close frame, is gone for the management API
  at once: ``GET``/``POST @connections/{id}`` answer 410.
* A message larger than 128 KiB closes the connection with 1009 (API Gateway's limit).

Frames of one connection are handled one at a time, in order. API Gateway makes no ordering
promise between the invocations of one connection; clients must not rely on this one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from . import faithful
from .lambda_host import FunctionHost

log = logging.getLogger("realtime_devstack.websocket")

MAX_MESSAGE_BYTES = 128 * 1024  # API Gateway: WebSocket message payload size
IDLE_TIMEOUT_SECONDS = 10 * 60.0  # API Gateway: idle connection timeout
MAX_CONNECTION_SECONDS = 2 * 3600.0  # API Gateway: connection duration
DEFAULT_ROUTE_SELECTION = "$request.body.action"
CONNECT, DISCONNECT, DEFAULT = "$connect", "$disconnect", "$default"

# The $disconnect reasons API Gateway reports, by who closed the socket.
CLIENT_NO_STATUS = (1005, "Client-side close frame status not set")
ABNORMAL = (1006, "Connection closed abnormally")
GOING_AWAY = (int(WSCloseCode.GOING_AWAY), "Going away")
MESSAGE_TOO_BIG = (int(WSCloseCode.MESSAGE_TOO_BIG), "Message too big")
DELETED = (int(WSCloseCode.OK), "Connection deleted by the management API")


def new_id() -> str:
    """An API Gateway style id (connection, request, message): 16 base64 characters ending in '='."""
    return base64.urlsafe_b64encode(os.urandom(11)).decode()


def request_time(epoch_seconds: float) -> str:
    return time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(epoch_seconds))


def iso_time(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- route selection ----------------------------------------------------------------------


def selection_path(expression: str) -> tuple[str, ...]:
    """``$request.body.action`` -> ("action",); nested keys allowed (``$request.body.a.b``)."""
    prefix = "$request.body."
    if not expression.startswith(prefix) or not expression[len(prefix) :]:
        raise ValueError(f"unsupported route selection expression {expression!r} (only $request.body.<key>)")
    return tuple(expression[len(prefix) :].split("."))


def select_route(body: str | bytes, route_keys: frozenset[str] | set[str], expression: str) -> str | None:
    """The route key a frame goes to, as API Gateway chooses it (None: no route, not even $default)."""
    value: Any = None
    if isinstance(body, str):
        try:
            value = json.loads(body)
        except ValueError:
            value = None
        for key in selection_path(expression):
            value = value.get(key) if isinstance(value, dict) else None
    if isinstance(value, str) and value in route_keys and value not in (CONNECT, DISCONNECT):
        return value
    return DEFAULT if DEFAULT in route_keys else None


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebSocketApi:
    """One WebSocket API: its routes and the details that appear in every event."""

    routes: Mapping[str, FunctionHost]
    route_selection_expression: str = DEFAULT_ROUTE_SELECTION
    api_id: str = "local"
    stage: str = "local"
    # Routes with a route response (AWS::ApiGatewayV2::RouteResponse): only their handler's `body`
    # goes back to the client. On the others (one-way) API Gateway drops what the handler returns.
    two_way_routes: frozenset[str] = frozenset()
    max_message_bytes: int = MAX_MESSAGE_BYTES
    idle_timeout: float = IDLE_TIMEOUT_SECONDS  # 0 disables it
    max_connection_seconds: float = MAX_CONNECTION_SECONDS  # 0 disables it

    def __post_init__(self) -> None:
        selection_path(self.route_selection_expression)  # fail at start-up, not on the first frame


@dataclass
class WebSocketConnection:
    """One open socket, as the gateway and the management API see it."""

    connection_id: str
    ws: web.WebSocketResponse
    connected_at: float
    domain_name: str
    source_ip: str
    user_agent: str | None
    last_active_at: float = 0.0
    closed_by_server: tuple[int, str] | None = None
    # Cut without a close frame (a lost network): gone for the management API at once, as for
    # API Gateway, even before the receive loop sees the end of the stream.
    dropped: bool = False
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.last_active_at = self.last_active_at or self.connected_at

    @property
    def open(self) -> bool:
        return not self.ws.closed and not self.dropped

    async def send(self, data: bytes | str) -> None:
        """One frame: text when it is UTF-8 (as API Gateway delivers postToConnection data), else binary."""
        async with self.send_lock:
            if isinstance(data, str):
                await self.ws.send_str(data)
            else:
                try:
                    await self.ws.send_str(data.decode("utf-8"))
                except UnicodeDecodeError:
                    await self.ws.send_bytes(data)
        self.last_active_at = time.time()

    async def close(self, code: int, reason: str) -> None:
        if self.closed_by_server is None:
            self.closed_by_server = (code, reason)
        await self.ws.close(code=code, message=reason.encode())


class ConnectionRegistry:
    """The open connections by id: what the management API looks up."""

    def __init__(self) -> None:
        self._connections: dict[str, WebSocketConnection] = {}

    def add(self, connection: WebSocketConnection) -> None:
        self._connections[connection.connection_id] = connection

    def remove(self, connection_id: str) -> None:
        self._connections.pop(connection_id, None)

    def get(self, connection_id: str) -> WebSocketConnection | None:
        connection = self._connections.get(connection_id)
        return connection if connection is not None and connection.open else None

    def all(self) -> list[WebSocketConnection]:
        return list(self._connections.values())

    def __len__(self) -> int:
        return len(self._connections)


def _request_context(
    api: WebSocketApi,
    route_key: str,
    event_type: str,
    connection_id: str,
    connected_at: float,
    domain_name: str,
    source_ip: str,
    user_agent: str | None,
) -> dict[str, Any]:
    now = time.time()
    request_id = new_id()
    identity: dict[str, str] = {"sourceIp": source_ip}
    if user_agent:
        identity["userAgent"] = user_agent
    return {
        "routeKey": route_key,
        "eventType": event_type,
        "extendedRequestId": request_id,
        "requestTime": request_time(now),
        "messageDirection": "IN",
        "stage": api.stage,
        "connectedAt": int(connected_at * 1000),
        "requestTimeEpoch": int(now * 1000),
        "identity": identity,
        "requestId": request_id,
        "domainName": domain_name,
        "connectionId": connection_id,
        "apiId": api.api_id,
    }


def connect_event(api: WebSocketApi, request: web.Request, connection_id: str, connected_at: float) -> dict[str, Any]:
    """The CONNECT event of a handshake request, headers and query string as API Gateway passes them."""
    source_ip = request.remote or "127.0.0.1"
    port = request.url.port or (443 if request.secure else 80)
    multi_headers: dict[str, list[str]] = {}
    for name, value in request.headers.items():
        multi_headers.setdefault(name, []).append(value)
    # API Gateway adds these, as any load balancer would.
    multi_headers.setdefault("X-Forwarded-For", [source_ip])
    multi_headers.setdefault("X-Forwarded-Port", [str(port)])
    multi_headers.setdefault("X-Forwarded-Proto", [request.scheme])
    multi_query: dict[str, list[str]] = {}
    for name, value in request.query.items():
        multi_query.setdefault(name, []).append(value)
    event: dict[str, Any] = {
        "headers": {name: values[-1] for name, values in multi_headers.items()},
        "multiValueHeaders": multi_headers,
    }
    if multi_query:
        event["queryStringParameters"] = {name: values[-1] for name, values in multi_query.items()}
        event["multiValueQueryStringParameters"] = multi_query
    event["requestContext"] = _request_context(
        api,
        CONNECT,
        "CONNECT",
        connection_id,
        connected_at,
        request.host,
        source_ip,
        request.headers.get("User-Agent"),
    )
    event["isBase64Encoded"] = False
    return event


def message_event(
    api: WebSocketApi, connection: WebSocketConnection, route_key: str, data: str | bytes
) -> dict[str, Any]:
    context = _request_context(
        api,
        route_key,
        "MESSAGE",
        connection.connection_id,
        connection.connected_at,
        connection.domain_name,
        connection.source_ip,
        connection.user_agent,
    )
    context["messageId"] = new_id()
    binary = isinstance(data, bytes)
    body = base64.b64encode(data).decode() if isinstance(data, bytes) else data
    return {"requestContext": context, "body": body, "isBase64Encoded": binary}


def disconnect_event(api: WebSocketApi, connection: WebSocketConnection, code: int, reason: str) -> dict[str, Any]:
    headers = {"Host": connection.domain_name, "x-api-key": "", "X-Forwarded-For": "", "x-restapi": ""}
    context = _request_context(
        api,
        DISCONNECT,
        "DISCONNECT",
        connection.connection_id,
        connection.connected_at,
        connection.domain_name,
        connection.source_ip,
        connection.user_agent,
    )
    context["disconnectStatusCode"] = code
    context["disconnectReason"] = reason
    return {
        "headers": headers,
        "multiValueHeaders": {name: [value] for name, value in headers.items()},
        "requestContext": context,
        "isBase64Encoded": False,
    }


def _proxy_result(result: Any) -> tuple[int, dict[str, str], bytes | str | None]:
    """(statusCode, headers, body) of a Lambda proxy response; a result without statusCode is a 200."""
    if not isinstance(result, dict):
        return 200, {}, None
    status = int(result.get("statusCode", 200))
    headers = {str(k): str(v) for k, v in (result.get("headers") or {}).items()}
    body = result.get("body")
    if body is None or body == "":
        return status, headers, None
    if result.get("isBase64Encoded"):
        return status, headers, base64.b64decode(str(body))
    return status, headers, body if isinstance(body, str) else json.dumps(body)


# --- the gateway ----------------------------------------------------------------------------


class WebSocketGateway:
    """Serves one WebSocket API on an aiohttp route (``GET /ws``)."""

    def __init__(self, api: WebSocketApi, registry: ConnectionRegistry | None = None) -> None:
        self.api = api
        self.registry = registry if registry is not None else ConnectionRegistry()
        self._route_keys = frozenset(api.routes)
        self._handlers: set[asyncio.Future[None]] = set()
        self._closing = False
        self._one_way_noted: set[str] = set()
        self.disconnects = 0  # $disconnect invocations made (for tests and the shutdown line)
        self.lost_disconnects = 0  # $disconnect invocations skipped by the injected fault

    # -- handshake -----------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        probe = web.WebSocketResponse()
        if not probe.can_prepare(request).ok:
            return web.json_response({"message": "Upgrade Required"}, status=426, headers={"Upgrade": "websocket"})
        if self._closing:
            return web.json_response({"message": "Service Unavailable"}, status=503)
        connection_id, connected_at = new_id(), time.time()
        protocol: str | None = None
        route = self.api.routes.get(CONNECT)
        if route is not None:
            try:
                result = await route.invoke(connect_event(self.api, request, connection_id, connected_at))
            except Exception:
                log.exception("$connect handler %s raised", route.name)
                return web.json_response({"message": "Internal server error"}, status=500)
            status, headers, body = _proxy_result(result)
            if not 200 <= status < 300:
                # The handshake is refused with the handler's own status (and body, for debugging).
                refused = web.Response(status=status, body=body.encode() if isinstance(body, str) else body)
                if "content-type" not in {name.lower() for name in headers}:
                    refused.content_type = "application/json"
                for name, value in headers.items():
                    refused.headers[name] = value
                return refused
            protocol = next((v for k, v in headers.items() if k.lower() == "sec-websocket-protocol"), None)
        ws = web.WebSocketResponse(
            protocols=(protocol,) if protocol else (),
            max_msg_size=self.api.max_message_bytes,
            autoping=True,
        )
        await ws.prepare(request)
        connection = WebSocketConnection(
            connection_id=connection_id,
            ws=ws,
            connected_at=connected_at,
            domain_name=request.host,
            source_ip=request.remote or "127.0.0.1",
            user_agent=request.headers.get("User-Agent"),
        )
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._handlers.add(done)
        try:
            await self._serve(connection)
        finally:
            self._handlers.discard(done)
            if not done.done():
                done.set_result(None)
        return ws

    # -- one connection ----------------------------------------------------------------------

    async def _serve(self, connection: WebSocketConnection) -> None:
        ws = connection.ws
        self.registry.add(connection)
        frames: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        worker = asyncio.create_task(self._work(connection, frames), name=f"ws-{connection.connection_id}")
        watchdog = asyncio.create_task(self._watch(connection), name=f"ws-idle-{connection.connection_id}")
        client_close: tuple[int, str] | None = None
        try:
            while True:
                msg = await ws.receive()
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    connection.last_active_at = time.time()
                    frames.put_nowait(msg.data)
                elif msg.type == WSMsgType.CLOSE:
                    code = int(msg.data or 0)
                    client_close = (code, str(msg.extra or "")) if code and code != 1005 else CLIENT_NO_STATUS
                elif msg.type == WSMsgType.ERROR:
                    # A protocol error aiohttp closed the socket for: 1009 for an oversized message.
                    if getattr(msg.data, "code", None) == WSCloseCode.MESSAGE_TOO_BIG:
                        connection.closed_by_server = connection.closed_by_server or MESSAGE_TOO_BIG
                    break
                elif msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED):
                    break
        finally:
            self.registry.remove(connection.connection_id)
            watchdog.cancel()
            frames.put_nowait(None)  # frames not yet handled are dropped; the one in flight finishes
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close()
            code, reason = self._disconnect_reason(connection, client_close)
            await self._disconnect(connection, code, reason)

    def _disconnect_reason(
        self, connection: WebSocketConnection, client_close: tuple[int, str] | None
    ) -> tuple[int, str]:
        if connection.closed_by_server is not None:
            return connection.closed_by_server
        if client_close is not None:
            code, reason = client_close
            return code, reason or ("Client-side close frame status not set" if code == 1005 else "")
        return ABNORMAL

    async def _disconnect(self, connection: WebSocketConnection, code: int, reason: str) -> None:
        route = self.api.routes.get(DISCONNECT)
        if route is None:
            return
        if faithful.disconnect_lost():
            # "Manage connected users and client apps: $connect and $disconnect routes":
            # $disconnect is best effort, API Gateway cannot guarantee to deliver it. The socket
            # is gone all the same (410 from the management API); its clean-up never runs.
            log.info("$disconnect of %s lost (injected fault)", connection.connection_id)
            self.lost_disconnects += 1
            return
        self.disconnects += 1
        try:
            await route.invoke(disconnect_event(self.api, connection, code, reason))
        except Exception:
            log.exception("$disconnect handler %s raised", route.name)

    async def _work(self, connection: WebSocketConnection, frames: asyncio.Queue[str | bytes | None]) -> None:
        while (data := await frames.get()) is not None:
            if connection.open:
                await self._message(connection, data)

    async def _message(self, connection: WebSocketConnection, data: str | bytes) -> None:
        route_key = select_route(data, self._route_keys, self.api.route_selection_expression)
        if route_key is None:
            await self._reply_error(connection, "Forbidden", new_id())
            return
        route = self.api.routes[route_key]
        event = message_event(self.api, connection, route_key, data)
        try:
            result = await route.invoke(event)
        except Exception:
            log.exception("%s handler %s raised", route_key, route.name)
            await self._reply_error(connection, "Internal server error", event["requestContext"]["requestId"])
            return
        _, _, body = _proxy_result(result)
        if body is None:
            return
        if route_key not in self.api.two_way_routes:
            # A one-way route: API Gateway drops the integration's response. Said once per route,
            # for whoever wonders where their reply went.
            if route_key not in self._one_way_noted:
                self._one_way_noted.add(route_key)
                log.info("route %s is one-way (no RouteResponse): the body its handler returns is dropped", route_key)
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await connection.send(body)

    async def _reply_error(self, connection: WebSocketConnection, message: str, request_id: str) -> None:
        frame = json.dumps({"message": message, "connectionId": connection.connection_id, "requestId": request_id})
        with contextlib.suppress(ConnectionError, RuntimeError):
            await connection.send(frame)

    async def _watch(self, connection: WebSocketConnection) -> None:
        """Close the socket on API Gateway's idle timeout and its connection duration limit."""
        idle, lifetime = self.api.idle_timeout, self.api.max_connection_seconds
        if not idle and not lifetime:
            return
        while connection.open:
            now = time.time()
            deadlines = []
            if idle:
                deadlines.append(connection.last_active_at + idle)
            if lifetime:
                deadlines.append(connection.connected_at + lifetime)
            due = min(deadlines)
            if now >= due:
                await connection.close(*GOING_AWAY)
                return
            await asyncio.sleep(due - now)

    # -- life cycle ----------------------------------------------------------------------------

    def drop_connections(self) -> int:
        """Cut every open socket's TCP connection with no close frame, as a lost network would.

        Development only (the local stack's ``POST /dev/connections/drop``; API Gateway has no
        such call). Clients see an abnormal closure (1006); each socket's ``$disconnect`` still
        runs, with 1006 "Connection closed abnormally", once its receive loop sees the end.
        Returns how many sockets were cut.
        """
        dropped = 0
        for connection in self.registry.all():
            sock = connection.ws.get_extra_info("socket")
            if not connection.open or sock is None:
                continue
            connection.dropped = True
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
                dropped += 1
        return dropped

    async def shutdown(self, timeout: float = 10.0) -> None:
        """Refuse new sockets, close every open one with 1001 and wait for their $disconnect."""
        self._closing = True
        pending = list(self._handlers)
        closes = [connection.close(*GOING_AWAY) for connection in self.registry.all()]
        if closes:
            await asyncio.gather(*closes, return_exceptions=True)
        if pending:
            await asyncio.wait(pending, timeout=timeout)
