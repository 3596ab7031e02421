"""The system under test, in one process: moto, the tables from template.yaml, the library, the
fan-out fed by the events table's stream as Lambda's event source mapping feeds it, the TTL
sweeper, and the nemesis' hooks (a killable writer, a killable fan-out, droppable connections).

Everything the nemesis does that is not a DynamoDB fault (those are ``faithful``'s) lives here:

* ``KillableStore``: an ``EventStore`` whose ``allocate`` raises ``WriterKilled`` (a
  ``BaseException``, as a Lambda timeout is to the code it interrupts) after the ADD committed,
  when the calling thread armed it: the position stays a hole for readers to tombstone.
* ``Switchboard``: the management API. ``send`` is the WebSocket handler's pusher, ``send_many`` the
  fan-out's deliverer; a dropped connection answers as a gone one (410), and with ``kill_rate`` a
  fan-out invocation dies part-way through a batch (some connections got their frames, the rest
  did not), so the event source mapping retries the batch.
* ``Truth``: every INSERT and REMOVE of a log position on the stream, before any filter: the log as
  DynamoDB holds it, which the checker compares every answer against.
"""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .history import History

if TYPE_CHECKING:
    from realtime_transport.delivery import CloseReport, DeliveryReport
    from realtime_transport.models.items import Allocation

    from ..faithful import Faults
    from .runner import ChaosConfig

EVENTS_TABLE = "chaos-events"
CONNECTIONS_TABLE = "chaos-connections"
NAMESPACE = "chaos"
SECRET = b"chaos-checker-secret-long-enough-for-hs256"
FANOUT_FUNCTION = "FanoutFunction"
_QUIET = ("realtime_devstack.streams", "realtime_devstack.ttl")


class WriterKilled(BaseException):
    """The nemesis killed a writer between its ADD and its fill, as a Lambda timeout would."""


class WriterTimedOut(WriterKilled):
    """A writer outran the writer timeout: on Lambda its invocation is over and it writes nothing more.

    The library calls a position abandoned once its writer timeout has passed; in-process nothing
    would stop a slow writer (botocore's backoff after a throttle alone can take a second), so a
    botocore hook refuses every request a publish makes after its deadline, as ``lambda_host``'s
    guard does for the local stack's functions.
    """


class FanoutKilled(Exception):
    """The nemesis killed the fan-out invocation part-way through a batch."""


def default_faults(config: ChaosConfig) -> Faults:
    """``faithful``'s defaults plus low rates of throttling, 5xx and lost responses: low enough that
    botocore's retries absorb every one of them, so any 5xx that reaches a caller is a finding."""
    from .. import faithful

    rate, lost = config.fault_rate, config.lost_rate
    throttle = {"ProvisionedThroughputExceededException": rate, "InternalServerError": rate / 2}
    return replace(
        faithful.FAITHFUL_DEFAULTS,
        seed=config.seed,
        ttl_max_delay_s=min(faithful.FAITHFUL_DEFAULTS.ttl_max_delay_s, config.history_ttl_s / 2),
        error_rates={
            "PutItem": dict(throttle),
            "TransactWriteItems": dict(throttle),
            "UpdateItem": {"ThrottlingException": rate, "ServiceUnavailable": rate / 2},
            "GetItem": {"ThrottlingException": rate / 2, "InternalServerError": rate / 2},
            "Query": {"RequestLimitExceeded": rate / 2, "ServiceUnavailable": rate / 2},
            "BatchWriteItem": {"ProvisionedThroughputExceededException": rate},
        },
        lost_response_rates={"PutItem": lost, "UpdateItem": lost, "TransactWriteItems": lost, "DeleteItem": lost},
    )


# --- the writer the nemesis can kill ------------------------------------------------------------


