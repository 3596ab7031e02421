"""Lambda's DynamoDB Streams event source mapping, over moto's stream.

A poller thread per mapping reads the table's stream the way the Lambda service does
(DescribeStream, GetShardIterator at the mapping's ``StartingPosition``, LATEST or TRIM_HORIZON,
at start-up, GetRecords) every ``interval`` seconds, and
hands the records to an :class:`EventSourceMapping`, which does what the mapping would:

* **Filtering.** Records that do not match the mapping's ``FilterCriteria`` are dropped (they
  count as processed). The subset of Lambda's filter-rule syntax implemented is in
  :func:`matches`; anything else fails at start-up instead of filtering wrongly.
* **Batching.** Up to ``BatchSize`` records per invocation, waiting up to
  ``MaximumBatchingWindowInSeconds`` to fill a batch; one batch at a time per shard, in order.
* **Partial batch responses** (``FunctionResponseTypes: [ReportBatchItemFailures]``). Records
  before the first failed ``itemIdentifier`` are checkpointed; the next batch starts *at* that
  record. An empty or unknown ``itemIdentifier`` fails the whole batch.
* **Function errors** (the handler raised, or ran out of its ``Timeout``: Lambda counts "errors
  returned by the function's runtime, such as timeouts" as function errors). The whole batch is
  retried; with ``BisectBatchOnFunctionError`` it is split in two first (a split does not count
  as a retry).
* **Record age.** Records older than ``MaximumRecordAgeInSeconds`` are given up unprocessed.
* **Retries.** ``MaximumRetryAttempts`` retries of the record at the head of the failing batch
  (-1: forever), then the batch from that record is given up: a line names the on-failure
  destination (the DLQ) and the mapping moves on. Retries back off from ``retry_delay``.

The records handed to the function are in Lambda's format (``eventSourceARN``, epoch-seconds
``ApproximateCreationDateTime``, binary attributes base64-encoded), not boto3's.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from .lambda_host import FunctionTimedOut
from .template import EventSourceMapping as MappingSettings
from .template import referenced_logical_id

if TYPE_CHECKING:
    from mypy_boto3_dynamodbstreams import DynamoDBStreamsClient

log = logging.getLogger("realtime_devstack.streams")

# Seconds between two reads of an idle shard. "Using AWS Lambda with Amazon DynamoDB": Lambda
# "polls shards in your DynamoDB stream for records at a base rate of 4 times per second" (0.25 s),
# and after a batch polls again at once. The local default is 5 times faster on purpose, so tests
# and the dashboard wait ~25 ms rather than ~125 ms for the stream; `dev --poll-interval-ms 250`
# polls at AWS's base rate.
DEFAULT_POLL_INTERVAL = 0.05
AWS_POLL_INTERVAL = 0.25
_FULL_BATCH = -1  # "the whole batch failed"
_GET_RECORDS_LIMIT = 1000  # GetRecords' maximum Limit (DynamoDB Streams API reference)


class FilterError(ValueError):
    """A filter pattern uses rule syntax the local stack does not implement."""


# --- event filtering ---------------------------------------------------------------------------

_MISSING = object()


def parse_filter_criteria(criteria: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The patterns of a ``FilterCriteria`` (``{"Filters": [{"Pattern": "<json>"}]}``), validated."""
    patterns: list[dict[str, Any]] = []
    for entry in (criteria or {}).get("Filters") or []:
        raw = entry.get("Pattern")
        pattern = json.loads(raw) if isinstance(raw, str) else raw
        if not isinstance(pattern, dict):
            raise FilterError(f"a filter pattern is a JSON object, not {raw!r}")
        _validate(pattern)
        patterns.append(pattern)
    return patterns


