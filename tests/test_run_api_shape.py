"""The run API after the layering move (issue 15 part 5): the public Workflow is the graph
plus ``create_run``; internals are private; a queued run costs no redundant storage call;
``observe_stream(follow=True)`` ends when this process's execution of the run dies."""

from __future__ import annotations

import inspect
from collections import Counter
from typing import Any

import attrs
import pytest
import trio

import trioflow as tf
from trioflow import _workflow
from trioflow._run import Run
from trioflow._runtime import Runtime
from trioflow._worker import Worker
from trioflow.storage._protocol import ClaimedRun, QueueStorage


async def _one(ctx: tf.StepContext) -> int:
    await trio.lowlevel.checkpoint()
    return 1


def _wf(id: str = "w") -> tf.Workflow:
    return tf.create_workflow(id=id).then(tf.create_step(id="s", execute=_one)).commit()


# ------------------------------------------------------------------ the public Workflow


def test_the_public_workflow_is_the_graph_plus_create_run() -> None:
    wf = _wf()
    assert type(wf) is tf.Workflow
    assert isinstance(wf, _workflow.WorkflowGraph)
    assert repr(wf) == "<Workflow 'w' (1 entries)>"
    assert inspect.iscoroutinefunction(tf.Workflow.create_run)
    assert not hasattr(_workflow.WorkflowGraph, "create_run")
    # Built directly; the graph module has no builder of its own (nothing can build a
    # workflow that cannot run).
    assert type(tf.Workflow(id="x")) is tf.Workflow
    assert not hasattr(_workflow, "create_workflow")
    # The builder methods keep the public type.
    assert type(tf.create_workflow(id="z").then(tf.create_step(id="s", execute=_one))) is (
        tf.Workflow
    )


async def test_create_run_of_the_public_workflow_and_of_a_nested_one() -> None:
    inner = _wf("inner")
    outer = tf.create_workflow(id="outer").then(inner).commit()
    async with tf.open_runtime():
        result = await (await outer.create_run()).start()
    assert result.status is tf.RunStatus.SUCCESS
    assert result.result == 1


def test_internals_are_private() -> None:
    for name in ("hub_for", "spawn", "run_callbacks"):
        assert not hasattr(Runtime, name), f"Runtime.{name}"
        assert hasattr(Runtime, "_" + name), f"Runtime._{name}"
    assert not hasattr(Run, "begin_restart")
    assert hasattr(Run, "_begin_restart")


def test_run_outputs_say_where_users_import_them_from() -> None:
    for cls in (tf.Run, tf.RunOutput, tf.LegacyRunOutput, tf.LegacyEvent, tf.Workflow):
        assert cls.__module__ == "trioflow", cls


# ------------------------------------------------------------------ queued runs


