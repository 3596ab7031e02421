"""Subscriber tokens: HS256 JWTs with `sub`, `exp`, `channels` and optionally `write` (glob patterns).

`channels` decides what a connection may subscribe to and read, rooms included (`room_*`);
`write` decides which rooms' state and metadata it may change over the WebSocket (a room's
channel name, `room_{id}`, matched against the patterns). No `write` claim: read only.

Backends mint them with the deployment's secret (Secrets Manager on AWS);
browsers pass them as `?token=` (they cannot set headers on a WebSocket) or as
`Authorization: Bearer` on the history route.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass

from .errors import Forbidden, Unauthorized

ALGORITHM = "HS256"
DEFAULT_TTL_SECONDS = 3600
_LEEWAY_SECONDS = 5


@dataclass(frozen=True)
class Claims:
    sub: str
    exp: int
    channels: tuple[str, ...]
    write: tuple[str, ...] = ()

    def allows(self, channel: str) -> bool:
        return any(fnmatch.fnmatchcase(channel, pattern) for pattern in self.channels)

    def require(self, channel: str) -> None:
        if not self.allows(channel):
            raise Forbidden(f"token does not allow channel {channel!r}", field="channel")

    def may_write(self, channel: str) -> bool:
        return any(fnmatch.fnmatchcase(channel, pattern) for pattern in self.write)

    def require_write(self, channel: str) -> None:
        if not self.may_write(channel):
            raise Forbidden(f"token has no write claim for {channel!r}", field="write")

    def expired(self, now: float | None = None) -> bool:
        return self.exp + _LEEWAY_SECONDS < (time.time() if now is None else now)


def issue(
    secret: bytes,
    *,
    sub: str,
    channels: list[str],
    ttl_seconds: int = DEFAULT_TTL_SECONDS,
    write: list[str] | None = None,
) -> str:
    import jwt

    if not channels or not all(isinstance(p, str) and p for p in channels):
        raise ValueError("a token needs at least one channel pattern")
    if write is not None and not all(isinstance(p, str) and p for p in write):
        raise ValueError("write patterns must be non-empty strings")
    now = int(time.time())
    payload: dict[str, object] = {"sub": sub, "iat": now, "exp": now + ttl_seconds, "channels": list(channels)}
    if write:
        payload["write"] = list(write)
    return jwt.encode(payload, secret, algorithm=ALGORITHM)


def verify(secret: bytes, token: str | None) -> Claims:
    """The token's claims; `Unauthorized` says what is wrong with it (missing, malformed, forged, expired)."""
    import jwt

    if not token:
        raise Unauthorized("a token is required", field="token")
    try:
        payload = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={"require": ["sub", "exp"]},
            leeway=_LEEWAY_SECONDS,
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("token has expired", field="token") from exc
    except jwt.InvalidSignatureError as exc:
        raise Unauthorized("token signature is invalid", field="token") from exc
    except jwt.DecodeError as exc:
        raise Unauthorized("token is malformed", field="token") from exc
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(f"token is invalid: {exc}", field="token") from exc
    channels = payload.get("channels")
    if not isinstance(channels, list) or not all(isinstance(p, str) for p in channels):
        raise Unauthorized("token has no valid 'channels' claim", field="token")
    write = payload.get("write", [])
    if not isinstance(write, list) or not all(isinstance(p, str) for p in write):
        raise Unauthorized("token's 'write' claim must be a list of patterns", field="token")
    if not isinstance(payload["sub"], str) or not payload["sub"]:
        raise Unauthorized("token 'sub' must be a non-empty string", field="token")
    return Claims(sub=payload["sub"], exp=int(payload["exp"]), channels=tuple(channels), write=tuple(write))
