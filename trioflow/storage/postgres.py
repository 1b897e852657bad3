"""PostgresStorage: runs and event logs in PostgreSQL, shared by processes on many hosts.

Design
------
psycopg 3 has no trio support, so database work runs on worker threads: a small pool of
synchronous connections (``pool_size``), each call borrowing one for one job through
``trio.to_thread.run_sync``. The alternative, psycopg's non-blocking core driven by trio
waits, means re-implementing psycopg's private generator plumbing; a thread hop measured
~50 µs beside ~60-150 µs for one of our statements on a local socket (and ~70 µs of
(de)serialisation), so threads cost little and keep to psycopg's public API. Every write
is one SQL statement (its own transaction), so a write is one round trip.

The one trio-native part is the LISTEN connection: :meth:`PostgresStorage.serve` waits
for its socket with ``trio.lowlevel.wait_readable`` and reads notifications with psycopg's
libpq wrapper (``consume_input``/``notifies``), so a notification wakes the waiting task
at once without a thread polling.

Tables: ``trioflow_runs`` (one row per run: the snapshot, its status, ``last_seq`` of the
log, and the lease: ``lease_owner``, ``lease_expires_at``, ``fencing_token``, ``queued``),
``trioflow_steps`` (one row per step record, ``(run_id, step_key)``: a write stores only
the records that changed, see :mod:`trioflow.storage._steps`), ``trioflow_events``
(``(run_id, seq)`` primary key) and ``trioflow_meta`` (schema version). Every write is
one transaction; a snapshot and its events commit together, with a ``NOTIFY
trioflow_events`` (payload: the run id) for followers in other processes only while one
marks the run followed (``followed_until``, :mod:`._pg_listen`).

Leases and fencing
------------------
Every execution on PostgreSQL holds a lease on its run. A write that moves a run *into*
``running``/``waiting`` from a storage that holds no lease on it is a **claim**: it
succeeds only when nobody holds a live lease (``lease_owner`` empty or expired), and it
takes the lease (``lease_owner`` = this storage's :attr:`owner_id`, expiry
``now() + lease_ttl``) and increments ``fencing_token``. From then on, every write this
storage makes for the run requires the stored ``fencing_token`` to equal the one it
claimed: after a lease expired and another process claimed the run, a late write of the
old owner raises :class:`LeaseLostError` and changes nothing. A write leaving the
executing statuses (suspended, success, failed, ...) releases the lease. Writes from a
storage that holds no lease and do not claim (``cancel()`` from another process) need no
lease; they are compare-and-sets on the status as in every backend, and a ``canceled``
written that way sends ``NOTIFY trioflow_cancel`` so the owner cancels the execution at
once.

:meth:`serve` (started by ``open_runtime``) renews this storage's leases every
``lease_ttl / 3`` seconds and reports runs whose lease was lost or that were canceled
elsewhere, so the runtime stops their executions.

Cancellation
------------
Every method is a checkpoint. A call cancelled before its job reached a thread wrote
nothing and raises ``trio.Cancelled``; once a thread runs the job, the call waits for its
transaction to commit or roll back, returns its result, and the cancellation is delivered
at the caller's next checkpoint.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Callable, Collection, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from .._core._chunks import Chunk
from .._core._errors import LeaseLostError, StorageError
from .._core._model import RunInfo, RunSnapshot
from .._core._status import RunStatus
from . import _pg_steps
from ._json import chunk_from_row, dumps_strict
from ._pg_listen import Notifications
from ._pg_pool import ConnectionPool
from ._pg_schema import MIGRATIONS, SCHEMA_VERSION
from ._pg_sql import (
    APPEND_SQL,
    CANCEL_CHANNEL,
    EVENTS_CHANNEL,
    EXECUTING,
    MAX_RETRY_DELAY,
    QUEUE_CHANNEL,
    SAVE_SQL,
    allowed_statuses,
    check_consecutive,
    claim_rows,
    claimed_run,
    dump_chunk,
    explain_refused_append,
    explain_refused_save,
    insert_run,
    mark_followed,
    record_failed,
    redacted_dsn,
    release_all,
    release_one,
    renew,
)
from ._protocol import ClaimedRun
from ._sql import list_runs_query, run_infos
from ._steps import run_row_json, step_writes

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "LeaseLostError",
    "MAX_RETRY_DELAY",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "ClaimedRun",
    "PostgresStorage",
    "redacted_dsn",
]

T = TypeVar("T")
logger = logging.getLogger("trioflow.postgres")


class PostgresStorage:
    """Runs and their event logs in a PostgreSQL database, shared by any number of
    processes and hosts.

    ``dsn`` is a libpq connection string or URI. ``pool_size`` bounds the connections
    (and threads) used at once by this storage. ``lease_ttl`` (seconds) is how long a run
    stays owned by this process without a renewal: after a crash, other processes take
    its runs over that long after the last renewal.

    The constructor does no I/O; the first call (or ``await storage.open()``, or
    ``async with``) connects and creates or migrates the tables. Every method is a
    checkpoint; a call that raises ``trio.Cancelled`` wrote nothing, a call that returns
    wrote what it reports.
    """

    durable = True

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = 8,
        lease_ttl: float = 15.0,
        connect_timeout: float = 10.0,
    ) -> None:
        if not isinstance(dsn, str) or not dsn.strip():
            raise ValueError(f"dsn must be a non-empty connection string, got {dsn!r}")
        if not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"pool_size must be an int >= 1, got {pool_size!r}")
        if not isinstance(lease_ttl, (int, float)) or not 0.1 <= lease_ttl <= 86_400:
            raise ValueError(f"lease_ttl must be seconds between 0.1 and 86400, got {lease_ttl!r}")
        self._dsn = dsn
        self._where = f"PostgreSQL {redacted_dsn(dsn)}"
        self.lease_ttl = float(lease_ttl)
        #: Names this storage as a lease owner (host, pid and a random part).
        self.owner_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._pool = ConnectionPool(
            dsn, where=self._where, size=pool_size, connect_timeout=connect_timeout
        )
        #: run_id -> the fencing token of the lease this storage holds on it.
        self._fences: dict[str, int] = {}
        #: run_id -> the token of a lease this storage lost while executing the run: every
        #: write for the run raises LeaseLostError until :meth:`forget_lost_lease`.
        self._lost: dict[str, int] = {}
        self._notes = Notifications(
            where=self._where, connect=self._pool.connect, holds=self._fences.__contains__
        )

    def __repr__(self) -> str:
        return f"PostgresStorage({redacted_dsn(self._dsn)!r})"

    @property
    def held_leases(self) -> frozenset[str]:
        """Ids of the runs whose lease this storage holds."""
        return frozenset(self._fences)

    # --- connections -----------------------------------------------------------------------

    async def _call(self, fn: Callable[[psycopg.Connection[Any]], T], *, write: bool) -> T:
        return await self._pool.call(fn, write=write)

    def _check_open(self) -> None:
        self._pool.check_open()

    async def open(self) -> None:
        """Connect and create or migrate the tables now, rather than at the first call.
        StorageError when the database cannot be used (unreachable, or tables of an
        unknown or newer schema: then nothing is changed)."""
        await self._pool.open()

    async def aclose(self) -> None:
        """Close every connection. Idempotent; leases still held are left to expire
        (``open_runtime`` releases them first when it closes)."""
        await self._pool.aclose()

    async def __aenter__(self) -> PostgresStorage:
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

    # --- the protocol ---------------------------------------------------------------------

    async def create_run(self, snapshot: RunSnapshot) -> bool:
        """Insert ``snapshot`` unless a run with its id exists. True when inserted."""
        return await self._insert(snapshot, queued=False)

    async def _insert(self, snapshot: RunSnapshot, *, queued: bool) -> bool:
        params = (
            snapshot.run_id,
            snapshot.workflow_id,
            snapshot.resource_id,
            RunStatus(snapshot.status).value,
            snapshot.created_at,
            snapshot.updated_at,
            run_row_json(snapshot),
            queued,
        )
        steps = step_writes(snapshot, None)

        return await self._call(
            lambda conn: insert_run(
                conn, params, queued=queued, run_id=snapshot.run_id, steps=steps
            ),
            write=True,
        )

    async def load_snapshot(self, run_id: str) -> RunSnapshot | None:
        """The stored snapshot, or None."""

        loaded = await self._call(lambda conn: _pg_steps.load(conn, run_id), write=False)
        if loaded is None:
            return None
        return _pg_steps.snapshot_from_load(*loaded, self._where, run_id)

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
        Lease rules (module docstring): a claim refused because another process holds a
        live lease returns False; a write fenced out raises :class:`LeaseLostError`.
        """
        run_id = snapshot.run_id
        self._check_not_lost(run_id)
        status = RunStatus(snapshot.status).value
        allowed = allowed_statuses(expected_status)
        data = run_row_json(snapshot)
        steps = _pg_steps.save_params(step_writes(snapshot, changed_steps))
        seqs = [chunk.seq for chunk in events]
        texts = [dump_chunk(chunk) for chunk in events]
        fence = self._fences.get(run_id)
        executing = status in EXECUTING
        claim = fence is None and executing

        check_consecutive(run_id, seqs)
        params = {
            "run": run_id,
            "status": status,
            "updated": snapshot.updated_at,
            "data": data,
            "allowed": allowed,
            "fence": fence,
            "nseq": len(seqs),
            "first": seqs[0] if seqs else 0,
            "seqs": seqs,
            "texts": texts,
            "claim": claim,
            "release": fence is not None and not executing,
            "me": self.owner_id,
            "ttl": self.lease_ttl,
            "notify_cancel": fence is None and status == RunStatus.CANCELED.value,
            "events_channel": EVENTS_CHANNEL,
            "cancel_channel": CANCEL_CHANNEL,
            **steps,
        }

        def job(conn: psycopg.Connection[Any]) -> tuple[bool, int | None]:
            # One statement (one round trip, its own transaction): the compare-and-set,
            # the lease bookkeeping, the events and the notifications. The conditions sit
            # in the UPDATE's WHERE, so PostgreSQL re-checks them against the newest row
            # version when writers race.
            row = conn.execute(SAVE_SQL, params).fetchone()
            assert row is not None
            if row[0]:
                return True, int(row[1]) if claim else None
            explain_refused_save(conn, run_id, fence=fence, allowed=allowed, seqs=seqs)
            return False, None

        try:
            written, new_token = await self._call(job, write=False)
        except LeaseLostError:
            if fence is not None:
                self._mark_lost(run_id, fence)
            raise
        if written:
            if new_token is not None:
                self._fences[run_id] = new_token
            elif fence is not None and not executing and self._fences.get(run_id) == fence:
                del self._fences[run_id]
        return written

    async def append_events(self, run_id: str, events: Sequence[Chunk]) -> None:
        """Append chunks (consecutive ``seq`` continuing the log: else ValueError and
        nothing is written) to the run's log. Ignored when the run is not stored;
        :class:`LeaseLostError` when this storage's lease on the run was lost."""
        if not events:
            await trio.lowlevel.checkpoint()
            self._check_open()
            return
        self._check_not_lost(run_id)
        seqs = [chunk.seq for chunk in events]
        texts = [dump_chunk(chunk) for chunk in events]
        check_consecutive(run_id, seqs)
        fence = self._fences.get(run_id)

        params = {
            "run": run_id,
            "first": seqs[0],
            "last": seqs[-1],
            "fence": fence,
            "seqs": seqs,
            "texts": texts,
            "channel": EVENTS_CHANNEL,
        }

        def job(conn: psycopg.Connection[Any]) -> None:
            row = conn.execute(APPEND_SQL, params).fetchone()
            if row is not None and row[0]:
                return
            explain_refused_append(conn, run_id, fence=fence, seqs=seqs)

        try:
            await self._call(job, write=False)
        except LeaseLostError:
            if fence is not None:
                self._mark_lost(run_id, fence)
            raise

    async def read_events(
        self, run_id: str, *, from_seq: int = 1, limit: int | None = None
    ) -> Sequence[Chunk]:
        """Chunks with ``seq >= from_seq``, in order, at most ``limit``."""
        start = max(from_seq, 1)
        count = None if limit is None else max(limit, 0)

        def job(conn: psycopg.Connection[Any]) -> list[tuple[int, str]]:
            rows = conn.execute(
                "SELECT seq, chunk FROM trioflow_events WHERE run_id = %s AND seq >= %s "
                "ORDER BY seq LIMIT %s",
                (run_id, start, count),
            ).fetchall()
            return [(int(seq), str(text)) for seq, text in rows]

        rows = await self._call(job, write=False)
        return [chunk_from_row(text, self._where, run_id, seq) for seq, text in rows]

    async def last_seq(self, run_id: str) -> int:
        """The highest stored ``seq`` of the run (0 when none)."""

        def job(conn: psycopg.Connection[Any]) -> int:
            row = conn.execute(
                "SELECT last_seq FROM trioflow_runs WHERE run_id = %s", (run_id,)
            ).fetchone()
            return 0 if row is None else int(row[0])

        return await self._call(job, write=False)

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
            "trioflow_runs",
            "%s",
            workflow_id=workflow_id,
            status=status,
            resource_id=resource_id,
            limit=limit,
            offset=offset,
        )

        def job(conn: psycopg.Connection[Any]) -> list[RunInfo]:
            return run_infos(conn.execute(sql, params).fetchall())

        return await self._call(job, write=False)

    async def delete_run(self, run_id: str) -> bool:
        """Remove the snapshot and the log. True when something was deleted."""

        def job(conn: psycopg.Connection[Any]) -> bool:
            conn.execute("DELETE FROM trioflow_events WHERE run_id = %s", (run_id,))
            conn.execute("DELETE FROM trioflow_steps WHERE run_id = %s", (run_id,))
            cur = conn.execute("DELETE FROM trioflow_runs WHERE run_id = %s", (run_id,))
            return cur.rowcount > 0

        deleted = await self._call(job, write=True)
        self._fences.pop(run_id, None)
        self._lost.pop(run_id, None)
        return deleted

    # --- queue and leases (workers) -------------------------------------------------------

    async def enqueue_run(self, snapshot: RunSnapshot) -> bool:
        """Store a ``pending`` run for any worker to start (insert, or mark a stored
        pending run queued with this snapshot). True when queued; False when the run
        exists and is not pending."""
        if RunStatus(snapshot.status) is not RunStatus.PENDING:
            raise ValueError(f"only a pending run can be queued, not a {snapshot.status} one")
        data = run_row_json(snapshot)
        steps = step_writes(snapshot, None)
        if await self._insert(snapshot, queued=True):
            return True

        def job(conn: psycopg.Connection[Any]) -> bool:
            cur = conn.execute(
                "UPDATE trioflow_runs SET queued = true, snapshot = %s, updated_at = %s "
                "WHERE run_id = %s AND status = 'pending' AND NOT queued "
                "AND lease_owner IS NULL",
                (data, snapshot.updated_at, snapshot.run_id),
            )
            if cur.rowcount != 1:
                return False
            _pg_steps.replace_steps(conn, snapshot.run_id, steps, fresh=False)
            conn.execute("SELECT pg_notify(%s, %s)", (QUEUE_CHANNEL, snapshot.run_id))
            return True

        return await self._call(job, write=True)

    async def claim_runnable(self, workflow_ids: Iterable[str], *, limit: int) -> list[ClaimedRun]:
        """Claim (take the lease of) up to ``limit`` runnable runs of these workflows:
        queued pending runs, and executing runs whose lease lapsed (their process died).
        ``FOR UPDATE SKIP LOCKED``: concurrent workers never claim the same run."""
        ids = list(workflow_ids)
        if limit <= 0 or not ids:
            await trio.lowlevel.checkpoint()
            return []

        rows = await self._call(
            lambda conn: claim_rows(conn, ids, limit, owner=self.owner_id, ttl=self.lease_ttl),
            write=True,
        )
        claimed = []
        for row in rows:
            run = claimed_run(row, self._where)
            self._fences[run.snapshot.run_id] = run.fencing_token
            self._lost.pop(run.snapshot.run_id, None)
            claimed.append(run)
        return claimed

    async def record_failed_attempt(self, run_id: str, error: Any, *, retry_delay: float) -> int:
        """An execution of the run died of an error here: count it, store ``error`` (a
        JSON-able serialized error), give up this storage's lease, and keep workers from
        claiming the run for ``retry_delay * 2 ** (attempts - 1)`` seconds (at most
        :data:`MAX_RETRY_DELAY`). Returns the stored number of failed attempts (0 when this
        storage held no lease on the run: nothing was written)."""
        fence = self._fences.pop(run_id, None)
        if fence is None:
            await trio.lowlevel.checkpoint()
            return 0
        text = dumps_strict(error, f"the error of run {run_id!r}")

        return await self._call(
            lambda conn: record_failed(conn, run_id, fence, text=text, retry_delay=retry_delay),
            write=True,
        )

    def _mark_lost(self, run_id: str, token: int) -> None:
        """The lease with ``token`` on the run is gone: refuse every later write for it
        (unless a newer claim replaced that lease meanwhile)."""
        if self._fences.get(run_id) == token:
            del self._fences[run_id]
            self._lost[run_id] = token

    def _check_not_lost(self, run_id: str) -> None:
        if run_id in self._lost:
            raise LeaseLostError(
                f"run {run_id}: this process's lease was lost; another process continues the run"
            )

    def forget_lost_lease(self, run_id: str) -> None:
        """The execution that lost the run's lease has ended: this storage may write
        for the run again (starting with a fresh claim)."""
        self._lost.pop(run_id, None)

    async def release_lease(self, run_id: str, *, unqueue: bool = False) -> None:
        """Give up this storage's lease on a run (other workers may claim it at once).
        ``unqueue`` also takes a pending run off the queue."""
        fence = self._fences.pop(run_id, None)
        if fence is None:
            await trio.lowlevel.checkpoint()
            return

        await self._call(lambda conn: release_one(conn, run_id, fence, unqueue=unqueue), write=True)

    async def release_leases(self) -> None:
        """Give up every lease this storage holds (a runtime closing: its runs are left
        for other workers at once, rather than when their leases expire)."""
        held = dict(self._fences)
        self._fences.clear()
        if not held or self._pool.closed:
            await trio.lowlevel.checkpoint()
            return

        await self._call(lambda conn: release_all(conn, held), write=True)

    async def renew_leases(self) -> dict[str, str]:
        """Extend every lease this storage holds by ``lease_ttl``. Returns the runs this
        process must stop executing: ``{run_id: "lease-lost" | "canceled"}``."""
        held = dict(self._fences)
        if not held:
            await trio.lowlevel.checkpoint()
            return {}

        kept = dict(
            await self._call(lambda conn: renew(conn, held, ttl=self.lease_ttl), write=True)
        )
        lost: dict[str, str] = {}
        for run_id, token in held.items():
            if run_id not in kept:
                self._mark_lost(run_id, token)
                lost[run_id] = "lease-lost"
            elif kept[run_id] == RunStatus.CANCELED.value:
                lost[run_id] = "canceled"
        return lost

    # --- notifications --------------------------------------------------------------------

    def watch_events(self, run_id: str, event: trio.Event) -> Callable[[], None]:
        """Set ``event`` at the next notification that the run's log grew (while
        :meth:`serve` runs; a first watch sets it once the run is marked followed, see
        :mod:`._pg_listen`). Returns a function that withdraws the request."""
        return self._notes.watch_events(run_id, event)

    def watch_queue(self, event: trio.Event) -> Callable[[], None]:
        """Set ``event`` at the next notification that a run was queued."""
        return self._notes.watch_queue(event)

    async def serve(
        self,
        on_stop: Callable[[str, str], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen for notifications and keep this storage's leases alive, until
        cancelled. ``on_stop(run_id, reason)`` is called (synchronously) for a run whose
        execution here must stop: ``"canceled"`` elsewhere or ``"lease-lost"``.

        ``open_runtime`` runs this for you. Connection failures are retried with a
        backoff; meanwhile followers fall back to polling.
        """
        self._check_open()
        if not self._pool.opened:
            await self.open()
        self._notes.cancel_handlers.append(on_stop)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._notes.run)
                nursery.start_soon(self._keep_leases, on_stop)
                nursery.start_soon(self._notes.keep_followed, self._mark_followed)
                task_status.started()
        finally:
            self._notes.cancel_handlers.remove(on_stop)

    async def _mark_followed(self, run_ids: list[str], ttl: float) -> list[str]:
        return await self._call(lambda conn: mark_followed(conn, run_ids, ttl), write=True)

    async def _keep_leases(self, on_stop: Callable[[str, str], None]) -> None:
        while True:
            await trio.sleep(self.lease_ttl / 3)
            try:
                lost = await self.renew_leases()
            except StorageError as exc:
                logger.warning("could not renew leases: %s", exc)
                continue
            for run_id, reason in lost.items():
                on_stop(run_id, reason)
