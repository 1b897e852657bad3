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
``trioflow_events`` (``(run_id, seq)`` primary key) and ``trioflow_meta`` (schema
version). Every write is one transaction; a snapshot and the events that describe it
commit together, with one ``NOTIFY trioflow_events`` per transaction (payload: the run id)
as a hint for followers in other processes.

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
import math
import os
import secrets
import socket
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar

import attrs
import trio

from .._core._chunks import Chunk
from .._core._model import RunInfo, RunSnapshot
from .._core._status import RunStatus
from .._errors import LeaseLostError, StorageError
from .._serde import snapshot_to_json, to_wire
from ._json import chunk_from_row, dumps_strict, loads_strict, snapshot_from_row
from ._sql import list_runs_query, run_infos

if TYPE_CHECKING:
    import psycopg

__all__ = ["LeaseLostError", "MIGRATIONS", "SCHEMA_VERSION", "ClaimedRun", "PostgresStorage"]

T = TypeVar("T")
logger = logging.getLogger("trioflow.postgres")

APPLICATION_MARKER: Final = "trioflow"
#: Statuses of a run that is executing somewhere: they hold a lease.
EXECUTING: Final = frozenset({RunStatus.RUNNING.value, RunStatus.WAITING.value})
#: The longest wait between two attempts of a run whose executions die of errors.
MAX_RETRY_DELAY: Final = 300.0
EVENTS_CHANNEL: Final = "trioflow_events"
CANCEL_CHANNEL: Final = "trioflow_cancel"
QUEUE_CHANNEL: Final = "trioflow_queue"


@attrs.frozen(kw_only=True)
class ClaimedRun:
    """A runnable run a worker claimed (its lease is held by this storage)."""

    snapshot: RunSnapshot
    queued: bool
    fencing_token: int
    #: Executions of the run that died of an error so far (stored, across processes).
    attempts: int = 0
    #: The error the last of them died of (a serialized error as JSON), if any.
    last_error: Any = None


# --- schema and migrations ----------------------------------------------------------------


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


#: ``MIGRATIONS[k]`` brings the schema from version ``k`` to ``k + 1`` (0 = no tables).
MIGRATIONS: list[Callable[[psycopg.Cursor[Any]], None]] = [_migrate_to_1, _migrate_to_2]
SCHEMA_VERSION: Final = len(MIGRATIONS)
#: Serialises initialisation and migration across processes (pg_advisory_xact_lock key).
_MIGRATION_LOCK: Final = 0x74666C77


def _migrate(conn: psycopg.Connection[Any], where: str) -> None:
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


# --- helpers ------------------------------------------------------------------------------


def _dump_chunk(chunk: Chunk) -> str:
    return dumps_strict(to_wire(chunk), f"event seq {chunk.seq} of run {chunk.run_id!r}")


def _allowed(expected: RunStatus | Sequence[RunStatus] | None) -> list[str] | None:
    if expected is None:
        return None
    if isinstance(expected, str):
        return [RunStatus(expected).value]
    return [RunStatus(s).value for s in expected]