def killable_store(client: Any, table: str, history: History) -> Any:
    """An ``EventStore`` whose next ``allocate`` on a thread that called ``arm()`` commits, then dies."""
    from realtime_transport.store import EventStore

    class KillableStore(EventStore):
        def __init__(self) -> None:
            super().__init__(client, table)
            self._armed = threading.local()
            self.kills = 0
            # (channel, seq) -> tick at the start of the first write that tried to fill it: a
            # position cannot be filled before this (a reader claiming it resolved earlier, while
            # it was empty, claimed too much).
            self.first_fill: dict[tuple[str, int], int] = {}
            self._fills_lock = threading.Lock()

        def _note_fill(self, item: Mapping[str, Any]) -> None:
            channel = str(item["pk"]["S"]).partition("#")[2]
            tick = history.tick()
            with self._fills_lock:
                self.first_fill.setdefault((channel, int(item["sk"]["N"])), tick)

        def put_position(self, item: dict[str, Any]) -> None:
            self._note_fill(item)
            super().put_position(item)

        def put_keyed_event(self, event_item: dict[str, Any], *args: Any, **kwargs: Any) -> None:
            self._note_fill(event_item)
            super().put_keyed_event(event_item, *args, **kwargs)

        def arm(self) -> None:
            self._armed.on = True

        def invoked(self, timeout_s: float) -> None:
            """This thread runs a publish as the ingest function would: it ends in `timeout_s`."""
            self._armed.deadline = time.monotonic() + timeout_s
            self._armed.allocated = []

        def returned(self) -> list[int]:
            """The publish ended: the positions it allocated."""
            self._armed.deadline = None
            self._armed.on = False
            return list(getattr(self._armed, "allocated", []))

        def guard(self, **_: Any) -> None:
            deadline = getattr(self._armed, "deadline", None)
            if deadline is not None and time.monotonic() >= deadline:
                raise WriterTimedOut("the publish outran the writer timeout: no more requests")

        def allocate(self, chan_key: str, now_ms: int, token: str) -> Allocation:
            allocation = super().allocate(chan_key, now_ms, token)
            getattr(self._armed, "allocated", []).append(allocation.seq)
            if getattr(self._armed, "on", False):
                self._armed.on = False
                self.kills += 1
                start = history.tick()
                history.add(
                    start,
                    "nemesis",
                    "kill-writer",
                    "info",
                    channel=chan_key.partition("#")[2],
                    seqs=[allocation.seq],
                    thread=threading.current_thread().name,
                )
                raise WriterKilled(f"writer killed after allocating seq {allocation.seq}")
            return allocation

    store = KillableStore()
    # Every attempt, botocore's own retries included, creates a request first.
    client.meta.events.register("request-created.dynamodb", store.guard)
    return store


# --- connections: the management API ---------------------------------------------------------


class Line:
    """One WebSocket connection as its client sees it: the frames that reached it, in order."""

    def __init__(self, connection_id: str, owner: int) -> None:
        self.connection_id = connection_id
        self.owner = owner  # the client's thread: frames it causes itself are replies
        self._lock = threading.Lock()
        self._frames: deque[tuple[str, dict[str, Any]]] = deque()
        self.dropped = False
        self.lost = 0  # frames sent after the drop

    def push(self, data: bytes) -> bool:
        via = "reply" if threading.get_ident() == self.owner else "live"
        with self._lock:
            if self.dropped:
                self.lost += 1
                return False
            self._frames.append((via, json.loads(data)))
            return True

    def drop(self) -> None:
        with self._lock:
            self.dropped = True

    def take(self) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            frames = list(self._frames)
            self._frames.clear()
            return frames


def _frame_seqs(data: bytes) -> tuple[str, list[int]]:
    frame = json.loads(data)
    channel = str(frame.get("channel"))
    if frame.get("type") == "event":
        return channel, [int(frame["event"]["seq"])]
    if frame.get("type") == "events":
        return channel, [int(event["seq"]) for event in frame["events"]]
    return channel, []


