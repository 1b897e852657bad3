"""trioflow.testing.check_stream_invariants: real logs pass, and each kind of broken log is
explained in words (which chunk, what is wrong)."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio

import trioflow as tf
from trioflow.testing import check_stream_invariants


async def add_one(ctx: tf.StepContext) -> int:
    return int(ctx.input_data) + 1


async def ask(ctx: tf.StepContext) -> Any:
    if ctx.resume_data is None:
        return await ctx.suspend({"question": ctx.input_data})
    return ctx.resume_data


async def write_twice(ctx: tf.StepContext) -> int:
    await ctx.writer.write("one")
    await ctx.writer.write("two")
    return int(ctx.input_data)


def chain() -> tf.Workflow:
    return (
        tf.create_workflow(id="chain")
        .then(tf.create_step(id="a", execute=add_one))
        .then(tf.create_step(id="w", execute=write_twice))
        .commit()
    )


async def log_of(workflow: tf.Workflow, input_data: Any, *resumes: Any) -> list[Any]:
    async with tf.open_runtime() as rt:
        run = await workflow.create_run(run_id="r")
        await run.start(input_data=input_data)
        for data in resumes:
            await run.resume(resume_data=data)
        return list(await rt.storage.read_events("r"))


async def test_a_chain_log_holds_the_invariants() -> None:
    events = await log_of(chain(), 1)
    assert check_stream_invariants(events) is None


async def test_a_log_across_suspensions_and_resumes_holds_the_invariants() -> None:
    wf = (
        tf.create_workflow(id="asks")
        .then(tf.create_step(id="q1", execute=ask))
        .then(tf.create_step(id="q2", execute=ask))
        .commit()
    )
    events = await log_of(wf, "x", "first", "second")
    assert [c.payload.workflow_status for c in events if c.type == "workflow-finish"] == [
        "suspended",
        "suspended",
        "success",
    ]
    assert check_stream_invariants(events) is None


async def test_a_foreach_and_parallel_log_holds_the_invariants(autojump_clock: Any) -> None:
    async def slow(ctx: tf.StepContext) -> int:
        await trio.sleep(int(ctx.input_data))
        return int(ctx.input_data)

    wf = (
        tf.create_workflow(id="fan")
        .foreach(tf.create_step(id="item", execute=slow), concurrency=2)
        .parallel(
            [tf.create_step(id="x", execute=add_one), tf.create_step(id="y", execute=add_one)]
        )
        .commit()
    )

    events = await log_of(wf, [3, 1, 2])
    progress = [c.payload.completed_count for c in events if c.type == "workflow-step-progress"]
    assert progress == [1, 2, 3]
    assert check_stream_invariants(events) is None


async def test_canceling_a_suspended_run_is_allowed_between_executions() -> None:
    wf = tf.create_workflow(id="asks").then(tf.create_step(id="q", execute=ask)).commit()
    async with tf.open_runtime() as rt:
        run = await wf.create_run(run_id="r")
        await run.start(input_data="x")
        await run.cancel()
        events = list(await rt.storage.read_events("r"))
    assert [c.type for c in events[-2:]] == ["workflow-canceled", "workflow-finish"]
    assert check_stream_invariants(events) is None


def renumber(chunks: list[Any]) -> list[Any]:
    return [attrs.evolve(c, seq=i) for i, c in enumerate(chunks, start=1)]


async def test_a_gap_in_seq_is_reported() -> None:
    events = await log_of(chain(), 1)
    broken = events[:2] + events[3:]
    assert check_stream_invariants(broken) == (
        "chunk #2 (seq 4, workflow-step-start 'w'): seq 4 follows seq 2 (a gap)"
    )


async def test_a_repeated_seq_is_reported() -> None:
    events = await log_of(chain(), 1)
    broken = [*events[:3], events[2], *events[3:]]
    message = check_stream_invariants(broken)
    assert message is not None
    assert "seq 3 follows seq 3 (not increasing)" in message


async def test_a_log_must_start_at_seq_1_unless_told_otherwise() -> None:
    events = await log_of(chain(), 1)
    message = check_stream_invariants(events[1:])
    assert message is not None
    assert "must start at seq 1" in message
    # A tail of a log (from_seq > 1) starts inside an execution.
    assert check_stream_invariants(events[3:], from_start=False) == (
        "chunk #0 (seq 4, workflow-step-start 'w'): comes before any workflow-start"
    )


async def test_a_step_start_without_its_result_is_reported() -> None:
    events = await log_of(chain(), 1)
    broken = renumber(
        [c for c in events if not (c.type == "workflow-step-result" and c.payload.id == "a")]
    )
    message = check_stream_invariants(broken)
    assert message is not None
    assert "finishes with steps started and never settled: 'a'" in message


async def test_a_result_without_its_start_is_reported() -> None:
    events = await log_of(chain(), 1)
    broken = renumber(
        [c for c in events if not (c.type == "workflow-step-start" and c.payload.id == "a")]
    )
    assert check_stream_invariants(broken) == (
        "chunk #1 (seq 2, workflow-step-result 'a' (success)): no workflow-step-start for "
        "'a' is open in this execution"
    )


async def test_output_from_a_step_that_is_not_running_is_reported() -> None:
    events = await log_of(chain(), 1)
    broken = renumber(
        [c for c in events if not (c.type == "workflow-step-start" and c.payload.id == "w")]
    )
    assert check_stream_invariants(broken) == (
        "chunk #3 (seq 4, workflow-step-output 'w'): output written by 'w', which is not running"
    )


async def test_anything_after_the_final_finish_is_reported() -> None:
    events = await log_of(chain(), 1)
    extra = attrs.evolve(events[1], seq=len(events) + 1)
    assert check_stream_invariants([*events, extra]) == (
        f"chunk #{len(events)} (seq {len(events) + 1}, workflow-step-start 'a'): "
        "comes after the final workflow-finish (success)"
    )


async def test_a_second_start_inside_an_execution_is_reported_unless_interrupted() -> None:
    events = await log_of(chain(), 1)
    interrupted = renumber([*events[:2], *events])
    message = check_stream_invariants(interrupted)
    assert message is not None
    assert "has no workflow-finish before this start" in message
    assert check_stream_invariants(interrupted, allow_interrupted=True) is None


async def test_a_stream_that_stops_inside_an_execution_is_complete_only_if_told() -> None:
    events = await log_of(chain(), 1)
    message = check_stream_invariants(events[:-1])
    assert message is not None
    assert "ends inside execution 1" in message
    assert check_stream_invariants(events[:-1], complete=False) is None


async def test_a_chunk_of_another_run_is_reported() -> None:
    events = await log_of(chain(), 1)
    broken = [*events[:2], attrs.evolve(events[2], run_id="other"), *events[3:]]
    message = check_stream_invariants(broken)
    assert message is not None
    assert "run_id 'other' differs from 'r'" in message


async def test_inconsistent_foreach_progress_is_reported() -> None:
    wf = tf.create_workflow(id="each").foreach(tf.create_step(id="item", execute=add_one)).commit()
    events = await log_of(wf, [1, 2])
    progress = [i for i, c in enumerate(events) if c.type == "workflow-step-progress"]
    skipped = events[progress[1]]
    broken = list(events)
    broken[progress[1]] = attrs.evolve(
        skipped, payload=attrs.evolve(skipped.payload, completed_count=3)
    )
    message = check_stream_invariants(broken)
    assert message is not None
    assert "completed_count 3 after 1 settled iteration(s)" in message


async def test_a_canceled_finish_needs_its_workflow_canceled_chunk() -> None:
    events = await log_of(chain(), 1)
    finish = events[-1]
    broken = [
        *events[:-1],
        attrs.evolve(finish, payload=attrs.evolve(finish.payload, workflow_status="canceled")),
    ]
    message = check_stream_invariants(broken)
    assert message is not None
    assert "finishes canceled without a workflow-canceled chunk" in message


@pytest.mark.parametrize("chunks", [[], ()])
def test_an_empty_stream_holds_the_invariants(chunks: Any) -> None:
    assert check_stream_invariants(chunks) is None
