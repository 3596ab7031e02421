"""Room state and metadata (issue 8, first slice): patches, the path rule, the room item, on moto."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable
from typing import Any

import pytest

from realtime_transport.errors import InvalidInput
from realtime_transport.rooms import (
    MetadataTooLarge,
    PatchTestFailed,
    PreconditionFailed,
    StateConflict,
    StateTooLarge,
)
from realtime_transport.rooms import conflicts as conflicts_module
from realtime_transport.rooms.conflicts import ChangeLog, overlaps
from realtime_transport.rooms.patches import (
    apply_json_patch,
    apply_merge_patch,
    json_patch_paths,
    merge_patch_paths,
    validate_operations,
)
from realtime_transport.rooms.room import MAX_DOC_BYTES, MAX_METADATA_BYTES, room

TABLE = "test-events"

# --- RFC 7396 ---------------------------------------------------------------------------------

# RFC 7396 Appendix A, every example: (original, patch, result).
RFC7396_VECTORS = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("original", "patch", "result"), RFC7396_VECTORS)
def test_merge_patch_rfc7396_appendix_a(original: Any, patch: Any, result: Any) -> None:
    before = copy.deepcopy(original)
    assert apply_merge_patch(original, patch) == result
    assert original == before, "the target is not modified"


def test_merge_patch_paths_are_the_leaves_it_sets_or_deletes() -> None:
    patch = {"a": {"b": 1, "c": None}, "d": {}, "e/f": [1], "g~": "x"}
    assert merge_patch_paths(patch) == ["/a/b", "/a/c", "/d", "/e~1f", "/g~0"]
    assert merge_patch_paths({}) == []
    assert merge_patch_paths(["whole"]) == [""]


# --- RFC 6902 ---------------------------------------------------------------------------------

DOC = {"a": {"b": 1}, "list": [1, 2, 3], "s": "x"}

JSON_PATCH_CASES = [
    ([{"op": "add", "path": "/a/c", "value": 2}], {"a": {"b": 1, "c": 2}, "list": [1, 2, 3], "s": "x"}, ["/a/c"]),
    ([{"op": "add", "path": "/list/-", "value": 4}], {**DOC, "list": [1, 2, 3, 4]}, ["/list"]),
    ([{"op": "remove", "path": "/a/b"}], {**DOC, "a": {}}, ["/a/b"]),
    ([{"op": "remove", "path": "/list/0"}], {**DOC, "list": [2, 3]}, ["/list"]),
    ([{"op": "replace", "path": "/s", "value": "y"}], {**DOC, "s": "y"}, ["/s"]),
    ([{"op": "replace", "path": "/list/1", "value": 9}], {**DOC, "list": [1, 9, 3]}, ["/list/1"]),
    ([{"op": "move", "from": "/s", "path": "/t"}], {"a": {"b": 1}, "list": [1, 2, 3], "t": "x"}, ["/s", "/t"]),
    ([{"op": "copy", "from": "/a", "path": "/c"}], {**DOC, "c": {"b": 1}}, ["/c"]),
    ([{"op": "test", "path": "/a/b", "value": 1}], DOC, []),
]


@pytest.mark.parametrize(("operations", "result", "paths"), JSON_PATCH_CASES)
def test_json_patch_operations(operations: list[dict[str, Any]], result: Any, paths: list[str]) -> None:
    before = copy.deepcopy(DOC)
    assert apply_json_patch(DOC, operations) == (result, paths)
    assert before == DOC


def test_json_patch_failing_test_changes_nothing() -> None:
    before = copy.deepcopy(DOC)
    operations = [{"op": "replace", "path": "/s", "value": "y"}, {"op": "test", "path": "/a/b", "value": 2}]
    with pytest.raises(PatchTestFailed):
        apply_json_patch(DOC, operations)
    assert before == DOC
    with pytest.raises(PatchTestFailed):  # RFC 6902 4.6: true is not 1
        apply_json_patch(DOC, [{"op": "test", "path": "/a/b", "value": True}])


@pytest.mark.parametrize(
    "operations",
    [
        {"op": "add", "path": "/a", "value": 1},
        [{"op": "frobnicate", "path": "/a"}],
        [{"path": "/a", "value": 1}],
        [{"op": "add", "value": 1}],
        [{"op": "add", "path": "a", "value": 1}],
        [{"op": "add", "path": 5, "value": 1}],
        [{"op": "add", "path": "/a"}],
        [{"op": "move", "path": "/a"}],
        [{"op": "move", "from": "/a", "path": "/a/b"}],
        ["add"],
    ],
)
def test_malformed_json_patch_is_invalid_input(operations: Any) -> None:
    with pytest.raises(InvalidInput):
        validate_operations(operations)


def test_json_patch_that_cannot_apply_is_invalid_input() -> None:
    with pytest.raises(InvalidInput):
        apply_json_patch(DOC, [{"op": "remove", "path": "/nope"}])
    with pytest.raises(InvalidInput):
        apply_json_patch(DOC, [{"op": "add", "path": "/list/9", "value": 1}])


def test_json_patch_paths_without_a_document() -> None:
    operations = [
        {"op": "test", "path": "/t", "value": 1},
        {"op": "move", "from": "/m", "path": "/n"},
        {"op": "copy", "from": "/c", "path": "/d"},
    ]
    assert json_patch_paths(operations) == ["/m", "/n", "/d"]


# --- the path rule ----------------------------------------------------------------------------


def test_overlap_is_on_segment_boundaries() -> None:
    assert overlaps("/a", "/a/b")
    assert overlaps("/a/b", "/a")
    assert overlaps("/a", "/a")
    assert overlaps("", "/anything")
    assert not overlaps("/a", "/ab")
    assert not overlaps("/a/b", "/a/c")


def test_change_log_conflicts_only_after_the_base() -> None:
    log = ChangeLog().record(1, ["/a/b"]).record(2, ["/c"])
    assert log.conflicts(0, ["/a", "/x"]) == ["/a"]
    assert log.conflicts(1, ["/a", "/x"]) == []
    assert log.conflicts(1, ["/c/d"]) == ["/c/d"]
    assert log.conflicts(2, ["/c"]) == []
    # a change of /a subsumes the older entry below it
    assert log.record(3, ["/a"]).changes == {"/c": 2, "/a": 3}
    assert ChangeLog.from_json(log.to_json()) == log


def test_change_log_is_bounded_and_remembers_its_floor() -> None:
    log = ChangeLog()
    for version in range(1, 11):
        log = log.record(version, [f"/k{version}"], max_entries=4)
    assert len(log.changes) == 4
    assert log.floor == 6
    assert log.conflicts(6, ["/k1"]) == []  # everything after 6 is known
    assert log.conflicts(5, ["/k1"]) == [""]  # before the floor: the whole document
    assert log.conflicts(5, []) == []


# --- the room ---------------------------------------------------------------------------------


def raw_item(aws: Any, r: Any) -> Any:
    return aws.get_item(TableName=TABLE, Key={"pk": {"S": r.key}, "sk": {"N": "0"}}, ConsistentRead=True).get("Item")


def test_fresh_room_and_first_patch(aws: Any, realtime: Any) -> None:
    r = room(realtime, "design-review")
    assert r.channel_name == "room_design-review"
    assert r.state().version == 0
    assert r.state().doc == {}
    assert raw_item(aws, r) is None

    result = r.patch(0, merge_patch={"title": "Q3", "owner": {"name": "ana"}}, by="ana")
    assert (result.version, result.paths) == (1, ["/title", "/owner/name"])
    assert r.state().doc == {"title": "Q3", "owner": {"name": "ana"}}

    item = raw_item(aws, r)
    assert item["pk"]["S"] == f"{realtime.name}#room#design-review"
    assert item["kind"]["S"] == "room"
    assert item["version"]["N"] == "1"
    assert json.loads(item["doc"]["S"]) == result.doc
    assert json.loads(item["metadata"]["S"]) == {}
    assert json.loads(item["changes"]["S"]) == {"floor": 0, "paths": {"/title": 1, "/owner/name": 1}}
    last = json.loads(item["lastChange"]["S"])
    assert last["version"] == 1
    assert last["kind"] == "room.state"
    assert last["patch"] == {"title": "Q3", "owner": {"name": "ana"}}
    assert last["paths"] == ["/title", "/owner/name"]
    assert last["by"] == "ana"
    assert int(item["updatedAt"]["N"]) == last["at"]


def test_stale_base_applies_unless_a_path_overlaps(realtime: Any) -> None:
    r = room(realtime, "r1")
    r.patch(0, merge_patch={"a": {"b": 1}})
    r.patch(1, operations=[{"op": "add", "path": "/c", "value": [1]}])
    # based on 1: /a/x was not changed after 1
    assert r.patch(1, merge_patch={"a": {"x": 2}}).version == 3
    # based on 0: /a/b changed at version 1
    with pytest.raises(StateConflict) as caught:
        r.patch(0, operations=[{"op": "replace", "path": "/a", "value": {}}])
    assert caught.value.version == 3
    assert caught.value.conflicts == ["/a"]
    assert caught.value.doc == {"a": {"b": 1, "x": 2}, "c": [1]}
    # an operation that fails on a path someone changed is a conflict, not a 400
    r.patch(3, operations=[{"op": "remove", "path": "/c"}])
    with pytest.raises(StateConflict) as caught:
        r.patch(3, operations=[{"op": "add", "path": "/c/-", "value": 2}])
    assert caught.value.conflicts == ["/c/-"]
    # a version from the future
    with pytest.raises(StateConflict) as caught:
        r.patch(99, merge_patch={"z": 1})
    assert caught.value.conflicts == [""]
    assert r.state().version == 4


def test_metadata_changes_never_conflict_with_state(realtime: Any) -> None:
    r = room(realtime, "r2")
    r.patch(0, merge_patch={"a": 1})
    assert r.set_metadata({"topic": "roadmap"}, by="bo").version == 2
    assert r.patch(1, merge_patch={"b": 2}).version == 3
    assert r.get() == {
        "roomId": "r2",
        "metadata": {"topic": "roadmap"},
        "state": {"version": 3, "doc": {"a": 1, "b": 2}},
        "memberCount": 0,
        "etag": '"3"',
    }


def test_if_match_is_strict_compare_and_set(aws: Any, realtime: Any) -> None:
    r = room(realtime, "cas")
    r.patch(0, merge_patch={"a": 1})
    r.patch(1, merge_patch={"b": 1})
    with pytest.raises(PreconditionFailed) as caught:
        # the path rule would let this through; If-Match does not
        r.patch(1, merge_patch={"c": 1}, if_match='"1"')
    assert caught.value.version == 2
    assert r.patch(2, merge_patch={"c": 1}, if_match='"2"').version == 3
    assert r.patch(3, merge_patch={"d": 1}, if_match=3).version == 4
    with pytest.raises(PreconditionFailed):
        r.set_metadata({"x": 1}, if_match='"3"')
    assert r.set_metadata({"x": 1}, if_match=r.get()["etag"]).version == 5
    with pytest.raises(InvalidInput):
        r.patch(5, merge_patch={"e": 1}, if_match="W/5")
    assert r.state().version == 5


def test_a_patch_that_changes_nothing_writes_nothing(aws: Any, realtime: Any) -> None:
    r = room(realtime, "noop")
    r.patch(0, merge_patch={"a": 1})
    item = raw_item(aws, r)
    assert r.patch(1, merge_patch={"a": 1}).paths == []
    assert r.patch(1, operations=[{"op": "test", "path": "/a", "value": 1}]).version == 1
    assert r.set_metadata({}).version == 1
    assert raw_item(aws, r) == item


def test_stale_base_beyond_the_pruned_log(monkeypatch: pytest.MonkeyPatch, realtime: Any) -> None:
    monkeypatch.setattr(conflicts_module, "MAX_ENTRIES", 3)
    r = room(realtime, "pruned")
    for version in range(6):
        r.patch(version, merge_patch={f"k{version}": version})
    assert r.state().version == 6
    # the log holds /k3, /k4, /k5 (versions 4..6): based on 3 is fully known, 2 is not
    assert r.patch(3, merge_patch={"fresh": 1}).version == 7
    with pytest.raises(StateConflict) as caught:
        r.patch(2, merge_patch={"other": 1})
    assert caught.value.conflicts == [""]
    assert caught.value.version == 7


def test_failing_test_operation_changes_nothing(aws: Any, realtime: Any) -> None:
    r = room(realtime, "test-op")
    r.patch(0, merge_patch={"a": 1, "b": 2})
    item = raw_item(aws, r)
    with pytest.raises(PatchTestFailed):
        r.patch(1, operations=[{"op": "remove", "path": "/a"}, {"op": "test", "path": "/b", "value": 3}])
    assert raw_item(aws, r) == item


BIG = "x" * MAX_DOC_BYTES


def test_the_document_is_limited_after_the_patch(aws: Any, realtime: Any) -> None:
    r = room(realtime, "grows")
    half = MAX_DOC_BYTES // 2
    r.patch(0, merge_patch={"one": "x" * half})
    item = raw_item(aws, r)
    with pytest.raises(StateTooLarge):  # each patch is small enough, the document would not be
        r.patch(1, merge_patch={"two": "y" * half})
    assert raw_item(aws, r) == item
    assert r.patch(1, merge_patch={"two": "y" * (half - 100)}).version == 2


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda r: r.patch(1, merge_patch={"big": BIG}), StateTooLarge),
        (
            lambda r: r.patch(1, operations=[{"op": "add", "path": "/big", "value": "y" * (MAX_DOC_BYTES - 10)}]),
            StateTooLarge,
        ),
        (lambda r: r.set_metadata({"m": "x" * MAX_METADATA_BYTES}), MetadataTooLarge),
        (lambda r: r.set_metadata(["not", "an", "object"]), InvalidInput),
        (lambda r: r.patch("1", merge_patch={"a": 2}), InvalidInput),
        (lambda r: r.patch(1.0, merge_patch={"a": 2}), InvalidInput),
        (lambda r: r.patch(True, merge_patch={"a": 2}), InvalidInput),
        (lambda r: r.patch(-1, merge_patch={"a": 2}), InvalidInput),
        (lambda r: r.patch(None, merge_patch={"a": 2}), InvalidInput),
        (lambda r: r.patch(1), InvalidInput),
        (lambda r: r.patch(1, merge_patch={"a": 2}, operations=[]), InvalidInput),
        (lambda r: r.patch(1, merge_patch=["whole"]), InvalidInput),
        (lambda r: r.patch(1, operations=[{"op": "replace", "path": "", "value": [1]}]), InvalidInput),
        (lambda r: r.patch(1, operations=[{"op": "nope", "path": "/a"}]), InvalidInput),
        (lambda r: r.patch(1, operations=[{"op": "remove", "path": "/missing"}]), InvalidInput),
        (lambda r: r.patch(1, merge_patch={"a": float("nan")}), InvalidInput),
        (lambda r: r.patch(1, merge_patch={"a": 2}, by=""), InvalidInput),
    ],
)
def test_every_refusal_stores_nothing(aws: Any, realtime: Any, call: Callable[[Any], Any], error: type) -> None:
    r = room(realtime, "refusals")
    r.patch(0, merge_patch={"a": 1})
    item = raw_item(aws, r)
    with pytest.raises(error):
        call(r)
    assert raw_item(aws, r) == item


@pytest.mark.parametrize("room_id", ["", "a/b", "a#b", "x" * 129, "sp ace", "é"])
def test_room_id_is_checked(realtime: Any, room_id: str) -> None:
    with pytest.raises(InvalidInput):
        room(realtime, room_id)


# --- concurrency ------------------------------------------------------------------------------


def run_concurrently(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run every call at once (a barrier), returning each result or exception."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = calls[index]()
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


@pytest.mark.parametrize("faithful_on", [False, True], ids=["moto", "faithful"])
def test_twenty_concurrent_patches_on_one_path(
    aws: Any, realtime: Any, faithful: Callable[..., Any], faithful_on: bool
) -> None:
    if faithful_on:
        faithful(seed=8, request_jitter_ms=3.0, transaction_window_ms=10.0)
    r = room(realtime, "one-path")
    r.patch(0, merge_patch={"title": "start"})
    results = run_concurrently([lambda i=i: r.patch(1, merge_patch={"title": f"w{i}"}, by=f"w{i}") for i in range(20)])
    wins = [res for res in results if not isinstance(res, Exception)]
    losses = [res for res in results if isinstance(res, StateConflict)]
    assert len(wins) == 1, results
    assert len(losses) == 19, results
    assert wins[0].version == 2
    for loss in losses:
        assert loss.conflicts == ["/title"]
        assert loss.version == 2
        assert loss.doc == wins[0].doc
    assert r.state() == type(r.state())(2, wins[0].doc)
    winner = json.loads(raw_item(aws, r)["lastChange"]["S"])["by"]
    assert r.state().doc == {"title": winner}


@pytest.mark.parametrize("faithful_on", [False, True], ids=["moto", "faithful"])
def test_twenty_concurrent_patches_on_twenty_paths(
    aws: Any, realtime: Any, faithful: Callable[..., Any], faithful_on: bool
) -> None:
    if faithful_on:
        faithful(seed=9, request_jitter_ms=3.0, transaction_window_ms=10.0)
    r = room(realtime, "many-paths")
    calls: list[Callable[[], Any]] = []
    for i in range(20):
        if i % 2:
            calls.append(lambda i=i: r.patch(0, merge_patch={f"k{i}": i}))
        else:
            calls.append(lambda i=i: r.patch(0, operations=[{"op": "add", "path": f"/k{i}", "value": i}]))
    results = run_concurrently(calls)
    assert not [res for res in results if isinstance(res, Exception)], results
    assert sorted(res.version for res in results) == list(range(1, 21))
    assert r.state().version == 20
    assert r.state().doc == {f"k{i}": i for i in range(20)}


def test_a_lost_response_is_not_a_conflict_with_ourselves(
    aws: Any, realtime: Any, faithful: Callable[..., Any]
) -> None:
    """botocore retries a put whose response was lost after it committed; the retry's condition
    fails on our own write, which must count as success (else: a conflict on /a with ourselves)."""
    r = room(realtime, "lost")
    r.patch(0, merge_patch={"a": 1})
    puts: list[str] = []
    r.store._client.meta.events.register("before-send.dynamodb.PutItem", lambda **_: puts.append("put"))
    faithful(seed=1, lost_response_rates={"PutItem": 0.5})
    for version in range(1, 11):
        assert r.patch(version, merge_patch={"a": version + 1}).version == version + 1
    assert r.state() == type(r.state())(11, {"a": 11})
    assert len(puts) > 10, "some responses were lost and retried"
