"""Make moto's DynamoDB a substrate we can trust: thread-safe, and transactions in O(items touched).

moto 5.2.5 has three problems for us, fixed here by patching its classes in place (``install()``):

* No locking: the threaded moto server runs requests in parallel over plain dicts (even reads insert
  into the tables' ``defaultdict``), so concurrent writers fail with HTTP 500 "dictionary changed size
  during iteration", and stream readers race with writers. One re-entrant lock now covers every
  DynamoDB / DynamoDB Streams backend method and response handler (responses are serialized under
  it too, so no Item is mutated while it is being turned into JSON).
* ``TransactWriteItems`` deep-copies every table it touches to be able to roll back: its cost grows
  with the table (~0.4 s at 4,000 items with a stream). Worse, a rollback *replaces* the Table object
  with that copy, so stream shard iterators handed out earlier keep reading an orphaned shard and
  never see another record. Ours checks every item first, exactly as moto does (same code, same
  cancellation reasons), dry-running each write on a one-item scratch table, and only then applies
  the writes with moto's own put/update/delete (so stream records are moto's).
* ``UpdateItem`` creating an item emits two INSERT stream records (a keys-only stub put, then the
  update). Now it emits one INSERT (or one MODIFY for an existing item).

``install()`` also installs the hooks of ``faithful`` (transaction conflicts and idempotency, GSI
lag, injected errors and lost responses, request jitter). With ``faithful`` at its all-zero
default they do nothing: no item is ever held, no version is kept, no request is delayed.
"""

from __future__ import annotations

import copy
import datetime
import functools
import hashlib
import inspect
import json
import pickle
import threading
import time
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable
from typing import Any, TypeVar, cast

from moto.core.exceptions import JsonRESTError
from moto.core.responses import ActionResult, BaseResponse
from moto.core.serialize import TimestampSerializer
from moto.dynamodb.comparisons import get_filter_expression
from moto.dynamodb.exceptions import (
    ConditionalCheckFailed,
    MockValidationException,
    MultipleTransactionsException,
    TooManyTransactionsException,
    TransactionCanceledException,
    TransactWriteSingleOpException,
)
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType, Item
from moto.dynamodb.models.table import StreamShard, Table
from moto.dynamodb.responses import DynamoHandler
from moto.dynamodbstreams.models import DynamoDBStreamsBackend
from moto.dynamodbstreams.responses import DynamoDBStreamsHandler
from moto.utilities.aws_headers import gen_amz_crc32

from . import faithful

__all__ = ["install", "stream_length"]

_F = TypeVar("_F", bound=Callable[..., Any])
_LOCK = threading.RLock()  # the one lock: every DynamoDB and DynamoDB Streams operation
_WINDOW = threading.Condition(_LOCK)  # waited on (never notified) to release _LOCK for a while
_INSTALL_LOCK = threading.Lock()
_MARK = "_realtime_devstack_installed"  # set on moto's class: survives a re-import of this module
_OPS = {"ConditionCheck", "Put", "Delete", "Update"}
_SCRATCH = "_realtime_scratch"  # marks the one-item tables of a transaction's dry run
_VERSIONS = "_realtime_versions"  # on a Table: recent previous images, for GSI lag

# Items held by a TransactWriteItems between its checks and its writes: (table, key) -> owner.
# Read and written under _LOCK only.
_HELD: dict[tuple[str, str], object] = {}
_CONFLICT = ("TransactionConflict", "Transaction is ongoing for the item", None)


