"""`realtime-transport publish` and `tail` against the local stack, as separate processes."""

from __future__ import annotations

import json
import selectors
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest

from .conftest import Http, Stack

pytestmark = pytest.mark.integration


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "realtime_devstack.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def start_tail(stack: Stack, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "realtime_devstack.cli", "tail", "--url", stack.ws_url, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_lines(process: subprocess.Popen[str], count: int, timeout: float = 30) -> list[dict[str, Any]]:
    """Up to `count` JSON lines, never blocking past the deadline."""
    assert process.stdout is not None
    lines: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while len(lines) < count and time.monotonic() < deadline:
            if selector.select(timeout=max(0.0, deadline - time.monotonic())):
                line = process.stdout.readline()
                if not line:
                    break  # the process exited
                lines.append(json.loads(line))
    return lines


def test_publish_prints_the_stored_event_and_is_idempotent(stack: Stack) -> None:
    feed_id = uuid.uuid4().hex[:8]
    args = ["publish", feed_id, "--type", "order.created", "--payload", '{"total": 3}', "--event-id", "cli-1"]
    first = cli(*args, "--url", stack.url)
    assert first.returncode == 0, first.stdout + first.stderr
    created = json.loads(first.stdout)
    assert created["duplicate"] is False and created["event"]["data"]["payload"] == {"total": 3}
    again = json.loads(cli(*args, "--url", stack.url).stdout)
    assert again["duplicate"] is True and again["event"]["id"] == created["event"]["id"]


def test_publish_reports_errors_with_a_nonzero_exit(stack: Stack) -> None:
    refused = cli("publish", "bad feed", "--type", "t", "--url", stack.url)
    assert refused.returncode == 1 and json.loads(refused.stdout)["error"] == "validation_error"
    bad_json = cli("publish", "f", "--type", "t", "--payload", "{nope", "--url", stack.url)
    assert bad_json.returncode != 0 and "not valid JSON" in bad_json.stderr


def test_tail_prints_events_in_order_and_resumes_after_a_dropped_connection(stack: Stack, http: Http) -> None:
    feed_id = uuid.uuid4().hex[:8]
    channel = f"feed_{feed_id}"
    # Start from the empty channel's cursor: nothing published after it can be missed.
    cursor = http.get(f"/feeds/{feed_id}/events")[1]["nextCursor"]
    tail = start_tail(stack, channel, "--cursor", cursor)
    try:
        for n in range(5):
            http.post(f"/feeds/{feed_id}/events", {"eventId": f"a{n}", "type": "t", "payload": n})
        first = read_lines(tail, 5)
        assert [e["seq"] for e in first] == [1, 2, 3, 4, 5], tail.stderr

        # Drop every live socket from the server side, publish meanwhile, and expect no gap or repeat.
        status, body = http.post("/dev/connections/drop")
        assert status == 200 and body["dropped"] >= 1
        for n in range(5, 12):
            http.post(f"/feeds/{feed_id}/events", {"eventId": f"a{n}", "type": "t", "payload": n})
        rest = read_lines(tail, 7)
        assert [e["seq"] for e in rest] == list(range(6, 13))
        assert [e["data"]["payload"] for e in first + rest] == list(range(12))
    finally:
        tail.terminate()
        tail.wait(timeout=10)
