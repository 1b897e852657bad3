"""When the runtime stops (its nursery is cancelled: Ctrl-C, ``open_runtime`` exiting), the
steps it interrupts are not settled: the run stays ``running``, their stored records say
``running`` (not ``canceled``), no ``canceled`` step-result chunk is stored, and restart()
runs them again. A cancel() by the user still settles every started entry as canceled.

Was: the interrupted steps were stored as ``canceled`` records with a canceled
``workflow-step-result`` chunk while the run stayed ``running``: ``get_run_state()`` said
the steps were canceled, ``trioflow show`` said the run was running.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
import trio.testing

import trioflow as tf


class _Started(list[str]):
    """The ids of the steps that started; ``reached(n)`` waits until n of them have."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = trio.Event()

    def append(self, step_id: str) -> None:
        super().append(step_id)
        self._changed.set()
        self._changed = trio.Event()

    async def reached(self, count: int) -> None:
        while len(self) < count:
            await self._changed.wait()
        # Whatever the started steps publish or write is under way: let it settle.
        await trio.testing.wait_all_tasks_blocked()


def _hanging(step_id: str, started: _Started) -> tf.Step:
    async def execute(ctx: tf.StepContext) -> str:
        started.append(step_id)
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    return tf.create_step(id=step_id, execute=execute)


def _quick(step_id: str) -> tf.Step:
    async def execute(ctx: tf.StepContext) -> str:
        await trio.lowlevel.checkpoint()
        return step_id

    return tf.create_step(id=step_id, execute=execute)


async def _interrupt(storage: Any, wf: tf.Workflow, started: _Started, waiting: int) -> None:
    """Start run ``r1`` and stop the runtime once ``waiting`` steps hang in it."""
    async with tf.open_runtime(storage=storage, workflows=[wf]):
        run = await wf.create_run(run_id="r1")
        await run.stream()
        with trio.fail_after(10):
            await started.reached(waiting)


async def _stored_step_results(storage: Any) -> list[tuple[str, str]]:
    return [
        (c.payload.id, c.payload.status)
        for c in await storage.read_events("r1", from_seq=1, limit=10_000)
        if c.type == "workflow-step-result"
    ]


async def _restart_and_finish(storage: Any, wf: tf.Workflow) -> tf.WorkflowResult:
    async with tf.open_runtime(storage=storage, workflows=[wf]):
        run = await wf.create_run(run_id="r1")
        return await run.restart()


async def test_a_step_the_runtime_interrupts_stays_running(tmp_path: Path) -> None:
    started = _Started()
    release: dict[str, bool] = {"go": False}

    async def long(ctx: tf.StepContext) -> str:
        started.append("l")
        if not release["go"]:
            await trio.sleep_forever()
        return "done"

    wf = (
        tf.create_workflow(id="w")
        .then(_quick("a"))
        .then(tf.create_step(id="l", execute=long))
        .commit()
    )
    storage = tf.SqliteStorage(tmp_path / "runs.db")
    await _interrupt(storage, wf, started, 1)
    async with tf.open_runtime(storage=storage, workflows=[wf]) as rt:
        state = await rt.get_run_state("r1")
    assert state.status is tf.RunStatus.RUNNING
    assert state.steps["a"].status is tf.StepStatus.SUCCESS
    assert state.steps["l"].status is tf.StepStatus.RUNNING
    assert ("l", "canceled") not in await _stored_step_results(storage)
    release["go"] = True
    result = await _restart_and_finish(storage, wf)
    assert result.status is tf.RunStatus.SUCCESS
    assert result.result == "done"
    assert started == ["l", "l"]
    await storage.aclose()


