"""The checker: invariants (a) to (e) over the recorded history, against the log as DynamoDB held it
(every INSERT of a position on the events table's stream, which the fan-out reads anyway).

(a) acknowledged publishes: stored at their seq with their id and payload; in real-time order (a
    publish that began after another was acknowledged has a higher seq); returned by every history
    page that passed their seq while they were in the window and unexpired.
(b) positions: each written at most once, an event id at one position only, one event per unkeyed
    publish; a history page is strictly increasing, past its cursor, and every position it passed
    was filled (an event or a tombstone) unless it may have expired and the page said `truncated`;
    every frame a subscriber received carries the event the log holds at that seq.
(c) idempotency keys: at most one event per key; every acknowledged publish with the key returns it,
    with the payload it carries; a refusal (IdempotencyConflict) only for another payload.
(d) subscribers: every event from the subscription's start to the final head handed to the page
    once, or covered by a loss the server reported (`truncated`); every subscriber catches up.
(e) no 5xx: no StoreUnavailable or ConfigurationError reached a caller, no unexpected exception.
"""

from __future__ import annotations

import bisect
import itertools
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .history import Op
from .substrate import Stored, Truth
from .workload import ClientRecord, _ranges

# A position, or a TTL, is judged against the reader's clock with this much slack (the library
# allows 1 s of clock skew on top of its own integer-second expiry).
_EXPIRY_SLACK_S = 2.0


@dataclass(frozen=True)
class Violation:
    invariant: str  # a | b | c | d | e
    check: str  # a short name of the rule broken
    message: str
    channel: str | None = None
    key: str | None = None
    subscriber: str | None = None
    seqs: tuple[int, ...] = ()
    ops: tuple[int, ...] = ()  # indexes of the operations that show it

    def headline(self) -> str:
        scope = " ".join(
            part
            for part in (
                f"channel={self.channel}" if self.channel else "",
                f"key={self.key}" if self.key else "",
                f"subscriber={self.subscriber}" if self.subscriber else "",
                f"seqs={_ranges(list(self.seqs))}" if self.seqs else "",
            )
            if part
        )
        return f"({self.invariant}) {self.check}: {self.message}" + (f" [{scope}]" if scope else "")


@dataclass
class RunRecord:
    ops: list[Op]
    truth: Truth
    clients: list[ClientRecord]
    final_heads: dict[str, int]
    history_limit: int
    ttl_s: int
    began_wall: float
    first_fill: dict[tuple[str, int], int] = field(default_factory=dict)  # see KillableStore
    notes: list[str] = field(default_factory=list)


def check(run: RunRecord) -> list[Violation]:
    return _Checker(run).violations()


def minimal_history(ops: list[Op], violation: Violation, limit: int = 80) -> list[Op]:
    """Only the operations on the violation's channel, key or subscriber that touch its seqs, in order."""
    seqs = set(violation.seqs)
    evidence = set(violation.ops)
    requests = {ops[index].value.get("request") for index in evidence if 0 <= index < len(ops)} - {None}
    chosen: list[Op] = []
    for op in ops:
        if op.index in evidence:
            chosen.append(op)
            continue
        if violation.channel is not None and op.channel not in (violation.channel, None):
            continue
        if requests and op.value.get("request") in requests:
            chosen.append(op)
        elif violation.key is not None:
            if op.key == violation.key or (op.f in ("kill-writer", "batch") and op.touches(seqs)):
                chosen.append(op)
        elif violation.subscriber is not None:
            if op.process == violation.subscriber:
                if op.f in ("connect", "drop", "disconnect", "converge", "crash", "subscribe") or op.touches(seqs):
                    chosen.append(op)
            elif op.f in ("publish", "kill-writer", "batch", "dead-letter", "kill-fanout") and op.touches(seqs):
                chosen.append(op)
        elif seqs and op.touches(seqs) and not op.process.startswith("sub-"):
            chosen.append(op)
    if len(chosen) > limit:
        keep = [op for op in chosen if op.index in evidence]
        rest = [op for op in chosen if op.index not in evidence]
        chosen = sorted(keep + rest[: max(0, limit - len(keep))], key=lambda op: op.index)
    return chosen


