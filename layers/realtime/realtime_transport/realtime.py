"""The library's entry point: `Realtime(name=..., history_limit=...).channel(name)`."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

from .channel import Channel
from .cursor import CursorCodec
from .secrets import SigningSecret, signing_secret
from .settings import Settings, get_settings
from .store import EventStore

if TYPE_CHECKING:
    from .connections import ConnectionStore


class Realtime:
    """One realtime instance: a namespace of channels over the events table.

    `name` namespaces channel keys, so several instances can share the tables.
    Tables and clients come from the settings; `store` and `secret` may be
    given directly (tests, tools). The signing secret is a `SigningSecret`: it follows
    Secrets Manager (re-read after SECRET_CACHE_SECONDS, rotations included), so nothing
    that signs or verifies holds a copy of its own.
    """

    def __init__(
        self,
        name: str | None = None,
        history_limit: int | None = None,
        *,
        settings: Settings | None = None,
        store: EventStore | None = None,
        secret: bytes | SigningSecret | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.name = name or self.settings.name
        self.history_limit = history_limit or self.settings.history_limit
        if not 1 <= self.history_limit <= 10_000:
            raise ValueError("history_limit must be from 1 to 10000")
        self._store = store
        self._secret = secret
        self._connections: ConnectionStore | None = None

    def channel(self, name: str) -> Channel:
        return Channel(self, name)

    @property
    def store(self) -> EventStore:
        if self._store is None:
            from .clients import dynamodb

            self._store = EventStore(dynamodb(), self.settings.events_table_name)
        return self._store

    @property
    def connections(self) -> ConnectionStore:
        if self._connections is None:
            from .clients import dynamodb
            from .connections import ConnectionStore

            self._connections = ConnectionStore(dynamodb(), self.settings.connections_table_name)
        return self._connections

    @cached_property
    def secret(self) -> SigningSecret:
        """Signs cursors and subscriber tokens (Secrets Manager on AWS); `tokens.verify` and
        `CursorCodec` take it as it is, and sign with its current value."""
        if self._secret is None:
            return signing_secret(self.settings)
        return self._secret if isinstance(self._secret, SigningSecret) else SigningSecret.fixed(self._secret)

    @cached_property
    def cursor_codec(self) -> CursorCodec:
        return CursorCodec(self.secret)
