"""Opening a SQLite file for :class:`~trioflow.storage.sqlite.SqliteStorage`: the schema
and its migrations, the checks that leave a foreign or damaged file untouched, and what a
SQLite error means for the user.

Opening, in order (all on the storage's writer thread):

1. the file is looked at read-only (nothing is written, no -wal/-shm left behind): not
   SQLite, another application's, a newer schema version, a damaged schema are refused
   with StorageError; a file up to :data:`QUICK_CHECK_LIMIT` bytes gets
   ``PRAGMA quick_check``, and a corrupt one is opened read-only (writes refused);
2. it is opened read-write, switched to WAL and migrated. Several processes opening one
   new file at once contend for the lock here, and ``PRAGMA journal_mode = WAL`` can
   answer SQLITE_BUSY without waiting for the busy handler, so the whole step is retried
   until ``timeout`` has passed;
3. when SQLite says the file or its directory is read-only, a trioflow database at the
   current schema version is opened read-only instead: reads work, every write is refused
   with a StorageError saying so.
"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import time
import urllib.parse
from collections.abc import Callable
from typing import Final, TypeVar

import attrs

from .._core._errors import StorageError
from ._sqlite_steps import migrate_to_2

T = TypeVar("T")

APPLICATION_MARKER: Final = "trioflow"
#: ``PRAGMA application_id`` of a trioflow database (the bytes ``b"tflw"``).
APPLICATION_ID: Final = 0x74666C77
_SQLITE_HEADER: Final = b"SQLite format 3\x00"


# --- schema and migrations ----------------------------------------------------------------


def _migrate_to_1(conn: sqlite3.Connection) -> None:
    """Version 1: the meta, runs and events tables."""
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID")
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('application_id', ?)", (APPLICATION_MARKER,)
    )
    conn.execute(
        """
        CREATE TABLE runs (
            run_id TEXT PRIMARY KEY,
            workflow_id TEXT NOT NULL,
            resource_id TEXT,
            status TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            ord INTEGER NOT NULL,
            snapshot TEXT NOT NULL
        )
        """
    )
    # list_runs orders by (created_at, ord) newest first, optionally filtered.
    conn.execute("CREATE INDEX runs_by_created ON runs (created_at, ord)")
    conn.execute("CREATE INDEX runs_by_workflow ON runs (workflow_id, created_at, ord)")
    conn.execute("CREATE INDEX runs_by_status ON runs (status, created_at, ord)")
    conn.execute("CREATE INDEX runs_by_resource ON runs (resource_id, created_at, ord)")
    conn.execute(
        """
        CREATE TABLE events (
            run_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            chunk TEXT NOT NULL,
            PRIMARY KEY (run_id, seq)
        ) WITHOUT ROWID
        """
    )
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")


def _migrate_to_3(conn: sqlite3.Connection) -> None:
    """Version 3 adds no table itself: the ``blobs`` table (``_blobs.py``) is created when
    first needed. The number changes so that a trioflow knowing only version 2, which
    would read a value stored as a blob as ``null``, refuses the file."""


#: ``MIGRATIONS[k]`` brings a database from schema version ``k`` to ``k + 1`` (version 0
#: is an empty file). A new schema version is a function appended here; opening a file
#: applies every missing one, in order, in one transaction.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migrate_to_1, migrate_to_2, _migrate_to_3]
#: The schema version this code writes (``len(MIGRATIONS)`` when the module was loaded).
SCHEMA_VERSION: Final = len(MIGRATIONS)


def stored_version(conn: sqlite3.Connection, where: str) -> int:
    """The schema version of the database behind ``conn`` (0 = empty), read without
    writing anything; StorageError when it is not a trioflow database this code knows."""
    try:
        names = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
            ).fetchall()
        ]
        app_id = conn.execute("PRAGMA application_id").fetchall()[0][0]
    except sqlite3.Error as exc:
        if error_code(exc) in _ENVIRONMENT:
            raise  # locked, read-only...: not about the file's content; the caller says so
        raise _unreadable(where, exc, f"{where} is not a usable SQLite database: {exc}") from exc
    if app_id not in (0, APPLICATION_ID):
        raise StorageError(
            f"{where} belongs to another application (SQLite application_id {app_id:#x}), "
            "not trioflow; it was left untouched"
        )
    if not names:
        return 0
    foreign = (
        f"{where} is a SQLite database of another application (it has tables but no "
        "trioflow meta table); it was left untouched"
    )
    if "meta" not in names:
        raise StorageError(foreign)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.Error as exc:
        if error_code(exc) in _ENVIRONMENT:
            raise
        # SQLite reporting corruption is not a sign of somebody else's database.
        raise _unreadable(where, exc, foreign) from exc
    if meta.get("application_id") != APPLICATION_MARKER:
        raise StorageError(foreign)
    try:
        version = int(meta["schema_version"])
    except (KeyError, TypeError, ValueError):
        raise StorageError(
            f"{where}: the trioflow meta table has no valid schema_version "
            f"({meta.get('schema_version')!r}); the file was left untouched"
        ) from None
    known = len(MIGRATIONS)
    if version > known:
        raise StorageError(
            f"{where} has trioflow schema version {version}, newer than the versions this "
            f"trioflow knows (up to {known}); upgrade trioflow to open it. The file was "
            "left untouched"
        )
    if version < 1:
        raise StorageError(f"{where}: invalid trioflow schema version {version}")
    return version


def _unreadable(where: str, exc: sqlite3.Error, otherwise: str) -> StorageError:
    """The error for a file whose schema could not be read: corruption when SQLite says
    so (the issue 12 wording), else ``otherwise``."""
    if is_corrupt(exc):
        return StorageError(
            f"{where} is not a usable SQLite database: {describe(exc, 0)}; it was left untouched"
        )
    return StorageError(otherwise)


def migrate(conn: sqlite3.Connection, where: str) -> None:
    """Bring the database to the current schema version in one write transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Re-read under the write lock: another process may have initialised or
        # migrated the file since we looked.
        version = stored_version(conn, where)
        target = len(MIGRATIONS)
        for step in MIGRATIONS[version:]:
            step(conn)
        if version < target:
            conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(target),),
            )
            conn.execute(f"PRAGMA user_version = {int(target)}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


# --- what a SQLite error means --------------------------------------------------------------

# Primary result codes (the low byte of an extended code).
_PERM: Final = 3
_BUSY: Final = 5
_LOCKED: Final = 6
_READONLY: Final = 8
_IOERR: Final = 10
_CORRUPT: Final = 11
_FULL: Final = 13
_CANTOPEN: Final = 14
_NOTADB: Final = 26
#: Errors about the environment (locks, permissions, space), not about the file's content.
_ENVIRONMENT: Final = frozenset({_PERM, _BUSY, _LOCKED, _READONLY, _IOERR, _FULL, _CANTOPEN})


def error_code(exc: BaseException) -> int | None:
    """The primary SQLite result code of ``exc`` (None when it has none)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def is_busy(exc: BaseException) -> bool:
    return error_code(exc) in (_BUSY, _LOCKED)


def is_read_only(exc: BaseException) -> bool:
    return error_code(exc) in (_READONLY, _PERM)


def is_corrupt(exc: BaseException) -> bool:
    return error_code(exc) in (_CORRUPT, _NOTADB)


def describe(exc: BaseException, timeout: float) -> str:
    """What ``exc`` (a sqlite3 error) means, in words a user can act on."""
    code = error_code(exc)
    if code in (_BUSY, _LOCKED):
        return (
            "the database is locked by another connection: still busy after the busy "
            f"timeout of {timeout:g} s ({exc})"
        )
    if code in (_READONLY, _PERM):
        return f"the database is read-only: the file or its directory is not writable ({exc})"
    if code == _FULL:
        return f"the disk is full (or the database reached its size limit) ({exc})"
    if code in (_CORRUPT, _NOTADB):
        return f"the database file is corrupt ({exc})"
    if code == _IOERR:
        return f"an I/O error ({exc})"
    if code == _CANTOPEN:
        return f"the file or its -wal/-shm files cannot be opened ({exc})"
    return str(exc)


class FileState:
    """What the two threads of one storage know about its file: why writes are refused
    (opened read-only, or SQLite reported corruption), and how to word a SQLite error."""

    def __init__(self, where: str, timeout: float) -> None:
        self.where = where
        self.timeout = timeout
        #: Set once (a plain attribute store, atomic under the GIL), never cleared.
        self.refuse_writes: str | None = None

    def wrap(self, exc: BaseException) -> BaseException:
        if not isinstance(exc, sqlite3.Error):
            return exc
        message = f"SQLite storage {self.where}: {describe(exc, self.timeout)}"
        if is_corrupt(exc):
            # Writing to a corrupt file can spread the damage: latch, for every later write.
            if self.refuse_writes is None:
                self.refuse_writes = f"the database file is corrupt ({exc})"
            message += (
                "; this storage refuses every write to the file from now on (restore a "
                "backup, or salvage the data with the sqlite3 shell's .recover)"
            )
        wrapped = StorageError(message)
        wrapped.__cause__ = exc
        return wrapped

    def refused(self) -> StorageError | None:
        """The error for a write while writes are refused, else None."""
        if self.refuse_writes is None:
            return None
        return StorageError(
            f"SQLite storage {self.where} refuses writes: {self.refuse_writes}; nothing was written"
        )


def retry_busy(fn: Callable[[], T], timeout: float) -> T:
    """``fn()``, called again while it fails with SQLITE_BUSY/LOCKED, until ``timeout``
    seconds have passed. For steps where SQLite does not wait by itself: switching to WAL
    and a new file's first schema, when several processes open it at once."""
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            return fn()
        except sqlite3.Error as exc:
            left = deadline - time.monotonic()
            if not is_busy(exc) or left <= 0:
                raise
        # Runs on a storage thread, never on the trio thread. Jitter keeps the openers
        # from retrying in lockstep.
        time.sleep(min(delay * random.uniform(0.5, 1.0), left))
        delay = min(delay * 2, 0.05)


# --- opening a file ---------------------------------------------------------------------------


#: Files up to this size get ``PRAGMA quick_check`` when opened (measured: about 0.1 s for
#: a 230 MB file in the page cache); larger ones are found corrupt when SQLite reports it.
QUICK_CHECK_LIMIT: Final = 1 << 30

Connect = Callable[[str, bool], sqlite3.Connection]


@attrs.define
class Opened:
    """A database opened by :func:`open_database`."""

    #: The connection the writer thread uses (read-only when ``refuse_writes``).
    conn: sqlite3.Connection
    #: What the reader thread connects to: ``(target, uri)``.
    read_target: tuple[str, bool]
    #: Why every write is refused (read-only, corrupt); None when writes are allowed.
    refuse_writes: str | None = None


def ro_uri(path: str, options: str) -> str:
    return "file:" + urllib.parse.quote(os.path.abspath(path)) + "?" + options


@attrs.define
class _Probe:
    """What the read-only look at an existing file found."""

    options: str  # the URI options it was read with
    version: int
    corrupt: str | None


def _probe(path: str, where: str, connect: Connect, options: str) -> _Probe:
    conn = connect(ro_uri(path, options), True)
    try:
        version = stored_version(conn, where)
        corrupt = None
        if version and os.path.getsize(path) <= QUICK_CHECK_LIMIT:
            corrupt = _quick_check(conn)
        return _Probe(options, version, corrupt)
    finally:
        conn.close()


def _probe_retrying(
    path: str, where: str, connect: Connect, options: str, timeout: float
) -> _Probe:
    try:
        return retry_busy(lambda: _probe(path, where, connect, options), timeout)
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open {where}: {describe(exc, timeout)}") from exc


def _quick_check(conn: sqlite3.Connection) -> str | None:
    try:
        rows = conn.execute("PRAGMA quick_check(3)").fetchall()
    except sqlite3.Error as exc:
        if is_corrupt(exc):
            return f"the database file is corrupt ({exc})"
        raise
    if rows == [("ok",)]:
        return None
    found = "; ".join(str(row[0]) for row in rows)
    return f"the database file is corrupt (quick_check: {found})"


def check_file(path: str, where: str, connect: Connect, timeout: float) -> _Probe | None:
    """Look at ``path`` without writing anything: None for a missing or empty file (to be
    initialised); StorageError for a file that is not a trioflow database this code can
    open."""
    try:
        with open(path, "rb") as f:
            header = f.read(100)
        before = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"cannot open {where}: {exc}") from exc
    if not header:
        return None
    if not header.startswith(_SQLITE_HEADER):
        raise StorageError(
            f"{where} is not a SQLite database (not trioflow's, or corrupt); it was left untouched"
        )
    # Nothing is written, not even a checkpoint on close. A WAL database without a -wal
    # file is wholly in the main file: read it as immutable, which creates no -wal/-shm
    # files beside somebody else's database (and works in a read-only directory).
    wal_mode = len(header) > 19 and header[18] == 2
    if wal_mode and not os.path.exists(path + "-wal"):
        try:
            return _probe_retrying(path, where, connect, "immutable=1", timeout)
        except StorageError:
            # Rejected, unless the file changed under us (another process wrote it
            # meanwhile): then look again, the careful way.
            with contextlib.suppress(OSError):
                after = os.stat(path)
                if (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size):
                    raise
    return _probe_retrying(path, where, connect, "mode=ro", timeout)


