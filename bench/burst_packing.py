"""Management-API calls and billed messages under a burst: one event per message (before) vs a
channel's events packed into `events` messages of at most 32,000 bytes (the fan-out now).

Frames are built by the fan-out's own code (`models.frames`, with real signed cursors), so the
sizes are the wire's. Calls are per subscriber; API Gateway bills a message per 32 KB
(`limits.FRAME_BYTES`, read as 32,000 bytes). No network: the counts do not depend on latency.

    .venv/bin/python bench/burst_packing.py
"""

from __future__ import annotations

import json
import math

from _common import table

from realtime_transport.cursor import CursorCodec
from realtime_transport.limits import FRAME_BYTES
from realtime_transport.models.frames import event_frame, packed_frames

CHANNEL = "feed_42"
KEY = f"transport#{CHANNEL}"
SCENARIOS = [  # (events in the burst, envelope bytes each, subscribers)
    (50, 500, 100),
    (100, 200, 100),
    (20, 5_000, 100),
    (10, 40_000, 100),
    (1, 500, 100),
]


def envelope(seq: int, size: int) -> str:
    body = {"id": f"01ID{seq:08d}", "channel": CHANNEL, "seq": seq, "type": "t", "data": {"pad": ""}}
    body["data"]["pad"] = "x" * max(0, size - len(json.dumps(body, separators=(",", ":"))))
    return json.dumps(body, separators=(",", ":"))


def main() -> None:
    codec = CursorCodec(b"bench-secret-of-at-least-32-bytes-long")
    rows = []
    for count, size, subscribers in SCENARIOS:
        events = [(seq, envelope(seq, size)) for seq in range(1, count + 1)]
        single = [event_frame(CHANNEL, text, codec.encode(KEY, seq)) for seq, text in events]
        packed = [frame for frame, _ in packed_frames(CHANNEL, events, lambda s: codec.encode(KEY, s), FRAME_BYTES)]
        calls_before, calls_after = len(single) * subscribers, len(packed) * subscribers
        billed_before = sum(math.ceil(len(f) / FRAME_BYTES) for f in single) * subscribers
        billed_after = sum(math.ceil(len(f) / FRAME_BYTES) for f in packed) * subscribers
        rows.append(
            (
                f"{count} x {size} B -> {subscribers}",
                calls_before,
                calls_after,
                round(calls_before / calls_after, 1),
                round(calls_after / (count * subscribers), 3),
                billed_before,
                billed_after,
                round(billed_before / billed_after, 1),
            )
        )
    table(
        [
            "burst (events x size -> subscribers)",
            "calls before",
            "calls after",
            "calls ratio",
            "calls per delivered event",
            "billed before",
            "billed after",
            "billed ratio",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
