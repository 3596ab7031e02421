"""Producer, history and room routes: thin adapters over realtime_transport.Feeds and rooms.Rooms."""

from __future__ import annotations

import functools
import json
from http import HTTPStatus
from typing import Annotated, Any

import http_batch
import http_bodies
import http_errors
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.event_handler.openapi.params import Header, Path, Query
from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse, OpenAPIResponseHeader
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from realtime_transport import PublishResult, Realtime
from realtime_transport.channel import MAX_PAGE
from realtime_transport.feeds import Feeds
from realtime_transport.models.http import (
    FEED_ID_PATTERN,
    ControlRequest,
    HistoryResponse,
    Member,
    MembersResponse,
    MetadataRequest,
    MetadataResponse,
    PublishEventRequest,
    PublishResponse,
    RoomResponse,
    RoomStateView,
    StatePatchRequest,
    StateResponse,
)
from realtime_transport.observability import logger, metrics
from realtime_transport.rooms.room import ROOM_ID_PATTERN, etag_of
from realtime_transport.rooms.service import Rooms, author

FeedId = Annotated[str, Path(pattern=FEED_ID_PATTERN, description="Feed id; the channel is feed_{feedId}.")]

RoomId = Annotated[str, Path(pattern=ROOM_ID_PATTERN.pattern, description="Room id; the channel is room_{roomId}.")]
IfMatch = Annotated[
    str | None,
    Header(
        # RFC 9110, section 13.1.1; a bare version is taken too. Bounded: a version is below 2**53.
        pattern=r'^(\*|"[0-9]{1,16}"|[0-9]{1,16})$',
        description='The room\'s ETag, `"<version>"` (a bare version is taken too), or `*`: the change '
        "applies only if the room is at that version, else 412.",
    ),
]

realtime = Realtime()
feeds = Feeds(realtime)
rooms = Rooms(realtime)
app = APIGatewayHttpResolver(enable_validation=True)
http_bodies.install(app)
http_errors.register(app, max_body_bytes=feeds.realtime.settings.max_event_bytes)
# What the HTTP API's $default route delivers: requests API Gateway matched to no route
# (https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-develop-routes.html).
# It has no authorizer, so it goes to a resolver with no routes: it can only answer 404 or 405.
unrouted = APIGatewayHttpResolver()
http_errors.register_unrouted(unrouted, routes_of=app)

JSON = content_types.APPLICATION_JSON


def _published_as(description: str) -> OpenAPIResponse:
    return {"description": description, "content": {JSON: {"model": PublishResponse}}}


PUBLISHED: dict[int, OpenAPIResponse] = {
    201: _published_as("Stored: a new event, `duplicate: false`."),
    200: _published_as("A retry: the event first stored with this key, `duplicate: true`."),
    **http_errors.PUBLISH_ERRORS,
}


def _published(result: PublishResult) -> Response[PublishResponse]:
    if result.duplicate:
        metrics.add_metric(name="DuplicatesSuppressed", unit="Count", value=1)
    else:
        metrics.add_metric(name="EventsPublished", unit="Count", value=1)
    return Response(
        status_code=HTTPStatus.OK if result.duplicate else HTTPStatus.CREATED,
        content_type=content_types.APPLICATION_JSON,
        body=PublishResponse(event=result.event, duplicate=result.duplicate),
    )


@app.post("/feeds/<feedId>/events", summary="Publish an event (idempotent on eventId)", responses=PUBLISHED)
def publish_event(feedId: FeedId, request: PublishEventRequest) -> Response[PublishResponse]:
    return _published(
        feeds.publish_event(
            feedId, event_id=request.event_id, type=request.type, payload=request.payload, source=request.source
        )
    )


@app.post("/feeds/<feedId>/control", summary="Send a control command (idempotent on commandId)", responses=PUBLISHED)
def send_control(feedId: FeedId, request: ControlRequest) -> Response[PublishResponse]:
    return _published(
        feeds.send_control(feedId, command_id=request.command_id, action=request.action, target=request.target)
    )


@app.post(
    "/feeds/<feedId>/events/batch",
    summary="Publish up to 100 events at once (each idempotent on its eventId), one result per event",
    responses=http_batch.RESPONSES,
)
def publish_events_batch(feedId: FeedId, request: http_batch.PublishBatchRequest) -> Response[Any]:
    return http_batch.publish(app, feeds, feedId, request)


@app.get(
    "/feeds/<feedId>/events",
    summary="Read history, oldest first, from a cursor",
    responses={
        200: {"description": "A page of history.", "content": {JSON: {"model": HistoryResponse}}},
        **http_errors.HISTORY_ERRORS,
    },
)
def read_history(
    feedId: FeedId,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")] = 100,
    cursor: Annotated[str | None, Query(max_length=256, description="nextCursor of the previous page.")] = None,
) -> HistoryResponse:
    feeds.authorize_reader(
        feedId, app.current_event.headers.get("authorization"), required=feeds.realtime.settings.require_history_token
    )
    page = feeds.history(feedId, limit=limit, cursor=cursor)
    return HistoryResponse(
        items=page.items, next_cursor=page.next_cursor, has_more=page.has_more, truncated=page.truncated
    )


