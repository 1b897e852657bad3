"""The worker threads of :class:`~trioflow.storage.sqlite.SqliteStorage`: each owns one
connection and executes queued jobs in order; consecutive writes found queued together
commit in one transaction (group commit), and small writes may commit inline on the
calling thread while the writer is idle. See the module docstring of
:mod:`trioflow.storage.sqlite` for the design and what cancelling a call does."""

from __future__ import annotations

import collections
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, Final, TypeVar, cast

import outcome
import trio

from . import _sqlite_file
from ._sqlite_file import FileState

T = TypeVar("T")


#: Write jobs executed in one transaction at most.
MAX_GROUP: Final = 256
#: With inline writes, a WAL checkpoint in the background after this many commits...
CHECKPOINT_EVERY: Final = 128
#: ... and every this many of those, one on the writer's thread (see _ask_checkpoint).
WRITER_CHECKPOINT_EVERY: Final = 4


def _checkpoint(conn: sqlite3.Connection | None) -> None:
    # A PASSIVE checkpoint never waits and never blocks the writer.
    if conn is not None:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


# --- the worker threads -------------------------------------------------------------------

_PENDING: Final = 0
_RUNNING: Final = 1
_WITHDRAWN: Final = 2

_READ: Final = 0
_WRITE: Final = 1
_STOP: Final = 2


class _Job:
    """One unit of database work and the trio task waiting for its outcome."""

    __slots__ = ("fn", "kind", "outcome", "state", "task", "token")

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection | None], object],
        kind: int,
        task: trio.lowlevel.Task | None,
        token: trio.lowlevel.TrioToken | None,
    ) -> None:
        self.fn = fn
        self.kind = kind
        self.task = task
        self.token = token
        self.state = _PENDING
        self.outcome: outcome.Outcome[object] | None = None


def _deliver(jobs: list[_Job]) -> None:
    # Runs on the trio thread (via the token): wake every waiting task with its outcome.
    for job in jobs:
        assert job.outcome is not None
        assert job.task is not None
        trio.lowlevel.reschedule(job.task, job.outcome)


