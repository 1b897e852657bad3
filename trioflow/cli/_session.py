"""What every command shares: the exit statuses and the session (database, output).

Exit statuses: 0 success, 1 failed (or tripwire), 2 the command could not do what was
asked (a usage error, bad input, an unknown module/workflow/run, a run in the wrong
status, a database it cannot use, a port it cannot listen on: one ``trioflow: error:``
line), 3 suspended, 4 canceled, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM: the
run is left as Ctrl-C leaves it).
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
from rich.console import Console

from .._core._status import RunStatus
from .._install import install_hint
from ..storage import Storage
from ..storage.postgres import PostgresStorage
from ..storage.sqlite import SqliteStorage
from ._load import CliError

EXIT_SUCCESS = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_SUSPENDED = 3
EXIT_CANCELED = 4
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

DEFAULT_DB = "trioflow.db"

_EXIT_BY_STATUS = {
    RunStatus.SUCCESS: EXIT_SUCCESS,
    RunStatus.FAILED: EXIT_FAILED,
    RunStatus.TRIPWIRE: EXIT_FAILED,
    RunStatus.SUSPENDED: EXIT_SUSPENDED,
    RunStatus.PAUSED: EXIT_SUSPENDED,
    RunStatus.CANCELED: EXIT_CANCELED,
}


def exit_status(status: RunStatus | str) -> int:
    """The exit status for a run that ended (or stopped) with ``status``."""
    try:
        return _EXIT_BY_STATUS.get(RunStatus(status), EXIT_FAILED)
    except ValueError:
        return EXIT_FAILED


@attrs.define
class Session:
    """What every command gets: where the database is, how to print."""

    db: str
    json: bool
    out: Console
    err: Console
    #: The run whose execution this process drives (for the Ctrl-C message).
    active_run: str | None = None

    @property
    def fancy(self) -> bool:
        """Whether stdout is a terminal that gets the live view, colours and symbols."""
        return self.out.is_terminal and not self.out.is_dumb_terminal

    @property
    def db_option(self) -> str:
        """`` --db PATH`` for commands printed for the user, unless the database is the
        default ``./trioflow.db``."""
        try:
            default = Path(self.db).resolve() == Path(DEFAULT_DB).resolve()
        except OSError:
            default = False
        return "" if default else f" --db {shlex.quote(self.db)}"

    def say(self, text: str, *, markup: bool = True) -> None:
        """A line for humans on stdout (styles only on a terminal)."""
        self.out.print(text, markup=markup, highlight=False, soft_wrap=True)

    @property
    def db_display(self) -> str:
        """The database for messages: a PostgreSQL URI without its password."""
        if not self.is_postgres:
            return self.db
        from ..storage.postgres import redacted_dsn

        return redacted_dsn(self.db)

    @property
    def is_postgres(self) -> bool:
        """``--db`` names a PostgreSQL database (a ``postgresql://`` URI)."""
        return self.db.startswith(("postgresql://", "postgres://"))

    def db_exists(self) -> bool:
        """Whether the database file exists (a tiny stat: fine on the trio thread)."""
        return self.db == ":memory:" or self.is_postgres or Path(self.db).exists()

    def warn(self, text: str) -> None:
        """One ``trioflow: warning:`` line on stderr."""
        self.err.print(f"trioflow: warning: {text}", markup=False, highlight=False, soft_wrap=True)

    def emit_json(self, value: Any) -> None:
        sys.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    @asynccontextmanager
    async def storage(self, *, must_exist: bool) -> AsyncIterator[Storage]:
        """The database: a PostgreSQL URI, or a SQLite file (with ``must_exist`` a missing
        file is an error rather than a new empty database)."""
        if self.is_postgres:
            try:
                import psycopg  # noqa: F401
            except ImportError:
                raise CliError(
                    f"a PostgreSQL --db needs the postgres extra: {install_hint('postgres')}"
                ) from None
            async with PostgresStorage(self.db) as pg:
                yield pg
            return
        if must_exist and not self.db_exists():
            raise CliError(f"no database at {self.db} (choose one with --db or TRIOFLOW_DB)")
        async with SqliteStorage(self.db) as storage:
            yield storage
