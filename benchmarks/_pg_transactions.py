"""Transactions of one 10-step run on PostgreSQL (issue 15: goal <= 12), for
``bench_postgres_workers.py --transactions``.

Two ways a run is executed, each on a fresh private database (only this process and the
measurement connect to it):

- ``direct``: ``workflow.create_run()`` then ``await run.start(input_data=0)`` until it
  returns ``success``, in a runtime opened on a ``PostgresStorage``;
- ``queued``: ``runtime.enqueue(...)`` from one runtime, executed by a worker runtime
  (``worker=True``) in the same process, until the stored run is ``success``.

Figures: ``xact_commit`` of the database (``pg_stat_database``) over the run, minus the
reads made to measure it, read after the storage closed (a backend reports its statistics
as it exits); and, by wrapping the storage's methods, ``calls``: each storage method the
engine called and how many times, with ``round_trips``: the jobs those calls sent to the
database (each one statement or one transaction; their sum is
``storage_transactions``). The floor is the raw psycopg floor of
``bench_postgres_workers.py``: one transaction per step, 10 per run.

Twelve bare ``SELECT 1`` sent through the storage's pool in an open runtime count 13
(one alone counts 1): the difference, ``measurement_offset``, is no statement of the
engine's and is subtracted from ``transactions`` (``measured_transactions`` keeps it).

Before schema v4, ``transactions`` minus ``storage_transactions`` were not the storage's
statements: each
``NOTIFY`` signals every backend LISTENing in the database, whatever its channels
(PostgreSQL's ``SignalBackends``), and each signalled backend reads the notification queue
in a transaction of its own. The runtime's LISTEN connection (cancel and queue channels)
is one such backend, so a run's ~11 commits carrying events cost ~11 more transactions,
one more per further process listening to the same database. Since v4 a write notifies
only a run some process follows (``followed_until``), so a run nobody follows elsewhere
costs its statements alone.
"""

from __future__ import annotations

import collections
import contextvars
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import _pgbench
import trio

import trioflow as tf

GOAL_TRANSACTIONS = 12
REPEATS = 3
FLOOR_TRANSACTIONS = _pgbench.CHAIN_STEPS
#: Storage methods the engine may call; each call is wrapped and counted.
COUNTED = (
    "create_run",
    "load_snapshot",
    "save_snapshot",
    "append_events",
    "read_events",
    "last_seq",
    "list_runs",
    "delete_run",
    "enqueue_run",
    "claim_runnable",
    "record_failed_attempt",
    "release_lease",
    "release_leases",
    "renew_leases",
)
_METHOD: contextvars.ContextVar[str] = contextvars.ContextVar("_METHOD", default="(other)")


