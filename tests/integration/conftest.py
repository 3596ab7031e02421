"""The local stack as a real process, talked to over real sockets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

STARTUP_SECONDS = 60


@dataclass
class Stack:
    url: str
    process: subprocess.Popen[str]
    output: list[str]

    def printed(self, label: str) -> str:
        """A URL the stack printed at start-up, e.g. printed("DynamoDB:")."""
        return next(line.split()[1] for line in self.output if line.strip().startswith(label))

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws"


def start_stack(*args: str) -> Stack:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "EVENTS_", "CONNECTIONS_"))}
    process = subprocess.Popen(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "realtime_devstack.cli", "dev", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    output: list[str] = []
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        output.append(line)
        if line.startswith("ready "):
            return Stack(url=line.split()[1], process=process, output=output)
    process.kill()
    raise RuntimeError("local stack did not start:\n" + "".join(output))


def stop_stack(stack: Stack) -> int:
    stack.process.send_signal(signal.SIGINT)
    try:
        return stack.process.wait(timeout=20)
    finally:
        if stack.process.poll() is None:
            stack.process.kill()


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    running = start_stack("--history-limit", "50")
    yield running
    assert stop_stack(running) == 0


class Http:
    """A tiny JSON client over urllib (a real socket per request)."""

    def __init__(self, base: str) -> None:
        self.base = base

    def request(
        self, method: str, path: str, body: Any = None, raw: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(  # noqa: S310 - loopback only
            self.base + path, data=data, method=method, headers={"content-type": "application/json", **(headers or {})}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            payload = error.read()
            return error.code, json.loads(payload) if payload else None

    def post(self, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
        return self.request("POST", path, body, **kwargs)

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)


@pytest.fixture(scope="session")
def http(stack: Stack) -> Http:
    return Http(stack.url)
