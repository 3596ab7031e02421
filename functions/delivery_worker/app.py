"""Delivery worker: one shard of a large channel's fan-out, invoked synchronously by the fan-out.

Two requests (`workers.py`):

* a `ShardRequest`: frames already built and signed and the shard's connection ids; the answer
  is a `ShardResult` (delivered count, gone and failed connections, elapsed). No table read;
* a `ReadRequest` (read and deliver): index units of a large channel whose cached subscribers
  are stale; the worker queries them, checks expired hints against the connection items
  (consistent GetItem), sends `token_expired` and DELETE to the expired, delivers to the rest and
  answers a `ReadResult` with the entries it read, for the coordinator's cache.

No secret either way: the coordinator signs the frames. Gone connections are the coordinator's
to clean up. A request that is neither is answered with a `FunctionError` (the coordinator's
retry and give-up apply), never delivered.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from realtime_transport.connections import ConnectionStore
from realtime_transport.delivery import Pusher
from realtime_transport.observability import logger
from realtime_transport.settings import get_settings
from realtime_transport.workers import ReadRequest, ShardRequest, deliver_shard, read_and_deliver

pusher = Pusher.from_settings(get_settings())
# Made at the first read request: an instance that only delivers shards never builds a client.
store: ConnectionStore | None = None


def _store() -> ConnectionStore:
    global store
    if store is None:
        from realtime_transport.clients import dynamodb

        store = ConnectionStore(dynamodb(), get_settings().connections_table_name)
    return store


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    remaining = context.get_remaining_time_in_millis()
    if isinstance(event, dict) and "units" in event:
        read = ReadRequest.model_validate(event)  # a bad payload raises: FunctionError for the caller
        answer = read_and_deliver(pusher, _store(), read, remaining_ms=remaining)
        logger.info(
            "delivery read shard",
            extra={
                "units": [unit.model_dump(exclude_none=True) for unit in read.units],
                "read": sum(len(e) for e in answer.entries or []),
                "delivered": answer.delivered,
                "gone": len(answer.gone),
                "failed": len(answer.failed),
                "expired": len(answer.expired),
                "elapsed_ms": round(answer.elapsed_ms, 1),
            },
        )
        return answer.model_dump()
    request = ShardRequest.model_validate(event)
    result = deliver_shard(pusher, request, remaining_ms=remaining)
    logger.info(
        "delivery shard",
        extra={"connections": sum(len(g.connections) for g in request.groups), **result.model_dump(exclude={"failed"})}
        | {"failed": len(result.failed)},
    )
    return result.model_dump()