class CallCounts:
    """Storage method calls and the database jobs each sent, counted while ``active``."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.round_trips: collections.Counter[str] = collections.Counter()
        #: Database jobs sent once the run ended (closing the runtime, idle claims).
        self.after_run: collections.Counter[str] = collections.Counter()
        self.active = False
        self._ended = False

    def stop(self) -> None:
        """The run ended: later jobs are counted apart, in ``after_run``."""
        self.active = False
        self._ended = True

    def instrument(self, storage: tf.PostgresStorage) -> None:
        for name in COUNTED:
            setattr(storage, name, self._wrap_method(name, getattr(storage, name)))
        pool = storage._pool  # the benchmark counts the pool's jobs
        pool.call = self._wrap_job(pool.call)  # type: ignore[method-assign]

    def _wrap_method(
        self, name: str, method: Callable[..., Awaitable[Any]]
    ) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(method)
        async def counted(*args: Any, **kwargs: Any) -> Any:
            if self.active:
                self.calls[name] += 1
            token = _METHOD.set(name)
            try:
                return await method(*args, **kwargs)
            finally:
                _METHOD.reset(token)

        return counted

    def _wrap_job(self, call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def counted(*args: Any, **kwargs: Any) -> Any:
            if self.active:
                self.round_trips[_METHOD.get()] += 1
            elif self._ended:
                self.after_run[_METHOD.get()] += 1
            return await call(*args, **kwargs)

        return counted


def xact_commit(dsn: str) -> int:
    rows = _pgbench.query(
        dsn, "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
    )
    return int(rows[0][0])


#: Transactions a reading adds to the next one: its connection's start-up and its query.
READING_COST = 2


def settled_xact_commit(dsn: str) -> int:
    """``xact_commit`` once every connection closed: a backend reports its statistics as
    it exits (an idle one may wait up to 10 s), so every count is read with nobody
    connected but the reading itself."""
    time.sleep(0.5)
    return xact_commit(dsn)


class _Box:
    value = 0


def measure_one(server: str, mode: str, repeats: int = REPEATS) -> dict[str, Any]:
    """One run executed ``mode``-wise on a fresh database: its transactions and calls.

    The runtime is opened, the run executed and the runtime closed between two readings;
    the same with no run (``idle``: opening and closing alone) is subtracted. Each is the
    least of ``repeats`` measurements: other transactions in the database (autovacuum
    visiting it) only ever add."""
    worker = mode == "queued"
    runs = {}
    for main in ("idle", mode):
        least: tuple[int, CallCounts] | None = None
        for _ in range(repeats):
            counted = _count(server, main, worker)
            if least is None or counted[0] < least[0]:
                least = counted
        assert least is not None
        runs[main] = least
    idle, _ = runs["idle"]
    total, counts = runs[mode]
    return {
        "transactions": total - idle,
        "storage_transactions": sum(counts.round_trips.values()),
        "calls": dict(sorted(counts.calls.items())),
        "round_trips": dict(sorted(counts.round_trips.items())),
    }


def _count(server: str, mode: str, worker: bool) -> tuple[int, CallCounts]:
    counts = CallCounts()
    polls = _Box()
    with _pgbench.fresh_database(server) as dsn:
        trio.run(_open_tables, dsn)
        before = settled_xact_commit(dsn)
        trio.run(_MODES[mode], dsn, counts, polls, worker)
        after = settled_xact_commit(dsn)
    # Jobs after the run ended (a worker's idle claims until it closed) are not the run's.
    closing = sum(counts.after_run.values())
    return after - before - READING_COST * (1 + polls.value) - closing, counts


async def _open_tables(dsn: str) -> None:
    async with tf.PostgresStorage(dsn):  # creates the tables: not counted
        pass


async def _idle(dsn: str, counts: CallCounts, polls: _Box, worker: bool) -> None:
    # Opening and closing a runtime with no run (subtracted from the other modes).
    workflow = _pgbench.build_chain10()
    storage = tf.PostgresStorage(dsn)
    counts.instrument(storage)
    async with storage, tf.open_runtime(storage=storage, workflows=[workflow], worker=worker):
        await trio.lowlevel.checkpoint()
        counts.stop()


#: Statements of the calibration mode: as many as a direct run's storage statements.
CALIBRATION_STATEMENTS = 12


async def _bare(dsn: str, counts: CallCounts, polls: _Box, worker: bool) -> None:
    # Calibration: bare ``SELECT 1``s sent one by one through the storage's pool in an
    # open runtime, as the engine's statements are.
    workflow = _pgbench.build_chain10()
    storage = tf.PostgresStorage(dsn)
    async with storage, tf.open_runtime(storage=storage, workflows=[workflow]):
        for _ in range(CALIBRATION_STATEMENTS):
            await storage._pool.call(lambda conn: conn.execute("SELECT 1").fetchall(), write=False)


async def _direct(dsn: str, counts: CallCounts, polls: _Box, worker: bool) -> None:
    workflow = _pgbench.build_chain10()
    storage = tf.PostgresStorage(dsn)
    counts.instrument(storage)
    async with storage, tf.open_runtime(storage=storage, workflows=[workflow]):
        counts.active = True
        run = await workflow.create_run()
        result = await run.start(input_data=0)
        counts.stop()
    if result.status != "success" or result.result != _pgbench.CHAIN_STEPS:
        raise RuntimeError(f"direct run ended {result.status}: {result.error!r}")


async def _queued(dsn: str, counts: CallCounts, polls: _Box, worker: bool) -> None:
    workflow = _pgbench.build_chain10()
    storage = tf.PostgresStorage(dsn)
    counts.instrument(storage)
    async with (
        storage,
        tf.open_runtime(storage=storage, workflows=[workflow], worker=True) as runtime,
    ):
        counts.active = True
        run_id = await runtime.enqueue(workflow, input_data=0)
        status = await _wait_done(dsn, run_id, polls)
        counts.stop()
    if status != "success":
        raise RuntimeError(f"queued run ended {status}")


async def _wait_done(dsn: str, run_id: str, polls: _Box) -> str:
    with trio.fail_after(30):
        while True:
            polls.value += 1
            # Read the row directly: a storage read would count as the engine's.
            rows = await trio.to_thread.run_sync(
                _pgbench.query, dsn, "SELECT status FROM trioflow_runs WHERE run_id = %s", run_id
            )
            if rows and rows[0][0] in ("success", "failed"):
                return str(rows[0][0])
            await trio.sleep(0.002)


_MODES = {"idle": _idle, "bare": _bare, "direct": _direct, "queued": _queued}


def measurement_offset(server: str, repeats: int = REPEATS) -> int:
    """Transactions counted beyond the statements sent when a runtime sends
    ``CALIBRATION_STATEMENTS`` bare ones (measured 1 on PostgreSQL 15, 0 for a single
    statement: not a statement of the engine's); subtracted from ``transactions``."""
    return int(measure_one(server, "bare", repeats)["transactions"]) - CALIBRATION_STATEMENTS


def measure(server: str, quick: bool = False) -> dict[str, Any]:
    """The row of the ``pg-run-transactions`` scenario (``quick``: one measurement of
    each, not the least of ``REPEATS``)."""
    repeats = 1 if quick else REPEATS
    direct = measure_one(server, "direct", repeats)
    queued = measure_one(server, "queued", repeats)
    offset = measurement_offset(server, repeats)
    transactions = direct["transactions"] - offset
    queued_transactions = queued["transactions"] - offset
    worst = max(transactions, queued_transactions)
    return {
        "transactions": transactions,
        "queued_transactions": queued_transactions,
        "measured_transactions": direct["transactions"],
        "measured_queued_transactions": queued["transactions"],
        "measurement_offset": offset,
        "storage_transactions": direct["storage_transactions"],
        "queued_storage_transactions": queued["storage_transactions"],
        "floor_transactions": FLOOR_TRANSACTIONS,
        "goal_transactions": GOAL_TRANSACTIONS,
        "meets_goal": worst <= GOAL_TRANSACTIONS,
        "direct_meets_goal": transactions <= GOAL_TRANSACTIONS,
        "calls": direct["calls"],
        "round_trips": direct["round_trips"],
        "queued_calls": queued["calls"],
        "queued_round_trips": queued["round_trips"],
        "postgres_version": _pgbench.server_version(server),
        **_pgbench.machine(),
    }
