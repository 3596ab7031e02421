"""History cursors: opaque, tamper-evident and bound to one channel.

A cursor names the last log position a reader has consumed. It is
`version | seq | channel tag | HMAC` in URL-safe base64: the tag lets us tell
"used on another channel" from "forged" in the error, the MAC (keyed by the
deployment's secret) makes any edit detectable. During a rotation of the secret a cursor
signed with any value the deployment verifies with is good (`secrets.SigningSecret`); new
cursors are always signed with the current one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct

from .errors import InvalidCursor
from .secrets import SigningSecret

_VERSION = 1
_LAYOUT = struct.Struct(">BQ4s")  # version, seq, channel tag
_MAC_BYTES = 14  # 13 + 14 = 27 bytes: 36 base64 characters with no spare bits to flip unnoticed
_ENCODED_LENGTH = len(base64.urlsafe_b64encode(b"\0" * (_LAYOUT.size + _MAC_BYTES)).rstrip(b"="))
# As long as every cursor: for sizing a frame before its cursor exists.
CURSOR_PLACEHOLDER = "x" * _ENCODED_LENGTH


class CursorCodec:
    """Cursors under `secret`: a `SigningSecret` is followed as it refreshes and rotates."""

    def __init__(self, secret: bytes | SigningSecret) -> None:
        self._secret = secret if isinstance(secret, SigningSecret) else SigningSecret.fixed(secret)
        # MAC keys by secret: derived once per value, not once per cursor.
        self._keys: dict[bytes, bytes] = {}

    def _key(self, secret: bytes) -> bytes:
        key = self._keys.get(secret)
        if key is None:
            if len(self._keys) >= 8:  # rotations over an instance's life: keep only recent values
                self._keys.clear()
            key = self._keys[secret] = hashlib.sha256(b"realtime-transport/cursor/v1\0" + secret).digest()
        return key

    @staticmethod
    def _tag(channel_key: str) -> bytes:
        return hashlib.sha256(channel_key.encode()).digest()[:4]

    @staticmethod
    def _mac(key: bytes, body: bytes, channel_key: str) -> bytes:
        return hmac.new(key, body + channel_key.encode(), hashlib.sha256).digest()[:_MAC_BYTES]

    def encode(self, channel_key: str, seq: int) -> str:
        body = _LAYOUT.pack(_VERSION, seq, self._tag(channel_key))
        mac = self._mac(self._key(self._secret.current), body, channel_key)
        return base64.urlsafe_b64encode(body + mac).rstrip(b"=").decode()

    def decode(self, channel_key: str, cursor: str) -> int:
        """The position after which reading resumes; `InvalidCursor` names the problem."""
        if len(cursor) != _ENCODED_LENGTH:
            raise InvalidCursor("cursor is malformed", field="cursor")
        try:
            raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidCursor("cursor is malformed", field="cursor") from exc
        if len(raw) != _LAYOUT.size + _MAC_BYTES:
            raise InvalidCursor("cursor is malformed", field="cursor")
        body, mac = raw[: _LAYOUT.size], raw[_LAYOUT.size :]
        version, seq, tag = _LAYOUT.unpack(body)
        if version != _VERSION:
            raise InvalidCursor("cursor version is not supported", field="cursor")
        if not hmac.compare_digest(tag, self._tag(channel_key)):
            raise InvalidCursor("cursor belongs to another channel", field="cursor")
        if not any(
            hmac.compare_digest(mac, self._mac(self._key(secret), body, channel_key))
            for secret in self._secret.verifying
        ):
            raise InvalidCursor("cursor has been altered or was not issued here", field="cursor")
        return int(seq)
