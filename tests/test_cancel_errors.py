"""Cancellation, errors, retries, timeouts, tripwires, lifecycle callbacks and result fields.

Covers SPEC §1 (retries, timeouts, callbacks, ``ctx.abort``, step input validation) and §2
(``run.cancel``, statuses, ``WorkflowResult``), ported from mastra-behaviour.md §3.7
(cancel), §4 (statuses and result shapes) and §7 (edge cases). Time only ever passes on
pytest-trio's ``autojump_clock``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from trio.testing import wait_all_tasks_blocked

import trioflow as tf
from trioflow._core import _status as core_status
from trioflow.testing import FaultyStorage

# --------------------------------------------------------------------------- helpers


class Boom(Exception):
    """A plain step failure."""


class UpstreamError(Exception):
    """An error with a custom attribute, as an HTTP client would raise."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


@attrs.frozen
class Order:
    id: str
    amount: int


@attrs.define
class Outcome:
    """Filled in by `start_into` when `run.start()` returns inside a nursery."""

    result: tf.WorkflowResult | None = None
    returned_at: float | None = None


StepFn = Callable[[tf.StepContext], Awaitable[Any]]


def make_step(step_id: str, execute: StepFn, **options: Any) -> tf.Step:
    return tf.create_step(id=step_id, execute=execute, **options)


def chain(wf_id: str, *steps: tf.Step, **options: Any) -> tf.Workflow:
    """A committed workflow running `steps` one after another."""
    wf = tf.create_workflow(id=wf_id, **options)
    for step in steps:
        wf = wf.then(step)
    return wf.commit()


def recorder(step_id: str, log: list[str]) -> tf.Step:
    """A step that appends its id to `log` and passes its input through."""

    async def execute(ctx: tf.StepContext) -> Any:
        await trio.lowlevel.checkpoint()
        log.append(step_id)
        return ctx.input_data

    return make_step(step_id, execute)


def blocker(step_id: str, entered: trio.Event, log: list[str], seconds: float = 60) -> tf.Step:
    """A step that signals `entered`, then sleeps `seconds` before recording completion."""

    async def execute(ctx: tf.StepContext) -> str:
        log.append(step_id)
        entered.set()
        await trio.sleep(seconds)
        log.append(f"{step_id}-finished")
        return "woke up"

    return make_step(step_id, execute)


def suspender(step_id: str, log: list[str]) -> tf.Step:
    """A step that suspends on first entry and returns its resume data when resumed."""

    async def execute(ctx: tf.StepContext) -> Any:
        await trio.lowlevel.checkpoint()
        log.append(step_id)
        if ctx.resume_data is None:
            return await ctx.suspend({"why": "needs approval"})
        return ctx.resume_data

    return make_step(step_id, execute)


async def start_into(run: tf.Run, box: Outcome, input_data: Any = 1, **kwargs: Any) -> None:
    box.result = await run.start(input_data=input_data, **kwargs)
    box.returned_at = trio.current_time()


async def start_then_cancel(run: tf.Run, entered: trio.Event) -> tuple[tf.WorkflowResult, float]:
    """Start `run` in a nursery, cancel it once `entered` is set.

    Returns the result and the virtual time that passed between the cancel call and
    `start()` returning.
    """
    box = Outcome()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(start_into, run, box)
        await entered.wait()
        cancelled_at = trio.current_time()
        await run.cancel()
    assert box.result is not None
    assert box.returned_at is not None
    return box.result, box.returned_at - cancelled_at


async def log_types(run: tf.Run) -> list[str]:
    """The chunk types of the run's whole event log (the run has ended)."""
    sub = run.observe_stream(from_seq=1, follow=False)
    async with sub:
        return [chunk.type async for chunk in sub]


async def drive(outcome: str, **wf_options: Any) -> tf.WorkflowResult:
    """Run a one-step workflow to `outcome` (success/failed/suspended/canceled/tripwire)."""
    entered = trio.Event()

    async def body(ctx: tf.StepContext) -> Any:
        await trio.lowlevel.checkpoint()
        if outcome == "failed":
            raise Boom("body failed")
        if outcome == "tripwire":
            raise tf.TripwireError("blocked", retry=False, metadata={"rule": "pii"})
        if outcome == "suspended":
            return await ctx.suspend({"why": "needs approval"})
        if outcome == "canceled":
            entered.set()
            await trio.sleep(60)
        return "done"

    wf = chain(f"drive-{outcome}", make_step("body", body), **wf_options)
    async with tf.open_runtime():
        run = await wf.create_run()
        if outcome == "canceled":
            result, _ = await start_then_cancel(run, entered)
            return result
        return await run.start(input_data=1)


OUTCOMES = ["success", "failed", "suspended", "canceled", "tripwire"]


# --------------------------------------------------------------------------- cancel


async def test_cancel_interrupts_step_blocked_in_sleep_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    entered, log = trio.Event(), []
    wf = chain("cancel-step", blocker("slow", entered, log))
    async with tf.open_runtime():
        run = await wf.create_run()
        result, elapsed = await start_then_cancel(run, entered)
    assert result.status == "canceled"
    assert elapsed < 1.0
    assert log == ["slow"]


async def test_cancel_during_step_never_runs_later_steps(
    autojump_clock: trio.testing.MockClock,
) -> None:
    entered, log = trio.Event(), []
    wf = chain("cancel-later", blocker("slow", entered, log), recorder("after", log))
    async with tf.open_runtime():
        run = await wf.create_run()
        result, _ = await start_then_cancel(run, entered)
    assert log == ["slow"]
    assert "after" not in result.steps
    assert result.result is None


