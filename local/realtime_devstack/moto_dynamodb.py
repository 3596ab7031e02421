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
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any, TypeVar, cast

from moto.core.responses import BaseResponse
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
from moto.dynamodb.models.dynamo_type import Item
from moto.dynamodb.models.table import StreamShard, Table
from moto.dynamodb.responses import DynamoHandler
from moto.dynamodbstreams.models import DynamoDBStreamsBackend
from moto.dynamodbstreams.responses import DynamoDBStreamsHandler

__all__ = ["install"]

_F = TypeVar("_F", bound=Callable[..., Any])
_LOCK = threading.RLock()  # the one lock: every DynamoDB and DynamoDB Streams operation
_INSTALL_LOCK = threading.Lock()
_MARK = "_realtime_devstack_installed"  # set on moto's class: survives a re-import of this module
_OPS = {"ConditionCheck", "Put", "Delete", "Update"}


def install() -> None:
    """Patch moto in place (idempotent, thread-safe). Call before serving or mocking DynamoDB."""
    with _INSTALL_LOCK:
        if getattr(DynamoDBBackend, _MARK, False):
            return
        setattr(DynamoDBBackend, "transact_write_items", _transact_write_items)  # noqa: B010
        setattr(DynamoDBBackend, "update_item", _one_stream_record(DynamoDBBackend.update_item))  # noqa: B010
        for backend in (DynamoDBBackend, DynamoDBStreamsBackend):
            for name, attr in list(vars(backend).items()):
                if not name.startswith("_") and inspect.isfunction(attr):
                    setattr(backend, name, _locked(attr))
        # call_action parses, runs the backend call and serializes the response: lock all of it.
        for handler in (DynamoHandler, DynamoDBStreamsHandler):
            handler_call: Callable[..., Any] = getattr(handler, "call_action", BaseResponse.call_action)
            setattr(handler, "call_action", _locked(handler_call))  # noqa: B010
        _stop_tracking_instances()
        setattr(DynamoHandler, "serialized", _fast_serialized(DynamoHandler.serialized))  # noqa: B010
        setattr(DynamoDBBackend, _MARK, True)


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


# The hot reads return plain JSON-shaped dicts; moto's generic serializer walks them against the
# service model at ~0.4 ms per item, under the backend lock. json.dumps gives the same bytes.
_FAST_ACTIONS = {"Query", "GetItem", "Scan"}


def _fast_serialized(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def serialized(self: DynamoHandler, action_result: Any) -> Any:
        result = getattr(action_result, "result", None)
        if isinstance(result, dict) and self._get_action() in _FAST_ACTIONS:
            try:
                body = json.dumps(result)
            except TypeError:  # binary attributes: let moto base64-encode them
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
    """moto's ``transact_write_items`` without the table deep copies: check all, then write all."""
    if len(transact_items) > 100:
        raise TooManyTransactionsException()
    # Phase 1: moto's loop verbatim, except that each write is dry-run on a scratch table instead
    # of applied, so every error (and its order) is moto's; nothing is written, nothing to undo.
    target_items: set[tuple[str, str]] = set()
    writes: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    errors: list[tuple[str | None, str | None, dict[str, Any] | None]] = []
    for item in transact_items:
        original_item: dict[str, Any] | None = None
        if len(item) > 1:
            raise TransactWriteSingleOpException
        try:
            op_type, op = next(iter(item.items()))
            if op_type not in _OPS:
                raise ValueError("Unsupported transaction operation")
            table_name = op["TableName"]
            if op_type == "Put":
                attrs = op["Item"]
                table = self.get_table(table_name)
                key = {table.hash_key_attr: attrs[table.hash_key_attr]}
                if table.range_key_attr is not None:
                    key[table.range_key_attr] = attrs[table.range_key_attr]
            else:
                key = op["Key"]
            unique = (str(table_name), str(dict(sorted(key.items()))))
            if unique in target_items:
                raise MultipleTransactionsException()
            target_items.add(unique)

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
    if any(code is not None for code, _, _ in errors):
        raise TransactionCanceledException(errors)

    # Phase 2: apply with moto's own methods (same items, same stream records). They were all
    # dry-run above, so this should not fail; if it does, undo the items touched so far.
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
    scratch.__dict__.update(vars(table), items=items, stream_shard=None)
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
