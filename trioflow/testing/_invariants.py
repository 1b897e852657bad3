"""``check_stream_invariants``: the structural rules every run's event log obeys."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import attrs

_TERMINAL = frozenset({"success", "failed", "canceled", "tripwire"})


@attrs.define
class _Progress:
    completed: int = 0
    total: int | None = None
    seen: set[int] = attrs.field(factory=set)


@attrs.define
class _Execution:
    number: int
    first_seq: int
    open: Counter[str] = attrs.field(factory=Counter)
    waiting: Counter[str] = attrs.field(factory=Counter)
    progress: dict[str, _Progress] = attrs.field(factory=dict)
    #: Ids open twice at once (concurrent foreach iterations of a nested workflow relay
    #: their inner chunks under one id): their progress cannot be told apart.
    ambiguous: set[str] = attrs.field(factory=set)
    suspended: bool = False
    canceled: bool = False
    paused: bool = False


def _describe(index: int, chunk: Any) -> str:
    payload: Any = getattr(chunk, "payload", None)
    step = getattr(payload, "id", None) or getattr(payload, "step_name", None)
    status = getattr(payload, "status", None) or getattr(payload, "workflow_status", None)
    what = chunk.type
    if step:
        what += f" {step!r}"
    if status and chunk.type in ("workflow-step-result", "workflow-finish"):
        what += f" ({status})"
    return f"chunk #{index} (seq {chunk.seq}, {what})"


def _pending(counter: Counter[str]) -> str:
    return ", ".join(
        f"{k!r}" + (f" x{n}" if n > 1 else "") for k, n in sorted(counter.items()) if n
    )


def check_stream_invariants(
    chunks: Iterable[Any],
    *,
    from_start: bool = True,
    complete: bool = True,
    allow_interrupted: bool = False,
) -> str | None:
    """Check the structural rules of a run's chunks; return ``None`` when they hold, else
    a readable explanation of the first violation.

    The rules: ``seq`` increases by exactly 1 from chunk to chunk (and starts at 1 when
    ``from_start``); every chunk has the same ``run_id``; every execution opens with one
    ``workflow-start`` and closes with one ``workflow-finish``; inside an execution every
    ``workflow-step-start`` is matched by one ``workflow-step-result`` or
    ``workflow-step-suspended`` with the same id (a ``.sleep`` opens with
    ``workflow-step-waiting`` instead), writer output comes from a running step, and
    foreach progress counts are consistent (``completed_count`` grows by one per settled
    iteration and not for a suspended one, stays within ``total_count``, no iteration
    reported twice; not checked for an id two foreach containers use at once, as the
    iterations of a nested workflow do); ``workflow-finish(suspended)`` follows a suspension (in this execution, or an earlier
    one when another suspended branch was resumed),
    ``(canceled)`` a ``workflow-canceled``, ``(paused)`` a ``workflow-paused``; between
    executions only the cancel of a suspended run may appear (``workflow-canceled`` +
    ``workflow-finish(canceled)``); nothing follows a terminal ``workflow-finish``.

    ``complete=False`` accepts a stream that stops inside an execution (a run still
    going). ``allow_interrupted=True`` accepts an execution that stops without its finish
    when the next execution starts (a crashed process, continued by ``restart()``).
    """
    previous_seq: int | None = None
    run_id: Any = None
    execution: _Execution | None = None
    executions = 0
    final: str | None = None
    last_status: str | None = None
    cancel_between = False
    ever_suspended = not from_start
    index = -1
    for index, chunk in enumerate(chunks):
        where = _describe(index, chunk)
        seq = chunk.seq
        if previous_seq is None:
            if from_start and seq != 1:
                return f"{where}: the log must start at seq 1"
        elif seq != previous_seq + 1:
            gap = "a gap" if seq > previous_seq + 1 else "not increasing"
            return f"{where}: seq {seq} follows seq {previous_seq} ({gap})"
        previous_seq = seq
        if run_id is None:
            run_id = chunk.run_id
        elif chunk.run_id != run_id:
            return f"{where}: run_id {chunk.run_id!r} differs from {run_id!r}"
        if final is not None:
            return f"{where}: comes after the final workflow-finish ({final})"
        kind = chunk.type
        payload: Any = getattr(chunk, "payload", None)

        if kind == "workflow-start":
            if cancel_between:
                return (
                    f"{where}: workflow-canceled between executions is not followed by its finish"
                )
            if execution is not None and not allow_interrupted:
                return (
                    f"{where}: execution {execution.number} (from seq "
                    f"{execution.first_seq}) has no workflow-finish before this start"
                )
            executions += 1
            execution = _Execution(executions, seq)
            continue

        if execution is None:
            # Between executions only the cancel of a suspended/paused/pending run.
            if (
                kind == "workflow-canceled"
                and not cancel_between
                and last_status
                in (
                    None,
                    "suspended",
                    "paused",
                )
            ):
                cancel_between = True
                continue
            if kind == "workflow-finish" and cancel_between:
                if payload.workflow_status != "canceled":
                    return f"{where}: a cancel between executions must finish canceled"
                final = "canceled"
                cancel_between = False
                continue
            if executions == 0:
                return f"{where}: comes before any workflow-start"
            return f"{where}: comes between executions (after a workflow-finish, before a start)"

        if kind == "workflow-step-start":
            step = payload.id
            execution.open[step] += 1
            if execution.open[step] > 1:
                execution.ambiguous.add(step)
            items = payload.payload
            execution.progress[step] = _Progress(
                total=len(items)
                if isinstance(items, list) and payload.resume_payload is None
                else None
            )
        elif kind in ("workflow-step-result", "workflow-step-suspended"):
            step = payload.id
            if execution.open[step] > 0:
                execution.open[step] -= 1
            elif kind == "workflow-step-result" and execution.waiting[step] > 0:
                execution.waiting[step] -= 1
            else:
                return f"{where}: no workflow-step-start for {step!r} is open in this execution"
            if kind == "workflow-step-suspended":
                execution.suspended = True
        elif kind == "workflow-step-waiting":
            execution.waiting[payload.id] += 1
        elif kind == "workflow-step-progress":
            step = payload.id
            if execution.open[step] <= 0:
                return f"{where}: progress of {step!r}, which is not running"
            if step not in execution.ambiguous:
                problem = _check_progress(execution.progress.setdefault(step, _Progress()), payload)
                if problem:
                    return f"{where}: {problem}"
        elif kind == "workflow-step-output":
            name = payload.step_name
            if execution.open[name] <= 0:
                return f"{where}: output written by {name!r}, which is not running"
        elif kind == "workflow-canceled":
            execution.canceled = True
        elif kind == "workflow-paused":
            execution.paused = True
        elif kind == "workflow-finish":
            status = payload.workflow_status
            if +execution.open:
                return (
                    f"{where}: execution {execution.number} finishes with steps started and "
                    f"never settled: {_pending(execution.open)}"
                )
            if +execution.waiting:
                return f"{where}: sleeps never settled: {_pending(execution.waiting)}"
            if status == "suspended" and not (execution.suspended or ever_suspended):
                return f"{where}: finishes suspended, but no step of the run ever suspended"
            ever_suspended = ever_suspended or execution.suspended
            if status == "canceled" and not execution.canceled:
                return f"{where}: finishes canceled without a workflow-canceled chunk"
            if status == "paused" and not execution.paused:
                return f"{where}: finishes paused without a workflow-paused chunk"
            if status != "canceled" and execution.canceled:
                return f"{where}: the execution was canceled but finishes {status}"
            execution = None
            last_status = status
            if status in _TERMINAL:
                final = status
    if index < 0:
        return None
    if cancel_between and complete:
        return "the stream ends after a workflow-canceled without its workflow-finish"
    if execution is not None and complete:
        return (
            f"the stream ends inside execution {execution.number} (from seq "
            f"{execution.first_seq}): no workflow-finish"
        )
    return None


def _check_progress(state: _Progress, payload: Any) -> str | None:
    status = payload.iteration_status
    if status not in ("success", "failed", "suspended"):
        return f"unknown iteration_status {status!r}"
    expected = state.completed + (0 if status == "suspended" else 1)
    if payload.completed_count != expected:
        return (
            f"completed_count {payload.completed_count} after {state.completed} settled "
            f"iteration(s) and one {status} iteration (expected {expected})"
        )
    state.completed = expected
    if state.total is not None and payload.total_count != state.total:
        return (
            f"total_count {payload.total_count}, but the foreach started with {state.total} items"
        )
    if payload.completed_count > payload.total_count:
        return f"completed_count {payload.completed_count} > total_count {payload.total_count}"
    if not 0 <= payload.current_index < payload.total_count:
        return f"current_index {payload.current_index} outside 0..{payload.total_count - 1}"
    if payload.current_index in state.seen:
        return f"iteration {payload.current_index} reported twice"
    state.seen.add(payload.current_index)
    return None
