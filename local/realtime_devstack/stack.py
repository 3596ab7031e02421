"""The local stack: moto's DynamoDB server, the functions, and emulated API Gateway, on loopback.

No AWS account, no Docker, no internet: the handlers run unmodified in this
process and reach DynamoDB through boto3's own endpoint setting
(`AWS_ENDPOINT_URL_DYNAMODB`): moto's server, which this process's requests reach without
HTTP (``moto_inprocess``; ``StackOptions.dynamodb_in_process=False``, ``--dynamodb-over-http``,
sends them over the socket as before) and every other process over HTTP.

Everything is read from ``template.yaml``: the tables (with their streams and TTL), the
functions and their environment, the HTTP API routes, the WebSocket API (routes, selection
expression, stage) and the stream event source mappings. One aiohttp server on one port
serves all of it:

| path                         | what                                                         |
| ---------------------------- | ------------------------------------------------------------ |
| ``GET /ws``                  | the WebSocket API (``ws_gateway``)                           |
| ``/@connections/{id}``       | its management API (``management_api``), also under ``/{stage}/`` |
| ``GET /``, ``GET /web/...``  | the dashboard and the browser client (``web/``)              |
| anything else                | the HTTP API routes (``http_gateway``), 404 where none match |

Three development routes exist only here, never deployed: ``GET /dev/token`` (a subscriber
token for the dashboard), ``POST /dev/connections/drop`` (cut every WebSocket with no close
frame, as a lost network would; answers ``{"dropped": N}``) and ``GET /dev/stats`` (counters:
management API calls, function invocations and timeouts, stream batches, injected faults).

Beside it run a stream poller per event source mapping (``stream_poller``: the fan-out on the
events table, the rooms outbox on both tables, each at its own StartingPosition), a timer per
schedule (``scheduler``: the presence sweeper, first run at start, then at the template's rate)
and the TTL sweeper (``ttl_sweeper``).

``GET /dev/token`` takes ``?channels=PATTERN`` and ``?write=PATTERN`` (each repeatable) for the
token's ``channels`` (default ``feed_*``) and ``write`` claims.

Safe on a laptop (see ``_guard``): every request (HTTP API, WebSocket upgrade, ``/dev/*``, the
dashboard, the management API) must name one of the stack's own addresses in its ``Host``
header, or it gets a 421 with a JSON error: a web page that rebinds its own DNS name to
127.0.0.1 then reaches nothing. ``/dev/*`` needs the per-run ``dev_secret`` (generated at start,
printed as ``Dev secret:``), in the ``X-Devstack-Secret`` header or in the HttpOnly,
SameSite=Strict cookie ``devstack_{port}`` that serving the dashboard page sets, so the page's own
``fetch('/dev/token')`` carries it; anything else gets a 403. The management API takes only calls
signed with the per-run access key id the functions get as ``AWS_ACCESS_KEY_ID``. CORS is the
template's HTTP API ``CorsConfiguration`` (``CorsAllowOrigins``); ``/dev/*`` and the management API
send no CORS header at all. ``presence_*_seconds`` set
``PRESENCE_GRACE_SECONDS``, ``PRESENCE_LEASE_SECONDS`` and ``PRESENCE_SWEEP_SECONDS``.

Each function runs with its template ``Timeout`` enforced (``StackOptions.function_timeouts``
overrides it). ``StackOptions.faults`` turns on AWS's documented failure modes (``faithful``)
once the tables exist; ``history_ttl_seconds`` makes history and idempotency keys expire in
seconds (and the sweeper run often enough to see it); ``writer_timeout_seconds`` sets
``WRITER_TIMEOUT_SECONDS`` and the ingest (HTTP API) function's timeout together, as the
template keeps them equal.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hmac
import logging
import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from . import faithful, moto_dynamodb, moto_inprocess, template
from .aws_env import use_local_aws
from .http_gateway import MAX_PAYLOAD_BYTES, CorsConfiguration, HttpGateway, HttpRoute, StaticFiles
from .lambda_api import LambdaApi
from .lambda_host import REPO_ROOT, FunctionHost
from .management_api import ManagementApi
from .scheduler import ScheduleTimer
from .stream_poller import DEFAULT_POLL_INTERVAL, EventSourceMapping, StreamPoller
from .ttl_sweeper import DEFAULT_INTERVAL_SECONDS, TtlSweeper
from .ws_gateway import (
    IDLE_TIMEOUT_SECONDS,
    MAX_MESSAGE_BYTES,
    ConnectionRegistry,
    WebSocketApi,
    WebSocketGateway,
)

log = logging.getLogger("realtime_devstack")

# Fake credentials: moto accepts anything, and nothing here may reach AWS.
# Environment the template sets that means nothing locally (the secret comes from
# REALTIME_TOKEN_SECRET or the development secret instead of Secrets Manager).
_DROPPED_ENV = {"REALTIME_SECRET_ARN"}
WEBSOCKET_PATH = "/ws"
DEV_TOKEN_CHANNELS = ("feed_*",)
DEV_TOKEN_TTL_SECONDS = 12 * 3600
WEBSOCKET_API_TYPE = "AWS::ApiGatewayV2::Api"
STAGE_TYPE = "AWS::ApiGatewayV2::Stage"
ROUTE_TYPE = "AWS::ApiGatewayV2::Route"
ROUTE_RESPONSE_TYPE = "AWS::ApiGatewayV2::RouteResponse"
# "Quotas for configuring and running an HTTP API in API Gateway": maximum integration timeout
# 30 seconds; past it the HTTP API answers 503 {"message":"Service Unavailable"} while the function
# runs on. (A function that times out first is a function error: 500 Internal Server Error.)
HTTP_API_INTEGRATION_TIMEOUT_SECONDS = 30.0
HTTP_API_TIMEOUT_RESPONSE = {
    "statusCode": 503,
    "headers": {"Content-Type": "application/json"},
    "body": '{"message":"Service Unavailable"}',
}
# "Quotas for configuring and running a WebSocket in API Gateway": integration timeout 29 seconds.
WEBSOCKET_INTEGRATION_TIMEOUT_SECONDS = 29.0
MIN_TTL_SWEEP_SECONDS = 0.25
HTTP_API_TYPE = "AWS::Serverless::HttpApi"
# The per-run secret of /dev/*: this header, or the dashboard's cookie (see the module docstring).
DEV_SECRET_HEADER = "X-Devstack-Secret"  # noqa: S105 - a header name, not a secret
DEV_PATH_PREFIX = "/dev/"
# Template parameter overrides from the environment: "Name=value,Name=value" (see _parameters).
PARAMETERS_ENV = "DEVSTACK_PARAMETERS"
# Names that always mean this machine; the bound address and StackOptions.allow_hosts are added.
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


@dataclass
class StackOptions:
    host: str = "127.0.0.1"
    port: int = 3000
    history_limit: int | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    concurrency: int = 16
    # --require-auth: the history route demands `Authorization: Bearer` (REQUIRE_HISTORY_TOKEN).
    # Off by default: HTTP routes stay open locally, as under `sam local`.
    require_auth: bool = False
    poll_interval: float = DEFAULT_POLL_INTERVAL  # seconds between reads of an idle stream shard
    ttl_sweep_interval: float = DEFAULT_INTERVAL_SECONDS  # 0 disables the sweeper
    idle_timeout: float = IDLE_TIMEOUT_SECONDS  # WebSocket idle timeout; 0 disables it
    template_path: Path | None = None  # default: the repository's template.yaml
    web_dir: Path | None = None  # default: the repository's web/
    # AWS's failure modes (transaction conflicts, GSI lag, late TTL, throttles, lost responses);
    # None: the kind substrate. Process-wide while the stack runs.
    faults: faithful.Faults | None = None
    # History and idempotency TTLs in seconds (HISTORY_TTL_HOURS = IDEMPOTENCY_TTL_HOURS = N/3600).
    history_ttl_seconds: float | None = None
    # WRITER_TIMEOUT_SECONDS and the HTTP API function's Timeout (the template keeps them equal).
    writer_timeout_seconds: float | None = None
    function_timeouts: dict[str, float] = field(default_factory=dict)  # logical id -> seconds
    # PRESENCE_GRACE_SECONDS, PRESENCE_LEASE_SECONDS, PRESENCE_SWEEP_SECONDS (None: the template's).
    presence_grace_seconds: float | None = None
    presence_lease_seconds: float | None = None
    presence_sweep_seconds: float | None = None
    # Seconds between two firings of each schedule (logical id of the function -> seconds);
    # default: the template's rate. The first firing is always at start.
    schedule_intervals: dict[str, float] = field(default_factory=dict)
    # Host names (or addresses) the Host header may carry besides loopback and the bound address,
    # e.g. this machine's LAN address when it listens on 0.0.0.0 (--allow-host).
    allow_hosts: tuple[str, ...] = ()
    # The secret /dev/* demands; None: a new random one per run (what `dev` always does).
    dev_secret: str | None = None
    # The stack's own DynamoDB requests reach moto in process (moto_inprocess), not over HTTP;
    # moto's HTTP server serves everyone else either way. False (--dynamodb-over-http): the old
    # transport, for comparison.
    dynamodb_in_process: bool = True


def _resolve(value: Any, refs: Mapping[str, str]) -> str | None:
    """The few intrinsics a function's environment uses: Ref to parameters and resources."""
    if isinstance(value, dict) and "Ref" in value:
        return refs.get(value["Ref"])
    if isinstance(value, dict):
        return None  # other intrinsics have no meaning locally
    return str(value)


