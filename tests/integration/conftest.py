"""The local stack as a real process, talked to over real sockets."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from realtime_devstack import process
from realtime_devstack.process import StackProcess

Stack = StackProcess


def start_stack(*args: str) -> Stack:
    return process.start(*args)


def stop_stack(stack: Stack) -> int:
    return stack.stop()


# The fan-out finds subscribers through the connections table's index, which lags behind writes
# on AWS (faithful: 100 ms). A test that needs the live path to see a subscription from the next
# event on waits this long after `subscribed`; real clients ping and catch up on the heads instead.
INDEX_LAG_SECONDS = 0.3


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    # Faithful: transaction conflicts, index lag, late TTL and request jitter, as AWS has them.
    running = start_stack("--history-limit", "50", "--faithful")
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
