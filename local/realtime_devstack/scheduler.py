"""The template's schedules (SAM ``Schedule`` / ``ScheduleV2`` events), run by a timer.

One timer thread per schedule invokes its function at start-up and then every ``rate_seconds``
(the template's ``rate(...)``), the way EventBridge does: asynchronously. Each invocation runs on
a thread of its own, so an invocation still running when the next one is due does not delay it:
EventBridge Scheduler invokes a Lambda target asynchronously ("Manage time-based events with
EventBridge Scheduler in AWS SAM"; the function's concurrency, not the schedule, bounds how many
run at once). The function's ``Timeout`` is the lambda host's to enforce, as for every invocation.

The event is the schedule's ``Input`` (JSON) when it sets one; otherwise, for ``ScheduleV2``, an
empty object, and for ``Schedule`` (an EventBridge rule) the "Scheduled Event" envelope.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .lambda_host import FunctionTimedOut
from .template import Schedule

log = logging.getLogger("realtime_devstack.schedules")


def schedule_event(schedule: Schedule) -> dict[str, Any]:
    """What the function receives for one firing of ``schedule``."""
    if schedule["input"] is not None:
        event = json.loads(schedule["input"])
        return event if isinstance(event, dict) else {"input": event}
    if schedule["type"] == "ScheduleV2":
        return {}
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": "us-east-1",
        "resources": [f"arn:aws:events:us-east-1:123456789012:rule/{schedule['event']}"],
        "detail": {},
    }


class ScheduleTimer:
    """Fires one schedule: now, then every ``interval`` seconds, until ``stop()``."""

    def __init__(
        self, schedule: Schedule, invoke: Callable[[dict[str, Any]], Any], *, interval: float | None = None
    ) -> None:
        self.schedule = schedule
        self.invoke = invoke
        self.interval = float(schedule["rate_seconds"] if interval is None else interval)
        self.stopping = threading.Event()
        self.invocations = 0  # fired
        self.completed = 0  # returned without an error
        self.errors = 0  # raised, or timed out (FunctionTimedOut)
        self.timeouts = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._running: set[threading.Thread] = set()

    @property
    def name(self) -> str:
        return self.schedule["function"]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"schedule-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Fire no more. Invocations still running are the lambda host's (their Timeout ends them)."""
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._running)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self.stopping.is_set():
            self.fire()
            next_at += self.interval
            if self.stopping.wait(max(0.0, next_at - time.monotonic())):
                return

    def fire(self) -> threading.Thread:
        """One asynchronous invocation, on its own thread."""
        with self._lock:
            self.invocations += 1
            number = self.invocations
        thread = threading.Thread(target=self._invoke, name=f"schedule-{self.name}-{number}", daemon=True)
        with self._lock:
            self._running.add(thread)
        thread.start()
        return thread

    def _invoke(self) -> None:
        try:
            self.invoke(schedule_event(self.schedule))
        except FunctionTimedOut as exc:
            with self._lock:
                self.errors += 1
                self.timeouts += 1
            log.warning("%s (schedule %s) timed out: %s", self.name, self.schedule["event"], exc)
        except Exception:
            with self._lock:
                self.errors += 1
            if not self.stopping.is_set():  # a stack shutting down fails its last invocations
                log.exception("%s (schedule %s) failed", self.name, self.schedule["event"])
        else:
            with self._lock:
                self.completed += 1
        finally:
            with self._lock:
                self._running.discard(threading.current_thread())
