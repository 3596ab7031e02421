"""API Gateway's WebSocket limits that shape what the transport sends.

From "Quotas for configuring and running a WebSocket in API Gateway" (API Gateway Developer
Guide): a message payload is at most 128 KB and a WebSocket frame at most 32 KB (a larger
message is split into frames, and billed per 32 KB). "KB" is read as 1,000 bytes: the
smaller reading, so the transport is right whichever one API Gateway means.
"""

from __future__ import annotations

MAX_MESSAGE_BYTES = 128_000  # PostToConnection refuses more with 413
FRAME_BYTES = 32_000  # catch-up packs events into messages of at most this (one billing unit)
