"""Delivery workers: one shard of a large fan-out, delivered by its own Lambda invocation.

Why synchronous invocations (`RequestResponse`), all shards at once, the coordinator (the stream
handler) waiting for every one before it returns:

* order across batches: Lambda hands a stream shard its next batch only after this invocation
  returns, and DynamoDB Streams order records per item (our partition key is the channel), so a
  connection's frames of batch n+1 leave only after all of batch n. Asynchronous invocation
  (`Event`) or SQS would let shards of consecutive batches overtake each other (unless SQS FIFO
  with a message group per connection shard, a queue hop and its latency on every event);
* exact retries: a worker that fails (an error, a timeout, a `FunctionError`, an answer that is
  not a `ShardResult`) is invoked once more for that shard's connections only, so nobody outside
  it gets an event twice; its own connections may get a repeat, which clients drop by seq. A
  shard that fails again is given up like an unreachable connection (metric, log; its clients
  fill the gap from history by the pong heads), never the whole stream batch (everyone would get
  the events twice);
* no dead-letter queue for the worker: Lambda's DLQs and on-failure destinations apply to
  asynchronous invocations only ("Lambda function dead-letter queues", "Capturing records of
  Lambda asynchronous invocations"); the stream's own on-failure queue stays.

Two kinds of request. A `ShardRequest` names its connections (the coordinator read them, or
had them cached). A `ReadRequest` ("read and deliver") names index units instead, a bucket of
the `by-channel` index or a connectionId range of one (`shards.id_ranges`), for a large channel
whose cache is stale: the worker queries them (paged), applies the coordinator's token rule
(hint expired or absent: a consistent GetItem of the connection item; expired: `token_expired`
and DELETE; unreadable: neither), delivers, and answers what it read (ids and hints) so the
coordinator caches it and the next batch is warm. So a cold read of 100,000 entries (~32 us of
CPU each, botocore's parse) is spread over the workers instead of one core. A failed
ReadRequest is retried once for its units only, exactly like a shard.

Payloads: "Invoke" (Lambda API reference) and "Lambda quotas" limit a synchronous invocation's
request and response to 6 MB each (1 MB for asynchronous ones).
A ShardRequest carries the shard's connection ids and its frames (already built and signed: the
worker holds no secret); frames are split over consecutive invocations of the same shard when
they would pass `MAX_PAYLOAD_BYTES` (well below 6 MB), the next part sent only after the last
returned, so order holds within a batch too. A ReadRequest carries its first part of the frames;
the rest follow as ShardRequests to the connections it found, in order.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import tokens
from .errors import RealtimeError, StoreUnavailable
from .models.websocket import TOKEN_EXPIRED, ErrorMessage

if TYPE_CHECKING:
    from .connections import Connection, ConnectionStore
    from .fanout import Deliverer

# Of Lambda's 6 MB synchronous payload, what one request may use (the JSON escaping of frames
# included): room for the ids and the envelope of the request itself.
MAX_PAYLOAD_BYTES = 4_000_000
# Of the worker's remaining time, what delivery may use (as `fanout.DELIVERY_SHARE`).
WORKER_DELIVERY_SHARE = 0.8
_Result = TypeVar("_Result", bound="ShardResult")


# What a connection whose token ran out reads before it is closed (the coordinator's and the worker's).
EXPIRED_FRAME = (
    ErrorMessage(code=TOKEN_EXPIRED, message="token has expired; renew it (auth) or reconnect with a new one")
    .model_dump_json(exclude_none=True)
    .encode()
)
# Entries a ReadRequest's answer carries back at most (~30 bytes each, far below 6 MB); past it
# (a bucket the counts badly underestimated) the coordinator just does not cache that read.
MAX_ENTRIES = 60_000


def token_expired(exp: int, now: float) -> bool:
    """The tokens module's own test (its leeway included), for an expiry read from the table."""
    return tokens.Claims(sub="-", exp=exp, channels=()).expired(now)


class ShardGroup(BaseModel):
    """Connections that get the same frames, in this order (indexes into `ShardRequest.frames`)."""

    model_config = ConfigDict(extra="forbid")

    frames: list[int] = Field(min_length=1)
    connections: list[str] = Field(min_length=1)


class ShardRequest(BaseModel):
    """What the coordinator sends one delivery worker."""

    model_config = ConfigDict(extra="forbid")

    frames: list[str] = Field(min_length=1)  # the distinct frames (JSON text, built and signed)
    groups: list[ShardGroup] = Field(min_length=1)
    # Epoch ms by which the worker must stop sending (the coordinator's own delivery deadline).
    deadline_ms: int | None = None

    def plan(self) -> dict[str, list[bytes]]:
        encoded = [frame.encode() for frame in self.frames]
        plan: dict[str, list[bytes]] = {}
        for group in self.groups:
            frames = [encoded[i] for i in group.frames]
            for connection_id in group.connections:
                plan[connection_id] = frames
        return plan


