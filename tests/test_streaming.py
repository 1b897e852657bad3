"""Streams of a run: chunk sequences, `RunOutput`, `observe_stream` subscriptions, the writer
and the legacy (v0) event format.

Contract: SPEC §3.0 (subscriptions), §3.1 (`RunOutput`), §3.2 (chunk classes and the order
they come in), §3.3 (legacy format), SPEC §0 ("subscribers never slow the run"), and the
`ctx.writer` rows of the step-context table in SPEC §1. Background: mastra-behaviour.md §2
(event catalogue, exact ordering examples, the stream object, the legacy stream) and §3.3
(`close_on_suspend`).

The tests assert exact chunk sequences (classes, types, payload fields, `seq` numbers) and
the subscriber guarantees: every subscriber gets every chunk exactly once and in log order,
a subscriber that never reads does not block the run or lose chunks, and the in-memory
window of the log stays bounded.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import trioflow as tf
from trioflow._broadcast import DEFAULT_WINDOW

# --------------------------------------------------------------------------- helpers


@pytest.fixture
async def rt() -> AsyncIterator[tf.Runtime]:
    async with tf.open_runtime() as runtime:
        yield runtime


def add(step_id: str, n: int) -> tf.Step:
    """A step returning ``input + n``."""

    async def execute(ctx: tf.StepContext) -> int:
        return int(ctx.input_data) + n

    return tf.create_step(id=step_id, execute=execute)


def gate(step_id: str) -> tf.Step:
    """Suspends with ``{"ask": step_id}``; once resumed returns ``input + resume_data["add"]``."""

    async def execute(ctx: tf.StepContext) -> Any:
        if ctx.resume_data is None:
            return await ctx.suspend({"ask": step_id})
        return int(ctx.input_data) + int(ctx.resume_data["add"])

    return tf.create_step(id=step_id, execute=execute)


def make_step(step_id: str, fn: Callable[[tf.StepContext], Awaitable[Any]]) -> tf.Step:
    return tf.create_step(id=step_id, execute=fn)


def chain(wf_id: str, *nodes: Any, **wf_kwargs: Any) -> tf.Workflow:
    wf = tf.create_workflow(id=wf_id, **wf_kwargs)
    for node in nodes:
        wf = wf.then(node)
    return wf.commit()


async def collect(source: AsyncIterable[Any]) -> list[Any]:
    return [item async for item in source]


def types_of(chunks: Sequence[Any]) -> list[str]:
    return [c.type for c in chunks]


def of_type(chunks: Sequence[Any], cls: type) -> list[Any]:
    return [c for c in chunks if isinstance(c, cls)]


def ids_of(chunks: Sequence[Any], cls: type) -> list[str]:
    return [c.payload.id for c in of_type(chunks, cls)]


def assert_well_formed(chunks: Sequence[Any], run_id: str, first_seq: int = 1) -> None:
    """Envelope invariants of SPEC §3.2: run id, contiguous seq, step_name copies id."""
    assert [c.seq for c in chunks] == list(range(first_seq, first_seq + len(chunks)))
    for c in chunks:
        assert c.run_id == run_id
        assert c.from_ in ("WORKFLOW", "USER")
        payload = getattr(c, "payload", None)
        if payload is not None and hasattr(payload, "id"):
            assert payload.step_name == payload.id, c


async def log_of(run: tf.Run) -> list[Any]:
    """The run's whole log as it is now."""
    return await collect(run.observe_stream(follow=False))


async def two_steps(rt: tf.Runtime, **stream_kwargs: Any) -> tuple[tf.Run, tf.RunOutput]:
    wf = chain("two", add("a", 1), add("b", 10))
    run = await wf.create_run()
    out = await run.stream(input_data=1, **stream_kwargs)
    return run, out


# --------------------------------------------------------------------------- §3.2 sequences


async def test_two_steps_stream_exactly_six_chunks_of_the_right_classes(rt: tf.Runtime) -> None:
    _, out = await two_steps(rt)
    chunks = await collect(out)
    assert [type(c) for c in chunks] == [
        tf.WorkflowStart,
        tf.WorkflowStepStart,
        tf.WorkflowStepResult,
        tf.WorkflowStepStart,
        tf.WorkflowStepResult,
        tf.WorkflowFinish,
    ]
    assert types_of(chunks) == [
        "workflow-start",
        "workflow-step-start",
        "workflow-step-result",
        "workflow-step-start",
        "workflow-step-result",
        "workflow-finish",
    ]
    assert [getattr(c.payload, "id", None) for c in chunks] == [None, "a", "a", "b", "b", None]


async def test_two_steps_envelope_from_workflow_run_id_and_seq_one_to_six(rt: tf.Runtime) -> None:
    run, out = await two_steps(rt)
    chunks = await collect(out)
    assert [c.seq for c in chunks] == [1, 2, 3, 4, 5, 6]
    assert all(c.from_ == "WORKFLOW" for c in chunks)
    assert all(c.run_id == run.run_id for c in chunks)
    assert_well_formed(chunks, run.run_id)


async def test_workflow_start_payload_names_the_workflow(rt: tf.Runtime) -> None:
    _, out = await two_steps(rt)
    first = (await collect(out))[0]
    assert isinstance(first, tf.WorkflowStart)
    assert first.payload.workflow_id == "two"


async def test_step_start_carries_input_status_running_and_started_at(rt: tf.Runtime) -> None:
    _, out = await two_steps(rt)
    starts = of_type(await collect(out), tf.WorkflowStepStart)
    assert [s.payload.payload for s in starts] == [1, 2]  # a gets the input, b gets a's output
    for s in starts:
        assert s.payload.status == "running"
        assert isinstance(s.payload.started_at, int)
        assert s.payload.resume_payload is None
        assert s.payload.resumed_at is None


async def test_step_result_carries_output_status_payload_and_ended_at(rt: tf.Runtime) -> None:
    _, out = await two_steps(rt)
    results = of_type(await collect(out), tf.WorkflowStepResult)
    assert [(r.payload.id, r.payload.status, r.payload.output) for r in results] == [
        ("a", "success", 2),
        ("b", "success", 12),
    ]
    assert [r.payload.payload for r in results] == [1, 2]
    for r in results:
        assert r.payload.error is None
        assert isinstance(r.payload.ended_at, int)
        assert r.payload.started_at is not None
        assert r.payload.started_at <= r.payload.ended_at


async def test_step_call_id_links_a_step_start_to_its_result(rt: tf.Runtime) -> None:
    _, out = await two_steps(rt)
    chunks = await collect(out)
    starts = of_type(chunks, tf.WorkflowStepStart)
    results = of_type(chunks, tf.WorkflowStepResult)
    call_ids = [s.payload.step_call_id for s in starts]
    assert all(isinstance(c, str) and c for c in call_ids)
    assert call_ids[0] != call_ids[1]
    assert [r.payload.step_call_id for r in results] == call_ids


async def test_workflow_finish_on_success_has_zero_usage_and_empty_metadata(
    rt: tf.Runtime,
) -> None:
    _, out = await two_steps(rt)
    finish = (await collect(out))[-1]
    assert isinstance(finish, tf.WorkflowFinish)
    assert finish.payload.workflow_status == "success"
    assert finish.payload.usage == tf.Usage()
    assert finish.payload.metadata == {}
    assert finish.payload.tripwire is None
    result = await out.result()
    assert result.status == "success"
    assert result.result == 12


