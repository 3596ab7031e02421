"""Cold start of every Lambda handler against a minimal boto3 handler making the same AWS requests.

A sample is a fresh interpreter, as a Lambda cold start is: it imports the function's `app` (its
folder first on sys.path, the function's environment set) and invokes `lambda_handler` once with a
sample event, timing the two apart (time.perf_counter). The endpoints are local: a moto server
(DynamoDB, Secrets Manager, the tables built from template.yaml, the signing secret in Secrets
Manager as REALTIME_SECRET_ARN names it on AWS) and a management-API stub (`@connections`) for the
functions that deliver. The baseline of each handler (bench/cold_baselines/<function>.py) is a
plain hand-written handler with its boto3 clients created at import, as AWS recommends, making the
same AWS requests for the same event: an untimed audit run of both sides records the requests
(botocore operations, and the stub's requests) and the bench refuses to compare sides whose
requests differ. Handler and baseline samples alternate, RUNS pairs per handler; the ratio is the
median of the adjacent pairs' ratios of import + first invocation (which resists the load other
processes put on a shared machine). Goal: every handler at most GOAL_RATIO times its baseline.
For a handler that misses, one run under `-X importtime` lists the heaviest imports by self time.

    .venv/bin/python bench/cold_import.py [--runs 15] [--only http_api,fanout]

`tests/unit/test_cold_start.py` runs each handler's cold import + first invocation once through
`Endpoints` and `run_sample` (a smoke test: that it works, never how fast).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from _common import FAKE_AWS_ENV, REPO, goal, table

RUNS = 15
GOAL_RATIO = 1.5
BASELINES = Path(__file__).resolve().parent / "cold_baselines"
EVENTS = REPO / "events"
SECRET_VALUE = "bench-cold-start-signing-secret-0123456789"  # noqa: S105 - a local moto secret
UNIQUE = "__UNIQUE__"  # replaced in every sample's event, so no two samples hit the same items
SUBSCRIBED_CONNECTION = "benchsubscriber0="  # the fan-out's one subscriber (of feed_42)

# Installed here (moto needs it) but neither in the layer (layers/realtime/requirements.txt) nor in
# Lambda's Python runtime: PyJWT imports it when it can (for RSA/EC keys, which HS256 tokens never
# use), so a sample that found it would count ~40-80 ms a deployed cold start never pays.
ABSENT_ON_LAMBDA = ("cryptography",)

# Runs in the fresh interpreter: argv = code dir, event file, mode ("time" or "audit").
DRIVER = r"""
import json, sys, time, uuid
code_dir, event_file, mode = sys.argv[1:4]
for absent in sys.argv[4:]:
    sys.modules[absent] = None  # `import absent` raises ImportError, as on Lambda
sys.path.insert(0, code_dir)
event = json.loads(open(event_file).read().replace("__UNIQUE__", uuid.uuid4().hex[:12]))
calls = []
if mode == "audit":  # untimed: which AWS requests the invocation makes
    import botocore.client
    original = botocore.client.BaseClient._make_api_call
    def recording(self, operation, params):
        calls.append(self.meta.service_model.service_name + ":" + operation)
        return original(self, operation, params)
    botocore.client.BaseClient._make_api_call = recording

class Context:
    function_name = "bench-cold-start"
    function_version = "$LATEST"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:bench-cold-start"
    aws_request_id = "00000000-0000-0000-0000-000000000000"
    log_group_name = "/aws/lambda/bench-cold-start"
    log_stream_name = "bench"
    def get_remaining_time_in_millis(self):
        return 10_000

started = time.perf_counter()
import app
imported = time.perf_counter()
result = app.lambda_handler(event, Context())
invoked = time.perf_counter()
print(json.dumps({"import_s": imported - started, "invoke_s": invoked - imported, "calls": calls,
                  "result": result, "modules": len(sys.modules)}, default=str))