def _open_read_write(path: str, where: str, connect: Connect) -> sqlite3.Connection:
    conn = connect(path, False)
    try:
        version = stored_version(conn, where)
        if conn.execute("PRAGMA journal_mode").fetchall() != [("wal",)]:
            conn.execute("PRAGMA journal_mode = WAL").fetchall()
        conn.execute("PRAGMA synchronous = NORMAL")
        if version < len(MIGRATIONS):
            migrate(conn, where)
    except BaseException:
        conn.close()
        raise
    return conn


def _open_read_only(path: str, where: str, connect: Connect, probe: _Probe, reason: str) -> Opened:
    if probe.version < len(MIGRATIONS):
        raise StorageError(
            f"cannot open {where}: it has trioflow schema version {probe.version} and needs "
            f"migrating to {len(MIGRATIONS)}, which needs write access, but {reason}"
        )
    target = ro_uri(path, probe.options)
    try:
        conn = connect(target, True)
        conn.execute("PRAGMA query_only = ON")
    except sqlite3.Error as exc:
        raise StorageError(f"cannot open {where} read-only: {describe(exc, 0)}") from exc
    return Opened(conn, (target, True), reason)


def open_database(path: str, where: str, connect: Connect, timeout: float) -> Opened:
    """Open ``path`` for the writer thread (see the module docstring)."""
    probe = check_file(path, where, connect, timeout)
    if probe is not None and probe.corrupt is not None:
        return _open_read_only(path, where, connect, probe, probe.corrupt)
    try:
        conn = retry_busy(lambda: _open_read_write(path, where, connect), timeout)
    except sqlite3.Error as exc:
        reason = describe(exc, timeout)
        if probe is None or not (is_read_only(exc) or error_code(exc) == _CANTOPEN):
            raise StorageError(f"cannot open {where}: {reason}") from exc
        return _open_read_only(path, where, connect, probe, reason)
    return Opened(conn, (path, False))