async def test_sleep_between_steps_adds_waiting_and_result_chunks(
    rt: tf.Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    wf = tf.create_workflow(id="sleepy").then(add("a", 1)).sleep(1).then(add("b", 10)).commit()
    run = await wf.create_run()
    t0 = trio.current_time()
    out = await run.stream(input_data=1)
    chunks = await collect(out)
    assert trio.current_time() - t0 >= 1
    assert types_of(chunks) == [
        "workflow-start",
        "workflow-step-start",
        "workflow-step-result",
        "workflow-step-waiting",
        "workflow-step-result",
        "workflow-step-start",
        "workflow-step-result",
        "workflow-finish",
    ]
    assert_well_formed(chunks, run.run_id)
    waiting = chunks[3]
    assert isinstance(waiting, tf.WorkflowStepWaiting)
    assert waiting.payload.id == "sleep_1"
    assert waiting.payload.status == "waiting"
    assert waiting.payload.payload == 2  # a's output
    assert isinstance(waiting.payload.started_at, int)
    slept = chunks[4]
    assert isinstance(slept, tf.WorkflowStepResult)
    assert slept.payload.id == "sleep_1"
    assert slept.payload.status == "success"
    assert slept.payload.output == 2  # pass-through
    assert chunks[5].payload.payload == 2  # b gets the sleep's output
    assert (await out.result()).result == 12


async def test_sleep_with_custom_id_uses_it_in_its_chunks(
    rt: tf.Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    wf = tf.create_workflow(id="sleepy").then(add("a", 1)).sleep(5, id="pause").commit()
    run = await wf.create_run()
    chunks = await collect(await run.stream(input_data=1))
    assert ids_of(chunks, tf.WorkflowStepWaiting) == ["pause"]
    assert ids_of(chunks, tf.WorkflowStepResult) == ["a", "pause"]


async def test_per_step_stream_stops_after_one_entry_with_paused(rt: tf.Runtime) -> None:
    run, out = await two_steps(rt, per_step=True)
    chunks = await collect(out)
    assert [type(c) for c in chunks] == [
        tf.WorkflowStart,
        tf.WorkflowStepStart,
        tf.WorkflowStepResult,
        tf.WorkflowPaused,
        tf.WorkflowFinish,
    ]
    assert chunks[1].payload.id == "a"
    assert chunks[-1].payload.workflow_status == "paused"
    assert_well_formed(chunks, run.run_id)
    assert (await out.result()).status == "paused"


# --------------------------------------------------------------------------- suspension


async def test_suspension_stream_has_no_step_result_and_finishes_suspended(
    rt: tf.Runtime,
) -> None:
    wf = chain("held", gate("g"))
    run = await wf.create_run()
    out = await run.stream(input_data=5)
    chunks = await collect(out)
    assert [type(c) for c in chunks] == [
        tf.WorkflowStart,
        tf.WorkflowStepStart,
        tf.WorkflowStepSuspended,
        tf.WorkflowFinish,
    ]
    assert not of_type(chunks, tf.WorkflowStepResult)
    assert chunks[-1].payload.workflow_status == "suspended"
    assert_well_formed(chunks, run.run_id)
    result = await out.result()
    assert result.status == "suspended"
    assert result.suspended == [["g"]]


async def test_suspended_chunk_payload_fields(rt: tf.Runtime) -> None:
    wf = chain("held", gate("g"))
    run = await wf.create_run()
    chunks = await collect(await run.stream(input_data=5))
    suspended = chunks[2]
    assert isinstance(suspended, tf.WorkflowStepSuspended)
    assert suspended.payload.id == "g"
    assert suspended.payload.step_name == "g"
    assert suspended.payload.status == "suspended"
    assert suspended.payload.suspend_payload == {"ask": "g"}
    assert suspended.payload.payload == 5
    assert isinstance(suspended.payload.suspended_at, int)


async def test_resume_stream_starts_with_workflow_start_and_continues_seq(
    rt: tf.Runtime,
) -> None:
    wf = chain("held", add("a", 1), gate("g"), add("b", 10))
    run = await wf.create_run()
    first = await collect(await run.stream(input_data=1))
    assert [c.seq for c in first] == [1, 2, 3, 4, 5, 6]
    assert types_of(first)[-2:] == ["workflow-step-suspended", "workflow-finish"]

    out2 = await run.resume_stream(resume_data={"add": 100})
    second = await collect(out2)
    assert types_of(second) == [
        "workflow-start",
        "workflow-step-start",
        "workflow-step-result",
        "workflow-step-start",
        "workflow-step-result",
        "workflow-finish",
    ]
    assert [c.seq for c in second] == [7, 8, 9, 10, 11, 12]
    assert_well_formed(second, run.run_id, first_seq=7)
    assert ids_of(second, tf.WorkflowStepResult) == ["g", "b"]
    assert second[-1].payload.workflow_status == "success"
    result = await out2.result()
    assert result.status == "success"
    assert result.result == 2 + 100 + 10


async def test_resumed_step_start_carries_resume_payload_and_resumed_at(rt: tf.Runtime) -> None:
    wf = chain("held", gate("g"))
    run = await wf.create_run()
    await collect(await run.stream(input_data=5))
    second = await collect(await run.resume_stream(resume_data={"add": 1}))
    start = second[1]
    assert isinstance(start, tf.WorkflowStepStart)
    assert start.payload.id == "g"
    assert start.payload.status == "running"
    assert start.payload.resume_payload == {"add": 1}
    assert isinstance(start.payload.resumed_at, int)
    result_chunk = second[2]
    assert isinstance(result_chunk, tf.WorkflowStepResult)
    assert result_chunk.payload.output == 6
    assert result_chunk.payload.resume_payload == {"add": 1}


async def test_resume_stream_closes_when_the_run_suspends_again(rt: tf.Runtime) -> None:
    wf = chain("held", gate("g1"), gate("g2"))
    run = await wf.create_run()
    await collect(await run.stream(input_data=0))
    out2 = await run.resume_stream(resume_data={"add": 1})
    second = await collect(out2)
    assert types_of(second) == [
        "workflow-start",
        "workflow-step-start",
        "workflow-step-result",
        "workflow-step-start",
        "workflow-step-suspended",
        "workflow-finish",
    ]
    assert second[-1].payload.workflow_status == "suspended"
    assert second[4].payload.id == "g2"
    assert (await out2.result()).status == "suspended"


async def test_close_on_suspend_false_loop_resumes_from_inside_and_gets_the_rest(
    rt: tf.Runtime,
) -> None:
    wf = chain("held", gate("g"), add("b", 10))
    run = await wf.create_run()
    out = await run.stream(input_data=1, close_on_suspend=False)
    seen: list[Any] = []
    resumed: tf.WorkflowResult | None = None
    async for chunk in out:
        seen.append(chunk)
        if isinstance(chunk, tf.WorkflowStepSuspended):
            resumed = await run.resume(resume_data={"add": 5})
    assert resumed is not None
    assert resumed.status == "success"
    assert types_of(seen) == [
        "workflow-start",
        "workflow-step-start",
        "workflow-step-suspended",
        "workflow-step-start",
        "workflow-step-result",
        "workflow-step-start",
        "workflow-step-result",
        "workflow-finish",
    ]
    assert [c.payload.id for c in seen[3:7]] == ["g", "g", "b", "b"]
    assert seen[-1].payload.workflow_status == "success"
    assert all(c.run_id == run.run_id for c in seen)
    assert [c.seq for c in seen] == sorted({c.seq for c in seen})  # in log order, no repeats
    final = await out.result()
    assert final.status == "success"
    assert final.result == 1 + 5 + 10


class SlowStorage(tf.MemoryStorage):
    """MemoryStorage whose snapshot writes take 0.1 s (virtual time), like a real database."""

    async def save_snapshot(self, *args: Any, **kwargs: Any) -> bool:
        await trio.sleep(0.1)
        return await super().save_snapshot(*args, **kwargs)


async def test_close_on_suspend_false_resume_inside_loop_with_slow_storage(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Deterministic form of the test above: the reader sees workflow-step-suspended while
    # the suspended snapshot is still being written; resume() must not fail because of it.
    async with tf.open_runtime(storage=SlowStorage()):
        wf = chain("held", gate("g"), add("b", 10))
        run = await wf.create_run()
        out = await run.stream(input_data=1, close_on_suspend=False)
        seen: list[str] = []
        async for chunk in out:
            seen.append(chunk.type)
            if isinstance(chunk, tf.WorkflowStepSuspended):
                assert (await run.resume(resume_data={"add": 5})).status == "success"
        assert seen[-1] == "workflow-finish"
        assert seen.count("workflow-step-result") == 2
        assert (await out.result()).result == 16


async def test_close_on_suspend_false_is_fed_by_a_resume_from_another_task(
    rt: tf.Runtime,
) -> None:
    wf = chain("held", gate("g"), add("b", 10))
    run = await wf.create_run()
    out = await run.stream(input_data=1, close_on_suspend=False)
    seen: list[Any] = []
    done = trio.Event()

    async def reader() -> None:
        async for chunk in out:
            seen.append(chunk)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert run.status == "suspended"
        assert not done.is_set()  # a suspension does not close this stream
        assert types_of(seen)[-1] == "workflow-step-suspended"
        assert (await run.resume(resume_data={"add": 2})).status == "success"
    assert types_of(seen)[-1] == "workflow-finish"
    assert seen[-1].payload.workflow_status == "success"
    assert ids_of(seen, tf.WorkflowStepResult) == ["g", "b"]
    assert (await out.result()).result == 13


async def test_close_on_suspend_false_result_is_the_final_outcome(rt: tf.Runtime) -> None:
    wf = chain("held", gate("g"))
    run = await wf.create_run()
    out = await run.stream(input_data=1, close_on_suspend=False)
    results: list[tf.WorkflowResult] = []

    async def wait_result() -> None:
        results.append(await out.result())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_result)
        await trio.testing.wait_all_tasks_blocked()
        assert run.status == "suspended"
        assert results == []  # still waiting: the suspension is not this stream's outcome
        await run.resume(resume_data={"add": 1})
    assert [r.status for r in results] == ["success"]
    assert results[0].result == 2


# --------------------------------------------------------------------------- cancel / failure


async def test_cancel_of_a_running_run_ends_with_canceled_then_finish(rt: tf.Runtime) -> None:
    async def forever(ctx: tf.StepContext) -> None:
        await trio.sleep_forever()

    wf = chain("stuck", make_step("a", forever), add("b", 1))
    run = await wf.create_run()
    out = await run.stream(input_data=1)
    await trio.testing.wait_all_tasks_blocked()
    await run.cancel()
    chunks = await collect(out)
    assert types_of(chunks)[:2] == ["workflow-start", "workflow-step-start"]
    assert [type(c) for c in chunks[-2:]] == [tf.WorkflowCanceled, tf.WorkflowFinish]
    assert chunks[-1].payload.workflow_status == "canceled"
    assert "b" not in ids_of(chunks, tf.WorkflowStepStart)
    assert_well_formed(chunks, run.run_id)
    assert (await out.result()).status == "canceled"


async def test_cancel_during_a_sleep_streams_waiting_then_canceled(
    rt: tf.Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    wf = tf.create_workflow(id="nap").then(add("a", 1)).sleep(3600).then(add("b", 1)).commit()
    run = await wf.create_run()
    out = await run.stream(input_data=1)
    await trio.testing.wait_all_tasks_blocked()
    t0 = trio.current_time()
    await run.cancel()
    chunks = await collect(out)
    assert trio.current_time() - t0 < 1
    assert "workflow-step-waiting" in types_of(chunks)
    assert types_of(chunks)[-2:] == ["workflow-canceled", "workflow-finish"]
    assert chunks[-1].payload.workflow_status == "canceled"
    assert "b" not in ids_of(chunks, tf.WorkflowStepStart)


async def test_failed_run_finish_metadata_carries_the_error(rt: tf.Runtime) -> None:
    async def boom(ctx: tf.StepContext) -> None:
        raise RuntimeError("kaboom")

    wf = chain("broken", add("a", 1), make_step("bad", boom), add("c", 1))
    run = await wf.create_run()
    out = await run.stream(input_data=1)
    chunks = await collect(out)
    assert types_of(chunks) == [
        "workflow-start",
        "workflow-step-start",
        "workflow-step-result",
        "workflow-step-start",
        "workflow-step-result",
        "workflow-finish",
    ]
    finish = chunks[-1]
    assert finish.payload.workflow_status == "failed"
    assert "error" in finish.payload.metadata
    assert "kaboom" in repr(finish.payload.metadata["error"])
    result = await out.result()
    assert result.status == "failed"
    assert isinstance(result.error, RuntimeError)


async def test_failed_step_result_chunk_carries_a_serialized_error(rt: tf.Runtime) -> None:
    async def boom(ctx: tf.StepContext) -> None:
        raise RuntimeError("kaboom")

    wf = chain("broken", make_step("bad", boom))
    run = await wf.create_run()
    chunks = await collect(await run.stream(input_data=1))
    failed = chunks[2]
    assert isinstance(failed, tf.WorkflowStepResult)
    assert failed.payload.status == "failed"
    assert isinstance(failed.payload.error, tf.SerializedError)
    assert not isinstance(failed.payload.error, BaseException)
    assert failed.payload.error.message == "kaboom"
    assert failed.payload.error.name == "RuntimeError"


# --------------------------------------------------------------------------- legacy (§3.3)


async def test_legacy_two_steps_gives_eight_events(rt: tf.Runtime) -> None:
    wf = chain("two", add("a", 1), add("b", 10))
    run = await wf.create_run()
    out = await run.stream_legacy(input_data=1)
    events = await collect(out.stream)
    assert all(isinstance(e, tf.LegacyEvent) for e in events)
    assert [e.type for e in events] == [
        "start",
        "step-start",
        "step-result",
        "step-finish",
        "step-start",
        "step-result",
        "step-finish",
        "finish",
    ]
    assert [e.payload.get("id") for e in events[1:7]] == ["a", "a", "a", "b", "b", "b"]
    assert events[2].payload["output"] == 2
    assert events[5].payload["output"] == 12
    assert events[0].payload == {"runId": run.run_id}
    assert events[-1].payload == {"runId": run.run_id}


async def test_legacy_with_a_sleep_gives_eleven_events(
    rt: tf.Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    wf = tf.create_workflow(id="sleepy").then(add("a", 1)).sleep(1).then(add("b", 10)).commit()
    run = await wf.create_run()
    out = await run.stream_legacy(input_data=1)
    assert [e.type async for e in out.stream] == [
        "start",
        "step-start",
        "step-result",
        "step-finish",
        "step-waiting",
        "step-result",
        "step-finish",
        "step-start",
        "step-result",
        "step-finish",
        "finish",
    ]


async def test_legacy_get_workflow_state_is_the_result(rt: tf.Runtime) -> None:
    wf = chain("two", add("a", 1), add("b", 10))
    run = await wf.create_run()
    out = await run.stream_legacy(input_data=1)
    await collect(out.stream)
    state = await out.get_workflow_state()
    assert isinstance(state, tf.WorkflowResult)
    assert state.status == "success"
    assert state.result == 12
    assert state.trace_id == out.trace_id


async def test_legacy_stream_stays_open_across_a_suspension_until_resume_finishes(
    rt: tf.Runtime,
) -> None:
    wf = chain("held", gate("g"), add("b", 10))
    run = await wf.create_run()
    out = await run.stream_legacy(input_data=1)
    seen: list[str] = []
    done = trio.Event()

    async def reader() -> None:
        async for event in out.stream:
            seen.append(event.type)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert run.status == "suspended"
        assert not done.is_set()
        assert seen == ["start", "step-start", "step-suspended"]
        await run.resume(resume_data={"add": 1})
    assert seen.count("start") == 1  # a resume adds no second start
    assert seen.count("finish") == 1
    assert seen[-4:] == ["step-start", "step-result", "step-finish", "finish"]
    assert seen[:3] == ["start", "step-start", "step-suspended"]
    assert seen.count("step-result") == 2  # g after resume, then b
    state = await out.get_workflow_state()
    assert state.status == "success"
    assert state.result == 12


# --------------------------------------------------------------------------- writer


async def test_writer_write_emits_user_output_between_start_and_result(rt: tf.Runtime) -> None:
    async def talk(ctx: tf.StepContext) -> str:
        await ctx.writer.write({"msg": "hello"})
        await ctx.writer.write([1, 2, 3])
        return "done"

    wf = chain("chatty", make_step("talk", talk))
    run = await wf.create_run()
    chunks = await collect(await run.stream(input_data=None))
    assert types_of(chunks) == [
        "workflow-start",
        "workflow-step-start",
        "workflow-step-output",
        "workflow-step-output",
        "workflow-step-result",
        "workflow-finish",
    ]
    outputs = of_type(chunks, tf.WorkflowStepOutput)
    assert [o.payload.output for o in outputs] == [{"msg": "hello"}, [1, 2, 3]]
    assert all(o.from_ == "USER" for o in outputs)
    assert all(o.payload.step_name == "talk" for o in outputs)
    assert [c.from_ for c in chunks if not isinstance(c, tf.WorkflowStepOutput)] == ["WORKFLOW"] * 4
    assert_well_formed(chunks, run.run_id)


async def test_writer_output_during_a_resumed_execution(rt: tf.Runtime) -> None:
    async def step(ctx: tf.StepContext) -> Any:
        await ctx.writer.write("resumed" if ctx.resume_data is not None else "first")
        if ctx.resume_data is None:
            return await ctx.suspend({"ask": "x"})
        return ctx.resume_data

    wf = chain("held", make_step("s", step))
    run = await wf.create_run()
    first = await collect(await run.stream(input_data=None))
    assert [o.payload.output for o in of_type(first, tf.WorkflowStepOutput)] == ["first"]
    second = await collect(await run.resume_stream(resume_data="ok"))
    assert types_of(second) == [
        "workflow-start",
        "workflow-step-start",
        "workflow-step-output",
        "workflow-step-result",
        "workflow-finish",
    ]
    assert second[2].payload.output == "resumed"
    assert second[2].from_ == "USER"
    assert second[2].seq == first[-1].seq + 3


async def test_writer_custom_emits_a_data_chunk(rt: tf.Runtime) -> None:
    async def step(ctx: tf.StepContext) -> int:
        await ctx.writer.custom("data-progress", {"pct": 50})
        await ctx.writer.custom("data-progress", {"pct": 100})
        return 1

    wf = chain("custom", make_step("s", step))
    run = await wf.create_run()
    chunks = await collect(await run.stream(input_data=None))
    assert types_of(chunks) == [
        "workflow-start",
        "workflow-step-start",
        "data-progress",
        "data-progress",
        "workflow-step-result",
        "workflow-finish",
    ]
    data = of_type(chunks, tf.DataChunk)
    assert [d.data for d in data] == [{"pct": 50}, {"pct": 100}]
    assert all(d.run_id == run.run_id for d in data)
    assert_well_formed(chunks, run.run_id)


async def test_writer_custom_type_without_data_prefix_fails_the_step(rt: tf.Runtime) -> None:
    async def step(ctx: tf.StepContext) -> int:
        await ctx.writer.custom("progress", {"pct": 50})
        return 1

    wf = chain("custom", make_step("s", step), add("next", 1))
    run = await wf.create_run()
    out = await run.stream(input_data=None)
    chunks = await collect(out)
    assert not of_type(chunks, tf.DataChunk)
    assert ids_of(chunks, tf.WorkflowStepStart) == ["s"]
    failed = of_type(chunks, tf.WorkflowStepResult)[0]
    assert failed.payload.status == "failed"
    assert failed.payload.error is not None
    assert failed.payload.error.name == "ValueError"
    result = await out.result()
    assert result.status == "failed"
    assert isinstance(result.steps["s"].error, ValueError)
    assert "next" not in result.steps


# --------------------------------------------------------------------------- nested relay


def inner_workflow(writes: bool = False) -> tf.Workflow:
    async def inner(ctx: tf.StepContext) -> int:
        if writes:
            await ctx.writer.write({"from": "inner"})
            await ctx.writer.custom("data-inner", {"x": ctx.input_data})
        return int(ctx.input_data) * 2

    return chain("nested", make_step("inner", inner), add("last", 1))


async def test_nested_workflow_chunks_are_relayed_with_dotted_ids(rt: tf.Runtime) -> None:
    wf = chain("parent", add("a", 1), inner_workflow())
    run = await wf.create_run()
    out = await run.stream(input_data=1)
    chunks = await collect(out)
    assert [(c.type, getattr(c.payload, "id", None)) for c in chunks] == [
        ("workflow-start", None),
        ("workflow-step-start", "a"),
        ("workflow-step-result", "a"),
        ("workflow-step-start", "nested"),
        ("workflow-step-start", "nested.inner"),
        ("workflow-step-result", "nested.inner"),
        ("workflow-step-start", "nested.last"),
        ("workflow-step-result", "nested.last"),
        ("workflow-step-result", "nested"),
        ("workflow-finish", None),
    ]
    assert_well_formed(chunks, run.run_id)
    assert chunks[4].payload.payload == 2
    assert chunks[5].payload.output == 4
    assert chunks[8].payload.output == 5
    assert (await out.result()).result == 5


async def test_nested_two_levels_deep_uses_the_full_dotted_path(rt: tf.Runtime) -> None:
    outer = chain("outer", inner_workflow())
    wf = chain("top", outer)
    run = await wf.create_run()
    chunks = await collect(await run.stream(input_data=3))
    assert ids_of(chunks, tf.WorkflowStepStart) == [
        "outer",
        "outer.nested",
        "outer.nested.inner",
        "outer.nested.last",
    ]
    assert ids_of(chunks, tf.WorkflowStepResult) == [
        "outer.nested.inner",
        "outer.nested.last",
        "outer.nested",
        "outer",
    ]
    assert_well_formed(chunks, run.run_id)
    assert types_of(chunks).count("workflow-start") == 1
    assert types_of(chunks).count("workflow-finish") == 1


async def test_writer_chunks_from_a_nested_step_reach_the_parent_stream(rt: tf.Runtime) -> None:
    wf = chain("parent", inner_workflow(writes=True))
    run = await wf.create_run()
    chunks = await collect(await run.stream(input_data=4))
    outputs = of_type(chunks, tf.WorkflowStepOutput)
    assert [o.payload.output for o in outputs] == [{"from": "inner"}]
    assert outputs[0].payload.step_name == "nested.inner"
    assert outputs[0].from_ == "USER"
    assert [d.data for d in of_type(chunks, tf.DataChunk)] == [{"x": 4}]
    types = types_of(chunks)
    inner_start = ids_of(chunks, tf.WorkflowStepStart).index("nested.inner")
    assert types.index("workflow-step-output") > inner_start
    assert_well_formed(chunks, run.run_id)


async def test_nested_workflow_inside_foreach_relays_inner_chunks(rt: tf.Runtime) -> None:
    wf = tf.create_workflow(id="parent").foreach(inner_workflow()).commit()
    run = await wf.create_run()
    out = await run.stream(input_data=[1, 2])
    chunks = await collect(out)
    inner_starts = [
        c for c in of_type(chunks, tf.WorkflowStepStart) if c.payload.id == "nested.inner"
    ]
    assert [c.payload.payload for c in inner_starts] == [1, 2]
    inner_results = [
        c for c in of_type(chunks, tf.WorkflowStepResult) if c.payload.id == "nested.inner"
    ]
    assert [c.payload.output for c in inner_results] == [2, 4]
    assert ids_of(chunks, tf.WorkflowStepProgress) == ["nested", "nested"]
    container = [c for c in of_type(chunks, tf.WorkflowStepResult) if c.payload.id == "nested"]
    assert [c.payload.output for c in container] == [[3, 5]]
    assert_well_formed(chunks, run.run_id)
    assert (await out.result()).result == [3, 5]


async def test_emit_step_events_false_keeps_only_start_finish_and_writer_output(
    rt: tf.Runtime,
) -> None:
    async def talk(ctx: tf.StepContext) -> int:
        await ctx.writer.write("hi")
        await ctx.writer.custom("data-note", {"n": 1})
        return 7

    wf = chain("quiet", make_step("talk", talk), add("b", 1), emit_step_events=False)
    run = await wf.create_run()
    out = await run.stream(input_data=None)
    chunks = await collect(out)
    assert types_of(chunks) == [
        "workflow-start",
        "workflow-step-output",
        "data-note",
        "workflow-finish",
    ]
    assert chunks[1].payload.output == "hi"
    assert_well_formed(chunks, run.run_id)
    assert (await out.result()).result == 8


# --------------------------------------------------------------------------- foreach progress


def double() -> tf.Step:
    async def execute(ctx: tf.StepContext) -> int:
        return int(ctx.input_data) * 2

    return tf.create_step(id="double", execute=execute)


async def test_foreach_sequential_emits_one_progress_chunk_per_item_in_order(
    rt: tf.Runtime,
) -> None:
    wf = tf.create_workflow(id="each").foreach(double()).commit()
    run = await wf.create_run()
    chunks = await collect(await run.stream(input_data=[1, 2, 3]))
    assert types_of(chunks) == [
        "workflow-start",
        "workflow-step-start",
        "workflow-step-progress",
        "workflow-step-progress",
        "workflow-step-progress",
        "workflow-step-result",
        "workflow-finish",
    ]
    assert_well_formed(chunks, run.run_id)
    assert chunks[1].payload.id == "double"
    assert chunks[1].payload.payload == [1, 2, 3]  # the container start carries the whole list
    progress = of_type(chunks, tf.WorkflowStepProgress)
    assert [
        (p.payload.completed_count, p.payload.total_count, p.payload.current_index)
        for p in progress
    ] == [(1, 3, 0), (2, 3, 1), (3, 3, 2)]
    assert [p.payload.iteration_status for p in progress] == ["success"] * 3
    assert [p.payload.iteration_output for p in progress] == [2, 4, 6]
    assert {p.payload.id for p in progress} == {"double"}
    assert chunks[5].payload.id == "double"
    assert chunks[5].payload.output == [2, 4, 6]


async def test_foreach_concurrent_progress_counts_up_to_the_total(
    rt: tf.Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    async def slow(ctx: tf.StepContext) -> int:
        await trio.sleep(10 - int(ctx.input_data))  # later items finish first
        return int(ctx.input_data)

    wf = tf.create_workflow(id="each").foreach(make_step("slow", slow), concurrency=3).commit()
    run = await wf.create_run()
    chunks = await collect(await run.stream(input_data=[1, 2, 3]))
    progress = of_type(chunks, tf.WorkflowStepProgress)
    assert [p.payload.completed_count for p in progress] == [1, 2, 3]
    assert [p.payload.current_index for p in progress] == [2, 1, 0]
    assert [p.payload.iteration_output for p in progress] == [3, 2, 1]
    assert of_type(chunks, tf.WorkflowStepResult)[0].payload.output == [1, 2, 3]


async def test_foreach_suspension_emits_a_single_suspended_chunk(
    rt: tf.Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    async def ask(ctx: tf.StepContext) -> Any:
        await trio.sleep(1)  # all three items are in flight before the first one suspends
        if ctx.resume_data is None:
            return await ctx.suspend({"item": ctx.input_data})
        return ctx.input_data

    wf = tf.create_workflow(id="each").foreach(make_step("ask", ask), concurrency=3).commit()
    run = await wf.create_run()
    out = await run.stream(input_data=[1, 2, 3])
    chunks = await collect(out)
    suspended = of_type(chunks, tf.WorkflowStepSuspended)
    assert [s.payload.id for s in suspended] == ["ask"]
    assert not of_type(chunks, tf.WorkflowStepResult)
    progress = of_type(chunks, tf.WorkflowStepProgress)
    assert [p.payload.iteration_status for p in progress] == ["suspended"] * 3
    assert {p.payload.id for p in progress} == {"ask"}
    assert chunks[-1].payload.workflow_status == "suspended"
    assert (await out.result()).status == "suspended"


async def test_foreach_over_an_empty_list_emits_no_progress(rt: tf.Runtime) -> None:
    wf = tf.create_workflow(id="each").foreach(double()).commit()
    run = await wf.create_run()
    chunks = await collect(await run.stream(input_data=[]))
    assert types_of(chunks) == [
        "workflow-start",
        "workflow-step-start",
        "workflow-step-result",
        "workflow-finish",
    ]
    assert chunks[2].payload.output == []


# --------------------------------------------------------------------------- subscribers


async def test_iterating_the_output_twice_gives_the_same_chunks(rt: tf.Runtime) -> None:
    _, out = await two_steps(rt)
    first = await collect(out)
    second = await collect(out)
    third = await collect(out.full_stream())
    assert len(first) == 6
    assert first == second == third


async def test_breaking_or_closing_one_subscriber_does_not_affect_another(
    rt: tf.Runtime,
) -> None:
    _, out = await two_steps(rt)
    async for _chunk in out:
        break
    closed = out.full_stream()
    first = await closed.__anext__()
    assert first.type == "workflow-start"
    await closed.aclose()
    assert await collect(closed) == []  # a closed subscriber yields nothing more
    rest = await collect(out)
    assert types_of(rest) == [
        "workflow-start",
        "workflow-step-start",
        "workflow-step-result",
        "workflow-step-start",
        "workflow-step-result",
        "workflow-finish",
    ]
    assert (await out.result()).status == "success"


async def test_closing_a_subscriber_mid_run_does_not_affect_others_or_the_run(
    rt: tf.Runtime,
) -> None:
    release = trio.Event()

    async def waiter(ctx: tf.StepContext) -> int:
        await ctx.writer.write("before")
        await release.wait()
        await ctx.writer.write("after")
        return 1

    wf = chain("w", make_step("w", waiter))
    run = await wf.create_run()
    out = await run.stream(input_data=None)
    kept: list[Any] = []

    async def keep_reading() -> None:
        async for chunk in out:
            kept.append(chunk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(keep_reading)
        closing = out.full_stream()
        assert (await closing.__anext__()).type == "workflow-start"
        await trio.testing.wait_all_tasks_blocked()
        await closing.aclose()
        release.set()
    assert [o.payload.output for o in of_type(kept, tf.WorkflowStepOutput)] == ["before", "after"]
    assert types_of(kept)[-1] == "workflow-finish"
    assert (await out.result()).status == "success"


async def test_output_aclose_detaches_its_subscribers_but_not_the_run(rt: tf.Runtime) -> None:
    release = trio.Event()

    async def waiter(ctx: tf.StepContext) -> int:
        await release.wait()
        return 1

    wf = chain("w", make_step("w", waiter))
    run = await wf.create_run()
    out = await run.stream(input_data=None)
    sub = out.full_stream()
    assert (await sub.__anext__()).type == "workflow-start"
    await out.aclose()
    release.set()
    assert await collect(sub) == []
    assert (await out.result()).status == "success"
    assert types_of(await log_of(run))[-1] == "workflow-finish"


async def test_twenty_concurrent_output_subscribers_each_get_every_chunk_once_in_order(
    rt: tf.Runtime,
) -> None:
    release = trio.Event()

    async def talk(ctx: tf.StepContext) -> int:
        await release.wait()
        for i in range(50):
            await ctx.writer.write(i)
        return 1

    wf = chain("w", make_step("talk", talk), add("b", 1))
    run = await wf.create_run()
    out = await run.stream(input_data=None)
    received: list[list[Any]] = [[] for _ in range(20)]

    async def reader(i: int) -> None:
        async for chunk in out:
            received[i].append(chunk)

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(reader, i)
        await trio.testing.wait_all_tasks_blocked()
        assert all(types_of(r) == ["workflow-start", "workflow-step-start"] for r in received)
        release.set()
    log = await log_of(run)
    assert len(log) == 2 + 50 + 1 + 2 + 1
    assert_well_formed(log, run.run_id)
    for r in received:
        assert r == log


async def test_twenty_concurrent_observers_each_get_every_chunk_once_in_order(
    rt: tf.Runtime,
) -> None:
    async def talk(ctx: tf.StepContext) -> int:
        for i in range(30):
            await ctx.writer.write(i)
        return 1

    wf = chain("w", make_step("talk", talk))
    run = await wf.create_run()
    received: list[list[Any]] = [[] for _ in range(20)]

    async def observer(i: int) -> None:
        async with run.observe_stream() as sub:
            async for chunk in sub:
                received[i].append(chunk)

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(observer, i)
        await trio.testing.wait_all_tasks_blocked()
        assert received == [[] for _ in range(20)]  # nothing before the run starts
        out = await run.stream(input_data=None)
    log = await log_of(run)
    assert_well_formed(log, run.run_id)
    assert len(log) == 1 + 1 + 30 + 1 + 1
    for r in received:
        assert r == log
    assert (await out.result()).status == "success"


async def test_a_subscriber_that_never_reads_does_not_block_or_lose_100k_chunks(
    rt: tf.Runtime,
) -> None:
    n = 100_000
    holder: list[tf.Run] = []
    samples: list[Any] = []

    async def flood(ctx: tf.StepContext) -> int:
        log = holder[0]._hub.log
        for i in range(n):
            await ctx.writer.write(i)
            if i % 1000 == 0:
                samples.append(log.statistics())
        samples.append(log.statistics())
        return n

    wf = chain("flood", make_step("flood", flood))
    run = await wf.create_run()
    holder.append(run)
    idle = run.observe_stream()  # attached before the run starts, never read during it
    out = await run.stream(input_data=None)
    idle_output = out.full_stream()  # a RunOutput subscriber that never reads either
    with trio.fail_after(120):
        result = await out.result()
    assert result.status == "success"
    assert result.result == n

    assert len(samples) > 50
    for stats in samples:
        assert stats.in_memory <= DEFAULT_WINDOW + stats.unflushed, stats
    assert max(s.in_memory for s in samples) < n // 10  # bounded, not growing with the log

    expected_len = 1 + 1 + n + 1 + 1
    for source in (idle, idle_output, run.observe_stream(), out.full_stream()):
        chunks = await collect(source)
        assert len(chunks) == expected_len
        assert [c.seq for c in chunks] == list(range(1, expected_len + 1))
        outputs = [c.payload.output for c in chunks if isinstance(c, tf.WorkflowStepOutput)]
        assert outputs == list(range(n))
        assert chunks[-1].type == "workflow-finish"


async def test_log_memory_window_after_the_run_is_at_most_window_plus_unflushed(
    rt: tf.Runtime,
) -> None:
    n = 3 * DEFAULT_WINDOW

    async def flood(ctx: tf.StepContext) -> int:
        for i in range(n):
            await ctx.writer.write(i)
        return n

    wf = chain("flood", make_step("flood", flood))
    run = await wf.create_run()
    assert (await (await run.stream(input_data=None)).result()).status == "success"
    stats = run._hub.log.statistics()
    assert stats.next_seq == n + 5
    assert stats.in_memory <= DEFAULT_WINDOW + stats.unflushed, stats
    assert len(await log_of(run)) == n + 4


# --------------------------------------------------------------------------- observe_stream


async def test_observe_stream_from_seq_mid_run_follow_false_ends_at_the_current_end(
    rt: tf.Runtime,
) -> None:
    release = trio.Event()

    async def waiter(ctx: tf.StepContext) -> int:
        await ctx.writer.write("w1")
        await ctx.writer.write("w2")
        await release.wait()
        return 1

    wf = chain("w", make_step("w", waiter))
    run = await wf.create_run()
    out = await run.stream(input_data=None)
    await trio.testing.wait_all_tasks_blocked()
    now = await collect(run.observe_stream(from_seq=2, follow=False))
    assert [c.seq for c in now] == [2, 3, 4]
    assert types_of(now) == ["workflow-step-start", "workflow-step-output", "workflow-step-output"]
    release.set()
    assert (await out.result()).status == "success"


async def test_observe_stream_from_seq_mid_run_follow_true_gets_the_live_rest(
    rt: tf.Runtime,
) -> None:
    release = trio.Event()

    async def waiter(ctx: tf.StepContext) -> int:
        await ctx.writer.write("w1")
        await release.wait()
        await ctx.writer.write("w2")
        return 1

    wf = chain("w", make_step("w", waiter))
    run = await wf.create_run()
    await run.stream(input_data=None)
    await trio.testing.wait_all_tasks_blocked()
    got: list[Any] = []

    async def observe() -> None:
        async for chunk in run.observe_stream(from_seq=3):
            got.append(chunk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(observe)
        await trio.testing.wait_all_tasks_blocked()
        assert [c.seq for c in got] == [3]
        release.set()
    assert [c.seq for c in got] == [3, 4, 5, 6]
    assert types_of(got) == [
        "workflow-step-output",
        "workflow-step-output",
        "workflow-step-result",
        "workflow-finish",
    ]


async def test_observe_stream_after_the_run_ended_replays_from_seq_including_finish(
    rt: tf.Runtime,
) -> None:
    run, out = await two_steps(rt)
    await out.result()
    tail = await collect(run.observe_stream(from_seq=4))
    assert [c.seq for c in tail] == [4, 5, 6]
    assert isinstance(tail[-1], tf.WorkflowFinish)
    assert tail[-1].payload.workflow_status == "success"
    whole = await collect(run.observe_stream())
    assert whole == await collect(out)
    assert await collect(run.observe_stream(from_seq=7, follow=False)) == []


async def test_observe_stream_follow_true_continues_across_suspension_and_resume(
    rt: tf.Runtime,
) -> None:
    wf = chain("held", gate("g"), add("b", 1))
    run = await wf.create_run()
    got: list[Any] = []
    done = trio.Event()

    async def observe() -> None:
        async for chunk in run.observe_stream():
            got.append(chunk)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(observe)
        await run.stream(input_data=1)
        await trio.testing.wait_all_tasks_blocked()
        assert run.status == "suspended"
        assert not done.is_set()
        assert types_of(got)[-1] == "workflow-finish"
        assert got[-1].payload.workflow_status == "suspended"
        await run.resume(resume_data={"add": 1})
    assert types_of(got) == [
        "workflow-start",
        "workflow-step-start",
        "workflow-step-suspended",
        "workflow-finish",
        "workflow-start",
        "workflow-step-start",
        "workflow-step-result",
        "workflow-step-start",
        "workflow-step-result",
        "workflow-finish",
    ]
    assert [c.payload.workflow_status for c in of_type(got, tf.WorkflowFinish)] == [
        "suspended",
        "success",
    ]
    assert_well_formed(got, run.run_id)


async def test_observe_stream_follow_false_on_a_suspended_run_ends_at_its_finish(
    rt: tf.Runtime,
) -> None:
    wf = chain("held", gate("g"))
    run = await wf.create_run()
    await (await run.stream(input_data=1)).result()
    chunks = await collect(run.observe_stream(follow=False))
    assert types_of(chunks)[-1] == "workflow-finish"
    assert chunks[-1].payload.workflow_status == "suspended"
    assert len(chunks) == 4


async def test_observe_stream_following_a_suspended_run_ends_when_it_is_canceled(
    rt: tf.Runtime,
) -> None:
    wf = chain("held", gate("g"))
    run = await wf.create_run()
    await (await run.stream(input_data=1)).result()
    got: list[Any] = []

    async def observe() -> None:
        async for chunk in run.observe_stream():
            got.append(chunk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(observe)
        await trio.testing.wait_all_tasks_blocked()
        assert len(got) == 4
        await run.cancel()
    assert types_of(got)[-2:] == ["workflow-canceled", "workflow-finish"]
    assert got[-1].payload.workflow_status == "canceled"
    assert_well_formed(got, run.run_id)


async def test_observe_stream_before_start_follow_false_ends_at_once(rt: tf.Runtime) -> None:
    wf = chain("two", add("a", 1))
    run = await wf.create_run()
    with trio.fail_after(1):
        assert await collect(run.observe_stream(follow=False)) == []


async def test_observe_stream_before_start_follow_true_waits_for_the_first_chunk(
    rt: tf.Runtime,
) -> None:
    wf = chain("two", add("a", 1), add("b", 10))
    run = await wf.create_run()
    got: list[Any] = []
    done = trio.Event()

    async def observe() -> None:
        async for chunk in run.observe_stream():
            got.append(chunk)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(observe)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        assert not done.is_set()
        out = await run.stream(input_data=1)
    assert got == await collect(out)
    assert len(got) == 6


async def test_observe_stream_of_a_rebound_run_replays_the_stored_log(rt: tf.Runtime) -> None:
    wf = chain("two", add("a", 1), add("b", 10))
    run = await wf.create_run()
    chunks = await collect(await run.stream(input_data=1))
    again = await wf.create_run(run_id=run.run_id)
    assert await collect(again.observe_stream(follow=False)) == chunks
    assert await collect(again.observe_stream(from_seq=5)) == chunks[4:]


# --------------------------------------------------------------------------- RunOutput


async def test_run_output_identity_status_and_usage(rt: tf.Runtime) -> None:
    run, out = await two_steps(rt)
    assert out.run_id == run.run_id
    assert out.workflow_id == "two"
    result = await out.result()
    assert isinstance(out.trace_id, str)
    assert out.trace_id
    assert result.trace_id == out.trace_id
    assert out.status == "success"
    assert await out.usage() == tf.Usage()


async def test_run_progresses_with_nobody_reading_and_late_reader_gets_finish(
    rt: tf.Runtime,
) -> None:
    _, out = await two_steps(rt)
    result = await out.result()  # never iterated
    assert result.status == "success"
    chunks = await collect(out)
    assert len(chunks) == 6
    assert isinstance(chunks[-1], tf.WorkflowFinish)


async def test_usage_resolves_only_when_the_stream_ends(rt: tf.Runtime) -> None:
    release = trio.Event()

    async def waiter(ctx: tf.StepContext) -> int:
        ctx.record_usage(tf.Usage(input_tokens=3, output_tokens=4, total_tokens=7))
        await release.wait()
        return 1

    wf = chain("w", make_step("w", waiter))
    run = await wf.create_run()
    out = await run.stream(input_data=None)
    usages: list[tf.Usage] = []

    async def wait_usage() -> None:
        usages.append(await out.usage())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_usage)
        await trio.testing.wait_all_tasks_blocked()
        assert usages == []
        release.set()
    assert [(u.input_tokens, u.output_tokens, u.total_tokens) for u in usages] == [(3, 4, 7)]
    finish = (await collect(out))[-1]
    assert (finish.payload.usage.input_tokens, finish.payload.usage.total_tokens) == (3, 7)


@attrs.frozen
class Item:
    name: str
    qty: int


async def test_chunks_carry_json_data_not_attrs_instances(rt: tf.Runtime) -> None:
    async def make(ctx: tf.StepContext) -> Item:
        await ctx.writer.write(Item("pen", 2))
        return Item("pen", int(ctx.input_data))

    wf = chain("typed", make_step("make", make))
    run = await wf.create_run()
    out = await run.stream(input_data=3)
    chunks = await collect(out)
    assert of_type(chunks, tf.WorkflowStepOutput)[0].payload.output == {"name": "pen", "qty": 2}
    assert of_type(chunks, tf.WorkflowStepResult)[0].payload.output == {"name": "pen", "qty": 3}
    assert (await out.result()).result == Item("pen", 3)  # the live result keeps the instance


# --------------------------------------------------------------------------- more sequences


async def test_start_without_streaming_still_writes_the_whole_log(rt: tf.Runtime) -> None:
    wf = chain("two", add("a", 1), add("b", 10))
    run = await wf.create_run()
    result = await run.start(input_data=1)
    assert result.status == "success"
    chunks = await log_of(run)
    assert types_of(chunks) == [
        "workflow-start",
        "workflow-step-start",
        "workflow-step-result",
        "workflow-step-start",
        "workflow-step-result",
        "workflow-finish",
    ]
    assert_well_formed(chunks, run.run_id)


async def test_stream_of_a_started_run_raises_and_adds_nothing_to_the_log(
    rt: tf.Runtime,
) -> None:
    run, out = await two_steps(rt)
    await out.result()
    with pytest.raises(tf.RunAlreadyStartedError):
        await run.stream(input_data=1)
    assert len(await log_of(run)) == 6


async def test_invalid_input_raises_before_anything_is_logged(rt: tf.Runtime) -> None:
    wf = tf.create_workflow(id="typed", input_schema=Item).then(add("a", 1)).commit()
    run = await wf.create_run()
    with pytest.raises(tf.ValidationError):
        await run.stream(input_data={"name": "pen", "qty": "many"})
    assert await log_of(run) == []


async def test_seq_continues_across_a_per_step_pause_and_restart(rt: tf.Runtime) -> None:
    run, out = await two_steps(rt, per_step=True)
    assert (await out.result()).status == "paused"
    result = await run.restart()
    assert result.status == "success"
    assert result.result == 12
    chunks = await log_of(run)
    assert_well_formed(chunks, run.run_id)
    assert types_of(chunks[:5])[-2:] == ["workflow-paused", "workflow-finish"]
    rest = chunks[5:]
    assert rest[0].type == "workflow-start"
    assert rest[0].seq == 6
    assert ids_of(rest, tf.WorkflowStepStart) == ["b"]  # a is not run again
    assert rest[-1].payload.workflow_status == "success"


async def test_tripwire_finish_carries_the_tripwire(rt: tf.Runtime) -> None:
    async def guard(ctx: tf.StepContext) -> None:
        raise tf.TripwireError("blocked", metadata={"rule": 7})

    wf = chain("guarded", make_step("guard", guard))
    run = await wf.create_run()
    out = await run.stream(input_data=None)
    chunks = await collect(out)
    finish = chunks[-1]
    assert isinstance(finish, tf.WorkflowFinish)
    assert finish.payload.workflow_status == "tripwire"
    assert finish.payload.tripwire is not None
    assert finish.payload.tripwire.reason == "blocked"
    assert (await out.result()).status == "tripwire"


async def test_bail_ends_the_stream_with_success_and_no_later_steps(rt: tf.Runtime) -> None:
    async def bailer(ctx: tf.StepContext) -> int:
        ctx.bail({"early": True})
        return 0

    wf = chain("bails", make_step("bailer", bailer), add("never", 1))
    run = await wf.create_run()
    out = await run.stream(input_data=None)
    chunks = await collect(out)
    assert ids_of(chunks, tf.WorkflowStepStart) == ["bailer"]
    assert chunks[-1].payload.workflow_status == "success"
    assert (await out.result()).result == {"early": True}


async def test_abort_from_a_step_streams_canceled_then_finish(rt: tf.Runtime) -> None:
    async def aborter(ctx: tf.StepContext) -> None:
        ctx.abort()
        await trio.sleep_forever()

    wf = chain("aborts", make_step("aborter", aborter), add("never", 1))
    run = await wf.create_run()
    out = await run.stream(input_data=None)
    chunks = await collect(out)
    assert types_of(chunks)[-2:] == ["workflow-canceled", "workflow-finish"]
    assert chunks[-1].payload.workflow_status == "canceled"
    assert "never" not in ids_of(chunks, tf.WorkflowStepStart)


async def test_parallel_branches_each_stream_their_start_and_result(rt: tf.Runtime) -> None:
    wf = tf.create_workflow(id="par").parallel([add("x", 1), add("y", 2)]).commit()
    run = await wf.create_run()
    out = await run.stream(input_data=10)
    chunks = await collect(out)
    assert_well_formed(chunks, run.run_id)
    starts = {c.payload.id: c.payload.payload for c in of_type(chunks, tf.WorkflowStepStart)}
    results = {c.payload.id: c.payload.output for c in of_type(chunks, tf.WorkflowStepResult)}
    assert starts["x"] == starts["y"] == 10
    assert (results["x"], results["y"]) == (11, 12)
    for step_id in ("x", "y"):
        start_at = next(
            i
            for i, c in enumerate(chunks)
            if isinstance(c, tf.WorkflowStepStart) and c.payload.id == step_id
        )
        result_at = next(
            i
            for i, c in enumerate(chunks)
            if isinstance(c, tf.WorkflowStepResult) and c.payload.id == step_id
        )
        assert start_at < result_at
    assert (await out.result()).result == {"x": 11, "y": 12}


# --------------------------------------------------------------------------- writer everywhere


async def test_writer_output_from_foreach_iterations_reaches_the_stream(rt: tf.Runtime) -> None:
    async def body(ctx: tf.StepContext) -> int:
        await ctx.writer.write({"item": ctx.input_data})
        return int(ctx.input_data)

    wf = tf.create_workflow(id="each").foreach(make_step("body", body)).commit()
    run = await wf.create_run()
    chunks = await collect(await run.stream(input_data=[1, 2, 3]))
    outputs = of_type(chunks, tf.WorkflowStepOutput)
    assert [o.payload.output for o in outputs] == [{"item": 1}, {"item": 2}, {"item": 3}]
    # each iteration's output comes before that iteration's progress chunk
    kinds = [c.type for c in chunks if c.type in ("workflow-step-output", "workflow-step-progress")]
    assert kinds == ["workflow-step-output", "workflow-step-progress"] * 3


async def test_writer_output_from_every_loop_iteration_reaches_the_stream(rt: tf.Runtime) -> None:
    async def body(ctx: tf.StepContext) -> int:
        await ctx.writer.write(ctx.iteration_count)
        return int(ctx.input_data) + 1

    async def done(ctx: tf.StepContext) -> bool:
        return int(ctx.input_data) >= 3

    wf = tf.create_workflow(id="loop").dountil(make_step("body", body), done).commit()
    run = await wf.create_run()
    out = await run.stream(input_data=0)
    chunks = await collect(out)
    assert [o.payload.output for o in of_type(chunks, tf.WorkflowStepOutput)] == [1, 2, 3]
    assert ids_of(chunks, tf.WorkflowStepStart) == ["body"] * 3
    assert (await out.result()).result == 3


# --------------------------------------------------------------------------- close_on_suspend


async def test_close_on_suspend_false_is_fed_by_resume_stream_too(rt: tf.Runtime) -> None:
    wf = chain("held", gate("g"), add("b", 10))
    run = await wf.create_run()
    out = await run.stream(input_data=1, close_on_suspend=False)
    original: list[Any] = []

    async def reader() -> None:
        async for chunk in out:
            original.append(chunk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert out.status == "suspended"
        out2 = await run.resume_stream(resume_data={"add": 1})
        second = await collect(out2)
    assert types_of(second)[0] == "workflow-start"
    assert second[-1].payload.workflow_status == "success"
    # the original stream saw the resumed execution's step chunks too, then ended
    assert original[-1].payload.workflow_status == "success"
    assert ids_of(original, tf.WorkflowStepResult) == ["g", "b"]
    assert [c.seq for c in of_type(original, tf.WorkflowStepResult)] == [
        c.seq for c in of_type(second, tf.WorkflowStepResult)
    ]
    assert (await out.result()).result == 12
    assert (await out2.result()).result == 12


async def test_close_on_suspend_false_ends_canceled_when_the_suspended_run_is_canceled(
    rt: tf.Runtime,
) -> None:
    wf = chain("held", gate("g"))
    run = await wf.create_run()
    out = await run.stream(input_data=1, close_on_suspend=False)
    seen: list[Any] = []

    async def reader() -> None:
        async for chunk in out:
            seen.append(chunk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        await run.cancel()
    assert types_of(seen)[-2:] == ["workflow-canceled", "workflow-finish"]
    assert seen[-1].payload.workflow_status == "canceled"
    assert (await out.result()).status == "canceled"


async def test_async_with_output_detaches_on_exit(rt: tf.Runtime) -> None:
    release = trio.Event()

    async def waiter(ctx: tf.StepContext) -> int:
        await release.wait()
        return 1

    wf = chain("w", make_step("w", waiter))
    run = await wf.create_run()
    out = await run.stream(input_data=None)
    async with out:
        sub = out.full_stream()
        assert (await sub.__anext__()).type == "workflow-start"
    release.set()
    assert await collect(sub) == []
    assert (await out.result()).status == "success"


# --------------------------------------------------------------------------- durable log


async def test_log_survives_the_runtime_and_seq_continues_in_a_new_one() -> None:
    storage = tf.MemoryStorage()
    wf = chain("held", add("a", 1), gate("g"))
    async with tf.open_runtime(storage=storage):
        run = await wf.create_run()
        first = await collect(await run.stream(input_data=1))
        run_id = run.run_id
    assert [c.seq for c in first] == [1, 2, 3, 4, 5, 6]

    async with tf.open_runtime(storage=storage):
        again = await wf.create_run(run_id=run_id)
        assert await collect(again.observe_stream(follow=False)) == first
        got: list[Any] = []

        async def observe() -> None:
            async for chunk in again.observe_stream(from_seq=5):
                got.append(chunk)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(observe)
            await trio.testing.wait_all_tasks_blocked()
            assert [c.seq for c in got] == [5, 6]  # replayed from storage, then waits
            out = await again.resume_stream(resume_data={"add": 3})
            second = await collect(out)
    assert [c.seq for c in second] == [7, 8, 9, 10]
    assert types_of(second) == [
        "workflow-start",
        "workflow-step-start",
        "workflow-step-result",
        "workflow-finish",
    ]
    assert got == first[4:] + second
    assert (await out.result()).result == 5


async def test_a_cancelled_receive_loses_no_chunk(
    rt: tf.Runtime, autojump_clock: trio.testing.MockClock
) -> None:
    release = trio.Event()

    async def waiter(ctx: tf.StepContext) -> int:
        await ctx.writer.write("w1")
        await release.wait()
        for i in range(5):
            await ctx.writer.write(i)
        return 1

    wf = chain("w", make_step("w", waiter))
    run = await wf.create_run()
    await run.stream(input_data=None)
    await trio.testing.wait_all_tasks_blocked()
    sub = run.observe_stream()
    got = [await sub.__anext__() for _ in range(3)]
    with trio.move_on_after(5) as timed_out:
        got.append(await sub.__anext__())  # nothing new yet: the wait is cancelled
    assert timed_out.cancelled_caught
    release.set()
    got.extend(await collect(sub))
    assert [c.seq for c in got] == list(range(1, 11))
    assert [o.payload.output for o in of_type(got, tf.WorkflowStepOutput)] == [
        "w1",
        0,
        1,
        2,
        3,
        4,
    ]
