"""Adversarial tests of issue 15's new behaviour (crash recovery at every depth, the
runtime's stop leaving interrupted steps ``running``, the run API, the bridge), each a
regression test of a bug found by attacking it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trioflow as tf


def _hanging(step_id: str, started: list[str]) -> tf.Step:
    async def execute(ctx: tf.StepContext) -> str:
        started.append(step_id)
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    return tf.create_step(id=step_id, execute=execute)


async def _stored_step_results(storage: Any, run_id: str = "r1") -> list[tuple[str, str]]:
    return [
        (c.payload.id, c.payload.status)
        for c in await storage.read_events(run_id, from_seq=1, limit=10_000)
        if c.type == "workflow-step-result"
    ]


async def test_a_user_cancel_racing_the_runtime_stop_settles_the_steps_canceled(
    tmp_path: Path,
) -> None:
    """cancel() called in the same instant the runtime stops: the run ends ``canceled``
    and so do its started steps (a canceled run with a step stored ``running`` reads as
    still executing in ``get_run_state()`` and ``trioflow show``)."""
    started: list[str] = []
    wf = tf.create_workflow(id="w").then(_hanging("h", started)).commit()
    storage = tf.SqliteStorage(tmp_path / "runs.db")
    with trio.CancelScope() as outer:
        async with tf.open_runtime(storage=storage, workflows=[wf]):
            run = await wf.create_run(run_id="r1")
            await run.stream()
            await trio.testing.wait_all_tasks_blocked()
            assert started == ["h"]
            # Both in the same instant: no checkpoint in between.
            run._hub.execution.request_cancel("run.cancel()")  # type: ignore[union-attr]
            outer.cancel()
    async with tf.open_runtime(storage=storage, workflows=[wf]) as rt:
        state = await rt.get_run_state("r1")
    assert state.status is tf.RunStatus.CANCELED
    assert state.steps["h"].status is tf.StepStatus.CANCELED
    assert ("h", "canceled") in await _stored_step_results(storage)
    await storage.aclose()


async def test_a_cancel_asked_while_the_runtime_stop_unwinds_the_run_wins(
    tmp_path: Path,
) -> None:
    """The runtime stops first (its cancellation has reached the execution), then cancel()
    is asked while a step still runs: cancel() returns and the run is ``canceled``, its
    step too (was: cancel() returned, the run stayed ``running`` with the step ``running``,
    and a restart() ran the step the user had canceled again)."""
    started: list[str] = []
    gate = trio.Event()

    async def shielded_then_hang(ctx: tf.StepContext) -> str:
        started.append("h")
        with trio.CancelScope(shield=True):
            await gate.wait()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    wf = (
        tf.create_workflow(id="w")
        .then(tf.create_step(id="h", execute=shielded_then_hang))
        .commit()
    )
    storage = tf.SqliteStorage(tmp_path / "runs.db")
    canceled = trio.Event()

    async def run_it(  # noqa: ASYNC114 (only started here)
        task_status: trio.TaskStatus[tuple[trio.CancelScope, Any]],
    ) -> None:
        with trio.CancelScope() as scope:
            async with tf.open_runtime(storage=storage, workflows=[wf]):
                run = await wf.create_run(run_id="r1")
                await run.stream()
                task_status.started((scope, run))
                await trio.sleep_forever()

    async def cancel_it(run: Any) -> None:
        await run.cancel()
        canceled.set()

    async with trio.open_nursery() as nursery:
        scope, run = await nursery.start(run_it)
        await trio.testing.wait_all_tasks_blocked()
        assert started == ["h"]
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(cancel_it, run)
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
    assert canceled.is_set()
    async with tf.open_runtime(storage=storage, workflows=[wf]) as rt:
        state = await rt.get_run_state("r1")
    assert state.status is tf.RunStatus.CANCELED
    assert state.steps["h"].status is tf.StepStatus.CANCELED
    assert ("h", "canceled") in await _stored_step_results(storage)
    await storage.aclose()


class _AppendFails(tf.MemoryStorage):
    """Chunk writes between snapshots (the flusher's) fail: a disk that filled up."""

    async def append_events(self, run_id: str, events: Any) -> None:
        await trio.lowlevel.checkpoint()
        raise tf.StorageError("disk full")


async def test_a_failing_flush_does_not_settle_the_running_step_as_canceled() -> None:
    """A step floods its log; the flusher's write fails and the execution dies of it. The
    step was interrupted by the storage, not cancelled by anyone: no canceled
    step-result is published for it (was: the helper nursery's cancel reached the step
    as if the user had cancelled, and its canceled result chunk went out before the
    StorageError)."""
    seen: list[Any] = []

    async def flood(ctx: tf.StepContext) -> int:
        for i in range(5000):
            await ctx.writer.write({"i": i})
        return 1

    wf = tf.create_workflow(id="flood").then(tf.create_step(id="flood", execute=flood)).commit()
    async with tf.open_runtime(storage=_AppendFails()) as runtime:
        del runtime
        run = await wf.create_run()
        out = await run.stream(input_data=None)

        async def read_all() -> None:
            async for chunk in out:
                seen.append(chunk)

        with pytest.raises(tf.StorageError, match="disk full"):
            await read_all()
    results = [c for c in seen if isinstance(c, tf.WorkflowStepResult)]
    assert [c.payload.status for c in results] == []