def _validate(pattern: Mapping[str, Any]) -> None:
    for key, rule in pattern.items():
        if isinstance(rule, dict):
            _validate(rule)
        elif isinstance(rule, list):
            for matcher in rule:
                if isinstance(matcher, dict):
                    if len(matcher) != 1 or next(iter(matcher)) not in _OPERATORS:
                        raise FilterError(f"unsupported filter rule {matcher!r} on {key!r}")
                elif isinstance(matcher, list):
                    raise FilterError(f"a filter rule cannot be a list ({key!r})")
        else:
            raise FilterError(f"filter values are lists of rules or nested objects, not {rule!r} ({key!r})")


def _equal(rule: Any, value: Any) -> bool:
    if isinstance(rule, bool) or isinstance(value, bool):
        return rule is value
    if isinstance(rule, int | float) and isinstance(value, int | float):
        return float(rule) == float(value)
    return bool(rule == value and type(rule) is type(value))


def _anything_but(argument: Any, value: Any) -> bool:
    if value is _MISSING:
        return False
    if isinstance(argument, dict) and set(argument) == {"prefix"}:
        return not (isinstance(value, str) and value.startswith(argument["prefix"]))
    excluded = argument if isinstance(argument, list) else [argument]
    return not any(_equal(item, value) for item in excluded)


_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "exists": lambda argument, value: (value is not _MISSING) is bool(argument),
    "prefix": lambda argument, value: isinstance(value, str) and value.startswith(argument),
    "suffix": lambda argument, value: isinstance(value, str) and value.endswith(argument),
    "equals-ignore-case": lambda argument, value: isinstance(value, str) and value.lower() == str(argument).lower(),
    "anything-but": _anything_but,
}


def _rule_matches(rule: Any, value: Any) -> bool:
    if isinstance(rule, dict):
        operator, argument = next(iter(rule.items()))
        return _OPERATORS[operator](argument, value)
    return value is not _MISSING and _equal(rule, value)


def matches(pattern: Mapping[str, Any], record: Any) -> bool:
    """Lambda's event-filtering match of one pattern against one record.

    Keys are ANDed; a key's list of rules is ORed; nested objects descend; an array value in the
    record matches when any element does. Rules: exact values (strings, numbers, booleans, null),
    ``exists``, ``prefix``, ``suffix``, ``equals-ignore-case`` and ``anything-but``.
    """
    for key, rule in pattern.items():
        value = record.get(key, _MISSING) if isinstance(record, dict) else _MISSING
        if isinstance(rule, dict):
            if not isinstance(value, dict) or not matches(rule, value):
                return False
            continue
        candidates = value if isinstance(value, list) else [value]
        if not any(_rule_matches(matcher, candidate) for matcher in rule for candidate in candidates):
            return False
    return True


def passes(patterns: Sequence[Mapping[str, Any]], record: Mapping[str, Any]) -> bool:
    """A record passes a mapping's filter when there is none or any of its patterns matches."""
    return not patterns or any(matches(pattern, record) for pattern in patterns)


# --- records -------------------------------------------------------------------------------


def _attribute_json(value: Any) -> Any:
    """boto3's parsed AttributeValue back to DynamoDB JSON (bytes as base64)."""
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {key: _attribute_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_attribute_json(item) for item in value]
    return value


def lambda_record(record: Mapping[str, Any], stream_arn: str) -> dict[str, Any]:
    """A GetRecords record (as boto3 parses it) in the shape Lambda hands a function."""
    dynamodb = dict(record.get("dynamodb") or {})
    created = dynamodb.get("ApproximateCreationDateTime")
    if isinstance(created, datetime):
        dynamodb["ApproximateCreationDateTime"] = created.timestamp()
    for image in ("Keys", "NewImage", "OldImage"):
        if image in dynamodb:
            dynamodb[image] = _attribute_json(dynamodb[image])
    converted: dict[str, Any] = {
        "eventID": record.get("eventID"),
        "eventName": record.get("eventName"),
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": record.get("awsRegion", "us-east-1"),
        "dynamodb": dynamodb,
        "eventSourceARN": stream_arn,
    }
    if record.get("userIdentity"):
        converted["userIdentity"] = record["userIdentity"]
    return converted


