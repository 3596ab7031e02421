"""The recorded history: every operation a client, the fan-out or the nemesis performed, in order.

Each operation has a logical invocation and completion time (`start`, `end`: ticks of one process-
wide counter), so the checker can tell "B began after A was acknowledged" without trusting clocks.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Op:
    """One operation. `type` is Jepsen's: ok (it happened), fail (it did not), info (unknown)."""

    start: int
    end: int
    t: float  # seconds since the run began, at completion
    process: str  # producer-1, reader-0, sub-3, fanout, nemesis, checker
    f: str  # publish, read, connect, subscribe, ping, drop, recv, batch, kill-writer, kill-fanout, ...
    type: str
    channel: str | None = None
    key: str | None = None
    lo: int | None = None  # the seqs the operation touched, lo..hi (None: none)
    hi: int | None = None
    value: dict[str, Any] = field(default_factory=dict)
    index: int = -1  # position in the history (completion order)

    def touches(self, seqs: Iterable[int]) -> bool:
        if self.lo is None or self.hi is None:
            return False
        return any(self.lo <= seq <= self.hi for seq in seqs)

    def describe(self) -> str:
        where = f" {self.channel}" if self.channel else ""
        key = f" key={self.key}" if self.key else ""
        span = ""
        if self.lo is not None:
            span = f" seq={self.lo}" if self.lo == self.hi else f" seqs={self.lo}..{self.hi}"
        details = " ".join(f"{name}={_short(value)}" for name, value in self.value.items())
        return (
            f"#{self.index:<6} t={self.t:7.3f} [{self.start}-{self.end}] {self.process:<12} "
            f"{self.f} {self.type}{where}{key}{span} {details}"
        ).rstrip()


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 160 else text[:157] + "..."


class History:
    """Thread-safe, append-only."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ops: list[Op] = []
        self._ticks = itertools.count(1)
        self._began = time.monotonic()

    def tick(self) -> int:
        return next(self._ticks)  # one C call: atomic under the GIL

    def elapsed(self) -> float:
        return time.monotonic() - self._began

    def add(
        self,
        start: int,
        process: str,
        f: str,
        type: str,
        *,
        channel: str | None = None,
        key: str | None = None,
        seqs: Iterable[int] = (),
        lo: int | None = None,
        hi: int | None = None,
        **value: Any,
    ) -> Op:
        touched = [seq for seq in seqs if seq is not None]
        if touched:
            lo = min(touched) if lo is None else min(lo, *touched)
            hi = max(touched) if hi is None else max(hi, *touched)
        op = Op(
            start=start,
            end=self.tick(),
            t=self.elapsed(),
            process=process,
            f=f,
            type=type,
            channel=channel,
            key=key,
            lo=lo,
            hi=hi,
            value={name: item for name, item in value.items() if item is not None},
        )
        with self._lock:
            op.index = len(self._ops)
            self._ops.append(op)
        return op

    def __iter__(self) -> Iterator[Op]:
        with self._lock:
            return iter(list(self._ops))

    def __len__(self) -> int:
        return len(self._ops)
