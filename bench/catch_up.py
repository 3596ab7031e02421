"""Catch-up of 500 missed events over the WebSocket, on the local stack (faithful mode when it has one).

A client subscribes with a cursor 500 events behind. Measured: time from the subscribe to its
`subscribed` answer, and the management-API calls it took (each server message is one
PostToConnection, so the messages the client receives are the calls). Side by side: the same
catch-up as it was sent before, one call per event, and a projection of both at API Gateway's
10-20 ms per call against the WebSocket function's 10 s timeout.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request

import websockets
from _common import STACK_SECRET, goal, start_stack, stop_stack, table

from realtime_transport import tokens

EVENTS = 500
PAYLOAD = {"orderId": "o-1234", "status": "packed", "lines": [{"sku": "sku-1", "qty": 2}], "note": "x" * 120}
AWS_MS_PER_CALL = (10, 20)  # PostToConnection latency seen from Lambda
FUNCTION_TIMEOUT_S = 10  # template.yaml: WebSocketFunction Timeout


def _post(url: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(  # noqa: S310 - loopback only
        url, data=json.dumps(body).encode(), method="POST", headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return dict(json.loads(response.read()))


def _get(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - loopback only
        return dict(json.loads(response.read()))


async def _catch_up(ws_url: str, channel: str, cursor: str) -> tuple[float, int, int, int]:
    token = tokens.issue(STACK_SECRET.encode(), sub="bench", channels=["feed_*"])
    async with websockets.connect(f"{ws_url}?token={token}", max_size=None) as ws:
        started = time.perf_counter()
        await ws.send(json.dumps({"action": "subscribe", "channel": channel, "cursor": cursor}))
        messages = received = rounds = 0
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 60))
            messages += 1
            if frame["type"] == "event":
                received += 1
            elif frame["type"] == "events":
                received += len(frame["events"])
            elif frame["type"] == "subscribed":
                rounds += 1
                if not frame.get("hasMore"):
                    return time.perf_counter() - started, messages, received, rounds
                await ws.send(json.dumps({"action": "subscribe", "channel": channel, "cursor": frame["cursor"]}))


def main() -> int:
    help_text = subprocess.run(  # noqa: S603 - our own command
        [sys.executable, "-m", "realtime_devstack.cli", "dev", "--help"], capture_output=True, text=True, check=False
    ).stdout
    faithful = "--faithful" in help_text
    stack = start_stack("--history-limit", str(EVENTS), *(["--faithful"] if faithful else []))
    try:
        feed = f"catchup-{int(time.time())}"
        cursor = str(_get(f"{stack.url}/feeds/{feed}/events")["nextCursor"])  # position 0
        for n in range(EVENTS):
            _post(f"{stack.url}/feeds/{feed}/events", {"eventId": f"e{n}", "type": "order.updated", "payload": PAYLOAD})
        before = stack.stats()["management"]["posts"]
        elapsed, messages, received, rounds = asyncio.run(_catch_up(stack.ws_url, f"feed_{feed}", cursor))
        posts = stack.stats()["management"]["posts"] - before
    finally:
        stop_stack(stack)

    print(f"catch-up of {EVENTS} missed events on the local stack ({'faithful' if faithful else 'plain'} mode)")
    low, high = AWS_MS_PER_CALL
    table(
        ["sent as", "management-API calls", "events per call", f"AWS projection at {low}-{high} ms/call"],
        [
            [
                "packed (now)",
                messages,
                round(received / max(1, messages - rounds), 1),
                f"{messages * low / 1000:.2f}-{messages * high / 1000:.2f} s",
            ],
            [
                "one per event (before)",
                EVENTS + 1,
                1.0,
                f"{(EVENTS + 1) * low / 1000:.2f}-{(EVENTS + 1) * high / 1000:.2f} s",
            ],
        ],
    )
    print(
        f"time to subscribed: {elapsed * 1000:.0f} ms locally, {rounds} subscribe round(s); events received {received}"
    )
    print(f"calls ratio: {(EVENTS + 1) / messages:.1f}x fewer than one per event")
    print(f"the stack's management API counted {posts} PostToConnection calls for it")
    goal(posts == messages, "the calls the stack counted are the messages the client received")
    goal(received == EVENTS, f"every missed event arrived ({received}/{EVENTS})")
    goal(messages * high / 1000 < FUNCTION_TIMEOUT_S / 2, "projected AWS time within half the function's 10 s timeout")
    goal(messages * 10 <= EVENTS, "at least 10x fewer calls than events")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
