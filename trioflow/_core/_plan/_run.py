"""The run planner: one execution of a run at its top level (pure, trio-free).

Rules:

- **Where an execution starts** (:func:`start_at`): ``start`` runs entry 0 with the run's
  input; ``resume`` runs the entry of the suspended path's first node with the stored input
  of the entry that was active; ``restart`` runs the stored active entry again with its
  stored input (past the last entry when the run had finished its entries: then nothing
  runs and the run ends with that input as its output).
- **Between entries** (:func:`after_entry`): a successful entry hands its output to the
  next one. At the top level a durable run writes a ``running`` snapshot between entries
  (not after the last: the final write follows at once) and a run on a non-durable storage
  still passes a cancel point; ``per_step`` pauses after a successful entry that is not
  the last. A nested level reports its progress between entries (its parent writes the
  progress record). A ``bailed`` entry ends the level in ``success`` with the bail value;
  any other outcome ends the level with it.
- **The final status** (:func:`final_status`): ``canceled`` when the run was canceled (by
  the user or another process) or ended without an outcome, else the level's outcome. The
  run moves ``running -> final`` through :func:`~.._status.check_transition`.
- **The end** (:func:`ending_chunks`, :func:`final_fields`): a canceled run ends with
  ``workflow-canceled``, a paused one with ``workflow-paused``, every one with
  ``workflow-finish`` (seq numbers following on); the final snapshot stores the result on
  success, the error on failure/tripwire, the tripwire whenever there is one; success
  leaves no active entry and a canceled run no suspended paths.
- **Steps the runtime interrupts** (its nursery cancelled: Ctrl-C, ``open_runtime``
  exiting) are not settled: no step-result chunk, and their record says ``running``
  (keeping what a restart continues from: payload, start, a nested workflow's header, a
  foreach's outcomes), so restart() runs them again. Only a cancel of the run (or of a
  branch by the engine: fail-fast) makes a ``canceled`` result.
- **Step chunks** (:func:`start_chunk`, :func:`settled_chunk`): which chunk a settled
  step publishes (suspended or result) and what its payload carries.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from .._chunks import (
    Chunk,
    StepResultPayload,
    StepStartPayload,
    StepSuspendedPayload,
    WorkflowCanceled,
    WorkflowFinish,
    WorkflowFinishPayload,
    WorkflowPaused,
    WorkflowStepResult,
    WorkflowStepStart,
    WorkflowStepSuspended,
)
from .._model import (
    SerializedError,
    StepResult,
    Usage,
    WorkflowResult,
    public_metadata,
    public_step_result,
)
from .._resume import ResumeTarget
from .._serde import serialize_error, to_jsonable
from .._status import ACTIVE, InvalidTransitionError, RunStatus, StepStatus, check_transition
from ._level import LevelBook
from ._records import VALUE, AllSteps
from ._values import Outcome, run_status

_S = StepStatus

ExecutionKind = Literal["start", "resume", "restart"]


# --- where an execution starts ---------------------------------------------------------------


@attrs.frozen(kw_only=True)
class StartAt:
    """The entry an execution runs first, its input, the resume target it carries to that
    entry, and whether the entry is being restarted."""

    index: int
    value: Any
    target: ResumeTarget | None = None
    restart: bool = False


def start_at(
    kind: str,
    *,
    entries: int,
    input: Any,
    target: ResumeTarget | None,
    suspended_paths: dict[str, list[int]],
    active_entry: int | None,
    active_input: Any,
) -> StartAt:
    """Where an execution of ``kind`` (start, resume, restart) begins."""
    if kind == "start":
        return StartAt(index=0, value=input)
    if kind == "resume":
        if target is None or not target.path:
            raise ValueError("a resume needs a target with a path (ResumeTarget.path)")
        path = suspended_paths.get(target.path[0])
        if not path:
            raise ValueError(f"resume target {target.path[0]!r} is not a suspended path")
        return StartAt(index=path[0], value=active_input, target=target)
    if kind == "restart":
        index = active_entry if active_entry is not None else entries
        return StartAt(index=index, value=active_input, restart=True)
    raise ValueError(f"execution kind must be start, resume or restart, not {kind!r}")


# --- between entries ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class AfterSuccess:
    """What a level does after an entry succeeded, before the next entry: report progress
    to its parent (nested), write a ``running`` snapshot or just pass a cancel point (top
    level), and whether it pauses (``per_step``) instead of going on."""

    report_progress: bool
    persist: bool
    checkpoint: bool
    pause: bool


# The few decisions there are, built once: the step path allocates nothing to ask.
_NESTED_LAST = AfterSuccess(report_progress=False, persist=False, checkpoint=False, pause=False)
_NESTED_MORE = AfterSuccess(report_progress=True, persist=False, checkpoint=False, pause=False)
_ROOT_LAST = AfterSuccess(report_progress=False, persist=False, checkpoint=True, pause=False)
_ROOT_MORE = {
    (durable, per_step): AfterSuccess(
        report_progress=True, persist=durable, checkpoint=not durable, pause=per_step
    )
    for durable in (False, True)
    for per_step in (False, True)
}


def after_success(*, last: bool, is_root: bool, durable: bool, per_step: bool) -> AfterSuccess:
    """The level's step after a successful entry (``last``: it was the level's last)."""
    if not is_root:
        return _NESTED_LAST if last else _NESTED_MORE
    if last:
        return _ROOT_LAST
    return _ROOT_MORE[durable, per_step]


LevelEnd = Literal["continue", "bail", "end"]


def after_entry(status: StepStatus) -> LevelEnd:
    """Whether a level goes on after an entry that ended with ``status`` (``continue``),
    ends in success with the bail value (``bail``), or ends with the outcome (``end``)."""
    if status is _S.SUCCESS:
        return "continue"
    if status is _S.BAILED:
        return "bail"
    return "end"


# --- the end -------------------------------------------------------------------------------------


def final_status(outcome: Outcome | None, *, canceled: bool) -> tuple[Outcome, RunStatus]:
    """The outcome an execution ends with and the run's final status (checked against the
    transition table: the run is ``running`` until then)."""
    if canceled or outcome is None:
        outcome = Outcome(_S.CANCELED)
    status = run_status(outcome)
    if status in ACTIVE:
        raise InvalidTransitionError(f"an execution cannot end with its run {status.value}")
    return outcome, check_transition(RunStatus.RUNNING, status)


def ending_chunks(
    run_id: str, seq: int, status: RunStatus, outcome: Outcome, usage: Usage
) -> list[Chunk]:
    """The execution's last chunks, from ``seq`` on: workflow-canceled/paused when the
    run ends so, then workflow-finish."""
    ending: list[Chunk] = []
    if status is RunStatus.CANCELED:
        ending.append(WorkflowCanceled(run_id=run_id, seq=seq))
    elif status is RunStatus.PAUSED:
        ending.append(WorkflowPaused(run_id=run_id, seq=seq))
    error = outcome.error
    metadata: dict[str, Any] = {}
    if error is not None and status in (RunStatus.FAILED, RunStatus.TRIPWIRE):
        ser = serialize_error(error)
        metadata = {"error": {"message": ser.message, "name": ser.name}}
    ending.append(
        WorkflowFinish(
            run_id=run_id,
            seq=seq + len(ending),
            payload=WorkflowFinishPayload(
                workflow_status=status.value,
                usage=usage,
                metadata=metadata,
                tripwire=outcome.tripwire,
                final_workflow_result=to_jsonable(outcome.output)
                if status is RunStatus.SUCCESS
                else None,
            ),
        )
    )
    return ending


@attrs.frozen(kw_only=True)
class FinalFields:
    """What the final snapshot stores beyond the running ones (``final``: the snapshot's
    result/error/tripwire fields that change), and what the level's book drops."""

    final: dict[str, Any]
    clear_active_entry: bool
    clear_suspended: bool


