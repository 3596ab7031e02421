"""`realtime-transport`: the local stack and terminal tools."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import gc
import ipaddress
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .faithful import Faults


# REALTIME_DEVSTACK_FAITHFUL=1 is --faithful for every `dev` started without it (e.g. a test suite's).
FAITHFUL_ENV = "REALTIME_DEVSTACK_FAITHFUL"


# `--fault disconnect:lost:RATE`: the WebSocket API's $disconnect is lost (it is best effort).
DISCONNECT_FAULT_OPERATIONS = ("disconnect", "$disconnect")


def parse_fault(text: str) -> tuple[str, str, float]:
    """``OP:CODE:RATE`` (``OP`` may be ``*``; ``CODE`` ``lost`` for a lost response) -> its parts.

    ``disconnect:lost:RATE`` (or ``$disconnect:lost:RATE``) is not DynamoDB's: it loses that share
    of the WebSocket API's ``$disconnect`` invocations; its operation comes back as ``disconnect``.
    """
    from .faithful import ERRORS

    parts = text.rsplit(":", 2)
    if len(parts) != 3 or not parts[0]:
        raise argparse.ArgumentTypeError(f"{text!r} is not OP:CODE:RATE (e.g. PutItem:ThrottlingException:0.05)")
    operation, code, rate_text = parts
    if operation in DISCONNECT_FAULT_OPERATIONS:
        if code != "lost":
            raise argparse.ArgumentTypeError(f"{text!r}: a $disconnect can only be lost (disconnect:lost:RATE)")
        operation = "disconnect"
    if code != "lost" and code not in ERRORS:
        raise argparse.ArgumentTypeError(f"unknown error code {code!r}: one of {', '.join(sorted(ERRORS))} or lost")
    try:
        rate = float(rate_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{rate_text!r} is not a rate between 0 and 1") from None
    if not 0 <= rate <= 1:
        raise argparse.ArgumentTypeError(f"{rate_text!r} is not a rate between 0 and 1")
    return operation, code, rate


def faults_from_args(args: argparse.Namespace) -> Faults | None:
    """The ``faithful.Faults`` that --faithful, --fault and --seed ask for (None: the kind substrate)."""
    import copy

    from .faithful import FAITHFUL_DEFAULTS, Faults

    faithful = args.faithful or os.environ.get(FAITHFUL_ENV, "").lower() in ("1", "true", "yes")
    if not (faithful or args.fault or args.seed is not None):
        return None
    faults = copy.deepcopy(FAITHFUL_DEFAULTS) if faithful else Faults()
    faults.seed = args.seed
    for operation, code, rate in args.fault or ():
        if operation == "disconnect":
            faults.disconnect_lost_rate = rate
        elif code == "lost":
            faults.lost_response_rates[operation] = rate
        else:
            faults.error_rates.setdefault(operation, {})[code] = rate
    return faults


def is_loopback(host: str) -> bool:
    """Whether listening on `host` keeps the stack to this machine (a name other than localhost
    may resolve anywhere: it is not taken as loopback)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def port_in_use_message(host: str, port: int) -> str:
    return (
        f"realtime-transport: cannot listen on {host}:{port}: the port is already in use (another "
        "`realtime-transport dev`?). Pick another with --port N (--port 0 takes a free one), "
        'or through make: make dev ARGS="--port 3001"'
    )