class ShardResult(BaseModel):
    """What a delivery worker answers."""

    model_config = ConfigDict(extra="forbid")

    delivered: int = Field(ge=0)
    gone: list[str] = Field(default_factory=list)
    failed: dict[str, str] = Field(default_factory=dict)  # connection -> reason
    skipped: int = 0
    requests: int = 0
    retries: int = 0
    throttled: int = 0  # answers 429 (the account's API Gateway throttle)
    elapsed_ms: float = 0.0


class ReadUnit(BaseModel):
    """One `by-channel` partition key value, or its connectionIds in [lo, hi) (None: unbounded)."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1)
    lo: str | None = None
    hi: str | None = None


class ReadRequest(BaseModel):
    """Read these units of one channel and deliver its frames to everyone found."""

    model_config = ConfigDict(extra="forbid")

    units: list[ReadUnit] = Field(min_length=1)
    frames: list[str] = Field(min_length=1)  # the channel's frames of this batch (or their first part)
    deadline_ms: int | None = None
    page_size: int = Field(1000, ge=1, le=10_000)


class ReadResult(ShardResult):
    """A ShardResult plus what the worker read and decided about tokens."""

    # Per unit, in the request's order: [connectionId, tokenExp hint] (a renewed token's new
    # expiry); None: too many to carry back.
    entries: list[list[tuple[str, int | None]]] | None = None
    expired: list[str] = Field(default_factory=list)  # sent token_expired, then DELETE
    renewed: list[str] = Field(default_factory=list)
    unconfirmed: list[str] = Field(default_factory=list)  # connection item unreadable: not delivered
    closed: list[str] = Field(default_factory=list)
    close_failed: dict[str, str] = Field(default_factory=dict)


class ShardFailed(RealtimeError):
    """The worker's invocation failed as a whole (error, timeout, FunctionError, a bad answer)."""

    code = "shard_failed"


class ShardInvoker(Protocol):
    def invoke(self, request: ShardRequest) -> ShardResult: ...

    def invoke_read(self, request: ReadRequest) -> ReadResult: ...


def build_requests(
    plan: Mapping[str, Sequence[bytes]], deadline_ms: int | None, max_bytes: int = MAX_PAYLOAD_BYTES
) -> list[ShardRequest]:
    """One shard's plan as requests to send one after another (one, unless its frames are too big)."""
    # Connections sharing one frame sequence travel as one group (one channel: one group).
    by_frames: dict[tuple[bytes, ...], list[str]] = {}
    for connection_id, frames in plan.items():
        by_frames.setdefault(tuple(frames), []).append(connection_id)
    ids_bytes = sum(len(json.dumps(c)) + 1 for c in plan)
    budget = max(1, max_bytes - ids_bytes - 1024)
    # Parts: each group's frame sequence cut where the running size passes the budget.
    parts: list[dict[tuple[bytes, ...], list[str]]] = []
    for frames, connections in by_frames.items():
        part_no, size, start = 0, 0, 0
        for end, frame in enumerate(frames):
            cost = len(json.dumps(frame.decode())) + 1
            if end > start and size + cost > budget:
                _part(parts, part_no)[frames[start:end]] = connections
                part_no, size, start = part_no + 1, 0, end
            size += cost
        _part(parts, part_no)[frames[start:]] = connections
    requests: list[ShardRequest] = []
    for part in parts:
        distinct: dict[bytes, int] = {}
        groups: list[ShardGroup] = []
        for frames, connections in part.items():
            indexes = [distinct.setdefault(frame, len(distinct)) for frame in frames]
            groups.append(ShardGroup(frames=indexes, connections=connections))
        requests.append(ShardRequest(frames=[f.decode() for f in distinct], groups=groups, deadline_ms=deadline_ms))
    return requests


def _part(parts: list[dict[tuple[bytes, ...], list[str]]], number: int) -> dict[tuple[bytes, ...], list[str]]:
    while len(parts) <= number:
        parts.append({})
    return parts[number]


def deliver_shard(
    pusher: Deliverer, request: ShardRequest, *, remaining_ms: int | None, clock: Callable[[], float] = time.time
) -> ShardResult:
    """The worker's work: send the shard's frames within the tighter of both deadlines."""
    budgets: list[float] = []
    if remaining_ms is not None:
        budgets.append(remaining_ms / 1000 * WORKER_DELIVERY_SHARE)
    if request.deadline_ms is not None:
        budgets.append(request.deadline_ms / 1000 - clock())
    budget = max(0.0, min(budgets)) if budgets else None
    plan = request.plan()
    report = pusher.send_many(plan, budget_s=budget)
    return ShardResult(
        delivered=report.delivered,
        gone=report.gone,
        failed={c: report.errors.get(c, "failed") for c in report.failed},
        skipped=report.skipped,
        requests=report.requests,
        retries=report.retries,
        throttled=report.throttled,
        elapsed_ms=report.elapsed_ms,
    )


_readers: ThreadPoolExecutor | None = None
_readers_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _readers
    with _readers_lock:
        if _readers is None:
            _readers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="worker-read")
        return _readers


