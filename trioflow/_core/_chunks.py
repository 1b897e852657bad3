"""Chunk classes: the typed events of a run's log (pure data, trio-free).

Every chunk is a frozen attrs instance with ``type``, ``run_id``, ``from_``, ``seq`` and
``payload`` (``data`` for :class:`DataChunk`). Values inside payloads are JSON data: the
live exception of a failure lives in ``WorkflowResult.error``; chunks carry a
:class:`SerializedError`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import attrs

from ._model import SerializedError, TripwireInfo, Usage

FROM_WORKFLOW = "WORKFLOW"
FROM_USER = "USER"


@attrs.frozen(kw_only=True)
class WorkflowStartPayload:
    workflow_id: str
    #: True on the start of an execution that ``restart()`` began (the process running the
    #: run died, or the runtime stopped, while it was executing): the chunks before it from
    #: the interrupted execution stay in the log. On the wire ``restart`` only when true.
    restart: bool = False


@attrs.frozen(kw_only=True)
class StepStartPayload:
    id: str
    step_name: str
    step_call_id: str | None = None
    status: str = "running"
    payload: Any = None
    started_at: int | None = None
    resume_payload: Any = None
    resumed_at: int | None = None
    metadata: dict[str, Any] | None = None


@attrs.frozen(kw_only=True)
class StepOutputPayload:
    output: Any
    step_name: str
    #: The run whose log holds the chunk (a nested workflow's output names the outer run),
    #: as Mastra 1.71 sends it; None in logs stored before trioflow sent it.
    run_id: str | None = None


@attrs.frozen(kw_only=True)
class StepProgressPayload:
    id: str
    step_name: str
    completed_count: int
    total_count: int
    current_index: int
    iteration_status: str
    iteration_output: Any = None


@attrs.frozen(kw_only=True)
class StepWaitingPayload:
    id: str
    step_name: str
    payload: Any = None
    started_at: int | None = None
    status: str = "waiting"


@attrs.frozen(kw_only=True)
class StepSuspendedPayload:
    id: str
    step_name: str
    status: str = "suspended"
    suspend_payload: Any = None
    suspend_output: Any = None
    suspended_at: int | None = None
    payload: Any = None
    started_at: int | None = None
    step_call_id: str | None = None


@attrs.frozen(kw_only=True)
class StepResultPayload:
    id: str
    step_name: str
    status: str
    output: Any = None
    payload: Any = None
    error: SerializedError | None = None
    started_at: int | None = None
    ended_at: int | None = None
    resume_payload: Any = None
    resumed_at: int | None = None
    step_call_id: str | None = None
    tripwire: TripwireInfo | None = None
    metadata: dict[str, Any] | None = None
    #: Retries before the step settled (``StepResult.retry_count``); on the wire
    #: ``retryCount`` only when above 0 (Mastra sends no such field).
    retry_count: int = 0


@attrs.frozen(kw_only=True)
class EmptyPayload:
    pass


@attrs.frozen(kw_only=True)
class WorkflowFinishPayload:
    workflow_status: str
    usage: Usage = attrs.field(factory=Usage)
    metadata: dict[str, Any] = attrs.field(factory=dict)
    tripwire: TripwireInfo | None = None
    #: The run's result, on success only (Mastra 1.71 sends it as ``finalWorkflowResult``).
    final_workflow_result: Any = None


@attrs.frozen(kw_only=True)
class WorkflowStart:
    TYPE: ClassVar[str] = "workflow-start"
    type: Literal["workflow-start"] = "workflow-start"
    run_id: str
    from_: str = FROM_WORKFLOW
    seq: int = 0
    payload: WorkflowStartPayload


@attrs.frozen(kw_only=True)
class WorkflowStepStart:
    TYPE: ClassVar[str] = "workflow-step-start"
    type: Literal["workflow-step-start"] = "workflow-step-start"
    run_id: str
    from_: str = FROM_WORKFLOW
    seq: int = 0
    payload: StepStartPayload


@attrs.frozen(kw_only=True)
class WorkflowStepOutput:
    TYPE: ClassVar[str] = "workflow-step-output"
    type: Literal["workflow-step-output"] = "workflow-step-output"
    run_id: str
    from_: str = FROM_USER
    seq: int = 0
    payload: StepOutputPayload


@attrs.frozen(kw_only=True)
class WorkflowStepProgress:
    TYPE: ClassVar[str] = "workflow-step-progress"
    type: Literal["workflow-step-progress"] = "workflow-step-progress"
    run_id: str
    from_: str = FROM_WORKFLOW
    seq: int = 0
    payload: StepProgressPayload


@attrs.frozen(kw_only=True)
class WorkflowStepWaiting:
    TYPE: ClassVar[str] = "workflow-step-waiting"
    type: Literal["workflow-step-waiting"] = "workflow-step-waiting"
    run_id: str
    from_: str = FROM_WORKFLOW
    seq: int = 0
    payload: StepWaitingPayload


@attrs.frozen(kw_only=True)
class WorkflowStepSuspended:
    TYPE: ClassVar[str] = "workflow-step-suspended"
    type: Literal["workflow-step-suspended"] = "workflow-step-suspended"
    run_id: str
    from_: str = FROM_WORKFLOW
    seq: int = 0
    payload: StepSuspendedPayload


@attrs.frozen(kw_only=True)
class WorkflowStepResult:
    TYPE: ClassVar[str] = "workflow-step-result"
    type: Literal["workflow-step-result"] = "workflow-step-result"
    run_id: str
    from_: str = FROM_WORKFLOW
    seq: int = 0
    payload: StepResultPayload


@attrs.frozen(kw_only=True)
class WorkflowPaused:
    TYPE: ClassVar[str] = "workflow-paused"
    type: Literal["workflow-paused"] = "workflow-paused"
    run_id: str
    from_: str = FROM_WORKFLOW
    seq: int = 0
    payload: EmptyPayload = attrs.field(factory=EmptyPayload)


@attrs.frozen(kw_only=True)
class WorkflowCanceled:
    TYPE: ClassVar[str] = "workflow-canceled"
    type: Literal["workflow-canceled"] = "workflow-canceled"
    run_id: str
    from_: str = FROM_WORKFLOW
    seq: int = 0
    payload: EmptyPayload = attrs.field(factory=EmptyPayload)


@attrs.frozen(kw_only=True)
class WorkflowFinish:
    TYPE: ClassVar[str] = "workflow-finish"
    type: Literal["workflow-finish"] = "workflow-finish"
    run_id: str
    from_: str = FROM_WORKFLOW
    seq: int = 0
    payload: WorkflowFinishPayload


def _check_data_type(_: object, __: object, value: str) -> None:
    if not value.startswith("data-"):
        raise ValueError(f"a custom chunk type must start with 'data-', got {value!r}")


@attrs.frozen(kw_only=True)
class DataChunk:
    """A custom chunk from ``ctx.writer.custom(type, data)``; ``type`` starts with ``data-``."""

    type: str = attrs.field(validator=_check_data_type)
    run_id: str
    # Mastra 1.71 marks data a workflow step writes as the workflow's.
    from_: str = FROM_WORKFLOW
    seq: int = 0
    data: Any = None


Chunk = (
    WorkflowStart
    | WorkflowStepStart
    | WorkflowStepOutput
    | WorkflowStepProgress
    | WorkflowStepWaiting
    | WorkflowStepSuspended
    | WorkflowStepResult
    | WorkflowPaused
    | WorkflowCanceled
    | WorkflowFinish
    | DataChunk
)

#: Chunk classes by their ``type`` (DataChunk is matched by the ``data-`` prefix).
CHUNK_CLASSES: dict[str, type[Any]] = {
    cls.TYPE: cls
    for cls in (
        WorkflowStart,
        WorkflowStepStart,
        WorkflowStepOutput,
        WorkflowStepProgress,
        WorkflowStepWaiting,
        WorkflowStepSuspended,
        WorkflowStepResult,
        WorkflowPaused,
        WorkflowCanceled,
        WorkflowFinish,
    )
}
