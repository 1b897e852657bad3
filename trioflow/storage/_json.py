"""Strict JSON in and out of the SQL backends (SQLite and PostgreSQL share it).

Writing: a value that is not strict JSON (``NaN``/``Infinity``, a lone surrogate, a
non-string key, something that is not JSON at all, a cycle) never reaches a table. The
engine validates values before they are stored, so one arriving here is a bug: it is a
:class:`~trioflow.StorageError` naming the path, and nothing is written.

Reading: a stored row that is not JSON, or not the shape trioflow wrote (a damaged file, a
row edited by hand), is a :class:`~trioflow.StorageError` naming the run, the row and what
is wrong, never a raw ``JSONDecodeError``.
"""

from __future__ import annotations

import json
from typing import Any

from .._core._chunks import Chunk
from .._core._errors import StorageError
from .._core._json import JsonValueError, has_lone_surrogate
from .._core._model import RunSnapshot
from .._core._serde import from_wire, snapshot_from_json, to_strict_jsonable

__all__ = [
    "chunk_from_data",
    "chunk_from_row",
    "dumps_strict",
    "loads_strict",
    "snapshot_from_data",
    "snapshot_from_row",
]


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (only finite numbers)")


def dumps_strict(value: Any, what: str) -> str:
    """``value`` as compact strict JSON text; StorageError naming ``what`` (e.g. ``"the
    snapshot of run 'r1'"``) and the path when it is not strict JSON."""
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (ValueError, TypeError, RecursionError) as exc:
        raise StorageError(f"refused to store {what}: {_locate(value, exc)}") from exc
    if has_lone_surrogate(text):
        raise StorageError(f"refused to store {what}: {_locate(value, None)}")
    return text


def _locate(value: Any, exc: BaseException | None) -> str:
    # Only on the failure path: walk the value for the path of the first problem.
    try:
        to_strict_jsonable(value)
    except JsonValueError as problem:
        return f"{problem} (values stored by trioflow must be strict JSON)"
    return f"not strict JSON ({exc})" if exc is not None else "not strict JSON"


def loads_strict(text: object, what: str) -> Any:
    """The value stored as JSON ``text``; StorageError naming ``what`` when it is not
    strict JSON."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StorageError(f"{what} is not UTF-8 text ({exc}); the row is damaged") from exc
    if not isinstance(text, str):
        raise StorageError(
            f"{what} is not JSON text (a stored {type(text).__name__}); the row is damaged"
        )
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise StorageError(
            f"{what} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            "the row is damaged"
        ) from exc
    except (ValueError, RecursionError) as exc:
        raise StorageError(f"{what} is not strict JSON ({exc}); the row is damaged") from exc


def snapshot_from_row(text: object, where: str, run_id: str) -> RunSnapshot:
    """The RunSnapshot stored as ``text`` for ``run_id``; StorageError when the row is
    not JSON or not a run snapshot."""
    what = f"{where}: the stored snapshot of run {run_id!r}"
    data = loads_strict(text, what)
    if not isinstance(data, dict):
        raise StorageError(
            f"{what} is not a JSON object (a {type(data).__name__}); the row is damaged"
        )
    return snapshot_from_data(data, what)


def snapshot_from_data(data: dict[str, Any], what: str) -> RunSnapshot:
    """The RunSnapshot whose JSON data is ``data`` (read from ``what``); StorageError when
    it is not a run snapshot."""
    try:
        snapshot: RunSnapshot = snapshot_from_json(data)
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise StorageError(f"{what} is not a valid run snapshot: {exc}") from exc
    return snapshot


def chunk_from_row(text: object, where: str, run_id: str, seq: int) -> Chunk:
    """The chunk stored as ``text`` at ``(run_id, seq)``; StorageError when the row is not
    JSON or not a chunk."""
    what = f"{where}: the stored event seq {seq} of run {run_id!r}"
    return chunk_from_data(loads_strict(text, what), what)


def chunk_from_data(data: Any, what: str) -> Chunk:
    """The chunk whose wire JSON data is ``data`` (read from ``what``); StorageError when
    it is not a chunk."""
    try:
        chunk: Chunk = from_wire(data)
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise StorageError(f"{what} is not a valid chunk: {exc}") from exc
    return chunk
