"""How faithfully the local substrate behaves like AWS: a process-wide, seeded set of faults.

moto and the local Lambda host are kinder than AWS: every DynamoDB request runs alone under one
lock, a transaction never conflicts, a GSI is never behind its table, the TTL sweeper is prompt,
nothing is throttled, no response is ever lost, and no handler ever times out. ``configure()``
turns on the behaviours AWS documents, so that tests, benchmarks and a Jepsen-style checker can
exercise the real failure modes. All-zero :class:`Faults` (the default, and ``reset()``) is
exactly today's kind behaviour. The patches that apply this configuration are installed by
``moto_dynamodb.install()`` (moto's threaded server and in-process ``mock_aws`` alike); the
Lambda side lives in ``lambda_host`` and applies always.

Emulated (each cites the AWS page it follows, next to the code that depends on it):

* **Transaction conflicts** (``transaction_window_ms``): a ``TransactWriteItems`` holds its items
  from its condition checks to its writes, with the backend lock released in between. Meanwhile
  another ``TransactWriteItems`` or a ``TransactGetItems`` touching a held item is cancelled
  (``TransactionCanceledException``, reason ``TransactionConflict`` at that item's index, ``None``
  elsewhere); a ``PutItem``, ``UpdateItem`` or ``DeleteItem`` of a held item fails with
  ``TransactionConflictException`` (400); a ``BatchWriteItem`` hands a held item back in
  ``UnprocessedItems``. ``GetItem``, ``Query`` and ``Scan`` read the last committed value.
* **Transaction idempotency**: with any fault configured, a retried ``TransactWriteItems`` (same
  ``ClientRequestToken``, which botocore fills in and keeps across its retries) that already
  succeeded succeeds again without writing; with other parameters it is an
  ``IdempotentParameterMismatchException``. Tokens are kept ten minutes.
* **GSI propagation lag** (``gsi_lag_ms``): ``Query``/``Scan`` with the ``IndexName`` of a global
  secondary index see the table as it was ``gsi_lag_ms`` ago: a new item is missing, an updated
  one shows its previous image (index keys included), a deleted one is still there (a ghost).
  Base-table reads and local secondary indexes are unaffected.
* **Late TTL deletion** (``ttl_max_delay_s``): the sweeper deletes an expired item only once its
  TTL plus a per-item delay in ``[0, ttl_max_delay_s]`` has passed (the delay is a function of
  the seed, the table and the key, so a run can be replayed).
* **Throttling and server errors** (``error_rates``): a request fails *before* it is applied, with
  DynamoDB's error body and status (``ProvisionedThroughputExceededException``,
  ``ThrottlingException``, ``RequestLimitExceeded``, ``TransactionConflictException``: 400;
  ``InternalServerError``: 500; ``ServiceUnavailable``: 503). botocore's own retries then run as
  they would against AWS.
* **Lost responses** (``lost_response_rates``): the request *is* applied, then the caller gets
  ``InternalServerError`` (500), the ambiguous outcome AWS documents for 5xx.
* **Lost ``$disconnect``** (``disconnect_lost_rate``): a closed socket's ``$disconnect`` is not
  invoked. "Manage connected users and client apps: $connect and $disconnect routes": the
  connection is already closed when it runs, so ``$disconnect`` is a best-effort event that API
  Gateway cannot guarantee to deliver. The socket is gone all the same (the management API
  answers 410 for it); only its clean-up never happens, which is what presence's sweeper is for.
* **Interleavings** (``request_jitter_ms``): each request sleeps a random time before it takes the
  backend lock, so concurrent requests are serialized in a different order each run.
* **Lambda** (``lambda_host``, always on): each function's ``Timeout`` is enforced, the context's
  remaining time is the truth, a timed-out sandbox is discarded and its thread can make no more
  AWS requests, and a stream batch that timed out is retried like any function error.

Not emulated (the substrate stays kinder here): eventually consistent reads of the base table
(``ConsistentRead=false`` always sees the latest write); stream records are never late,
duplicated or reordered, and a transaction's records appear together; throttling is random, not
driven by load, partitions or capacity; single-item writes take no time, so ``TransactGetItems``
never conflicts with them; PartiQL and ``ExecuteTransaction`` take no part in conflicts; GSI
back-pressure on table writes; WebSocket frames over 32 KB are sent as one frame (clients
reassemble fragments, so an application cannot tell); a timed-out sandbox's non-botocore I/O
(the fan-out's own SigV4 HTTP client) is not cut off, only bounded by the remaining time it reads.

Every random choice comes from one ``random.Random(seed)`` (``seed=None``: a fresh seed). Threads
still race for it, so a seed makes a run's *choices* repeatable, not its interleaving.

``injected()`` counts what was injected since the last ``configure()``/``reset()``:
``"<Operation>:<ErrorCode>"`` for an injected error, ``"lost:<Operation>"`` for a lost response,
``"lost:$disconnect"`` per ``$disconnect`` not invoked,
``"TransactionConflict"`` per request refused or cancelled for a conflict, ``"idempotent_replay"``
per retried transaction answered from its token, ``"gsi_hidden"`` per index read served from a
lagged view, ``"ttl_delayed"`` per expired item the sweeper first left for later, and
``"timeout:<Function>"`` per Lambda invocation that timed out.
"""

