"""One run: start the substrate, run the workload and the nemesis, quiesce, check, report."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .checker import RunRecord, Violation, check, minimal_history
from .history import History, Op
from .substrate import Substrate
from .workload import Context, Producer, Reader, Subscriber, Worker, read_page

if TYPE_CHECKING:
    from ..faithful import Faults

# The library never calls a hole abandoned on a margin thinner than this (channel._CLOCK_SKEW_MS).
_LIBRARY_CLOCK_SKEW_S = 1.0


@dataclass(frozen=True)
class ChaosConfig:
    seed: int = 1
    seconds: float = 10.0
    channels: int = 3
    producers: int = 4
    readers: int = 2
    subscribers: int = 6
    late_subscribers: int = 2  # of the subscribers, these stay away past the history window
    history_limit: int = 30
    writer_timeout_s: float = 0.5
    history_ttl_s: int = 20
    sweep_interval_s: float = 0.5
    # The nemesis. DynamoDB errors and lost responses per request of the operations they apply to
    # (see substrate.default_faults), low enough for botocore's retries to absorb them all.
    fault_rate: float = 0.02
    lost_rate: float = 0.02
    writer_kill_rate: float = 0.03  # publishes whose writer dies between ADD and fill
    fanout_kill_rate: float = 0.1  # fan-out invocations killed part-way through their batch
    lost_ack_rate: float = 0.05  # successful publishes whose response the producer never sees
    drop_rate: float = 0.7  # connection drops per subscriber-second
    late_absence_s: tuple[float, float] = (1.5, 3.0)
    has_more_rate: float = 0.2  # subscribes answered under a catch-up budget short enough for hasMore
    faults: Faults | None = None  # instead of substrate.default_faults(self)


@dataclass
class ChaosResult:
    config: ChaosConfig
    ops: list[Op]
    violations: list[Violation]
    faults: dict[str, int]
    elapsed_s: float
    workload_s: float
    check_s: float
    notes: list[str] = field(default_factory=list)
    log: dict[str, int] = field(default_factory=dict)  # what the log holds (Truth.summary)

    @property
    def ops_checked(self) -> int:
        return len(self.ops)

    @property
    def ops_per_s(self) -> float:
        return self.ops_checked / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def fivexx(self) -> list[Op]:
        return [op for op in self.ops if op.value.get("fivexx")]

    def fault_kinds(self) -> dict[str, int]:
        """The injected faults grouped by kind."""
        kinds: Counter[str] = Counter()
        for name, count in self.faults.items():
            kinds[_kind_of(name)] += count
        return dict(kinds)

    def coverage(self) -> dict[str, int]:
        """How often the workload reached the paths the invariants are about."""
        seen: Counter[str] = Counter()
        for op in self.ops:
            value = op.value
            if op.f == "publish":
                if "seq" in value:
                    seen["publish duplicate" if value.get("duplicate") else "publish created"] += 1
                elif value.get("conflict"):
                    seen["publish refused (409)"] += 1
                else:
                    seen["publish unknown (maybe)"] += 1
            elif op.f == "read":
                seen["history page truncated" if value.get("truncated") else "history page"] += 1
            elif op.f == "subscribe":
                seen[f"subscribe ({value.get('why')})"] += 1
            elif op.f == "recv" and value.get("kind") == "subscribed":
                seen["subscribed truncated" if value.get("truncated") else "subscribed"] += 1
                seen["subscribed hasMore"] += bool(value.get("has_more"))
            elif op.f == "recv" and value.get("kind") in ("event", "events"):
                seen[f"{value['kind']} frame ({value.get('via')})"] += 1
            elif op.f == "skip":
                seen[f"skipped by client ({value.get('reason')})"] += len(str(value.get("skipped", "")).split(","))
        return dict(seen)

    def report(self, histories: int = 3) -> str:
        config = self.config
        by_f = Counter(op.f for op in self.ops)
        subscriber_ops = sum(count for f, count in by_f.items() if f not in ("publish", "read", "batch"))
        lines = [
            f"chaos: seed {config.seed}, {config.seconds:g} s, {config.channels} channels, "
            f"{config.producers} producers, {config.readers} readers, "
            f"{config.subscribers} subscribers ({config.late_subscribers} late); "
            f"history_limit {config.history_limit}, writer timeout {config.writer_timeout_s:g} s, "
            f"TTL {config.history_ttl_s} s",
            "  (the seed fixes the workload and the fault schedule; thread interleavings vary from run to run)",
            f"operations checked: {self.ops_checked} ({by_f['publish']} publish attempts, "
            f"{by_f['read']} history pages, {by_f['batch']} fan-out batches, "
            f"{subscriber_ops} subscriber and nemesis operations)",
            f"operations/s: {self.ops_per_s:.1f} over {self.elapsed_s:.1f} s ({self.workload_s:.1f} s of workload, "
            f"then quiescence); checked in {self.check_s:.2f} s",
            "faults injected (by kind): "
            + ", ".join(f"{kind} {count}" for kind, count in sorted(self.fault_kinds().items())),
            "  detail: " + ", ".join(f"{name} {count}" for name, count in sorted(self.faults.items())),
            "log: " + ", ".join(f"{name} {count}" for name, count in self.log.items()),
            "coverage: " + ", ".join(f"{name} {count}" for name, count in sorted(self.coverage().items()) if count),
        ]
        fivexx = self.fivexx
        lines.append(f"503s: {len(fivexx)}")
        for op in fivexx[:10]:
            lines.append(f"  {op.describe()}")
        lines.extend(f"note: {note}" for note in self.notes)
        lines.append(f"violations: {len(self.violations)}")
        for number, violation in enumerate(self.violations, 1):
            lines.append(f"VIOLATION {number}: {violation.headline()}")
            if number <= histories:
                history = minimal_history(self.ops, violation)
                lines.append(f"  minimal history ({len(history)} operations):")
                lines.extend(f"    {op.describe()}" for op in history)
        if self.violations:
            lines.append(f"seed {config.seed}: rerun with {self.command()}")
        return "\n".join(lines)

    def command(self) -> str:
        """The command line that runs this configuration again (the same workload and faults)."""
        config, default = self.config, ChaosConfig()
        parts = ["python -m realtime_devstack.chaos", f"--seed {config.seed}", f"--seconds {config.seconds:g}"]
        for name, flag in _FLAGS.items():
            value = getattr(config, name)
            if value != getattr(default, name):
                parts.append(f"--{flag} {value:g}" if isinstance(value, float) else f"--{flag} {value}")
        in_code = [
            name
            for name in vars(config)
            if name not in _FLAGS
            and name not in ("seed", "seconds")
            and getattr(config, name) != getattr(default, name)
        ]
        if in_code:
            parts.append(f"(and, set in code, ChaosConfig {', '.join(f'{n}={getattr(config, n)!r}' for n in in_code)})")
        return " ".join(parts)


# ChaosConfig fields the command line sets, and their flags (see __main__).
_FLAGS = {
    "channels": "channels",
    "producers": "producers",
    "readers": "readers",
    "subscribers": "subscribers",
    "late_subscribers": "late-subscribers",
    "history_limit": "history-limit",
    "history_ttl_s": "ttl",
    "fault_rate": "fault-rate",
    "lost_rate": "lost-rate",
    "writer_kill_rate": "writer-kill-rate",
    "fanout_kill_rate": "fanout-kill-rate",
    "lost_ack_rate": "lost-ack-rate",
    "drop_rate": "drop-rate",
}


def _kind_of(name: str) -> str:
    if name.startswith("lost:"):
        return "lost response"
    code = name.partition(":")[2]
    if code in ("ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"):
        return "throttle"
    if code in ("InternalServerError", "ServiceUnavailable"):
        return "5xx"
    return {
        "TransactionConflict": "transaction conflict",
        "gsi_hidden": "gsi lag",
        "ttl_delayed": "late ttl",
        "idempotent_replay": "transaction replay",
    }.get(name, name.replace("_", " "))


def run(config: ChaosConfig) -> ChaosResult:
    history = History()
    began_wall = time.time()
    started = time.monotonic()
    notes: list[str] = []
    with Substrate(config, history) as system:
        from .. import faithful

        channels = [f"chaos_{index}" for index in range(config.channels)]
        ctx = Context(config, history, system, channels)
        producers: list[Worker] = [Producer(ctx, f"producer-{index}") for index in range(config.producers)]
        readers: list[Worker] = [Reader(ctx, f"reader-{index}") for index in range(config.readers)]
        subscribers = [
            Subscriber(ctx, f"sub-{index}", _channels_of(index, channels), late=index < config.late_subscribers)
            for index in range(config.subscribers)
        ]
        for worker in (*subscribers, *producers, *readers):
            worker.start()
        time.sleep(config.seconds)

        # Quiesce: clients stop, the nemesis heals, abandoned positions age past the writer timeout,
        # a final read resolves them, the stream drains, every subscriber catches up.
        ctx.stop.set()
        _join(history, [*producers, *readers], notes)
        workload_s = time.monotonic() - started
        ctx.calm.set()
        injected = Counter(system.heal())
        time.sleep(config.writer_timeout_s + _LIBRARY_CLOCK_SKEW_S + 0.3)
        ctx.final_heads.update(_final_reads(ctx))
        if not system.drain():
            notes.append("the stream did not drain before the subscribers' final catch-up")
        ctx.finishing.set()
        _join(history, subscribers, notes)
        if not system.drain():
            notes.append("the stream did not drain at the end")
        injected.update(faithful.injected())
        injected["writer_killed"] = system.store.kills
        injected["fanout_killed"] = system.switchboard.kills
        injected["subscriber_dropped"] = sum(subscriber.drops for subscriber in subscribers)
        injected["lost_ack"] = sum(1 for op in history if op.f == "publish" and op.value.get("lost_ack"))
        injected["writer_timed_out"] = sum(1 for op in history if op.f == "publish" and op.value.get("timed_out"))
        if system.dead_letters:
            notes.append(f"the event source mapping dead-lettered {system.dead_letters} records")
        log = system.truth.summary()
        record = RunRecord(
            ops=list(history),
            truth=system.truth,
            clients=[record for subscriber in subscribers for record in subscriber.records],
            final_heads=dict(ctx.final_heads),
            history_limit=config.history_limit,
            ttl_s=system.settings.history_ttl_seconds,
            began_wall=began_wall,
            first_fill=dict(system.store.first_fill),
            notes=notes,
        )
    elapsed = time.monotonic() - started
    checking = time.monotonic()
    violations = check(record)
    return ChaosResult(
        config=config,
        ops=record.ops,
        violations=violations,
        faults={name: count for name, count in injected.items() if count},
        elapsed_s=elapsed,
        workload_s=workload_s,
        check_s=time.monotonic() - checking,
        notes=record.notes,
        log=log,
    )


def _channels_of(index: int, channels: list[str]) -> list[str]:
    """Each subscriber's channels: its own, and for every third one the next channel as well (one
    connection, two subscriptions: the fan-out merges their frames, a pong carries both heads)."""
    own = channels[index % len(channels)]
    if index % 3 == 2 and len(channels) > 1:
        return [own, channels[(index + 1) % len(channels)]]
    return [own]


def _join(history: History, workers: list[Worker] | list[Subscriber], notes: list[str]) -> None:
    for worker in workers:
        worker.join(60)
        if worker.is_alive():
            history.add(history.tick(), worker.name, "hang", "info", error="did not stop in 60 s", unexpected=True)


def _final_reads(ctx: Context) -> dict[str, int]:
    """Read each channel's whole window once: the last readers' tombstones, and where the log ends."""
    heads: dict[str, int] = {}
    system, limit = ctx.system, ctx.config.history_limit
    for name in ctx.channels:
        channel = system.realtime.channel(name)
        head = 0
        for _ in range(20):
            try:
                head = system.store.head(channel.key).seq
                break
            except Exception:
                time.sleep(0.05)
        after = max(0, head - limit)
        cursor = channel.cursor(after)
        reached = after
        start = ctx.history.tick()
        for _ in range(50):
            page = read_page(ctx, "final", name, 100, after, cursor)
            if page is None:
                time.sleep(0.05)
                continue
            reached = page.position
            if not page.has_more:
                break
            if page.next_cursor == cursor:
                time.sleep(0.1)  # a hole younger than the writer timeout: there should be none now
            cursor, after = page.next_cursor, page.position
        ctx.history.add(
            start, "final", "final-read", "ok" if reached >= head else "fail", channel=name, reached=reached, head=head
        )
        heads[name] = head
    return heads