class Switchboard:
    """The management API: the handler's `Pusher` (send) and the fan-out's `Deliverer` (send_many)."""

    def __init__(self, history: History, seed: int, kill_rate: float) -> None:
        self.history = history
        self.kill_rate = kill_rate
        self.kills = 0
        self._rng = random.Random(f"{seed}:fanout-nemesis")  # noqa: S311 - a schedule, not a secret
        self._lock = threading.Lock()
        self._lines: dict[str, Line] = {}

    def open(self, connection_id: str) -> Line:
        line = Line(connection_id, threading.get_ident())
        with self._lock:
            self._lines[connection_id] = line
        return line

    def _line(self, connection_id: str) -> Line | None:
        with self._lock:
            return self._lines.get(connection_id)

    def send(self, connection_id: str, data: bytes) -> bool:
        line = self._line(connection_id)
        return line is not None and line.push(data)

    def disconnect_many(self, farewells: Mapping[str, bytes | None], *, budget_s: float | None = None) -> CloseReport:
        """The fan-out closing connections whose token expired: the farewell frame, then the line drops.
        (The checker's tokens outlive its runs, so this is here for the protocol, not exercised.)"""
        from realtime_transport.delivery import CloseReport

        report = CloseReport()
        for connection_id, farewell in farewells.items():
            line = self._line(connection_id)
            if line is None:
                report.gone.append(connection_id)
                continue
            if farewell is not None and line.push(farewell):
                report.farewells += 1
            line.drop()
            report.closed.append(connection_id)
        return report

    def send_many(self, plan: Mapping[str, Sequence[bytes]], *, budget_s: float | None = None) -> DeliveryReport:
        from realtime_transport.delivery import DeliveryReport

        report = DeliveryReport()
        total = sum(len(frames) for frames in plan.values())
        cut: int | None = None
        if total and self._rng.random() < self.kill_rate:
            cut = self._rng.randrange(total)  # frames delivered before the invocation dies
        sent = 0
        for connection_id, frames in plan.items():
            line = self._line(connection_id)
            for index, frame in enumerate(frames):
                if cut is not None and sent >= cut:
                    self.kills += 1
                    by_channel: dict[str, set[int]] = {}
                    for planned in plan.values():
                        for data in planned:
                            channel, frame_seqs = _frame_seqs(data)
                            by_channel.setdefault(channel, set()).update(frame_seqs)
                    for channel, seqs in sorted(by_channel.items()):
                        self.history.add(
                            self.history.tick(),
                            "nemesis",
                            "kill-fanout",
                            "info",
                            channel=channel,
                            seqs=seqs,
                            delivered=sent,
                            of=total,
                        )
                    raise FanoutKilled(f"fan-out killed after {sent} of {total} frames")
                if line is None or not line.push(frame):
                    report.gone.append(connection_id)
                    report.skipped += len(frames) - index - 1
                    break
                report.delivered += 1
                report.requests += 1
                sent += 1
        return report


# --- the stream: the log as DynamoDB holds it -------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    """One log position as it was INSERTed (the stream's NEW_IMAGE)."""

    channel: str
    seq: int
    kind: str  # event | tombstone
    tick: int  # when the stream reader saw it
    event_id: str | None = None
    key: str | None = None
    data: Any = None
    expires_at: int | None = None
    allocated_at: int | None = None
    by_reader: bool = False  # a reader's tombstone (it stores bounds of the allocation time)