class _Worker:
    """A thread owning one connection, executing queued jobs in order.

    Consecutive write jobs found in the queue together run in one transaction, each in
    its own savepoint (group commit).
    """

    def __init__(
        self, name: str, state: FileState, connect: Callable[[], sqlite3.Connection]
    ) -> None:
        self._name = name
        self._state = state
        self._connect = connect
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.conn: sqlite3.Connection | None = None  # see _conn_lock
        #: Held while a job or an inline write uses ``conn``.
        self._conn_lock = threading.Lock()
        #: Jobs queued or running (under ``_lock``): inline writes only when there are none,
        #: so that writes stay in submission order.
        self._busy = 0
        #: Whether small writes (the writer) or reads (the reader) may run on the calling
        #: thread (see :meth:`write_inline`, :meth:`read_inline`).
        self.inline = False
        #: A reader with inline reads: the busy timeout (ms) of its reads on the thread.
        self.read_busy_ms: int | None = None
        #: Commits since the last WAL checkpoint (the writer checkpoints, not the commits).
        self._since_checkpoint = 0
        #: Where background WAL checkpoints run (set by :meth:`checkpoint_on`).
        self._background: _Worker | None = None
        #: Held by a checkpoint of this storage (see :meth:`_checkpoint_job`).
        self._checkpoint_lock = threading.Lock()
        #: Write transactions committed and jobs they held (for tests and benchmarks).
        self.transactions = 0
        self.grouped_jobs = 0

    @property
    def started(self) -> bool:
        return self._thread is not None

    # -- trio side --

    async def call(
        self, fn: Callable[[sqlite3.Connection | None], T], kind: int, *, inline: bool = False
    ) -> T:
        if self._stopping:
            raise RuntimeError("this SqliteStorage is closed")
        if inline and self.inline and not self._busy:
            # Cancelled before: nothing written; once written: returned, the cancellation
            # is delivered at the caller's next checkpoint (as for a job on the thread).
            await trio.lowlevel.checkpoint_if_cancelled()
            run_inline = self.read_inline if kind == _READ else self.write_inline
            try:
                done, value = run_inline(cast(Callable[[sqlite3.Connection], T], fn))
            except Exception:
                await trio.lowlevel.cancel_shielded_checkpoint()
                raise
            if done:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return cast(T, value)
        if kind == _STOP:
            self._stopping = True
        job = _Job(fn, kind, trio.lowlevel.current_task(), trio.lowlevel.current_trio_token())
        self._submit(job)

        def abort(_: Any) -> trio.lowlevel.Abort:
            if kind != _STOP:
                with self._lock:
                    if job.state == _PENDING:
                        job.state = _WITHDRAWN
                        self._busy -= 1
                        return trio.lowlevel.Abort.SUCCEEDED
            return trio.lowlevel.Abort.FAILED

        return cast(T, await trio.lowlevel.wait_task_rescheduled(abort))

    def _submit(self, job: _Job) -> None:
        with self._lock:
            self._busy += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
                self._thread.start()
        self._queue.put(job)

    def write_inline(self, fn: Callable[[sqlite3.Connection], T]) -> tuple[bool, T | None]:
        """Run the write job ``fn`` on the calling thread, in its own transaction, when
        this is cheap and safe: the thread has nothing queued or running, and the write
        lock is free (busy timeout 0: when another process writes, the thread waits for it
        instead). ``(False, None)`` when not run; else ``(True, its result)`` once
        committed, or its error (nothing written).

        A WAL commit with ``synchronous=NORMAL`` is a write into the page cache (~10-30
        us), far less than handing the job to the thread and back; checkpoints, which
        fsync, run on the reader's thread (the writer's auto-checkpoint is off), so
        writes go on meanwhile."""
        if not self.inline or self._busy or self._stopping:
            return False, None
        if not self._conn_lock.acquire(blocking=False):
            return False, None
        conn = self.conn
        try:
            if conn is None:
                return False, None
            refused = self._state.refused()
            if refused is not None:
                raise refused
            if not self._begin_now(conn):
                return False, None
            try:
                value = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                raise
            self.transactions += 1
            self.grouped_jobs += 1
            due = self._note_commit()
        except Exception as exc:
            raise self._wrap(exc) from None
        finally:
            self._conn_lock.release()
        if due:
            self._ask_checkpoint(due)
        return True, value

    def read_inline(self, fn: Callable[[sqlite3.Connection], T]) -> tuple[bool, T | None]:
        """Run the read job ``fn`` on the calling thread when the thread has nothing
        queued or running and its connection is open. ``(False, None)`` when not run
        (also when the database is busy: the busy timeout is 0 outside the thread's
        jobs, so the read goes to the thread, which waits); else ``(True, its result)``.

        A small WAL read takes ~20-40 us; the hand-off to the thread and back costs more,
        mostly in waiting for the GIL to come back from the woken thread."""
        if not self.inline or self._busy or self._stopping:
            return False, None
        if not self._conn_lock.acquire(blocking=False):
            return False, None
        try:
            conn = self.conn
            if conn is None:
                return False, None
            try:
                return True, fn(conn)
            except sqlite3.OperationalError as exc:
                if _sqlite_file.is_busy(exc):
                    return False, None
                raise
        except Exception as exc:
            raise self._wrap(exc) from None
        finally:
            self._conn_lock.release()

    def _begin_now(self, conn: sqlite3.Connection) -> bool:
        # The connection's busy timeout is 0 between the thread's transactions.
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.ProgrammingError:
            # A connection bound to its thread (made by a replaced _connect): no inline.
            self.inline = False
            return False
        except sqlite3.Error as exc:
            if _sqlite_file.is_busy(exc):
                return False
            raise
        return True

    def _begin_waiting(self, conn: sqlite3.Connection) -> None:
        # The thread waits up to the busy timeout for another process's write.
        if not self.inline:
            conn.execute("BEGIN IMMEDIATE")
            return
        conn.execute(f"PRAGMA busy_timeout = {int(self._state.timeout * 1000)}")
        try:
            conn.execute("BEGIN IMMEDIATE")
        finally:
            conn.execute("PRAGMA busy_timeout = 0")

    def _note_commit(self) -> int:
        # Holding _conn_lock: which checkpoint is due (0: none), see _ask_checkpoint.
        if self._background is None:
            return 0
        self._since_checkpoint += 1
        if self._since_checkpoint % CHECKPOINT_EVERY:
            return 0
        if self._since_checkpoint < CHECKPOINT_EVERY * WRITER_CHECKPOINT_EVERY:
            return 1
        self._since_checkpoint = 0
        return 2

    def _ask_checkpoint(self, due: int) -> None:
        # A PASSIVE checkpoint in the background (1) copies most of the WAL while writes
        # go on, but cannot let the WAL start over while this writer keeps appending; one
        # on the writer's own thread (2) holds the writes back and completes, so the next
        # write restarts the WAL (bounded at about WRITER_CHECKPOINT_EVERY * CHECKPOINT_EVERY
        # commits), and has little left to copy.
        if due == 1 and self._background is not None:
            self._background.submit_unawaited(self._checkpoint_job)
        elif due == 2:
            self.submit_unawaited(self._checkpoint_job)

    def checkpoint_on(self, background: _Worker) -> None:
        """Writes of this worker (the writer, with inline writes) ask for WAL checkpoints
        every CHECKPOINT_EVERY commits, most of them on ``background`` (the reader)."""
        self._background = background

    def _checkpoint_job(self, conn: sqlite3.Connection | None) -> None:
        # One checkpoint at a time: a PASSIVE checkpoint that finds another one running
        # does nothing (SQLITE_BUSY), and when that is the writer's, the WAL does not
        # start over and keeps growing. The background one only waits for the writer's.
        with self._checkpoint_lock:
            _checkpoint(conn)

    def submit_unawaited(self, fn: Callable[[sqlite3.Connection | None], object]) -> None:
        """Queue ``fn`` as a job nobody waits for (from any thread)."""
        if not self._stopping:
            self._submit(_Job(fn, _READ, None, None))

    # -- thread side --

    def _main(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            while len(batch) < MAX_GROUP:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            with self._lock:
                jobs = [job for job in batch if job.state == _PENDING]
                for job in jobs:
                    job.state = _RUNNING
            try:
                with self._conn_lock:
                    stopping = self._execute(jobs)
            except Exception as exc:  # a bug here must not leave callers asleep
                for job in jobs:
                    if job.outcome is None:
                        job.outcome = outcome.Error(exc)
            with self._lock:
                self._busy -= len(jobs)
            by_token: dict[trio.lowlevel.TrioToken, list[_Job]] = collections.defaultdict(list)
            for job in jobs:
                if job.token is not None:  # else nobody waits (a checkpoint)
                    by_token[job.token].append(job)
            for token, group in by_token.items():
                with contextlib.suppress(trio.RunFinishedError):  # nobody waits any more
                    token.run_sync_soon(_deliver, group)

    def _execute(self, jobs: list[_Job]) -> bool:
        """Run ``jobs`` in order; True when one of them stops the thread."""
        i = 0
        while i < len(jobs):
            job = jobs[i]
            if job.kind == _WRITE:
                j = i + 1
                while j < len(jobs) and jobs[j].kind == _WRITE:
                    j += 1
                self._run_writes(jobs[i:j])
                i = j
                continue
            if job.kind == _STOP:
                job.outcome = outcome.capture(job.fn, self.conn)
                self.conn = None
                for rest in jobs[i + 1 :]:
                    rest.outcome = outcome.Error(RuntimeError("this SqliteStorage is closed"))
                return True
            job.outcome = self._run_one(job)
            i += 1
        return False

    def _wrap(self, exc: BaseException) -> BaseException:
        return self._state.wrap(exc)

    def _ensure_conn(self) -> sqlite3.Connection:
        if self.conn is None:
            self.conn = self._connect()
        return self.conn

    def _run_one(self, job: _Job) -> outcome.Outcome[object]:
        try:
            conn = self._ensure_conn()
            if self.read_busy_ms is None or job.kind != _READ or job.token is None:
                return outcome.Value(job.fn(conn))
            # A reader whose reads may run inline keeps busy timeout 0 between jobs
            # (see read_inline); a read on the thread waits as long as configured.
            conn.execute(f"PRAGMA busy_timeout = {self.read_busy_ms}")
            try:
                return outcome.Value(job.fn(conn))
            finally:
                conn.execute("PRAGMA busy_timeout = 0")
        except Exception as exc:
            return outcome.Error(self._wrap(exc))

    def _run_writes(self, jobs: list[_Job]) -> None:
        conn = self._begin_writes(jobs)
        if conn is None:
            return
        try:
            grouped = len(jobs) > 1
            for job in jobs:
                if not self._run_write(conn, job, grouped):
                    return
            conn.execute("COMMIT")
            self._committed(len(jobs))
        except Exception as exc:
            self._fail_group(conn, jobs, exc)

    def _begin_writes(self, jobs: list[_Job]) -> sqlite3.Connection | None:
        # The group's transaction; None when it could not begin (every job has its error).
        try:
            conn = self._ensure_conn()
            refused = self._state.refused()
            if refused is not None:
                raise refused
            self._begin_waiting(conn)
        except Exception as exc:
            for job in jobs:
                job.outcome = outcome.Error(self._wrap(exc))
            return None
        return conn

    def _run_write(self, conn: sqlite3.Connection, job: _Job, grouped: bool) -> bool:
        """Run one write job of the open transaction (in its own savepoint when
        ``grouped``). False when it failed alone: its transaction is rolled back."""
        if grouped:
            conn.execute("SAVEPOINT job")
        try:
            value = job.fn(conn)
        except Exception as exc:
            job.outcome = outcome.Error(self._wrap(exc))
            refused = self._state.refused()
            if refused is not None:
                # Corruption found just now: the rest of the group is not written either
                # (the caller's handler rolls everything back).
                raise refused from None
            if not grouped:
                conn.execute("ROLLBACK")
                return False
            conn.execute("ROLLBACK TO job")
            conn.execute("RELEASE job")
            return True
        job.outcome = outcome.Value(value)
        if grouped:
            conn.execute("RELEASE job")
        return True

    def _committed(self, jobs: int) -> None:
        self.transactions += 1
        self.grouped_jobs += jobs
        due = self._note_commit()
        if due:
            self._ask_checkpoint(due)

    def _fail_group(self, conn: sqlite3.Connection, jobs: list[_Job], exc: Exception) -> None:
        # The transaction as a whole failed (disk full, I/O error...): nothing of it is
        # stored, so no job of the group succeeded.
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        for job in jobs:
            if job.outcome is None or isinstance(job.outcome, outcome.Value):
                job.outcome = outcome.Error(self._wrap(exc))
