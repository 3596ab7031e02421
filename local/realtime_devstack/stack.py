"""The local stack: moto's DynamoDB server, the functions, and emulated API Gateway, on loopback.

No AWS account, no Docker, no internet: the handlers run unmodified in this
process and reach DynamoDB through boto3's own endpoint setting
(`AWS_ENDPOINT_URL_DYNAMODB`), over real HTTP to moto's server.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from . import moto_dynamodb, template
from .http_gateway import MAX_PAYLOAD_BYTES, HttpGateway, HttpRoute
from .lambda_host import FUNCTIONS_DIR, FunctionHost

log = logging.getLogger("realtime_devstack")

# Fake credentials: moto accepts anything, and nothing here may reach AWS.
_LOCAL_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
    "AWS_SESSION_TOKEN": "local",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_ACCOUNT_ID_ENDPOINT_MODE": "disabled",
    "AWS_EC2_METADATA_DISABLED": "true",
}
_FUNCTIONS = {"HttpApiFunction": "http_api"}


@dataclass
class StackOptions:
    host: str = "127.0.0.1"
    port: int = 3000
    history_limit: int | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    concurrency: int = 16


def _resolve(value: Any, refs: Mapping[str, str]) -> str | None:
    """The few intrinsics a function's environment uses: Ref to parameters and resources."""
    if isinstance(value, dict) and "Ref" in value:
        return refs.get(value["Ref"])
    if isinstance(value, dict):
        return None  # other intrinsics have no meaning locally
    return str(value)


class LocalStack:
    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.template = template.load_template()
        self._moto: Any = None
        self._runner: web.AppRunner | None = None
        self.functions: dict[str, FunctionHost] = {}
        self.url = ""
        self.dynamodb_url = ""

    # --- set-up ----------------------------------------------------------------------------

    def _start_dynamodb(self) -> None:
        from moto.server import ThreadedMotoServer

        moto_dynamodb.install()
        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._moto.start()
        host, port = self._moto.get_host_and_port()
        self.dynamodb_url = f"http://{host}:{port}"

    def _environment(self) -> dict[str, str]:
        parameters = {**template.parameter_defaults(self.template), **self.options.parameters}
        if self.options.history_limit is not None:
            parameters["HistoryLimit"] = str(self.options.history_limit)
        tables = dict.fromkeys(template.table_definitions(self.template))
        refs: dict[str, str] = {**parameters, **{logical: f"local-{logical}" for logical in tables}}
        env: dict[str, str] = {}
        for logical_id in _FUNCTIONS:
            for name, value in template.function_environment(self.template, logical_id).items():
                resolved = _resolve(value, refs)
                if resolved is not None and name != "REALTIME_SECRET_ARN":
                    env[name] = resolved
        env.update(_LOCAL_AWS_ENV)
        env["AWS_ENDPOINT_URL_DYNAMODB"] = self.dynamodb_url
        env["AWS_ENDPOINT_URL_DYNAMODBSTREAMS"] = self.dynamodb_url
        # EMF metrics on stdout are for CloudWatch; locally they would drown the log.
        env.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
        env.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
        return env

    def _create_tables(self) -> None:
        import boto3

        client = boto3.client("dynamodb", endpoint_url=self.dynamodb_url)
        names = {logical: f"local-{logical}" for logical in template.table_definitions(self.template)}
        template.create_tables(client, names)

    def _http_routes(self) -> list[HttpRoute]:
        routes = []
        for logical_id in _FUNCTIONS:
            host = self.functions[logical_id]
            events = self.template["Resources"][logical_id]["Properties"].get("Events", {})
            for event in events.values():
                if event.get("Type") == "HttpApi":
                    props = event["Properties"]
                    routes.append(HttpRoute(props["Method"].upper(), props["Path"], host))
        return routes

    # --- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self._start_dynamodb()
        # Process-wide, as a Lambda sandbox's environment is: every handler reads it once.
        for name, value in self._environment().items():
            if name.startswith("POWERTOOLS_"):
                os.environ.setdefault(name, value)  # the developer's own choice wins
            else:
                os.environ[name] = value
        self._create_tables()
        for logical_id, code_dir in _FUNCTIONS.items():
            host = FunctionHost(logical_id, FUNCTIONS_DIR / code_dir, max_concurrency=self.options.concurrency)
            host.warm()
            self.functions[logical_id] = host
        gateway = HttpGateway(self._http_routes())
        app = web.Application(client_max_size=MAX_PAYLOAD_BYTES)
        app.router.add_route("*", "/{tail:.*}", gateway.handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.options.host, self.options.port, reuse_address=True)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        port = sockets[0].getsockname()[1] if sockets else self.options.port
        self.url = f"http://{self.options.host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        for host in self.functions.values():
            host.close()
        if self._moto is not None:
            self._moto.stop()