def install() -> None:
    """Patch moto in place (idempotent, thread-safe). Call before serving or mocking DynamoDB."""
    with _INSTALL_LOCK:
        if getattr(DynamoDBBackend, _MARK, False):
            return
        setattr(DynamoDBBackend, "transact_write_items", _transact_write_items)  # noqa: B010
        setattr(DynamoDBBackend, "update_item", _one_stream_record(DynamoDBBackend.update_item))  # noqa: B010
        for name in ("put_item", "update_item", "delete_item"):
            setattr(DynamoDBBackend, name, _keep_previous_image(getattr(DynamoDBBackend, name)))
        for name in ("query", "scan"):
            setattr(DynamoDBBackend, name, _lagged_index_read(getattr(DynamoDBBackend, name)))
        for backend in (DynamoDBBackend, DynamoDBStreamsBackend):
            for name, attr in list(vars(backend).items()):
                if not name.startswith("_") and inspect.isfunction(attr):
                    setattr(backend, name, _locked(attr))
        for name in ("put_item", "update_item", "delete_item"):
            setattr(DynamoHandler, name, _refuse_held_item(getattr(DynamoHandler, name)))
        setattr(DynamoHandler, "batch_write_item", _hold_back_held_items(DynamoHandler.batch_write_item))  # noqa: B010
        setattr(DynamoHandler, "transact_get_items", _cancel_held_gets(DynamoHandler.transact_get_items))  # noqa: B010
        setattr(DynamoHandler, "transact_write_items", _idempotent(DynamoHandler.transact_write_items))  # noqa: B010
        # call_action parses, runs the backend call and serializes the response: lock all of it.
        # Injected faults and jitter go around it, outside the lock.
        for handler in (DynamoHandler, DynamoDBStreamsHandler):
            handler_call: Callable[..., Any] = getattr(handler, "call_action", BaseResponse.call_action)
            setattr(handler, "call_action", _with_faults(_locked(handler_call)))  # noqa: B010
        _stop_tracking_instances()
        _cache_update_expressions()
        _cache_condition_parses()
        _cache_method_names()
        setattr(DynamoHandler, "serialized", _fast_serialized(DynamoHandler.serialized, "dynamodb"))  # noqa: B010
        streams_serialized = _fast_serialized(DynamoDBStreamsHandler.serialized, "dynamodbstreams")
        setattr(DynamoDBStreamsHandler, "serialized", streams_serialized)  # noqa: B010
        setattr(DynamoDBBackend, _MARK, True)


def _cache_update_expressions() -> None:
    """moto parses an UpdateExpression twice per UpdateItem (once to validate, once to apply), ~1.2 ms
    each, under the backend lock. The AST it builds is mutated by the validation that follows (values
    are substituted in place), so the cache keeps it pickled and hands out a fresh copy (~0.13 ms).
    An expression that does not parse is not cached: it raises moto's own error every time."""
    from moto.dynamodb.parsing.expressions import UpdateExpressionParser  # type: ignore[attr-defined]

    make = UpdateExpressionParser.make  # a classmethod, bound to the class
    parsed: OrderedDict[str, bytes] = OrderedDict()

    def cached_make(expression_str: str) -> Any:
        with _PARSE_LOCK:
            blob = parsed.get(expression_str)
        if blob is None:
            ast = make(expression_str)
            blob = pickle.dumps(ast)
            with _PARSE_LOCK:
                parsed[expression_str] = blob
                while len(parsed) > _PARSE_CACHE_SIZE:
                    parsed.popitem(last=False)
        return pickle.loads(blob)  # noqa: S301 - our own pickle of moto's AST, never outside input

    setattr(UpdateExpressionParser, "make", staticmethod(cached_make))  # noqa: B010


def _cache_condition_parses() -> None:
    """moto parses a request's ConditionExpression several times (to validate it, then per check;
    a transaction item three times: check, dry run, apply), ~0.15 ms each, under the lock. The tree
    binds the expression's values, so the key holds them; evaluating it reads the tree only. parse()
    also lists the names and values it used (callers check for unused ones): replayed on a hit."""
    from moto.dynamodb.comparisons import ConditionExpressionParser

    parse = ConditionExpressionParser.parse
    parsed: OrderedDict[tuple[str, str, str], tuple[Any, list[str], list[str]]] = OrderedDict()

    def cached_parse(self: ConditionExpressionParser) -> Any:
        if not self.condition_expression:
            return parse(self)
        key = (
            self.condition_expression,
            json.dumps(self.expression_attribute_names, sort_keys=True, default=repr),
            json.dumps(self.expression_attribute_values, sort_keys=True, default=repr),
        )
        with _PARSE_LOCK:
            hit = parsed.get(key)
            if hit is not None:
                parsed.move_to_end(key)
        if hit is None:
            names, values = len(self.expr_attr_names_found), len(self.expr_attr_values_found)
            op = parse(self)  # an invalid expression raises, and is never cached
            hit = (op, self.expr_attr_names_found[names:], self.expr_attr_values_found[values:])
            with _PARSE_LOCK:
                parsed[key] = hit
                while len(parsed) > _PARSE_CACHE_SIZE:
                    parsed.popitem(last=False)
            return op
        op, names_found, values_found = hit
        self.expr_attr_names_found.extend(names_found)
        self.expr_attr_values_found.extend(values_found)
        return op

    setattr(ConditionExpressionParser, "parse", cached_parse)  # noqa: B010