from __future__ import annotations

import copy
import json
import math
import random
import threading
from collections import Counter
from dataclasses import dataclass, field

__all__ = [
    "ERRORS",
    "FAITHFUL_DEFAULTS",
    "Faults",
    "configure",
    "current",
    "injected",
    "reset",
    "validate",
]


@dataclass
class Faults:
    seed: int | None = None  # every random choice comes from random.Random(seed)
    transaction_window_ms: float = 0.0  # how long TransactWriteItems holds its items between check and apply
    gsi_lag_ms: float = 0.0  # Query/Scan with IndexName sees writes only this long after they commit
    ttl_max_delay_s: float = 0.0  # the TTL sweeper deletes an expired item after a random delay in [0, this]
    request_jitter_ms: float = 0.0  # random delay per request outside the global lock, to vary interleavings
    # {"PutItem": {"ProvisionedThroughputExceededException": 0.05, "InternalServerError": 0.01}, "*": {...}}:
    # the request fails before it is applied ("*": every DynamoDB and DynamoDB Streams operation).
    error_rates: dict[str, dict[str, float]] = field(default_factory=dict)
    # {"TransactWriteItems": 0.02, "PutItem": 0.02}: the write IS applied, then the caller gets a 500.
    lost_response_rates: dict[str, float] = field(default_factory=dict)
    # The share of closed sockets whose $disconnect is never invoked (`--fault disconnect:lost:RATE`).
    disconnect_lost_rate: float = 0.0


# Cheap defaults for `realtime-transport dev --faithful`. A transaction takes a few milliseconds
# between prepare and commit (DynamoDB does two underlying writes per item: "Capacity management
# for transactions"); a GSI is typically a fraction of a second behind ("Write operations
# propagate to a GSI within 1 second", AWS re:Post knowledge center, dynamodb-missing-table-items-gsi);
# TTL deletion runs "typically within two days" (UpdateTimeToLive API reference), which locally
# becomes seconds so that a run can see it.
FAITHFUL_DEFAULTS = Faults(
    transaction_window_ms=10.0,
    gsi_lag_ms=100.0,
    ttl_max_delay_s=10.0,
    request_jitter_ms=2.0,
)

# DynamoDB's error shape per code: HTTP status, the body's __type, and its message. Statuses and
# messages from "Error handling with DynamoDB" (developer guide, Programming.Errors); botocore takes
# the code from __type after the '#'.
_PREFIX = "com.amazonaws.dynamodb.v20120810#"
ERRORS: dict[str, tuple[int, str, str]] = {
    "ProvisionedThroughputExceededException": (
        400,
        _PREFIX + "ProvisionedThroughputExceededException",
        "You exceeded your maximum allowed provisioned throughput for a table or for one or more "
        "global secondary indexes.",
    ),
    "ThrottlingException": (
        400,
        "com.amazon.coral.availability#ThrottlingException",
        "Rate of requests exceeds the allowed throughput.",
    ),
    "RequestLimitExceeded": (
        400,
        _PREFIX + "RequestLimitExceeded",
        "Throughput exceeds the current throughput limit for your account.",
    ),
    "TransactionConflictException": (
        400,
        _PREFIX + "TransactionConflictException",
        "Transaction is ongoing for the item",
    ),
    "InternalServerError": (500, _PREFIX + "InternalServerError", "Internal server error"),
    "ServiceUnavailable": (503, _PREFIX + "ServiceUnavailable", "Service unavailable"),
}

_lock = threading.Lock()
_faults = Faults()
_rng = random.Random()  # noqa: S311 - fault injection, not cryptography
_counters: Counter[str] = Counter()
_enabled = False  # any fault configured: the hot paths test this one flag