def _url_host(host: str) -> str:
    """The host to put in URLs: loopback for a wildcard address, brackets around IPv6."""
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - recognising it, not binding to it
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def split_host_header(value: str) -> tuple[str, int | None] | None:
    """``name:port``, ``[v6]:port`` or ``name`` -> (lower-case name, IPv6 in brackets; port or None).

    None when it is not a host at all (an empty name, a port that is not a number)."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[: end + 1], value[end + 1 :]
    else:
        name, colon, port_text = value.partition(":")
        rest = colon + port_text
    if not name or name == "[]":
        return None
    if not rest:
        return name, None
    if not rest.startswith(":") or not rest[1:].isdigit():
        return None
    return name, int(rest[1:])


def _json(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status, headers={"Cache-Control": "no-store"})


class LocalStack:
    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.template_path = (options.template_path or template.TEMPLATE_PATH).resolve()
        self.template = template.load_template(self.template_path)
        self.web_dir = options.web_dir or REPO_ROOT / "web"
        self._moto: Any = None
        self._runner: web.AppRunner | None = None
        self._socket: socket.socket | None = None
        self._stopped = False
        self.functions: dict[str, FunctionHost] = {}
        self.registry = ConnectionRegistry()
        self.ws_gateway: WebSocketGateway | None = None
        # Per-run secrets: /dev/* takes dev_secret; the management API takes calls signed with
        # access_key_id only, which the functions get (with its secret key) as AWS credentials.
        self.dev_secret = options.dev_secret or secrets.token_urlsafe(24)
        self.access_key_id = "ASIA" + base64.b32encode(secrets.token_bytes(10)).decode()  # AWS's shape
        self.secret_access_key = secrets.token_urlsafe(30)
        self.management = ManagementApi(self.registry, access_key_id=self.access_key_id)
        self.allowed_hosts: frozenset[str] = frozenset()
        self.port = 0
        self.pollers: list[StreamPoller] = []
        self.schedules: list[ScheduleTimer] = []
        self.sweeper: TtlSweeper | None = None
        self._configured_faults = False
        self.url = ""
        self.websocket_url = ""
        self.dynamodb_url = ""
        self.table_names = {logical: f"local-{logical}" for logical in template.table_definitions(self.template)}

    # --- set-up ----------------------------------------------------------------------------

    def _parameters(self) -> dict[str, str]:
        parameters = {**template.parameter_defaults(self.template), **self.options.parameters}
        # Overrides for a child stack (`process.start(env=...)`), e.g. "FanoutShardSize=3,HistoryLimit=50".
        for pair in filter(None, os.environ.get(PARAMETERS_ENV, "").split(",")):
            name, _, value = pair.partition("=")
            if name.strip() not in parameters:
                raise template.TemplateError(f"{PARAMETERS_ENV}: {name.strip()!r} is not a template parameter")
            parameters[name.strip()] = value.strip()
        if self.options.history_limit is not None:
            parameters["HistoryLimit"] = str(self.options.history_limit)
        return parameters

    def _start_dynamodb(self) -> None:
        from moto.server import ThreadedMotoServer

        moto_dynamodb.install()
        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._moto.start()
        host, port = self._moto.get_host_and_port()
        self.dynamodb_url = f"http://{host}:{port}"
        if self.options.dynamodb_in_process:
            moto_inprocess.serve(self.dynamodb_url)

    def _bind(self) -> None:
        """Take the port now, so the URL (and the functions' management endpoint) is known."""
        family = socket.AF_INET6 if ":" in self.options.host else socket.AF_INET
        self._socket = socket.create_server((self.options.host, self.options.port), family=family, backlog=512)
        port = self._socket.getsockname()[1]
        host = _url_host(self.options.host)
        self.port = port
        self.url = f"http://{host}:{port}"
        self.websocket_url = f"ws://{host}:{port}{WEBSOCKET_PATH}"
        names = {*LOOPBACK_NAMES, host.lower(), *(_url_host(name).lower() for name in self.options.allow_hosts)}
        if self.options.host not in ("", "0.0.0.0", "::"):  # noqa: S104 - recognising it, not binding to it
            names.add(_url_host(self.options.host).lower())
        self.allowed_hosts = frozenset(names)

    def _environment(self) -> dict[str, str]:
        refs: dict[str, str] = {**self._parameters(), **self.table_names}
        # A function's name is its logical id here (LambdaApi serves Invoke by it).
        refs.update({function: function for function in template.resources(self.template, template.FUNCTION_TYPE)})
        env: dict[str, str] = {}
        for logical_id in template.resources(self.template, template.FUNCTION_TYPE):
            for name, value in template.function_environment(self.template, logical_id).items():
                resolved = _resolve(value, refs)
                if resolved is not None and name not in _DROPPED_ENV:
                    env[name] = resolved
        use_local_aws(env)
        # The per-run credentials: moto takes any, the management API only these (see __init__).
        env["AWS_ACCESS_KEY_ID"] = self.access_key_id
        env["AWS_SECRET_ACCESS_KEY"] = self.secret_access_key
        env["AWS_ENDPOINT_URL_DYNAMODB"] = self.dynamodb_url
        env["AWS_ENDPOINT_URL_DYNAMODBSTREAMS"] = self.dynamodb_url
        # The management API is served on this stack's own port (the template's is https://{api}...).
        env["WEBSOCKET_MANAGEMENT_URL"] = self.url
        env["AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI"] = self.url
        env["AWS_ENDPOINT_URL_LAMBDA"] = self.url  # Invoke (the fan-out's delivery workers): lambda_api.py
        env["REQUIRE_HISTORY_TOKEN"] = "true" if self.options.require_auth else "false"
        # EMF metrics on stdout are for CloudWatch; locally they would drown the log.
        env.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
        # The template's INFO is for CloudWatch; locally a line per connect and batch is noise.
        env["POWERTOOLS_LOG_LEVEL"] = "WARNING"
        if self.options.history_ttl_seconds is not None:
            hours = repr(self.options.history_ttl_seconds / 3600)
            env["HISTORY_TTL_HOURS"] = env["IDEMPOTENCY_TTL_HOURS"] = hours
        if self.options.writer_timeout_seconds is not None:
            env["WRITER_TIMEOUT_SECONDS"] = repr(float(self.options.writer_timeout_seconds))
        for name, value in (
            ("PRESENCE_GRACE_SECONDS", self.options.presence_grace_seconds),
            ("PRESENCE_LEASE_SECONDS", self.options.presence_lease_seconds),
            ("PRESENCE_SWEEP_SECONDS", self.options.presence_sweep_seconds),
        ):
            if value is not None:
                env[name] = f"{float(value):g}"
        return env

    def presence_settings(self) -> dict[str, str]:
        """The PRESENCE_* values the functions run with (the template's defaults, or the options)."""
        env = self._environment() if self.url else {}
        parameters = self._parameters()
        defaults = {
            "PRESENCE_GRACE_SECONDS": parameters.get("PresenceGraceSeconds", ""),
            "PRESENCE_LEASE_SECONDS": parameters.get("PresenceLeaseSeconds", ""),
            "PRESENCE_SWEEP_SECONDS": parameters.get("PresenceSweepSeconds", ""),
        }
        return {name: env.get(name, default) for name, default in defaults.items()}

    def _http_functions(self) -> set[str]:
        return {route["function"] for route in template.http_routes(self.template, self.options.parameters or None)}

    def function_timeout(self, logical_id: str, spec: template.FunctionSpec) -> float:
        """The Timeout a function runs with: an override, the writer timeout (ingest), the template's."""
        if logical_id in self.options.function_timeouts:
            return float(self.options.function_timeouts[logical_id])
        if self.options.writer_timeout_seconds is not None and logical_id in self._http_functions():
            return float(self.options.writer_timeout_seconds)
        return float(spec["timeout"])

    @property
    def ttl_sweep_interval(self) -> float:
        interval = self.options.ttl_sweep_interval
        if self.options.history_ttl_seconds is not None and interval > 0:
            interval = min(interval, max(MIN_TTL_SWEEP_SECONDS, self.options.history_ttl_seconds / 4))
        return interval

    def _create_tables(self) -> None:
        import boto3

        client = boto3.client("dynamodb", endpoint_url=self.dynamodb_url)
        template.create_tables(client, self.table_names, template=self.template)

    def _start_functions(self) -> None:
        base = self.template_path.parent
        for logical_id, spec in template.functions(self.template).items():
            code_dir = (base / spec["code_uri"]).resolve()
            module = spec["handler"].rsplit(".", 1)[0]
            if not (code_dir / f"{module.replace('.', '/')}.py").is_file():
                log.warning("%s: %s/%s.py does not exist yet; its routes are not served", logical_id, code_dir, module)
                continue
            host = FunctionHost(
                logical_id,
                code_dir,
                spec["handler"],
                max_concurrency=self.options.concurrency,
                timeout=self.function_timeout(logical_id, spec),
                memory=spec["memory"],
            )
            host.warm()
            self.functions[logical_id] = host

    def _set_integration_timeouts(self) -> None:
        """API Gateway stops waiting for a function at its integration timeout (if the function's is longer)."""
        for logical_id in self._http_functions():
            host = self.functions.get(logical_id)
            if host is not None:
                host.integration_timeout = HTTP_API_INTEGRATION_TIMEOUT_SECONDS
                host.integration_timeout_response = HTTP_API_TIMEOUT_RESPONSE
        for api_id in template.resources(self.template, WEBSOCKET_API_TYPE):
            if (template.resources(self.template)[api_id].get("Properties") or {}).get("ProtocolType") != "WEBSOCKET":
                continue
            for function_id in template.websocket_routes(self.template, api_id).values():
                host = self.functions.get(function_id)
                if host is not None and host.integration_timeout is None:
                    host.integration_timeout = WEBSOCKET_INTEGRATION_TIMEOUT_SECONDS

    def _http_routes(self) -> list[HttpRoute]:
        routes = []
        for route in template.http_routes(self.template, self.options.parameters or None):
            host = self.functions.get(route["function"])
            if host is not None:
                routes.append(HttpRoute(route["method"], route["path"], host))
        return routes

    def _websocket_api(self) -> WebSocketApi | None:
        apis = [
            logical_id
            for logical_id, resource in template.resources(self.template, WEBSOCKET_API_TYPE).items()
            if (resource.get("Properties") or {}).get("ProtocolType") == "WEBSOCKET"
        ]
        if not apis:
            return None
        api_id = apis[0]
        routes = {
            route_key: self.functions[function_id]
            for route_key, function_id in template.websocket_routes(self.template, api_id).items()
            if function_id in self.functions
        }
        if not routes:
            return None
        return WebSocketApi(
            routes=routes,
            route_selection_expression=template.websocket_route_selection(self.template, api_id),
            api_id="local",
            stage=self._stage(api_id),
            two_way_routes=self._two_way_routes(api_id),
            max_message_bytes=MAX_MESSAGE_BYTES,
            idle_timeout=self.options.idle_timeout,
        )

    def _stage(self, api_id: str) -> str:
        parameters = self._parameters()
        for resource in template.resources(self.template, STAGE_TYPE).values():
            props = resource.get("Properties") or {}
            if template.referenced_logical_id(props.get("ApiId")) == api_id:
                name = _resolve(props.get("StageName"), parameters)
                if name:
                    return name
        return "local"

    def _two_way_routes(self, api_id: str) -> frozenset[str]:
        """Route keys with an AWS::ApiGatewayV2::RouteResponse: only those send a handler's body back."""
        keys = set()
        routes = template.resources(self.template, ROUTE_TYPE)
        for resource in template.resources(self.template, ROUTE_RESPONSE_TYPE).values():
            props = resource.get("Properties") or {}
            route = routes.get(template.referenced_logical_id(props.get("RouteId")) or "")
            if (
                route is not None
                and template.referenced_logical_id((route.get("Properties") or {}).get("ApiId")) == api_id
            ):
                keys.add(str(route["Properties"]["RouteKey"]))
        return frozenset(keys)

    def _start_pollers(self) -> None:
        import boto3

        dynamodb = boto3.client("dynamodb", endpoint_url=self.dynamodb_url)
        streams = boto3.client("dynamodbstreams", endpoint_url=self.dynamodb_url)
        for settings in template.event_source_mappings(self.template):
            host = self.functions.get(settings["function"])
            if host is None or not settings["enabled"]:
                continue
            table = dynamodb.describe_table(TableName=self.table_names[settings["table"]])["Table"]
            mapping = EventSourceMapping(settings=settings, invoke=host.invoke_sync)
            arn = table["LatestStreamArn"]
            # In process, an idle poll asks moto's shard its length instead of sending GetRecords.
            peek = functools.partial(moto_dynamodb.stream_length, arn) if self.options.dynamodb_in_process else None
            poller = StreamPoller(mapping, streams, arn, interval=self.options.poll_interval, peek=peek)
            poller.start()
            self.pollers.append(poller)

    def _start_schedules(self) -> None:
        for schedule in template.schedules(self.template):
            host = self.functions.get(schedule["function"])
            if host is None or not schedule["enabled"]:
                continue
            timer = ScheduleTimer(
                schedule, host.invoke_sync, interval=self.options.schedule_intervals.get(schedule["function"])
            )
            timer.start()
            self.schedules.append(timer)

    # --- request guard: Host, the per-run secret, the dashboard's cookie ------------------------

    @property
    def dev_cookie_name(self) -> str:
        """Per port: cookies are shared by every port of a host, and two stacks must not mix."""
        return f"devstack_{self.port}"

    def host_allowed(self, value: str | None) -> bool:
        """Whether a Host header names this stack: one of its names, and its port."""
        parsed = split_host_header(value) if value is not None else None
        if parsed is None:
            return False
        name, port = parsed
        return name in self.allowed_hosts and (80 if port is None else port) == self.port

    def _has_dev_secret(self, request: web.Request) -> bool:
        given = request.headers.get(DEV_SECRET_HEADER) or request.cookies.get(self.dev_cookie_name) or ""
        return hmac.compare_digest(given.encode(), self.dev_secret.encode())

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Before anything else: the Host must be the stack's own (a DNS rebinding page's is not),
        and /dev/* needs the per-run secret. Serving the dashboard page hands that secret to the
        page as a cookie no script can read (HttpOnly) and no other site's request carries
        (SameSite=Strict), scoped to /dev."""
        host = request.headers.get("Host")
        if host is None:
            return _json(400, "a Host header is required")
        if not self.host_allowed(host):
            names = ", ".join(f"{name}:{self.port}" for name in sorted(self.allowed_hosts))
            return _json(
                421,
                f"Host {host!r} is not this stack's (it answers to {names}); a page whose DNS name was pointed "
                "here (DNS rebinding) is refused. Listening beyond loopback, name this machine with --allow-host",
            )
        development = request.path == "/dev" or request.path.startswith(DEV_PATH_PREFIX)
        if development and not self._has_dev_secret(request):
            return _json(
                403,
                f"/dev/* needs this run's secret (printed at start as 'Dev secret:') in the {DEV_SECRET_HEADER} "
                "header; the dashboard gets it as a cookie when the stack serves its page",
            )
        response: web.StreamResponse = await handler(request)
        if request.method == "GET" and request.path == "/" and response.status == 200:
            response.set_cookie(self.dev_cookie_name, self.dev_secret, path="/dev", httponly=True, samesite="Strict")
        return response

    def cors_configuration(self) -> CorsConfiguration | None:
        """The HTTP API's ``CorsConfiguration`` from the template, ``CorsAllowOrigins`` resolved."""
        parameters = self._parameters()

        def strings(value: Any) -> tuple[str, ...]:
            if isinstance(value, dict) and "Ref" in value:  # a CommaDelimitedList parameter
                return tuple(part.strip() for part in str(parameters.get(value["Ref"], "")).split(",") if part.strip())
            if isinstance(value, list):
                return tuple(item for item in (_resolve(v, parameters) for v in value) if item)
            resolved = _resolve(value, parameters) if value is not None else None
            return (resolved,) if resolved else ()

        for resource in template.resources(self.template, HTTP_API_TYPE).values():
            cors = (resource.get("Properties") or {}).get("CorsConfiguration")
            if cors is None or cors is False:
                continue
            if cors is True:  # SAM: CorsConfiguration: true allows every origin
                return CorsConfiguration(allow_origins=("*",))
            if not isinstance(cors, dict):  # SAM: a single origin as a string
                return CorsConfiguration(allow_origins=strings(str(cors).strip("'\"")))
            max_age = cors.get("MaxAge")
            return CorsConfiguration(
                allow_origins=strings(cors.get("AllowOrigins")),
                allow_methods=strings(cors.get("AllowMethods")),
                allow_headers=strings(cors.get("AllowHeaders")),
                expose_headers=strings(cors.get("ExposeHeaders")),
                max_age=int(max_age) if max_age is not None else None,
                allow_credentials=bool(cors.get("AllowCredentials", False)),
            )
        return None

    async def _serve_dev_token(self, request: web.Request) -> web.Response:
        """A development token; ``?channels=`` and ``?write=`` (repeatable) choose its claims."""
        channels = tuple(request.query.getall("channels", [])) or DEV_TOKEN_CHANNELS
        write = list(request.query.getall("write", [])) or None
        try:
            token = self.dev_token(channels, write=write)
        except ValueError as exc:
            return web.json_response({"message": str(exc)}, status=400, headers={"Cache-Control": "no-store"})
        return web.json_response({"token": token}, headers={"Cache-Control": "no-store"})

    async def _drop_connections(self, _request: web.Request) -> web.Response:
        """Simulate a network drop: cut every open WebSocket with no close frame (see
        ``WebSocketGateway.drop_connections``). Local stack only, never deployed: reconnect and
        catch-up tests and the soak benchmark use it."""
        dropped = self.ws_gateway.drop_connections() if self.ws_gateway is not None else 0
        return web.json_response({"dropped": dropped}, headers={"Cache-Control": "no-store"})

    def stats(self) -> dict[str, Any]:
        """What ``GET /dev/stats`` answers: counters for tests and benchmarks."""
        return {
            "management": self.management.stats(),
            "functions": {
                name: {"invocations": host.invocations, "timeouts": host.timeouts, "cold_starts": host.cold_starts}
                for name, host in self.functions.items()
            },
            "streams": self._stream_stats(),
            "schedules": {
                timer.name: {
                    "invocations": timer.invocations,
                    "completed": timer.completed,
                    "errors": timer.errors,
                    "timeouts": timer.timeouts,
                    "running": timer.running,
                }
                for timer in self.schedules
            },
            "disconnects": {
                "invoked": self.ws_gateway.disconnects if self.ws_gateway is not None else 0,
                "lost": self.ws_gateway.lost_disconnects if self.ws_gateway is not None else 0,
            },
            "ttl_deleted": self.sweeper.deleted if self.sweeper is not None else 0,
            "faults": faithful.injected(),
            # DynamoDB requests of this process moto answered without HTTP (moto_inprocess).
            "dynamodb_in_process": moto_inprocess.stats(),
        }

    def _stream_stats(self) -> dict[str, dict[str, Any]]:
        """Per function, summed over its mappings (the rooms outbox has two), and per mapping (its event)."""
        found: dict[str, dict[str, Any]] = {}
        for poller in self.pollers:
            mapping = poller.mapping
            counts = {
                "invocations": mapping.invocations,
                "timeouts": mapping.timeouts,
                "dead_letters": len(mapping.dead_letters),
            }
            entry = found.setdefault(mapping.name, {"invocations": 0, "timeouts": 0, "dead_letters": 0, "mappings": {}})
            for name, value in counts.items():
                entry[name] += value
            entry["mappings"][str(mapping.settings["event"])] = counts
        return found

    async def _serve_stats(self, _request: web.Request) -> web.Response:
        return web.json_response(self.stats(), headers={"Cache-Control": "no-store"})

    def dev_token(
        self,
        channels: tuple[str, ...] = DEV_TOKEN_CHANNELS,
        ttl_seconds: int = DEV_TOKEN_TTL_SECONDS,
        *,
        write: list[str] | None = None,
    ) -> str:
        """A subscriber token signed with the secret the functions use (REALTIME_TOKEN_SECRET or the dev one).

        ``write``: the room channel patterns whose state and metadata the token may change.
        """
        from realtime_transport.secrets import signing_secret
        from realtime_transport.settings import Settings
        from realtime_transport.tokens import issue

        secret = signing_secret(Settings.from_env())
        return issue(secret, sub="developer", channels=list(channels), ttl_seconds=ttl_seconds, write=write)

    # --- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._start_dynamodb()
        self._bind()
        # Process-wide, as a Lambda sandbox's environment is: every handler reads it once.
        for name, value in self._environment().items():
            if name.startswith("POWERTOOLS_"):
                os.environ.setdefault(name, value)  # the developer's own choice wins
            else:
                os.environ[name] = value
        # boto3's default session keeps the credentials it first resolved: one made before now
        # (in this process, by anything) would sign with stale keys the management API refuses.
        # A new session reads the environment again, as a fresh Lambda sandbox would.
        import boto3

        boto3.DEFAULT_SESSION = None
        self._create_tables()
        self._start_functions()
        self._set_integration_timeouts()
        # Streams read from LATEST miss what came before: start before anything can write.
        self._start_pollers()
        if self.ttl_sweep_interval > 0:
            import boto3

            self.sweeper = TtlSweeper(
                boto3.client("dynamodb", endpoint_url=self.dynamodb_url), interval=self.ttl_sweep_interval
            )
            self.sweeper.start()
        if self.options.faults is not None:  # the tables exist: from now on, AWS's failure modes
            faithful.configure(self.options.faults)
            self._configured_faults = True

        app = web.Application(client_max_size=MAX_PAYLOAD_BYTES, middlewares=[self._guard])
        websocket_api = self._websocket_api()
        if websocket_api is not None:
            self.ws_gateway = WebSocketGateway(websocket_api, self.registry)
            app.router.add_get(WEBSOCKET_PATH, self.ws_gateway.handle)
        else:
            app.router.add_get(WEBSOCKET_PATH, _no_websocket_api)
        self.management.add_routes(app.router)
        LambdaApi(self.functions, access_key_id=self.access_key_id).add_routes(app.router)
        StaticFiles(self.web_dir).add_routes(app.router)
        # The dashboard asks for a development token here (local stack only: never deployed).
        app.router.add_get("/dev/token", self._serve_dev_token)
        # Development only, never deployed: drop every WebSocket as a lost network would.
        app.router.add_post("/dev/connections/drop", self._drop_connections)
        # Development only, never deployed: counters for tests and benchmarks.
        app.router.add_get("/dev/stats", self._serve_stats)
        app.router.add_route("*", "/{tail:(?s:.*)}", HttpGateway(self._http_routes(), self.cors_configuration()).handle)

        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5)
        await self._runner.setup()
        assert self._socket is not None  # noqa: S101 - bound above
        await web.SockSite(self._runner, self._socket).start()
        # Last: a scheduled function (the presence sweeper) probes the management API, now served.
        self._start_schedules()

    async def stop(self) -> None:
        """Stop in dependency order: stream pollers (their in-flight batch may still post to
        sockets), then every socket (1001 and $disconnect, which needs DynamoDB), then the
        server, the functions and moto last. Calling it again does nothing."""
        if self._stopped:
            return
        self._stopped = True
        for timer in self.schedules:
            await asyncio.to_thread(timer.stop)
        for poller in self.pollers:
            await asyncio.to_thread(poller.stop)
        if self.ws_gateway is not None:
            await self.ws_gateway.shutdown()
        if self.sweeper is not None:
            await asyncio.to_thread(self.sweeper.stop)
        if self._runner is not None:
            await self._runner.cleanup()
        elif self._socket is not None:
            self._socket.close()
        for host in self.functions.values():
            host.close()
        if self._configured_faults:
            faithful.reset()
        if self._moto is not None:
            moto_inprocess.stop(self.dynamodb_url)
            self._moto.stop()


async def _no_websocket_api(request: web.Request) -> web.Response:
    return web.json_response(
        {"message": "the template has no WebSocket API whose function code exists (see the start-up log)"},
        status=404,
    )
