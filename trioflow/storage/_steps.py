"""The step journal of the SQL backends (schema v2 of SQLite, v3 of PostgreSQL).

A run is stored as its run row (the snapshot without ``steps``) and one row per step
record, keyed by ``(run_id, step_key)`` (the qualified keys of
:attr:`~trioflow._core._model.RunSnapshot.steps`). A write stores the run row and only the
step rows that changed, so its cost does not grow with the number of steps already
settled. Step rows are ordered by insertion (a row updated in place keeps its place), which
is the order of the snapshot's ``steps`` dict: a key assigned again keeps its position, a
key deleted and added again moves to the end.

Both backends share what is written (strict JSON text) and how a snapshot is put back
together; they differ only in SQL.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from typing import Any, Final

import attrs

from .._core._errors import StorageError
from .._core._model import RunSnapshot
from .._core._serde import snapshot_to_json
from ._json import dumps_strict, loads_strict, snapshot_from_data

__all__ = [
    "StepWrites",
    "run_row_data",
    "run_row_json",
    "snapshot_from_rows",
    "split_legacy",
    "step_writes",
]

_NO_STEPS: Final[dict[str, dict[str, Any]]] = {}


def run_row_json(snapshot: RunSnapshot, *, without_path: bool = False) -> str:
    """The run row's snapshot text: the snapshot without its steps (and, ``without_path``,
    without its ``step_execution_path``, stored as rows too), as strict JSON."""
    return dumps_strict(*run_row_data(snapshot, without_path=without_path))


def run_row_data(snapshot: RunSnapshot, *, without_path: bool = False) -> tuple[Any, str]:
    """The JSON data of :func:`run_row_json` and what to call it in an error."""
    bare = snapshot
    if snapshot.steps or (without_path and snapshot.step_execution_path):
        changes: dict[str, Any] = {"steps": _NO_STEPS}
        if without_path:
            changes["step_execution_path"] = []
        bare = attrs.evolve(snapshot, **changes)
    return snapshot_to_json(bare), f"the snapshot of run {snapshot.run_id!r}"


@attrs.frozen
class StepWrites:
    """The step rows one write changes."""

    #: Every step row of the run is replaced (``changed_steps=None``): the stored rows are
    #: deleted and ``upserts`` holds every key, in the snapshot's order.
    replace_all: bool
    #: ``(step_key, record JSON)`` to insert or update, in the snapshot's order.
    upserts: list[tuple[str, str]]
    #: Keys whose rows are deleted (changed, but no longer in the snapshot).
    deletes: list[str]
    #: With ``split`` (SQLite): ``(hash, text)`` of the large values moved out of the
    #: records (see :mod:`trioflow.storage._blobs`).
    blobs: list[tuple[str, str]] = attrs.field(factory=list)

    @property
    def size(self) -> int:
        """The characters of text written."""
        records = sum(len(key) + len(record) for key, record in self.upserts)
        return records + sum(len(text) for _, text in self.blobs)


def step_writes(
    snapshot: RunSnapshot, changed_steps: Collection[str] | None, *, split: bool = False
) -> StepWrites:
    """What to write for ``snapshot``'s steps: every one (``changed_steps`` None), or only
    the keys in ``changed_steps`` (a key no longer in the snapshot is deleted). Serialized
    here, on the calling task; StorageError naming the step when a record is not strict
    JSON. ``split``: large values move out of the records, into ``blobs`` (see
    :mod:`trioflow.storage._blobs`)."""
    writes = _step_writes(snapshot, changed_steps)
    if not split or not writes.upserts:
        return writes
    return _split(snapshot, writes)


def _split(snapshot: RunSnapshot, writes: StepWrites) -> StepWrites:
    from ._blobs import THRESHOLD, dumps_split

    if all(len(record) < THRESHOLD for _, record in writes.upserts):
        return writes
    upserts, blobs = [], []
    for key, record in writes.upserts:
        if len(record) >= THRESHOLD:
            what = f"the snapshot of run {snapshot.run_id!r} (step {key!r})"
            split = dumps_split(snapshot.steps[key], what, record)
            record = split.text
            blobs.extend(split.blobs)
        upserts.append((key, record))
    return attrs.evolve(writes, upserts=upserts, blobs=blobs)


def _step_writes(snapshot: RunSnapshot, changed_steps: Collection[str] | None) -> StepWrites:
    steps = snapshot.steps
    run_id = snapshot.run_id
    if changed_steps is None:
        return StepWrites(True, [_dump(run_id, key, rec) for key, rec in steps.items()], [])
    if isinstance(changed_steps, str):
        raise TypeError("changed_steps must be a collection of step keys, not a str")
    ordered: Iterable[str] = changed_steps
    if isinstance(changed_steps, (set, frozenset)) and len(changed_steps) > 1:
        # No order given: the snapshot's, so that new rows are stored as the dict orders
        # them (this costs a pass over every step; an ordered collection spares it).
        ordered = [key for key in steps if key in changed_steps]
    unique = dict.fromkeys(ordered)
    upserts = [_dump(run_id, key, steps[key]) for key in unique if key in steps]
    deletes = [key for key in unique if key not in steps]
    return StepWrites(False, upserts, deletes)


def _dump(run_id: str, key: str, record: dict[str, Any]) -> tuple[str, str]:
    return key, dumps_strict(record, f"the snapshot of run {run_id!r} (step {key!r})")


def snapshot_from_rows(
    text: object,
    steps: Iterable[tuple[str, object]],
    where: str,
    run_id: str,
    path: list[Any] | None = None,
) -> RunSnapshot:
    """The RunSnapshot stored as the run row ``text`` and the step rows ``(step_key,
    record)`` in their stored order (and, when stored as rows, its
    ``step_execution_path``); StorageError naming the row when one is damaged."""
    what = f"{where}: the stored snapshot of run {run_id!r}"
    # Text as read, or data already decoded (a row whose large values were put back).
    data = text if isinstance(text, dict) else loads_strict(text, what)
    if not isinstance(data, dict):
        raise StorageError(
            f"{what} is not a JSON object (a {type(data).__name__}); the row is damaged"
        )
    records = data.get("steps")
    merged: dict[str, Any] = dict(records) if isinstance(records, dict) and records else {}
    for key, record_text in steps:
        merged[key] = (
            record_text
            if isinstance(record_text, dict)
            else loads_strict(record_text, f"{what}, step {key!r},")
        )
    if records is None or isinstance(records, dict):
        data["steps"] = merged  # else damaged: validation below names it
    if path:
        data["step_execution_path"] = path
    return snapshot_from_data(data, what)


def split_legacy(
    text: str, *, path: list[Any] | None = None
) -> tuple[str, list[tuple[str, str]]] | None:
    """A v1 run row's snapshot text split into the run row without steps and the step
    rows (compact JSON, in the stored order); None when the text is not a JSON object
    (a damaged row is left as it is: loading it says what is wrong). With ``path`` (a
    list), the ``step_execution_path`` moves out too, into ``path``."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("steps"), dict):
        return None
    steps: dict[str, Any] = data["steps"]
    data["steps"] = {}
    moved = data.get("step_execution_path")
    if path is not None and isinstance(moved, list) and all(isinstance(p, str) for p in moved):
        path.extend(moved)
        data["step_execution_path"] = []
    rows = [(str(key), _compact(record)) for key, record in steps.items()]
    return _compact(data), rows


def _compact(value: Any) -> str:
    # The values were written by dumps_strict: strict JSON that round-trips unchanged.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