async def test_parallel_branches_the_runtime_interrupts_stay_running(tmp_path: Path) -> None:
    started = _Started()
    wf = (
        tf.create_workflow(id="w")
        .parallel([_hanging("p", started), _hanging("q", started), _quick("r")])
        .commit()
    )
    storage = tf.SqliteStorage(tmp_path / "runs.db")
    await _interrupt(storage, wf, started, 2)
    async with tf.open_runtime(storage=storage, workflows=[wf]) as rt:
        state = await rt.get_run_state("r1")
    assert state.status is tf.RunStatus.RUNNING
    assert state.steps["p"].status is tf.StepStatus.RUNNING
    assert state.steps["q"].status is tf.StepStatus.RUNNING
    assert state.steps["r"].status is tf.StepStatus.SUCCESS
    assert [s for s in await _stored_step_results(storage) if s[1] == "canceled"] == []
    await storage.aclose()


async def test_a_nested_step_the_runtime_interrupts_stays_running(tmp_path: Path) -> None:
    started = _Started()
    inner = tf.create_workflow(id="inner").then(_quick("i1")).then(_hanging("i2", started))
    wf = tf.create_workflow(id="w").then(inner.commit()).commit()
    storage = tf.SqliteStorage(tmp_path / "runs.db")
    await _interrupt(storage, wf, started, 1)
    async with tf.open_runtime(storage=storage, workflows=[wf]) as rt:
        state = await rt.get_run_state("r1")
    assert state.status is tf.RunStatus.RUNNING
    assert state.steps["inner"].status is tf.StepStatus.RUNNING
    assert [s for s in await _stored_step_results(storage) if s[1] == "canceled"] == []
    await storage.aclose()


async def test_cancel_by_the_user_still_settles_every_started_step_as_canceled() -> None:
    started = _Started()
    wf = (
        tf.create_workflow(id="w")
        .parallel([_hanging("p", started), _hanging("q", started)])
        .commit()
    )
    async with tf.open_runtime(workflows=[wf]) as rt:
        run = await wf.create_run(run_id="r1")
        out = await run.stream()
        with trio.fail_after(10):
            await started.reached(2)
        await run.cancel()
        result = await out.result()
        chunks = [(c.type, getattr(getattr(c, "payload", None), "status", None)) async for c in out.full_stream()]
        state = await rt.get_run_state("r1")
    assert result.status is tf.RunStatus.CANCELED
    assert state.status is tf.RunStatus.CANCELED
    assert state.steps["p"].status is tf.StepStatus.CANCELED
    assert state.steps["q"].status is tf.StepStatus.CANCELED
    assert chunks.count(("workflow-step-result", "canceled")) == 2
    assert ("workflow-canceled", None) in chunks


async def test_a_foreach_and_a_sleep_the_runtime_interrupts_stay_running(tmp_path: Path) -> None:
    started = _Started()

    async def three(ctx: tf.StepContext) -> list[int]:
        await trio.lowlevel.checkpoint()
        return [1, 2, 3]

    wf = (
        tf.create_workflow(id="w")
        .then(tf.create_step(id="items", execute=three))
        .foreach(_hanging("item", started), concurrency=2)
        .commit()
    )
    asleep = tf.create_workflow(id="z").sleep(3600).commit()
    storage = tf.SqliteStorage(tmp_path / "runs.db")
    await _interrupt(storage, wf, started, 2)
    async with tf.open_runtime(storage=storage, workflows=[asleep]):
        run = await asleep.create_run(run_id="r2")
        await run.stream()
        await trio.testing.wait_all_tasks_blocked()
    async with tf.open_runtime(storage=storage, workflows=[wf, asleep]) as rt:
        state = await rt.get_run_state("r1")
        slept = await rt.get_run_state("r2")
    assert state.status is tf.RunStatus.RUNNING
    assert state.steps["item"].status is tf.StepStatus.RUNNING
    assert [s for s in await _stored_step_results(storage) if s[1] == "canceled"] == []
    assert slept.status is tf.RunStatus.RUNNING
    assert [r.status for r in slept.steps.values()] == [tf.StepStatus.RUNNING]
    await storage.aclose()