def final_fields(status: RunStatus, outcome: Outcome) -> FinalFields:
    final: dict[str, Any] = {}
    if status is RunStatus.SUCCESS:
        final["result"] = to_jsonable(outcome.output)
    if status in (RunStatus.FAILED, RunStatus.TRIPWIRE) and outcome.error is not None:
        final["error"] = serialize_error(outcome.error)
    if outcome.tripwire is not None:
        final["tripwire"] = outcome.tripwire
    return FinalFields(
        final=final,
        clear_active_entry=status is RunStatus.SUCCESS,
        clear_suspended=status is RunStatus.CANCELED,
    )


def workflow_result(
    book: LevelBook,
    status: RunStatus,
    outcome: Outcome,
    *,
    run_id: str,
    trace_id: str,
) -> WorkflowResult:
    """The result an execution ends with, from the top level's book."""
    steps = {k: public_step_result(v) for k, v in book.results.items()}
    error: BaseException | SerializedError | None = outcome.error
    suspended = status is RunStatus.SUSPENDED
    return WorkflowResult(
        status=status,
        result=outcome.output if status is RunStatus.SUCCESS else None,
        error=error if status in (RunStatus.FAILED, RunStatus.TRIPWIRE) else None,
        steps=steps,
        all_steps=AllSteps(steps, book.stored),
        input=book.input,
        state=book.state,
        suspended=book.full_suspended_paths() if suspended else [],
        suspend_payload=book.suspend_payloads() if suspended else {},
        tripwire=outcome.tripwire,
        run_id=run_id,
        trace_id=trace_id,
        step_execution_path=list(book.execution_path),
    )


