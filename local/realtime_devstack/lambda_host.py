"""Runs the functions' handlers, unmodified, the way Lambda does.

Each concurrent invocation gets its own *sandbox*: a separate import of the function's module (its
own globals, as in a separate Lambda execution environment) with its own thread, taken from a pool
that grows on demand up to the concurrency limit. Handlers are synchronous and run on their
sandbox's thread, off the event loop.

Each function's ``Timeout`` is enforced. The context's ``get_remaining_time_in_millis()`` counts
down from it, from the moment the handler is called. An invocation still running at its deadline
fails for its caller with :class:`FunctionTimedOut` (what Lambda reports as ``Sandbox.Timedout``),
and its sandbox is discarded: the next invocation imports the module afresh, as Lambda "resets the
execution environment" after a timeout. A Python thread cannot be killed, so the timed-out
handler goes on running in the background, but every AWS request it (or work it handed to a thread
pool) makes after its deadline raises :class:`SandboxTimedOut`, a ``BaseException`` that no
``except Exception`` swallows: it can write nothing more through botocore.

The sandboxes of a function share the imported libraries, so state a library keeps on a class
would leak between concurrent invocations that Lambda keeps apart; Powertools' resolver does that,
and :func:`isolate_powertools_routers` keeps it per sandbox thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import importlib.util
import itertools
import logging
import queue
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from . import faithful
from .template import DEFAULT_FUNCTION_TIMEOUT_SECONDS

_T = TypeVar("_T")
REPO_ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS_DIR = REPO_ROOT / "functions"

# "Understanding the Lambda execution environment lifecycle": the Init phase is limited to 10 s.
INIT_TIMEOUT_SECONDS = 10.0

log = logging.getLogger("realtime_devstack.lambda")

# The deadline (time.monotonic()) of the invocation this code runs for, if any.
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("lambda_deadline", default=None)


class FunctionTimedOut(Exception):
    """An invocation outran its function's Timeout: what its caller gets (a function error)."""

    error_type = "Sandbox.Timedout"

    def __init__(self, function: str, request_id: str, timeout_s: float) -> None:
        super().__init__(f"RequestId: {request_id} Error: Task timed out after {timeout_s:.2f} seconds ({function})")
        self.function = function
        self.request_id = request_id
        self.timeout_s = timeout_s


class IntegrationTimedOut(Exception):
    """API Gateway stopped waiting for the function (its integration timeout) before the function ended."""


class SandboxTimedOut(BaseException):
    """An AWS request from an invocation past its deadline: its sandbox is being reset.

    A ``BaseException``, so that handler code catching ``Exception`` cannot carry on as if a
    write had merely failed.
    """


@dataclass
class LambdaContext:
    """The attributes of Lambda's context object that handlers and Powertools read."""

    function_name: str
    memory_limit_in_mb: int = 512
    function_version: str = "$LATEST"
    log_group_name: str = "/aws/lambda/local"
    log_stream_name: str = "local"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    timeout_ms: int = DEFAULT_FUNCTION_TIMEOUT_SECONDS * 1000  # the function's Timeout
    started_at: float = field(default_factory=time.monotonic)  # when the handler was called

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:us-east-1:123456789012:function:{self.function_name}"

    @property
    def deadline(self) -> float:
        return self.started_at + self.timeout_ms / 1000

    def get_remaining_time_in_millis(self) -> int:
        # "Using the Lambda context object" (Python): the milliseconds left before the execution times out.
        return max(0, int((self.deadline - time.monotonic()) * 1000))


def _drop_disabled_metrics() -> None:
    """Powertools keeps metrics it was told not to print (POWERTOOLS_METRICS_DISABLED): in a
    long-running process that set only grows, so drop it after each invocation."""
    from aws_lambda_powertools.metrics.functions import is_metrics_disabled

    if is_metrics_disabled():
        from aws_lambda_powertools import Metrics

        Metrics().clear_metrics()


# --- the deadline guard on every botocore request --------------------------------------------

_GUARD_LOCK = threading.Lock()
_GUARD_MARK = "_realtime_devstack_deadline_guard"