def read_and_deliver(
    pusher: Deliverer,
    store: ConnectionStore,
    request: ReadRequest,
    *,
    remaining_ms: int | None,
    clock: Callable[[], float] = time.time,
) -> ReadResult:
    """The worker's read-and-deliver: its units read (side by side, each paged), the token rule,
    its frames sent, the expired closed. A unit that cannot be read fails the whole request
    (StoreUnavailable propagates: a FunctionError, so the coordinator retries it once)."""
    started = clock()
    budgets: list[float] = []
    if remaining_ms is not None:
        budgets.append(remaining_ms / 1000 * WORKER_DELIVERY_SHARE)
    if request.deadline_ms is not None:
        budgets.append(request.deadline_ms / 1000 - clock())

    def budget() -> float | None:
        return max(0.0, min(budgets) - (clock() - started)) if budgets else None

    def read(unit: ReadUnit) -> list[tuple[str, int | None]]:
        return [
            (e.connection_id, e.token_exp)
            for page in store.range_entries(unit.key, unit.lo, unit.hi, request.page_size)
            for e in page
        ]

    pool = _pool()
    per_unit = list(pool.map(read, request.units))
    hints: dict[str, int | None] = {}
    for entries in per_unit:
        for connection_id, exp in entries:
            hints.setdefault(connection_id, exp)
    now = clock()
    suspects = [c for c, exp in hints.items() if exp is None or token_expired(exp, now)]

    def confirm(connection_id: str) -> Connection | None | StoreUnavailable:
        try:
            return store.connection(connection_id)
        except StoreUnavailable as exc:
            return exc

    expired: list[str] = []
    renewed: dict[str, int] = {}
    unconfirmed: list[str] = []
    for connection_id, found in zip(suspects, pool.map(confirm, suspects), strict=True):
        if isinstance(found, StoreUnavailable):
            unconfirmed.append(connection_id)
        elif found is None or token_expired(found.token_expires_at, now):
            expired.append(connection_id)  # no connection item: nothing could be authorised on it again
        else:
            renewed[connection_id] = found.token_expires_at
    excluded = set(expired) | set(unconfirmed)
    frames = [frame.encode() for frame in request.frames]
    plan = {c: frames for c in hints if c not in excluded}
    report = pusher.send_many(plan, budget_s=budget())
    closing = pusher.disconnect_many(dict.fromkeys(expired, EXPIRED_FRAME), budget_s=budget()) if expired else None
    total = sum(len(entries) for entries in per_unit)
    return ReadResult(
        delivered=report.delivered,
        gone=[*report.gone, *(closing.gone if closing else [])],
        failed={c: report.errors.get(c, "failed") for c in report.failed},
        skipped=report.skipped,
        requests=report.requests,
        retries=report.retries,
        throttled=report.throttled,
        elapsed_ms=(clock() - started) * 1000,
        entries=(
            None if total > MAX_ENTRIES else [[(c, renewed.get(c, exp)) for c, exp in entries] for entries in per_unit]
        ),
        expired=expired,
        renewed=list(renewed),
        unconfirmed=unconfirmed,
        closed=closing.closed if closing else [],
        close_failed={c: closing.errors.get(c, "failed") for c in closing.failed} if closing else {},
    )


class LambdaInvoker:
    """Invokes the `DeliveryWorkerFunction` synchronously (`RequestResponse`)."""

    def __init__(self, function_name: str, *, read_timeout_s: float, client: Any = None) -> None:
        self.function_name = function_name
        self._read_timeout_s = read_timeout_s
        self._client = client
        self._lock = threading.Lock()

    def _lambda(self) -> Any:
        # Made at the first large channel, not at import: most instances never shard.
        with self._lock:
            if self._client is None:
                from botocore.config import Config

                from .clients import session

                # No botocore retries: a retried Invoke after a read timeout would run the shard
                # twice beside the one the coordinator itself retries. The read timeout outlasts
                # the worker's own Timeout, so a hung worker is reported by Lambda, not guessed.
                config = Config(
                    retries={"max_attempts": 1, "mode": "standard"},
                    read_timeout=self._read_timeout_s,
                    connect_timeout=2,
                    max_pool_connections=128,
                )
                self._client = session().client("lambda", config=config)
            return self._client

    def invoke(self, request: ShardRequest) -> ShardResult:
        return self._invoke(request, ShardResult)

    def invoke_read(self, request: ReadRequest) -> ReadResult:
        return self._invoke(request, ReadResult)

    def _invoke(self, request: BaseModel, answer: type[_Result]) -> _Result:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self._lambda().invoke(
                FunctionName=self.function_name,
                InvocationType="RequestResponse",
                Payload=request.model_dump_json(exclude_none=True).encode(),
            )
            payload = response["Payload"].read()
        except (ClientError, BotoCoreError) as exc:
            raise ShardFailed(f"invoke {self.function_name}: {exc}") from exc
        if response.get("FunctionError"):
            # "Invoke" (Lambda API reference): the error is in the payload, the header names its kind.
            raise ShardFailed(f"{self.function_name}: {response['FunctionError']}: {payload[:300]!r}")
        try:
            return answer.model_validate_json(payload)
        except ValidationError as exc:
            raise ShardFailed(f"{self.function_name}: not a shard result: {exc.errors()[:1]}") from exc
