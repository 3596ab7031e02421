"""Feeds: the producer-facing domain on top of channels (the seed's routes)."""

from __future__ import annotations

from typing import Any

from . import clock, tokens
from .channel import Channel, HistoryPage, PublishResult, fingerprint_of
from .errors import Unauthorized
from .realtime import Realtime

CONTROL_TYPE = "feed.control"
DEFAULT_SOURCE = "api"


def feed_channel_name(feed_id: str) -> str:
    return f"feed_{feed_id}"


def authorize_channel_reader(realtime: Realtime, channel: str, authorization: str | None, *, required: bool) -> None:
    """Check a browser's `Authorization: Bearer <subscriber token>` for reading `channel`'s history.

    A header that is present is always checked, even where it is not required.
    """
    if not authorization:
        if required:
            raise Unauthorized("Authorization: Bearer <token> is required", field="authorization")
        return
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization must be 'Bearer <token>'", field="authorization")
    tokens.verify(realtime.secret, token.strip()).require(channel)


class Feeds:
    def __init__(self, realtime: Realtime) -> None:
        self.realtime = realtime

    def channel(self, feed_id: str) -> Channel:
        return self.realtime.channel(feed_channel_name(feed_id))

    def publish_event(
        self, feed_id: str, *, event_id: str, type: str, payload: Any, source: str | None = None
    ) -> PublishResult:
        data = {
            "feedId": feed_id,
            "eventId": event_id,
            "payload": payload,
            "receivedAt": clock.iso_ms(clock.now_ms()),
        }
        return self.channel(feed_id).broadcast(
            type=type,
            data=data,
            metadata={"source": source or DEFAULT_SOURCE},
            idempotency_key=event_id,
            # A retry carries a new receivedAt: the promise covers type and payload.
            fingerprint=fingerprint_of(type, payload),
        )

    def send_control(self, feed_id: str, *, command_id: str, action: str, target: Any = None) -> PublishResult:
        data = {"action": action, "target": target, "requestedAt": clock.iso_ms(clock.now_ms())}
        return self.channel(feed_id).publish(
            type=CONTROL_TYPE,
            data=data,
            metadata={"source": DEFAULT_SOURCE},
            idempotency_key=command_id,
            fingerprint=fingerprint_of(CONTROL_TYPE, action, target),
        )

    def authorize_reader(self, feed_id: str, authorization: str | None, *, required: bool) -> None:
        """Check a browser's `Authorization: Bearer <subscriber token>` for this feed's channel."""
        authorize_channel_reader(self.realtime, feed_channel_name(feed_id), authorization, required=required)

    def history(self, feed_id: str, *, limit: int = 100, cursor: str | None = None) -> HistoryPage:
        return self.channel(feed_id).history(limit=limit, cursor=cursor)
