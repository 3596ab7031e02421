"""DynamoDB Streams handler: room changes and presence changes, published on `room_{id}`.

One function, two event source mappings (template.yaml): the events table's stream, filtered
to room items (`RoomOutbox`: `room.state` / `room.metadata`), and the connections table's
stream, filtered to member items (`PresenceOutbox`: `presence.join` / `update` / `leave`).
A batch comes from one mapping, so from one stream; each outbox ignores every record that is
not its own, so the batch goes to both and their failures are reported together.

Each failed record, and every later record of its room (or member), comes back in
`batchItemFailures`: Lambda resumes the shard from the lowest one ("Using Lambda with DynamoDB",
partial batch responses), so nothing is published out of order, and the idempotency keys make
the records that come again replay their events instead of publishing them twice.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from realtime_transport import Realtime
from realtime_transport.clock import Deadline
from realtime_transport.observability import logger, metrics
from realtime_transport.rooms.outbox import OutboxResult, RoomOutbox
from realtime_transport.rooms.presence_outbox import PresenceOutbox

realtime = Realtime()
rooms = RoomOutbox(realtime)
presence = PresenceOutbox(realtime)


def publish(records: list[dict[str, Any]], deadline: Deadline | None = None) -> OutboxResult:
    """Both outboxes over one batch; the failed sequence numbers of both, in stream order.

    With `deadline`, what was not published in time is reported failed instead of running the
    invocation into its Timeout (which would fail, retry and bisect the whole batch)."""
    room_result = rooms.publish(records, deadline)
    presence_result = presence.publish(records, deadline)
    failed = set(room_result.failed) | set(presence_result.failed)
    order = [str((record.get("dynamodb") or {}).get("SequenceNumber", "")) for record in records]
    return OutboxResult(
        published=[*room_result.published, *presence_result.published],
        duplicates=[*room_result.duplicates, *presence_result.duplicates],
        failed=[number for number in order if number in failed],
    )


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, list[dict[str, str]]]:
    records: list[dict[str, Any]] = event.get("Records") or []
    result = publish(records, Deadline(context.get_remaining_time_in_millis))
    metrics.add_metric(name="RoomEventsPublished", unit=MetricUnit.Count, value=len(result.published))
    metrics.add_metric(name="RoomEventsReplayed", unit=MetricUnit.Count, value=len(result.duplicates))
    if result.failed:
        metrics.add_metric(name="RoomOutboxFailures", unit=MetricUnit.Count, value=len(result.failed))
        logger.warning(
            "rooms outbox: records to retry",
            extra={"records": len(records), "failed": len(result.failed), "published": len(result.published)},
        )
    else:
        logger.info(
            "rooms outbox batch",
            extra={"records": len(records), "published": len(result.published), "replayed": len(result.duplicates)},
        )
    return result.batch_item_failures()
