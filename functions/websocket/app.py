"""WebSocket routes: $connect (token check), $disconnect, subscribe, unsubscribe, ping, the room
actions (join, leave, members, update, patch), $default.

Powertools has no WebSocket resolver: dispatch on the route key; each event is validated by a
lean pydantic model of the fields read (`models/apigw.py` says why not Powertools' parser models).
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from realtime_transport import Realtime
from realtime_transport.delivery import Pusher
from realtime_transport.errors import Forbidden, Unauthorized
from realtime_transport.live import LiveService
from realtime_transport.models.apigw import ConnectEvent, DisconnectEvent, MessageEvent
from realtime_transport.observability import logger, metrics

realtime = Realtime()
live = LiveService(realtime, Pusher.from_settings(realtime.settings))


def _status(code: int, message: str = "") -> dict[str, Any]:
    body = {"message": message} if message else {}
    return {"statusCode": code, "headers": {"Content-Type": "application/json"}, "body": json.dumps(body)}


def on_connect(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = ConnectEvent.model_validate(event)
    try:
        claims = live.connect(
            request.request_context.connection_id, (request.query_string_parameters or {}).get("token")
        )
    except Unauthorized as exc:
        metrics.add_metric(name="ConnectionsRefused", unit="Count", value=1)
        return _status(401, exc.message)
    except Forbidden as exc:
        metrics.add_metric(name="ConnectionsRefused", unit="Count", value=1)
        return _status(403, exc.message)
    logger.info("connected", extra={"sub": claims.sub, "patterns": list(claims.channels)})
    metrics.add_metric(name="Connections", unit="Count", value=1)
    return _status(200)


def on_disconnect(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = DisconnectEvent.model_validate(event)
    live.disconnect(request.request_context.connection_id)
    return _status(200)


def on_message(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = MessageEvent.model_validate(event)
    body = request.body
    # A catch-up must answer before the function's timeout ends the invocation mid-stream.
    live.handle(request.request_context.connection_id, body, remaining_ms=context.get_remaining_time_in_millis)
    return _status(200)


ROUTES = {"$connect": on_connect, "$disconnect": on_disconnect}


@logger.inject_lambda_context(correlation_id_path="requestContext.requestId")
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    route = event.get("requestContext", {}).get("routeKey", "$default")
    return ROUTES.get(route, on_message)(event, context)
