"""PostgreSQL schema: the tables, their migrations and the check that runs them.

``MIGRATIONS[k]`` brings the schema from version ``k`` to ``k + 1``; :func:`migrate` runs
the missing ones in one transaction under an advisory lock (serialised across processes),
and refuses (touching nothing) a database of another application or of a newer schema.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from .._core._errors import StorageError
from ._pg_steps import migrate_to_3

if TYPE_CHECKING:
    import psycopg

APPLICATION_MARKER: Final = "trioflow"


def _migrate_to_1(cur: psycopg.Cursor[Any]) -> None:
    cur.execute(
        """
        CREATE TABLE trioflow_runs (
            run_id text PRIMARY KEY,
            workflow_id text NOT NULL,
            resource_id text,
            status text NOT NULL,
            created_at bigint NOT NULL,
            updated_at bigint NOT NULL,
            ord bigint GENERATED ALWAYS AS IDENTITY,
            last_seq bigint NOT NULL DEFAULT 0,
            queued boolean NOT NULL DEFAULT false,
            lease_owner text,
            lease_expires_at timestamptz,
            fencing_token bigint NOT NULL DEFAULT 0,
            snapshot text NOT NULL
        )
        """
    )
    cur.execute("CREATE INDEX trioflow_runs_by_created ON trioflow_runs (created_at, ord)")
    cur.execute(
        "CREATE INDEX trioflow_runs_by_workflow ON trioflow_runs (workflow_id, created_at, ord)"
    )
    cur.execute("CREATE INDEX trioflow_runs_by_status ON trioflow_runs (status, created_at, ord)")
    cur.execute(
        "CREATE INDEX trioflow_runs_by_resource ON trioflow_runs (resource_id, created_at, ord)"
    )
    # Workers look for runnable runs: queued pending ones and executing ones whose lease
    # lapsed. Partial, so finished runs cost the index nothing.
    cur.execute(
        "CREATE INDEX trioflow_runs_runnable ON trioflow_runs (updated_at) "
        "WHERE status IN ('pending', 'running', 'waiting')"
    )
    cur.execute(
        """
        CREATE TABLE trioflow_events (
            run_id text NOT NULL,
            seq bigint NOT NULL,
            chunk text NOT NULL,
            PRIMARY KEY (run_id, seq)
        )
        """
    )


def _migrate_to_2(cur: psycopg.Cursor[Any]) -> None:
    # Executions of a run that died of an error (a storage error, an engine bug), counted
    # across processes: a poisoned run is retried after ``retry_at``, and failed after
    # ``max_attempts`` (see PostgresStorage.record_failed_attempt).
    cur.execute(
        "ALTER TABLE trioflow_runs ADD COLUMN attempts integer NOT NULL DEFAULT 0, "
        "ADD COLUMN retry_at timestamptz, ADD COLUMN last_error text"
    )


def _migrate_to_4(cur: psycopg.Cursor[Any]) -> None:
    # Until when someone follows the run's log from another process (set by that
    # process's listener, see _pg_listen): writes NOTIFY the events channel only then,
    # because every NOTIFY costs every LISTENing backend of the database a transaction.
    # IF NOT EXISTS: the column carries no data, so a database whose version number was
    # set back by hand (the older migrations' tests do) migrates again cleanly.
    cur.execute("ALTER TABLE trioflow_runs ADD COLUMN IF NOT EXISTS followed_until timestamptz")


#: ``MIGRATIONS[k]`` brings the schema from version ``k`` to ``k + 1`` (0 = no tables).
MIGRATIONS: list[Callable[[psycopg.Cursor[Any]], None]] = [
    _migrate_to_1,
    _migrate_to_2,
    migrate_to_3,
    _migrate_to_4,
]
SCHEMA_VERSION: Final = len(MIGRATIONS)
#: Serialises initialisation and migration across processes (pg_advisory_xact_lock key).
_MIGRATION_LOCK: Final = 0x74666C77


def migrate(conn: psycopg.Connection[Any], where: str) -> None:
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        cur.execute("SELECT to_regclass('trioflow_meta') IS NOT NULL")
        row = cur.fetchone()
        has_meta = bool(row and row[0])
        version = 0
        if has_meta:
            cur.execute("SELECT key, value FROM trioflow_meta")
            meta = dict(cur.fetchall())
            if meta.get("application_id") != APPLICATION_MARKER:
                raise StorageError(
                    f"{where}: table trioflow_meta belongs to another application; "
                    "the database was left untouched"
                )
            try:
                version = int(meta["schema_version"])
            except (KeyError, ValueError):
                raise StorageError(
                    f"{where}: trioflow_meta has no valid schema_version "
                    f"({meta.get('schema_version')!r}); the database was left untouched"
                ) from None
            if version > len(MIGRATIONS):
                raise StorageError(
                    f"{where} has trioflow schema version {version}, newer than the "
                    f"versions this trioflow knows (up to {len(MIGRATIONS)}); upgrade "
                    "trioflow to use it. The database was left untouched"
                )
        else:
            cur.execute("SELECT to_regclass('trioflow_runs') IS NOT NULL")
            found = cur.fetchone()
            if found and found[0]:
                raise StorageError(
                    f"{where}: a table trioflow_runs exists without trioflow_meta (another "
                    "application's?); the database was left untouched"
                )
            cur.execute("CREATE TABLE trioflow_meta (key text PRIMARY KEY, value text NOT NULL)")
            cur.execute(
                "INSERT INTO trioflow_meta VALUES ('application_id', %s), ('schema_version', '0')",
                (APPLICATION_MARKER,),
            )
        for step in MIGRATIONS[version:]:
            step(cur)
        if version < len(MIGRATIONS):
            cur.execute(
                "UPDATE trioflow_meta SET value = %s WHERE key = 'schema_version'",
                (str(len(MIGRATIONS)),),
            )
