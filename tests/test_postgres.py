"""PostgreSQL coordination in one process (issue 8): leases, fencing, the run queue and
workers, cross-process cancel and streaming over LISTEN/NOTIFY, schema checks.

Two ``PostgresStorage`` objects on one database are two "processes" for every purpose that
matters here (each has its own ``owner_id``, connections, leases and listener), which
keeps these tests fast; tests/test_postgres_processes.py does the same with real
processes. Real clocks with ``trio.fail_after`` guards: the database is real.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import psycopg
import pytest
import trio

import trioflow as tf
from trioflow._core._model import RunSnapshot
from trioflow.storage.postgres import SCHEMA_VERSION

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


# --- workflows -----------------------------------------------------------------------


class Gate:
    """Steps block on ``gate.opened`` so the tests decide when they go on."""

    def __init__(self) -> None:
        self.opened = trio.Event()
        self.entered = trio.Event()
        self.calls: list[str] = []


def gated_workflow(gate: Gate, wf_id: str = "gated") -> tf.Workflow:
    async def first(ctx: Any) -> int:
        gate.calls.append("first")
        return int(ctx.input_data) + 1

    async def wait(ctx: Any) -> int:
        gate.calls.append("wait")
        gate.entered.set()
        await gate.opened.wait()
        return int(ctx.input_data) * 10

    return (
        tf.create_workflow(id=wf_id)
        .then(tf.create_step(id="first", execute=first))
        .then(tf.create_step(id="wait", execute=wait))
        .commit()
    )


def adder(wf_id: str = "adder", steps: int = 3) -> tf.Workflow:
    wf = tf.create_workflow(id=wf_id)
    for i in range(steps):

        async def add(ctx: Any) -> int:
            return int(ctx.input_data) + 1

        wf = wf.then(tf.create_step(id=f"s{i}", execute=add))
    return wf.commit()


async def wait_until(predicate: Callable[[], Any], what: str) -> None:
    with trio.fail_after(TIMEOUT):
        while True:
            if await predicate():
                return
            await trio.sleep(0.02)  # the database changes under us: poll it


# --- leases and fencing ------------------------------------------------------------------


async def test_an_execution_holds_a_lease_released_when_it_suspends_or_ends(
    postgres_db: str,
) -> None:
    gate = Gate()
    wf = gated_workflow(gate)
    async with pg(postgres_db) as storage, tf.open_runtime(storage=storage) as _:
        run = await wf.create_run()
        out = await run.stream(input_data=1)
        with trio.fail_after(TIMEOUT):
            await gate.entered.wait()
        assert storage.held_leases == {run.run_id}
        ((owner, token),) = sql(
            postgres_db,
            "SELECT lease_owner, fencing_token FROM trioflow_runs WHERE run_id = %s",
            run.run_id,
        )
        assert owner == storage.owner_id
        assert token == 1
        gate.opened.set()
        result = await out.result()
        assert result.status == "success"
        assert result.result == 20
        assert storage.held_leases == frozenset()
        assert sql(
            postgres_db, "SELECT lease_owner FROM trioflow_runs WHERE run_id = %s", run.run_id
        ) == [(None,)]


async def test_restart_elsewhere_is_refused_while_the_owner_lease_is_live(
    postgres_db: str,
) -> None:
    gate = Gate()
    wf = gated_workflow(gate)
    async with (
        pg(postgres_db, lease_ttl=30) as a,
        pg(postgres_db) as b,
        tf.open_runtime(storage=a) as _,
    ):
        run = await wf.create_run()
        out = await run.stream(input_data=1)
        with trio.fail_after(TIMEOUT):
            await gate.entered.wait()
        async with tf.open_runtime(storage=b, workflows=[wf]) as rt_b:
            other = await rt_b.create_run("gated", run_id=run.run_id)
            with pytest.raises(tf.RunNotActiveError):
                await other.restart()
        assert b.held_leases == frozenset()
        assert a.held_leases == {run.run_id}
        gate.opened.set()
        with trio.fail_after(TIMEOUT):
            assert (await out.result()).result == 20
        assert gate.calls == ["first", "wait"]


async def test_a_late_write_after_the_lease_was_taken_over_is_fenced_out(
    postgres_db: str,
) -> None:
    async with pg(postgres_db, lease_ttl=0.2) as a, pg(postgres_db) as b:
        base = RunSnapshot(
            run_id="r1", workflow_id="wf", status=tf.RunStatus.PENDING, created_at=1, updated_at=1
        )
        assert await a.create_run(base)
        running = attrs.evolve(base, status=tf.RunStatus.RUNNING, updated_at=2)
        assert await a.save_snapshot(running, expected_status=tf.RunStatus.PENDING)
        # b cannot claim while a's lease is live ...
        assert not await b.save_snapshot(running, expected_status=tf.RunStatus.RUNNING)
        await trio.sleep(0.3)  # a's lease (0.2 s, never renewed here) lapses
        taken = attrs.evolve(running, updated_at=3)
        assert await b.save_snapshot(taken, expected_status=tf.RunStatus.RUNNING)
        assert b.held_leases == {"r1"}
        stale = attrs.evolve(running, status=tf.RunStatus.SUCCESS, result=1, updated_at=4)
        with pytest.raises(tf.LeaseLostError):
            await a.save_snapshot(stale, expected_status=[tf.RunStatus.RUNNING])
        chunk = tf.from_wire(
            {"type": "workflow-start", "runId": "r1", "seq": 1, "payload": {"workflowId": "wf"}}
        )
        with pytest.raises(tf.LeaseLostError):
            await a.append_events("r1", [chunk])
        stored = await b.load_snapshot("r1")
        assert stored is not None
        assert stored.status == "running"
        assert stored.updated_at == 3
        assert await b.last_seq("r1") == 0
        # b goes on writing normally.
        assert await b.save_snapshot(attrs.evolve(taken, updated_at=5), [chunk])
        assert await a.read_events("r1") == [chunk]


# --- queue and workers ---------------------------------------------------------------------


async def test_start_async_queues_a_run_that_a_worker_executes(postgres_db: str) -> None:
    wf = adder()
    async with (
        pg(postgres_db) as producer_storage,
        pg(postgres_db) as worker_storage,
        tf.open_runtime(storage=producer_storage, workflows=[wf]) as producer,
    ):
        run = await wf.create_run()
        await run.start_async(input_data=10)
        state = await producer.get_run_state(run.run_id)
        assert state.status == "pending"
        assert state.input == 10
        async with tf.open_runtime(
            storage=worker_storage, workflows=[wf], worker=True, worker_poll_interval=30
        ) as worker_rt:

            async def done() -> bool:
                return (await producer.get_run_state(run.run_id)).status == "success"

            await wait_until(done, "the worker finished the run")
            assert worker_rt.worker is not None
            assert worker_rt.worker.statistics().started == 1
        state = await producer.get_run_state(run.run_id)
        assert state.result == 13
        types = [c.type for c in await producer_storage.read_events(run.run_id)]
        assert types[0] == "workflow-start"
        assert types[-1] == "workflow-finish"
        assert types.count("workflow-step-result") == 3


async def test_enqueue_wakes_an_idle_worker_by_notification(postgres_db: str) -> None:
    wf = adder()
    async with (
        pg(postgres_db) as worker_storage,
        pg(postgres_db) as producer_storage,
        tf.open_runtime(
            storage=worker_storage, workflows=[wf], worker=True, worker_poll_interval=3600
        ),
        tf.open_runtime(storage=producer_storage, workflows=[wf]) as producer,
    ):
        # The worker polls once an hour: only the NOTIFY can get it going in time.
        ids = [await producer.enqueue(wf, input_data=i) for i in range(5)]
        for run_id in ids:

            async def done(run_id: str = run_id) -> bool:
                return (await producer.get_run_state(run_id)).status == "success"

            await wait_until(done, f"run {run_id} done")
        results = sorted([(await producer.get_run_state(r)).result for r in ids])
        assert results == [3, 4, 5, 6, 7]


async def test_a_worker_takes_over_runs_of_a_runtime_that_closed(postgres_db: str) -> None:
    gate = Gate()
    wf = gated_workflow(gate)
    async with pg(postgres_db, lease_ttl=30) as a, pg(postgres_db) as b:
        async with tf.open_runtime(storage=a) as _:
            run = await wf.create_run()
            await run.stream(input_data=1)
            with trio.fail_after(TIMEOUT):
                await gate.entered.wait()
        # Closing the runtime released the lease at once (not in 30 s).
        assert sql(
            postgres_db,
            "SELECT status, lease_owner FROM trioflow_runs WHERE run_id = %s",
            run.run_id,
        ) == [("running", None)]
        gate.opened.set()
        async with tf.open_runtime(storage=b, workflows=[wf], worker=True) as rt:

            async def done() -> bool:
                return (await rt.get_run_state(run.run_id)).status == "success"

            await wait_until(done, "taken over")
        assert gate.calls == ["first", "wait", "wait"]  # at-least-once for "wait" only
        assert (await rt.get_run_state(run.run_id)).result == 20


async def test_a_queued_run_that_cannot_begin_leaves_the_queue(postgres_db: str) -> None:
    def refuse(info: Any) -> None:
        raise RuntimeError("not today")

    async def one(ctx: Any) -> int:
        return 1

    wf = tf.create_workflow(id="refused", on_start=refuse)
    wf = wf.then(tf.create_step(id="s", execute=one)).commit()
    async with (
        pg(postgres_db) as storage,
        tf.open_runtime(storage=storage, workflows=[wf], worker=True) as rt,
    ):
        run_id = await rt.enqueue(wf, input_data=None)
        assert rt.worker is not None

        async def gave_up() -> bool:
            assert rt.worker is not None
            return rt.worker.statistics().failed_to_begin == 1

        await wait_until(gave_up, "the worker gave the run up")
        rows = sql(
            postgres_db,
            "SELECT status, queued, lease_owner FROM trioflow_runs WHERE run_id = %s",
            run_id,
        )
        assert rows == [("pending", False, None)]


async def test_queueing_needs_a_shared_storage() -> None:
    wf = adder()
    async with tf.open_runtime() as _:
        run = await wf.create_run()
        with pytest.raises(TypeError, match="PostgresStorage"):
            await run.start_async(input_data=1)
    with pytest.raises(TypeError, match="worker=True"):
        async with tf.open_runtime(worker=True):
            pass  # pragma: no cover


async def test_start_async_validates_input_and_refuses_a_second_queueing(
    postgres_db: str,
) -> None:
    @attrs.frozen
    class In:
        n: int

    async def step(ctx: Any) -> int:
        return int(ctx.input_data.n)

    wf = (
        tf.create_workflow(id="typed", input_schema=In)
        .then(tf.create_step(id="s", execute=step))
        .commit()
    )
    async with pg(postgres_db) as storage, tf.open_runtime(storage=storage) as rt:
        run = await wf.create_run()
        with pytest.raises(tf.ValidationError) as info:
            await run.start_async(input_data={"n": "x"})
        assert "n" in str(info.value)
        assert (await rt.get_run_state(run.run_id)).status == "pending"
        await run.start_async(input_data={"n": 1})
        with pytest.raises(tf.RunAlreadyStartedError):
            await run.start_async(input_data={"n": 1})
        again = await rt.create_run(wf, run_id=run.run_id)
        with pytest.raises(tf.RunAlreadyStartedError):
            await again.start_async(input_data={"n": 2})


# --- cancel and streaming across processes -------------------------------------------


async def test_cancel_from_another_process_stops_a_blocked_step_at_once(
    postgres_db: str,
) -> None:
    gate = Gate()
    wf = gated_workflow(gate)
    # Leases are renewed every 20 s: a prompt stop can only come from the NOTIFY.
    async with (
        pg(postgres_db, lease_ttl=60) as a,
        pg(postgres_db) as b,
        tf.open_runtime(storage=a) as _,
        tf.open_runtime(storage=b, workflows=[wf]) as rt_b,
    ):
        run = await wf.create_run()
        out = await run.stream(input_data=1)
        with trio.fail_after(TIMEOUT):
            await gate.entered.wait()
        remote = await rt_b.create_run("gated", run_id=run.run_id)
        with trio.fail_after(5):
            await remote.cancel()
            result = await out.result()
        assert result.status == "canceled"
        types = [c.type for c in await b.read_events(run.run_id)]
        assert types[-2:] == ["workflow-canceled", "workflow-finish"]
        assert (await rt_b.get_run_state(run.run_id)).status == "canceled"
        assert a.held_leases == frozenset()


async def test_a_follower_in_another_process_is_woken_by_notifications(
    postgres_db: str,
) -> None:
    steps_done = trio.Event()
    release = trio.Event()

    async def talk(ctx: Any) -> str:
        for i in range(3):
            await ctx.writer.write({"i": i})
        steps_done.set()
        await release.wait()
        return "done"

    wf = tf.create_workflow(id="talker").then(tf.create_step(id="talk", execute=talk)).commit()
    async with (
        pg(postgres_db) as a,
        pg(postgres_db) as b,
        tf.open_runtime(storage=a) as _,
        tf.open_runtime(storage=b, workflows=[wf]) as rt_b,
    ):
        run = await wf.create_run()
        await run.stream(input_data=None)
        follower = await rt_b.create_run("talker", run_id=run.run_id)
        seen: list[str] = []
        with trio.fail_after(TIMEOUT):
            async with follower.observe_stream() as sub:
                async for chunk in sub:
                    seen.append(chunk.type)
                    if (
                        chunk.type == "workflow-step-output"
                        and len([t for t in seen if t == "workflow-step-output"]) == 3
                    ):
                        release.set()
        assert seen[0] == "workflow-start"
        assert seen[-1] == "workflow-finish"
        assert seen.count("workflow-step-output") == 3
        assert steps_done.is_set()


# --- schema ----------------------------------------------------------------------------------


async def test_a_newer_schema_is_refused_and_left_untouched(postgres_db: str) -> None:
    async with pg(postgres_db) as _:
        pass
    sql(
        postgres_db,
        "UPDATE trioflow_meta SET value = %s WHERE key = 'schema_version'",
        str(SCHEMA_VERSION + 1),
    )
    with pytest.raises(tf.StorageError, match="newer"):
        async with pg(postgres_db) as _:
            pass  # pragma: no cover
    assert sql(postgres_db, "SELECT value FROM trioflow_meta WHERE key = 'schema_version'") == [
        (str(SCHEMA_VERSION + 1),)
    ]


async def test_tables_of_another_application_are_refused(postgres_db: str) -> None:
    sql(postgres_db, "CREATE TABLE trioflow_runs (x int)")
    with pytest.raises(tf.StorageError, match="another application"):
        async with pg(postgres_db) as _:
            pass  # pragma: no cover
    assert sql(postgres_db, "SELECT to_regclass('trioflow_meta') IS NULL") == [(True,)]


async def test_unreachable_server_is_a_storage_error(tmp_path: Path) -> None:
    storage = tf.PostgresStorage(
        f"host={tmp_path} port=1 user=nobody dbname=nothing password=secret", connect_timeout=2
    )
    with pytest.raises(tf.StorageError) as info:
        await storage.open()
    assert "secret" not in str(info.value)


def test_bad_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="dsn"):
        tf.PostgresStorage("")
    with pytest.raises(ValueError, match="pool_size"):
        tf.PostgresStorage("dbname=x", pool_size=0)
    with pytest.raises(ValueError, match="lease_ttl"):
        tf.PostgresStorage("dbname=x", lease_ttl=0)


def steal_lease(dsn: str, run_id: str) -> None:
    """What another process's claim does to the row, after this one's lease lapsed."""
    sql(
        dsn,
        "UPDATE trioflow_runs SET fencing_token = fencing_token + 1, lease_owner = 'thief', "
        "lease_expires_at = now() + interval '1 hour' WHERE run_id = %s",
        run_id,
    )


async def test_an_execution_fenced_out_fails_with_lease_lost_and_writes_nothing(
    postgres_db: str,
) -> None:
    gate = Gate()
    wf = gated_workflow(gate)
    async with pg(postgres_db, lease_ttl=60) as storage, tf.open_runtime(storage=storage) as _:
        run = await wf.create_run()
        out = await run.stream(input_data=1)
        with trio.fail_after(TIMEOUT):
            await gate.entered.wait()
        before = await storage.load_snapshot(run.run_id)
        steal_lease(postgres_db, run.run_id)
        gate.opened.set()
        with trio.fail_after(TIMEOUT), pytest.raises(tf.LeaseLostError):
            await out.result()
        after = await storage.load_snapshot(run.run_id)
        assert after is not None
        assert after == before
        assert "wait" not in after.steps
        assert sql(
            postgres_db, "SELECT lease_owner FROM trioflow_runs WHERE run_id = %s", run.run_id
        ) == [("thief",)]


async def test_a_lost_lease_found_at_renewal_stops_the_blocked_step(postgres_db: str) -> None:
    gate = Gate()
    stopped: list[str] = []

    async def wait(ctx: Any) -> int:
        gate.entered.set()
        try:
            await trio.sleep_forever()
        finally:
            stopped.append("wait")

    wf = tf.create_workflow(id="blocked").then(tf.create_step(id="wait", execute=wait)).commit()
    async with pg(postgres_db, lease_ttl=0.3) as storage, tf.open_runtime(storage=storage) as _:
        run = await wf.create_run()
        out = await run.stream(input_data=1)
        with trio.fail_after(TIMEOUT):
            await gate.entered.wait()
        steal_lease(postgres_db, run.run_id)
        with trio.fail_after(TIMEOUT), pytest.raises(tf.LeaseLostError):
            await out.result()
        assert stopped == ["wait"]
        assert storage.held_leases == frozenset()


async def test_concurrent_resumes_from_five_processes_claim_exactly_once(
    postgres_db: str,
) -> None:
    executed: list[str] = []

    async def approve(ctx: Any) -> str:
        if ctx.resume_data is None:
            return str(await ctx.suspend({"ask": True}))
        executed.append(str(ctx.resume_data))
        return str(ctx.resume_data)

    wf = tf.create_workflow(id="approve").then(tf.create_step(id="approve", execute=approve))
    wf = wf.commit()
    async with pg(postgres_db) as first, tf.open_runtime(storage=first) as _:
        run = await wf.create_run()
        assert (await run.start(input_data=None)).status == "suspended"
    outcomes: dict[str, str] = {}

    async def resumer(name: str) -> None:
        async with pg(postgres_db) as storage, tf.open_runtime(storage=storage) as rt:
            mine = await rt.create_run(wf, run_id=run.run_id)
            try:
                result = await mine.resume(resume_data=name)
            except (tf.ResumeAlreadyClaimedError, tf.NotSuspendedError) as exc:
                outcomes[name] = type(exc).__name__
            else:
                outcomes[name] = f"{result.status}:{result.result}"

    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(resumer, f"p{i}")
    winners = [name for name, outcome in outcomes.items() if outcome.startswith("success")]
    assert len(winners) == 1, outcomes
    assert executed == winners
    assert outcomes[winners[0]] == f"success:{winners[0]}"
    async with pg(postgres_db) as storage:
        log = await storage.read_events(run.run_id)
    assert [c.seq for c in log] == list(range(1, len(log) + 1))
    assert [c.type for c in log].count("workflow-finish") == 2  # suspended, then success


async def test_a_queued_run_taken_over_mid_way_is_restarted_not_begun_again(
    postgres_db: str,
) -> None:
    gate = Gate()
    wf = gated_workflow(gate)
    async with pg(postgres_db) as producer_storage, pg(postgres_db, lease_ttl=30) as a:
        async with tf.open_runtime(storage=producer_storage, workflows=[wf]) as producer:
            run_id = await producer.enqueue(wf, input_data=1)
        async with tf.open_runtime(storage=a, workflows=[wf], worker=True) as first:
            with trio.fail_after(TIMEOUT):
                await gate.entered.wait()
            assert first.worker is not None
            assert first.worker.statistics().started == 1
        # The first worker closed mid-step and handed the run back.
        gate.opened.set()
        async with (
            pg(postgres_db) as b,
            tf.open_runtime(storage=b, workflows=[wf], worker=True, worker_poll_interval=30) as rt,
        ):

            async def done() -> bool:
                return (await rt.get_run_state(run_id)).status == "success"

            await wait_until(done, "taken over")
            assert rt.worker is not None
            stats = rt.worker.statistics()
            assert (stats.started, stats.restarted, stats.failed_to_begin) == (0, 1, 0)
        assert gate.calls == ["first", "wait", "wait"]
