"""PostgreSQL notifies only runs someone follows (schema v4, issue 15): every NOTIFY costs
every LISTENing backend of the database a transaction, so a write sends
``NOTIFY trioflow_events`` only while the run's ``followed_until`` is in the future, and a
process waiting on a run's log marks it. Cross-process following end to end is in
tests/test_postgres.py and tests/test_postgres_processes.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import trio
import trio.testing

import trioflow as tf
from trioflow._core import _chunks as ch
from trioflow._core._model import RunSnapshot
from trioflow.storage import _pg_schema
from trioflow.storage.postgres import SCHEMA_VERSION

TIMEOUT = 20.0


def sql(dsn: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def out(run_id: str, seq: int) -> ch.WorkflowStepOutput:
    return ch.WorkflowStepOutput(
        run_id=run_id, seq=seq, payload=ch.StepOutputPayload(output={"n": seq}, step_name="s")
    )


def snap(run_id: str) -> RunSnapshot:
    return RunSnapshot(run_id=run_id, workflow_id="wf", created_at=1, updated_at=1)


@asynccontextmanager
async def serving(storage: tf.PostgresStorage) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        await nursery.start(storage.serve, lambda run_id, reason: None)
        yield
        nursery.cancel_scope.cancel()


async def test_a_write_notifies_only_runs_marked_followed(postgres_db: str) -> None:
    async with tf.PostgresStorage(postgres_db) as storage:
        for run_id in ("unfollowed", "followed"):
            assert await storage.create_run(snap(run_id))
        sql(
            postgres_db,
            "UPDATE trioflow_runs SET followed_until = now() + interval '1 minute' "
            "WHERE run_id = 'followed'",
        )
        listener = await trio.to_thread.run_sync(
            lambda: psycopg.connect(postgres_db, autocommit=True)
        )
        try:
            listener.execute("LISTEN trioflow_events")
            assert await storage.save_snapshot(snap("unfollowed"), [out("unfollowed", 1)])
            await storage.append_events("unfollowed", [out("unfollowed", 2)])
            assert await storage.save_snapshot(snap("followed"), [out("followed", 1)])
            await storage.append_events("followed", [out("followed", 2)])

            def received() -> list[str]:
                # Notifications arrive in commit order: the unfollowed run's first.
                notes = listener.notifies(timeout=TIMEOUT, stop_after=2)
                return [note.payload for note in notes]

            assert await trio.to_thread.run_sync(received) == ["followed", "followed"]
        finally:
            listener.close()


async def test_a_watch_marks_the_run_then_wakes_and_the_next_write_notifies(
    postgres_db: str,
) -> None:
    async with (
        tf.PostgresStorage(postgres_db) as writer,
        tf.PostgresStorage(postgres_db) as follower,
        serving(follower),
    ):
        assert await writer.create_run(snap("r"))
        assert sql(postgres_db, "SELECT followed_until FROM trioflow_runs") == [(None,)]
        marked = trio.Event()
        follower.watch_events("r", marked)
        with trio.fail_after(TIMEOUT):
            # Woken once marked: what was written before the mark was not notified.
            await marked.wait()
        [(live,)] = sql(
            postgres_db, "SELECT followed_until > now() + interval '30 s' FROM trioflow_runs"
        )
        assert live
        grew = trio.Event()
        unwatch = follower.watch_events("r", grew)
        await trio.testing.wait_all_tasks_blocked()
        assert not grew.is_set()  # marked already: no second mark, no spurious wake
        assert await writer.save_snapshot(snap("r"), [out("r", 1)])
        with trio.fail_after(TIMEOUT):
            await grew.wait()
        unwatch()


async def test_a_watch_of_a_run_not_stored_yet_marks_it_at_a_later_watch(
    postgres_db: str,
) -> None:
    async with (
        tf.PostgresStorage(postgres_db) as writer,
        tf.PostgresStorage(postgres_db) as follower,
    ):
        tried: list[list[str]] = []
        attempted = trio.Event()
        mark = follower._mark_followed

        async def recording_mark(run_ids: list[str], ttl: float) -> list[str]:
            found = await mark(run_ids, ttl)
            tried.append(found)
            attempted.set()
            return found

        follower._mark_followed = recording_mark  # type: ignore[method-assign]
        async with serving(follower):
            early = trio.Event()
            unwatch = follower.watch_events("later", early)
            with trio.fail_after(TIMEOUT):
                await attempted.wait()
            await trio.testing.wait_all_tasks_blocked()
            unwatch()
            assert tried == [[]]
            assert not early.is_set()  # nothing to mark: the waiter polls
            assert await writer.create_run(snap("later"))
            marked = trio.Event()
            follower.watch_events("later", marked)
            with trio.fail_after(TIMEOUT):
                await marked.wait()
            assert tried == [[], ["later"]]
            [(live,)] = sql(postgres_db, "SELECT followed_until > now() FROM trioflow_runs")
            assert live


def _downgrade_pg_to_v3(dsn: str) -> None:
    with psycopg.connect(dsn) as conn, conn.transaction():
        conn.execute("ALTER TABLE trioflow_runs DROP COLUMN followed_until")
        conn.execute("UPDATE trioflow_meta SET value = '3' WHERE key = 'schema_version'")


async def test_a_v3_database_migrates_to_v4_and_a_suspended_run_resumes(
    postgres_db: str,
) -> None:
    assert SCHEMA_VERSION == 4 == len(_pg_schema.MIGRATIONS)

    async def ask(ctx: Any) -> Any:
        if ctx.resume_data is None:
            return await ctx.suspend({"why": "approve"})
        return {"ok": ctx.resume_data["ok"], "input": ctx.input_data}

    wf = tf.create_workflow(id="approve").then(tf.create_step(id="ask", execute=ask)).commit()
    async with tf.PostgresStorage(postgres_db) as storage:
        async with tf.open_runtime(storage=storage, workflows=[wf]) as runtime:
            run = await runtime.create_run(wf)
            assert (await run.start(input_data=7)).status == "suspended"
        before = await storage.load_snapshot(run.run_id)
    await trio.to_thread.run_sync(_downgrade_pg_to_v3, postgres_db)
    async with tf.PostgresStorage(postgres_db) as storage:
        assert sql(postgres_db, "SELECT value FROM trioflow_meta WHERE key = 'schema_version'") == [
            (str(SCHEMA_VERSION),)
        ]
        assert sql(postgres_db, "SELECT followed_until FROM trioflow_runs") == [(None,)]
        assert await storage.load_snapshot(run.run_id) == before
        async with tf.open_runtime(storage=storage, workflows=[wf]) as runtime:
            again = await runtime.create_run(wf, run_id=run.run_id)
            result = await again.resume(resume_data={"ok": True}, step="ask")
            assert result.status == "success", result
            assert result.result == {"ok": True, "input": 7}
