"""Delivery worker: one shard of a large channel's fan-out, invoked synchronously by the fan-out.

The request carries frames already built and signed and the shard's connection ids
(`workers.ShardRequest`); the answer is a `workers.ShardResult` (delivered count, gone and
failed connections, elapsed). No table reads, no secret: the coordinator did those; gone
connections are the coordinator's to clean up. A request that is not a `ShardRequest` is
answered with a `FunctionError` (the coordinator's retry and give-up apply), never delivered.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from realtime_transport.delivery import Pusher
from realtime_transport.observability import logger
from realtime_transport.settings import get_settings
from realtime_transport.workers import ShardRequest, deliver_shard

pusher = Pusher.from_settings(get_settings())


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = ShardRequest.model_validate(event)  # a bad payload raises: FunctionError for the caller
    result = deliver_shard(pusher, request, remaining_ms=context.get_remaining_time_in_millis())
    logger.info(
        "delivery shard",
        extra={"connections": sum(len(g.connections) for g in request.groups), **result.model_dump(exclude={"failed"})}
        | {"failed": len(result.failed)},
    )
    return result.model_dump()
