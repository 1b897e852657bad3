"""The trio layer: executes a workflow graph, level by level, inside a run's cancel scope.

One :class:`Execution` is one start, resume or restart of a run. It owns the run's cancel
scope (cancelling it *is* the ``canceled`` status), emits chunks into the run's log, and
writes a snapshot after every top-level entry, so the stored run is at most one entry
behind. A :class:`Level` executes one workflow graph: the top-level workflow, or a nested
workflow used as a step.

Step errors never escape into a nursery: whatever a step (or a condition, a map or sleep
function) raises is that step's failure, and the original exception object is recorded,
also for ``SystemExit``, ``GeneratorExit`` or any other ``BaseException`` subclass. Only
``trio.Cancelled`` and ``KeyboardInterrupt`` propagate (:func:`trioflow._groups.is_fatal`).

"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import logging
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import trio

from .._context import RequestContext
from .._core._chunks import (
    Chunk,
    WorkflowCanceled,
    WorkflowFinish,
    WorkflowFinishPayload,
    WorkflowPaused,
    WorkflowStart,
    WorkflowStartPayload,
)
from .._core._errors import (
    LeaseLostError,
    RuntimeClosedError,
)
from .._core._handout import Handout
from .._core._journal import StepJournal
from .._core._model import (
    RunSnapshot,
    Usage,
    WorkflowResult,
    public_step_result,
)
from .._core._plan._records import (
    AllSteps,
)
from .._core._plan._values import (
    NodeResume,
    Outcome,
    run_status,
)
from .._core._resume import ResumeTarget
from .._core._serde import (
    serialize_error,
    to_jsonable,
)
from .._core._status import RunStatus, StepStatus
from .._effects import new_span_id, now_ms
from .._groups import sole_exception, unwrap_groups
from .._workflow import Workflow
from ..storage._protocol import save_changed_steps
from ..tracing import TracingOptions
from ..tracing._spans import Span, current_span
from ._dispatch import DRIVE
from ._host import ExecutionHost, ExecutionHub
from ._level import Level

logger = logging.getLogger("trioflow")

#: The execution the current task belongs to (tasks inherit it from the execution task).
current_execution: contextvars.ContextVar[Execution] = contextvars.ContextVar("trioflow_execution")

_NO_SPAN: contextlib.nullcontext[None] = contextlib.nullcontext()

#: How long an execution's last write may take once the runtime is closing (its final
#: snapshot, or the snapshot of a run the closing interrupted). Before that, a final write
#: is shielded without a deadline: a slow storage delays the result, it does not lose it.
SHIELDED_WRITE_GRACE = 10.0

_S = StepStatus
_NO_USAGE = Usage()
#: The stored statuses of a run while an execution owns it.
_OWNED = (RunStatus.RUNNING, RunStatus.WAITING)


# --- one execution of a run -------------------------------------------------------------


class Execution:
    """One start, resume or restart of a run. Created by the Run, executed as a task in the
    runtime's nursery."""

    def __init__(
        self,
        *,
        runtime: ExecutionHost,
        hub: ExecutionHub,
        workflow: Workflow,
        base: RunSnapshot,
        kind: str,
        input: Any,
        state: Any,
        request_context: RequestContext,
        trace_id: str,
        per_step: bool = False,
        target: ResumeTarget | None = None,
        resume_data: Any = None,
        tracing: TracingOptions | None = None,
        resume_token: str | None = None,
        restarted: bool = False,
    ) -> None:
        self.runtime = runtime
        #: Begun by ``restart()`` (also when it replays the resume a crash interrupted):
        #: its ``workflow-start`` says so (``payload.restart``).
        self.restarted = restarted or kind == "restart"
        self.tracer = runtime.tracer
        self.tracing = tracing if tracing is not None else TracingOptions()
        self.root_span: Span | None = None
        self.hub = hub
        self.log = hub.log
        self.storage = runtime.storage
        self.durable = bool(getattr(runtime.storage, "durable", True))
        self.workflow = workflow
        self.base = base
        self.kind = kind
        self.run_id = base.run_id
        self.resource_id = base.resource_id
        self.request_context = request_context
        self.trace_id = trace_id
        self.span_id = new_span_id()
        self.per_step = per_step
        self.target = target
        self.resume_data = resume_data
        self.emit_step_events = workflow.emit_step_events
        self.input_json = to_jsonable(input)
        self.usage = Usage()
        #: Step records by qualified key; remembers what changed since the last write.
        self.stored = StepJournal(base.steps)
        #: Hands each write the records and path without copying them (see _handout).
        self._handout = Handout()
        self.cancel_requested = False
        #: A step suspended during this execution (it is heading for ``suspended``).
        self.suspended_once = False
        self._progress_writing = False
        self._progress_dirty = False
        self._ending: list[Chunk] = []
        #: Set when the steps are over and the final chunks are being built: a writer kept
        #: past its step then raises, so it cannot take the workflow-finish's seq.
        self.writers_closed = False
        #: Progress records of nested workflows running now, rebuilt at every write.
        self.live_records: dict[str, Callable[[], dict[str, Any]]] = {}
        #: Stored until the resumed entry has finished (see RunSnapshot.resume).
        #: Identifies this resume in the records of the foreach items it reaches, so a replay
        #: after a crash skips the items it had already resumed.
        self.resume_token = resume_token or (secrets.token_hex(6) if target else None)
        self.pending_resume: dict[str, Any] | None = (
            {
                "path": list(target.path),
                "data": to_jsonable(resume_data),
                "foreach_index": target.foreach_index,
                "token": self.resume_token,
            }
            if target is not None
            else None
        )
        self.scope: trio.CancelScope | None = None
        self.done = trio.Event()
        self.result: WorkflowResult | None = None
        self.failure: BaseException | None = None
        self._call_ids = itertools.count(1)
        self._call_prefix = secrets.token_hex(4)
        self.root = Level(
            self,
            workflow,
            drive=DRIVE,
            key_prefix="",
            chunk_prefix="",
            input=input,
            state=state,
            is_root=True,
        )
        if kind != "start":
            self.root.load_header(
                {
                    "suspended_paths": base.suspended_paths,
                    "resume_labels": {
                        k: {"path": v.path, "foreach_index": v.foreach_index}
                        for k, v in base.resume_labels.items()
                    },
                    "execution_path": base.step_execution_path,
                    "active_entry": base.active_entry,
                    "active_input": base.active_input,
                }
            )

    def span(
        self, kind: str, name: str, *name_args: str
    ) -> contextlib.AbstractContextManager[Span | None]:
        """A child span of the current one (nothing at all without a tracer; the name is
        ``name.format(*name_args)``, formatted only when there is one)."""
        if self.tracer is None:
            return _NO_SPAN
        return self._span(kind, name.format(*name_args) if name_args else name)

    @contextlib.contextmanager
    def _span(self, kind: str, name: str) -> Iterator[Span | None]:
        parent = current_span.get(self.root_span)
        span = Span(
            trace_id=self.trace_id,
            span_id=new_span_id(),
            parent_span_id=parent.span_id if parent is not None else None,
            name=name,
            kind=kind,
            started_at=now_ms(),
        )
        self.tracer.span_started(span)
        token = current_span.set(span)
        try:
            yield span
        except trio.Cancelled:
            span.status = "canceled"
            raise
        finally:
            current_span.reset(token)
            span.ended_at = now_ms()
            self.tracer.span_ended(span)

    def _start_root_span(self) -> None:
        options = self.tracing
        metadata: dict[str, Any] = dict(options.metadata or {})
        for key in options.request_context_keys:
            metadata[key] = self.request_context.get_path(key)
        parent = options.parent_span_id
        name = f"workflow run: '{self.workflow.id}'"
        if self.kind != "start":
            metadata["resumed"] = True
            if self.base.span_id:
                metadata["resumed_from_span_id"] = self.base.span_id
            name += " (resumed)" if self.kind == "resume" else " (restarted)"
        self.root_span = Span(
            trace_id=self.trace_id,
            span_id=self.span_id,
            parent_span_id=parent,
            name=name,
            kind="workflow_run",
            started_at=now_ms(),
            metadata=metadata,
            tags=tuple(options.tags),
        )
        self.tracer.span_started(self.root_span)
        current_span.set(self.root_span)

    def _end_root_span(self, status: RunStatus) -> None:
        if self.root_span is not None:
            self.root_span.status = status.value
            self.root_span.ended_at = now_ms()
            self.tracer.span_ended(self.root_span)

    def next_call_id(self) -> str:
        return f"{self._call_prefix}-{next(self._call_ids)}"

    def add_usage(self, usage: Usage) -> None:
        self.usage = self.usage + usage

    def interrupted_resume(self, resume: NodeResume | None) -> bool:
        """Whether the runtime (not a cancel of the run) interrupted a node it was
        resuming: its stored suspended record and path stay as they were, so restart()
        replays the resume as it was (its suspend data, its resume count)."""
        return (
            resume is not None
            and not resume.restarting
            and not self.cancel_requested
            and self.pending_resume is not None
        )

    def request_cancel(self, reason: str) -> None:
        """Cancel this execution (synchronous): its scope is cancelled at once."""
        self.cancel_requested = True
        if self.scope is not None:
            self.scope.cancel(reason=reason)

    def snapshot(
        self,
        status: RunStatus,
        *,
        last_seq: int,
        changed: list[str] | None = None,
        **final: Any,
    ) -> RunSnapshot:
        """The snapshot to write now; ``changed``: the step keys this write names (None:
        every one). Its steps and path are never changed afterwards, and are not copies
        when an earlier write's are free to be brought up to date (see ``_handout``)."""
        root = self.root
        base = self.base
        steps, path = self._handout.take(self.stored, changed, root.execution_path)
        return RunSnapshot(
            run_id=base.run_id,
            workflow_id=base.workflow_id,
            resource_id=base.resource_id,
            status=status,
            input=self.input_json,
            state=to_jsonable(root.state),
            steps=steps,
            suspended_paths={k: list(v) for k, v in root.suspended_paths.items()},
            resume_labels=dict(root.resume_labels),
            request_context=self.request_context.to_dict(),
            trace_id=self.trace_id,
            span_id=self.span_id,
            result=final.get("result", base.result),
            error=final.get("error", base.error),
            tripwire=final.get("tripwire", base.tripwire),
            step_execution_path=path,
            active_entry=root.active_entry,
            active_input=to_jsonable(root.active_input),
            resume=self.pending_resume,
            last_seq=last_seq,
            usage=base.usage + self.usage if self.usage != _NO_USAGE else base.usage,
            created_at=base.created_at,
            updated_at=now_ms(),
        )

    async def persist(
        self,
        status: RunStatus,
        *,
        extra: list[Chunk] | None = None,
        expected: tuple[RunStatus, ...] | None = _OWNED,
        **final: Any,
    ) -> bool:
        """Write the snapshot and every chunk not yet stored, in one storage call.

        The write is a compare-and-set on the statuses an executing run has: when another
        process canceled the run meanwhile, nothing is written, the chunks stay pending,
        this execution's scope is cancelled, and False is returned.
        """
        lock = self.hub.write_lock
        try:
            lock.acquire_nowait()  # the usual case: no flusher writing; the write below
        except trio.WouldBlock:  # is the checkpoint
            await lock.acquire()
        try:
            for key, record in self.live_records.items():
                self.stored[key] = record()
            taken = self.log.take_unflushed()
            events = [*taken, *extra] if extra else taken
            last_seq = events[-1].seq if events else self.log.flushed_through
            changed = self.stored.take_changed()
            try:
                # Building the snapshot can fail too (a value that is not JSON): then
                # nothing was written either.
                snapshot = self.snapshot(status, last_seq=last_seq, changed=changed, **final)
                written = await save_changed_steps(
                    self.storage, snapshot, events, expected_status=expected, changed_steps=changed
                )
            except (Exception, trio.Cancelled):
                # Storage wrote nothing (a cancelled or failed call writes nothing): the
                # chunks are pending again, for the next write.
                self.log.untake(taken)
                self.stored.write_failed()
                raise
            if not written:
                self.log.untake(taken)
                self.stored.write_failed()
            elif taken:
                # Committed: only now may they leave memory (a subscriber behind the
                # window reads them from storage).
                self.log.mark_stored(taken[-1].seq)
        finally:
            lock.release()
        if written:
            self.hub.status = status
        else:
            self.request_cancel("canceled by another process")
            # Inside the run's scope this raises Cancelled now, before another step starts.
            await trio.lowlevel.checkpoint()
        return written

    async def persist_progress(self) -> None:
        """Durable storage only: store what finished inside the running entry (parallel
        branches, foreach iterations) so a crash re-runs only what was running. Concurrent
        callers coalesce: one write in flight, repeated while more progress arrived."""
        if not self.durable:
            return
        if self._progress_writing:
            self._progress_dirty = True
            return
        self._progress_writing = True
        try:
            while True:
                self._progress_dirty = False
                await self.persist(RunStatus.RUNNING)
                if not self._progress_dirty:
                    break
        finally:
            self._progress_writing = False

    def emit_workflow_start(self) -> None:
        log = self.log
        log.publish(
            WorkflowStart(
                run_id=self.run_id,
                seq=log.next_seq,
                payload=WorkflowStartPayload(workflow_id=self.workflow.id, restart=self.restarted),
            )
        )

    async def _flusher(self) -> None:
        """Write chunks out between snapshots when a step floods the log (or a writer
        waits for room: see ``EventLog.wait_for_room``)."""
        while True:
            await self.log.wait_flush_wanted()
            async with self.hub.write_lock:
                events = self.log.take_unflushed()
                if events:
                    try:
                        await self.storage.append_events(self.run_id, events)
                    except (Exception, trio.Cancelled):
                        self.log.untake(events)
                        raise
                    self.log.mark_stored(events[-1].seq)

    async def run(self) -> None:
        """The execution task. Never raises a step's error; on the runtime's own
        cancellation the last snapshot stays ``running`` (restartable)."""
        current_execution.set(self)
        if self.tracer is not None:
            self._start_root_span()
        try:
            with unwrap_groups():
                async with trio.open_nursery() as helpers:
                    helpers.start_soon(self._flusher)
                    try:
                        await self._run()
                    finally:
                        helpers.cancel_scope.cancel(reason="execution ended")
        except trio.Cancelled:
            if self.result is None:
                # Store what finished and every chunk published so far, so a restart()
                # continues where this execution stopped and never reuses a seq.
                with trio.move_on_after(SHIELDED_WRITE_GRACE, shield=True):
                    await self.persist(RunStatus.RUNNING)
            if self.result is None:
                self.failure = RuntimeClosedError(
                    f"the runtime stopped while run {self.run_id} was executing; "
                    "restart() continues it"
                )
            raise
        except Exception as exc:
            self._died(exc)
        except BaseException as exc:
            # KeyboardInterrupt, or a BaseException from storage (a process crash as
            # trioflow.testing simulates it): never leave waiters hanging, never swallow.
            # (User code's BaseExceptions never get here: they are its failures.)
            if self.result is None:
                self.failure = exc
            raise
        finally:
            if self.tracer is not None:
                self._end_root_span(self.result.status if self.result else RunStatus.RUNNING)
            self.hub.execution_ended(self)
            self.done.set()

    def _died(self, exc: BaseException) -> None:
        """Not a step's error (those are results): storage failing, or an engine bug. It
        ends this execution only; the stored run keeps its last snapshot (so it can be
        restarted) and whoever waits for it gets the exception, not the helper nursery's
        group around it."""
        error = sole_exception(exc)
        if isinstance(error, LeaseLostError):
            # Expected after this process stalled past its lease: not a bug.
            logger.warning("run %s: execution stopped: %s", self.run_id, error)
        else:
            logger.error("run %s: execution stopped by %r", self.run_id, error, exc_info=error)
        if self.result is None:
            self.failure = error

    async def _run(self) -> None:
        root = self.root
        outcome: Outcome | None = None
        with trio.CancelScope() as scope:
            self.scope = scope
            if self.cancel_requested:
                scope.cancel(reason="canceled before it started")
            if self.kind == "start":
                outcome = await root.run(0, root.input, None)
            elif self.kind == "resume":
                assert self.target is not None
                start = root.suspended_paths[self.target.path[0]][0]
                outcome = await root.run(start, root.active_input, self.target)
            else:
                start = (
                    root.active_entry
                    if root.active_entry is not None
                    else len(self.workflow.entries)
                )
                outcome = await root.run(start, root.active_input, None, restart=True)
        if self.cancel_requested or outcome is None:
            outcome = Outcome(_S.CANCELED)
        with self.runtime.finishing_scope():
            await self._finish(outcome)

    async def _finish(self, outcome: Outcome) -> None:
        # The finish chunk's seq is computed before the (awaited) final write and published
        # after it: a write through a kept writer in between would take that seq.
        self.writers_closed = True
        if not await self._store_end(outcome, expected=_OWNED):
            # Another process canceled the run while it executed here.
            self.cancel_requested = True
            outcome = Outcome(_S.CANCELED)
            await self._store_end(outcome, expected=None)
        root = self.root
        status = run_status(outcome)
        error = outcome.error
        steps = {k: public_step_result(v) for k, v in root.results.items()}
        self.result = WorkflowResult(
            status=status,
            result=outcome.output if status is RunStatus.SUCCESS else None,
            error=error if status in (RunStatus.FAILED, RunStatus.TRIPWIRE) else None,
            steps=steps,
            all_steps=AllSteps(steps, self.stored),
            input=root.input,
            state=root.state,
            suspended=root.full_suspended_paths() if status is RunStatus.SUSPENDED else [],
            suspend_payload=root.suspend_payloads() if status is RunStatus.SUSPENDED else {},
            tripwire=outcome.tripwire,
            run_id=self.run_id,
            trace_id=self.trace_id,
            step_execution_path=list(root.execution_path),
        )
        for chunk in self._ending:
            # Stored with the final snapshot: published only now, so a subscriber that sees
            # the finish chunk can rely on the stored state.
            self.log.publish_stored(chunk)
        await self.runtime.run_callbacks(self.workflow, self.result)

    async def _store_end(self, outcome: Outcome, *, expected: tuple[RunStatus, ...] | None) -> bool:
        """Write the final snapshot with the execution's last chunks (canceled/paused, and
        workflow-finish). They are published by the caller once stored."""
        root = self.root
        log = self.log
        status = run_status(outcome)
        seq = log.next_seq
        ending: list[Chunk] = []
        if status is RunStatus.CANCELED:
            ending.append(WorkflowCanceled(run_id=self.run_id, seq=seq))
        elif status is RunStatus.PAUSED:
            ending.append(WorkflowPaused(run_id=self.run_id, seq=seq))
        error = outcome.error
        metadata: dict[str, Any] = {}
        if error is not None and status in (RunStatus.FAILED, RunStatus.TRIPWIRE):
            ser = serialize_error(error)
            metadata = {"error": {"message": ser.message, "name": ser.name}}
        ending.append(
            WorkflowFinish(
                run_id=self.run_id,
                seq=seq + len(ending),
                payload=WorkflowFinishPayload(
                    workflow_status=status.value,
                    usage=self.usage,
                    metadata=metadata,
                    tripwire=outcome.tripwire,
                    final_workflow_result=to_jsonable(outcome.output)
                    if status is RunStatus.SUCCESS
                    else None,
                ),
            )
        )
        final: dict[str, Any] = {}
        if status is RunStatus.SUCCESS:
            final["result"] = to_jsonable(outcome.output)
            root.active_entry = None
        if status in (RunStatus.FAILED, RunStatus.TRIPWIRE) and error is not None:
            final["error"] = serialize_error(error)
        if outcome.tripwire is not None:
            final["tripwire"] = outcome.tripwire
        if status is RunStatus.CANCELED:
            root.suspended_paths.clear()
        self._ending = ending
        return await self.persist(status, extra=ending, expected=expected, **final)