"""


@dataclass
class Handler:
    """One function: its event, what it must answer, the environment it runs with."""

    name: str
    event: Callable[[Endpoints], dict[str, Any]]
    check: Callable[[Any], bool]  # the first invocation's answer is a success
    env: dict[str, str] = field(default_factory=dict)
    # The baseline's settings from the handler's own requests (its index partitions, say).
    baseline_env: Callable[[Counter[str]], dict[str, str]] = lambda _: {}

    @property
    def code_dir(self) -> Path:
        return REPO / "functions" / self.name

    @property
    def baseline_dir(self) -> Path:
        return BASELINES / self.name


# --- local endpoints ---------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    # socketserver's listen backlog is 5: a Pusher opening 10 connections at once would have the
    # rest of its SYNs dropped and resent a second later, measuring TCP's retransmission timer.
    request_queue_size = 128


class ManagementStub:
    """`@connections` of API Gateway's management API: POST 200, GET the connection, DELETE 204.

    Counts the requests by method, for the audit ("Use @connections commands in your backend
    service": POST sends a message, GET describes the connection, DELETE disconnects it)."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        stub = self

        class Answer(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self, status: int, body: bytes = b"") -> None:
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                stub.requests[f"execute-api:{self.command}"] += 1
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                self._answer(200)

            def do_DELETE(self) -> None:
                self._answer(204)

            def do_GET(self) -> None:
                now = "2026-01-01T00:00:00.000Z"
                self._answer(200, json.dumps({"connectedAt": now, "lastActiveAt": now}).encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Answer)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Endpoints:
    moto_url: str
    management: ManagementStub
    secret_arn: str
    tables: dict[str, str]
    folder: Path

    def environment(self, handler: Handler, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_", "PYTHON"))}
        env.update(FAKE_AWS_ENV)
        env.update(template_literals(handler.name))  # as deployed: PYDANTIC_DISABLE_PLUGINS, say
        env.update(
            AWS_LAMBDA_FUNCTION_NAME=f"bench-{handler.name}",
            AWS_ENDPOINT_URL_DYNAMODB=self.moto_url,
            AWS_ENDPOINT_URL_SECRETS_MANAGER=self.moto_url,
            AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI=self.management.url,
            WEBSOCKET_MANAGEMENT_URL=self.management.url,
            EVENTS_TABLE_NAME=self.tables["EventsTable"],
            CONNECTIONS_TABLE_NAME=self.tables["ConnectionsTable"],
            REALTIME_SECRET_ARN=self.secret_arn,
            **handler.env,
        )
        env.update(extra or {})
        return env

    def event_file(self, handler: Handler) -> Path:
        path = self.folder / f"{handler.name}.json"
        if not path.exists():
            path.write_text(json.dumps(handler.event(self)))
        return path


@functools.cache
def template_literals(function_dir: str) -> dict[str, str]:
    """The function's environment variables that the template gives as plain strings (Globals
    included): what every deployed cold start runs with. Refs (table names, ARNs) are the
    bench's own."""
    from realtime_devstack import template

    loaded = template.load_template()
    for logical_id, spec in template.functions(loaded).items():
        if spec["code_uri"].strip("/") == f"functions/{function_dir}":
            variables = template.function_environment(loaded, logical_id)
            return {name: str(value) for name, value in variables.items() if isinstance(value, str | int)}
    return {}


@contextmanager
def endpoints() -> Iterator[Endpoints]:
    """A moto server with the template's tables and the signing secret, the management stub, and
    the fan-out's one subscriber (feed_42, its token valid for the index's tokenExp hint)."""
    import boto3
    from moto.server import ThreadedMotoServer

    from realtime_devstack import moto_dynamodb, template
    from realtime_devstack.aws_env import use_local_aws

    use_local_aws(os.environ)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request otherwise
    moto_dynamodb.install()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    management = ManagementStub()
    host, port = moto.get_host_and_port()
    url = f"http://{host}:{port}"
    try:
        dynamodb = boto3.client("dynamodb", endpoint_url=url)
        names = {"EventsTable": "bench-cold-events", "ConnectionsTable": "bench-cold-connections"}
        definitions = template.table_definitions(template.load_template())
        template.create_tables(dynamodb, {k: v for k, v in names.items() if k in definitions})
        secrets = boto3.client("secretsmanager", endpoint_url=url)
        arn = secrets.create_secret(Name="bench-cold-signing", SecretString=SECRET_VALUE)["ARN"]
        _subscribe(dynamodb, names["ConnectionsTable"])
        with tempfile.TemporaryDirectory(prefix="cold-start-") as folder:
            yield Endpoints(url, management, arn, names, Path(folder))
    finally:
        management.stop()
        moto.stop()


def _subscribe(dynamodb: Any, table: str) -> None:
    import time

    from realtime_transport.connections import Connection, ConnectionStore

    store = ConnectionStore(dynamodb, table)
    exp = int(time.time()) + 7200
    store.put_connection(Connection(SUBSCRIBED_CONNECTION, "bench", ("feed_*",), exp, int(time.time() * 1000)))
    store.subscribe(SUBSCRIBED_CONNECTION, "transport#feed_42", token_exp=exp)


def _token() -> str:
    from realtime_transport import tokens

    return tokens.issue(SECRET_VALUE.encode(), sub="bench", channels=["feed_*"])


# --- the handlers and their first invocations ----------------------------------------------------


def _sample(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS / f"{name}.json").read_text())
    return event


def _publish_event(_: Endpoints) -> dict[str, Any]:
    event = _sample("http_post_event")
    body = json.loads(event["body"])
    event["body"] = json.dumps({**body, "eventId": f"e-{UNIQUE}"})
    return event


def _connect_event(_: Endpoints) -> dict[str, Any]:
    event = _sample("websocket_connect")
    event["queryStringParameters"] = {"token": _token()}
    event["requestContext"]["connectionId"] = f"c{UNIQUE}="
    return event


def _stream_insert(_: Endpoints) -> dict[str, Any]:
    event = _sample("dynamodb_stream_insert")
    event["Records"] = event["Records"][:1]  # one event of feed_42 to its one subscriber
    return event


def _room_change(_: Endpoints) -> dict[str, Any]:
    text = json.dumps(_sample("dynamodb_stream_room_change")).replace("transport#room#R", f"transport#room#r{UNIQUE}")
    event: dict[str, Any] = json.loads(text)
    return event


WORKER_CONNECTIONS = 10


def _shard(_: Endpoints) -> dict[str, Any]:
    """What a fan-out hands one delivery worker: a signed frame for WORKER_CONNECTIONS connections."""
    event = _sample("dynamodb_stream_insert")["Records"][0]["dynamodb"]["NewImage"]["event"]["S"]
    frame = json.dumps({"type": "event", "channel": "feed_42", "event": json.loads(event), "cursor": "c"})
    connections = [f"shard{n}{UNIQUE}=" for n in range(WORKER_CONNECTIONS)]
    return {"frames": [frame], "groups": [{"frames": [0], "connections": connections}]}


def _status(code: int) -> Callable[[Any], bool]:
    return lambda result: isinstance(result, dict) and result.get("statusCode") == code


HANDLERS = [
    Handler("http_api", _publish_event, _status(201)),
    Handler("websocket", _connect_event, _status(200)),
    Handler(
        "fanout",
        _stream_insert,
        lambda result: result == {"batchItemFailures": []},
        baseline_env=lambda requests: {"BASELINE_INDEX_QUERIES": str(requests["dynamodb:Query"])},
    ),
    Handler("rooms_outbox", _room_change, lambda result: result == {"batchItemFailures": []}),
    # A short PRESENCE_SWEEP_SECONDS with 10 s left: one pass, then no room for another.
    Handler(
        "presence_sweeper",
        lambda _: {},
        lambda result: result == {"passes": 1},
        env={"PRESENCE_SWEEP_SECONDS": "5"},
    ),
    Handler(
        "delivery_worker",
        _shard,
        lambda result: isinstance(result, dict) and result.get("delivered") == WORKER_CONNECTIONS,
    ),
]


# --- samples -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    import_s: float
    invoke_s: float
    calls: list[str]
    result: Any
    modules: int

    @property
    def total_s(self) -> float:
        return self.import_s + self.invoke_s


def run_sample(
    where: Endpoints,
    handler: Handler,
    *,
    baseline: dict[str, str] | None = None,
    mode: str = "time",
    flags: tuple[str, ...] = (),
) -> tuple[Sample, str]:
    """One fresh interpreter: import + first invocation of the handler, or of its baseline when
    `baseline` (the baseline's extra environment) is given; and the interpreter's stderr."""
    code_dir = handler.code_dir if baseline is None else handler.baseline_dir
    process = subprocess.run(  # noqa: S603 - our own interpreter on our own code
        [sys.executable, *flags, "-c", DRIVER, str(code_dir), str(where.event_file(handler)), mode, *ABSENT_ON_LAMBDA],
        env=where.environment(handler, baseline),
        cwd=code_dir,
        capture_output=True,
        text=True,
        check=False,
    )
    if process.returncode != 0:
        raise RuntimeError(f"{code_dir} failed ({process.returncode}):\n{process.stderr[-3000:]}")
    data = json.loads(process.stdout.strip().splitlines()[-1])
    return Sample(data["import_s"], data["invoke_s"], data["calls"], data["result"], data["modules"]), process.stderr


def requests_made(where: Endpoints, handler: Handler, *, baseline: dict[str, str] | None = None) -> Counter[str]:
    """The AWS requests of one cold import + first invocation: botocore's and the stub's."""
    before = Counter(where.management.requests)
    sample, _ = run_sample(where, handler, baseline=baseline, mode="audit")
    if not handler.check(sample.result):
        side = "handler" if baseline is None else "baseline"
        raise RuntimeError(f"{handler.name} {side} answered {sample.result!r}")
    stub = Counter(where.management.requests)
    stub.subtract(before)
    # The management API is counted where it arrives (the stub), whoever sends it (boto3 or not).
    return Counter(c for c in sample.calls if not c.startswith("apigatewaymanagementapi:")) + +stub


def self_time_imports(stderr: str, top: int = 8) -> list[tuple[str, float, float]]:
    """(module, self ms, cumulative ms) of the heaviest imports by self time, from -X importtime."""
    rows = []
    for line in stderr.splitlines():
        if line.startswith("import time:") and "cumulative" not in line:
            own, cumulative, name = line.removeprefix("import time:").split("|")
            rows.append((name.strip(), int(own) / 1000, int(cumulative) / 1000))
    return sorted(rows, key=lambda row: -row[1])[:top]


def measure(where: Endpoints, handler: Handler, runs: int) -> dict[str, Any]:
    ours = requests_made(where, handler)
    baseline = handler.baseline_env(ours)
    theirs = requests_made(where, handler, baseline=baseline)
    if ours != theirs:
        raise RuntimeError(f"{handler.name}: the baseline's requests {dict(theirs)} are not the handler's {dict(ours)}")
    pairs: list[tuple[Sample, Sample]] = []
    for _ in range(runs):
        mine, _ = run_sample(where, handler)
        base, _ = run_sample(where, handler, baseline=baseline)
        if not (handler.check(mine.result) and handler.check(base.result)):
            raise RuntimeError(f"{handler.name}: a sample failed: {mine.result!r} / {base.result!r}")
        pairs.append((mine, base))
    return {
        "requests": ours,
        "pairs": pairs,
        "ratio": statistics.median(m.total_s / b.total_s for m, b in pairs),
        "import_ratio": statistics.median(m.import_s / b.import_s for m, b in pairs),
    }


def check_absent_on_lambda() -> None:
    """ABSENT_ON_LAMBDA must stay true: refuse to run if the layer starts shipping one of them."""
    shipped = (REPO / "layers" / "realtime" / "requirements.txt").read_text().lower()
    for name in ABSENT_ON_LAMBDA:
        if name in shipped:
            raise SystemExit(f"{name} is in the layer now: take it out of ABSENT_ON_LAMBDA")


def main() -> None:
    check_absent_on_lambda()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=RUNS, help="alternating pairs per handler")
    parser.add_argument("--only", default="", help="comma-separated functions (default: every handler)")
    args = parser.parse_args()
    chosen = [h for h in HANDLERS if not args.only or h.name in args.only.split(",")]
    for name in unbenched():
        print(f"NOTE: functions/{name} has no first invocation in bench/cold_import.py yet: not measured\n")
    with endpoints() as where:
        for handler in chosen:  # warm the OS file cache and the .pyc files of both sides once
            run_sample(where, handler)
            run_sample(where, handler, baseline=handler.baseline_env(Counter()))
        results = {handler.name: measure(where, handler, args.runs) for handler in chosen}
        print(f"Cold start (import + first invocation), fresh interpreter per sample, {args.runs} alternating pairs")
        print("each; local moto (DynamoDB, Secrets Manager) and a management-API stub; medians in ms\n")
        rows = []
        for name, result in results.items():
            pairs = result["pairs"]
            median = lambda values: statistics.median(values) * 1000  # noqa: E731
            rows.append(
                [
                    name,
                    median(m.import_s for m, _ in pairs),
                    median(m.invoke_s for m, _ in pairs),
                    median(m.total_s for m, _ in pairs),
                    median(b.import_s for _, b in pairs),
                    median(b.invoke_s for _, b in pairs),
                    median(b.total_s for _, b in pairs),
                    f"{result['ratio']:.2f}x",
                    f"{result['import_ratio']:.2f}x",
                ]
            )
        headers = ["handler", "import", "1st call", "total", "boto3 import", "1st call", "total", "ratio"]
        headers.append("import only")
        table(headers, rows)
        print("\nratio: median of the adjacent pairs' (handler total / baseline total)")
        print("\nAWS requests of the first invocation (the same on both sides, checked):")
        for name, result in results.items():
            print(f"  {name}: " + ", ".join(f"{op} x{n}" for op, n in sorted(result["requests"].items())))
        for name, result in results.items():
            if result["ratio"] > GOAL_RATIO:
                handler = next(h for h in chosen if h.name == name)
                _, stderr = run_sample(where, handler, flags=("-X", "importtime"))
                print(f"\n{name}: heaviest imports by self time (-X importtime, one run)\n")
                table(["module", "self ms", "cumulative ms"], self_time_imports(stderr))
        print()
        for name, result in results.items():
            ratio = result["ratio"]
            goal(ratio <= GOAL_RATIO, f"{name} cold start is {ratio:.2f}x its boto3 baseline (<= {GOAL_RATIO})")


def unbenched() -> list[str]:
    """Functions in functions/ this bench has no first invocation for (a new one is named, not skipped quietly)."""
    known = {h.name for h in HANDLERS}
    return sorted(p.name for p in (REPO / "functions").iterdir() if (p / "app.py").exists() and p.name not in known)


if __name__ == "__main__":
    main()
