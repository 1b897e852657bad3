"""Running one step: the driver side of :mod:`trioflow._core._plan._step`.

It awaits the user's code (under the step's timeout), sleeps between retries, and
performs what the plan decides: which result, whether to retry, the settled chunk.
"""

from __future__ import annotations

from typing import Any

import trio

from .._context import StepContext
from .._core._plan._step import UNCHANGED, Retry, StepEffects, StepPlan
from .._core._plan._values import Announced, NodeResume, StepRun
from .._effects import now_ms
from .._groups import is_cancellation, is_fatal
from .._workflow import Step
from ._level import Level


async def run_step(
    level: Level,
    node: Step,
    value: Any,
    *,
    resume: NodeResume | None,
    chunk_id: str,
    emit: bool,
    iteration: int,
    announced: Announced | None = None,
    foreach_index: int | None = None,
) -> StepRun:
    """Run one step to its result (published unless ``emit`` is false). Cancelling it
    interrupts the running attempt (or the delay before a retry): its ``canceled`` chunk
    is published and ``trio.Cancelled`` propagates (the caller records the result)."""
    if announced is None:
        announced = level.announce(node, value, resume, chunk_id, emit=emit, iteration=iteration)
    plan = StepPlan(
        node,
        level.workflow,
        value,
        resume,
        announced,
        iteration,
        foreach_index,
        emit and level.emits,
    )
    try:
        settle = plan.rejected(now_ms()) if plan.rejection is not None else None
        while settle is None:
            ctx = StepContext(
                level,
                step_id=plan.step_id,
                step_name=chunk_id,
                input_data=plan.step_input,
                state=level.state,
                resume_data=plan.resume_data,
                suspend_data=plan.suspend_data,
                retry_count=plan.attempt,
                iteration_count=iteration,
                suspend_schema=node.suspend_schema,
                state_schema=node.state_schema,
                key_args=plan.key_args,
            )
            try:
                if plan.timeout is None:
                    output = await node.execute(ctx)
                else:
                    output = await call_with_timeout(node, plan, ctx)
            except trio.Cancelled:
                raise
            except BaseException as exc:
                if is_fatal(exc):
                    raise
                decision = plan.raised(exc, now_ms())
            else:
                if ctx._new_state is None and not ctx._suspended and not ctx._bailed:
                    decision = plan.returned(output, None, now_ms(), level.state)
                else:
                    decision = plan.returned(output, effects_of(ctx), now_ms(), level.state)
            if isinstance(decision, Retry):
                if decision.delay > 0:
                    await trio.sleep(decision.delay)
            else:
                settle = decision
    except BaseException as exc:
        if plan.emit and is_cancellation(exc):
            # Interrupted (trio.Cancelled, or the step's own nursery's group of them).
            level.emit_settled(chunk_id, plan.cancelled(now_ms()), announced.call_id)
        raise
    if settle.state is not UNCHANGED:
        level.state = settle.state
    if settle.emit:
        level.emit_settled(chunk_id, settle.run.result, announced.call_id)
    # A step whose code returns or raises without a checkpoint (or whose input is rejected)
    # settles here without one, on purpose: a checkpoint between the step's end and its
    # settlement would let a cancel turn a finished step into a canceled one; the entry
    # loops checkpoint between entries.
    return settle.run  # noqa: ASYNC910


def effects_of(ctx: StepContext) -> StepEffects:
    """What the attempt asked for besides its output."""
    return StepEffects(
        new_state=ctx._new_state,
        suspended=ctx._suspended,
        suspend_payload=ctx._suspend_payload,
        resume_labels=ctx._resume_labels,
        bailed=ctx._bailed,
        bail_value=ctx._bail_value,
    )


async def call_with_timeout(node: Step, plan: StepPlan, ctx: StepContext) -> Any:
    """Run one attempt under the step's timeout; the plan names the error of an attempt
    that ran past it (also one that swallowed the cancellation, which voids trio's own
    TooSlowError). Cancelling it cancels the attempt."""
    assert node.timeout is not None
    scope = trio.CancelScope(deadline=trio.current_time() + node.timeout)
    try:
        with scope:
            output = await node.execute(ctx)
    except Exception as exc:
        if scope.cancel_called:
            raise plan.timed_out() from exc
        raise
    if scope.cancel_called:
        raise plan.timed_out()
    return output
