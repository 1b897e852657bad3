"""SQLite's side of the step journal (schema v2, see :mod:`trioflow.storage._steps`):
the ``steps`` table, its migration from v1, and the statements run on the storage's
threads."""

from __future__ import annotations

import sqlite3

from .._core._model import RunSnapshot
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

_UPSERT = (
    "INSERT INTO steps (run_id, step_key, record) VALUES (?, ?, ?) "
    "ON CONFLICT (run_id, step_key) DO UPDATE SET record = excluded.record"
)


def migrate_to_2(conn: sqlite3.Connection) -> None:
    """Version 2: each run's step records move out of its snapshot into ``steps`` rows."""
    conn.execute(CREATE_STEPS)
    moved = []
    for run_id, text in conn.execute("SELECT run_id, snapshot FROM runs ORDER BY rowid"):
        split = split_legacy(text) if isinstance(text, str) else None
        if split is not None:
            moved.append((run_id, *split))
    for run_id, bare, rows in moved:
        conn.executemany(_UPSERT, [(run_id, key, record) for key, record in rows])
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
    if len(upserts) == 1:
        key, record = upserts[0]
        conn.execute(_UPSERT, (run_id, key, record))
    elif upserts:
        conn.executemany(_UPSERT, [(run_id, key, record) for key, record in upserts])


def delete_steps(conn: sqlite3.Connection, run_id: str) -> None:
    conn.execute("DELETE FROM steps WHERE run_id = ?", (run_id,))


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
        steps = conn.execute(
            "SELECT step_key, record FROM steps WHERE run_id = ? ORDER BY rowid", (run_id,)
        ).fetchall()
    finally:
        if own:
            conn.execute("COMMIT")
    return snapshot_from_rows(rows[0][0], steps, where, run_id)
