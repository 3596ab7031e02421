"""History cursors: opaque, tamper-evident and bound to one channel.

A cursor names the last log position a reader has consumed. It is
`version | seq | channel tag | HMAC` in URL-safe base64: the tag lets us tell
"used on another channel" from "forged" in the error, the MAC (keyed by the
deployment's secret) makes any edit detectable.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct

from .errors import InvalidCursor

_VERSION = 1
_LAYOUT = struct.Struct(">BQ4s")  # version, seq, channel tag
_MAC_BYTES = 14  # 13 + 14 = 27 bytes: 36 base64 characters with no spare bits to flip unnoticed
_ENCODED_LENGTH = len(base64.urlsafe_b64encode(b"\0" * (_LAYOUT.size + _MAC_BYTES)).rstrip(b"="))
# As long as every cursor: for sizing a frame before its cursor exists.
CURSOR_PLACEHOLDER = "x" * _ENCODED_LENGTH


class CursorCodec:
    def __init__(self, key: bytes) -> None:
        self._key = hashlib.sha256(b"realtime-transport/cursor/v1\0" + key).digest()

    @staticmethod
    def _tag(channel_key: str) -> bytes:
        return hashlib.sha256(channel_key.encode()).digest()[:4]

    def _mac(self, body: bytes, channel_key: str) -> bytes:
        return hmac.new(self._key, body + channel_key.encode(), hashlib.sha256).digest()[:_MAC_BYTES]

    def encode(self, channel_key: str, seq: int) -> str:
        body = _LAYOUT.pack(_VERSION, seq, self._tag(channel_key))
        return base64.urlsafe_b64encode(body + self._mac(body, channel_key)).rstrip(b"=").decode()

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
        if not hmac.compare_digest(mac, self._mac(body, channel_key)):
            raise InvalidCursor("cursor has been altered or was not issued here", field="cursor")
        return int(seq)