class _Checker:
    def __init__(self, run: RunRecord) -> None:
        self.run = run
        self.found: dict[tuple[Any, ...], Violation] = {}
        self.stored: dict[str, dict[int, Stored]] = {}
        self.allocations: dict[str, tuple[list[int], list[Stored]]] = {}
        for channel, positions in run.truth.inserts.items():
            self.stored[channel] = {seq: inserts[0] for seq, inserts in positions.items()}
            ordered = sorted(self.stored[channel])
            self.allocations[channel] = (ordered, [self.stored[channel][seq] for seq in ordered])

    def add(self, violation: Violation) -> None:
        identity = (violation.invariant, violation.check, violation.channel, violation.key, violation.subscriber)
        detail = violation.ops[:1] if violation.invariant == "e" else violation.seqs[:1]
        self.found.setdefault((*identity, detail), violation)

    def violations(self) -> list[Violation]:
        self.positions()
        publishes = [op for op in self.run.ops if op.f == "publish"]
        self.acknowledged(publishes)
        self.real_time_order(publishes)
        self.keys(publishes)
        self.unkeyed(publishes)
        for op in self.run.ops:
            if op.f == "read" and op.type == "ok":
                self.page(op)
            elif op.f == "recv" and ("ids" in op.value or op.value.get("foreign")):
                self.frame(op)
            elif op.f == "recv" and op.value.get("kind") == "subscribed":
                self.subscribed(op)
            elif op.f in ("converge", "final-read") and op.type == "fail":
                self.add(
                    Violation(
                        "d" if op.f == "converge" else "b",
                        "no progress",
                        f"{op.process} could not get to the final head: {op.value}",
                        channel=op.channel,
                        subscriber=op.process if op.process.startswith("sub-") else None,
                        ops=(op.index,),
                    )
                )
            if op.value.get("fivexx") or op.value.get("unexpected"):
                self.server_error(op)
        for client in self.run.clients:
            self.subscriber(client)
        return sorted(self.found.values(), key=lambda v: (v.invariant, v.channel or "", v.seqs[:1]))

    # --- helpers ----------------------------------------------------------------------------

    def event_at(self, channel: str, seq: int) -> Stored | None:
        return self.stored.get(channel, {}).get(seq)

    @staticmethod
    def expired(stored: Stored, wall: float) -> bool:
        return stored.expires_at is not None and stored.expires_at <= wall + _EXPIRY_SLACK_S

    def may_have_expired(self, channel: str, seq: int, wall: float) -> bool:
        """Could a reader at `wall` have judged this missing position expired? Only if it was
        allocated a TTL ago: no earlier than the nearest stored position below it."""
        if wall - self.run.began_wall < self.run.ttl_s - _EXPIRY_SLACK_S:
            return False
        ordered, stored = self.allocations.get(channel, ([], []))
        below = bisect.bisect_left(ordered, seq) - 1
        if below < 0 or stored[below].allocated_at is None:
            return True
        allocated_after = (stored[below].allocated_at or 0) / 1000
        return allocated_after + self.run.ttl_s < wall + _EXPIRY_SLACK_S

    # --- (b) the log itself --------------------------------------------------------------------

    def positions(self) -> None:
        seen: dict[str, tuple[str, int]] = {}
        for channel, positions in self.run.truth.inserts.items():
            for seq, inserts in sorted(positions.items()):
                if len(inserts) > 1:
                    what = ", ".join(f"{s.kind} {s.event_id or ''}".strip() for s in inserts)
                    message = f"seq {seq} was written {len(inserts)} times: {what}"
                    self.add(Violation("b", "position written twice", message, channel=channel, seqs=(seq,)))
                for stored in inserts:
                    if stored.event_id is None:
                        continue
                    where = seen.setdefault(stored.event_id, (channel, seq))
                    if where != (channel, seq):
                        self.add(
                            Violation(
                                "b",
                                "event stored twice",
                                f"event {stored.event_id} is at {where[0]} seq {where[1]} and at seq {seq}",
                                channel=channel,
                                seqs=(where[1], seq),
                            )
                        )

    # --- (a) acknowledged publishes ---------------------------------------------------------------

    def acknowledged(self, publishes: list[Op]) -> None:
        for op in publishes:
            if "seq" not in op.value or op.channel is None:
                continue
            seq, event_id = int(op.value["seq"]), op.value["id"]
            stored = self.event_at(op.channel, seq)
            if stored is None or stored.kind != "event" or stored.event_id != event_id:
                held = "nothing" if stored is None else f"{stored.kind} {stored.event_id or ''}".strip()
                self.add(
                    Violation(
                        "a",
                        "acknowledged publish not stored",
                        f"{op.process} was told {event_id} is seq {seq}; the log holds {held} there",
                        channel=op.channel,
                        key=op.key,
                        seqs=(seq,),
                        ops=(op.index,),
                    )
                )
            elif not op.value.get("duplicate") and stored.data != op.value.get("data"):
                self.add(
                    Violation(
                        "a",
                        "stored payload differs",
                        f"seq {seq} holds {stored.data!r}, {op.process} published {op.value.get('data')!r}",
                        channel=op.channel,
                        key=op.key,
                        seqs=(seq,),
                        ops=(op.index,),
                    )
                )

    def real_time_order(self, publishes: list[Op]) -> None:
        """A publish that began after another was acknowledged holds a higher seq."""
        by_channel: dict[str, list[Op]] = defaultdict(list)
        for op in publishes:
            if "seq" in op.value and not op.value.get("duplicate") and op.channel is not None:
                by_channel[op.channel].append(op)
        for channel, ops in by_channel.items():
            ops.sort(key=lambda op: op.end)
            ends = [op.end for op in ops]
            best: list[Op] = []  # best[i]: the highest-seq op among ops[: i + 1]
            for op in ops:
                best.append(op if not best or int(op.value["seq"]) > int(best[-1].value["seq"]) else best[-1])
            for op in ops:
                before = bisect.bisect_left(ends, op.start) - 1  # ops acknowledged before op began
                if before < 0:
                    continue
                earlier = best[before]
                if int(earlier.value["seq"]) >= int(op.value["seq"]):
                    self.add(
                        Violation(
                            "a",
                            "out of real-time order",
                            f"{op.process} began after {earlier.process}'s publish (seq {earlier.value['seq']}) was "
                            f"acknowledged, yet got seq {op.value['seq']}",
                            channel=channel,
                            seqs=(int(earlier.value["seq"]), int(op.value["seq"])),
                            ops=(earlier.index, op.index),
                        )
                    )

    # --- (c) idempotency keys ---------------------------------------------------------------------

    def keys(self, publishes: list[Op]) -> None:
        groups: dict[tuple[str, str], list[Op]] = defaultdict(list)
        for op in publishes:
            if op.key is not None and op.channel is not None:
                groups[(op.channel, op.key)].append(op)
        by_key: dict[tuple[str, str], list[Stored]] = defaultdict(list)
        for channel, positions in self.stored.items():
            for stored in positions.values():
                if stored.kind == "event" and stored.key is not None:
                    by_key[(channel, stored.key)].append(stored)
        for (channel, key), ops in groups.items():
            events = by_key.get((channel, key), [])
            if len({stored.event_id for stored in events}) > 1:
                self.add(
                    Violation(
                        "c",
                        "two events for one key",
                        "the log holds " + ", ".join(f"seq {s.seq} ({s.event_id}, {s.data})" for s in events),
                        channel=channel,
                        key=key,
                        seqs=tuple(sorted(s.seq for s in events)),
                    )
                )
                continue
            winner = events[0] if events else None
            variant = (winner.data or {}).get("v") if winner is not None and isinstance(winner.data, dict) else None
            for op in ops:
                sent = op.value.get("data", {}).get("v")
                if "seq" in op.value:
                    if winner is not None and op.value["id"] != winner.event_id:
                        self.add(
                            Violation(
                                "c",
                                "another event for the key",
                                f"{op.process} was given {op.value['id']} (seq {op.value['seq']}); the key's event is "
                                f"{winner.event_id} (seq {winner.seq})",
                                channel=channel,
                                key=key,
                                seqs=(int(op.value["seq"]), winner.seq),
                                ops=(op.index,),
                            )
                        )
                    elif winner is not None and sent != variant:
                        self.add(
                            Violation(
                                "c",
                                "reused key not refused",
                                f"{op.process} sent payload v={sent} with a key whose event carries v={variant} and "
                                f"was answered {'duplicate' if op.value.get('duplicate') else 'created'} instead of "
                                "IdempotencyConflict",
                                channel=channel,
                                key=key,
                                seqs=(winner.seq,),
                                ops=(op.index,),
                            )
                        )
                elif op.value.get("conflict"):
                    if winner is None:
                        self.add(
                            Violation(
                                "c",
                                "refused without an event",
                                f"{op.process} was refused (IdempotencyConflict) but no event holds the key",
                                channel=channel,
                                key=key,
                                ops=(op.index,),
                            )
                        )
                    elif sent == variant:
                        self.add(
                            Violation(
                                "c",
                                "retry refused",
                                f"{op.process} resent the key's own payload (v={sent}) and was refused",
                                channel=channel,
                                key=key,
                                seqs=(winner.seq,),
                                ops=(op.index,),
                            )
                        )

    def unkeyed(self, publishes: list[Op]) -> None:
        stored_for: dict[str, list[Stored]] = defaultdict(list)
        for positions in self.stored.values():
            for stored in positions.values():
                if stored.kind == "event" and isinstance(stored.data, dict) and "op" in stored.data:
                    stored_for[str(stored.data["op"])].append(stored)
        requests = {op.value.get("request"): op for op in publishes if op.key is None}
        for request, events in stored_for.items():
            if len(events) > 1:
                op = requests.get(request)
                self.add(
                    Violation(
                        "b",
                        "one publish stored twice",
                        f"unkeyed publish {request} is in the log {len(events)} times: "
                        + ", ".join(f"seq {s.seq} ({s.event_id})" for s in events),
                        channel=events[0].channel,
                        seqs=tuple(sorted(s.seq for s in events)),
                        ops=(op.index,) if op is not None else (),
                    )
                )

    # --- (a) and (b) history pages ------------------------------------------------------------------

    def page(self, op: Op) -> None:
        channel = op.channel
        assert channel is not None  # noqa: S101 - reads are on a channel
        value = op.value
        items: list[tuple[int, str]] = [(int(seq), str(event_id)) for seq, event_id in value["items"]]
        position, after, wall = int(value["position"]), value.get("after"), float(value["wall"])
        truncated, head_after = bool(value.get("truncated")), value.get("head_after")
        seqs = [seq for seq, _ in items]

        def flag(invariant: str, check: str, message: str, at: Iterable[int]) -> None:
            self.add(Violation(invariant, check, message, channel=channel, seqs=tuple(at), ops=(op.index,)))

        if any(b <= a for a, b in itertools.pairwise(seqs)):
            flag("b", "page out of order", f"{op.process} got seqs {seqs}", seqs)
        if after is not None and seqs and seqs[0] <= after:
            flag("b", "page repeats its cursor", f"page after {after} starts at {seqs[0]}", seqs[:1])
        if seqs and seqs[-1] > position:
            flag("b", "page past its position", f"items up to {seqs[-1]}, position {position}", seqs[-1:])
        for seq, event_id in items:
            stored = self.event_at(channel, seq)
            if stored is None or stored.kind != "event" or stored.event_id != event_id:
                held = "nothing" if stored is None else f"{stored.kind} {stored.event_id or ''}".strip()
                flag("b", "page holds an event the log does not", f"{event_id} at seq {seq}; the log: {held}", [seq])
        may_be_lossy = after is None or truncated  # a cursor read says truncated when TTL took one
        if head_after is not None:
            floor = int(head_after) - self.run.history_limit + 1  # surely in the window during the read
            # The page's position claims every position up to it resolved (the latest events: all
            # of the window below it; from a cursor: those after the cursor). A read from a cursor
            # examined each of them; the latest events only those from its first item on.
            claimed = max(floor, int(after) + 1 if after is not None else 1)
            examined = claimed if after is not None else (seqs[0] if seqs else position + 1)
            self.claim(op, claimed, position, may_be_lossy, examined)
        # Every event from here to the position must be in the page.
        first: int | None
        if after is None:
            first = seqs[0] if seqs else None  # the latest events: a contiguous run up to position
        elif head_after is None:
            first = None
        else:
            first = max(int(after) + 1, int(head_after) - self.run.history_limit + 1)
        if first is None:
            return
        returned = {event_id for _, event_id in items}
        for seq in range(first, position + 1):
            stored = self.event_at(channel, seq)
            if stored is not None and (
                stored.kind == "event"
                and stored.event_id not in returned
                and not (may_be_lossy and self.expired(stored, wall))
            ):
                flag(
                    "a",
                    "page skipped an event",
                    f"{op.process} read after={after} to position={position} (truncated={truncated}) without "
                    f"seq {seq} ({stored.event_id}), in the window and unexpired",
                    [seq],
                )

    def claim(self, op: Op, low: int, position: int, lossy: bool, examined: int) -> None:
        """`position` (of a page or a `subscribed`) says every position from `low` to it is resolved,
        so no event can appear there any more. Those the read examined (from `examined` on) it must
        have filled, or judged expired and said so (`lossy`), before it answered; those below it
        (the latest events claim them settled: no writer can still hold them) must get no event."""
        channel = op.channel
        assert channel is not None  # noqa: S101 - reads are on a channel
        wall = float(op.value.get("wall", 0.0))
        what = f"{op.process} {op.f} {op.value.get('kind', '')}".strip()
        subscriber = op.process if op.process.startswith("sub-") else None
        context = f"position {position} (after={op.value.get('after')}, truncated={op.value.get('truncated')})"
        for seq in range(max(low, 1), position + 1):
            stored = self.event_at(channel, seq)
            first = self.run.first_fill.get((channel, seq))
            late = stored is not None and first is not None and first > op.end  # filled only after the answer
            if stored is not None and stored.kind == "event" and late:
                self.add(
                    Violation(
                        "b",
                        "an event landed behind a claim",
                        f"{what} claimed {context}, and then seq {seq} got event {stored.event_id} (its first write "
                        f"began at tick {first}, after the answer at {op.end}): whoever trusted the claim lost it",
                        channel=channel,
                        subscriber=subscriber,
                        seqs=(seq,),
                        ops=(op.index,),
                    )
                )
            elif (
                (stored is None or late)
                and seq >= examined
                and not (lossy and self.may_have_expired(channel, seq, wall))
            ):
                happened = "nothing was ever written there" if stored is None else "it was tombstoned only later"
                check = "passed an unfilled position"
                if self.unbounded_below(channel, seq, op.value.get("after"), op.end):
                    # No stored position below it in what the reader fetched: nothing bounded from
                    # below when it was allocated, and the reader took it for one TTL may have taken.
                    check += " with nothing filled below it"
                    happened += "; every position the reader fetched below it was unfilled too"
                self.add(
                    Violation(
                        "b",
                        check,
                        f"{what} claimed {context} past seq {seq}, unfilled and too young to have expired: {happened}",
                        channel=channel,
                        subscriber=subscriber,
                        seqs=(seq,),
                        ops=(op.index,),
                    )
                )

    def unbounded_below(self, channel: str, seq: int, after: Any, tick: int) -> bool:
        """Whether a read from `after` found nothing filled below `seq` (it fetches from `after` on)."""
        if seq == 1:
            return True
        if not isinstance(after, int):
            return False  # the latest events: where that read began is not known
        for below in range(max(after, 1), seq):
            first = self.run.first_fill.get((channel, below))
            if self.event_at(channel, below) is not None and first is not None and first <= tick:
                return False
        return True

    def subscribed(self, op: Op) -> None:
        value = op.value
        after, head_after = value.get("after"), value.get("head_after")
        if after == "?" or head_after is None:
            return  # not the answer to a subscribe of ours, or the head was unreadable
        floor = int(head_after) - self.run.history_limit + 1
        low = max(floor, int(after) + 1) if after is not None else floor
        position = int(value["position"])
        # A fresh subscribe answers with the latest resolved position (no truncation to report, and
        # what it examined is not known); a resumed one with how far its catch-up read.
        fresh = after is None
        self.claim(
            op, low, position, lossy=fresh or bool(value.get("truncated")), examined=position + 1 if fresh else low
        )

    def frame(self, op: Op) -> None:
        channel = op.channel
        assert channel is not None  # noqa: S101 - subscribers are on a channel
        if op.value.get("foreign"):
            self.add(
                Violation(
                    "d",
                    "frame of another channel",
                    f"{op.process} got a {op.value.get('kind')} frame of {channel}, which it never subscribed to",
                    channel=channel,
                    subscriber=op.process,
                    ops=(op.index,),
                )
            )
            return
        for seq, event_id in op.value["ids"]:
            stored = self.event_at(channel, int(seq))
            if stored is None or stored.kind != "event" or stored.event_id != event_id:
                held = "nothing" if stored is None else f"{stored.kind} {stored.event_id or ''}".strip()
                self.add(
                    Violation(
                        "b",
                        "frame holds an event the log does not",
                        f"{op.process} got {event_id} at seq {seq} ({op.value.get('via')}); the log: {held}",
                        channel=channel,
                        subscriber=op.process,
                        seqs=(int(seq),),
                        ops=(op.index,),
                    )
                )

    # --- (d) subscribers -----------------------------------------------------------------------------

    def subscriber(self, client: ClientRecord) -> None:
        if client.start_seq is None:
            self.run.notes.append(f"{client.name} never completed a subscribe: nothing to check")
            return
        channel = client.channel
        target = self.run.final_heads.get(channel, 0)
        if not client.converged:
            target = min(target, client.last or client.start_seq)
        missing: list[int] = []
        for seq in range(client.start_seq + 1, target + 1):
            stored = self.event_at(channel, seq)
            got = client.delivered.get(seq)
            if stored is None or stored.kind != "event":
                if got is not None:
                    self.add(
                        Violation(
                            "b",
                            "delivered a position that holds no event",
                            f"{client.name} handed {got} to the page as seq {seq}",
                            channel=channel,
                            subscriber=client.name,
                            seqs=(seq,),
                        )
                    )
                continue
            if got == stored.event_id:
                continue
            if got is not None:
                self.add(
                    Violation(
                        "d",
                        "delivered the wrong event",
                        f"{client.name} handed {got} to the page as seq {seq}; the log holds {stored.event_id}",
                        channel=channel,
                        subscriber=client.name,
                        seqs=(seq,),
                    )
                )
                continue
            if not self.told_of_loss(client, seq, stored):
                missing.append(seq)
        if missing:
            self.add(
                Violation(
                    "d",
                    "event never delivered",
                    f"{client.name} (subscribed after seq {client.start_seq}, caught up to {client.last}) never got "
                    f"{_ranges(missing)} and was not told of a loss",
                    channel=channel,
                    subscriber=client.name,
                    seqs=tuple(missing[:50]),
                )
            )

    def told_of_loss(self, client: ClientRecord, seq: int, stored: Stored) -> bool:
        for low, high, reason, wall in client.excused:
            if low <= seq <= high and (reason == "window" or self.expired(stored, wall)):
                return True
        return False

    # --- (e) server errors ---------------------------------------------------------------------------

    def server_error(self, op: Op) -> None:
        what = "5xx" if op.value.get("fivexx") else "unexpected error"
        self.add(
            Violation(
                "e",
                what,
                f"{op.process} {op.f}: {op.value.get('error')}",
                channel=op.channel,
                key=op.key,
                subscriber=op.process if op.process.startswith("sub-") else None,
                seqs=tuple(s for s in (op.lo,) if s is not None),
                ops=(op.index,),
            )
        )
