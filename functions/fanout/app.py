"""DynamoDB Streams handler: newly committed events to every subscribed WebSocket connection.

The whole batch is delivered first (`Fanout.deliver`: grouped by channel, in seq order,
subscribers read once per channel); `BatchProcessor` then reports as failed only the records
of channels whose subscribers could not be read. A connection that cannot be reached never
fails the batch.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.typing import LambdaContext

from realtime_transport.fanout import Fanout
from realtime_transport.observability import logger, metrics

fanout = Fanout.from_settings()
# Even a batch whose records all failed is answered with batchItemFailures (not an
# exception), so Lambda retries exactly those records the same way every time.
processor = BatchProcessor(event_type=EventType.DynamoDBStreams, raise_on_entire_batch_failure=False)


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    result = fanout.deliver(event.get("Records", []), remaining_ms=context.get_remaining_time_in_millis())
    return process_partial_response(event=event, record_handler=result.check, processor=processor, context=context)