def _cache_method_names() -> None:
    """moto lists its handler's methods (inspect.getmembers, ~0.2 ms) on every request to find the
    one to call; the classes do not change while the stack runs."""
    import moto.core.responses as responses

    responses.method_names_from_class = functools.cache(responses.method_names_from_class)


_PARSE_LOCK = threading.Lock()
_PARSE_CACHE_SIZE = 512  # distinct UpdateExpressions kept; the functions use a few dozen


def stream_length(stream_arn: str) -> int | None:
    """How many records moto's (one) shard of the stream ``stream_arn`` holds, in this process;
    None when there is no such stream. Read without the backend lock (a list's length): the stream
    poller asks it every interval to skip a GetRecords that could only come back empty."""
    from moto.dynamodb.models import dynamodb_backends

    try:
        _, _, _, region, account, resource = stream_arn.split(":", 5)
        table = dynamodb_backends[account][region].tables.get(resource.split("/")[1])
    except (ValueError, IndexError, KeyError):
        return None
    shard = getattr(table, "stream_shard", None)
    if (
        table is None
        or shard is None
        or not stream_arn.startswith(f"{table.table_arn}/stream/{table.latest_stream_label}")
    ):
        return None
    return len(shard.items)


class _Untracked(list[Any]):
    def append(self, _item: Any) -> None:
        pass


def _stop_tracking_instances() -> None:
    """moto keeps every model instance it ever made (for its dashboard): each Query projects new
    Items, so a long-running local stack grows without bound and its GC pauses grow with it."""
    from moto.core.model_instances import model_data

    for service in ("dynamodb", "dynamodbstreams"):
        for model in model_data.get(service, {}).values():
            model.instances_tracked = _Untracked()  # type: ignore[attr-defined]


# The hot requests return plain JSON-shaped dicts; moto's generic serializer walks them against the
# service model (~0.4 ms per item, ~1.5 ms for an UpdateItem's ALL_NEW), under the backend lock.
# json.dumps gives the same JSON (tests/unit/test_moto_dynamodb.py compares the two on every action
# listed), timestamps as moto writes them (epoch seconds, milliseconds); anything else moto's way.
_FAST_ACTIONS = {
    "dynamodb": frozenset(
        {
            "Query",
            "GetItem",
            "Scan",
            "PutItem",
            "UpdateItem",
            "DeleteItem",
            "TransactWriteItems",
            "TransactGetItems",
            "BatchGetItem",
            "BatchWriteItem",
        }
    ),
    "dynamodbstreams": frozenset({"GetRecords", "GetShardIterator"}),
}


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return TimestampSerializer._timestamp_unixtimestamp(value)
    raise TypeError(type(value).__name__)  # e.g. bytes: moto base64-encodes binary attributes


@functools.cache
def _output_members(service: str, action: str) -> frozenset[str]:
    from moto.core.utils import get_service_model

    shape = get_service_model(service).operation_model(action).output_shape
    return frozenset(shape.members) if shape is not None else frozenset()


def _fast_serialized(original: Callable[..., Any], service: str) -> Callable[..., Any]:
    actions = _FAST_ACTIONS[service]

    @functools.wraps(original)
    def serialized(self: BaseResponse, action_result: Any) -> Any:
        result = getattr(action_result, "result", None)
        action = self._get_action()
        if isinstance(result, dict) and action in actions:
            members = _output_members(service, action)
            try:
                # moto's serializer drops what the output shape does not name (e.g. DeleteItem's
                # ConsumedCapacityUnits): so do we.
                body = json.dumps({k: v for k, v in result.items() if k in members}, default=_json_default)
            except TypeError:
                return original(self, action_result)
            return 200, {"Content-Type": "application/x-amz-json-1.0", **self.response_headers}, body
        return original(self, action_result)

    return serialized


