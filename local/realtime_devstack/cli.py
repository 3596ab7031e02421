"""`realtime-transport`: the local stack and terminal tools."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys


def _dev(args: argparse.Namespace) -> int:
    from .stack import LocalStack, StackOptions

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.INFO if args.verbose else logging.WARNING)  # moto's server
    stack = LocalStack(StackOptions(host=args.host, port=args.port, history_limit=args.history_limit))

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stack.start()
        print("realtime-transport local stack (state in memory; Ctrl-C stops it)", flush=True)
        print(f"  HTTP API:  {stack.url}", flush=True)
        print(f"  OpenAPI:   {stack.url}/openapi.json", flush=True)
        print(f"  DynamoDB:  {stack.dynamodb_url}", flush=True)
        print(f"ready {stack.url}", flush=True)
        try:
            await stop.wait()
        finally:
            print("stopping", flush=True)
            await stack.stop()

    asyncio.run(run())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="realtime-transport", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser("dev", help="run the local stack on loopback (no AWS account needed)")
    dev.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    dev.add_argument("--port", type=int, default=3000, help="port (default 3000; 0 picks a free one)")
    dev.add_argument("--history-limit", type=int, default=None, help="events kept per channel (default 500)")
    dev.add_argument("-v", "--verbose", action="store_true", help="log every request")
    dev.set_defaults(func=_dev)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        return int(args.func(args))
    return 130


if __name__ == "__main__":
    sys.exit(main())
