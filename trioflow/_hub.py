"""A run's in-process hub (its event log, write lock and executions here) and the
result a stored run describes: used by Run, RunOutput and the Runtime alike, so it sits
below all of them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from ._broadcast import EventLog
from ._core._errors import RunNotActiveError, RuntimeClosedError
from ._core._model import RunSnapshot, WorkflowResult, public_step_result
from ._core._plan._records import all_step_results, load_step_result
from ._core._resume import full_suspended_paths
from ._core._status import RunStatus, is_terminal

if TYPE_CHECKING:
    from ._driver._execution import Execution


class RunHub:
    """Per-run, in-process coordination: the event log, the write lock, the execution
    currently running in this process, and waiters for the next execution."""

    def __init__(self, run_id: str, log: EventLog, status: RunStatus) -> None:
        self.run_id = run_id
        self.log = log
        self.write_lock = trio.Lock()
        self.execution: Execution | None = None
        self.latest: Execution | None = None
        self.status = status
        self.external_result: WorkflowResult | None = None
        #: The execution here that ended last, and the log's next seq when it ended (its
        #: last chunk is the one before: nothing is mirrored from storage while it runs).
        self.last_ended: Execution | None = None
        self.last_end_seq = log.next_seq
        self._changed = trio.Event()

    def execution_started(self, execution: Execution) -> None:
        self.execution = execution
        self.latest = execution
        self.status = RunStatus.RUNNING
        self._notify()

    def execution_ended(self, execution: Execution) -> None:
        if self.execution is execution:
            self.execution = None
        self.last_ended = execution
        self.last_end_seq = self.log.next_seq
        if execution.result is not None:
            self.status = execution.result.status
        else:
            # It died without a finish: its streams' subscribers must not wait for one.
            self.log.interrupt_waiters()
        self._notify()

    def ended_outside(self, result: WorkflowResult) -> None:
        """The run ended without an execution here (cancel of a suspended run, or
        another process executed it to its end)."""
        self.external_result = result
        self.status = result.status
        self._notify()

    async def load_stored_result(self) -> WorkflowResult:
        """The result storage holds for the run (after a final ``workflow-finish`` that
        another process wrote; it is stored in the same write as the final snapshot).
        A terminal one is recorded as :meth:`ended_outside`."""
        snapshot = await self.log.storage.load_snapshot(self.run_id)
        if snapshot is None:
            raise RunNotActiveError(f"run {self.run_id} was deleted")
        result = result_from_snapshot(snapshot)
        if is_terminal(result.status):
            self.ended_outside(result)
        else:
            self.status = result.status
            self._notify()
        return result

    def died_here(self) -> BaseException | None:
        """Why no more chunks come through this process: its latest execution of the run
        ended without its ``workflow-finish`` (storage failing, an engine error) and none
        runs here now. That execution's error (RuntimeClosedError when it was stopped
        without one); None when this is not so."""
        latest = self.latest
        if latest is None or self.execution is not None:
            return None
        if not latest.done.is_set() or latest.result is not None:
            return None
        if latest.failure is not None:
            return latest.failure
        return RuntimeClosedError(f"run {self.run_id} did not finish")

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()


def result_from_snapshot(snapshot: RunSnapshot) -> WorkflowResult:
    """The WorkflowResult a stored run describes (errors as SerializedError)."""
    steps = {
        key: public_step_result(load_step_result(value))
        for key, value in snapshot.steps.items()
        if "." not in key and "[" not in key and not key.startswith("@")
    }
    suspended = (
        full_suspended_paths(snapshot.suspended_paths, snapshot.steps)
        if snapshot.status is RunStatus.SUSPENDED
        else []
    )
    payloads: dict[str, Any] = {}
    for path in suspended:
        stored = snapshot.steps.get(".".join(path)) or snapshot.steps.get(path[0]) or {}
        payloads[".".join(path)] = stored.get("suspend_payload")
    return WorkflowResult(
        status=snapshot.status,
        result=snapshot.result if snapshot.status is RunStatus.SUCCESS else None,
        error=snapshot.error,
        steps=steps,
        all_steps=all_step_results(steps, snapshot.steps),
        input=snapshot.input,
        state=snapshot.state,
        suspended=suspended,
        suspend_payload=payloads,
        tripwire=snapshot.tripwire,
        run_id=snapshot.run_id,
        trace_id=snapshot.trace_id or "",
        step_execution_path=list(snapshot.step_execution_path),
    )
