"""Apply RFC 7396 JSON Merge Patch and RFC 6902 JSON Patch, and tell which paths a patch changes.

The changed paths feed the conflict rule (`conflicts.py`), so they are JSON Pointers (RFC 6901)
and err on the side of too wide, never too narrow: a wider path can only cause a spurious
conflict, which the client resolves; a narrower one could let two edits of the same value both
apply, a lost update.

* Merge patch: the path of every leaf the patch sets or deletes (`null`), and of every key whose
  value is an empty object (it may replace a non-object). A patch that is not an object replaces
  the whole document: path `""`.
* JSON Patch: each operation's `path`, and `from` for `move` (it removes there). `copy` only reads
  `from`, and `test` changes nothing, so neither adds a path: a `test` is evaluated against the
  current document, which is what protects the client's read. An `add`, `remove` or `move` in an
  array shifts every later element, so it counts as a change of the whole array (its parent).

RFC 6902 is python-json-patch (`jsonpatch`), which compares `test` values as RFC 6902 4.6 does
(`true` is not `1`) and is all or nothing here because each operation runs on a private copy.
RFC 7396 is the RFC's ten lines of pseudo-code.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from ..errors import InvalidInput
from .errors import PatchTestFailed

ROOT = ""  # RFC 6901: the empty pointer is the whole document

_OPS = frozenset({"add", "remove", "replace", "move", "copy", "test"})


def escape(segment: str) -> str:
    """One reference token (RFC 6901 section 3): `~` first, then `/`."""
    return segment.replace("~", "~0").replace("/", "~1")


def split(pointer: str) -> list[str]:
    """A pointer's reference tokens, still escaped (escaping is one-to-one, so comparing them is exact)."""
    if pointer == ROOT:
        return []
    if not pointer.startswith("/"):
        raise InvalidInput(f"{pointer!r} is not a JSON Pointer", field="path")
    return pointer[1:].split("/")


def parent(pointer: str) -> str:
    return pointer.rsplit("/", 1)[0] if pointer != ROOT else ROOT


# --- RFC 7396 ---------------------------------------------------------------------------------


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 section 2, MergePatch(Target, Patch); neither argument is modified."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = apply_merge_patch(result.get(name), value)
    return result


def merge_patch_paths(patch: Any, prefix: str = ROOT) -> list[str]:
    """The pointers a merge patch sets or deletes (see the module docstring)."""
    if not isinstance(patch, dict):
        return [prefix]
    if not patch:
        # `{}` at the top changes nothing; below it, it may replace a scalar by an object.
        return [] if prefix == ROOT else [prefix]
    paths: list[str] = []
    for name, value in patch.items():
        path = f"{prefix}/{escape(str(name))}"
        if isinstance(value, dict) and value:
            paths.extend(merge_patch_paths(value, path))
        else:
            paths.append(path)
    return paths


# --- RFC 6902 ---------------------------------------------------------------------------------


def validate_operations(operations: Any) -> list[dict[str, Any]]:
    """Refuse a malformed patch before touching any document: `InvalidInput` naming the operation."""
    if not isinstance(operations, list):
        raise InvalidInput("operations must be an array of JSON Patch operations", field="operations")
    for index, op in enumerate(operations):
        where = f"operations[{index}]"
        if not isinstance(op, dict):
            raise InvalidInput(f"{where} must be an object", field="operations")
        name = op.get("op")
        if name not in _OPS:
            raise InvalidInput(f"{where}.op must be one of {', '.join(sorted(_OPS))}", field="operations")
        _check_pointer(op.get("path"), f"{where}.path")
        if name in ("move", "copy"):
            _check_pointer(op.get("from"), f"{where}.from")
        if name in ("add", "replace", "test") and "value" not in op:
            raise InvalidInput(f"{where} ({name}) needs a value", field="operations")
        if name == "move" and _is_prefix(op["from"], op["path"]) and op["from"] != op["path"]:
            raise InvalidInput(f"{where} moves a value into itself", field="operations")
    import jsonpatch  # here, not at import: only a JSON Patch request needs it (cold start)
    import jsonpointer

    try:
        jsonpatch.JsonPatch(operations)  # the library's own checks, e.g. of array indices
    except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError) as exc:
        raise InvalidInput(f"malformed JSON Patch: {exc}", field="operations") from exc
    return operations


def json_patch_paths(operations: Iterable[dict[str, Any]]) -> list[str]:
    """The pointers a JSON Patch changes, without a document (arrays not widened to the parent)."""
    paths: list[str] = []
    for op in operations:
        if op["op"] == "test":
            continue
        if op["op"] == "move":
            paths.append(op["from"])
        paths.append(op["path"])
    return _unique(paths)


def apply_json_patch(doc: Any, operations: list[dict[str, Any]]) -> tuple[Any, list[str]]:
    """Apply all operations or none; returns the new document and the paths changed.

    `doc` is never modified. A failed `test` raises `PatchTestFailed`; an operation that cannot
    apply to this document (a missing path, an index out of range) raises `InvalidInput`.
    """
    import jsonpatch
    import jsonpointer

    validate_operations(operations)
    work = copy.deepcopy(doc)
    paths: list[str] = []
    for index, op in enumerate(operations):
        name = op["op"]
        if name == "move":
            paths.append(_widened(work, op["from"]))
        if name in ("add", "remove", "move"):
            paths.append(_widened(work, op["path"]))
        elif name in ("replace", "copy"):
            paths.append(op["path"])
        try:
            work = jsonpatch.JsonPatch([op]).apply(work, in_place=True)
        except jsonpatch.JsonPatchTestFailed as exc:
            raise PatchTestFailed(f"operations[{index}] (test at {op['path']!r}) failed", field="operations") from exc
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError) as exc:
            raise InvalidInput(f"operations[{index}] ({name}) cannot apply: {exc}", field="operations") from exc
    return work, _unique(paths)


def _widened(doc: Any, pointer: str) -> str:
    """`pointer`, or its parent when that is an array (inserting or removing shifts the rest)."""
    import jsonpointer

    if pointer == ROOT:
        return ROOT
    try:
        container = jsonpointer.resolve_pointer(doc, parent(pointer))
    except jsonpointer.JsonPointerException:
        return pointer  # the operation will fail anyway
    return parent(pointer) if isinstance(container, list) else pointer


def _check_pointer(value: Any, where: str) -> None:
    if not isinstance(value, str) or not (value == ROOT or value.startswith("/")):
        raise InvalidInput(f"{where} must be a JSON Pointer ('' or starting with '/')", field="operations")


def _is_prefix(a: str, b: str) -> bool:
    sa, sb = split(a), split(b)
    return sb[: len(sa)] == sa


def _unique(paths: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(paths))
