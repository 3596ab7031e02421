"""API Gateway WebSocket events as the websocket function receives them (Powertools' parser models).

Kept apart from `websocket.py` (the messages on the wire): the fan-out imports those, and has no
use for Powertools' parser models on its cold start.
"""

from __future__ import annotations

from aws_lambda_powertools.utilities.parser.models import APIGatewayWebSocketConnectEventModel
from pydantic import Field


class ConnectEvent(APIGatewayWebSocketConnectEventModel):
    """API Gateway's $connect event, with the query string Powertools' model leaves out."""

    query_string_parameters: dict[str, str] | None = Field(None, alias="queryStringParameters")