def redacted_dsn(dsn: str) -> str:
    """The DSN without its password, for messages."""
    try:
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        params = conninfo_to_dict(dsn)
    except Exception:
        return "<unparsable dsn>"
    if "password" in params:
        params["password"] = "***"
    return make_conninfo("", **params)


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
        self._pool_size = pool_size
        self.lease_ttl = float(lease_ttl)
        self._connect_timeout = connect_timeout
        #: Names this storage as a lease owner (host, pid and a random part).
        self.owner_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._idle: list[psycopg.Connection[Any]] = []
        self._slots = trio.Semaphore(pool_size)
        self._opened = False
        self._open_lock = trio.Lock()
        self._closed = False
        #: run_id -> the fencing token of the lease this storage holds on it.
        self._fences: dict[str, int] = {}
        #: run_id -> the token of a lease this storage lost while executing the run: every
        #: write for the run raises LeaseLostError until :meth:`forget_lost_lease`.
        self._lost: dict[str, int] = {}
        #: run_id -> trio Events to set at the next notification about that run.
        self._event_waiters: dict[str, set[trio.Event]] = {}
        self._queue_waiters: set[trio.Event] = set()
        self._cancel_handlers: list[Callable[[str, str], None]] = []

    def __repr__(self) -> str:
        return f"PostgresStorage({redacted_dsn(self._dsn)!r})"

    @property
    def held_leases(self) -> frozenset[str]:
        """Ids of the runs whose lease this storage holds."""
        return frozenset(self._fences)

    # --- connections ----------------------------------------------------------------------

    def _connect(self, *, autocommit: bool = True) -> psycopg.Connection[Any]:
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
            conn = self._connect()
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

    async def _call(self, fn: Callable[[psycopg.Connection[Any]], T], *, write: bool) -> T:
        self._check_open()
        if not self._opened:
            await self.open()
        async with self._slots:
            return await trio.to_thread.run_sync(lambda: self._run_job(fn, write=write))

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this PostgresStorage is closed")

    async def open(self) -> None:
        """Connect and create or migrate the tables now, rather than at the first call.
        StorageError when the database cannot be used (unreachable, or tables of an
        unknown or newer schema: then nothing is changed)."""
        self._check_open()
        async with self._open_lock:
            if self._opened:
                return

            def setup() -> None:
                conn = self._connect()
                try:
                    _migrate(conn, self._where)
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
            self._opened = True

    async def aclose(self) -> None:
        """Close every connection. Idempotent; leases still held are left to expire
        (``open_runtime`` releases them first when it closes)."""
        await trio.lowlevel.checkpoint()
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            for _ in range(self._pool_size):
                await self._slots.acquire()
            idle, self._idle = self._idle, []

            def close_all() -> None:
                for conn in idle:
                    conn.close()

            await trio.to_thread.run_sync(close_all)

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
            dumps_strict(snapshot_to_json(snapshot), f"the snapshot of run {snapshot.run_id!r}"),
            queued,
        )

        def job(conn: psycopg.Connection[Any]) -> bool:
            cur = conn.execute(
                "INSERT INTO trioflow_runs (run_id, workflow_id, resource_id, status, "
                "created_at, updated_at, snapshot, queued) VALUES (%s, %s, %s, %s, %s, %s, "
                "%s, %s) ON CONFLICT (run_id) DO NOTHING",
                params,
            )
            if cur.rowcount == 1 and queued:
                conn.execute("SELECT pg_notify(%s, %s)", (QUEUE_CHANNEL, snapshot.run_id))
            return cur.rowcount == 1

        return await self._call(job, write=True)

    async def load_snapshot(self, run_id: str) -> RunSnapshot | None:
        """The stored snapshot, or None."""

        def job(conn: psycopg.Connection[Any]) -> str | None:
            row = conn.execute(
                "SELECT snapshot FROM trioflow_runs WHERE run_id = %s", (run_id,)
            ).fetchone()
            return None if row is None else str(row[0])

        text = await self._call(job, write=False)
        if text is None:
            return None
        return snapshot_from_row(text, self._where, run_id)

    async def save_snapshot(
        self,
        snapshot: RunSnapshot,
        events: Sequence[Chunk] = (),
        *,
        expected_status: RunStatus | Sequence[RunStatus] | None = None,
    ) -> bool:
        """Replace the run's snapshot and append ``events``, in one transaction.

        With ``expected_status``, only when the stored status is (one of) it; otherwise
        nothing is written and the result is False. Without a stored run: False. Events
        whose ``seq`` do not continue the log raise ValueError and nothing is written.
        Lease rules (module docstring): a claim refused because another process holds a
        live lease returns False; a write fenced out raises :class:`LeaseLostError`.
        """
        run_id = snapshot.run_id
        self._check_not_lost(run_id)
        status = RunStatus(snapshot.status).value
        allowed = _allowed(expected_status)
        data = dumps_strict(snapshot_to_json(snapshot), f"the snapshot of run {run_id!r}")
        seqs = [chunk.seq for chunk in events]
        texts = [_dump_chunk(chunk) for chunk in events]
        fence = self._fences.get(run_id)
        executing = status in EXECUTING
        claim = fence is None and executing

        _check_consecutive(run_id, seqs)
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
        }

        def job(conn: psycopg.Connection[Any]) -> tuple[bool, int | None]:
            # One statement (one round trip, its own transaction): the compare-and-set,
            # the lease bookkeeping, the events and the notifications. The conditions sit
            # in the UPDATE's WHERE, so PostgreSQL re-checks them against the newest row
            # version when writers race.
            row = conn.execute(_SAVE_SQL, params).fetchone()
            assert row is not None
            if row[0]:
                return True, int(row[1]) if claim else None
            # Nothing was written: say why.
            found = conn.execute(
                "SELECT status, last_seq, fencing_token FROM trioflow_runs WHERE run_id = %s",
                (run_id,),
            ).fetchone()
            if found is None:
                return False, None
            stored_status, last_seq, token = found
            if fence is not None and token != fence:
                raise LeaseLostError(
                    f"run {run_id}: this process's lease was lost (fencing token "
                    f"{fence}, now {token}); another process continues the run"
                )
            if allowed is not None and stored_status not in allowed:
                return False, None
            if seqs and seqs[0] != last_seq + 1:
                raise ValueError(f"run {run_id}: event seq {seqs[0]} does not follow {last_seq}")
            return False, None  # a claim refused: another process holds a live lease

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
        texts = [_dump_chunk(chunk) for chunk in events]
        _check_consecutive(run_id, seqs)
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
            row = conn.execute(_APPEND_SQL, params).fetchone()
            if row is not None and row[0]:
                return
            found = conn.execute(
                "SELECT last_seq, fencing_token FROM trioflow_runs WHERE run_id = %s", (run_id,)
            ).fetchone()
            if found is None:
                return
            if fence is not None and found[1] != fence:
                raise LeaseLostError(
                    f"run {run_id}: this process's lease was lost; another process "
                    "continues the run"
                )
            raise ValueError(f"run {run_id}: event seq {seqs[0]} does not follow {found[0]}")

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
        data = dumps_strict(snapshot_to_json(snapshot), f"the snapshot of run {snapshot.run_id!r}")
        if await self._insert(snapshot, queued=True):
            return True

        def job(conn: psycopg.Connection[Any]) -> bool:
            cur = conn.execute(
                "UPDATE trioflow_runs SET queued = true, snapshot = %s, updated_at = %s "
                "WHERE run_id = %s AND status = 'pending' AND NOT queued "
                "AND lease_owner IS NULL",
                (data, snapshot.updated_at, snapshot.run_id),
            )
            if cur.rowcount == 1:
                conn.execute("SELECT pg_notify(%s, %s)", (QUEUE_CHANNEL, snapshot.run_id))
            return cur.rowcount == 1

        return await self._call(job, write=True)

    async def claim_runnable(self, workflow_ids: Iterable[str], *, limit: int) -> list[ClaimedRun]:
        """Claim (take the lease of) up to ``limit`` runnable runs of these workflows:
        queued pending runs, and executing runs whose lease lapsed (their process died).
        ``FOR UPDATE SKIP LOCKED``: concurrent workers never claim the same run."""
        ids = list(workflow_ids)
        if limit <= 0 or not ids:
            await trio.lowlevel.checkpoint()
            return []

        def job(
            conn: psycopg.Connection[Any],
        ) -> list[tuple[str, str, bool, int, int, str | None]]:
            return [
                (str(run), str(snap), bool(queued), int(token), int(attempts), error)
                for run, snap, queued, token, attempts, error in conn.execute(
                    """
                    WITH candidates AS (
                        SELECT run_id FROM trioflow_runs
                        WHERE workflow_id = ANY(%s)
                          AND status IN ('pending', 'running', 'waiting')
                          AND ((status = 'pending' AND queued
                                AND (lease_owner IS NULL OR lease_expires_at < now()))
                               OR (status <> 'pending' AND (lease_expires_at IS NULL
                                                            OR lease_expires_at < now())))
                          AND (retry_at IS NULL OR retry_at <= now())
                        ORDER BY updated_at
                        LIMIT %s
                        FOR UPDATE SKIP LOCKED
                    )
                    UPDATE trioflow_runs AS r
                    SET lease_owner = %s,
                        lease_expires_at = now() + make_interval(secs => %s),
                        fencing_token = r.fencing_token + 1
                    FROM candidates c WHERE r.run_id = c.run_id
                    RETURNING r.run_id, r.snapshot, r.queued, r.fencing_token, r.attempts,
                              r.last_error
                    """,
                    (ids, limit, self.owner_id, self.lease_ttl),
                ).fetchall()
            ]

        rows = await self._call(job, write=True)
        claimed = []
        for run_id, text, queued, token, attempts, error in rows:
            snapshot = snapshot_from_row(text, self._where, run_id)
            self._fences[snapshot.run_id] = token
            self._lost.pop(snapshot.run_id, None)
            claimed.append(
                ClaimedRun(
                    snapshot=snapshot,
                    queued=queued,
                    fencing_token=token,
                    attempts=attempts,
                    last_error=(
                        loads_strict(error, f"{self._where}: the last error of run {run_id!r}")
                        if error is not None
                        else None
                    ),
                )
            )
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

        def job(conn: psycopg.Connection[Any]) -> int:
            row = conn.execute(
                "UPDATE trioflow_runs SET attempts = attempts + 1, last_error = %s, "
                "retry_at = now() + make_interval(secs => "
                "least(%s * power(2, attempts)::float8, %s)), "
                "lease_owner = NULL, lease_expires_at = NULL "
                "WHERE run_id = %s AND fencing_token = %s RETURNING attempts",
                (text, retry_delay, MAX_RETRY_DELAY, run_id, fence),
            ).fetchone()
            return int(row[0]) if row is not None else 0

        return await self._call(job, write=True)

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

        def job(conn: psycopg.Connection[Any]) -> None:
            conn.execute(
                "UPDATE trioflow_runs SET lease_owner = NULL, lease_expires_at = NULL, "
                "queued = queued AND NOT %s WHERE run_id = %s AND fencing_token = %s",
                (unqueue, run_id, fence),
            )
            # Idle workers take the run over now rather than at their next poll.
            conn.execute("SELECT pg_notify(%s, %s)", (QUEUE_CHANNEL, run_id))

        await self._call(job, write=True)

    async def release_leases(self) -> None:
        """Give up every lease this storage holds (a runtime closing: its runs are left
        for other workers at once, rather than when their leases expire)."""
        held = dict(self._fences)
        self._fences.clear()
        if not held or self._closed:
            await trio.lowlevel.checkpoint()
            return

        def job(conn: psycopg.Connection[Any]) -> None:
            conn.execute(
                "UPDATE trioflow_runs AS r SET lease_owner = NULL, lease_expires_at = NULL "
                "FROM unnest(%s::text[], %s::bigint[]) AS h(run_id, token) "
                "WHERE r.run_id = h.run_id AND r.fencing_token = h.token",
                (list(held), list(held.values())),
            )
            conn.execute("SELECT pg_notify(%s, '')", (QUEUE_CHANNEL,))

        await self._call(job, write=True)

    async def renew_leases(self) -> dict[str, str]:
        """Extend every lease this storage holds by ``lease_ttl``. Returns the runs this
        process must stop executing: ``{run_id: "lease-lost" | "canceled"}``."""
        held = dict(self._fences)
        if not held:
            await trio.lowlevel.checkpoint()
            return {}

        def job(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
            return [
                (str(run), str(stat))
                for run, stat in conn.execute(
                    "UPDATE trioflow_runs AS r "
                    "SET lease_expires_at = now() + make_interval(secs => %s) "
                    "FROM unnest(%s::text[], %s::bigint[]) AS h(run_id, token) "
                    "WHERE r.run_id = h.run_id AND r.fencing_token = h.token "
                    "RETURNING r.run_id, r.status",
                    (self.lease_ttl, list(held), list(held.values())),
                ).fetchall()
            ]

        kept = dict(await self._call(job, write=True))
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
        :meth:`serve` runs). Returns a function that withdraws the request."""
        waiters = self._event_waiters.setdefault(run_id, set())
        waiters.add(event)

        def unwatch() -> None:
            found = self._event_waiters.get(run_id)
            if found is not None:
                found.discard(event)
                if not found:
                    del self._event_waiters[run_id]

        return unwatch

    def watch_queue(self, event: trio.Event) -> Callable[[], None]:
        """Set ``event`` at the next notification that a run was queued."""
        self._queue_waiters.add(event)
        return lambda: self._queue_waiters.discard(event)

    def _dispatch(self, channel: str, payload: str) -> None:
        if channel == EVENTS_CHANNEL:
            for event in self._event_waiters.pop(payload, ()):
                event.set()
        elif channel == QUEUE_CHANNEL:
            waiters, self._queue_waiters = self._queue_waiters, set()
            for event in waiters:
                event.set()
        elif channel == CANCEL_CHANNEL and payload in self._fences:
            for handler in list(self._cancel_handlers):
                handler(payload, "canceled")

    def _wake_everyone(self) -> None:
        # After losing the listen connection, a notification may have been missed.
        for waiters in self._event_waiters.values():
            for event in waiters:
                event.set()
        self._event_waiters.clear()
        self._dispatch(QUEUE_CHANNEL, "")

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
        if not self._opened:
            await self.open()
        self._cancel_handlers.append(on_stop)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._listen)
                nursery.start_soon(self._keep_leases, on_stop)
                task_status.started()
        finally:
            self._cancel_handlers.remove(on_stop)

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

    async def _listen(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        started = False
        delay = 0.05
        while True:
            conn: psycopg.Connection[Any] | None = None
            try:

                def listen() -> psycopg.Connection[Any]:
                    c = self._connect()
                    for channel in (EVENTS_CHANNEL, CANCEL_CHANNEL, QUEUE_CHANNEL):
                        c.execute(f"LISTEN {channel}")
                    return c

                conn = await trio.to_thread.run_sync(listen)
                if started:
                    self._wake_everyone()
                else:
                    started = True
                    task_status.started()
                delay = 0.05
                pgconn = conn.pgconn
                while True:
                    await trio.lowlevel.wait_readable(pgconn.socket)
                    pgconn.consume_input()
                    while (note := pgconn.notifies()) is not None:
                        self._dispatch(note.relname.decode(), note.extra.decode())
            except Exception as exc:
                logger.warning("%s: listen connection lost (%s); reconnecting", self._where, exc)
                if not started:
                    started = True
                    task_status.started()
                self._wake_everyone()
                await trio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                if conn is not None:
                    conn.close()


_SAVE_SQL: Final = """
WITH upd AS (
    UPDATE trioflow_runs SET
        status = %(status)s,
        updated_at = %(updated)s,
        snapshot = %(data)s,
        last_seq = last_seq + %(nseq)s,
        queued = queued AND %(status)s = 'pending',
        lease_owner = CASE WHEN %(claim)s THEN %(me)s
                           WHEN %(release)s THEN NULL ELSE lease_owner END,
        lease_expires_at = CASE WHEN %(claim)s THEN now() + make_interval(secs => %(ttl)s)
                                WHEN %(release)s THEN NULL ELSE lease_expires_at END,
        fencing_token = fencing_token + CASE WHEN %(claim)s THEN 1 ELSE 0 END,
        attempts = CASE WHEN %(status)s IN ('running', 'waiting') THEN attempts ELSE 0 END,
        retry_at = CASE WHEN %(status)s IN ('running', 'waiting') THEN retry_at END
    WHERE run_id = %(run)s
      AND (%(allowed)s::text[] IS NULL OR status = ANY(%(allowed)s::text[]))
      AND (%(fence)s::bigint IS NULL OR fencing_token = %(fence)s::bigint)
      AND (%(nseq)s = 0 OR last_seq = %(first)s - 1)
      AND (NOT %(claim)s OR lease_owner IS NULL OR lease_owner = %(me)s
           OR lease_expires_at < now())
    RETURNING fencing_token
), ins AS (
    INSERT INTO trioflow_events (run_id, seq, chunk)
    SELECT %(run)s, s, c FROM unnest(%(seqs)s::bigint[], %(texts)s::text[]) AS t(s, c)
    WHERE EXISTS (SELECT 1 FROM upd)
), notified AS (
    SELECT pg_notify(%(events_channel)s, %(run)s) FROM upd WHERE %(nseq)s > 0
    UNION ALL
    SELECT pg_notify(%(cancel_channel)s, %(run)s) FROM upd WHERE %(notify_cancel)s
)
SELECT (SELECT count(*) FROM upd) > 0, (SELECT fencing_token FROM upd),
       (SELECT count(*) FROM notified)
"""

_APPEND_SQL: Final = """
WITH upd AS (
    UPDATE trioflow_runs SET last_seq = %(last)s
    WHERE run_id = %(run)s AND last_seq = %(first)s - 1
      AND (%(fence)s::bigint IS NULL OR fencing_token = %(fence)s::bigint)
    RETURNING 1
), ins AS (
    INSERT INTO trioflow_events (run_id, seq, chunk)
    SELECT %(run)s, s, c FROM unnest(%(seqs)s::bigint[], %(texts)s::text[]) AS t(s, c)
    WHERE EXISTS (SELECT 1 FROM upd)
), notified AS (
    SELECT pg_notify(%(channel)s, %(run)s) FROM upd
)
SELECT (SELECT count(*) FROM upd) > 0, (SELECT count(*) FROM notified)
"""


def _check_consecutive(run_id: str, seqs: list[int]) -> None:
    for offset, seq in enumerate(seqs):
        if seq != seqs[0] + offset:
            raise ValueError(
                f"run {run_id}: event seq {seq} does not follow {seqs[0] + offset - 1}"
            )