async def test_cancel_of_running_step_is_stored_as_canceled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    entered, log = trio.Event(), []
    wf = chain("cancel-stored", blocker("slow", entered, log))
    async with tf.open_runtime() as rt:
        run = await wf.create_run()
        await start_then_cancel(run, entered)
        assert run.status == "canceled"
        assert (await rt.get_run_state(run.run_id)).status == "canceled"


async def test_canceled_step_result_is_canceled(autojump_clock: trio.testing.MockClock) -> None:
    # mastra-behaviour §3.7: the entry that was running when the cancel arrived is `canceled`.
    entered, log = trio.Event(), []
    wf = chain("cancel-step-status", blocker("slow", entered, log))
    async with tf.open_runtime():
        run = await wf.create_run()
        result, _ = await start_then_cancel(run, entered)
    # The log already says so (a workflow-step-result chunk with status canceled).
    assert "slow" in result.steps
    assert result.steps["slow"].status == "canceled"


async def test_run_status_is_waiting_during_sleep_entry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    wf = tf.create_workflow(id="waiting").then(recorder("a", log)).sleep(60).commit()
    async with tf.open_runtime():
        run = await wf.create_run()
        box = Outcome()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(start_into, run, box)
            await wait_all_tasks_blocked()
            status_while_sleeping = run.status
            await run.cancel()
    assert status_while_sleeping == "waiting"


async def test_cancel_during_sleep_entry_ends_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []
    wf = (
        tf.create_workflow(id="cancel-sleep")
        .then(recorder("a", log))
        .sleep(60)
        .then(recorder("b", log))
        .commit()
    )
    async with tf.open_runtime() as rt:
        run = await wf.create_run()
        box = Outcome()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(start_into, run, box)
            await wait_all_tasks_blocked()
            assert log == ["a"]
            cancelled_at = trio.current_time()
            await run.cancel()
        assert box.result is not None
        assert box.returned_at is not None
        assert box.result.status == "canceled"
        assert box.returned_at - cancelled_at < 1.0
        assert log == ["a"]
        assert (await rt.get_run_state(run.run_id)).status == "canceled"


async def test_cancelled_step_runs_its_shielded_finally(
    autojump_clock: trio.testing.MockClock,
) -> None:
    entered = trio.Event()
    events: list[str] = []

    async def careful(ctx: tf.StepContext) -> str:
        try:
            entered.set()
            await trio.sleep(60)
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(2)
                events.append("cleanup done")
        return "unreachable"

    wf = chain("cancel-shield", make_step("careful", careful))
    async with tf.open_runtime():
        run = await wf.create_run()
        result, elapsed = await start_then_cancel(run, entered)
    assert events == ["cleanup done"]
    assert result.status == "canceled"
    # start() returned only after the 2 s shielded cleanup finished.
    assert elapsed == pytest.approx(2.0)


async def test_cancel_reaches_step_as_trio_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    entered = trio.Event()
    caught: list[BaseException] = []

    async def watcher(ctx: tf.StepContext) -> str:
        try:
            entered.set()
            await trio.sleep(60)
        except trio.Cancelled as exc:
            caught.append(exc)
            raise
        return "unreachable"

    wf = chain("cancel-reraise", make_step("watcher", watcher))
    async with tf.open_runtime():
        run = await wf.create_run()
        result, elapsed = await start_then_cancel(run, entered)
    assert len(caught) == 1
    assert isinstance(caught[0], trio.Cancelled)
    assert result.status == "canceled"
    assert elapsed < 1.0


async def test_abort_from_step_cancels_run_and_skips_next_step() -> None:
    log: list[str] = []

    async def aborter(ctx: tf.StepContext) -> str:
        await trio.lowlevel.checkpoint()
        log.append("b")
        ctx.abort()
        return "b-out"

    wf = chain("abort", recorder("a", log), make_step("b", aborter), recorder("c", log))
    async with tf.open_runtime():
        run = await wf.create_run()
        result = await run.start(input_data=1)
    assert result.status == "canceled"
    assert log == ["a", "b"]
    assert "c" not in result.steps


