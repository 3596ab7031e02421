"""API Gateway WebSocket events as the websocket function receives them: the fields it reads.

Why not Powertools' parser models (`APIGatewayWebSocket*EventModel`, which these follow, field
for field where they overlap; `tests/unit/test_websocket_events.py` holds them to accepting the
same events): importing them loads Powertools' parser (`utilities.parser` and its `functions`,
which import pydantic's `networks` and `importlib.metadata`), measured at about 58 ms over
pydantic alone, a sixth of the function's cold start, for three models of a few fields each
(bench/cold_import.py). Kept apart from `websocket.py` (the messages on the wire), which the
fan-out imports too.

The shapes are those of "Setting up WebSocket API integration requests in API Gateway" (the
event's `requestContext`): `connectionId` and `routeKey` always, `eventType` CONNECT /
DISCONNECT / MESSAGE, the `$connect` query string, a message's `body`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from .base import Model


class _Shape(Model):
    # API Gateway adds fields over time: what the function does not read is not its business.
    model_config = ConfigDict(defer_build=True, extra="ignore", populate_by_name=True)


class RequestContext(_Shape):
    connection_id: str = Field(alias="connectionId", min_length=1)
    route_key: str = Field(alias="routeKey", min_length=1)
    event_type: Literal["CONNECT", "DISCONNECT", "MESSAGE"] = Field(alias="eventType")


class ConnectEvent(_Shape):
    """`$connect`: the token travels in the query string (browsers cannot set headers)."""

    request_context: RequestContext = Field(alias="requestContext")
    query_string_parameters: dict[str, str] | None = Field(None, alias="queryStringParameters")


class DisconnectEvent(_Shape):
    request_context: RequestContext = Field(alias="requestContext")


class MessageEvent(_Shape):
    """Any other route: the client's frame, text (a binary frame arrives base64-encoded)."""

    request_context: RequestContext = Field(alias="requestContext")
    body: str | None = None
    is_base64_encoded: bool = Field(False, alias="isBase64Encoded")
