"""map and sleep entries: the driver side of :mod:`trioflow._core._plan._timers`.

It calls the user's functions, sleeps, publishes and persists; the plan decides the
durations and results.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

import trio

from .._core._chunks import WorkflowStepWaiting
from .._core._graph import MapEntry, SleepEntry
from .._core._plan._step import Settle
from .._core._plan._timers import TimerPlan, sleep_duration
from .._core._plan._values import Outcome, outcome_of
from .._core._status import RunStatus
from .._effects import call_maybe_async, now_ms
from .._groups import is_cancellation, is_fatal
from ._level import Level


async def run_map(level: Level, idx: int, entry: MapEntry, value: Any) -> Outcome:
    """Run a map entry. Cancelling it settles the entry ``canceled`` and re-raises."""
    chunk_id = level.chunk_id(entry.id)
    plan = TimerPlan(
        value=value, chunk_id=chunk_id, started_at=now_ms(), emit=level.emits, is_root=False
    )
    # Mastra 1.71's map chunks carry a stepCallId (its sleep chunks do not).
    call_id = level.execution.next_call_id()
    if plan.emit:
        level.emit_start(
            chunk_id, call_id=call_id, payload=value, started_at=plan.started_at, resume=None
        )
    try:
        if entry.fn is not None:
            ctx = level.make_context(entry.id, chunk_id, value)
            output = await call_maybe_async(entry.fn, ctx)
        else:
            await trio.lowlevel.checkpoint()
            context = level.execution.request_context.to_dict
            mapping = entry.mapping or {}
            output = {k: level.resolve_source(s, context) for k, s in mapping.items()}
    except trio.Cancelled:
        settle(level, idx, chunk_id, entry.id, plan.cancelled(now_ms()), call_id)
        raise
    except BaseException as exc:
        if is_fatal(exc):
            if is_cancellation(exc):
                settle(level, idx, chunk_id, entry.id, plan.cancelled(now_ms()), call_id)
            raise
        done = plan.failed(exc, now_ms())
    else:
        done = plan.mapped(output, now_ms())
    # A map function that fails (or returns) without a checkpoint is settled at once, as a
    # step is (see run_step); the entry loops checkpoint between entries.
    return settle(level, idx, chunk_id, entry.id, done, call_id)  # noqa: ASYNC910


def settle(
    level: Level, idx: int, chunk_id: str, entry_id: str, done: Settle, call_id: str | None
) -> Outcome:
    if done.emit:
        level.emit_settled(chunk_id, done.run.result, call_id)
    level.settle(entry_id, done.run, [idx])
    return outcome_of(done.run)


async def run_sleep(level: Level, idx: int, entry: SleepEntry, value: Any) -> Outcome:
    """Run a sleep entry. Cancelling it while it sleeps settles the entry ``canceled``;
    while its duration function runs, the cancellation only propagates."""
    chunk_id = level.chunk_id(entry.id)
    plan = TimerPlan(
        value=value,
        chunk_id=chunk_id,
        started_at=now_ms(),
        emit=level.emits,
        is_root=level.is_root,
    )
    until = entry.until is not None
    when = entry.until if until else entry.seconds
    try:
        if callable(when):
            when = await call_maybe_async(when, level.make_context(entry.id, chunk_id, value))
        seconds = sleep_duration(when, until=until, now=_dt.datetime.now(_dt.UTC))
    except trio.Cancelled:
        raise
    except BaseException as exc:
        if is_fatal(exc):
            raise
        # Settled at once, as a failed step is (see run_step); the entry loops checkpoint.
        done = plan.failed(exc, now_ms())
        return settle(level, idx, chunk_id, entry.id, done, None)  # noqa: ASYNC910
    wait = plan.wait(seconds)
    if wait.waiting is not None:
        level.publish(WorkflowStepWaiting, wait.waiting)
    if wait.persist:
        await level.execution.persist(RunStatus.WAITING)
    try:
        await trio.sleep(wait.seconds)
    except trio.Cancelled:
        settle(level, idx, chunk_id, entry.id, plan.cancelled(now_ms()), None)
        raise
    return settle(level, idx, chunk_id, entry.id, plan.slept(now_ms()), None)