def install_deadline_guard() -> None:
    """Make botocore refuse requests from an invocation past its deadline (idempotent).

    Checked in ``Endpoint.create_request``, which botocore calls for every attempt (its own
    retries included) before anything is sent, in moto's in-process mock as over HTTP. Work a
    handler submits to a ``ThreadPoolExecutor`` carries the handler's deadline along.
    """
    from botocore.endpoint import Endpoint

    with _GUARD_LOCK:
        if getattr(Endpoint, _GUARD_MARK, False):
            return
        create_request = Endpoint.create_request

        def guarded_create_request(self: Any, params: Any, operation_model: Any = None) -> Any:
            deadline = _DEADLINE.get()
            if deadline is not None and time.monotonic() >= deadline:
                name = getattr(operation_model, "name", "request")
                raise SandboxTimedOut(f"{name} refused: the invocation timed out and its sandbox is being reset")
            return create_request(self, params, operation_model)

        setattr(Endpoint, "create_request", guarded_create_request)  # noqa: B010
        submit = concurrent.futures.ThreadPoolExecutor.submit

        def submit_in_context(self: Any, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
            if _DEADLINE.get() is None:
                return submit(self, fn, *args, **kwargs)
            return submit(self, contextvars.copy_context().run, fn, *args, **kwargs)

        setattr(concurrent.futures.ThreadPoolExecutor, "submit", submit_in_context)  # noqa: B010
        setattr(Endpoint, _GUARD_MARK, True)


class _PerThread:
    """A class attribute whose value belongs to the thread that set it (read on the class or an instance)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._local = threading.local()

    def __get__(self, obj: Any, owner: Any = None) -> Any:
        try:
            return self._local.value
        except AttributeError:
            raise AttributeError(self._name) from None

    def __set__(self, obj: Any, value: Any) -> None:
        self._local.value = value

    def __delete__(self, obj: Any) -> None:
        self._local.__dict__.pop("value", None)


_ROUTER_STATE = ("current_event", "lambda_context")
_ISOLATED_MARK = "_realtime_devstack_per_thread"


def isolate_powertools_routers() -> None:
    """Give every sandbox thread its own Powertools resolver state (idempotent).

    Powertools' event handler keeps the event being resolved on the router *class*
    (``BaseRouter.current_event = ...``, and ``lambda_context``), which is sound on Lambda, where an
    execution environment runs one invocation at a time. Here the sandboxes of one function are
    threads of one process sharing the imported Powertools module, so two concurrent invocations
    would read each other's event: one request validated against another's body and headers,
    ``Authorization`` included. A data descriptor on the class (for instance access) and on its
    metaclass (for the class-level assignments Powertools makes) keeps that state per thread.
    """
    from aws_lambda_powertools.event_handler.api_gateway import BaseRouter

    with _GUARD_LOCK:
        if getattr(type(BaseRouter), _ISOLATED_MARK, False):
            return
        descriptors = {name: _PerThread(name) for name in _ROUTER_STATE}
        for name, descriptor in descriptors.items():
            type.__setattr__(BaseRouter, name, descriptor)
        meta = type("PerThreadRouterMeta", (type(BaseRouter),), {**descriptors, _ISOLATED_MARK: True})
        BaseRouter.__class__ = meta  # type: ignore[method-assign]  # a class, not a method: its metaclass


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def _wait(future: concurrent.futures.Future[_T], timeout: float) -> _T:
    """Wait up to ``timeout`` for a sandbox's future without cancelling it (the sandbox sets it)."""
    wrapped = asyncio.wrap_future(future)
    wrapped.add_done_callback(_retrieve)  # nobody may be waiting for it any more
    return await asyncio.wait_for(asyncio.shield(wrapped), max(0.0, timeout))


# --- sandboxes and invocations -----------------------------------------------------------------


@dataclass
class _Invocation:
    event: dict[str, Any]
    started: concurrent.futures.Future[LambdaContext] = field(default_factory=concurrent.futures.Future)
    done: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)
    abandoned: bool = False  # the caller gave up (timeout): the sandbox is not reused
    slot_released: bool = False


