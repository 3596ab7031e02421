"""Scheduled handler: the presence sweeper.

EventBridge Scheduler invokes it once a minute (`rate(1 minute)`, the finest rate a schedule
has); within the invocation it passes every PRESENCE_SWEEP_SECONDS until another pass would no
longer fit the remaining time (`context.get_remaining_time_in_millis()`), so a lease is looked
at every sweep interval, not once a minute. The Timeout (70 s) leaves room for the last pass.

Each pass (`PresenceRegistry.sweep`) reads what is due from the by-deadline index: members whose
grace period ended are deleted; connections whose lease ended are probed with the management
API's `GET @connections/{id}` (its `lastActiveAt`, or 410 `GoneException` for a connection that
no longer exists), and leave their rooms (`timeout`) unless they were active within the lease.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from realtime_transport import Realtime
from realtime_transport.clock import Deadline
from realtime_transport.errors import ConfigurationError
from realtime_transport.observability import logger, metrics
from realtime_transport.rooms.presence import PresenceRegistry

if TYPE_CHECKING:
    from mypy_boto3_apigatewaymanagementapi import ApiGatewayManagementApiClient

# A pass reads 16 index shards and probes what is due (10 to 20 ms per call on AWS): this much
# of the remaining time must be left when one starts.
PASS_BUDGET_MS = 8_000

realtime = Realtime()
registry = PresenceRegistry(realtime)
clock = time.time  # epoch seconds: what is due is what has a deadline at or before it


class ProbeFailed(Exception):
    """The management API answered neither the connection nor 410: the connection's fate is unknown."""


@lru_cache(maxsize=1)
def management_api() -> ApiGatewayManagementApiClient:
    """boto3's client for the stage's @connections endpoint (WEBSOCKET_MANAGEMENT_URL).

    "Use @connections commands in your backend service" (API Gateway developer guide): GET
    @connections/{id} answers connectedAt, identity and lastActiveAt, or 410 when the connection
    is gone. boto3 signs for execute-api; the role holds ManageConnections on GET only.
    """
    from realtime_transport.clients import session

    url = realtime.settings.websocket_management_url
    if not url:
        raise ConfigurationError("WEBSOCKET_MANAGEMENT_URL is not set: the sweeper cannot probe connections")
    from botocore.config import Config

    client: ApiGatewayManagementApiClient = session().client(
        "apigatewaymanagementapi",
        endpoint_url=url,
        config=Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=2, read_timeout=3),
    )
    return client


def probe(connection_id: str) -> float | None:
    """When the connection was last active (epoch seconds), or None if API Gateway says it is gone."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        response = management_api().get_connection(ConnectionId=connection_id)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "GoneException":
            return None
        raise ProbeFailed(f"GET @connections/{connection_id}: {exc}") from exc
    except BotoCoreError as exc:
        raise ProbeFailed(f"GET @connections/{connection_id}: {exc}") from exc
    return response["LastActiveAt"].timestamp()


def sweep_until_out_of_time(context: Any, interval_s: float, *, sleep: Any = time.sleep) -> int:
    """Pass every `interval_s` while a pass still fits the invocation's remaining time; returns the passes."""
    passes = 0
    failures: list[Exception] = []
    while True:
        started = time.monotonic()
        passes += 1
        try:
            # A pass under load (many expired leases, a slow management API) must not run the
            # invocation into its Timeout: it stops with the reserve left, the rest stays due.
            report = registry.sweep(clock(), probe, Deadline(context.get_remaining_time_in_millis))
        except Exception as exc:  # one bad pass (DynamoDB, the management API): the next one retries
            failures.append(exc)
            logger.exception("presence sweep failed", extra={"pass": passes})
            metrics.add_metric(name="PresenceSweepFailures", unit=MetricUnit.Count, value=1)
        else:
            logger.info("presence sweep", extra={"pass": passes, "report": _as_dict(report)})
        wait_s = max(0.0, interval_s - (time.monotonic() - started))
        if context.get_remaining_time_in_millis() - wait_s * 1000 < PASS_BUDGET_MS:
            break
        sleep(wait_s)
    if failures and len(failures) == passes:
        # Not one pass got through: an error for the invocation, so the Errors alarm sees it.
        raise failures[-1]
    return passes


def _as_dict(report: Any) -> Any:
    from dataclasses import asdict, is_dataclass

    if is_dataclass(report) and not isinstance(report, type):
        return asdict(report)
    return report


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, int]:
    passes = sweep_until_out_of_time(context, realtime.settings.presence_sweep_seconds)
    metrics.add_metric(name="PresenceSweeps", unit=MetricUnit.Count, value=passes)
    return {"passes": passes}