# --- steps the runtime interrupted ----------------------------------------------------------------


def interrupted_record(result: StepResult) -> StepResult:
    """The record of a node the runtime interrupted (it had been given a ``canceled``
    result): ``running``, without an end, keeping what a restart continues from."""
    return attrs.evolve(result, status=_S.RUNNING, ended_at=None)


# --- step chunks -------------------------------------------------------------------------------


def start_chunk(
    run_id: str,
    seq: int,
    chunk_id: str,
    *,
    call_id: str | None,
    payload: Any,
    started_at: int,
    resuming: bool,
    resume_data: Any = None,
    resumed_at: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> WorkflowStepStart:
    """A step's start chunk; a resumed step's also carries the resume data and when it was
    resumed, beside its input and first start time (as Mastra 1.71 sends them)."""
    return WorkflowStepStart(
        run_id=run_id,
        seq=seq,
        payload=StepStartPayload(
            id=chunk_id,
            step_name=chunk_id,
            step_call_id=call_id,
            payload=to_jsonable(payload),
            started_at=started_at,
            resume_payload=to_jsonable(resume_data) if resuming else None,
            resumed_at=(resumed_at or started_at) if resuming else None,
            metadata=metadata,
        ),
    )


def settled_chunk(
    run_id: str,
    seq: int,
    chunk_id: str,
    result: StepResult,
    call_id: str | None,
    *,
    interrupted: bool = False,
) -> Chunk | None:
    """The chunk a settled step publishes: workflow-step-suspended for a suspension,
    workflow-step-result otherwise; None for a step the runtime interrupted (not settled:
    a restart runs it again)."""
    status = result.status
    if status is _S.SUSPENDED:
        return WorkflowStepSuspended(
            run_id=run_id,
            seq=seq,
            payload=StepSuspendedPayload(
                id=chunk_id,
                step_name=chunk_id,
                suspend_payload=to_jsonable(result.suspend_payload),
                suspend_output=to_jsonable(result.suspend_output),
                suspended_at=result.suspended_at,
                payload=to_jsonable(result.payload),
                started_at=result.started_at,
                step_call_id=call_id,
            ),
        )
    if interrupted and status is _S.CANCELED:
        return None
    error = result.error
    return WorkflowStepResult(
        run_id=run_id,
        seq=seq,
        payload=StepResultPayload(
            id=chunk_id,
            step_name=chunk_id,
            status=VALUE[status],
            output=to_jsonable(result.output),
            payload=to_jsonable(result.payload),
            error=serialize_error(error) if error is not None else None,
            started_at=result.started_at,
            ended_at=result.ended_at,
            resume_payload=to_jsonable(result.resume_payload),
            resumed_at=result.resumed_at,
            step_call_id=call_id,
            metadata=public_metadata(result.metadata) if result.metadata else None,
            retry_count=result.retry_count,
        ),
    )
