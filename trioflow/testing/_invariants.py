"""``check_stream_invariants``: the structural rules every run's event log obeys."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
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
    checker = _Checker(from_start=from_start, allow_interrupted=allow_interrupted)
    seen_any = False
    for index, chunk in enumerate(chunks):
        seen_any = True
        problem = checker.check(_describe(index, chunk), chunk)
        if problem is not None:
            return problem
    if not seen_any or not complete:
        return None
    return checker.at_end()


_Handler = Callable[["_Checker", str, _Execution, Any], "str | None"]


@attrs.define
class _Checker:
    """The state of one pass over a run's chunks: one method per rule."""

    from_start: bool
    allow_interrupted: bool
    previous_seq: int | None = None
    run_id: Any = None
    execution: _Execution | None = None
    executions: int = 0
    final: str | None = None
    last_status: str | None = None
    cancel_between: bool = False
    ever_suspended: bool = attrs.field(
        default=attrs.Factory(lambda self: not self.from_start, takes_self=True)
    )

    def check(self, where: str, chunk: Any) -> str | None:
        problem = self._sequence(where, chunk) or self._same_run(where, chunk)
        if problem is not None:
            return problem
        if self.final is not None:
            return f"{where}: comes after the final workflow-finish ({self.final})"
        kind = chunk.type
        payload: Any = getattr(chunk, "payload", None)
        if kind == "workflow-start":
            return self._start(where, chunk.seq)
        if self.execution is None:
            return self._between_executions(where, kind, payload)
        handler = _IN_EXECUTION.get(kind)
        return None if handler is None else handler(self, where, self.execution, payload)

    def _sequence(self, where: str, chunk: Any) -> str | None:
        seq = chunk.seq
        previous, self.previous_seq = self.previous_seq, seq
        if previous is None:
            if self.from_start and seq != 1:
                return f"{where}: the log must start at seq 1"
        elif seq != previous + 1:
            gap = "a gap" if seq > previous + 1 else "not increasing"
            return f"{where}: seq {seq} follows seq {previous} ({gap})"
        return None

    def _same_run(self, where: str, chunk: Any) -> str | None:
        if self.run_id is None:
            self.run_id = chunk.run_id
        elif chunk.run_id != self.run_id:
            return f"{where}: run_id {chunk.run_id!r} differs from {self.run_id!r}"
        return None

    def _start(self, where: str, seq: int) -> str | None:
        if self.cancel_between:
            return f"{where}: workflow-canceled between executions is not followed by its finish"
        if self.execution is not None and not self.allow_interrupted:
            return (
                f"{where}: execution {self.execution.number} (from seq "
                f"{self.execution.first_seq}) has no workflow-finish before this start"
            )
        self.executions += 1
        self.execution = _Execution(self.executions, seq)
        return None

    def _between_executions(self, where: str, kind: str, payload: Any) -> str | None:
        # Between executions only the cancel of a suspended/paused/pending run.
        if (
            kind == "workflow-canceled"
            and not self.cancel_between
            and self.last_status in (None, "suspended", "paused")
        ):
            self.cancel_between = True
            return None
        if kind == "workflow-finish" and self.cancel_between:
            if payload.workflow_status != "canceled":
                return f"{where}: a cancel between executions must finish canceled"
            self.final = "canceled"
            self.cancel_between = False
            return None
        if self.executions == 0:
            return f"{where}: comes before any workflow-start"
        return f"{where}: comes between executions (after a workflow-finish, before a start)"

    def _step_start(self, where: str, execution: _Execution, payload: Any) -> str | None:
        step = payload.id
        execution.open[step] += 1
        if execution.open[step] > 1:
            execution.ambiguous.add(step)
        items = payload.payload
        execution.progress[step] = _Progress(
            total=len(items) if isinstance(items, list) and payload.resume_payload is None else None
        )
        return None

    def _step_result(self, where: str, execution: _Execution, payload: Any) -> str | None:
        step = payload.id
        if execution.open[step] > 0:
            execution.open[step] -= 1
        elif execution.waiting[step] > 0:
            execution.waiting[step] -= 1
        else:
            return f"{where}: no workflow-step-start for {step!r} is open in this execution"
        return None

    def _step_suspended(self, where: str, execution: _Execution, payload: Any) -> str | None:
        step = payload.id
        if execution.open[step] <= 0:
            return f"{where}: no workflow-step-start for {step!r} is open in this execution"
        execution.open[step] -= 1
        execution.suspended = True
        return None

    def _step_waiting(self, where: str, execution: _Execution, payload: Any) -> str | None:
        execution.waiting[payload.id] += 1
        return None

    def _step_progress(self, where: str, execution: _Execution, payload: Any) -> str | None:
        step = payload.id
        if execution.open[step] <= 0:
            return f"{where}: progress of {step!r}, which is not running"
        if step in execution.ambiguous:
            return None
        problem = _check_progress(execution.progress.setdefault(step, _Progress()), payload)
        return None if problem is None else f"{where}: {problem}"

    def _step_output(self, where: str, execution: _Execution, payload: Any) -> str | None:
        name = payload.step_name
        if execution.open[name] <= 0:
            return f"{where}: output written by {name!r}, which is not running"
        return None

    def _canceled(self, where: str, execution: _Execution, payload: Any) -> str | None:
        execution.canceled = True
        return None

    def _paused(self, where: str, execution: _Execution, payload: Any) -> str | None:
        execution.paused = True
        return None

    def _finish(self, where: str, execution: _Execution, payload: Any) -> str | None:
        status = payload.workflow_status
        problem = _unsettled(where, execution) or self._finish_status(where, execution, status)
        if problem is not None:
            return problem
        self.execution = None
        self.last_status = status
        if status in _TERMINAL:
            self.final = status
        return None

    def _finish_status(self, where: str, execution: _Execution, status: str) -> str | None:
        if status == "suspended" and not (execution.suspended or self.ever_suspended):
            return f"{where}: finishes suspended, but no step of the run ever suspended"
        self.ever_suspended = self.ever_suspended or execution.suspended
        if status == "canceled" and not execution.canceled:
            return f"{where}: finishes canceled without a workflow-canceled chunk"
        if status == "paused" and not execution.paused:
            return f"{where}: finishes paused without a workflow-paused chunk"
        if status != "canceled" and execution.canceled:
            return f"{where}: the execution was canceled but finishes {status}"
        return None

    def at_end(self) -> str | None:
        """The stream is complete: nothing may be left open."""
        if self.cancel_between:
            return "the stream ends after a workflow-canceled without its workflow-finish"
        if self.execution is not None:
            return (
                f"the stream ends inside execution {self.execution.number} (from seq "
                f"{self.execution.first_seq}): no workflow-finish"
            )
        return None


def _unsettled(where: str, execution: _Execution) -> str | None:
    if +execution.open:
        return (
            f"{where}: execution {execution.number} finishes with steps started and "
            f"never settled: {_pending(execution.open)}"
        )
    if +execution.waiting:
        return f"{where}: sleeps never settled: {_pending(execution.waiting)}"
    return None


_IN_EXECUTION: dict[str, _Handler] = {
    "workflow-step-start": _Checker._step_start,
    "workflow-step-result": _Checker._step_result,
    "workflow-step-suspended": _Checker._step_suspended,
    "workflow-step-waiting": _Checker._step_waiting,
    "workflow-step-progress": _Checker._step_progress,
    "workflow-step-output": _Checker._step_output,
    "workflow-canceled": _Checker._canceled,
    "workflow-paused": _Checker._paused,
    "workflow-finish": _Checker._finish,
}


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
