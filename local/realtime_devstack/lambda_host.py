"""Runs the functions' handlers, unmodified, the way Lambda does.

Each concurrent invocation gets its own *instance*: a separate import of the
function's module (its own globals, as in a separate Lambda sandbox), taken
from a pool that grows on demand up to the concurrency limit. Handlers are
synchronous and run on a thread pool, off the event loop.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS_DIR = REPO_ROOT / "functions"


@dataclass
class LambdaContext:
    """The attributes of Lambda's context object that handlers and Powertools read."""

    function_name: str
    memory_limit_in_mb: int = 512
    function_version: str = "$LATEST"
    log_group_name: str = "/aws/lambda/local"
    log_stream_name: str = "local"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    timeout_ms: int = 30_000

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:us-east-1:123456789012:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return self.timeout_ms


def _drop_disabled_metrics() -> None:
    """Powertools keeps metrics it was told not to print (POWERTOOLS_METRICS_DISABLED): in a
    long-running process that set only grows, so drop it after each invocation."""
    from aws_lambda_powertools.metrics.functions import is_metrics_disabled

    if is_metrics_disabled():
        from aws_lambda_powertools import Metrics

        Metrics().clear_metrics()


class FunctionHost:
    """A pool of instances of one function, invoked from asyncio."""

    _counter = itertools.count()

    def __init__(
        self, name: str, code_dir: Path, handler: str = "app.lambda_handler", max_concurrency: int = 16
    ) -> None:
        self.name = name
        self.code_dir = code_dir
        self.module_file, self.handler_name = handler.rsplit(".", 1)
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._executor = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix=f"lambda-{name}")
        self.invocations = 0

    def _new_instance(self) -> Any:
        # The function's own directory first on the path, as in its Lambda bundle.
        if str(self.code_dir) not in sys.path:
            sys.path.insert(0, str(self.code_dir))
        module_name = f"_lambda_{self.name}_{next(self._counter)}"
        spec = importlib.util.spec_from_file_location(module_name, self.code_dir / f"{self.module_file}.py")
        if spec is None or spec.loader is None:
            raise RuntimeError(f"cannot load {self.code_dir}/{self.module_file}.py")
        module: ModuleType = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return getattr(module, self.handler_name)

    def invoke_sync(self, event: dict[str, Any]) -> Any:
        with self._slots:
            with self._lock:
                handler = self._idle.pop() if self._idle else None
            if handler is None:
                handler = self._new_instance()
            try:
                self.invocations += 1
                return handler(event, LambdaContext(function_name=self.name))
            finally:
                _drop_disabled_metrics()
                with self._lock:
                    self._idle.append(handler)

    async def invoke(self, event: dict[str, Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.invoke_sync, event)

    def warm(self) -> None:
        """Load one instance now, so the first request does not pay the cold start."""
        with self._lock:
            self._idle.append(self._new_instance())

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