def _locked(fn: _F) -> _F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _LOCK:
            return fn(*args, **kwargs)

    return cast(_F, wrapper)


def _transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
    """moto's ``transact_write_items`` without the table deep copies: check all, then write all.

    With ``faithful``'s transaction window, the items are held from the checks to the writes and
    the backend lock is released in between, so other requests run (and may conflict) meanwhile.
    """
    if len(transact_items) > 100:
        raise TooManyTransactionsException()
    # Phase 1: moto's loop verbatim, except that each write is dry-run on a scratch table instead
    # of applied, so every error (and its order) is moto's; nothing is written, nothing to undo.
    target_items: set[tuple[str, str]] = set()
    conflicts: set[int] = set()
    writes: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    errors: list[tuple[str | None, str | None, dict[str, Any] | None]] = []
    for index, item in enumerate(transact_items):
        original_item: dict[str, Any] | None = None
        if len(item) > 1:
            raise TransactWriteSingleOpException
        try:
            op_type, op = next(iter(item.items()))
            if op_type not in _OPS:
                raise ValueError("Unsupported transaction operation")
            table_name = op["TableName"]
            key = _key_attributes(self, table_name, op["Item"]) if op_type == "Put" else op["Key"]
            unique = _item_id(table_name, key)
            if unique in target_items:
                raise MultipleTransactionsException()
            target_items.add(unique)
            # "Transaction conflict handling in DynamoDB" (developer guide, transaction-apis): an item
            # of a TransactWriteItems that is part of another ongoing one cancels this request.
            if unique in _HELD:
                conflicts.add(index)
                errors.append((None, None, None))
                continue

            current = self.get_item(table_name, key)
            condition = op.get("ConditionExpression")
            if condition is not None:
                names, values = op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
                if not get_filter_expression(condition, names, values).expr(current):
                    if op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and current:
                        original_item = current.to_json()["Attributes"]
                    raise ConditionalCheckFailed(item=original_item)
            if op_type != "ConditionCheck":
                _write(_scratch_backend(self, table_name, current), op_type, op, key)
                writes.append((op_type, op, key))
            errors.append((None, None, None))
        except (MultipleTransactionsException, MockValidationException):
            raise  # moto re-raises these (after its rollback) as a plain ValidationException
        except ConditionalCheckFailed as e:
            errors.append(("ConditionalCheckFailed", str(e.message), original_item))
        except Exception as e:
            errors.append((type(e).__name__, str(e), original_item))
    if conflicts:
        # CancellationReasons are in request order, "None" for the items that did not fail
        # (TransactionCanceledException, DynamoDB API reference).
        faithful.record("TransactionConflict")
        reasons = [_CONFLICT if index in conflicts else (None, None, None) for index in range(len(errors))]
        raise TransactionCanceledException(reasons)
    if any(code is not None for code, _, _ in errors):
        raise TransactionCanceledException(errors)

    window = faithful.transaction_window_seconds()
    if window <= 0:
        _apply(self, writes)
        return
    # DynamoDB prepares every item, then commits it (two underlying writes per item, "Capacity
    # management for transactions"): between the two the items are held, and the rest of the
    # table stays available. Condition.wait releases the (re-entrant) backend lock entirely.
    owner = object()
    _HELD.update(dict.fromkeys(target_items, owner))
    try:
        _WINDOW.wait(window)
        _apply(self, writes)
    finally:
        for unique in target_items:
            if _HELD.get(unique) is owner:
                del _HELD[unique]


