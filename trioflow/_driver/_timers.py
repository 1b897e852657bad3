"""map and sleep entries.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any

import trio

from .._core._chunks import (
    StepWaitingPayload,
    WorkflowStepWaiting,
)
from .._core._graph import (
    MapEntry,
    SleepEntry,
)
from .._core._model import (
    StepResult,
)
from .._core._plan._records import (
    not_json,
)
from .._core._plan._values import (
    Outcome,
    StepRun,
    outcome_of,
)
from .._core._serde import (
    to_jsonable,
)
from .._core._status import RunStatus, StepStatus
from .._effects import call_maybe_async, now_ms
from .._groups import is_cancellation, is_fatal
from ._level import Level

_S = StepStatus


async def run_map(level: Level, idx: int, entry: MapEntry, value: Any) -> Outcome:
    chunk_id = level.chunk_id(entry.id)
    emit = level.emits
    started_at = now_ms()
    # Mastra 1.71's map chunks carry a stepCallId (its sleep chunks do not).
    call_id = level.execution.next_call_id()
    if emit:
        level.emit_start(
            chunk_id, call_id=call_id, payload=value, started_at=started_at, resume=None
        )
    try:
        if entry.fn is not None:
            ctx = level.make_context(entry.id, chunk_id, value)
            output = await call_maybe_async(entry.fn, ctx)
        else:
            await trio.lowlevel.checkpoint()
            context = level.execution.request_context.to_dict()
            output = {k: level.resolve_source(s, context) for k, s in (entry.mapping or {}).items()}
        problem = not_json("Step output", output)
        if problem is not None:
            raise problem
    except trio.Cancelled:
        settle_canceled(level, idx, entry.id, chunk_id, value, started_at, call_id)
        raise
    except BaseException as exc:
        if is_fatal(exc):
            if is_cancellation(exc):
                settle_canceled(level, idx, entry.id, chunk_id, value, started_at, call_id)
            raise
        result = StepResult(
            status=_S.FAILED, payload=value, error=exc, started_at=started_at, ended_at=now_ms()
        )
    else:
        result = StepResult(
            status=_S.SUCCESS,
            payload=value,
            output=output,
            started_at=started_at,
            ended_at=now_ms(),
        )
    if emit:
        level.emit_settled(chunk_id, result, call_id)
    run = StepRun(result=result)
    level.settle(entry.id, run, [idx])
    return outcome_of(run)

def settle_canceled(
    level: Level,
    idx: int,
    entry_id: str,
    chunk_id: str,
    value: Any,
    started_at: int,
    call_id: str | None = None,
) -> None:
    """A map or sleep entry interrupted by cancellation: its ``canceled`` result."""
    canceled = StepResult(
        status=_S.CANCELED, payload=value, started_at=started_at, ended_at=now_ms()
    )
    if level.emits:
        level.emit_settled(chunk_id, canceled, call_id)
    level.settle(entry_id, StepRun(result=canceled), [idx])

async def run_sleep(level: Level, idx: int, entry: SleepEntry, value: Any) -> Outcome:
    chunk_id = level.chunk_id(entry.id)
    emit = level.emits
    started_at = now_ms()
    try:
        seconds = await sleep_seconds(level, entry, value, chunk_id)
    except trio.Cancelled:
        raise
    except BaseException as exc:
        if is_fatal(exc):
            raise
        result = StepResult(
            status=_S.FAILED, payload=value, error=exc, started_at=started_at, ended_at=now_ms()
        )
        if emit:
            level.emit_settled(chunk_id, result, None)
        level.settle(entry.id, StepRun(result=result), [idx])
        return Outcome(_S.FAILED, error=exc)
    if emit:
        waiting = StepWaitingPayload(
            id=chunk_id, step_name=chunk_id, payload=to_jsonable(value), started_at=started_at
        )
        level.publish(WorkflowStepWaiting, waiting)
    if level.is_root:
        await level.execution.persist(RunStatus.WAITING)
    try:
        await trio.sleep(seconds)
    except trio.Cancelled:
        settle_canceled(level, idx, entry.id, chunk_id, value, started_at)
        raise
    result = StepResult(
        status=_S.SUCCESS, payload=value, output=value, started_at=started_at, ended_at=now_ms()
    )
    if emit:
        level.emit_settled(chunk_id, result, None)
    level.settle(entry.id, StepRun(result=result), [idx])
    return Outcome(_S.SUCCESS, output=value)

async def sleep_seconds(level: Level, entry: SleepEntry, value: Any, chunk_id: str) -> float:
    if entry.until is not None:
        when = entry.until
        if callable(when):
            when = await call_maybe_async(when, level.make_context(entry.id, chunk_id, value))
        if not isinstance(when, _dt.datetime) or when.tzinfo is None:
            raise ValueError(f"sleep_until needs an aware datetime, got {when!r}")
        return max(0.0, (when - _dt.datetime.now(_dt.UTC)).total_seconds())
    seconds = entry.seconds
    if callable(seconds):
        seconds = await call_maybe_async(seconds, level.make_context(entry.id, chunk_id, value))
    if isinstance(seconds, _dt.timedelta):
        seconds = seconds.total_seconds()
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not (seconds >= 0 and math.isfinite(seconds))
    ):
        raise ValueError(f"sleep needs a finite number of seconds >= 0, got {seconds!r}")
    return float(seconds)


