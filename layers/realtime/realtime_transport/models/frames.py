"""WebSocket frames built around stored envelope JSON, without re-serialising it.

Plain string building, no pydantic: the ingest function sizes every event by the frame a
subscriber will receive (`channel.py`), and importing the WebSocket message models for that
would cost its cold start about 20 ms (`python -X importtime`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence


def event_frame(channel: str, event_json: str, cursor: str | None = None) -> bytes:
    """An `EventMessage` frame built around the stored envelope JSON without re-serialising it."""
    tail = f',"cursor":{json.dumps(cursor)}' if cursor is not None else ""
    return ('{"type":"event","channel":' + json.dumps(channel) + ',"event":' + event_json + tail + "}").encode()


def events_frame(channel: str, event_jsons: Sequence[str], cursor: str) -> bytes:
    """An `EventsMessage` frame around stored envelope JSON."""
    head = '{"type":"events","channel":' + json.dumps(channel) + ',"events":['
    return (head + ",".join(event_jsons) + '],"cursor":' + json.dumps(cursor) + "}").encode()


def packed_frames(
    channel: str, events: Sequence[tuple[int, str]], cursor_of: Callable[[int], str], frame_bytes: int
) -> Iterator[tuple[bytes, int]]:
    """(frame, last seq) for `events` ((seq, envelope JSON) in seq order), as few frames as fit.

    Consecutive events share an `events` frame of at most `frame_bytes`; one that does not fit
    in a frame of its own size travels alone in an `event` frame (API Gateway takes messages up
    to 128 KB, split into 32 KB frames and billed per 32 KB).
    """
    overhead = len(events_frame(channel, [], cursor_of(0)))
    batch: list[tuple[int, str]] = []
    size = overhead

    def flush() -> tuple[bytes, int]:
        last = batch[-1][0]
        if len(batch) == 1:
            frame = event_frame(channel, batch[0][1], cursor_of(last))
        else:
            frame = events_frame(channel, [text for _, text in batch], cursor_of(last))
        batch.clear()
        return frame, last

    for seq, text in events:
        cost = len(text.encode()) + (1 if batch else 0)
        if batch and size + cost > frame_bytes:
            yield flush()
            size = overhead
            cost = len(text.encode())
        batch.append((seq, text))
        size += cost
    if batch:
        yield flush()
