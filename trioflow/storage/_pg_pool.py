"""PostgresStorage's connections: a small pool of synchronous psycopg connections, each
job borrowing one on a worker thread (psycopg 3 has no trio support; see the design notes
in :mod:`trioflow.storage.postgres`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from .._core._errors import StorageError
from ._pg_schema import migrate

if TYPE_CHECKING:
    import psycopg

T = TypeVar("T")


class ConnectionPool:
    """At most ``size`` connections (and threads) at once; the first job (or
    :meth:`open`) connects and creates or migrates the tables."""

    def __init__(self, dsn: str, *, where: str, size: int, connect_timeout: float) -> None:
        self._dsn = dsn
        self._where = where
        self._size = size
        self._connect_timeout = connect_timeout
        self._idle: list[psycopg.Connection[Any]] = []
        self._slots = trio.Semaphore(size)
        self.opened = False
        self._open_lock = trio.Lock()
        self.closed = False

    def connect(self, *, autocommit: bool = True) -> psycopg.Connection[Any]:
        """A new connection (blocking: call it on a worker thread)."""
        import psycopg

        try:
            return psycopg.connect(
                self._dsn,
                autocommit=autocommit,
                connect_timeout=max(1, math.ceil(self._connect_timeout)),
                application_name="trioflow",
            )
        except psycopg.Error as exc:
            raise StorageError(f"cannot connect to {self._where}: {exc}") from exc

    def _run_job(self, fn: Callable[[psycopg.Connection[Any]], T], *, write: bool) -> T:
        # On a worker thread: borrow an idle connection (or open one) and run the job.
        import psycopg

        try:
            conn = self._idle.pop()
        except IndexError:
            conn = self.connect()
        try:
            if write:
                with conn.transaction():
                    return fn(conn)
            return fn(conn)
        except psycopg.Error as exc:
            raise StorageError(f"{self._where}: {exc}") from exc
        finally:
            # A connection that failed stays out of the pool; the next job opens another.
            if conn.closed or conn.broken:
                conn.close()
            else:
                self._idle.append(conn)

    async def call(self, fn: Callable[[psycopg.Connection[Any]], T], *, write: bool) -> T:
        """Run ``fn`` on a pooled connection on a worker thread (in a transaction when
        ``write``). Cancelled before a thread took the job: nothing ran; after: the job
        commits or rolls back and the cancellation comes at the next checkpoint."""
        self.check_open()
        if not self.opened:
            await self.open()
        async with self._slots:
            return await trio.to_thread.run_sync(lambda: self._run_job(fn, write=write))

    def check_open(self) -> None:
        if self.closed:
            raise RuntimeError("this PostgresStorage is closed")

    async def open(self) -> None:
        """Connect and create or migrate the tables (once). Cancelling it before the
        migration thread started leaves the pool unopened; the next call tries again."""
        self.check_open()
        async with self._open_lock:
            if self.opened:
                return

            def setup() -> None:
                conn = self.connect()
                try:
                    migrate(conn, self._where)
                except Exception:
                    conn.close()
                    raise
                self._idle.append(conn)

            async with self._slots:
                try:
                    await trio.to_thread.run_sync(setup)
                except StorageError:
                    raise
                except Exception as exc:
                    raise StorageError(f"cannot open {self._where}: {exc}") from exc
            self.opened = True

    async def aclose(self) -> None:
        """Close every connection once the running jobs are done (shielded: cancelling
        it does not leave connections open). Idempotent."""
        await trio.lowlevel.checkpoint()
        if self.closed:
            return
        self.closed = True
        with trio.CancelScope(shield=True):
            for _ in range(self._size):
                await self._slots.acquire()
            idle, self._idle = self._idle, []

            def close_all() -> None:
                for conn in idle:
                    conn.close()

            await trio.to_thread.run_sync(close_all)