class _Sandbox:
    """One execution environment: a module instance and the thread its invocations run on."""

    def __init__(self, host: FunctionHost, number: int) -> None:
        self.host = host
        self.handler: Callable[[dict[str, Any], LambdaContext], Any] | None = None
        self.inbox: queue.SimpleQueue[_Invocation | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name=f"lambda-{host.name}-{number}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            invocation = self.inbox.get()
            if invocation is None:
                return
            self.host._run(self, invocation)

    def retire(self) -> None:
        self.inbox.put(None)


class FunctionHost:
    """A pool of sandboxes of one function, invoked from asyncio or from a thread."""

    _counter = itertools.count()

    def __init__(
        self,
        name: str,
        code_dir: Path,
        handler: str = "app.lambda_handler",
        max_concurrency: int = 16,
        *,
        timeout: float = DEFAULT_FUNCTION_TIMEOUT_SECONDS,
        memory: int = 512,
    ) -> None:
        self.name = name
        self.code_dir = code_dir
        self.module_file, self.handler_name = handler.rsplit(".", 1)
        self.timeout = float(timeout)  # seconds, the function's Timeout
        self.memory = memory
        # API Gateway's own limit on waiting for the function (None: the caller waits for the function).
        self.integration_timeout: float | None = None
        self.integration_timeout_response: dict[str, Any] | None = None  # None: raise IntegrationTimedOut
        self._idle: list[_Sandbox] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._closed = False
        self.invocations = 0
        self.timeouts = 0
        self.cold_starts = 0
        install_deadline_guard()
        isolate_powertools_routers()

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
        self.cold_starts += 1
        return getattr(module, self.handler_name)

    # --- dispatch --------------------------------------------------------------------------

    def _dispatch(self, event: dict[str, Any]) -> _Invocation:
        """Hand the event to an idle sandbox (or a new one); a concurrency slot is already held."""
        invocation = _Invocation(event)
        with self._lock:
            sandbox = self._idle.pop() if self._idle else None
            self.invocations += 1
        if sandbox is None:
            sandbox = _Sandbox(self, next(self._counter))
        sandbox.inbox.put(invocation)
        return invocation

    def _run(self, sandbox: _Sandbox, invocation: _Invocation) -> None:
        """On the sandbox's thread: cold start if needed, then the handler against its deadline."""
        try:
            if sandbox.handler is None:
                sandbox.handler = self._new_instance()
        except BaseException as exc:  # an init error: the sandbox is not kept
            invocation.started.set_exception(exc)
            self._finish(sandbox, invocation, reuse=False)
            return
        context = LambdaContext(function_name=self.name, memory_limit_in_mb=self.memory, timeout_ms=self._timeout_ms)
        token = _DEADLINE.set(context.deadline)
        invocation.started.set_result(context)
        try:
            invocation.done.set_result(sandbox.handler(invocation.event, context))
        except BaseException as exc:
            invocation.done.set_exception(exc)
        finally:
            _DEADLINE.reset(token)
            try:
                _drop_disabled_metrics()
            finally:
                self._finish(sandbox, invocation, reuse=True)

    @property
    def _timeout_ms(self) -> int:
        return max(1, int(self.timeout * 1000))

    def _finish(self, sandbox: _Sandbox, invocation: _Invocation, *, reuse: bool) -> None:
        with self._lock:
            keep = reuse and not invocation.abandoned and not self._closed
            if keep:
                self._idle.append(sandbox)
            release = not invocation.slot_released
            invocation.slot_released = True
        if not keep:
            sandbox.retire()
        if release:
            self._slots.release()

    def _abandon(self, invocation: _Invocation, context: LambdaContext | None) -> FunctionTimedOut:
        """The caller stops waiting: the sandbox will be discarded and its slot is free now."""
        with self._lock:
            invocation.abandoned = True
            release = not invocation.slot_released
            invocation.slot_released = True
            self.timeouts += 1
        if release:
            self._slots.release()
        faithful.record(f"timeout:{self.name}")
        request_id = context.aws_request_id if context is not None else "init"
        log.warning("%s: invocation %s timed out after %.2f s", self.name, request_id, self.timeout)
        return FunctionTimedOut(self.name, request_id, self.timeout)

    # --- the two ways in -------------------------------------------------------------------

    def invoke_sync(self, event: dict[str, Any]) -> Any:
        """Invoke and wait (from a thread); raises FunctionTimedOut past the function's Timeout."""
        self._slots.acquire()
        invocation = self._dispatch(event)
        try:
            context = invocation.started.result(timeout=INIT_TIMEOUT_SECONDS + self.timeout)
        except concurrent.futures.TimeoutError:
            raise self._abandon(invocation, None) from None
        try:
            return invocation.done.result(timeout=max(0.0, context.deadline - time.monotonic()))
        except concurrent.futures.TimeoutError:
            raise self._abandon(invocation, context) from None

    async def invoke(self, event: dict[str, Any]) -> Any:
        """Invoke from asyncio (API Gateway). Past the integration timeout, if shorter than the
        function's, answer ``integration_timeout_response`` while the function runs on."""
        if not self._slots.acquire(blocking=False):
            await asyncio.to_thread(self._slots.acquire)
        invocation = self._dispatch(event)
        gateway_deadline = None if self.integration_timeout is None else time.monotonic() + self.integration_timeout
        try:
            context = await _wait(invocation.started, INIT_TIMEOUT_SECONDS + self.timeout)
        except TimeoutError:
            raise self._abandon(invocation, None) from None
        deadline = context.deadline
        if gateway_deadline is not None and gateway_deadline < deadline:
            try:
                return await _wait(invocation.done, gateway_deadline - time.monotonic())
            except TimeoutError:
                log.warning("%s: API Gateway stopped waiting after %g s", self.name, self.integration_timeout)
                asyncio.get_running_loop().call_later(
                    max(0.0, deadline - time.monotonic()), self._abandon_if_running, invocation, context
                )
                if self.integration_timeout_response is not None:
                    return dict(self.integration_timeout_response)
                raise IntegrationTimedOut(f"{self.name}: no answer within {self.integration_timeout} s") from None
        try:
            return await _wait(invocation.done, deadline - time.monotonic())
        except TimeoutError:
            raise self._abandon(invocation, context) from None

    def _abandon_if_running(self, invocation: _Invocation, context: LambdaContext) -> None:
        """API Gateway gave up first; at the function's own deadline, Lambda does too."""
        if not invocation.done.done():
            self._abandon(invocation, context)

    def warm(self) -> None:
        """Load one sandbox now, so the first request does not pay the cold start."""
        sandbox = _Sandbox(self, next(self._counter))
        sandbox.handler = self._new_instance()
        with self._lock:
            self._idle.append(sandbox)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for sandbox in idle:
            sandbox.retire()
