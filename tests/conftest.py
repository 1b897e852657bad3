"""Shared fixtures: a PostgreSQL server for the PostgreSQL storage tests.

``postgres_dsn`` (session) is ``$TRIOFLOW_TEST_POSTGRES_DSN`` when set, else a throwaway
private server (``trioflow.testing._pgserver``). Without one the tests that use it skip,
unless ``TRIOFLOW_REQUIRE_POSTGRES=1`` (CI), which turns the skip into a failure.
``postgres_db`` gives each test a fresh empty database on that server.

Skips are easy to miss in pytest's quiet output (their reasons show only under ``-rs``), so
the end of every session says what did not run and why, one line per reason.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import uuid
from collections.abc import Iterator
from typing import NoReturn

import pytest

from trioflow.testing._pgserver import start_local_postgres

pytest_plugins = ["pytester"]


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("TRIOFLOW_REQUIRE_POSTGRES") == "1":
        pytest.fail(
            "PostgreSQL tests cannot run (TRIOFLOW_REQUIRE_POSTGRES=1 turns the skip into "
            f"a failure): {reason}",
            pytrace=False,
        )
    pytest.skip(
        f"PostgreSQL tests skipped: {reason}; set TRIOFLOW_TEST_POSTGRES_DSN or install postgresql"
    )


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A libpq conninfo string for a PostgreSQL database the tests may use as superuser."""
    if importlib.util.find_spec("psycopg") is None:
        _unavailable("psycopg is not installed (pip install -e '.[postgres]')")
    configured = os.environ.get("TRIOFLOW_TEST_POSTGRES_DSN")
    if configured:
        yield configured
        return
    problem = None
    try:
        server = start_local_postgres()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        problem = f"could not start a private server: {exc}"
    if problem is not None:
        _unavailable(problem)  # outside the except block: no chained traceback
    try:
        yield server.dsn
    finally:
        server.stop()


@pytest.fixture
def postgres_db(postgres_dsn: str) -> Iterator[str]:
    """The conninfo string of a fresh, empty database, dropped after the test."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    name = f"t_{uuid.uuid4().hex}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(postgres_dsn, dbname=name)
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line per distinct skip reason, in the default output (not only under ``-rs``)."""
    counts: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = getattr(report, "longrepr", None)
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reason = reason.removeprefix("Skipped: ")
        counts[reason] = counts.get(reason, 0) + 1
    if counts:
        terminalreporter.section("what did not run", sep="-")
        for reason, count in sorted(counts.items()):
            terminalreporter.write_line(f"{count} skipped: {reason}")
