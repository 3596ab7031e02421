"""Subscriber tokens: HS256 JWTs with `sub`, `exp`, `channels` and optionally `write` (patterns).

`channels` decides what a connection may subscribe to and read, rooms included (`room_*`);
`write` decides which rooms' state and metadata it may change over the WebSocket (a room's
channel name, `room_{id}`, matched against the patterns). No `write` claim: read only.

Patterns (both claims): `:` separates namespaces in a channel name (`feed_4:admin` lies in the
namespace `feed_4`), and a right given for one namespace must not leak into the next.

- `*` matches any run of characters, empty included, except `:`: `feed_4*` grants `feed_4`,
  `feed_42` and `feed_4.x`, never `feed_4:admin`; `feed_4:*` grants `feed_4:admin`, not
  `feed_4:admin:keys`.
- `**` matches any run of characters, `:` included: `feed_4:**` grants everything under the
  namespace `feed_4:` (`feed_4:admin`, `feed_4:admin:keys`), `feed_4**` grants `feed_4` and
  every name that starts with it, `**` grants every channel.
- Every other character stands for itself (`?` and `[` are not wildcards). `issue` accepts
  only the characters of a channel name (letters, digits, `_ . : -`) and `*`.

Backends mint them with the deployment's secret (Secrets Manager on AWS, `secrets.py`);
verification accepts each secret the deployment verifies with (during a rotation, the new and
the previous one). Browsers pass them as `?token=` (they cannot set headers on a WebSocket) or
as `Authorization: Bearer` on the history route.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .errors import Forbidden, Unauthorized
from .secrets import SigningSecret

ALGORITHM = "HS256"
DEFAULT_TTL_SECONDS = 3600
_LEEWAY_SECONDS = 5
SEPARATOR = ":"
# A channel name's characters (channel.CHANNEL_PATTERN) and the wildcard; a little longer than
# a name, so `feed_**` still fits beside a 200-character name.
PATTERN = re.compile(r"^[A-Za-z0-9_.:*-]{1,256}$")
_STARS = re.compile(r"(\*+)")


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    parts = []
    for part in _STARS.split(pattern):
        if part.startswith("*"):
            # Two stars or more cross namespaces; one stays inside its own.
            parts.append(".*" if len(part) > 1 else f"[^{re.escape(SEPARATOR)}]*")
        else:
            parts.append(re.escape(part))
    return re.compile("".join(parts), re.DOTALL)


def matches(pattern: str, channel: str) -> bool:
    """Whether `pattern` (the module's pattern language) grants `channel`."""
    return _compiled(pattern).fullmatch(channel) is not None


@dataclass(frozen=True)
class Claims:
    sub: str
    exp: int
    channels: tuple[str, ...]
    write: tuple[str, ...] = ()

    def allows(self, channel: str) -> bool:
        return any(matches(pattern, channel) for pattern in self.channels)

    def require(self, channel: str) -> None:
        if not self.allows(channel):
            raise Forbidden(f"token does not allow channel {channel!r}", field="channel")

    def may_write(self, channel: str) -> bool:
        return any(matches(pattern, channel) for pattern in self.write)

    def require_write(self, channel: str) -> None:
        if not self.may_write(channel):
            raise Forbidden(f"token has no write claim for {channel!r}", field="write")

    def expired(self, now: float | None = None) -> bool:
        return self.exp + _LEEWAY_SECONDS < (time.time() if now is None else now)


def _check_patterns(patterns: list[str], claim: str) -> None:
    for pattern in patterns:
        if not isinstance(pattern, str) or not PATTERN.match(pattern):
            raise ValueError(
                f"{claim} pattern {pattern!r} must be 1 to 256 characters of letters, digits, _ . : - and *"
            )


def issue(
    secret: bytes | SigningSecret,
    *,
    sub: str,
    channels: list[str],
    ttl_seconds: int = DEFAULT_TTL_SECONDS,
    write: list[str] | None = None,
) -> str:
    """A token signed with `secret` (a deployment's `SigningSecret` signs with its current value)."""
    import jwt

    if not channels:
        raise ValueError("a token needs at least one channel pattern")
    _check_patterns(channels, "channel")
    _check_patterns(write or [], "write")
    key = secret.current if isinstance(secret, SigningSecret) else secret
    now = int(time.time())
    payload: dict[str, object] = {"sub": sub, "iat": now, "exp": now + ttl_seconds, "channels": list(channels)}
    if write:
        payload["write"] = list(write)
    return jwt.encode(payload, key, algorithm=ALGORITHM)


def verify(secret: bytes | SigningSecret, token: str | None) -> Claims:
    """The token's claims; `Unauthorized` says what is wrong with it (missing, malformed, forged, expired).

    With a `SigningSecret`, a token signed with any secret it verifies with is good (a rotation's
    window); the signature is checked before any claim, so "expired" is only said of a genuine token.
    """
    import jwt

    if not token:
        raise Unauthorized("a token is required", field="token")
    keys = secret.verifying if isinstance(secret, SigningSecret) else (secret,)
    try:
        payload = _decode(token, keys)
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


def _decode(token: str, keys: tuple[bytes, ...]) -> dict[str, Any]:
    """The payload under the first key whose signature matches (InvalidSignatureError if none does)."""
    import jwt

    for index, key in enumerate(keys):
        try:
            payload: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                options={"require": ["sub", "exp"]},
                leeway=_LEEWAY_SECONDS,
            )
            return payload
        except jwt.InvalidSignatureError:
            if index == len(keys) - 1:
                raise
    raise jwt.InvalidSignatureError("no key to verify the token with")