def _apply(self: DynamoDBBackend, writes: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> None:
    """Phase 2: apply with moto's own methods (same items, same stream records). They were all
    dry-run above, so this should not fail; if it does, undo the items touched so far."""
    undo: list[tuple[Table, Any, Any, Item | None, int | None]] = []
    try:
        for op_type, op, key in writes:
            table = self.get_table(op["TableName"])
            hash_key, range_key = self.get_keys_value(table, key)
            old = table.get_item(hash_key, range_key)
            shard_len = len(table.stream_shard.items) if table.stream_shard is not None else None
            # Put and Delete replace the Item object, Update mutates it in place: copy only then.
            undo.append((table, hash_key, range_key, copy.deepcopy(old) if op_type == "Update" else old, shard_len))
            _write(self, op_type, op, key)
    except BaseException:
        for table, hash_key, range_key, old, shard_len in reversed(undo):
            bucket: dict[Any, Any] = table.items[hash_key] if range_key is not None else table.items
            slot = range_key if range_key is not None else hash_key
            if old is None:
                bucket.pop(slot, None)
            else:
                bucket[slot] = old
            if table.stream_shard is not None and shard_len is not None:
                del table.stream_shard.items[shard_len:]
        raise


def _item_id(table_name: str, key: dict[str, Any]) -> tuple[str, str]:
    """How a transaction names an item (moto's own, which finds an item named twice in one)."""
    return (str(table_name), str(dict(sorted(key.items()))))


def _key_attributes(backend: DynamoDBBackend, table_name: str, attributes: dict[str, Any]) -> dict[str, Any]:
    """The primary key attributes of a whole item."""
    table = backend.get_table(table_name)
    key = {table.hash_key_attr: attributes[table.hash_key_attr]}
    if table.range_key_attr is not None:
        key[table.range_key_attr] = attributes[table.range_key_attr]
    return key


def _write(backend: DynamoDBBackend, op_type: str, op: dict[str, Any], key: dict[str, Any]) -> None:
    """One transaction write, with exactly the arguments moto's transaction passes."""
    kwargs: dict[str, Any] = {
        "condition_expression": op.get("ConditionExpression"),
        "expression_attribute_names": op.get("ExpressionAttributeNames"),
        "expression_attribute_values": op.get("ExpressionAttributeValues"),
    }
    if op_type == "Put":
        backend.put_item(op["TableName"], op["Item"], **kwargs)
    elif op_type == "Delete":
        backend.delete_item(op["TableName"], key, **kwargs)
    elif op_type == "Update":
        backend.update_item(op["TableName"], key, update_expression=op["UpdateExpression"], **kwargs)


def _scratch_backend(backend: DynamoDBBackend, table_name: str, current: Item | None) -> DynamoDBBackend:
    """A backend whose only table is a copy of ``table_name`` holding just (a copy of) ``current``.

    Shallow copies are made with ``object.__new__``: moto's ``BaseModel.__new__`` would record every
    scratch object in a class-level list forever.
    """
    table = backend.get_table(table_name)
    items: dict[Any, Any] = defaultdict(dict)
    if current is not None:
        twin = copy.deepcopy(current)
        if table.range_key_attr is None:
            items[twin.hash_key] = twin
        else:
            items[twin.hash_key][twin.range_key] = twin
    scratch = object.__new__(type(table))
    scratch.__dict__.update(vars(table), items=items, stream_shard=None, **{_SCRATCH: True, _VERSIONS: None})
    shadow = object.__new__(type(backend))
    shadow.__dict__.update(vars(backend), tables={table.name: scratch})
    return shadow


class _SkipStubInsert:
    """Stands in for a table's stream shard during UpdateItem: holds back the INSERT of the keys-only
    stub item moto puts before applying the update to a new item (the update's own record follows)."""

    def __init__(self, shard: StreamShard) -> None:
        self.shard = shard
        self.stub: Item | None = None

    def add(self, old: Item | None, new: Item | None) -> None:
        if old is None and self.stub is None:
            self.stub = new
            return
        self.shard.add(old, new)

    def __getattr__(self, name: str) -> Any:
        # Whatever reads the table's shard meanwhile (``stream_length``, without the lock) sees the real one.
        return getattr(self.shard, name)


def _one_stream_record(update_item: Callable[..., Item]) -> Callable[..., Item]:
    @functools.wraps(update_item)
    def wrapper(self: DynamoDBBackend, table_name: str, *args: Any, **kwargs: Any) -> Item:
        table = self.get_table(table_name)
        shard = table.stream_shard
        if shard is None:
            return update_item(self, table_name, *args, **kwargs)
        shim = _SkipStubInsert(shard)
        table.stream_shard = cast(StreamShard, shim)
        try:
            return update_item(self, table_name, *args, **kwargs)
        except BaseException:
            if shim.stub is not None:  # moto keeps the stub of a failed update: keep its record too
                shard.add(None, shim.stub)
            raise
        finally:
            table.stream_shard = shard

    return wrapper


# --- faithful: conflicts with held items ------------------------------------------------------


class TransactionConflictException(JsonRESTError):
    """A single-item write of an item an ongoing TransactWriteItems holds (HTTP 400)."""

    def __init__(self) -> None:
        _, error_type, message = faithful.ERRORS["TransactionConflictException"]
        super().__init__(error_type, message)


class IdempotentParameterMismatchException(JsonRESTError):
    def __init__(self) -> None:
        super().__init__(
            "com.amazonaws.dynamodb.v20120810#IdempotentParameterMismatchException",
            "The request uses the same client token as a previous, but non-identical request.",
        )


def _requested_item(handler: DynamoHandler, table_name: str, request: dict[str, Any]) -> tuple[str, str] | None:
    """The item a PutItem/UpdateItem/DeleteItem-shaped request names (None: let moto refuse it)."""
    try:
        if "Key" in request:
            return _item_id(table_name, request["Key"])
        return _item_id(table_name, _key_attributes(handler.dynamodb_backend, table_name, request["Item"]))
    except (KeyError, TypeError, JsonRESTError):
        return None


def _refuse_held_item(method: Callable[[DynamoHandler], Any]) -> Callable[[DynamoHandler], Any]:
    @functools.wraps(method)
    def wrapper(self: DynamoHandler) -> Any:
        # "Transaction conflict handling in DynamoDB" (developer guide, transaction-apis): a PutItem,
        # UpdateItem or DeleteItem of an item in an ongoing TransactWriteItems fails with a
        # TransactionConflictException.
        if _HELD and _requested_item(self, self.body.get("TableName", ""), self.body) in _HELD:
            faithful.record("TransactionConflict")
            raise TransactionConflictException()
        return method(self)

    return wrapper


def _hold_back_held_items(method: Callable[[DynamoHandler], Any]) -> Callable[[DynamoHandler], Any]:
    @functools.wraps(method)
    def wrapper(self: DynamoHandler) -> Any:
        if not _HELD:
            return method(self)
        kept: dict[str, list[Any]] = {}
        unprocessed: dict[str, list[Any]] = {}
        for table_name, requests in (self.body.get("RequestItems") or {}).items():
            for request in requests:
                inner: dict[str, Any] = next(iter(request.values()), {}) if isinstance(request, dict) else {}
                held = _requested_item(self, table_name, inner) in _HELD
                (unprocessed if held else kept).setdefault(table_name, []).append(request)
        if not unprocessed:
            return method(self)
        # "Error handling with DynamoDB", batch operations: BatchWriteItem runs a PutItem or
        # DeleteItem per request and hands the ones that failed back in UnprocessedItems.
        faithful.record("TransactionConflict")
        self.body["RequestItems"] = kept
        if not kept:
            return ActionResult({"ConsumedCapacity": [], "ItemCollectionMetrics": {}, "UnprocessedItems": unprocessed})
        result = method(self)
        cast(dict[str, Any], result.result)["UnprocessedItems"] = unprocessed
        return result

    return wrapper


def _cancel_held_gets(method: Callable[[DynamoHandler], Any]) -> Callable[[DynamoHandler], Any]:
    @functools.wraps(method)
    def wrapper(self: DynamoHandler) -> Any:
        if _HELD:
            gets = [item.get("Get") or {} for item in self.body.get("TransactItems") or []]
            named = [_item_id(get.get("TableName", ""), get.get("Key") or {}) for get in gets]
            # "Transaction conflict handling in DynamoDB": an item of a TransactGetItems that is
            # part of an ongoing TransactWriteItems cancels it (TransactionCanceledException).
            if any(item in _HELD for item in named):
                faithful.record("TransactionConflict")
                reasons = [_CONFLICT if item in _HELD else (None, None, None) for item in named]
                raise TransactionCanceledException(reasons)
        return method(self)

    return wrapper


# ClientRequestToken -> (fingerprint of the request, monotonic expiry, the first answer)
_TOKENS: OrderedDict[str, tuple[str, float, Any]] = OrderedDict()
_TOKEN_SECONDS = 600.0
_MAX_TOKENS = 100_000


def _idempotent(method: Callable[[DynamoHandler], Any]) -> Callable[[DynamoHandler], Any]:
    @functools.wraps(method)
    def wrapper(self: DynamoHandler) -> Any:
        token = self.body.get("ClientRequestToken")
        if not token or not faithful.enabled():
            return method(self)
        # "Amazon DynamoDB Transactions: How it works", idempotency: a call repeating a successful
        # one's client token within 10 minutes succeeds without making any changes; with other
        # parameters it is an IdempotentParameterMismatch. botocore fills the token in and keeps
        # it across its retries, so a lost response retried is not applied twice.
        fingerprint = hashlib.sha256(json.dumps(self.body.get("TransactItems"), sort_keys=True).encode()).hexdigest()
        now = time.monotonic()
        while _TOKENS and next(iter(_TOKENS.values()))[1] < now:
            _TOKENS.popitem(last=False)
        seen = _TOKENS.get(token)
        if seen is not None:
            if seen[0] != fingerprint:
                raise IdempotentParameterMismatchException()
            faithful.record("idempotent_replay")
            return seen[2]
        result = method(self)
        _TOKENS[token] = (fingerprint, now + _TOKEN_SECONDS, result)
        while len(_TOKENS) > _MAX_TOKENS:
            _TOKENS.popitem(last=False)
        return result

    return wrapper


# --- faithful: GSI propagation lag ------------------------------------------------------------


class _Versions:
    """A table's writes of the last lag interval: for each, the item's image before it."""

    def __init__(self) -> None:
        self.by_key: dict[tuple[DynamoType, DynamoType | None], deque[tuple[float, Item | None]]] = {}
        self.order: deque[tuple[float, tuple[DynamoType, DynamoType | None]]] = deque()

    def __bool__(self) -> bool:
        return bool(self.by_key)

    def add(self, key: tuple[DynamoType, DynamoType | None], at: float, previous: Item | None, cutoff: float) -> None:
        self.by_key.setdefault(key, deque()).append((at, previous))
        self.order.append((at, key))
        self.prune(cutoff)

    def prune(self, cutoff: float) -> None:
        """Forget the writes at or before ``cutoff``: an index read after it sees them."""
        while self.order and self.order[0][0] <= cutoff:
            at, key = self.order.popleft()
            entries = self.by_key.get(key)
            while entries and entries[0][0] <= at:
                entries.popleft()
            if not entries:
                self.by_key.pop(key, None)

    def as_of(self, cutoff: float) -> dict[tuple[DynamoType, DynamoType | None], Item | None]:
        """Key -> the image an index read sees for every item written after ``cutoff``:
        the image before its first such write (None: it did not exist yet)."""
        self.prune(cutoff)
        return {key: entries[0][1] for key, entries in self.by_key.items()}


def _keep_previous_image(write: Callable[..., Any]) -> Callable[..., Any]:
    signature = inspect.signature(write)

    @functools.wraps(write)
    def wrapper(self: DynamoDBBackend, table_name: str, *args: Any, **kwargs: Any) -> Any:
        lag = faithful.gsi_lag_seconds()
        if lag <= 0:
            return write(self, table_name, *args, **kwargs)
        table = self.get_table(table_name)
        if not table.global_indexes or getattr(table, _SCRATCH, False):
            return write(self, table_name, *args, **kwargs)
        try:
            arguments = signature.bind(self, table_name, *args, **kwargs).arguments
            key = arguments["key"] if "key" in arguments else _key_attributes(self, table_name, arguments["item_attrs"])
            item_key = self.get_keys_value(table, key)
            previous = copy.deepcopy(table.get_item(*item_key))
        except (KeyError, TypeError, JsonRESTError):
            return write(self, table_name, *args, **kwargs)  # moto's own validation answers
        result = write(self, table_name, *args, **kwargs)
        versions = table.__dict__.get(_VERSIONS)
        if versions is None:
            versions = table.__dict__[_VERSIONS] = _Versions()
        now = time.monotonic()
        versions.add(item_key, now, previous, now - lag)
        return result

    return wrapper


def _lagged_index_read(read: Callable[..., Any]) -> Callable[..., Any]:
    signature = inspect.signature(read)

    @functools.wraps(read)
    def wrapper(self: DynamoDBBackend, table_name: str, *args: Any, **kwargs: Any) -> Any:
        lag = faithful.gsi_lag_seconds()
        if lag <= 0:
            return read(self, table_name, *args, **kwargs)
        table = self.get_table(table_name)
        versions: _Versions | None = table.__dict__.get(_VERSIONS)
        if not versions:
            return read(self, table_name, *args, **kwargs)
        index_name = signature.bind(self, table_name, *args, **kwargs).arguments.get("index_name")
        if not index_name or index_name not in {index.name for index in table.global_indexes or []}:
            return read(self, table_name, *args, **kwargs)  # base table and LSIs: read-your-writes
        # "DynamoDB read consistency": all reads from GSIs are eventually consistent; writes
        # "propagate to a GSI within 1 second" (re:Post knowledge center, dynamodb-missing-table-items-gsi).
        # A delete propagates the same way ("As items are deleted, they are removed from any ...
        # global secondary index ... in the same eventually consistent way", UpdateTimeToLive).
        seen = versions.as_of(time.monotonic() - lag)
        if not seen:
            return read(self, table_name, *args, **kwargs)
        faithful.record("gsi_hidden")
        items = table.items
        table.items = _as_seen(table, items, seen)
        try:
            return read(self, table_name, *args, **kwargs)
        finally:
            table.items = items

    return wrapper


def _as_seen(table: Table, items: Any, seen: dict[tuple[DynamoType, DynamoType | None], Item | None]) -> Any:
    """A shallow view of ``table.items`` with the lagging items as the index still has them."""
    if table.range_key_attr is None:
        flat = dict(items)
        for (hash_key, _), image in seen.items():
            if image is None:
                flat.pop(hash_key, None)
            else:
                flat[hash_key] = image
        return flat
    view: defaultdict[Any, dict[Any, Any]] = defaultdict(dict, items)
    copied: set[Any] = set()
    for (hash_key, range_key), image in seen.items():
        if hash_key not in copied:
            view[hash_key] = dict(view.get(hash_key) or {})
            copied.add(hash_key)
        if image is None:
            view[hash_key].pop(range_key, None)
        else:
            view[hash_key][range_key] = image
    return view


# --- faithful: injected errors, lost responses, jitter ---------------------------------------


def _error_response(code: str) -> tuple[int, dict[str, str], str]:
    """DynamoDB's answer for ``code``: its status, JSON body and headers ("Error handling with
    DynamoDB": ``{"__type": "...#Code", "message": "..."}``, x-amz-json-1.0)."""
    status, error_type, message = faithful.ERRORS[code]
    body = json.dumps({"__type": error_type, "message": message})
    headers = {"Content-Type": "application/x-amz-json-1.0", "status": str(status)}
    headers, body = BaseResponse._enrich_response(headers, body)
    gen_amz_crc32(body, headers)
    return status, headers, body


def _with_faults(call_action: Callable[[BaseResponse], Any]) -> Callable[[BaseResponse], Any]:
    @functools.wraps(call_action)
    def wrapper(self: BaseResponse) -> Any:
        if not faithful.enabled():
            return call_action(self)
        operation = self._get_action()
        delay = faithful.jitter_seconds()
        if delay:
            time.sleep(delay)  # before the lock: the order requests take it varies run to run
        code = faithful.injected_error(operation)
        if code is not None:
            return _error_response(code)  # refused before it was applied
        response = call_action(self)
        # "Error handling with DynamoDB": a 5xx is a problem on AWS's side, the request may or may
        # not have been processed. Here it was: the caller cannot tell which.
        if int(response[0]) < 300 and faithful.response_lost(operation):
            return _error_response("InternalServerError")
        return response

    return wrapper
