"""Shrunk counterexamples of the property tests, kept as regular tests.

The first part holds engine bugs the properties found, each as the minimal workflow that
shows it, marked ``xfail(strict=True)``: when a fix lands the test passes, strict xfail
turns that into a failure, and the marker (and the matching exclusion in
tests/test_properties*.py) goes. The second part holds counterexamples that were the
harness's own mistakes: they pin down the rules the reference model, the stream invariants
and the crash comparison follow.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio

import trioflow as tf
from trioflow.testing import (
    BranchSpec,
    FaultPlan,
    FaultyStorage,
    ForeachSpec,
    GeneratedWorkflow,
    LoopSpec,
    MapSpec,
    ParallelSpec,
    ResumePlan,
    RunPlan,
    SimulatedCrash,
    SleepSpec,
    StepSpec,
    ThenSpec,
    WorkflowSpec,
    build_workflow,
    check_against_model,
    check_crash_points,
    check_stream_invariants,
    run_on_mock_clock,
)


@attrs.frozen
class Approval:
    ok: bool


def step(step_id: str, fn: Any, **kwargs: Any) -> tf.Step:
    return tf.create_step(id=step_id, execute=fn, **kwargs)


async def approve(ctx: tf.StepContext) -> Any:
    if ctx.resume_data is None:
        return await ctx.suspend({"item": ctx.input_data}, resume_label=f"item-{ctx.input_data}")
    return {"item": ctx.input_data, "ok": ctx.resume_data.ok}


async def crash_then_restart(workflow: tf.Workflow, write: int, input_data: Any) -> tf.RunState:
    """Crash right after durable write ``write`` (if the run gets that far), then
    restart() it in a new runtime if it was executing: the stored run at the end."""
    storage = FaultyStorage(tf.MemoryStorage(), crash_at=write, mode="after")
    try:
        async with tf.open_runtime(storage=storage):
            run = await workflow.create_run(run_id="r")
            await run.start(input_data=input_data)
    except (SimulatedCrash, BaseExceptionGroup) as crash:
        # The execution task and the waiting start() both raise the crash; open_runtime
        # raises the body's own (trioflow._groups), a group only around foreign errors.
        if isinstance(crash, BaseExceptionGroup) and crash.subgroup(SimulatedCrash) is None:
            raise
    storage.disarm()
    async with tf.open_runtime(storage=storage) as rt:
        run = await workflow.create_run(run_id="r")
        if (await rt.get_run_state("r")).status in ("running", "waiting"):
            await run.restart()
        return await rt.get_run_state("r")


async def results_after_each_crash(workflow: tf.Workflow, input_data: Any) -> list[tf.RunState]:
    """The recovered run for a crash after each of durable writes 3-8."""
    return [await crash_then_restart(workflow, k, input_data) for k in range(3, 9)]


# --- engine bugs ---------------------------------------------------------------------------


async def test_loop_over_a_nested_workflow_keeps_its_iteration_count_across_resume(
    autojump_clock: Any,
) -> None:
    inner = tf.create_workflow(id="inner").then(step("approve", approve, resume_schema=Approval))
    wf = (
        tf.create_workflow(id="wf")
        .dowhile(inner.commit(), lambda ctx: ctx.iteration_count < 2)
        .commit()
    )
    async with tf.open_runtime():
        run = await wf.create_run()
        result = await run.start(input_data=1)
        resumes = 0
        while result.status == "suspended" and resumes < 5:
            result = await run.resume(resume_data={"ok": True})
            resumes += 1
    # Two iterations, each suspending once: two resumes.
    assert result.status == "success"
    assert resumes == 2


async def test_observe_stream_positioned_after_the_final_chunk_ends(autojump_clock: Any) -> None:
    async def one(ctx: tf.StepContext) -> int:
        return 1

    wf = tf.create_workflow(id="wf").then(step("one", one)).commit()
    async with tf.open_runtime() as rt:
        run = await wf.create_run()
        await run.start(input_data=None)
        last = await rt.storage.last_seq(run.run_id)
        # A subscriber that read the workflow-finish, detached, and re-attaches from the
        # next seq must not wait forever for a chunk that never comes.
        with trio.fail_after(60):
            chunks = [c async for c in run.observe_stream(from_seq=last + 1)]
    assert chunks == []


@pytest.mark.parametrize(
    "how",
    [{"step": "per_item"}, {"step": "per_item", "for_each_index": 0}, {"label": "item-7"}, {}],
    ids=["by-step", "by-index", "by-label", "auto"],
)
async def test_foreach_over_a_nested_workflow_resumes_its_suspended_step(
    how: dict[str, Any], autojump_clock: Any
) -> None:
    inner = tf.create_workflow(id="per_item").then(step("approve", approve, resume_schema=Approval))
    wf = tf.create_workflow(id="wf").foreach(inner.commit()).commit()
    async with tf.open_runtime():
        run = await wf.create_run()
        first = await run.start(input_data=[7])
        assert first.status == "suspended"
        result = await run.resume(resume_data={"ok": True}, **how)
    assert result.status == "success"
    assert result.result == [{"item": 7, "ok": True}]


async def slow(ctx: tf.StepContext) -> Any:
    await trio.sleep(10)
    return ctx.input_data


async def slow_map(ctx: tf.StepContext) -> int:
    await trio.sleep(10)
    return 1


CANCELED_SHAPES = {
    "nested": (
        tf.create_workflow(id="wf")
        .then(tf.create_workflow(id="n").then(step("s", slow)).commit())
        .commit(),
        None,
    ),
    "foreach": (tf.create_workflow(id="wf").foreach(step("s", slow)).commit(), [1, 2]),
    "map": (tf.create_workflow(id="wf").map(slow_map).commit(), None),
    "foreach-concurrent": (
        tf.create_workflow(id="wf").foreach(step("s", slow), concurrency=2).commit(),
        [1, 2, 3],
    ),
    "nested-parallel": (
        tf.create_workflow(id="wf")
        .then(tf.create_workflow(id="n").parallel([step("a", slow), step("b", slow)]).commit())
        .commit(),
        None,
    ),
    "nested-foreach-concurrent": (
        tf.create_workflow(id="wf")
        .then(tf.create_workflow(id="n").foreach(step("s", slow), concurrency=3).commit())
        .commit(),
        [1, 2, 3],
    ),
}


@pytest.mark.parametrize("shape", sorted(CANCELED_SHAPES))
async def test_cancel_gives_every_started_entry_a_result(shape: str, autojump_clock: Any) -> None:
    workflow, input_data = CANCELED_SHAPES[shape]
    async with tf.open_runtime() as rt:
        run = await workflow.create_run()
        async with trio.open_nursery() as nursery:

            async def cancel_soon() -> None:
                await trio.sleep(1)
                await run.cancel()

            nursery.start_soon(cancel_soon)
            result = await run.start(input_data=input_data)
        events = await rt.storage.read_events(run.run_id)
    assert result.status == "canceled"
    assert check_stream_invariants(events) is None


async def test_restart_runs_a_branch_the_crash_interrupted(autojump_clock: Any) -> None:
    async def first(ctx: tf.StepContext) -> int:
        return 1

    async def double(ctx: tf.StepContext) -> int:
        return int(ctx.input_data) * 2

    wf = (
        tf.create_workflow(id="wf")
        .then(step("first", first))
        .branch([(lambda ctx: True, step("double", double))])
        .commit()
    )
    for result in await results_after_each_crash(wf, None):
        assert result.status == "success"
        assert result.result == {"double": 2}


async def test_restart_keeps_the_bail_of_a_foreach_iteration(autojump_clock: Any) -> None:
    async def bail(ctx: tf.StepContext) -> None:
        await trio.sleep(1)
        ctx.bail({"bailed": ctx.input_data})

    async def after(ctx: tf.StepContext) -> str:
        return "should not run"

    wf = tf.create_workflow(id="wf").foreach(step("bail", bail)).then(step("after", after)).commit()
    for result in await results_after_each_crash(wf, [5]):
        assert result.status == "success"
        assert result.result == {"bailed": 5}
        assert "after" not in result.steps


async def test_restart_keeps_a_suspended_foreach_iteration(autojump_clock: Any) -> None:
    wf = tf.create_workflow(id="wf").foreach(step("approve", approve, resume_schema=Approval))
    for result in await results_after_each_crash(wf.commit(), [7]):
        assert result.status == "suspended"
        assert result.suspended == [["approve"]]


def test_restart_does_not_rerun_finished_steps_of_a_nested_workflow() -> None:
    spec = WorkflowSpec(
        id="wf",
        entries=(
            ThenSpec(
                node=WorkflowSpec(
                    id="w1",
                    entries=(
                        ThenSpec(node=StepSpec(id="a")),
                        ParallelSpec(nodes=(StepSpec(id="b", sleep=1), StepSpec(id="c", sleep=3))),
                    ),
                )
            ),
        ),
    )

    async def check() -> None:
        # Crash points 4-6 (progress writes inside w1): w1.a and w1.b, stored as finished,
        # run again.
        await check_crash_points(build_workflow(spec), input_data={"x": 1})

    run_on_mock_clock(check)


# --- the harness's own rules ---------------------------------------------------------------


def check(spec: WorkflowSpec, faults: FaultPlan | None = None, **plan: Any) -> None:
    generated = GeneratedWorkflow(spec)
    run_plan = RunPlan(input_data={"x": 0}, resumes=ResumePlan(**plan))
    run_on_mock_clock(check_against_model, generated, run_plan, faults)


def test_resuming_one_of_two_suspended_branches_leaves_the_run_suspended() -> None:
    # The resumed execution finishes suspended although none of its steps suspended.
    check(
        WorkflowSpec(
            id="wf",
            entries=(
                ParallelSpec(
                    nodes=(
                        StepSpec(id="a", action="suspend"),
                        StepSpec(id="b", action="suspend", rounds=2),
                    )
                ),
            ),
        )
    )


def test_a_bailing_foreach_iteration_is_reported_failed_as_mastra_does() -> None:
    check(
        WorkflowSpec(
            id="wf",
            entries=(
                MapSpec(mode="list", length=2),
                ForeachSpec(node=StepSpec(id="s", action="bail"), concurrency=1),
                ThenSpec(node=StepSpec(id="never")),
            ),
        )
    )


def test_concurrent_failures_may_report_either_error() -> None:
    spec = WorkflowSpec(
        id="wf",
        entries=(
            ParallelSpec(nodes=(StepSpec(id="a", action="fail"), StepSpec(id="b", action="fail"))),
        ),
    )
    for write in (1, 2, 3, 4):
        check(spec, FaultPlan(crash_at=write, crash_mode="before"))


def test_a_restart_reopens_a_sleep_and_a_foreach_without_rerunning_them() -> None:
    spec = WorkflowSpec(
        id="wf",
        entries=(
            ThenSpec(node=StepSpec(id="a", action="suspend")),
            SleepSpec(seconds=2),
            MapSpec(mode="list", length=1),
            ForeachSpec(node=StepSpec(id="s1"), concurrency=1),
            ThenSpec(node=StepSpec(id="s2")),
        ),
    )
    for write in range(1, 12):
        for mode in ("before", "after"):
            check(spec, FaultPlan(crash_at=write, crash_mode=mode))


def test_nested_foreach_inside_a_concurrent_foreach_interleaves_progress() -> None:
    inner = WorkflowSpec(
        id="w1",
        entries=(
            MapSpec(mode="list", length=2),
            ForeachSpec(node=StepSpec(id="s1"), concurrency=1),
        ),
    )
    check(
        WorkflowSpec(
            id="wf",
            entries=(MapSpec(mode="list", length=2), ForeachSpec(node=inner, concurrency=2)),
        )
    )


def test_a_restarted_loop_repeats_iterations_that_were_only_in_the_log() -> None:
    # Durable storage writes chunks within 20 ms, snapshots only between entries: a loop
    # iteration can be in the log without being in the snapshot, and runs again after a
    # crash. Allowed (the snapshot is the durability unit); strict_log reports it.
    spec = WorkflowSpec(
        id="wf",
        entries=(LoopSpec(node=StepSpec(id="s", sleep=1), kind="dowhile", iterations=3),),
    )

    async def run() -> None:
        workflow = build_workflow(spec)
        report = await check_crash_points(workflow, input_data={"x": 0})
        assert any("s" in point.reran for point in report.points)
        strict = await check_crash_points(
            workflow, input_data={"x": 0}, strict_log=True, raise_on_mismatch=False
        )
        assert strict.failures()

    run_on_mock_clock(run)


def test_branch_conditions_that_raise_count_as_false() -> None:
    check(
        WorkflowSpec(
            id="wf",
            entries=(
                BranchSpec(
                    conditions=("raise", "true"),
                    nodes=(StepSpec(id="a"), StepSpec(id="b")),
                ),
            ),
        )
    )