class _QueueMemory(tf.MemoryStorage):
    """A MemoryStorage with the run queue of QueueStorage (enough for one worker in one
    process), counting the storage calls each method makes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()
        self._queued: list[str] = []
        self._watchers: list[trio.Event] = []

    async def load_snapshot(self, run_id: str) -> Any:
        self.calls["load_snapshot"] += 1
        return await super().load_snapshot(run_id)

    async def create_run(self, snapshot: Any) -> bool:
        self.calls["create_run"] += 1
        return await super().create_run(snapshot)

    async def enqueue_run(self, snapshot: Any) -> bool:
        self.calls["enqueue_run"] += 1
        if not await super().create_run(snapshot):
            stored = await super().load_snapshot(snapshot.run_id)
            if stored is None or stored.status is not tf.RunStatus.PENDING:
                return False
            if snapshot.run_id in self._queued:
                return False
            await super().save_snapshot(snapshot, expected_status=tf.RunStatus.PENDING)
        self._queued.append(snapshot.run_id)
        for event in self._watchers:
            event.set()
        return True

    async def claim_runnable(self, workflow_ids: Any, *, limit: int) -> list[ClaimedRun]:
        self.calls["claim_runnable"] += 1
        claimed = []
        while self._queued and len(claimed) < limit:
            run_id = self._queued.pop(0)
            snapshot = await super().load_snapshot(run_id)
            assert snapshot is not None
            claimed.append(ClaimedRun(snapshot=snapshot, queued=True, fencing_token=1))
        return claimed

    def watch_queue(self, event: trio.Event) -> Any:
        self._watchers.append(event)
        return lambda: self._watchers.remove(event)

    async def release_lease(self, run_id: str, *, unqueue: bool = False) -> None:
        await trio.lowlevel.checkpoint()

    async def release_leases(self) -> None:
        await trio.lowlevel.checkpoint()

    def forget_lost_lease(self, run_id: str) -> None:
        pass

    async def serve(
        self, on_stop: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        await trio.sleep_forever()


def test_the_counting_queue_storage_is_a_queue_storage() -> None:
    assert isinstance(_QueueMemory(), QueueStorage)


async def test_a_queued_run_costs_one_enqueue_and_no_load_after_its_claim() -> None:
    storage = _QueueMemory()
    wf = _wf()
    async with tf.open_runtime(storage=storage, workflows=[wf]) as rt:
        run_id = await rt.enqueue(wf)
        assert storage.calls == Counter(enqueue_run=1), "enqueue: one round trip"
        storage.calls.clear()
        worker = Worker(rt, storage, capacity=1, poll_interval=60)
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            run = await rt.create_run(wf, run_id=run_id)
            with trio.fail_after(10):
                async for _ in run.observe_stream():
                    pass
            nursery.cancel_scope.cancel()
    # The claim returned the snapshot: the worker does not load it again (the
    # create_run above is this test's own load).
    assert storage.calls["load_snapshot"] == 1
    assert (await storage.load_snapshot(run_id)).status is tf.RunStatus.SUCCESS


async def test_enqueue_with_a_run_id_still_refuses_a_started_run() -> None:
    storage = _QueueMemory()
    wf = _wf()
    async with tf.open_runtime(storage=storage, workflows=[wf]) as rt:
        run = await wf.create_run(run_id="r1")
        await run.start()
        with pytest.raises(tf.RunAlreadyStartedError):
            await rt.enqueue(wf, run_id="r1")
        with pytest.raises(tf.RunAlreadyStartedError):
            await rt.enqueue(wf, run_id=await rt.enqueue(wf))


async def test_enqueue_validates_before_storing() -> None:
    storage = _QueueMemory()

    async def echo(ctx: tf.StepContext) -> int:
        await trio.lowlevel.checkpoint()
        return int(ctx.input_data)

    wf = (
        tf.create_workflow(id="typed", input_schema=int)
        .then(tf.create_step(id="s", execute=echo))
        .commit()
    )
    async with tf.open_runtime(storage=storage, workflows=[wf]) as rt:
        with pytest.raises(tf.ValidationError):
            await rt.enqueue(wf, input_data="not an int")
    assert storage.calls == Counter()


# ------------------------------------------------------------------ observe_stream


class _RefusingMemory(tf.MemoryStorage):
    refuse = False

    async def save_snapshot(self, snapshot: Any, events: Any = (), **kw: Any) -> bool:
        if self.refuse:
            raise tf.StorageError("disk full (simulated)")
        return await super().save_snapshot(snapshot, events, **kw)


async def _collect_types(chunks: Any, into: list[str]) -> None:
    async for chunk in chunks:
        into.append(chunk.type)


async def test_observe_stream_ends_with_the_error_of_an_execution_that_died() -> None:
    # Was: with follow=True the subscriber waited for ever for a workflow-finish that
    # the dead execution would never store.
    storage = _RefusingMemory()

    async def step(ctx: tf.StepContext) -> int:
        storage.refuse = True
        await ctx.writer.write("before the refused write")
        return 1

    wf = tf.create_workflow(id="w").then(tf.create_step(id="s", execute=step)).commit()
    async with tf.open_runtime(storage=storage):
        run = await wf.create_run()
        early = run.observe_stream()
        out = await run.stream()
        with trio.fail_after(30), pytest.raises(tf.StorageError, match="disk full"):
            async for _ in early:
                pass
        with pytest.raises(tf.StorageError, match="disk full"):
            await out.result()
        # A subscriber that comes after the death gets what was published, then the error.
        seen: list[str] = []
        with trio.fail_after(30), pytest.raises(tf.StorageError, match="disk full"):
            await _collect_types(run.observe_stream(), seen)
        assert seen[0] == "workflow-start"
        assert "workflow-finish" not in seen
        # Not following: the end of the log, no error.
        assert [c.type async for c in run.observe_stream(follow=False)] == seen


async def test_observe_stream_follows_a_restart_after_the_death(
    autojump_clock: trio.testing.MockClock,
) -> None:
    storage = _RefusingMemory()
    refused = False

    async def step(ctx: tf.StepContext) -> int:
        nonlocal refused
        if not refused:
            refused = True
            storage.refuse = True
        await ctx.writer.write("working")
        return 1

    wf = tf.create_workflow(id="w").then(tf.create_step(id="s", execute=step)).commit()
    async with tf.open_runtime(storage=storage):
        run = await wf.create_run()
        with pytest.raises(tf.StorageError):
            await run.start()
        storage.refuse = False
        result = await run.restart()
        assert result.status is tf.RunStatus.SUCCESS
        types = [c.type async for c in run.observe_stream()]
        assert types[-1] == "workflow-finish"


class _CountingPostgres(tf.PostgresStorage):
    """A PostgresStorage counting the calls of the methods a queued run goes through."""

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn)
        self.calls: Counter[str] = Counter()

    async def load_snapshot(self, run_id: str) -> Any:
        self.calls["load_snapshot"] += 1
        return await super().load_snapshot(run_id)

    async def create_run(self, snapshot: Any) -> bool:
        self.calls["create_run"] += 1
        return await super().create_run(snapshot)

    async def enqueue_run(self, snapshot: Any) -> bool:
        self.calls["enqueue_run"] += 1
        return await super().enqueue_run(snapshot)


async def test_a_queued_run_on_postgres_makes_no_redundant_call(postgres_db: str) -> None:
    wf = _wf()
    async with _CountingPostgres(postgres_db) as client, _CountingPostgres(postgres_db) as work:
        async with tf.open_runtime(storage=client, workflows=[wf]) as rt:
            run_id = await rt.enqueue(wf)
            # Was: create_run, then enqueue_run (its insert refused, then an update).
            assert client.calls == Counter(enqueue_run=1)
            async with tf.open_runtime(
                storage=work, workflows=[wf], worker=True, worker_poll_interval=60
            ):
                run = await rt.create_run(wf, run_id=run_id)
                with trio.fail_after(30):
                    async for _ in run.observe_stream():
                        pass
    # Was: the worker loaded the snapshot its claim had just returned.
    assert work.calls["load_snapshot"] == 0
    assert work.calls["create_run"] == 0


async def test_a_worker_gives_up_a_run_whose_executions_kept_dying() -> None:
    storage = _QueueMemory()
    wf = _wf()
    async with tf.open_runtime(storage=storage, workflows=[wf]) as rt:
        run = await wf.create_run(run_id="r1")
        stored = await storage.load_snapshot("r1")
        running = attrs.evolve(stored, status=tf.RunStatus.RUNNING)
        assert await storage.save_snapshot(running, expected_status=tf.RunStatus.PENDING)
        worker = Worker(rt, storage, capacity=1, poll_interval=60)
        await worker._execute(
            ClaimedRun(snapshot=running, queued=False, fencing_token=1, attempts=5)
        )
        assert run.status is tf.RunStatus.FAILED
    failed = await storage.load_snapshot("r1")
    assert failed.status is tf.RunStatus.FAILED
    assert failed.error.name == "RuntimeError"
    assert failed.error.message == (
        "its executions kept dying (the run's executions died 5 times; gave up)"
    )
