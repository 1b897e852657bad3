"""SqliteStorage: the embedded durable backend (stdlib :mod:`sqlite3`, one file, WAL).

Design
------
A storage owns two dedicated threads, each with its own connection:

* the **writer** executes every write (``create_run``, ``save_snapshot``,
  ``append_events``, ``delete_run``) in submission order. When several writes are queued
  (many runs streaming at once) it executes them in **one** transaction, each inside its
  own ``SAVEPOINT``: every write keeps its own compare-and-set decision and its own
  failure, and the group pays for one commit (*group commit*);
* the **reader** serves ``load_snapshot``, ``read_events``, ``last_seq`` and
  ``list_runs`` on a second connection, which WAL lets read while the writer writes. A
  ``":memory:"`` database exists once per connection, so there the writer serves reads
  too.

A caller hands its job to a thread and sleeps (``trio.lowlevel.wait_task_rescheduled``);
the thread reschedules it through the caller's trio token when the job's transaction has
committed. Values are serialized on the calling task before the job is queued (the event
log in the wire shape of :func:`trioflow.to_wire`, a snapshot as its run row without steps
and one row per step record that changed: see :mod:`trioflow.storage._steps`), so a job
never looks at live engine objects.

One exception to "jobs run on the threads": a small write (``save_snapshot``,
``create_run``, ``append_events`` of at most :data:`INLINE_BYTES` of text) made while the
writer thread has nothing queued or running commits **inline**, on the calling thread, with
the writer's connection: a WAL commit with ``synchronous=NORMAL`` writes into the page
cache in ~10-30 us, where the hand-off to a thread and back costs 50-180 us. It waits for
nothing: the connection's busy timeout is 0 outside the thread's transactions, so a write
that finds another process's write transaction goes to the writer thread and waits there;
and WAL checkpoints (which fsync) never run in a commit: every ``CHECKPOINT_EVERY``
commits one runs on the reader's thread (PASSIVE, writes go on), and every
``WRITER_CHECKPOINT_EVERY``-th of them on the writer's thread, after which the WAL
starts over (never two at once: one finding another running would do nothing). Durable
steps therefore cost what the write costs, not a thread hop. The threads, their jobs and
the checkpoints are in :mod:`trioflow.storage._sqlite_worker`.

Cancellation
------------
Every method is a checkpoint. A call cancelled while its job still waits in the queue
withdraws the job and raises ``trio.Cancelled``: nothing was done. Once the thread has
started the job, the job runs to its end (its transaction commits, or rolls back entirely
on an error) and the call returns its result; the cancellation is delivered at the
caller's next checkpoint (an inline write: cancelled before it starts, or returned and
cancelled at the next checkpoint). So a call that raises ``Cancelled`` wrote nothing, and
a call that returns wrote everything it reports.

Files
-----
``SqliteStorage(path)`` does no I/O. The first call (or ``await storage.open()``, or
``async with``) opens the file on the writer thread: a missing or empty file is
initialised; a trioflow database is migrated to the current schema version in one
transaction. Anything else (not a SQLite file, a SQLite database of another application,
a newer schema version, an unreadable file) raises :class:`trioflow.StorageError` naming
the path, and that file is never written to. Several processes on one machine may share
a file: WAL lets readers run beside the one writer, and ``timeout`` (the busy timeout)
says how long a write waits for another process's write transaction (and how long
opening waits while other processes open the same file). Commits use
``synchronous=NORMAL``: a committed write survives the process being killed; a power cut
may lose the last commits but never corrupts the file.

A file (or directory) this process cannot write is opened read-only: reads work, every
write raises StorageError saying the database is read-only. A file found corrupt (by
``PRAGMA quick_check`` at open, or when SQLite reports corruption later) is never written
again by this storage. Refused writes name the cause: read-only, disk full, locked past
the busy timeout, corrupt. Stored values are strict JSON both ways (see
:mod:`trioflow.storage._json`). The details are in :mod:`trioflow.storage._sqlite_file`.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Collection, Sequence
from types import TracebackType
from typing import Final, TypeVar, cast

import trio

from .._core._chunks import Chunk
from .._core._errors import StorageError
from .._core._model import RunInfo, RunSnapshot
from .._core._serde import to_wire
from .._core._status import RunStatus
from . import _blobs, _sqlite_file, _sqlite_steps
from ._json import chunk_from_data, chunk_from_row, dumps_strict
from ._sql import list_runs_query, run_infos
from ._sqlite_file import (
    APPLICATION_ID,
    MIGRATIONS,
    SCHEMA_VERSION,
    FileState,
    open_database,
    retry_busy,
)
from ._sqlite_worker import _READ, _STOP, _WRITE, _Worker
from ._steps import run_row_data, step_writes

__all__ = ["APPLICATION_ID", "MIGRATIONS", "SCHEMA_VERSION", "SqliteStorage"]

T = TypeVar("T")

#: Bytes a WAL file is truncated to when it starts over after a checkpoint.
WAL_SIZE_LIMIT: Final = 16 * 1024 * 1024
#: Writes up to this many bytes of text run on the calling thread when the writer is idle.
INLINE_BYTES: Final = 64 * 1024


class _Events:
    """A write's chunks as rows ``(run_id, seq, text)``, their large values moved out (see
    :mod:`trioflow.storage._blobs`)."""

    __slots__ = ("blobs", "rows", "size")

    def __init__(self, run_id: str, events: Sequence[Chunk]) -> None:
        self.rows: list[tuple[str, int, str]] = []
        self.blobs: list[tuple[str, str]] = []
        size = 0
        for chunk in events:
            what = f"event seq {chunk.seq} of run {run_id!r}"
            wire = to_wire(chunk)
            text = dumps_strict(wire, what)
            if len(text) >= _blobs.THRESHOLD:
                split = _blobs.dumps_split(wire, what, text, chunk=True)
                text = split.text
                self.blobs.extend(split.blobs)
                size += split.size - len(text)
            size += len(text)
            self.rows.append((run_id, chunk.seq, text))
        self.size = size


def _chunks_with_blobs(
    conn: sqlite3.Connection, run_id: str, window: tuple[int, int], where: str
) -> list[Chunk]:
    # The rows read again with their blobs in one read transaction: a delete_run
    # committed in between is seen wholly or not at all.
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")
    try:
        chunks = []
        for seq, text in conn.execute(
            "SELECT seq, chunk FROM events WHERE run_id = ? AND seq >= ? ORDER BY seq LIMIT ?",
            (run_id, *window),
        ).fetchall():
            if not _blobs.has_blobs(text):
                chunks.append(chunk_from_row(text, where, run_id, seq))
                continue
            what = f"{where}: the stored event seq {seq} of run {run_id!r}"
            chunks.append(chunk_from_data(_blobs.restore(conn, text, what), what))
    finally:
        if own:
            conn.execute("COMMIT")
    return chunks


def _allowed(expected: RunStatus | Sequence[RunStatus] | None) -> frozenset[str] | None:
    if expected is None:
        return None
    if isinstance(expected, str):
        return frozenset({RunStatus(expected).value})
    return frozenset(RunStatus(s).value for s in expected)


def _last_seq(conn: sqlite3.Connection, run_id: str) -> int:
    row = conn.execute("SELECT max(seq) FROM events WHERE run_id = ?", (run_id,)).fetchall()
    return int(row[0][0] or 0)


def _insert_events(conn: sqlite3.Connection, run_id: str, events: _Events) -> None:
    rows = events.rows
    if not rows:
        return
    expected = _last_seq(conn, run_id) + 1
    for offset, row in enumerate(rows):
        if row[1] != expected + offset:
            raise ValueError(
                f"run {run_id}: event seq {row[1]} does not follow {expected + offset - 1}"
            )
    if events.blobs:
        _blobs.store(conn, run_id, events.blobs)
    conn.executemany("INSERT INTO events (run_id, seq, chunk) VALUES (?, ?, ?)", rows)


def _run_row(snapshot: RunSnapshot) -> _blobs.Split:
    data, what = run_row_data(snapshot, without_path=True)
    return _blobs.dumps_split(data, what)


class SqliteStorage:
    """Runs and their event logs in one SQLite file (WAL), shared safely by several
    processes on one machine.

    ``path`` is a file path (str or path-like) or ``":memory:"`` (a private in-memory
    database). ``timeout`` is the busy timeout in seconds: how long a write waits while
    another process holds the write lock before it fails with StorageError.

    The constructor does no I/O; the first call opens the file (see the module
    docstring for what is accepted). ``await storage.aclose()`` (or leaving
    ``async with``) closes it. Every method is a checkpoint; a call that raises
    ``trio.Cancelled`` wrote nothing, a call that returns wrote what it reports.
    """

    #: What is written survives the process (False for ``":memory:"``).
    durable: bool

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 10.0) -> None:
        self._path = os.fspath(path)
        self._timeout = float(timeout)
        self._memory = self._path in ("", ":memory:")
        self.durable = not self._memory
        where = repr(self._path)
        self._where = where
        self._state = FileState(where, self._timeout)
        self._read_target: tuple[str, bool] = (self._path, False)
        self._writer = _Worker(f"trioflow-sqlite-writer {where}", self._state, self._open_writer)
        self._reader = (
            self._writer
            if self._memory
            else _Worker(f"trioflow-sqlite-reader {where}", self._state, self._open_reader)
        )
        self._opened = False
        self._open_lock = trio.Lock()
        self._closed = False

    @property
    def path(self) -> str:
        return self._path

    def __repr__(self) -> str:
        return f"SqliteStorage({self._path!r})"

    # --- opening and closing --------------------------------------------------------------

    def _connect(self, target: str, uri: bool = False) -> sqlite3.Connection:
        # check_same_thread: the writer's connection also serves inline writes on the
        # trio thread, never at the same time (_Worker._conn_lock).
        return sqlite3.connect(
            target,
            timeout=self._timeout,
            isolation_level=None,
            uri=uri,
            cached_statements=64,
            check_same_thread=False,
        )

    def _open_writer(self) -> sqlite3.Connection:
        # Runs on the writer thread.
        if self._memory:
            try:
                conn = self._connect(self._path)
                conn.execute("PRAGMA synchronous = NORMAL")
                _sqlite_file.migrate(conn, self._where)
            except sqlite3.Error as exc:
                raise StorageError(f"cannot open {self._where}: {exc}") from exc
            self._writer.inline = True
            return conn
        opened = open_database(self._path, self._where, self._connect, self._timeout)
        self._read_target = opened.read_target
        self._state.refuse_writes = opened.refuse_writes
        if opened.refuse_writes is None:
            # Checkpoints run on the writer thread, and a write finding another process's
            # write transaction goes there to wait (see _Worker.write_inline).
            opened.conn.execute("PRAGMA wal_autocheckpoint = 0")
            opened.conn.execute("PRAGMA busy_timeout = 0")
            # A WAL that a large write grew is cut back when it starts over, rather than
            # keeping its largest size on disk beside the database.
            opened.conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            self._writer.inline = True
            self._writer.checkpoint_on(self._reader)
        return opened.conn

    def _open_reader(self) -> sqlite3.Connection:
        # Runs on the reader thread, after the writer opened (validated) the file.
        target, uri = self._read_target

        def connect() -> sqlite3.Connection:
            conn = self._connect(target, uri)
            try:
                conn.execute("PRAGMA query_only = ON")
            except BaseException:
                conn.close()
                raise
            return conn

        conn = retry_busy(connect, self._timeout)
        if self._writer.inline:
            # Small reads may then run inline (see _Worker.read_inline): busy timeout 0
            # outside the thread's own jobs, so an inline read never waits.
            conn.execute("PRAGMA busy_timeout = 0")
            self._reader.read_busy_ms = int(self._timeout * 1000)
            self._reader.inline = True
        return conn

    async def open(self) -> None:
        """Open (and if needed initialise or migrate) the database now, rather than at
        the first call. StorageError when the file cannot be used."""
        await self._ensure_open()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this SqliteStorage is closed")

    async def _ensure_open(self) -> None:
        self._check_open()
        async with self._open_lock:
            if not self._opened:
                await self._writer.call(lambda conn: None, _READ)
                self._opened = True
            if self._closed:
                raise RuntimeError("this SqliteStorage is closed")

    async def aclose(self) -> None:
        """Finish the queued jobs, close both connections and stop both threads.

        Idempotent. Not cancellable once it has begun (the connections are closed even
        when the caller is cancelled meanwhile).
        """
        await trio.lowlevel.checkpoint()
        if self._closed:
            return
        self._closed = True

        def stop(conn: sqlite3.Connection | None) -> None:
            if conn is not None:
                conn.close()

        for worker in {id(self._reader): self._reader, id(self._writer): self._writer}.values():
            if worker.started:
                await worker.call(stop, _STOP)

    async def __aenter__(self) -> SqliteStorage:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with trio.CancelScope(shield=True):
            await self.aclose()

    async def _write(self, fn: Callable[[sqlite3.Connection], T], size: int | None = None) -> T:
        # size: the bytes of text the write stores; small writes may run inline.
        self._check_open()
        if not self._opened:
            await self._ensure_open()
        return await self._writer.call(
            cast(Callable[[sqlite3.Connection | None], T], fn),
            _WRITE,
            inline=size is not None and size <= INLINE_BYTES,
        )

    async def _read(self, fn: Callable[[sqlite3.Connection], T], *, small: bool = False) -> T:
        # small: a read of one run's rows, which may run inline while the reader is idle.
        self._check_open()
        if not self._opened:
            await self._ensure_open()
        return await self._reader.call(
            cast(Callable[[sqlite3.Connection | None], T], fn), _READ, inline=small
        )

    # --- the protocol ---------------------------------------------------------------------

    async def create_run(self, snapshot: RunSnapshot) -> bool:
        """Insert ``snapshot`` unless a run with its id exists. True when inserted."""
        run_row = _run_row(snapshot)
        row = (
            snapshot.run_id,
            snapshot.workflow_id,
            snapshot.resource_id,
            RunStatus(snapshot.status).value,
            snapshot.created_at,
            snapshot.updated_at,
            run_row.text,
        )
        steps = step_writes(snapshot, None, split=True)
        path = snapshot.step_execution_path

        def job(conn: sqlite3.Connection) -> bool:
            # ord: insertion order. max(rowid) is one b-tree seek, and every stored row has
            # ord == rowid, so the new ord is larger than every other.
            cursor = conn.execute(
                "INSERT INTO runs (run_id, workflow_id, resource_id, status, created_at, "
                "updated_at, snapshot, ord) "
                "SELECT ?, ?, ?, ?, ?, ?, ?, coalesce(max(rowid), 0) + 1 FROM runs WHERE true "
                "ON CONFLICT (run_id) DO NOTHING",
                row,
            )
            if cursor.rowcount != 1:
                return False
            if run_row.blobs:
                _blobs.store(conn, snapshot.run_id, run_row.blobs)
            _sqlite_steps.write_steps(conn, snapshot.run_id, steps)
            _sqlite_steps.write_path(conn, snapshot.run_id, path, whole=True)
            return True

        return await self._write(job, run_row.size + steps.size)

    async def load_snapshot(self, run_id: str) -> RunSnapshot | None:
        """The stored snapshot, or None."""

        where = f"SQLite storage {self._where}"
        return await self._read(lambda conn: _sqlite_steps.load(conn, run_id, where), small=True)

    async def save_snapshot(
        self,
        snapshot: RunSnapshot,
        events: Sequence[Chunk] = (),
        *,
        expected_status: RunStatus | Sequence[RunStatus] | None = None,
        changed_steps: Collection[str] | None = None,
    ) -> bool:
        """Replace the run's snapshot and append ``events``, in one transaction.

        With ``expected_status``, only when the stored status is (one of) it; otherwise
        nothing is written and the result is False. Without a stored run: False. Events
        whose ``seq`` do not continue the log raise ValueError and nothing is written.
        With ``changed_steps``, only those step records are written (see the protocol).
        """
        run_id = snapshot.run_id
        allowed = _allowed(expected_status)
        run_row = _run_row(snapshot)
        steps = step_writes(snapshot, changed_steps, split=True)
        path = snapshot.step_execution_path
        rows = _Events(run_id, events)
        values = (
            RunStatus(snapshot.status).value,
            snapshot.updated_at,
            run_row.text,
            run_id,
        )

        def job(conn: sqlite3.Connection) -> bool:
            found = conn.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchall()
            if not found:
                return False
            if allowed is not None and found[0][0] not in allowed:
                return False
            _insert_events(conn, run_id, rows)
            # A run's workflow_id, resource_id and created_at never change after
            # create_run: leaving them out spares SQLite the upkeep of their indexes.
            conn.execute(
                "UPDATE runs SET status = ?, updated_at = ?, snapshot = ? WHERE run_id = ?",
                values,
            )
            if run_row.blobs:
                _blobs.store(conn, run_id, run_row.blobs)
            _sqlite_steps.write_steps(conn, run_id, steps)
            _sqlite_steps.write_path(conn, run_id, path, whole=steps.replace_all)
            return True

        return await self._write(job, run_row.size + steps.size + rows.size)

    async def append_events(self, run_id: str, events: Sequence[Chunk]) -> None:
        """Append chunks (consecutive ``seq`` continuing the log: else ValueError and
        nothing is written) to the run's log. Ignored when the run is not stored.
        Appends queued together are committed in one transaction."""
        if not events:
            await trio.lowlevel.checkpoint()
            self._check_open()
            return
        rows = _Events(run_id, events)

        def job(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchall():
                _insert_events(conn, run_id, rows)

        await self._write(job, rows.size)

    async def read_events(
        self, run_id: str, *, from_seq: int = 1, limit: int | None = None
    ) -> Sequence[Chunk]:
        """Chunks with ``seq >= from_seq``, in order, at most ``limit``."""
        start = max(from_seq, 1)
        count = -1 if limit is None else max(limit, 0)

        where = f"SQLite storage {self._where}"

        def job(conn: sqlite3.Connection) -> list[Chunk]:
            rows = conn.execute(
                "SELECT seq, chunk FROM events WHERE run_id = ? AND seq >= ? ORDER BY seq LIMIT ?",
                (run_id, start, count),
            ).fetchall()
            if any(_blobs.has_blobs(text) for _, text in rows):
                return _chunks_with_blobs(conn, run_id, (start, count), where)
            return [chunk_from_row(text, where, run_id, seq) for seq, text in rows]

        return await self._read(job)

    async def last_seq(self, run_id: str) -> int:
        """The highest stored ``seq`` of the run (0 when none)."""
        return await self._read(lambda conn: _last_seq(conn, run_id), small=True)

    async def list_runs(
        self,
        *,
        workflow_id: str | None = None,
        status: RunStatus | None = None,
        resource_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[RunInfo]:
        """Runs matching every given filter, newest first (by ``created_at``, then by
        insertion order)."""
        sql, params = list_runs_query(
            "runs",
            "?",
            workflow_id=workflow_id,
            status=status,
            resource_id=resource_id,
            limit=limit,
            offset=offset,
        )

        where = f"SQLite storage {self._where}"

        def job(conn: sqlite3.Connection) -> list[RunInfo]:
            return run_infos(conn.execute(sql, params).fetchall(), where)

        return await self._read(job)

    async def delete_run(self, run_id: str) -> bool:
        """Remove the snapshot and the log. True when something was deleted."""

        def job(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM events WHERE run_id = ?", (run_id,))
            _sqlite_steps.delete_steps(conn, run_id)
            return conn.execute("DELETE FROM runs WHERE run_id = ?", (run_id,)).rowcount > 0

        return await self._write(job)