def _dev(args: argparse.Namespace) -> int:
    from . import faithful
    from .stack import DEV_SECRET_HEADER, DEV_TOKEN_CHANNELS, DEV_TOKEN_TTL_SECONDS, LocalStack, StackOptions

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.INFO if args.verbose else logging.WARNING)  # moto's server
    if not is_loopback(args.host):
        if not args.unsafe_expose:
            print(
                f"realtime-transport: refusing to listen on {args.host}: it is not a loopback address, and the "
                "local stack has no real authentication (development tokens, the development signing secret, "
                "fake AWS credentials). Use --host 127.0.0.1, or pass --unsafe-expose if you mean every machine "
                "that can reach this one to use it",
                file=sys.stderr,
            )
            return 2
        print(
            f"realtime-transport: warning: listening on {args.host}, not loopback (--unsafe-expose); anyone who "
            "can reach it can publish and subscribe, and whoever reads this output can use /dev/*",
            file=sys.stderr,
        )
    faults = faults_from_args(args)
    try:
        if faults is not None:
            faithful.validate(faults)
    except ValueError as exc:
        print(f"realtime-transport: {exc}", file=sys.stderr)
        return 2
    parameters = {}
    if args.cors_allow_origins is not None:
        parameters["CorsAllowOrigins"] = args.cors_allow_origins
    stack = LocalStack(
        StackOptions(
            host=args.host,
            port=args.port,
            parameters=parameters,
            allow_hosts=tuple(args.allow_host or ()),
            history_limit=args.history_limit,
            require_auth=args.require_auth,
            poll_interval=args.poll_interval_ms / 1000,
            ttl_sweep_interval=args.ttl_sweep_seconds,
            idle_timeout=args.idle_timeout,
            faults=faults,
            history_ttl_seconds=args.history_ttl_seconds,
            writer_timeout_seconds=args.writer_timeout_seconds,
            presence_grace_seconds=args.presence_grace_seconds,
            presence_lease_seconds=args.presence_lease_seconds,
            presence_sweep_seconds=args.presence_sweep_seconds,
            dynamodb_in_process=not args.dynamodb_over_http,
        )
    )

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stack.start()
        except OSError as exc:  # most often: the port is taken
            await stack.stop()
            if exc.errno == errno.EADDRINUSE:
                print(port_in_use_message(args.host, args.port), file=sys.stderr)
            else:
                print(
                    f"realtime-transport: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
                    file=sys.stderr,
                )
            return 1
        # What is loaded by now lives for the whole run: keep it out of the collector's scans,
        # so GC pauses stay short however long the stack runs.
        gc.collect()
        gc.freeze()
        hours = DEV_TOKEN_TTL_SECONDS // 3600
        history = "Bearer token required (--require-auth)" if args.require_auth else "open, as under sam local"
        print("realtime-transport local stack (state in memory; Ctrl-C stops it)", flush=True)
        print(f"  HTTP API:   {stack.url}  (history route: {history})", flush=True)
        print(f"  OpenAPI:    {stack.url}/openapi.json", flush=True)
        if stack.ws_gateway is not None:
            print(f"  WebSocket:  {stack.websocket_url}  (append ?token=<token>)", flush=True)
            print(
                f"  Management: {stack.url}/@connections/{{connectionId}}  (SigV4 with AWS_ACCESS_KEY_ID="
                f"{stack.access_key_id} AWS_SECRET_ACCESS_KEY={stack.secret_access_key})",
                flush=True,
            )
        else:
            print("  WebSocket:  not served (no WebSocket API function code yet; see the warnings above)", flush=True)
        print(f"  Dashboard:  {stack.url}/", flush=True)
        print(f"  DynamoDB:   {stack.dynamodb_url}", flush=True)
        hosts = ", ".join(f"{name}:{stack.port}" for name in sorted(stack.allowed_hosts))
        print(f"  Hosts:      {hosts}  (any other Host header gets a 421; --allow-host adds one)", flush=True)
        cors = stack.cors_configuration()
        print(f"  CORS:       {', '.join(cors.allow_origins) if cors else 'none'}  (CorsAllowOrigins)", flush=True)
        print(
            f"  Dev secret: {stack.dev_secret}  (/dev/* wants it in {DEV_SECRET_HEADER}; the dashboard gets it "
            "as a cookie)",
            flush=True,
        )
        print(f"  Faults:     {faithful.describe(faithful.current())}", flush=True)
        if args.history_ttl_seconds is not None:
            print(
                f"  TTL:        history and idempotency keys expire after {args.history_ttl_seconds:g} s "
                f"(swept every {stack.ttl_sweep_interval:g} s)",
                flush=True,
            )
        for poller in stack.pollers:
            print(f"  Stream:     {poller.stream_arn} -> {poller.mapping.name}", flush=True)
        for timer in stack.schedules:
            print(f"  Schedule:   {timer.schedule['expression']} -> {timer.name} (first run now)", flush=True)
        grace, lease, sweep = stack.presence_settings().values()
        print(f"  Presence:   grace {grace} s, lease {lease} s, sweep every {sweep} s", flush=True)
        print(f"  Dev token ({', '.join(DEV_TOKEN_CHANNELS)}, {hours}h): {stack.dev_token()}", flush=True)
        print(f"ready {stack.url}", flush=True)
        try:
            await stop.wait()
        finally:
            print("stopping", flush=True)
            await stack.stop()
        return 0

    return asyncio.run(run())


