"""Issue 12, engine findings on PostgreSQL: a worker must not loop hot on a poisoned run.

A run whose executions die of a storage error is retried after a stored backoff, and after
``worker_max_attempts`` attempts (counted in the database, across workers) it ends
``failed`` with the error, without running its steps again. Real clocks with
``trio.fail_after`` guards: the database (and its ``now()``) is real.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import psycopg
import pytest
import trio

import trioflow as tf

TIMEOUT = 20.0


@asynccontextmanager
async def pg(dsn: str, **options: Any) -> AsyncIterator[tf.PostgresStorage]:
    storage = tf.PostgresStorage(dsn, **options)
    async with storage:
        yield storage


def sql(dsn: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


async def wait_until(predicate: Callable[[], Any], what: str) -> None:
    with trio.fail_after(TIMEOUT):
        while True:
            if await predicate():
                return
            await trio.sleep(0.02)  # the database changes under us: poll it


class PoisonedWrites:
    """A PostgresStorage that refuses every snapshot recording step ``s`` as done: each
    execution runs ``s`` (its side effect) and dies of the storage error."""

    def __init__(self, inner: tf.PostgresStorage) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def save_snapshot(self, snapshot: Any, events: Any = (), **kwargs: Any) -> bool:
        if (snapshot.steps.get("s") or {}).get("status") == "success":
            await trio.lowlevel.checkpoint()
            raise tf.StorageError("the disk is on fire")
        return bool(await self.inner.save_snapshot(snapshot, events, **kwargs))


def poisoned_workflow(calls: list[int]) -> tf.Workflow:
    async def side_effect(ctx: tf.StepContext) -> int:
        calls.append(1)
        await trio.lowlevel.checkpoint()
        return 1

    return tf.create_workflow(id="poisoned").then(tf.create_step(id="s", execute=side_effect))


async def _stored(dsn: str, run_id: str) -> tuple[Any, ...]:
    rows = sql(
        dsn,
        "SELECT status, attempts, retry_at > now(), lease_owner FROM trioflow_runs "
        "WHERE run_id = %s",
        run_id,
    )
    return rows[0]


async def test_a_poisoned_run_fails_after_max_attempts(postgres_db: str) -> None:
    calls: list[int] = []
    wf = poisoned_workflow(calls)
    async with pg(postgres_db) as storage:
        poisoned = PoisonedWrites(storage)
        async with tf.open_runtime(
            storage=poisoned,  # type: ignore[arg-type]
            workflows=[wf],
            worker=True,
            worker_poll_interval=0.05,
            worker_max_attempts=3,
            worker_retry_delay=0.05,
        ) as rt:
            run_id = await rt.enqueue(wf)

            async def failed() -> bool:
                return (await rt.get_run_state(run_id)).status == "failed"

            await wait_until(failed, "the run failed")
            state = await rt.get_run_state(run_id)
        assert len(calls) == 3
        assert state.error is not None
        assert "the disk is on fire" in state.error.message
        assert state.error.name == "StorageError"
        events = await storage.read_events(run_id)
        assert events[-1].type == "workflow-finish"
        assert events[-1].payload.workflow_status == "failed"
        status, attempts, _, owner = await _stored(postgres_db, run_id)
        assert (status, attempts, owner) == ("failed", 0, None)


async def test_a_failed_attempt_is_stored_with_a_backoff_and_survives_the_worker(
    postgres_db: str,
) -> None:
    calls: list[int] = []
    wf = poisoned_workflow(calls)
    options: dict[str, Any] = {
        "workflows": [wf],
        "worker": True,
        "worker_poll_interval": 0.05,
        "worker_max_attempts": 2,
    }
    async with pg(postgres_db) as first:
        async with tf.open_runtime(
            storage=PoisonedWrites(first),  # type: ignore[arg-type]
            worker_retry_delay=3600,
            **options,
        ) as rt:
            run_id = await rt.enqueue(wf)

            async def attempted() -> bool:
                return (await _stored(postgres_db, run_id))[1] == 1

            await wait_until(attempted, "one failed attempt stored")
            # Not claimed again during the backoff: no hot loop.
            status, attempts, backing_off, owner = await _stored(postgres_db, run_id)
            assert (status, attempts, backing_off, owner) == ("running", 1, True, None)
            assert len(calls) == 1
    # Another worker process, after the backoff: the stored count goes on.
    sql(postgres_db, "UPDATE trioflow_runs SET retry_at = now() WHERE run_id = %s", run_id)
    async with pg(postgres_db) as second:
        async with tf.open_runtime(
            storage=PoisonedWrites(second),  # type: ignore[arg-type]
            worker_retry_delay=0.05,
            **options,
        ) as rt:

            async def failed() -> bool:
                return (await rt.get_run_state(run_id)).status == "failed"

            await wait_until(failed, "the run failed")
    assert len(calls) == 2


async def test_a_run_at_max_attempts_fails_without_running_again(postgres_db: str) -> None:
    calls: list[int] = []
    wf = poisoned_workflow(calls)
    async with pg(postgres_db) as storage:
        async with tf.open_runtime(storage=storage, workflows=[wf]) as rt:
            run = await rt.create_run(wf)
        # A run left running, whose executions already died 5 times (the give-up could
        # not be written): the next worker ends it without executing it.
        snapshot = await storage.load_snapshot(run.run_id)
        assert snapshot is not None
        running = attrs.evolve(snapshot, status=tf.RunStatus.RUNNING)
        assert await storage.save_snapshot(running)
        await storage.release_lease(run.run_id)
        sql(
            postgres_db,
            "UPDATE trioflow_runs SET attempts = 5, last_error = %s WHERE run_id = %s",
            '{"message": "the disk is on fire", "name": "StorageError"}',
            run.run_id,
        )
        async with tf.open_runtime(
            storage=storage, workflows=[wf], worker=True, worker_poll_interval=0.05
        ) as rt:

            async def failed() -> bool:
                return (await rt.get_run_state(run.run_id)).status == "failed"

            await wait_until(failed, "the run failed")
            state = await rt.get_run_state(run.run_id)
    assert calls == []
    assert state.error is not None
    assert "the disk is on fire" in state.error.message


@pytest.mark.parametrize(
    "options",
    [{"worker_max_attempts": 0}, {"worker_retry_delay": -1}, {"worker_retry_delay": float("nan")}],
)
async def test_the_attempt_options_are_checked(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="worker_"):
        async with tf.open_runtime(**options):
            pass


class Boom(BaseException):
    """Not an Exception."""


async def test_on_start_raising_a_base_exception_does_not_kill_the_worker(
    postgres_db: str,
) -> None:
    def refuse(info: Any) -> None:
        raise Boom("on_start")

    async def one(ctx: tf.StepContext) -> int:
        await trio.lowlevel.checkpoint()
        return 1

    wf = tf.create_workflow(id="refused", on_start=refuse)
    wf = wf.then(tf.create_step(id="s", execute=one)).commit()
    fine = tf.create_workflow(id="fine").then(tf.create_step(id="s", execute=one)).commit()
    async with (
        pg(postgres_db) as storage,
        tf.open_runtime(
            storage=storage, workflows=[wf, fine], worker=True, worker_poll_interval=0.05
        ) as rt,
    ):
        refused = await rt.enqueue(wf)
        accepted = await rt.enqueue(fine)

        async def done() -> bool:
            assert rt.worker is not None
            return (await rt.get_run_state(accepted)).status == "success" and (
                rt.worker.statistics().failed_to_begin == 1
            )

        await wait_until(done, "the refused run given back, the other run ran")
        assert sql(
            postgres_db, "SELECT status, queued FROM trioflow_runs WHERE run_id = %s", refused
        ) == [("pending", False)]