@dataclass
class Truth:
    """Every INSERT (and TTL REMOVE) of a log position, in stream order, per channel."""

    history: History
    inserts: dict[str, dict[int, list[Stored]]] = field(default_factory=dict)
    removed: dict[str, set[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, record: Mapping[str, Any]) -> None:
        image = (record.get("dynamodb") or {}).get("NewImage" if record.get("eventName") == "INSERT" else "Keys") or {}
        kind = (image.get("kind") or {}).get("S")
        pk = (image.get("pk") or {}).get("S", "")
        seq = int((image.get("sk") or {}).get("N", "0"))
        namespace, _, channel = pk.partition("#")
        if namespace != NAMESPACE or "#" in channel or seq < 1:
            return  # a head (sk 0), an idempotency record, another namespace
        if record.get("eventName") == "REMOVE":
            with self.lock:
                self.removed.setdefault(channel, set()).add(seq)
            return
        if record.get("eventName") != "INSERT" or kind not in ("event", "tombstone"):
            return
        event: dict[str, Any] = json.loads(image["event"]["S"]) if "event" in image else {}
        stored = Stored(
            channel=channel,
            seq=seq,
            kind=kind,
            tick=self.history.tick(),
            event_id=event.get("id"),
            key=event.get("idempotencyKey"),
            data=event.get("data"),
            expires_at=int(image["ttl"]["N"]) if "ttl" in image else None,
            allocated_at=int(image["allocatedAt"]["N"]) if "allocatedAt" in image else None,
            by_reader="allocatedAfter" in image,
        )
        with self.lock:
            self.inserts.setdefault(channel, {}).setdefault(seq, []).append(stored)

    def summary(self) -> dict[str, int]:
        """How many positions of each kind the log got."""
        with self.lock:
            stored = [inserts[0] for positions in self.inserts.values() for inserts in positions.values()]
            removed = sum(len(seqs) for seqs in self.removed.values())
        return {
            "events": sum(1 for s in stored if s.kind == "event"),
            "writer tombstones": sum(1 for s in stored if s.kind == "tombstone" and not s.by_reader),
            "reader tombstones": sum(1 for s in stored if s.kind == "tombstone" and s.by_reader),
            "removed by TTL": removed,
        }


# --- the whole substrate ------------------------------------------------------------------------


class Substrate:
    """Start with ``with Substrate(config, history) as system:``; everything stops on the way out."""

    def __init__(self, config: ChaosConfig, history: History) -> None:
        self.config = config
        self.history = history
        self.truth = Truth(history)
        self.switchboard = Switchboard(history, config.seed, config.fanout_kill_rate)
        self.dead_letters = 0
        self.invocations = 0
        self.unexpected: list[str] = []  # exceptions in the fan-out other than the nemesis' kills
        self._stack: list[Callable[[], None]] = []
        self._polls_lock = threading.Lock()
        self._last_empty_poll_start = 0.0

    # --- life cycle ---------------------------------------------------------------------------

    def __enter__(self) -> Substrate:
        try:
            self._start()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop()

    def _stop(self) -> None:
        while self._stack:
            undo = self._stack.pop()
            try:
                undo()
            except Exception as exc:  # teardown goes on whatever one step did
                logging.getLogger(__name__).warning("chaos teardown step failed: %r", exc)

    def _start(self) -> None:
        from moto import mock_aws

        from realtime_transport import Realtime, Settings, clients
        from realtime_transport.connections import ConnectionStore
        from realtime_transport.fanout import Fanout
        from realtime_transport.live import LiveService

        from .. import faithful, moto_dynamodb, template
        from ..aws_env import use_local_aws
        from ..stream_poller import EventSourceMapping, StreamPoller
        from ..ttl_sweeper import TtlSweeper

        use_local_aws(os.environ)
        self._quiet()
        moto_dynamodb.install()
        faithful.reset()
        self._stack.append(faithful.reset)
        mock = mock_aws()
        mock.start()
        self._stack.append(mock.stop)
        clients.session.cache_clear()
        clients.client.cache_clear()
        self._stack.append(clients.client.cache_clear)
        self._stack.append(clients.session.cache_clear)

        client = clients.dynamodb()
        tpl = template.load_template()
        tables = {"EventsTable": EVENTS_TABLE, "ConnectionsTable": CONNECTIONS_TABLE}
        template.create_tables(client, tables, template=tpl)
        config = self.config
        self.settings = Settings.model_validate(
            {
                "EVENTS_TABLE_NAME": EVENTS_TABLE,
                "CONNECTIONS_TABLE_NAME": CONNECTIONS_TABLE,
                "REALTIME_NAME": NAMESPACE,
                "WRITER_TIMEOUT_SECONDS": config.writer_timeout_s,
                "HISTORY_TTL_HOURS": config.history_ttl_s / 3600,
                # Keys outlive the history (they always do): a late retry still finds its event.
                "IDEMPOTENCY_TTL_HOURS": 1.0,
                "HISTORY_LIMIT": config.history_limit,
            }
        )
        self.store = killable_store(client, EVENTS_TABLE, self.history)
        self.realtime = Realtime(
            name=NAMESPACE, history_limit=config.history_limit, settings=self.settings, store=self.store, secret=SECRET
        )
        self.live = LiveService(self.realtime, self.switchboard)
        self.fanout = Fanout(
            ConnectionStore(client, CONNECTIONS_TABLE), self.switchboard, cursors=self.realtime.cursor_codec
        )
        self._stack.append(self._close_fanout)

        (settings,) = [m for m in template.event_source_mappings(tpl) if m["function"] == FANOUT_FUNCTION]
        truth, substrate = self.truth, self

        class Mapping_(EventSourceMapping):
            def deliver(self, records: Sequence[dict[str, Any]]) -> None:
                for record in records:  # before the filter: tombstones and TTL deletes too
                    truth.record(record)
                super().deliver(records)

            def _dead_letter(self, records: list[dict[str, Any]], reason: str, attempts: int) -> None:
                substrate.dead_letters += len(records)
                by_channel: dict[str, list[int]] = {}
                for record in records:
                    image = record["dynamodb"].get("NewImage") or {}
                    channel = image.get("pk", {}).get("S", "").partition("#")[2]
                    by_channel.setdefault(channel, []).append(int(image.get("sk", {}).get("N", "0")))
                for channel, seqs in sorted(by_channel.items()):
                    substrate.history.add(
                        substrate.history.tick(),
                        "fanout",
                        "dead-letter",
                        "info",
                        channel=channel,
                        seqs=seqs,
                        reason=reason,
                    )

        class Poller(StreamPoller):
            def poll_once(self) -> int:
                started = time.monotonic()
                read = super().poll_once()
                if not read:
                    with substrate._polls_lock:
                        substrate._last_empty_poll_start = started
                return read

        self.mapping = Mapping_(settings=settings, invoke=self._invoke, retry_delay=0.02, max_retry_delay=0.2)
        stream_arn = client.describe_table(TableName=EVENTS_TABLE)["Table"]["LatestStreamArn"]
        self.poller = Poller(self.mapping, clients.client("dynamodbstreams"), stream_arn, interval=0.05)
        self.poller.start()  # LATEST: before anything is written
        self._stack.append(self.poller.stop)
        self.sweeper = TtlSweeper(client, interval=config.sweep_interval_s)
        self.sweeper.start()
        self._stack.append(self.sweeper.stop)

        self.faults = config.faults if config.faults is not None else default_faults(config)
        faithful.configure(self.faults)

    def _quiet(self) -> None:
        """The library logs every retried batch and unreachable client, and flushes metrics to stdout
        at 100 values: the nemesis makes both routine, so both are silenced for the run."""
        from realtime_transport.observability import logger, metrics

        level = logger.log_level
        logger.setLevel("CRITICAL")
        self._stack.append(lambda: logger.setLevel(level))
        setattr(metrics, "add_metric", lambda *args, **kwargs: None)  # noqa: B010 - an instance attribute
        self._stack.append(lambda: metrics.__dict__.pop("add_metric", None))
        for name in _QUIET:
            quiet = logging.getLogger(name)
            saved = quiet.level
            quiet.setLevel(logging.CRITICAL)
            self._stack.append(lambda quiet=quiet, saved=saved: quiet.setLevel(saved))  # type: ignore[misc]

    def _close_fanout(self) -> None:
        executor = getattr(self.fanout, "_executor", None)
        if executor is not None:
            executor.shutdown(wait=False)

    # --- the fan-out function -------------------------------------------------------------------

    def _invoke(self, event: dict[str, Any]) -> Any:
        """functions/fanout's handler: deliver the batch, answer the failed channels' records."""
        from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response

        from realtime_transport.models.stream import StreamRecord

        records = event.get("Records", [])
        start = self.history.tick()
        self.invocations += 1
        by_channel: dict[str, list[int]] = {}
        for raw in records:
            parsed = StreamRecord.from_record(raw)
            if parsed.deliverable and parsed.seq is not None:
                by_channel.setdefault(parsed.channel, []).append(parsed.seq)
        try:
            result = self.fanout.deliver(records)
        except FanoutKilled:
            raise
        except Exception as exc:
            self.unexpected.append(repr(exc))
            self.history.add(start, "fanout", "batch", "info", error=repr(exc), unexpected=True)
            raise
        failed = result.failed_channels
        for channel, seqs in sorted(by_channel.items()):
            self.history.add(
                start,
                "fanout",
                "batch",
                "ok" if f"{NAMESPACE}#{channel}" not in failed else "fail",
                channel=channel,
                seqs=seqs,
                records=len(records),
                delivered=result.report.delivered,
                gone=len(result.report.gone),
            )
        processor = BatchProcessor(event_type=EventType.DynamoDBStreams, raise_on_entire_batch_failure=False)
        return process_partial_response(event=event, record_handler=result.check, processor=processor, context=None)

    # --- quiescence -----------------------------------------------------------------------------

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until a poll that began after now found the stream empty (everything delivered)."""
        asked = time.monotonic()
        deadline = asked + timeout
        while time.monotonic() < deadline:
            with self._polls_lock:
                if self._last_empty_poll_start > asked:
                    return True
            time.sleep(0.01)
        return False

    def heal(self) -> dict[str, int]:
        """End the nemesis' DynamoDB faults and fan-out kills; returns what faithful injected so far.

        The substrate stays faithful (transaction windows, GSI lag, late TTL, jitter): only the
        injected errors and lost responses stop, as Jepsen heals the network before its final reads.
        """
        from .. import faithful

        injected = faithful.injected()
        self.switchboard.kill_rate = 0.0
        faithful.configure(replace(self.faults, error_rates={}, lost_response_rates={}))
        return injected