def _token(args: argparse.Namespace) -> int:
    from realtime_transport.secrets import DEVELOPMENT_SECRET
    from realtime_transport.tokens import issue

    secret = os.environ.get("REALTIME_TOKEN_SECRET") or DEVELOPMENT_SECRET
    if args.ttl <= 0:
        print("realtime-transport token: --ttl must be a positive number of seconds", file=sys.stderr)
        return 2
    try:
        token = issue(secret.encode(), sub=args.sub, channels=args.channels, ttl_seconds=args.ttl, write=args.write)
    except ValueError as exc:  # whatever the library refuses: said in one line, not a traceback
        print(f"realtime-transport token: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def _pattern(text: str) -> str:
    """A channel pattern for --channels/--write: an empty one would grant nothing (or, worse, be a typo)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("a pattern may not be empty (e.g. --channels 'feed_*')")
    if text != text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} has spaces around it")
    return text


def _publish(args: argparse.Namespace) -> int:
    import json

    from .tools import publish

    try:
        payload = json.loads(args.payload)
    except ValueError as exc:
        raise SystemExit(f"--payload is not valid JSON: {exc}") from exc
    return publish(args.url, args.feed, type=args.type, payload=payload, event_id=args.event_id, source=args.source)


def tail_cursors(channels: list[str], given: list[str]) -> dict[str, str]:
    """``--cursor`` values -> a cursor per channel: ``CHANNEL=CURSOR`` for any channel, or a bare
    ``CURSOR`` when one channel is tailed (cursors never contain ``=``: unpadded base64url)."""
    cursors: dict[str, str] = {}
    for text in given:
        channel, equals, cursor = text.rpartition("=")
        if not equals:
            if len(channels) != 1:
                raise ValueError(f"--cursor {text}: with several channels, say whose: --cursor CHANNEL=CURSOR")
            channel = channels[0]
        if channel not in channels:
            raise ValueError(f"--cursor {text}: {channel!r} is not one of the channels tailed ({', '.join(channels)})")
        if not cursor:
            raise ValueError(f"--cursor {text}: the cursor is empty")
        if channel in cursors:
            raise ValueError(f"--cursor: {channel} is given two cursors")
        cursors[channel] = cursor
    return cursors


def _tail(args: argparse.Namespace) -> int:
    from realtime_transport.secrets import DEVELOPMENT_SECRET
    from realtime_transport.tokens import issue

    from .tools import Tail

    try:
        cursors = tail_cursors(args.channels, args.cursor or [])
    except ValueError as exc:
        print(f"realtime-transport tail: {exc}", file=sys.stderr)
        return 2
    token = args.token or os.environ.get("REALTIME_TOKEN")
    mint: Callable[[], str] | None = None
    if not token:
        if "amazonaws.com" in args.url:
            raise SystemExit("--token (or REALTIME_TOKEN) is required for a deployed stack")
        secret = os.environ.get("REALTIME_TOKEN_SECRET") or DEVELOPMENT_SECRET

        def mint() -> str:  # tail's own token: another one when the server says it expired
            return issue(secret.encode(), sub="tail", channels=args.channels, ttl_seconds=12 * 3600)

        token = mint()
    tail = Tail(args.url, token, args.channels, cursors, sys.stdout, show_cursors=args.cursors, new_token=mint)
    return asyncio.run(tail.run())


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="realtime-transport", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser("dev", help="run the local stack on loopback (no AWS account needed)")
    dev.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1); anything but loopback needs --unsafe-expose",
    )
    dev.add_argument(
        "--unsafe-expose",
        action="store_true",
        help="let --host be an address other machines reach (the stack has development tokens and "
        "fake credentials only: anyone who reaches it can publish and subscribe)",
    )
    dev.add_argument(
        "--allow-host",
        action="append",
        metavar="NAME",
        help="a Host header name to answer besides loopback and --host, e.g. this machine's LAN name "
        "(repeatable); every other Host gets a 421",
    )
    dev.add_argument(
        "--cors-allow-origins",
        default=None,
        metavar="ORIGINS",
        help="the template's CorsAllowOrigins parameter, comma separated (default the template's: '*')",
    )
    dev.add_argument("--port", type=int, default=3000, help="port (default 3000; 0 picks a free one)")
    dev.add_argument("--history-limit", type=int, default=None, help="events kept per channel (default 500)")
    dev.add_argument(
        "--require-auth",
        action="store_true",
        help="the history route demands 'Authorization: Bearer <token>' as deployed "
        "(WebSocket tokens are always checked)",
    )
    dev.add_argument(
        "--poll-interval-ms", type=float, default=50, help="stream poll interval when idle (default 50 ms)"
    )
    dev.add_argument(
        "--ttl-sweep-seconds", type=float, default=30, help="how often expired items are deleted (default 30; 0: never)"
    )
    dev.add_argument(
        "--idle-timeout", type=float, default=600, help="WebSocket idle timeout in seconds (default 600; 0: none)"
    )
    dev.add_argument(
        "--faithful",
        action="store_true",
        help="behave as AWS documents: transaction conflicts, GSI lag, late TTL deletion, request "
        f"jitter (realtime_devstack.faithful.FAITHFUL_DEFAULTS; also {FAITHFUL_ENV}=1)",
    )
    dev.add_argument(
        "--fault",
        action="append",
        type=parse_fault,
        metavar="OP:CODE:RATE",
        help="inject a DynamoDB error, e.g. PutItem:ProvisionedThroughputExceededException:0.05, "
        "'*:InternalServerError:0.01', or OP:lost:RATE for a write applied whose response is lost; "
        "disconnect:lost:RATE loses that share of $disconnect invocations (repeatable)",
    )
    dev.add_argument("--seed", type=int, default=None, help="seed of every injected random choice")
    dev.add_argument(
        "--history-ttl-seconds",
        type=_positive_float,
        default=None,
        help="events and idempotency keys expire after this many seconds (sets HISTORY_TTL_HOURS and "
        "IDEMPOTENCY_TTL_HOURS; the TTL sweeper runs often enough to see it)",
    )
    dev.add_argument(
        "--writer-timeout-seconds",
        type=_positive_float,
        default=None,
        help="WRITER_TIMEOUT_SECONDS, and the HTTP API function's enforced Timeout (kept equal)",
    )
    dev.add_argument(
        "--presence-grace-seconds",
        type=_positive_float,
        default=None,
        help="PRESENCE_GRACE_SECONDS: how long a member whose last connection closed stays listed (default 10)",
    )
    dev.add_argument(
        "--presence-lease-seconds",
        type=_positive_float,
        default=None,
        help="PRESENCE_LEASE_SECONDS: how long a connection in a room may go without a heartbeat (default 30)",
    )
    dev.add_argument(
        "--presence-sweep-seconds",
        type=_positive_float,
        default=None,
        help="PRESENCE_SWEEP_SECONDS: how often the presence sweeper passes within its invocation (default 10)",
    )
    dev.add_argument(
        "--dynamodb-over-http",
        action="store_true",
        help="the stack's own DynamoDB requests go over HTTP to moto's server, as before the in-process "
        "transport (for comparison; about 5 times slower). Other processes always use HTTP",
    )
    dev.add_argument("-v", "--verbose", action="store_true", help="log every request")
    dev.set_defaults(func=_dev)

    token = commands.add_parser(
        "token",
        help="print a subscriber token (signed with REALTIME_TOKEN_SECRET, else the development secret)",
    )
    token.add_argument(
        "--channels",
        action="append",
        required=True,
        type=_pattern,
        metavar="PATTERN",
        help="a channel glob the token allows, e.g. 'feed_*' (repeat for more)",
    )
    token.add_argument(
        "--write",
        action="append",
        default=None,
        type=_pattern,
        metavar="PATTERN",
        help="a room channel glob whose state and metadata the token may change, e.g. 'room_*' (repeat for more)",
    )
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    token.add_argument("--sub", default="developer", help="the token's subject (default 'developer')")
    token.set_defaults(func=_token)

    publish = commands.add_parser(
        "publish", help="publish one event over HTTP (SigV4-signed when the URL is a deployed API)"
    )
    publish.add_argument("feed", help="feed id (the channel is feed_{feed})")
    publish.add_argument("--type", required=True, help="event type, e.g. order.created")
    publish.add_argument("--payload", default="null", help="the payload as JSON (default null)")
    publish.add_argument("--event-id", default=None, help="idempotency key (default: a new UUID)")
    publish.add_argument("--source", default=None, help="metadata.source (default 'api')")
    publish.add_argument("--url", default="http://127.0.0.1:3000", help="HTTP API URL (default the local stack)")
    publish.set_defaults(func=_publish)

    tail = commands.add_parser(
        "tail",
        help="print channels' events in order (JSON lines; a room's own events one readable line each), "
        "resuming after a dropped connection or a restarted stack; exits 2 with the reason when the token, "
        "a channel or a cursor is refused",
    )
    tail.add_argument("channels", nargs="+", metavar="CHANNEL", help="e.g. feed_42")
    tail.add_argument("--url", default="ws://127.0.0.1:3000/ws", help="WebSocket URL (default the local stack)")
    tail.add_argument("--token", default=None, help="subscriber token (default: REALTIME_TOKEN, or a dev token)")
    tail.add_argument(
        "--cursor",
        action="append",
        default=None,
        metavar="[CHANNEL=]CURSOR",
        help="resume a channel after this cursor: CHANNEL=CURSOR (repeatable), or just CURSOR with one channel",
    )
    tail.add_argument(
        "--cursors",
        action="store_true",
        help="print each event's cursor (a JSON line's \"cursor\", a room line's cursor=...) to resume with --cursor",
    )
    tail.set_defaults(func=_tail)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        return int(args.func(args))
    return 130


if __name__ == "__main__":
    sys.exit(main())
