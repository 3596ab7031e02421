"""The websocket function's lean event models (`models/apigw.py`) against Powertools' parser models.

The function validates API Gateway's events with its own small models (Powertools' cost a sixth of
its cold start to import). They must accept every event Powertools' models accept and read the same
values from it, and refuse what cannot be served.
"""

from __future__ import annotations

from typing import Any

import pytest
from aws_lambda_powertools.utilities.parser import models, parse
from pydantic import BaseModel, ValidationError

from realtime_transport.models.apigw import ConnectEvent, DisconnectEvent, MessageEvent
from tests.conftest import sample_event as sample

CASES = [
    ("websocket_connect", ConnectEvent, "APIGatewayWebSocketConnectEventModel"),
    ("websocket_subscribe", MessageEvent, "APIGatewayWebSocketMessageEventModel"),
    ("websocket_disconnect", DisconnectEvent, "APIGatewayWebSocketDisconnectEventModel"),
]


@pytest.mark.parametrize(("name", "lean", "powertools"), CASES)
def test_the_lean_models_read_what_powertools_reads(name: str, lean: type[BaseModel], powertools: str) -> None:
    event = sample(name)
    theirs: Any = parse(event=event, model=getattr(models, powertools))
    ours: Any = lean.model_validate(event)
    assert ours.request_context.connection_id == theirs.request_context.connection_id
    assert ours.request_context.route_key == theirs.request_context.route_key
    assert ours.request_context.event_type == theirs.request_context.event_type
    if isinstance(ours, MessageEvent):
        assert ours.body == theirs.body
        assert ours.is_base64_encoded == theirs.is_base64_encoded
    if isinstance(ours, ConnectEvent):
        assert ours.query_string_parameters == event["queryStringParameters"]


def test_fields_api_gateway_adds_are_ignored_not_refused() -> None:
    event = sample("websocket_subscribe")
    event["requestContext"]["somethingNew"] = {"nested": True}
    event["alsoNew"] = 1
    assert MessageEvent.model_validate(event).request_context.connection_id == "CKzqAcRhjoEFiWw="


@pytest.mark.parametrize(
    "broken",
    [
        lambda e: e["requestContext"].pop("connectionId"),
        lambda e: e["requestContext"].update(connectionId=""),
        lambda e: e["requestContext"].update(eventType="UPGRADE"),
        lambda e: e.pop("requestContext"),
    ],
)
def test_an_event_without_a_connection_to_serve_is_refused(broken: Any) -> None:
    event = sample("websocket_subscribe")
    broken(event)
    with pytest.raises(ValidationError):
        MessageEvent.model_validate(event)


def test_a_connect_without_a_query_string_has_none() -> None:
    event = sample("websocket_connect")
    event["queryStringParameters"] = None
    assert ConnectEvent.model_validate(event).query_string_parameters is None
