"""The trio layer: executes a workflow graph, level by level, inside a run's cancel scope.

One :class:`Execution` is one start, resume or restart of a run. It owns the run's cancel
scope (cancelling it *is* the ``canceled`` status), emits chunks into the run's log, and
writes a snapshot after every top-level entry through its :class:`~trioflow._persist.RunWriter`,
so the stored run is at most one entry behind. Where it starts, what it does between
entries and how it ends are the run planner's answers (``_core/_plan/_run.py``). When the
runtime (not a cancel of the run) stops it, the steps it interrupts are not settled: their
records say ``running`` and restart() runs them again. A :class:`Level` executes one workflow graph: the top-level workflow, or a nested
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
    WorkflowStart,
    WorkflowStartPayload,
)
from .._core._errors import (
    LeaseLostError,
    RuntimeClosedError,
)
from .._core._journal import StepJournal
from .._core._model import (
    RunSnapshot,
    Usage,
    WorkflowResult,
)
from .._core._plan._node import interrupted_resume
from .._core._plan._run import (
    ending_chunks,
    final_fields,
    final_status,
    start_at,
    workflow_result,
)
from .._core._plan._values import (
    NodeResume,
    Outcome,
)
from .._core._resume import ResumeTarget
from .._core._serde import to_jsonable
from .._core._status import RunStatus
from .._effects import new_span_id, now_ms
from .._groups import sole_exception, unwrap_groups
from .._persist import OWNED, RunWriter
from .._workflow import WorkflowGraph
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



# --- one execution of a run -------------------------------------------------------------


class Execution:
    """One start, resume or restart of a run. Created by the Run, executed as a task in the
    runtime's nursery."""

    def __init__(
        self,
        *,
        runtime: ExecutionHost,
        hub: ExecutionHub,
        workflow: WorkflowGraph,
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
        self.cancel_requested = False
        #: The runtime's cancellation reached this execution (see ``interrupted``).
        self.runtime_stopped = False
        self._steps_over = False
        #: A step suspended during this execution (it is heading for ``suspended``).
        self.suspended_once = False
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
        self.writer = RunWriter(
            source=self,
            storage=self.storage,
            hub=hub,
            journal=self.stored,
            live_records=self.live_records,
            durable=self.durable,
        )
        # The writer's own methods, bound once: the modules of each kind of entry call
        # ``execution.persist(...)`` and ``execution.persist_progress()``.
        self.persist = self.writer.persist
        self.persist_progress = self.writer.persist_progress

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

    @property
    def interrupted(self) -> bool:
        """The runtime (not a cancel of the run) interrupted this execution: the steps it
        interrupts are not settled (their records stay running; restart runs them). A
        cancel() asked before then wins: the user's cancel is never lost to a stop that
        came in the same instant."""
        return self.runtime_stopped and not self.cancel_requested

    def interrupted_resume(self, resume: NodeResume | None) -> bool:
        """Whether the runtime (not a cancel of the run) interrupted a node it was
        resuming: its stored suspended record and path stay as they were, so restart()
        replays the resume as it was (its suspend data, its resume count)."""
        return interrupted_resume(
            resume, cancel_requested=self.cancel_requested, pending_resume=self.pending_resume
        )

    def request_cancel(self, reason: str) -> None:
        """Cancel this execution (synchronous): its scope is cancelled at once."""
        self.cancel_requested = True
        if self.scope is not None:
            self.scope.cancel(reason=reason)

    def emit_workflow_start(self) -> None:
        log = self.log
        log.publish(
            WorkflowStart(
                run_id=self.run_id,
                seq=log.next_seq,
                payload=WorkflowStartPayload(workflow_id=self.workflow.id, restart=self.restarted),
            )
        )

    # Every way out passes the helper nursery's exit, a checkpoint (an error raised inside
    # ``async with`` goes through it too): the checker cannot see that of the except paths.
    async def run(self) -> None:  # noqa: ASYNC910
        """The execution task. Never raises a step's error; on the runtime's own
        cancellation the last snapshot stays ``running`` (restartable)."""
        current_execution.set(self)
        if self.tracer is not None:
            self._start_root_span()
        try:
            with unwrap_groups():
                async with trio.open_nursery() as helpers:
                    # The steps run shielded from the runtime's cancellation until the
                    # helper has seen it and said so (``interrupted``): then the steps it
                    # reaches know the runtime, not a cancel of the run, stopped them.
                    guard = trio.CancelScope(shield=True)
                    helpers.start_soon(self._helper, guard)
                    try:
                        with guard:
                            await self._run()
                    finally:
                        self._steps_over = True
                        helpers.cancel_scope.cancel(reason="execution ended")
        except trio.Cancelled:
            if self.result is None:
                with trio.move_on_after(SHIELDED_WRITE_GRACE, shield=True):
                    await self._store_interrupted()
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

    async def _helper(self, guard: trio.CancelScope) -> None:
        """The flusher; its cancellation while the steps still run is the runtime's (the
        execution cancels it only once they are over), and its failure is the storage's:
        either way nobody cancelled the run, so the steps it interrupts stay unsettled
        (``interrupted``). Then it lifts the guard."""
        try:
            await self.writer.flush_forever()
        except BaseException:
            if not self._steps_over:
                self.runtime_stopped = True
            raise
        finally:
            guard.shield = False

    async def _store_interrupted(self) -> None:
        """The runtime stopped this execution before its end was stored. Normally: store
        what finished and every chunk published so far, so a restart() continues where it
        stopped and never reuses a seq. A cancel() asked before the stop (its steps were
        settled ``canceled``) is finished as such instead: the run ends ``canceled``."""
        if self.cancel_requested and not self.writers_closed:
            await self._finish(None)
        else:
            await self.persist(RunStatus.RUNNING)

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
        start = start_at(
            self.kind,
            entries=len(self.workflow.entries),
            input=root.input,
            target=self.target,
            suspended_paths=root.suspended_paths,
            active_entry=root.active_entry,
            active_input=root.active_input,
        )
        with trio.CancelScope() as scope:
            self.scope = scope
            if self.cancel_requested:
                scope.cancel(reason="canceled before it started")
            outcome = await root.run(start.index, start.value, start.target, restart=start.restart)
        with self.runtime.finishing_scope():
            await self._finish(outcome)

    async def _finish(self, outcome: Outcome | None) -> None:
        # The finish chunk's seq is computed before the (awaited) final write and published
        # after it: a write through a kept writer in between would take that seq.
        self.writers_closed = True
        final, status = final_status(outcome, canceled=self.cancel_requested)
        if not await self._store_end(final, status, expected=OWNED):
            # Another process canceled the run while it executed here.
            self.cancel_requested = True
            final, status = final_status(final, canceled=True)
            await self._store_end(final, status, expected=None)
        self.result = workflow_result(
            self.root, status, final, run_id=self.run_id, trace_id=self.trace_id
        )
        for chunk in self._ending:
            # Stored with the final snapshot: published only now, so a subscriber that sees
            # the finish chunk can rely on the stored state.
            self.log.publish_stored(chunk)
        await self.runtime.run_callbacks(self.workflow, self.result)

    async def _store_end(
        self, outcome: Outcome, status: RunStatus, *, expected: tuple[RunStatus, ...] | None
    ) -> bool:
        """Write the final snapshot with the execution's last chunks (canceled/paused, and
        workflow-finish). They are published by the caller once stored."""
        self._ending = ending_chunks(self.run_id, self.log.next_seq, status, outcome, self.usage)
        fields = final_fields(status, outcome)
        if fields.clear_active_entry:
            self.root.active_entry = None
        if fields.clear_suspended:
            self.root.suspended_paths.clear()
        return await self.persist(status, extra=self._ending, expected=expected, **fields.final)
