"""SQLite's side of the step journal (schema v2, see :mod:`trioflow.storage._steps`):
the ``steps`` and ``path`` tables, their migration from v1, and the statements run on the
storage's threads.

``path`` holds a run's ``step_execution_path`` one entry per row: an execution only
appends to it, so a write that names its changed steps stores only the entries past the
stored ones (the whole path, when it is shorter than what is stored).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from .._core._model import RunSnapshot
from . import _blobs
from ._json import dumps_strict
from ._steps import StepWrites, snapshot_from_rows, split_legacy

#: The insertion order of step rows is their rowid: a new row gets a rowid above every
#: row in the table, an upsert of an existing key keeps its row (and so its place).
CREATE_STEPS = """
    CREATE TABLE steps (
        run_id TEXT NOT NULL,
        step_key TEXT NOT NULL,
        record TEXT NOT NULL,
        UNIQUE (run_id, step_key)
    )
"""

CREATE_PATH = """
    CREATE TABLE path (
        run_id TEXT NOT NULL,
        idx INTEGER NOT NULL,
        step_id TEXT NOT NULL,
        PRIMARY KEY (run_id, idx)
    ) WITHOUT ROWID
"""

_INSERT_PATH = "INSERT INTO path (run_id, idx, step_id) VALUES (?, ?, ?)"

_UPSERT = (
    "INSERT INTO steps (run_id, step_key, record) VALUES (?, ?, ?) "
    "ON CONFLICT (run_id, step_key) DO UPDATE SET record = excluded.record"
)


def migrate_to_2(conn: sqlite3.Connection) -> None:
    """Version 2: each run's step records move out of its snapshot into ``steps`` rows."""
    conn.execute(CREATE_STEPS)
    conn.execute(CREATE_PATH)
    moved = []
    for run_id, text in conn.execute("SELECT run_id, snapshot FROM runs ORDER BY rowid"):
        path: list[str] = []
        split = split_legacy(text, path=path) if isinstance(text, str) else None
        if split is not None:
            moved.append((run_id, *split, path))
    for run_id, bare, rows, path in moved:
        conn.executemany(_UPSERT, [(run_id, key, record) for key, record in rows])
        conn.executemany(_INSERT_PATH, [(run_id, i, step) for i, step in enumerate(path)])
        conn.execute("UPDATE runs SET snapshot = ? WHERE run_id = ?", (bare, run_id))


def write_steps(conn: sqlite3.Connection, run_id: str, writes: StepWrites) -> None:
    """Store ``writes`` (inside the caller's transaction)."""
    if writes.replace_all:
        conn.execute("DELETE FROM steps WHERE run_id = ?", (run_id,))
    elif writes.deletes:
        conn.executemany(
            "DELETE FROM steps WHERE run_id = ? AND step_key = ?",
            [(run_id, key) for key in writes.deletes],
        )
    upserts = writes.upserts
    if writes.blobs:
        _blobs.store(conn, run_id, writes.blobs)
    if len(upserts) == 1:
        key, record = upserts[0]
        conn.execute(_UPSERT, (run_id, key, record))
    elif upserts:
        conn.executemany(_UPSERT, [(run_id, key, record) for key, record in upserts])


def write_path(
    conn: sqlite3.Connection, run_id: str, path: Sequence[str], *, whole: bool
) -> None:
    """Store the run's ``step_execution_path``: every entry (``whole``), else the entries
    past the stored ones (the caller promises the stored ones are a prefix of ``path``)."""
    start = 0
    if not whole:
        stored = conn.execute(
            "SELECT max(idx) FROM path WHERE run_id = ?", (run_id,)
        ).fetchall()[0][0]
        start = 0 if stored is None else int(stored) + 1
        if start > len(path):
            whole, start = True, 0  # not a prefix after all: store it all
    if whole:
        conn.execute("DELETE FROM path WHERE run_id = ?", (run_id,))
    new = path[start:]
    if not new:
        return
    dumps_strict(list(new), f"the snapshot of run {run_id!r} (step_execution_path)")
    if len(new) == 1:
        conn.execute(_INSERT_PATH, (run_id, start, new[0]))
    else:
        conn.executemany(_INSERT_PATH, [(run_id, start + i, s) for i, s in enumerate(new)])


def delete_steps(conn: sqlite3.Connection, run_id: str) -> None:
    conn.execute("DELETE FROM steps WHERE run_id = ?", (run_id,))
    conn.execute("DELETE FROM path WHERE run_id = ?", (run_id,))
    _blobs.delete_unused(conn, run_id)


def load(conn: sqlite3.Connection, run_id: str, where: str) -> RunSnapshot | None:
    """The stored snapshot of ``run_id`` (the run row and its step rows read in one read
    transaction, so a write committed meanwhile is seen wholly or not at all)."""
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")
    try:
        rows = conn.execute("SELECT snapshot FROM runs WHERE run_id = ?", (run_id,)).fetchall()
        if not rows:
            return None
        what = f"{where}: the stored snapshot of run {run_id!r}"
        run_row = _restored(conn, rows[0][0], what)
        steps = [
            (key, _restored(conn, record, f"{what}, step {key!r},"))
            for key, record in conn.execute(
                "SELECT step_key, record FROM steps WHERE run_id = ? ORDER BY rowid", (run_id,)
            )
        ]
        path: list[Any] = [
            row[0]
            for row in conn.execute(
                "SELECT step_id FROM path WHERE run_id = ? ORDER BY idx", (run_id,)
            )
        ]
    finally:
        if own:
            conn.execute("COMMIT")
    return snapshot_from_rows(run_row, steps, where, run_id, path)


def _restored(conn: sqlite3.Connection, text: object, what: str) -> object:
    # The row as stored, or (when it names blobs) its data with the blobs put back.
    return _blobs.restore(conn, text, what) if _blobs.has_blobs(text) else text
