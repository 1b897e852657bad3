"""trioflow.testing harness: run_on_mock_clock, ClockGuardStorage, drive_run (the recovery
loop of a process that boots) and the crash-point harness, which must pass a sound
workflow, report the steps that ran twice, and catch a step that is not idempotent."""

from __future__ import annotations

import time
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow.testing import (
    ClockGuardStorage,
    CrashPointMismatch,
    ResumeRequest,
    check_crash_points,
    drive_run,
    resume_with,
    run_on_mock_clock,
)


@attrs.frozen
class Answer:
    text: str


async def add_one(ctx: tf.StepContext) -> int:
    await trio.sleep(1)
    return int(ctx.input_data) + 1


async def ask(ctx: tf.StepContext) -> Any:
    if ctx.resume_data is None:
        return await ctx.suspend({"question": ctx.input_data})
    return {"n": ctx.input_data, "answer": ctx.resume_data.text}


def order_workflow() -> tf.Workflow:
    return (
        tf.create_workflow(id="orders")
        .then(tf.create_step(id="a", execute=add_one))
        .parallel(
            [tf.create_step(id="b", execute=add_one), tf.create_step(id="c", execute=add_one)]
        )
        .map(lambda ctx: ctx.input_data["b"] + ctx.input_data["c"])
        .then(tf.create_step(id="ask", execute=ask, resume_schema=Answer))
        .commit()
    )


def test_run_on_mock_clock_makes_sleeps_take_no_real_time() -> None:
    async def nap() -> float:
        start = trio.current_time()
        await trio.sleep(3600)
        return trio.current_time() - start

    started = time.monotonic()
    assert run_on_mock_clock(nap) == 3600
    assert time.monotonic() - started < 5


class ThreadStorage(tf.MemoryStorage):
    """A MemoryStorage whose load_snapshot waits on a thread, like SQLite does."""

    async def load_snapshot(self, run_id: str) -> Any:
        await trio.to_thread.run_sync(time.sleep, 0.05)
        return await super().load_snapshot(run_id)


@pytest.mark.parametrize("guarded", [False, True])
def test_clock_guard_keeps_the_mock_clock_still_during_a_threaded_storage_call(
    guarded: bool,
) -> None:
    async def main() -> float:
        storage: Any = ThreadStorage()
        if guarded:
            storage = ClockGuardStorage(storage)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep, 10)  # a deadline the clock could jump to
            start = trio.current_time()
            await storage.load_snapshot("nothing")
            elapsed = trio.current_time() - start
            nursery.cancel_scope.cancel()
        return elapsed

    elapsed = run_on_mock_clock(main)
    # Unguarded, every task looked blocked while the thread worked: the clock jumped.
    assert elapsed == (0 if guarded else 10)


async def test_drive_run_starts_resumes_and_counts_step_executions(autojump_clock: Any) -> None:
    record = await drive_run(
        order_workflow(),
        storage=tf.MemoryStorage(),
        run_id="r1",
        input_data=1,
        resumer=resume_with(ResumeRequest(resume_data={"text": "yes"})),
    )
    assert record.result.status == "success"
    assert record.result.result == {"n": 6, "answer": "yes"}
    assert [str(r.status) for r in record.executions] == ["suspended", "success"]
    assert record.steps_executed == {"a": 1, "b": 1, "c": 1, "ask": 2}
    assert record.events[-1].type == "workflow-finish"


async def test_drive_run_without_a_resumer_leaves_the_run_suspended(autojump_clock: Any) -> None:
    storage = tf.MemoryStorage()
    record = await drive_run(order_workflow(), storage=storage, run_id="r1", input_data=1)
    assert record.result.status == "suspended"
    assert record.result.suspended == [["ask"]]
    # Driving it again later (another process) resumes it.
    again = await drive_run(
        order_workflow(), storage=storage, run_id="r1", resumer=resume_with({"text": "ok"})
    )
    assert again.result.result == {"n": 6, "answer": "ok"}
    assert again.steps_executed == {"ask": 1}


async def test_drive_run_of_a_finished_run_returns_the_stored_result(autojump_clock: Any) -> None:
    storage = tf.MemoryStorage()
    resumer = resume_with({"text": "ok"})
    await drive_run(order_workflow(), storage=storage, run_id="r1", input_data=1, resumer=resumer)
    record = await drive_run(order_workflow(), storage=storage, run_id="r1", resumer=resumer)
    assert record.result.status == "success"
    assert record.result.result == {"n": 6, "answer": "ok"}
    assert record.executions == []
    assert not record.steps_executed


async def test_every_crash_point_of_a_sound_workflow_recovers(autojump_clock: Any) -> None:
    report = await check_crash_points(
        order_workflow(), input_data=1, resumer=resume_with({"text": "yes"})
    )
    assert report.reference.result.result == {"n": 6, "answer": "yes"}
    assert report.writes >= 6
    assert len(report.points) == 2 * report.writes
    assert all(point.crashed and not point.problems for point in report.points)
    # A crash while the parallel branches sleep makes them run again: reported.
    assert any({"b", "c"} & set(reran) for reran in report.reran.values())
    assert "ok" in report.summary()


async def test_the_crash_harness_catches_a_step_that_is_not_idempotent(
    autojump_clock: Any,
) -> None:
    calls = 0

    async def count(ctx: tf.StepContext) -> int:
        nonlocal calls
        calls += 1
        await trio.sleep(1)
        return calls

    async def after(ctx: tf.StepContext) -> int:
        await trio.sleep(1)
        return int(ctx.input_data)

    workflow = (
        tf.create_workflow(id="counter")
        .then(tf.create_step(id="count", execute=count))
        .then(tf.create_step(id="after", execute=after))
        .commit()
    )
    with pytest.raises(CrashPointMismatch) as caught:
        await check_crash_points(workflow, input_data=None)
    assert "result: expected" in str(caught.value)
    assert "MISMATCH" in str(caught.value)


async def test_a_report_without_raising_lists_the_failing_points(autojump_clock: Any) -> None:
    state = {"calls": 0}

    async def flaky(ctx: tf.StepContext) -> int:
        state["calls"] += 1
        await trio.sleep(1)
        return state["calls"]

    workflow = tf.create_workflow(id="flaky").then(tf.create_step(id="f", execute=flaky)).commit()
    report = await check_crash_points(workflow, raise_on_mismatch=False, modes=("before",))
    assert report.failures()
    assert all(p.mode == "before" for p in report.points)
