"""The driver's level: runs one workflow graph entry after entry on top of its book,
announces nodes and publishes their chunks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import trio

from .._context import StepContext
from .._core._chunks import (
    Chunk,
    StepResultPayload,
    StepStartPayload,
    StepSuspendedPayload,
    WorkflowStepResult,
    WorkflowStepStart,
    WorkflowStepSuspended,
)
from .._core._graph import (
    Entry,
)
from .._core._model import (
    ITERATION_COUNT,
    StepResult,
    public_metadata,
)
from .._core._plan._level import LevelBook
from .._core._plan._records import (
    VALUE,
    start_times,
)
from .._core._plan._values import (
    Announced,
    NodeResume,
    Outcome,
    StepRun,
)
from .._core._resume import ResumeTarget, nested_header
from .._core._serde import (
    serialize_error,
    to_jsonable,
)
from .._core._status import RunStatus, StepStatus
from .._effects import now_ms
from .._workflow import Step, Workflow

if TYPE_CHECKING:
    from ._execution import Execution

_S = StepStatus



class Drive(Protocol):
    """How a level runs its entries and nodes (``_dispatch.DRIVE``): passed in, so that
    the modules of each kind of entry import the level, never the other way round."""

    async def run_entry(
        self,
        level: Level,
        idx: int,
        entry: Entry,
        value: Any,
        target: ResumeTarget | None,
        *,
        restart: bool,
    ) -> Outcome: ...

    async def run_node(
        self,
        level: Level,
        node: Step | Workflow,
        value: Any,
        *,
        resume: NodeResume | None,
        chunk_id: str,
        emit: bool = True,
        iteration: int = 0,
        foreach_index: int | None = None,
        record: bool = True,
        announced: Announced | None = None,
    ) -> StepRun: ...


class Level(LevelBook):
    """Executes one workflow graph (top level, or a nested workflow used as a step)."""

    def __init__(
        self,
        execution: Execution,
        workflow: Workflow,
        *,
        drive: Drive,
        key_prefix: str,
        chunk_prefix: str,
        input: Any,
        state: Any,
        is_root: bool,
        header: dict[str, Any] | None = None,
        key_scope: str = "",
    ) -> None:
        self.execution = execution
        self.workflow = workflow
        self.drive = drive
        #: Called after each entry of a nested level succeeds (durable progress records).
        self.on_entry_done: Callable[[], Awaitable[None]] | None = None
        super().__init__(
            stored=execution.stored,
            run_id=execution.run_id,
            resume_data=execution.resume_data,
            state_schema=workflow.state_schema,
            key_prefix=key_prefix,
            chunk_prefix=chunk_prefix,
            input=input,
            state=state,
            is_root=is_root,
            header=header,
            key_scope=key_scope,
        )

    def settle(self, node_id: str, run: StepRun, entry_path: list[int]) -> None:
        super().settle(node_id, run, entry_path)
        if run.result.status is _S.SUSPENDED:
            self.execution.suspended_once = True

    def child(
        self,
        workflow: Workflow,
        *,
        key_prefix: str,
        chunk_prefix: str,
        input: Any,
        state: Any,
        header: dict[str, Any] | None = None,
        key_scope: str,
    ) -> Level:
        """The level of a nested workflow run as one of this level's nodes."""
        return Level(
            self.execution,
            workflow,
            drive=self.drive,
            key_prefix=key_prefix,
            chunk_prefix=chunk_prefix,
            input=input,
            state=state,
            is_root=False,
            header=header,
            key_scope=key_scope,
        )

    # --- chunk helpers --------------------------------------------------------------------

    @property
    def emits(self) -> bool:
        return self.workflow.emit_step_events and self.execution.emit_step_events

    def publish(self, chunk_class: Callable[..., Chunk], payload: Any) -> None:
        log = self.execution.log
        log.publish(chunk_class(run_id=log.run_id, seq=log.next_seq, payload=payload))

    def emit_start(
        self,
        chunk_id: str,
        *,
        call_id: str | None,
        payload: Any,
        started_at: int,
        resume: NodeResume | None,
        resumed_at: int | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """A step's start chunk; a resumed step's also carries its input and first start
        time beside the resume data (as Mastra 1.71 sends them)."""
        body = StepStartPayload(
            id=chunk_id,
            step_name=chunk_id,
            step_call_id=call_id,
            payload=to_jsonable(payload),
            started_at=started_at,
            resume_payload=to_jsonable(resume.data) if resume is not None else None,
            resumed_at=(resumed_at or started_at) if resume is not None else None,
            metadata=metadata,
        )
        self.publish(WorkflowStepStart, body)

    def emit_settled(self, chunk_id: str, result: StepResult, call_id: str | None) -> None:
        if result.status is _S.SUSPENDED:
            suspended = StepSuspendedPayload(
                id=chunk_id,
                step_name=chunk_id,
                suspend_payload=to_jsonable(result.suspend_payload),
                suspend_output=to_jsonable(result.suspend_output),
                suspended_at=result.suspended_at,
                payload=to_jsonable(result.payload),
                started_at=result.started_at,
                step_call_id=call_id,
            )
            self.publish(WorkflowStepSuspended, suspended)
            return
        body = StepResultPayload(
            id=chunk_id,
            step_name=chunk_id,
            status=VALUE[result.status],
            output=to_jsonable(result.output),
            payload=to_jsonable(result.payload),
            error=serialize_error(result.error) if result.error is not None else None,
            started_at=result.started_at,
            ended_at=result.ended_at,
            resume_payload=to_jsonable(result.resume_payload),
            resumed_at=result.resumed_at,
            step_call_id=call_id,
            metadata=public_metadata(result.metadata) if result.metadata else None,
            retry_count=result.retry_count,
        )
        self.publish(WorkflowStepResult, body)

    # --- running the graph ----------------------------------------------------------------

    async def run(
        self, start: int, value: Any, target: ResumeTarget | None, *, restart: bool = False
    ) -> Outcome:
        entries = self.workflow.entries
        execution = self.execution
        for idx in range(start, len(entries)):
            entry = entries[idx]
            self.active_entry = idx
            self.active_input = value
            first = idx == start
            outcome = await self.run_entry(
                idx, entry, value, target if first else None, restart=restart and first
            )
            if first and self.is_root:
                execution.pending_resume = None
            if outcome.status is _S.SUCCESS:
                value = outcome.output
                self.active_entry = idx + 1
                self.active_input = value
                if self.on_entry_done is not None and idx + 1 < len(entries):
                    await self.on_entry_done()
                if self.is_root:
                    if execution.durable and idx + 1 < len(entries):
                        # (After the last entry the final snapshot is written at once.)
                        await execution.persist(RunStatus.RUNNING)
                    else:
                        # Still a cancel and schedule point between entries.
                        await trio.lowlevel.checkpoint()
                    if execution.per_step and idx + 1 < len(entries):
                        return Outcome(_S.PAUSED, output=value)
                continue
            if outcome.status is _S.BAILED:
                self.active_entry = None
                return Outcome(_S.SUCCESS, output=outcome.output)
            return outcome
        self.active_entry = None
        return Outcome(_S.SUCCESS, output=value)


    async def run_entry(
        self, idx: int, entry: Entry, value: Any, target: ResumeTarget | None, *, restart: bool
    ) -> Outcome:
        return await self.drive.run_entry(self, idx, entry, value, target, restart=restart)

    def make_context(
        self,
        step_id: str,
        chunk_id: str,
        value: Any,
        *,
        iteration: int = 0,
        is_condition: bool = False,
        retry_count: int = 0,
    ) -> StepContext:
        return StepContext(
            self,
            step_id=step_id,
            step_name=chunk_id,
            input_data=value,
            state=self.state,
            iteration_count=iteration,
            retry_count=-1 if is_condition else retry_count,
            is_condition=is_condition,
        )


    # --- one node ---------------------------------------------------------------------------

    def announce(
        self,
        node: Step | Workflow,
        value: Any,
        resume: NodeResume | None,
        chunk_id: str,
        *,
        emit: bool = True,
        iteration: int = 0,
    ) -> Announced:
        """Give a node its call id and start time, and publish its start chunk (sync).

        Concurrent branches are announced one after the other before any of them runs, so
        the log lists their starts in graph order whatever order trio runs them in.
        """
        announced = Announced(self.execution.next_call_id(), *start_times(now_ms(), resume))
        if emit and self.emits:
            stored = resume.stored if resume is not None else None
            if (
                stored is not None
                and "payload" in stored
                and (not isinstance(node, Workflow) or nested_header(stored) is not None)
            ):
                value = stored["payload"]
            self.emit_start(
                chunk_id,
                call_id=announced.call_id,
                payload=value,
                started_at=announced.started_at,
                resume=resume,
                resumed_at=announced.resumed_at,
                metadata={ITERATION_COUNT: iteration} if iteration else None,
            )
        return announced


    async def run_node(
        self,
        node: Step | Workflow,
        value: Any,
        *,
        resume: NodeResume | None,
        chunk_id: str,
        emit: bool = True,
        iteration: int = 0,
        foreach_index: int | None = None,
        record: bool = True,
        announced: Announced | None = None,
    ) -> StepRun:
        """Run one node. When it is interrupted by cancellation, its ``canceled`` result is
        recorded at this level (``record``; foreach iterations are recorded by their
        container) before ``trio.Cancelled`` propagates."""
        return await self.drive.run_node(
            self,
            node,
            value,
            resume=resume,
            chunk_id=chunk_id,
            emit=emit,
            iteration=iteration,
            foreach_index=foreach_index,
            record=record,
            announced=announced,
        )
