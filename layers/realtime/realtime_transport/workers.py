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

Payloads: "Invoke" (Lambda API reference) and "Lambda quotas" limit a synchronous invocation's
request and response to 6 MB each (1 MB for asynchronous ones).
A request carries the shard's connection ids and its frames (already built and signed: the
worker reads no table and holds no secret); frames are split over consecutive invocations of
the same shard when they would pass `MAX_PAYLOAD_BYTES` (well below 6 MB), the next part sent
only after the last returned, so order holds within a batch too.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import RealtimeError

if TYPE_CHECKING:
    from .fanout import Deliverer

# Of Lambda's 6 MB synchronous payload, what one request may use (the JSON escaping of frames
# included): room for the ids and the envelope of the request itself.
MAX_PAYLOAD_BYTES = 4_000_000
# Of the worker's remaining time, what delivery may use (as `fanout.DELIVERY_SHARE`).
WORKER_DELIVERY_SHARE = 0.8


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


class ShardFailed(RealtimeError):
    """The worker's invocation failed as a whole (error, timeout, FunctionError, a bad answer)."""

    code = "shard_failed"


class ShardInvoker(Protocol):
    def invoke(self, request: ShardRequest) -> ShardResult: ...


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
            return ShardResult.model_validate_json(payload)
        except ValidationError as exc:
            raise ShardFailed(f"{self.function_name}: not a shard result: {exc.errors()[:1]}") from exc