# --- rooms ----------------------------------------------------------------------------------

ETAG_HEADER: dict[str, OpenAPIResponseHeader] = {
    "ETag": {"description": 'The room\'s version after the request, `"<version>"`.', "schema": {"type": "string"}}
}


def _with_etag(description: str, model: type[Any]) -> OpenAPIResponse:
    return {"description": description, "headers": ETAG_HEADER, "content": {JSON: {"model": model}}}


def _tagged(body: Any, version: int) -> Response[Any]:
    return Response(status_code=HTTPStatus.OK, content_type=JSON, body=body, headers={"ETag": etag_of(version)})


def _author() -> str | None:
    """The producer's IAM identity, when API Gateway authorized the request with IAM (ProducerAuth=IAM)."""
    iam = app.current_event.request_context.authorizer.iam
    return author(iam.user_arn, iam.user_id)


@app.get(
    "/rooms/<roomId>",
    summary="Read a room: metadata, state and member count of one version",
    responses={
        200: _with_etag("The room (version 0 and empty when nobody changed it).", RoomResponse),
        **http_errors.ROOM_READ_ERRORS,
    },
)
def get_room(roomId: RoomId) -> Response[RoomResponse]:
    view = rooms.get(roomId)
    body = RoomResponse(
        room_id=view.room_id,
        metadata=view.metadata,
        state=RoomStateView(version=view.version, doc=view.doc),
        member_count=view.member_count,
    )
    return _tagged(body, view.version)


@app.put(
    "/rooms/<roomId>/metadata",
    summary="Replace a room's metadata",
    responses={
        200: _with_etag("Stored (or already so: the version is unchanged).", MetadataResponse),
        **http_errors.METADATA_ERRORS,
    },
)
def put_room_metadata(roomId: RoomId, request: MetadataRequest, if_match: IfMatch = None) -> Response[MetadataResponse]:
    result = rooms.set_metadata(roomId, request.metadata, if_match=if_match, by=_author())
    return _tagged(MetadataResponse(room_id=roomId, version=result.version, metadata=result.metadata), result.version)


@app.get(
    "/rooms/<roomId>/members",
    summary="List a room's members, a page at a time",
    responses={
        200: {"description": "A page of members.", "content": {JSON: {"model": MembersResponse}}},
        **http_errors.MEMBERS_ERRORS,
    },
)
def list_room_members(
    roomId: RoomId,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size.")] = 100,
    cursor: Annotated[str | None, Query(max_length=1024, description="nextCursor of the previous page.")] = None,
) -> MembersResponse:
    page = rooms.members(roomId, limit=limit, cursor=cursor)
    return MembersResponse(
        items=[Member.model_validate(item.to_dict()) for item in page.items],
        next_cursor=page.next_cursor,
        has_more=page.has_more,
    )


@app.patch(
    "/rooms/<roomId>/state",
    summary="Patch a room's state document (JSON Merge Patch or JSON Patch, from a version)",
    responses={
        200: _with_etag("Applied (or it changed nothing: the version is unchanged).", StateResponse),
        **http_errors.STATE_ERRORS,
    },
)
def patch_room_state(roomId: RoomId, request: StatePatchRequest, if_match: IfMatch = None) -> Response[StateResponse]:
    result = rooms.patch(
        roomId,
        request.version,
        merge_patch=request.patch,
        operations=request.operations_as_json(),
        if_match=if_match,
        by=_author(),
    )
    return _tagged(StateResponse(version=result.version, doc=result.doc), result.version)


@app.get(
    "/rooms/<roomId>/events",
    summary="Read a room's history (its channel room_{roomId}), oldest first, from a cursor",
    responses={
        200: {"description": "A page of history.", "content": {JSON: {"model": HistoryResponse}}},
        **http_errors.ROOM_HISTORY_ERRORS,
    },
)
def read_room_history(
    roomId: RoomId,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")] = 100,
    cursor: Annotated[str | None, Query(max_length=256, description="nextCursor of the previous page.")] = None,
) -> HistoryResponse:
    rooms.authorize_reader(
        roomId, app.current_event.headers.get("authorization"), required=realtime.settings.require_history_token
    )
    page = rooms.history(roomId, limit=limit, cursor=cursor)
    return HistoryResponse(
        items=page.items, next_cursor=page.next_cursor, has_more=page.has_more, truncated=page.truncated
    )


@app.get(
    "/openapi.json",
    summary="This document",
    responses={200: {"description": "The OpenAPI 3.1 document.", "content": {JSON: {"schema": {"type": "object"}}}}},
)
def openapi() -> Response[Any]:
    return Response(status_code=HTTPStatus.OK, content_type=JSON, body=_openapi_document())


@functools.cache
def _openapi_document() -> str:
    schema = app.get_openapi_json_schema(
        title="realtime-transport", version="1.0.0", description=http_errors.API_DESCRIPTION
    )
    return json.dumps(http_errors.as_sent(json.loads(schema)), separators=(",", ":"))


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    resolver = unrouted if event.get("routeKey") == "$default" else app
    return resolver.resolve(event, context)
