"""The PostgreSQL test fixtures: a working server, per-test databases, LISTEN/NOTIFY."""

from __future__ import annotations

import uuid


def test_server_answers_a_query(postgres_dsn: str) -> None:
    import psycopg

    with psycopg.connect(postgres_dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def _database_and_tables(dsn: str) -> tuple[str, list[str]]:
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT current_database()").fetchone()
        assert row is not None
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
    return row[0], [t[0] for t in tables]


def test_each_test_database_is_fresh_and_empty(postgres_dsn: str, postgres_db: str) -> None:
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    first_name, first_tables = _database_and_tables(postgres_db)
    with psycopg.connect(postgres_db) as conn:
        conn.execute("CREATE TABLE marker (x int)")

    # A second database made the same way as the fixture's.
    second = f"t_{uuid.uuid4().hex}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(second)))
    try:
        second_name, second_tables = _database_and_tables(
            make_conninfo(postgres_dsn, dbname=second)
        )
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(second)))

    assert first_tables == []
    assert second_tables == []
    assert first_name.startswith("t_")
    assert first_name != second_name
    assert _database_and_tables(postgres_db)[1] == ["marker"]


def test_listen_notify_between_connections(postgres_db: str) -> None:
    import psycopg

    with (
        psycopg.connect(postgres_db, autocommit=True) as listener,
        psycopg.connect(postgres_db, autocommit=True) as notifier,
    ):
        listener.execute("LISTEN run_events")
        notifier.execute("SELECT pg_notify('run_events', 'run-1:3')")
        received = list(listener.notifies(timeout=10, stop_after=1))
        assert [(n.channel, n.payload, n.pid) for n in received] == [
            ("run_events", "run-1:3", notifier.info.backend_pid)
        ]