async def test_abort_interrupts_the_aborting_step_at_its_next_checkpoint(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[str] = []

    async def aborter(ctx: tf.StepContext) -> str:
        ctx.abort()
        await trio.sleep(30)
        log.append("slept after abort")
        return "unreachable"

    wf = chain("abort-checkpoint", make_step("aborter", aborter))
    async with tf.open_runtime():
        run = await wf.create_run()
        t0 = trio.current_time()
        result = await run.start(input_data=1)
    assert result.status == "canceled"
    assert log == []
    assert trio.current_time() - t0 < 1.0


async def test_cancel_of_suspended_run_stores_canceled() -> None:
    log: list[str] = []
    wf = chain("cancel-suspended", suspender("gate", log))
    async with tf.open_runtime() as rt:
        run = await wf.create_run()
        first = await run.start(input_data=1)
        assert first.status == "suspended"
        await run.cancel()
        assert run.status == "canceled"
        assert (await rt.get_run_state(run.run_id)).status == "canceled"


async def test_resume_after_cancel_of_suspended_run_raises_not_suspended() -> None:
    log: list[str] = []
    wf = chain("cancel-suspended-resume", suspender("gate", log), recorder("after", log))
    async with tf.open_runtime():
        run = await wf.create_run()
        await run.start(input_data=1)
        await run.cancel()
        with pytest.raises(tf.NotSuspendedError, match="not suspended"):
            await run.resume(resume_data={"approved": True})
    assert log == ["gate"]


async def test_cancel_of_successful_run_changes_nothing() -> None:
    log: list[str] = []
    wf = chain("cancel-success", recorder("a", log))
    async with tf.open_runtime() as rt:
        run = await wf.create_run()
        result = await run.start(input_data=42)
        await run.cancel()
        assert run.status == "success"
        state = await rt.get_run_state(run.run_id)
        assert state.status == "success"
        assert state.result == 42
        assert "workflow-canceled" not in await log_types(run)
    assert result.status == "success"


async def test_cancel_of_failed_run_changes_nothing() -> None:
    async def failing(ctx: tf.StepContext) -> None:
        await trio.lowlevel.checkpoint()
        raise Boom("no")

    wf = chain("cancel-failed", make_step("failing", failing))
    async with tf.open_runtime() as rt:
        run = await wf.create_run()
        result = await run.start(input_data=1)
        await run.cancel()
        assert run.status == "failed"
        assert (await rt.get_run_state(run.run_id)).status == "failed"
        assert "workflow-canceled" not in await log_types(run)
    assert result.status == "failed"


async def test_cancel_from_another_task_returns_result_to_the_awaiting_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    entered, log = trio.Event(), []
    events: list[str] = []
    wf = chain("cancel-other-task", blocker("slow", entered, log))

    async def canceller(run: tf.Run) -> None:
        await entered.wait()
        await run.cancel()
        events.append("cancel sent")

    async def bystander() -> None:
        await trio.sleep(5)
        events.append("bystander done")

    async with tf.open_runtime():
        run = await wf.create_run()
        box = Outcome()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(start_into, run, box)
            nursery.start_soon(canceller, run)
            nursery.start_soon(bystander)
    # The run's cancel scope is not the caller's: start() returned a result, and the
    # sibling task in the caller's nursery was not cancelled.
    assert box.result is not None
    assert box.result.status == "canceled"
    assert events == ["cancel sent", "bystander done"]


async def test_cancel_of_one_run_leaves_a_concurrent_run_untouched(
    autojump_clock: trio.testing.MockClock,
) -> None:
    entered = trio.Event()

    async def nap(ctx: tf.StepContext) -> float:
        if ctx.input_data == 60:
            entered.set()
        await trio.sleep(ctx.input_data)
        return float(ctx.input_data)

    wf = chain("cancel-one", make_step("nap", nap))
    async with tf.open_runtime():
        doomed, other = await wf.create_run(), await wf.create_run()
        doomed_box, other_box = Outcome(), Outcome()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(start_into, doomed, doomed_box, 60)
            nursery.start_soon(start_into, other, other_box, 5)
            await entered.wait()
            await doomed.cancel()
    assert doomed_box.result is not None
    assert other_box.result is not None
    assert doomed_box.result.status == "canceled"
    assert other_box.result.status == "success"
    assert other_box.result.result == 5.0


async def test_cancel_log_ends_with_canceled_then_finish(
    autojump_clock: trio.testing.MockClock,
) -> None:
    entered, log = trio.Event(), []
    wf = chain("cancel-log", blocker("slow", entered, log), recorder("after", log))
    async with tf.open_runtime():
        run = await wf.create_run()
        await start_then_cancel(run, entered)
        sub = run.observe_stream(from_seq=1, follow=False)
        async with sub:
            chunks = [chunk async for chunk in sub]
    types = [chunk.type for chunk in chunks]
    assert types[0] == "workflow-start"
    assert types[-2:] == ["workflow-canceled", "workflow-finish"]
    assert chunks[-1].payload.workflow_status == "canceled"
    started = [c.payload.id for c in chunks if c.type == "workflow-step-start"]
    assert started == ["slow"]


# --------------------------------------------------------------------------- errors


def raising_step(
    step_id: str, raised: list[BaseException], make: Callable[[], BaseException]
) -> tf.Step:
    """A step that raises a fresh `make()` on every attempt and records it in `raised`."""

    async def execute(ctx: tf.StepContext) -> None:
        await trio.lowlevel.checkpoint()
        exc = make()
        raised.append(exc)
        raise exc

    return make_step(step_id, execute)


async def test_failed_result_error_is_the_raised_object() -> None:
    raised: list[BaseException] = []
    wf = chain("err-identity", raising_step("call", raised, lambda: UpstreamError("nope", 503)))
    async with tf.open_runtime():
        run = await wf.create_run()
        result = await run.start(input_data=1)
    assert result.status == "failed"
    assert result.error is raised[0]


async def test_failed_result_error_is_not_an_exception_group() -> None:
    raised: list[BaseException] = []
    wf = chain("err-no-group", raising_step("call", raised, lambda: Boom("plain")))
    async with tf.open_runtime():
        run = await wf.create_run()
        result = await run.start(input_data=1)
    assert not isinstance(result.error, BaseExceptionGroup)
    assert type(result.error) is Boom


async def test_failed_result_error_keeps_custom_attributes() -> None:
    raised: list[BaseException] = []
    wf = chain("err-attrs", raising_step("call", raised, lambda: UpstreamError("nope", 503)))
    async with tf.open_runtime():
        run = await wf.create_run()
        result = await run.start(input_data=1)
    assert isinstance(result.error, UpstreamError)
    assert result.error.status_code == 503
    assert str(result.error) == "nope"


async def test_failed_result_error_keeps_its_cause() -> None:
    async def call(ctx: tf.StepContext) -> None:
        await trio.lowlevel.checkpoint()
        try:
            {}["missing"]
        except KeyError as exc:
            raise UpstreamError("lookup failed", 500) from exc

    wf = chain("err-cause", make_step("call", call))
    async with tf.open_runtime():
        run = await wf.create_run()
        result = await run.start(input_data=1)
    assert isinstance(result.error, UpstreamError)
    assert isinstance(result.error.__cause__, KeyError)
    assert result.error.__cause__.args == ("missing",)


async def test_failed_step_result_holds_the_same_error() -> None:
    raised: list[BaseException] = []
    wf = chain("err-step", raising_step("call", raised, lambda: UpstreamError("nope", 404)))
    async with tf.open_runtime():
        run = await wf.create_run()
        result = await run.start(input_data=1)
    assert result.steps["call"].status == "failed"
    assert result.steps["call"].error is raised[0]


async def test_step_raising_its_own_exception_group_keeps_that_group() -> None:
    raised: list[BaseException] = []
    wf = chain(
        "err-own-group",
        raising_step("fan", raised, lambda: ExceptionGroup("mine", [Boom("one"), Boom("two")])),
    )
    async with tf.open_runtime():
        run = await wf.create_run()
        result = await run.start(input_data=1)
    assert result.status == "failed"
    assert result.error is raised[0]


async def test_failed_step_stops_the_workflow() -> None:
    log: list[str] = []
    raised: list[BaseException] = []
    wf = chain(
        "err-stops",
        recorder("a", log),
        raising_step("b", raised, lambda: Boom("b broke")),
        recorder("c", log),
    )
    async with tf.open_runtime():
        run = await wf.create_run()
        result = await run.start(input_data=1)
    assert result.status == "failed"
    assert result.result is None
    assert log == ["a"]
    assert "c" not in result.steps
    assert result.steps["a"].status == "success"


async def test_step_error_never_escapes_into_the_runtime(
    autojump_clock: trio.testing.MockClock,
) -> None:
    raised: list[BaseException] = []

    async def slow_ok(ctx: tf.StepContext) -> str:
        await trio.sleep(5)
        return "fine"

    failing_wf = chain("err-escape-fail", raising_step("boom", raised, lambda: Boom("x")))
    ok_wf = chain("err-escape-ok", make_step("slow_ok", slow_ok))
    failing_box, ok_box = Outcome(), Outcome()
    async with tf.open_runtime():
        failing_run, ok_run = await failing_wf.create_run(), await ok_wf.create_run()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(start_into, ok_run, ok_box)
            nursery.start_soon(start_into, failing_run, failing_box)
    # Reaching this line means neither the runtime nor the caller's nursery raised.
    assert failing_box.result is not None
    assert ok_box.result is not None
    assert failing_box.result.status == "failed"
    assert ok_box.result.status == "success"
    assert ok_box.result.result == "fine"


# --------------------------------------------------------------------------- retries


def counting_step(
    step_id: str,
    counts: list[int],
    *,
    succeed_at: int | None = None,
    raised: list[BaseException] | None = None,
    **options: Any,
) -> tf.Step:
    """Records ctx.retry_count per attempt; fails until attempt `succeed_at` (never if None)."""

    async def execute(ctx: tf.StepContext) -> str:
        await trio.lowlevel.checkpoint()
        counts.append(ctx.retry_count)
        if succeed_at is not None and ctx.retry_count >= succeed_at:
            return f"ok on attempt {ctx.retry_count}"
        exc = Boom(f"attempt {ctx.retry_count}")
        if raised is not None:
            raised.append(exc)
        raise exc

    return make_step(step_id, execute, **options)


async def test_no_retries_by_default() -> None:
    counts: list[int] = []
    wf = chain("retry-default", counting_step("flaky", counts))
    async with tf.open_runtime():
        result = await (await wf.create_run()).start(input_data=1)
    assert result.status == "failed"
    assert counts == [0]


async def test_retries_reruns_failing_step_n_more_times() -> None:
    counts: list[int] = []
    wf = chain("retry-n", counting_step("flaky", counts, retries=2))
    async with tf.open_runtime():
        result = await (await wf.create_run()).start(input_data=1)
    assert result.status == "failed"
    assert len(counts) == 3


async def test_retry_count_goes_from_zero_to_n() -> None:
    counts: list[int] = []
    wf = chain("retry-count", counting_step("flaky", counts, retries=3))
    async with tf.open_runtime():
        await (await wf.create_run()).start(input_data=1)
    assert counts == [0, 1, 2, 3]


async def test_retry_succeeds_on_a_later_attempt() -> None:
    counts: list[int] = []
    wf = chain("retry-later", counting_step("flaky", counts, succeed_at=2, retries=5))
    async with tf.open_runtime():
        result = await (await wf.create_run()).start(input_data=1)
    assert result.status == "success"
    assert result.result == "ok on attempt 2"
    assert counts == [0, 1, 2]
    assert result.steps["flaky"].status == "success"


async def test_error_after_retries_is_the_last_attempts_exception() -> None:
    counts: list[int] = []
    raised: list[BaseException] = []
    wf = chain("retry-last-error", counting_step("flaky", counts, raised=raised, retries=2))
    async with tf.open_runtime():
        result = await (await wf.create_run()).start(input_data=1)
    assert len(raised) == 3
    assert result.error is raised[-1]
    assert result.steps["flaky"].error is raised[-1]


async def test_retry_config_attempts_and_delay_are_honoured(
    autojump_clock: trio.testing.MockClock,
) -> None:
    times: list[float] = []

    async def flaky(ctx: tf.StepContext) -> None:
        await trio.lowlevel.checkpoint()
        times.append(trio.current_time())
        raise Boom("again")

    wf = chain(
        "retry-config",
        make_step("flaky", flaky),
        retry_config=tf.RetryConfig(attempts=2, delay=1.0),
    )
    async with tf.open_runtime():
        run = await wf.create_run()
        t0 = trio.current_time()
        result = await run.start(input_data=1)
        elapsed = trio.current_time() - t0
    assert result.status == "failed"
    assert [t - t0 for t in times] == pytest.approx([0.0, 1.0, 2.0])
    # Exactly the two delays: no wait before the first attempt nor after the last.
    assert elapsed == pytest.approx(2.0)


async def test_step_retries_override_retry_config_attempts() -> None:
    counts: list[int] = []
    wf = chain(
        "retry-override",
        counting_step("flaky", counts, retries=1),
        retry_config=tf.RetryConfig(attempts=5, delay=0.0),
    )
    async with tf.open_runtime():
        await (await wf.create_run()).start(input_data=1)
    assert counts == [0, 1]


async def test_step_retries_zero_overrides_retry_config_attempts() -> None:
    counts: list[int] = []
    wf = chain(
        "retry-override-zero",
        counting_step("flaky", counts, retries=0),
        retry_config=tf.RetryConfig(attempts=3, delay=0.0),
    )
    async with tf.open_runtime():
        await (await wf.create_run()).start(input_data=1)
    assert counts == [0]


async def test_step_retries_wait_retry_config_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    times: list[float] = []

    async def flaky(ctx: tf.StepContext) -> None:
        await trio.lowlevel.checkpoint()
        times.append(trio.current_time())
        raise Boom("again")

    wf = chain(
        "retry-step-delay",
        make_step("flaky", flaky, retries=2),
        retry_config=tf.RetryConfig(attempts=0, delay=3.0),
    )
    async with tf.open_runtime():
        run = await wf.create_run()
        t0 = trio.current_time()
        await run.start(input_data=1)
    assert [t - t0 for t in times] == pytest.approx([0.0, 3.0, 6.0])


async def test_non_retryable_error_stops_retrying_at_once() -> None:
    counts: list[int] = []
    raised: list[BaseException] = []

    async def fatal(ctx: tf.StepContext) -> None:
        await trio.lowlevel.checkpoint()
        counts.append(ctx.retry_count)
        exc = tf.NonRetryableError("card declined")
        raised.append(exc)
        raise exc

    wf = chain(
        "retry-fatal",
        make_step("fatal", fatal, retries=3),
        retry_config=tf.RetryConfig(attempts=3, delay=1.0),
    )
    async with tf.open_runtime():
        result = await (await wf.create_run()).start(input_data=1)
    assert counts == [0]
    assert result.status == "failed"
    assert result.error is raised[0]


# --------------------------------------------------------------------------- timeouts


def sleeper(step_id: str, durations: list[float], counts: list[int], **options: Any) -> tf.Step:
    """Attempt k sleeps durations[k] (the last duration repeats) and returns it."""

    async def execute(ctx: tf.StepContext) -> float:
        counts.append(ctx.retry_count)
        seconds = durations[min(ctx.retry_count, len(durations) - 1)]
        await trio.sleep(seconds)
        return seconds

    return make_step(step_id, execute, **options)


async def test_step_over_its_timeout_fails_with_step_timeout_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    counts: list[int] = []
    wf = chain("timeout", sleeper("slow", [10], counts, timeout=5))
    async with tf.open_runtime():
        run = await wf.create_run()
        t0 = trio.current_time()
        result = await run.start(input_data=1)
        elapsed = trio.current_time() - t0
    assert result.status == "failed"
    assert isinstance(result.error, tf.StepTimeoutError)
    assert isinstance(result.steps["slow"].error, tf.StepTimeoutError)
    assert elapsed == pytest.approx(5.0)


async def test_step_within_its_timeout_succeeds(autojump_clock: trio.testing.MockClock) -> None:
    counts: list[int] = []
    wf = chain("timeout-ok", sleeper("quick", [1], counts, timeout=5))
    async with tf.open_runtime():
        result = await (await wf.create_run()).start(input_data=1)
    assert result.status == "success"
    assert result.result == 1


async def test_timeout_is_retried_with_retries(autojump_clock: trio.testing.MockClock) -> None:
    counts: list[int] = []
    wf = chain("timeout-retry", sleeper("slow", [10], counts, timeout=5, retries=2))
    async with tf.open_runtime():
        run = await wf.create_run()
        t0 = trio.current_time()
        result = await run.start(input_data=1)
        elapsed = trio.current_time() - t0
    assert counts == [0, 1, 2]
    assert result.status == "failed"
    assert isinstance(result.error, tf.StepTimeoutError)
    assert elapsed == pytest.approx(15.0)


async def test_timed_out_attempt_can_succeed_on_retry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    counts: list[int] = []
    wf = chain("timeout-recover", sleeper("slow", [10, 1], counts, timeout=5, retries=1))
    async with tf.open_runtime():
        run = await wf.create_run()
        t0 = trio.current_time()
        result = await run.start(input_data=1)
        elapsed = trio.current_time() - t0
    assert counts == [0, 1]
    assert result.status == "success"
    assert result.result == 1
    # A fresh deadline per attempt: 5 s for the timed-out one, then 1 s.
    assert elapsed == pytest.approx(6.0)


# --------------------------------------------------------------------------- tripwire and per_step


async def test_tripwire_error_ends_run_tripwire_with_info() -> None:
    log: list[str] = []

    async def guard(ctx: tf.StepContext) -> None:
        await trio.lowlevel.checkpoint()
        raise tf.TripwireError("blocked", retry=False, metadata={"rule": "pii"})

    wf = chain("tripwire", make_step("guard", guard), recorder("after", log))
    async with tf.open_runtime():
        result = await (await wf.create_run()).start(input_data=1)
    assert result.status == "tripwire"
    assert result.tripwire == tf.TripwireInfo(
        reason="blocked", retry=False, metadata={"rule": "pii"}, step_id="guard"
    )
    assert result.result is None
    assert log == []


async def test_no_tripwire_info_on_plain_failure() -> None:
    raised: list[BaseException] = []
    wf = chain("no-tripwire", raising_step("boom", raised, lambda: Boom("x")))
    async with tf.open_runtime():
        result = await (await wf.create_run()).start(input_data=1)
    assert result.status == "failed"
    assert result.tripwire is None


async def test_per_step_pauses_after_exactly_one_entry() -> None:
    log: list[str] = []
    wf = chain("per-step", recorder("a", log), recorder("b", log), recorder("c", log))
    async with tf.open_runtime():
        run = await wf.create_run()
        result = await run.start(input_data=1, per_step=True)
        assert run.status == "paused"
    assert result.status == "paused"
    assert log == ["a"]
    assert list(result.steps) == ["a"]
    assert result.steps["a"].status == "success"
    assert result.result is None


async def test_per_step_log_has_one_step_then_paused() -> None:
    log: list[str] = []
    wf = chain("per-step-log", recorder("a", log), recorder("b", log))
    async with tf.open_runtime():
        run = await wf.create_run()
        await run.start(input_data=1, per_step=True)
        sub = run.observe_stream(from_seq=1, follow=False)
        async with sub:
            chunks = [chunk async for chunk in sub]
    assert [c.type for c in chunks] == [
        "workflow-start",
        "workflow-step-start",
        "workflow-step-result",
        "workflow-paused",
        "workflow-finish",
    ]
    assert chunks[-1].payload.workflow_status == "paused"


# --------------------------------------------------------------------------- callbacks


async def test_sync_on_start_runs_before_first_step() -> None:
    log: list[str] = []

    def on_start(ctx: Any) -> None:
        log.append("on_start")

    wf = chain("on-start-sync", recorder("a", log), on_start=on_start)
    async with tf.open_runtime():
        result = await (await wf.create_run()).start(input_data=1)
    assert result.status == "success"
    assert log == ["on_start", "a"]


async def test_async_on_start_runs_before_first_step() -> None:
    log: list[str] = []

    async def on_start(ctx: Any) -> None:
        await trio.lowlevel.checkpoint()
        log.append("on_start")

    wf = chain("on-start-async", recorder("a", log), on_start=on_start)
    async with tf.open_runtime():
        result = await (await wf.create_run()).start(input_data=1)
    assert result.status == "success"
    assert log == ["on_start", "a"]


async def test_on_start_is_not_called_on_resume() -> None:
    log: list[str] = []

    def on_start(ctx: Any) -> None:
        log.append("on_start")

    wf = chain("on-start-resume", suspender("gate", log), recorder("after", log), on_start=on_start)
    async with tf.open_runtime():
        run = await wf.create_run()
        first = await run.start(input_data=1)
        second = await run.resume(resume_data={"approved": True})
    assert first.status == "suspended"
    assert second.status == "success"
    assert log == ["on_start", "gate", "gate", "after"]


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_raising_on_start_makes_start_raise_it_and_no_step_runs(kind: str) -> None:
    log: list[str] = []
    error = Boom("not today")

    def sync_on_start(ctx: Any) -> None:
        raise error

    async def async_on_start(ctx: Any) -> None:
        await trio.lowlevel.checkpoint()
        raise error

    on_start = sync_on_start if kind == "sync" else async_on_start
    wf = chain(f"on-start-raises-{kind}", recorder("a", log), on_start=on_start)
    async with tf.open_runtime():
        run = await wf.create_run()
        with pytest.raises(Boom) as excinfo:
            await run.start(input_data=1)
    assert excinfo.value is error
    assert log == []


async def test_raising_on_start_leaves_run_pending() -> None:
    def on_start(ctx: Any) -> None:
        raise Boom("not today")

    wf = chain("on-start-pending", recorder("a", []), on_start=on_start)
    async with tf.open_runtime() as rt:
        run = await wf.create_run()
        with pytest.raises(Boom):
            await run.start(input_data=1)
        assert run.status == "pending"
        assert (await rt.get_run_state(run.run_id)).status == "pending"


@pytest.mark.parametrize("outcome", OUTCOMES)
async def test_on_finish_gets_the_result_for_every_status(
    outcome: str, autojump_clock: trio.testing.MockClock
) -> None:
    seen: list[tf.WorkflowResult] = []
    result = await drive(outcome, on_finish=seen.append)
    assert result.status == outcome
    assert len(seen) == 1
    assert isinstance(seen[0], tf.WorkflowResult)
    assert seen[0].status == outcome
    assert seen[0].run_id == result.run_id


@pytest.mark.parametrize("outcome", OUTCOMES)
async def test_on_error_only_for_failed_and_tripwire(
    outcome: str, autojump_clock: trio.testing.MockClock
) -> None:
    seen: list[tf.WorkflowResult] = []
    result = await drive(outcome, on_error=seen.append)
    assert result.status == outcome
    if outcome in ("failed", "tripwire"):
        assert [r.status for r in seen] == [outcome]
    else:
        assert seen == []


async def test_on_error_result_carries_the_live_error() -> None:
    seen: list[tf.WorkflowResult] = []
    raised: list[BaseException] = []
    wf = chain(
        "on-error-live",
        raising_step("call", raised, lambda: UpstreamError("nope", 502)),
        on_error=seen.append,
    )
    async with tf.open_runtime():
        await (await wf.create_run()).start(input_data=1)
    assert len(seen) == 1
    assert seen[0].error is raised[0]


async def test_async_on_finish_gets_success_result() -> None:
    seen: list[Any] = []

    async def on_finish(result: tf.WorkflowResult) -> None:
        await trio.lowlevel.checkpoint()
        seen.append(result.result)

    wf = chain("on-finish-async", recorder("a", []), on_finish=on_finish)
    async with tf.open_runtime():
        result = await (await wf.create_run()).start(input_data={"x": 1})
    assert result.result == {"x": 1}
    assert seen == [{"x": 1}]


async def test_exception_in_on_finish_is_swallowed(caplog: pytest.LogCaptureFixture) -> None:
    def on_finish(result: tf.WorkflowResult) -> None:
        raise RuntimeError("observer broke")

    wf = chain("on-finish-raises", recorder("a", []), on_finish=on_finish)
    with caplog.at_level(logging.WARNING):
        async with tf.open_runtime():
            result = await (await wf.create_run()).start(input_data=7)
    assert result.status == "success"
    assert result.result == 7
    assert any(record.levelno >= logging.WARNING for record in caplog.records)


async def test_exception_in_on_error_is_swallowed() -> None:
    raised: list[BaseException] = []

    async def on_error(result: tf.WorkflowResult) -> None:
        await trio.lowlevel.checkpoint()
        raise RuntimeError("alerting broke")

    wf = chain(
        "on-error-raises", raising_step("boom", raised, lambda: Boom("x")), on_error=on_error
    )
    async with tf.open_runtime():
        result = await (await wf.create_run()).start(input_data=1)
    assert result.status == "failed"
    assert result.error is raised[0]


# --------------------------------------------------------------------------- step input validation


def bad_order_workflow(wf_id: str, log: list[str]) -> tf.Workflow:
    async def produce(ctx: tf.StepContext) -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        return {"id": "o1", "amount": "lots"}

    async def typed(ctx: tf.StepContext) -> int:
        await trio.lowlevel.checkpoint()
        log.append("typed")
        return ctx.input_data.amount

    return chain(
        wf_id,
        make_step("produce", produce),
        make_step("typed", typed, input_schema=Order),
    )


async def test_step_input_failing_its_schema_fails_the_run() -> None:
    log: list[str] = []
    wf = bad_order_workflow("bad-step-input", log)
    async with tf.open_runtime():
        result = await (await wf.create_run()).start(input_data=1)
    assert result.status == "failed"
    assert isinstance(result.error, tf.ValidationError)
    assert str(result.error).startswith("Invalid step input:")
    assert result.steps["typed"].status == "failed"
    assert log == []


async def test_step_input_validation_error_names_the_field() -> None:
    wf = bad_order_workflow("bad-step-input-path", [])
    async with tf.open_runtime():
        result = await (await wf.create_run()).start(input_data=1)
    assert isinstance(result.error, tf.ValidationError)
    assert [path for path, _ in result.error.errors] == ["amount"]
    assert "\n- amount: " in str(result.error)


# --------------------------------------------------------------------------- result fields


@pytest.mark.parametrize("outcome", OUTCOMES)
async def test_trace_id_is_always_32_hex(
    outcome: str, autojump_clock: trio.testing.MockClock
) -> None:
    result = await drive(outcome)
    assert result.trace_id is not None
    assert re.fullmatch(r"[0-9a-f]{32}", result.trace_id)


async def test_trace_id_given_in_tracing_options_is_used() -> None:
    trace_id = "0123456789abcdef" * 2
    wf = chain("trace-given", recorder("a", []))
    async with tf.open_runtime():
        run = await wf.create_run()
        result = await run.start(input_data=1, tracing_options={"trace_id": trace_id})
    assert result.trace_id == trace_id


async def test_result_run_id_is_the_runs_id() -> None:
    wf = chain("run-id", recorder("a", []))
    async with tf.open_runtime():
        run = await wf.create_run(run_id="order-run-1")
        result = await run.start(input_data=1)
    assert run.run_id == "order-run-1"
    assert result.run_id == "order-run-1"


async def test_result_input_is_the_validated_input() -> None:
    wf = chain("validated-input", recorder("a", []), input_schema=Order)
    async with tf.open_runtime():
        result = await (await wf.create_run()).start(
            input_data={"id": "o1", "amount": 5, "note": "extra keys are ignored"}
        )
    assert result.input == Order(id="o1", amount=5)


async def test_result_state_is_empty_dict_without_state() -> None:
    wf = chain("state-empty", recorder("a", []))
    async with tf.open_runtime():
        result = await (await wf.create_run()).start(input_data=1)
    assert result.state == {}


async def test_result_state_merges_initial_state_and_set_state() -> None:
    async def mark(ctx: tf.StepContext) -> int:
        await trio.lowlevel.checkpoint()
        ctx.set_state({"seen": True})
        return 1

    wf = chain("state-merge", make_step("mark", mark))
    async with tf.open_runtime():
        result = await (await wf.create_run()).start(input_data=1, initial_state={"count": 3})
    assert result.state == {"count": 3, "seen": True}


async def test_step_timestamps_are_int_epoch_ms_in_order() -> None:
    raised: list[BaseException] = []
    wf = chain("timestamps", recorder("a", []), raising_step("b", raised, lambda: Boom("x")))
    before = int(time.time() * 1000)
    async with tf.open_runtime():
        result = await (await wf.create_run()).start(input_data=1)
    after = int(time.time() * 1000)
    assert set(result.steps) == {"a", "b"}
    for step_result in result.steps.values():
        assert type(step_result.started_at) is int
        assert type(step_result.ended_at) is int
        assert before - 1 <= step_result.started_at <= step_result.ended_at <= after + 1
    assert result.steps["a"].ended_at <= result.steps["b"].started_at


# --------------------------------------------------------------------------- pure core: statuses
# The status rules live in trioflow._core._status (pure, trio-free): these tests are sync.
# Expected transitions come from SPEC §2 and mastra-behaviour §3.7/§4.1, not from the table.

RS = core_status.RunStatus
SS = core_status.StepStatus

#: Transitions the contract needs: start, sleep, suspend/resume, end states, cancel of a
#: running/waiting/suspended run, per_step pause, restart of a running run.
REQUIRED_TRANSITIONS = [
    (RS.PENDING, RS.RUNNING),
    (RS.RUNNING, RS.WAITING),
    (RS.WAITING, RS.RUNNING),
    (RS.RUNNING, RS.SUSPENDED),
    (RS.SUSPENDED, RS.RUNNING),
    (RS.RUNNING, RS.SUCCESS),
    (RS.RUNNING, RS.FAILED),
    (RS.RUNNING, RS.TRIPWIRE),
    (RS.RUNNING, RS.PAUSED),
    (RS.RUNNING, RS.CANCELED),
    (RS.WAITING, RS.CANCELED),
    (RS.SUSPENDED, RS.CANCELED),
    (RS.RUNNING, RS.RUNNING),
]

#: A run reaches an outcome only by running first.
FORBIDDEN_FROM_PENDING = [
    RS.WAITING,
    RS.SUSPENDED,
    RS.SUCCESS,
    RS.FAILED,
    RS.TRIPWIRE,
    RS.PAUSED,
]

TERMINAL_STATUSES = [RS.SUCCESS, RS.FAILED, RS.CANCELED, RS.TRIPWIRE]


def test_run_status_values_match_spec() -> None:
    assert {s.value for s in RS} == {
        "pending",
        "running",
        "waiting",
        "suspended",
        "success",
        "failed",
        "canceled",
        "tripwire",
        "paused",
    }
    assert RS.CANCELED == "canceled"
    assert tf.RunStatus is RS


def test_step_status_adds_bailed_and_skipped() -> None:
    assert {s.value for s in SS} - {s.value for s in RS} == {"bailed", "skipped"}
    assert tf.StepStatus is SS


def test_transition_table_covers_every_run_status() -> None:
    assert set(core_status.TRANSITIONS) == set(RS)


@pytest.mark.parametrize(("old", "new"), REQUIRED_TRANSITIONS)
def test_required_transition_is_allowed(old: Any, new: Any) -> None:
    assert core_status.can_transition(old, new)
    assert core_status.check_transition(old, new) is new


@pytest.mark.parametrize("new", FORBIDDEN_FROM_PENDING)
def test_pending_run_cannot_skip_running(new: Any) -> None:
    assert not core_status.can_transition(RS.PENDING, new)
    with pytest.raises(core_status.InvalidTransitionError):
        core_status.check_transition(RS.PENDING, new)


@pytest.mark.parametrize("old", TERMINAL_STATUSES)
def test_terminal_status_has_no_outgoing_transition(old: Any) -> None:
    assert core_status.is_terminal(old)
    assert core_status.TRANSITIONS[old] == frozenset()
    for new in RS:
        assert not core_status.can_transition(old, new)
        with pytest.raises(core_status.InvalidTransitionError):
            core_status.check_transition(old, new)


def test_exactly_the_four_end_states_are_terminal() -> None:
    assert {s for s in RS if core_status.is_terminal(s)} == set(TERMINAL_STATUSES)


@pytest.mark.parametrize(
    ("statuses", "canceled", "expected"),
    [
        ([SS.SUCCESS, SS.FAILED, SS.SUSPENDED], False, SS.FAILED),
        ([SS.SUSPENDED, SS.SUCCESS], False, SS.SUSPENDED),
        ([SS.SUSPENDED, SS.SUCCESS], True, SS.SUSPENDED),
        ([SS.SUCCESS, SS.SUCCESS], True, SS.CANCELED),
        ([SS.SUCCESS, SS.CANCELED], False, SS.CANCELED),
        ([SS.SUCCESS, SS.SUCCESS], False, SS.SUCCESS),
        ([], False, SS.SUCCESS),
    ],
)
def test_parallel_status_precedence(statuses: list[Any], canceled: bool, expected: Any) -> None:
    # mastra-behaviour §4.1: any failed ⇒ failed, else any suspended ⇒ suspended,
    # else aborted ⇒ canceled, else success.
    assert core_status.combine_branch_statuses(statuses, canceled) == expected


@pytest.mark.parametrize(
    ("step_status", "run_status"),
    [
        (SS.SUCCESS, RS.SUCCESS),
        (SS.BAILED, RS.SUCCESS),
        (SS.FAILED, RS.FAILED),
        (SS.TRIPWIRE, RS.TRIPWIRE),
        (SS.SUSPENDED, RS.SUSPENDED),
        (SS.CANCELED, RS.CANCELED),
        (SS.PAUSED, RS.PAUSED),
    ],
)
def test_run_status_implied_by_top_level_entry(step_status: Any, run_status: Any) -> None:
    # mastra-behaviour §4.1: bailed never escapes as a workflow status.
    assert core_status.run_status_for_step_status(step_status) == run_status


async def test_cancel_from_another_runtime_sharing_storage_ends_the_run_where_it_executes(
    autojump_clock: Any,
) -> None:
    """Another process (here: another runtime on the same storage) cannot touch the
    executing process's log: it stores the cancel, and the executing process ends the run
    canceled at its next write, publishing workflow-canceled and workflow-finish itself."""
    ran: list[str] = []

    async def step(ctx: tf.StepContext) -> Any:
        ran.append(ctx.step_id)
        await trio.sleep(10)
        return ctx.input_data

    wf = (
        tf.create_workflow(id="remote-cancel")
        .then(tf.create_step(id="one", execute=step))
        .then(tf.create_step(id="two", execute=step))
        .commit()
    )
    storage = FaultyStorage(tf.MemoryStorage())  # durable: a write per entry
    async with tf.open_runtime(storage=storage) as here:
        run = await wf.create_run(run_id="r")
        out = await run.stream(input_data={"x": 1})
        await trio.sleep(5)  # "one" is running
        async with tf.open_runtime(storage=storage):
            elsewhere = await wf.create_run(run_id="r")
            await elsewhere.cancel()
        result = await out.result()
        chunks = [c async for c in out]
        state = await here.get_run_state("r")
    assert result.status == "canceled"
    assert ran == ["one"]
    assert state.status == "canceled"
    assert [c.type for c in chunks[-2:]] == ["workflow-canceled", "workflow-finish"]
    assert [c.seq for c in chunks] == list(range(1, len(chunks) + 1))
    stored = await storage.read_events("r")
    assert [c.seq for c in stored] == [c.seq for c in chunks]