# --- the mapping -----------------------------------------------------------------------------


@dataclass
class DeadLetter:
    """A batch given up on: what Lambda would send to the on-failure destination."""

    function: str
    destination: str | None
    reason: str
    attempts: int
    records: list[dict[str, Any]]

    def batch_info(self, stream_arn: str) -> dict[str, Any]:
        """The ``DDBStreamBatchInfo`` of Lambda's on-failure record."""
        sequence_numbers = [r["dynamodb"].get("SequenceNumber") for r in self.records]
        return {
            "streamArn": stream_arn,
            "startSequenceNumber": sequence_numbers[0] if sequence_numbers else None,
            "endSequenceNumber": sequence_numbers[-1] if sequence_numbers else None,
            "batchSize": len(self.records),
        }


@dataclass
class EventSourceMapping:
    """Delivers a shard's records to a function with the mapping's batching and retry rules."""

    settings: MappingSettings
    invoke: Callable[[dict[str, Any]], Any]
    stream_arn: str = ""
    retry_delay: float = 0.1  # first back-off between retries, doubling up to max_retry_delay
    max_retry_delay: float = 2.0
    stopping: threading.Event = field(default_factory=threading.Event)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    invocations: int = 0
    timeouts: int = 0  # invocations that ran out of the function's Timeout (retried as function errors)

    def __post_init__(self) -> None:
        self.patterns = parse_filter_criteria(self.settings["filter_criteria"])
        self.destination = referenced_logical_id(self.settings["on_failure_destination"]) or (
            str(self.settings["on_failure_destination"]) if self.settings["on_failure_destination"] else None
        )

    def accepts(self, record: Mapping[str, Any]) -> bool:
        return passes(self.patterns, record)

    def deliver(self, records: Sequence[dict[str, Any]]) -> None:
        """Filter ``records`` (in shard order) and invoke the function until each is done or given up."""
        queue = deque(record for record in records if self.accepts(record))
        batch_size = max(1, self.settings["batch_size"])
        max_retries = self.settings["maximum_retry_attempts"]
        splits: list[int] = []  # sizes of the halves still to run after a bisection
        failures = 0  # failed invocations in a row with the same record at the head of the queue
        while queue and not self.stopping.is_set():
            if self._too_old(queue[0]):  # MaximumRecordAgeInSeconds: given up without an invocation
                expired = [queue.popleft()]
                while queue and self._too_old(queue[0]):
                    expired.append(queue.popleft())
                splits.clear()
                self._dead_letter(expired, "record age exceeded", failures + 1)
                failures = 0
                continue
            split = bool(splits)
            size = min(splits.pop(0) if split else batch_size, len(queue))
            batch = [queue[index] for index in range(size)]
            failed_at, raised = self._invoke(batch)
            if failed_at is None:
                for _ in range(size):
                    queue.popleft()
                failures = 0
                continue
            for _ in range(failed_at):  # checkpoint: what came before the first failure is done
                queue.popleft()
            if failed_at:
                failures = 0
            remaining = size - failed_at
            if raised and self.settings["bisect_batch_on_function_error"] and remaining > 1:
                splits[:0] = [remaining // 2, remaining - remaining // 2]
                continue
            if split:
                splits.insert(0, remaining)
            failures += 1
            if 0 <= max_retries < failures:  # the first invocation and max_retries retries all failed
                given_up = [queue.popleft() for _ in range(remaining)]
                if split:
                    splits.pop(0)
                self._dead_letter(given_up, "function error" if raised else "partial batch failure", failures)
                failures = 0
                continue
            self.stopping.wait(min(self.retry_delay * 2 ** (failures - 1), self.max_retry_delay))

    def _too_old(self, record: Mapping[str, Any]) -> bool:
        max_age = self.settings["maximum_record_age_seconds"]
        created = record["dynamodb"].get("ApproximateCreationDateTime")
        return max_age >= 0 and isinstance(created, int | float) and time.time() - created > max_age

    def _invoke(self, batch: list[dict[str, Any]]) -> tuple[int | None, bool]:
        """(index of the first failed record or None, whether the function raised)."""
        self.invocations += 1
        try:
            response = self.invoke({"Records": batch})
        except FunctionTimedOut as exc:
            # "How Lambda handles errors and retries with asynchronous invocation": function errors
            # include "errors returned by the function's runtime, such as timeouts"; a stream
            # mapping retries the entire batch ("Understanding retry behavior in Lambda").
            self.timeouts += 1
            log.warning("%s timed out on a batch of %d stream records: %s", self.name, len(batch), exc)
            return 0, True
        except Exception:
            log.exception("%s failed on a batch of %d stream records", self.settings["function"], len(batch))
            return 0, True
        if "ReportBatchItemFailures" not in self.settings["function_response_types"]:
            return None, False
        failures = response.get("batchItemFailures") if isinstance(response, dict) else None
        if not failures:
            return None, False
        positions = {record["dynamodb"].get("SequenceNumber"): index for index, record in enumerate(batch)}
        indexes = []
        for failure in failures:
            identifier = failure.get("itemIdentifier") if isinstance(failure, dict) else None
            if not identifier or identifier not in positions:
                log.warning("%s returned an invalid itemIdentifier %r: the whole batch failed", self.name, identifier)
                return 0, False
            indexes.append(positions[identifier])
        return min(indexes), False

    @property
    def name(self) -> str:
        return self.settings["function"]

    def _dead_letter(self, records: list[dict[str, Any]], reason: str, attempts: int) -> None:
        letter = DeadLetter(self.name, self.destination, reason, attempts, records)
        self.dead_letters.append(letter)
        info = letter.batch_info(self.stream_arn)
        where = f"on-failure destination {self.destination}" if self.destination else "no on-failure destination"
        print(
            f"[{self.name}] gave up on {len(records)} stream record(s) after {attempts - 1} retries ({reason}): "
            f"sequence numbers {info['startSequenceNumber']}..{info['endSequenceNumber']} -> {where} (DLQ)",
            flush=True,
        )


# --- the poller ------------------------------------------------------------------------------


class StreamPoller:
    """Reads one table's stream and feeds one mapping, on its own thread."""

    def __init__(
        self,
        mapping: EventSourceMapping,
        streams: DynamoDBStreamsClient,
        stream_arn: str,
        *,
        interval: float = DEFAULT_POLL_INTERVAL,
        peek: Callable[[], int | None] | None = None,
    ) -> None:
        self.mapping = mapping
        self.streams = streams
        self.stream_arn = stream_arn
        self.interval = interval
        # How many records the (one) shard holds, read cheaply (moto in this process: its list's
        # length): a poll that finds it unchanged since a complete read skips a GetRecords that
        # could only return nothing. The poll still happens every interval, so records arrive no
        # sooner than they would have; only the idle request's cost (and its lock) is saved.
        self.peek = peek
        self.skipped_polls = 0
        self._read_up_to: int | None = None  # peek() before the last read that returned everything
        self._complete = False  # the last GetRecords returned fewer records than its Limit
        mapping.stream_arn = stream_arn
        self._iterators: dict[str, str] = {}
        self._last_sequence: dict[str, str] = {}
        self._thread: threading.Thread | None = None

    @property
    def iterator_type(self) -> Literal["TRIM_HORIZON", "LATEST"]:
        """The mapping's StartingPosition as a shard iterator type: TRIM_HORIZON (the oldest record
        the shard keeps) or LATEST (just after the newest), LATEST when the template names neither."""
        position = str(self.mapping.settings["starting_position"] or "LATEST").upper()
        return "TRIM_HORIZON" if position == "TRIM_HORIZON" else "LATEST"

    def start(self) -> None:
        """Position every shard at the mapping's StartingPosition now: with LATEST, records written
        after this call are delivered; with TRIM_HORIZON, every record the stream holds."""
        shards = self.streams.describe_stream(StreamArn=self.stream_arn)["StreamDescription"].get("Shards", [])
        for shard in shards:
            self._iterators[shard["ShardId"]] = self.streams.get_shard_iterator(
                StreamArn=self.stream_arn, ShardId=shard["ShardId"], ShardIteratorType=self.iterator_type
            )["ShardIterator"]
        self._thread = threading.Thread(target=self._run, name=f"stream-{self.mapping.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        self.mapping.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def poll_once(self) -> int:
        """Read every shard once and deliver what came; returns how many records were read."""
        read = 0
        window = self.mapping.settings["maximum_batching_window_seconds"]
        for shard_id in list(self._iterators):
            length = self._peek() if len(self._iterators) == 1 else None
            if length is not None and length == self._read_up_to:
                self.skipped_polls += 1
                continue
            records = self._read(shard_id)
            if length is not None and self._complete:
                self._read_up_to = length  # every record the shard held before the read was returned
            if window and records and len(records) < self.mapping.settings["batch_size"]:
                deadline = time.monotonic() + window
                while time.monotonic() < deadline and len(records) < self.mapping.settings["batch_size"]:
                    if self.mapping.stopping.wait(self.interval):
                        break
                    records += self._read(shard_id)
            if records:
                read += len(records)
                self.mapping.deliver([lambda_record(record, self.stream_arn) for record in records])
        return read

    def _peek(self) -> int | None:
        """The shard's length, or None (read it with GetRecords) when there is no peek or it failed:
        a failing shortcut must never look like a failing stream (that backs off)."""
        if self.peek is None:
            return None
        try:
            return self.peek()
        except Exception:
            log.exception("peeking at the stream of %s failed; reading it instead", self.mapping.name)
            return None

    def _read(self, shard_id: str) -> list[dict[str, Any]]:
        from botocore.exceptions import ClientError

        self._complete = False
        try:
            response = self.streams.get_records(ShardIterator=self._iterators[shard_id], Limit=_GET_RECORDS_LIMIT)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in (
                "ExpiredIteratorException",
                "TrimmedDataAccessException",
            ):
                raise
            self._iterators[shard_id] = self._reposition(shard_id)
            return []
        records: list[dict[str, Any]] = [dict(record) for record in response.get("Records", [])]
        self._complete = len(records) < _GET_RECORDS_LIMIT
        # An iterator can be read again (until it expires): keep the one we hold while the shard is
        # idle, rather than taking a new one per poll (moto keeps every iterator it hands out).
        if records:
            self._last_sequence[shard_id] = records[-1]["dynamodb"]["SequenceNumber"]
            if response.get("NextShardIterator"):
                self._iterators[shard_id] = response["NextShardIterator"]
        return records

    def _reposition(self, shard_id: str) -> str:
        """A fresh iterator after the last record read (the starting position when none was)."""
        last = self._last_sequence.get(shard_id)
        if last is None:
            kwargs: dict[str, Any] = {"ShardIteratorType": self.iterator_type}
        else:
            kwargs = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": last}
        return self.streams.get_shard_iterator(StreamArn=self.stream_arn, ShardId=shard_id, **kwargs)["ShardIterator"]

    def _run(self) -> None:
        failures = 0
        while not self.mapping.stopping.is_set():
            try:
                read = self.poll_once()
                failures = 0
            except Exception:
                if self.mapping.stopping.is_set():
                    return
                failures += 1
                log.exception("reading the stream of %s failed", self.mapping.name)
                self.mapping.stopping.wait(min(0.1 * 2**failures, 5.0))
                continue
            if not read:
                self.mapping.stopping.wait(self.interval)
