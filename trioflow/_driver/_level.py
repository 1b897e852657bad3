"""The driver's level: runs one workflow graph entry after entry on top of its book,
announces nodes and publishes their chunks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

import trio

from .._context import StepContext, StepExecution
from .._core._chunks import Chunk
from .._core._graph import (
    Entry,
)
from .._core._journal import StepJournal
from .._core._model import (
    ITERATION_COUNT,
    StepResult,
)
from .._core._plan._level import LevelBook
from .._core._plan._records import start_times
from .._core._plan._run import (
    after_entry,
    after_success,
    interrupted_record,
    settled_chunk,
    start_chunk,
)
from .._core._plan._values import (
    Announced,
    NodeResume,
    Outcome,
    StepRun,
)
from .._core._resume import ResumeTarget, nested_header
from .._core._status import RunStatus, StepStatus
from .._effects import now_ms
from .._workflow import Step, WorkflowGraph
from ..tracing._spans import Span


class LevelExecution(StepExecution, Protocol):
    """What a level and the modules of each kind of entry use of the execution running
    them (``_execution.Execution``): declared here so that the level never imports the
    execution that creates it."""

    stored: StepJournal
    durable: bool
    per_step: bool
    emit_step_events: bool
    resume_data: Any
    resume_token: str | None
    pending_resume: dict[str, Any] | None
    live_records: dict[str, Callable[[], dict[str, Any]]]
    suspended_once: bool

    @property
    def interrupted(self) -> bool: ...

    @property
    def persist(self) -> Callable[..., Awaitable[bool]]: ...

    @property
    def persist_progress(self) -> Callable[[], Awaitable[None]]: ...

    def next_call_id(self) -> str: ...

    def span(
        self, kind: str, name: str, *name_args: str
    ) -> contextlib.AbstractContextManager[Span | None]: ...

    def interrupted_resume(self, resume: NodeResume | None) -> bool: ...

_S = StepStatus
_settle = LevelBook.settle



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
        node: Step | WorkflowGraph,
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
        execution: LevelExecution,
        workflow: WorkflowGraph,
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
        status = run.result.status
        if status is _S.SUSPENDED:
            self.execution.suspended_once = True
        elif status is _S.CANCELED and self.execution.interrupted:
            run = StepRun(result=interrupted_record(run.result))
        _settle(self, node_id, run, entry_path)

    def child(
        self,
        workflow: WorkflowGraph,
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
        """Publish a step's start chunk (see ``_plan._run.start_chunk``)."""
        log = self.execution.log
        log.publish(
            start_chunk(
                log.run_id,
                log.next_seq,
                chunk_id,
                call_id=call_id,
                payload=payload,
                started_at=started_at,
                resuming=resume is not None,
                resume_data=resume.data if resume is not None else None,
                resumed_at=resumed_at,
                metadata=metadata,
            )
        )

    def emit_settled(self, chunk_id: str, result: StepResult, call_id: str | None) -> None:
        """Publish a settled step's chunk, if any (see ``_plan._run.settled_chunk``)."""
        execution = self.execution
        log = execution.log
        chunk = settled_chunk(
            log.run_id, log.next_seq, chunk_id, result, call_id, interrupted=execution.interrupted
        )
        if chunk is not None:
            log.publish(chunk)

    # --- running the graph ----------------------------------------------------------------

    async def run(
        self, start: int, value: Any, target: ResumeTarget | None, *, restart: bool = False
    ) -> Outcome:
        """Run the entries from ``start`` on, as the planner says after each
        (``_plan._run.after_entry``/``after_success``)."""
        entries = self.workflow.entries
        last = len(entries) - 1
        execution = self.execution
        is_root = self.is_root
        # The planner's two answers for this level, asked once (the step path asks nothing).
        more = after_success(
            last=False, is_root=is_root, durable=execution.durable, per_step=execution.per_step
        )
        final = after_success(
            last=True, is_root=is_root, durable=execution.durable, per_step=execution.per_step
        )
        for idx in range(start, last + 1):
            self.active_entry = idx
            self.active_input = value
            first = idx == start
            outcome = await self.run_entry(
                idx, entries[idx], value, target if first else None, restart=restart and first
            )
            if first and is_root:
                execution.pending_resume = None
            step = after_entry(outcome.status)
            if step == "continue":
                value = outcome.output
                self.active_entry = idx + 1
                self.active_input = value
                then = final if idx == last else more
                if then.report_progress and self.on_entry_done is not None:
                    await self.on_entry_done()
                if then.persist:
                    await execution.persist(RunStatus.RUNNING)
                elif then.checkpoint:
                    await trio.lowlevel.checkpoint()
                if then.pause:
                    return Outcome(_S.PAUSED, output=value)
                continue
            if step == "bail":
                self.active_entry = None
                return Outcome(_S.SUCCESS, output=outcome.output)
            return outcome
        self.active_entry = None
        if start > last:
            # Nothing left to run (a restart after the last entry): still a cancel point.
            await trio.lowlevel.checkpoint()
        # Either the loop awaited an entry or the line above checkpointed (the checker
        # cannot tell that the loop ran when start <= last).
        return Outcome(_S.SUCCESS, output=value)  # noqa: ASYNC910

    def run_entry(
        self, idx: int, entry: Entry, value: Any, target: ResumeTarget | None, *, restart: bool
    ) -> Coroutine[Any, Any, Outcome]:
        """Run one entry (await it): the drive's coroutine, without a frame of its own."""
        return self.drive.run_entry(self, idx, entry, value, target, restart=restart)

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
        node: Step | WorkflowGraph,
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
        if resume is None:
            announced = Announced(self.execution.next_call_id(), now_ms())
        else:
            announced = Announced(self.execution.next_call_id(), *start_times(now_ms(), resume))
        if emit and self.emits:
            stored = resume.stored if resume is not None else None
            if (
                stored is not None
                and "payload" in stored
                and (not isinstance(node, WorkflowGraph) or nested_header(stored) is not None)
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


    def run_node(
        self,
        node: Step | WorkflowGraph,
        value: Any,
        *,
        resume: NodeResume | None,
        chunk_id: str,
        emit: bool = True,
        iteration: int = 0,
        foreach_index: int | None = None,
        record: bool = True,
        announced: Announced | None = None,
    ) -> Coroutine[Any, Any, StepRun]:
        """Run one node (await it). When it is interrupted by cancellation, its
        ``canceled`` result is recorded at this level (``record``; foreach iterations are
        recorded by their container) before ``trio.Cancelled`` propagates; when the runtime
        (not a cancel of the run) interrupted it, that record says ``running``.

        A plain function handing back the drive's coroutine: no frame of its own on the
        step path."""
        return self.drive.run_node(
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
