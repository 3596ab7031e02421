"""`realtime-transport dev` as a child process: what the integration tests, browser tests and
benchmarks start, talk to over real sockets, and stop with Ctrl-C (SIGINT).

``start(*args)`` passes its arguments to ``dev``: ``start("--faithful", "--seed", "7")`` for AWS's
failure modes, ``--fault OP:CODE:RATE``, ``--fault disconnect:lost:1.0`` (no ``$disconnect``: a
vanished socket), ``--history-ttl-seconds N``, ``--writer-timeout-seconds N``, and
``--presence-grace-seconds N``, ``--presence-lease-seconds N``, ``--presence-sweep-seconds N``.
``StackProcess.stats()`` reads the stack's counters (management API calls, invocations, timeouts,
stream batches, schedules, ``$disconnect`` invoked and lost, injected faults).

``/dev/*`` needs the stack's per-run secret, which it prints at start (``Dev secret:``):
``StackProcess.dev_secret`` and ``dev_headers`` hold it for any client, and ``start`` teaches
urllib to send it (``X-Devstack-Secret``) on every request to this stack's ``/dev/*``, so a
test's or benchmark's plain ``urllib.request.urlopen(stack.url + "/dev/...")`` keeps working."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

STARTUP_SECONDS = 60
DEV_SECRET_HEADER = "X-Devstack-Secret"  # noqa: S105 - a header name (stack.DEV_SECRET_HEADER; not imported: no aiohttp here)
# Not passed on: the child must reach only its own moto server, never an AWS endpoint.
_WITHHELD_ENV = ("AWS_", "EVENTS_", "CONNECTIONS_")


@dataclass
class StackProcess:
    url: str
    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def printed(self, label: str) -> str:
        """A value the stack printed at start-up, e.g. printed("DynamoDB:") or printed("Dev secret:")."""
        return next(
            line.strip()[len(label) :].split()[0] for line in list(self.output) if line.strip().startswith(label)
        )

    @property
    def dev_secret(self) -> str:
        """The per-run secret /dev/* demands."""
        return self.printed("Dev secret:")

    @property
    def dev_headers(self) -> dict[str, str]:
        """Headers that let a request into /dev/* (for clients other than urllib, e.g. aiohttp)."""
        return {DEV_SECRET_HEADER: self.dev_secret}

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + "/ws"

    def stats(self) -> dict[str, Any]:
        """The stack's counters (``GET /dev/stats``): management API calls and bytes, function
        invocations and timeouts, stream batches, injected faults."""
        request = urllib.request.Request(self.url + "/dev/stats", headers=self.dev_headers)  # noqa: S310 - loopback
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            stats: dict[str, Any] = json.loads(response.read())
        return stats

    def stop(self, timeout: float = 20) -> int:
        """Ctrl-C, as a developer would; the exit code (0 when it stopped cleanly)."""
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            if self.reader is not None:
                self.reader.join(timeout=5)  # its last lines, e.g. "stopping"


def start(*args: str, env: Mapping[str, str] | None = None, echo: bool = False) -> StackProcess:
    """Start the stack on a free loopback port and wait for its `ready URL` line."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(_WITHHELD_ENV)}
    child_env.update(env or {})
    process = subprocess.Popen(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "realtime_devstack.cli", "dev", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=child_env,
    )
    stdout = process.stdout
    if stdout is None:  # pragma: no cover - stdout=PIPE always gives one
        raise RuntimeError("no pipe to the stack's output")
    output: list[str] = []
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        line = stdout.readline()
        if not line:
            break
        output.append(line)
        if line.startswith("ready "):
            running = StackProcess(url=line.split()[1], process=process, output=output)
            _keep_reading(running, echo)
            _DEV_SECRETS.add(running.url, running.dev_secret)
            return running
    process.kill()
    raise RuntimeError("local stack did not start:\n" + "".join(output))


class _DevSecrets(urllib.request.BaseHandler):
    """A urllib handler that adds a started stack's secret to each request for its /dev/*."""

    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}  # stack URL -> its secret
        self.installed = False

    def add(self, url: str, secret: str) -> None:
        self.secrets[url] = secret
        if not self.installed:
            # The process-wide opener urlopen() uses; our handler and urllib's defaults.
            urllib.request.install_opener(urllib.request.build_opener(self))
            self.installed = True

    def http_request(self, request: urllib.request.Request) -> urllib.request.Request:
        for url, secret in self.secrets.items():
            if request.full_url.startswith(url + "/dev/") and not request.has_header(DEV_SECRET_HEADER.capitalize()):
                request.add_unredirected_header(DEV_SECRET_HEADER, secret)
        return request


_DEV_SECRETS = _DevSecrets()


def _keep_reading(running: StackProcess, echo: bool) -> None:
    """Drain the child's output so a chatty stack never blocks on a full pipe."""

    def run() -> None:
        for line in running.process.stdout or ():
            running.output.append(line)
            if echo and not line.startswith("stopping"):
                sys.stderr.write(f"[stack] {line}")

    running.reader = threading.Thread(target=run, daemon=True, name="stack-output")
    running.reader.start()
