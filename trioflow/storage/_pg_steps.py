"""PostgreSQL's side of the step journal (schema v3, see :mod:`trioflow.storage._steps`):
the ``trioflow_steps`` table, its migration, and the statements that read and write it.

A row's place is ``ord`` (a sequence value): an upsert of a stored key keeps it, a new key
takes the next one; a whole write (``changed_steps=None``) gives every row a new one in
the snapshot's order, so the stored order is the dict's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from .._core._model import RunSnapshot
from ._steps import StepWrites, snapshot_from_rows, split_legacy

if TYPE_CHECKING:
    import psycopg


def migrate_to_3(cur: psycopg.Cursor[Any]) -> None:
    """Version 3: each run's step records move out of its snapshot into step rows."""
    cur.execute("CREATE SEQUENCE trioflow_steps_ord")
    cur.execute(
        """
        CREATE TABLE trioflow_steps (
            run_id text NOT NULL,
            step_key text NOT NULL,
            ord bigint NOT NULL DEFAULT nextval('trioflow_steps_ord'),
            record text NOT NULL,
            PRIMARY KEY (run_id, step_key)
        )
        """
    )
    cur.execute("ALTER SEQUENCE trioflow_steps_ord OWNED BY trioflow_steps.ord")
    cur.execute("CREATE INDEX trioflow_steps_in_order ON trioflow_steps (run_id, ord)")
    cur.execute("SELECT run_id, snapshot FROM trioflow_runs ORDER BY ord")
    moved = []
    for run_id, text in cur.fetchall():
        split = split_legacy(text) if isinstance(text, str) else None
        if split is not None:
            moved.append((run_id, *split))
    for run_id, bare, rows in moved:
        if rows:
            cur.execute(INSERT_ALL_SQL, _all_params(run_id, rows))
        cur.execute("UPDATE trioflow_runs SET snapshot = %s WHERE run_id = %s", (bare, run_id))


#: The CTEs of SAVE_SQL that write the step rows (after ``upd``, the run row's update).
SAVE_STEPS_CTES: Final = """
, del_steps AS (
    DELETE FROM trioflow_steps
    WHERE run_id = %(run)s AND EXISTS (SELECT 1 FROM upd)
      AND CASE WHEN %(replace)s THEN NOT (step_key = ANY(%(keys)s::text[]))
               ELSE step_key = ANY(%(deletes)s::text[]) END
), put_steps AS (
    INSERT INTO trioflow_steps (run_id, step_key, record)
    SELECT %(run)s, k, r
    FROM unnest(%(keys)s::text[], %(records)s::text[]) WITH ORDINALITY AS t(k, r, n)
    WHERE EXISTS (SELECT 1 FROM upd)
    ORDER BY n
    ON CONFLICT (run_id, step_key) DO UPDATE SET
        record = EXCLUDED.record,
        ord = CASE WHEN %(replace)s THEN EXCLUDED.ord ELSE trioflow_steps.ord END
)
"""

INSERT_ALL_SQL: Final = """
INSERT INTO trioflow_steps (run_id, step_key, record)
SELECT %(run)s, k, r
FROM unnest(%(keys)s::text[], %(records)s::text[]) WITH ORDINALITY AS t(k, r, n)
ORDER BY n
"""

#: One statement (one consistent view): the run row and its step rows in order.
LOAD_SQL: Final = """
SELECT r.snapshot,
       ARRAY(SELECT s.step_key FROM trioflow_steps s WHERE s.run_id = r.run_id ORDER BY s.ord),
       ARRAY(SELECT s.record FROM trioflow_steps s WHERE s.run_id = r.run_id ORDER BY s.ord)
FROM trioflow_runs r WHERE r.run_id = %s
"""

#: What RETURNING adds to a statement on ``trioflow_runs AS r`` to read the step rows.
RETURNING_STEPS: Final = (
    "ARRAY(SELECT s.step_key FROM trioflow_steps s WHERE s.run_id = r.run_id ORDER BY s.ord), "
    "ARRAY(SELECT s.record FROM trioflow_steps s WHERE s.run_id = r.run_id ORDER BY s.ord)"
)


def _all_params(run_id: str, rows: list[tuple[str, str]]) -> dict[str, Any]:
    return {"run": run_id, "keys": [k for k, _ in rows], "records": [r for _, r in rows]}


def save_params(writes: StepWrites) -> dict[str, Any]:
    """SAVE_STEPS_CTES's parameters for ``writes`` (besides ``run``)."""
    return {
        "replace": writes.replace_all,
        "keys": [key for key, _ in writes.upserts],
        "records": [record for _, record in writes.upserts],
        "deletes": writes.deletes,
    }


def replace_steps(
    conn: psycopg.Connection[Any], run_id: str, writes: StepWrites, *, fresh: bool
) -> None:
    """Store every step of ``writes`` (a whole write) for a run inserted (``fresh``: it
    has no step rows) or rewritten just now, in the caller's transaction."""
    if not fresh:
        conn.execute("DELETE FROM trioflow_steps WHERE run_id = %s", (run_id,))
    if writes.upserts:
        conn.execute(INSERT_ALL_SQL, _all_params(run_id, writes.upserts))


def load(conn: psycopg.Connection[Any], run_id: str) -> tuple[str, list[Any], list[Any]] | None:
    row = conn.execute(LOAD_SQL, (run_id,)).fetchone()
    if row is None:
        return None
    return str(row[0]), list(row[1]), list(row[2])


def snapshot_from_load(
    text: str, keys: list[Any], records: list[Any], where: str, run_id: str
) -> RunSnapshot:
    return snapshot_from_rows(text, zip(keys, records, strict=True), where, run_id)