def validate(faults: Faults) -> None:
    """Raise ValueError for a negative delay, an unknown error code or a rate outside [0, 1]."""
    for name in ("transaction_window_ms", "gsi_lag_ms", "ttl_max_delay_s", "request_jitter_ms"):
        value = getattr(faults, name)
        if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ValueError(f"Faults.{name} must be a finite number >= 0, not {value!r}")
    for operation, rates in faults.error_rates.items():
        for code, rate in rates.items():
            if code not in ERRORS:
                raise ValueError(f"unknown DynamoDB error code {code!r} (known: {', '.join(sorted(ERRORS))})")
            if not 0 <= rate <= 1:
                raise ValueError(f"error rate {operation}:{code} must be in [0, 1], not {rate!r}")
        if sum(rates.values()) > 1:
            raise ValueError(f"the error rates of {operation} add up to more than 1")
    for operation, rate in faults.lost_response_rates.items():
        if not 0 <= rate <= 1:
            raise ValueError(f"lost-response rate of {operation} must be in [0, 1], not {rate!r}")
    rate = faults.disconnect_lost_rate
    if not isinstance(rate, int | float) or not 0 <= rate <= 1:
        raise ValueError(f"the lost-$disconnect rate must be in [0, 1], not {rate!r}")


def configure(faults: Faults) -> None:
    """Use ``faults`` from now on, process-wide; re-seeds the random choices and zeroes ``injected()``."""
    global _faults, _enabled
    validate(faults)
    chosen = copy.deepcopy(faults)
    with _lock:
        _faults = chosen
        _rng.seed(chosen.seed)
        _counters.clear()
        _enabled = chosen != Faults(seed=chosen.seed)


def current() -> Faults:
    """A copy of the faults in force."""
    with _lock:
        return copy.deepcopy(_faults)


def reset() -> None:
    """Back to all-zero (kind) behaviour, counters zeroed."""
    configure(Faults())


def injected() -> dict[str, int]:
    """How many of each fault were injected since the last ``configure()`` or ``reset()``."""
    with _lock:
        return dict(_counters)


# --- used by the patches (moto_dynamodb, ttl_sweeper, lambda_host) -------------------------------


def enabled() -> bool:
    return _enabled


def record(name: str, count: int = 1) -> None:
    with _lock:
        _counters[name] += count


def transaction_window_seconds() -> float:
    return _faults.transaction_window_ms / 1000


def gsi_lag_seconds() -> float:
    return _faults.gsi_lag_ms / 1000


def jitter_seconds() -> float:
    """How long this request waits before taking the backend lock (0 when jitter is off)."""
    jitter = _faults.request_jitter_ms
    if jitter <= 0:
        return 0.0
    with _lock:
        return _rng.uniform(0, jitter) / 1000


def injected_error(operation: str) -> str | None:
    """The error code this request of ``operation`` fails with, if one is injected (counted)."""
    faults = _faults
    rates = {**faults.error_rates.get("*", {}), **faults.error_rates.get(operation, {})}
    if not rates:
        return None
    with _lock:
        roll = _rng.random()
        for code, rate in rates.items():
            if roll < rate:
                _counters[f"{operation}:{code}"] += 1
                return code
            roll -= rate
    return None


def response_lost(operation: str) -> bool:
    """Whether the (successful) response to this request of ``operation`` is lost (counted)."""
    faults = _faults
    rate = faults.lost_response_rates.get(operation, faults.lost_response_rates.get("*", 0.0))
    if rate <= 0:
        return False
    with _lock:
        lost = _rng.random() < rate
        if lost:
            _counters[f"lost:{operation}"] += 1
    return lost


def disconnect_lost() -> bool:
    """Whether this closed socket's ``$disconnect`` is lost (counted as ``lost:$disconnect``)."""
    rate = _faults.disconnect_lost_rate
    if rate <= 0:
        return False
    with _lock:
        lost = _rng.random() < rate
        if lost:
            _counters["lost:$disconnect"] += 1
    return lost


def ttl_delay_seconds(table: str, key: object) -> float:
    """The sweeper's extra delay for one item: fixed by the seed, the table and the key."""
    maximum = _faults.ttl_max_delay_s
    if maximum <= 0:
        return 0.0
    text = json.dumps(key, sort_keys=True, default=str)
    return random.Random(f"{_faults.seed}|{table}|{text}").uniform(0, maximum)  # noqa: S311


def describe(faults: Faults) -> str:
    """One line for a start-up banner."""
    if faults == Faults(seed=faults.seed):
        return "none (kind substrate)"
    parts = [
        f"{name}={getattr(faults, name)}"
        for name in ("transaction_window_ms", "gsi_lag_ms", "ttl_max_delay_s", "request_jitter_ms")
        if getattr(faults, name)
    ]
    parts += [f"{op}:{code}:{rate}" for op, rates in faults.error_rates.items() for code, rate in rates.items()]
    parts += [f"{op}:lost:{rate}" for op, rate in faults.lost_response_rates.items()]
    if faults.disconnect_lost_rate:
        parts.append(f"disconnect:lost:{faults.disconnect_lost_rate}")
    if faults.seed is not None:
        parts.append(f"seed={faults.seed}")
    return ", ".join(parts)
