"""Run: the user-facing handle of one run (its streams are in _output and _legacy).

Run never imports the runtime that creates it: what it uses of it is :class:`RunHost`."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping
from typing import Any, Protocol

import attrs
import trio

from ._admit import (
    Admitted,
    StartInfo,
    admit_resume,
    admit_start,
    deprecated_context,
    initial_state,
    interrupted_resume,
    normalize_step,
)
from ._broadcast import Subscription, ends_at_terminal_finish
from ._cancel import cancel_stored
from ._context import RequestContext, coerce_request_context
from ._core._errors import (
    NotSuspendedError,
    ResumeAlreadyClaimedError,
    RunAlreadyStartedError,
    RunNotActiveError,
    SnapshotNotFoundError,
)
from ._core._model import RunSnapshot, WorkflowResult
from ._core._resume import (
    ResumeTarget,
    executing_a_resume,
)
from ._core._serde import structure, to_stored_json
from ._core._status import TERMINAL, RunStatus
from ._driver._execution import Execution, current_execution
from ._driver._host import ExecutionHost
from ._effects import call_maybe_async, new_trace_id, now_ms
from ._hub import RunHub, result_from_snapshot
from ._legacy import LegacyEvent as LegacyEvent
from ._legacy import LegacyRunOutput as LegacyRunOutput
from ._output import RunOutput as RunOutput
from ._output import wait_for as _wait
from ._workflow import WorkflowGraph
from .storage import Storage
from .storage._protocol import QueueStorage, save_changed_steps
from .tracing import (
    Span,
    TracingOptions,
    coerce_tracing_context,
    coerce_tracing_options,
    with_parent_span,
)


class RunHost(Protocol):
    """What a Run uses of the runtime that made it (the Runtime), declared here so that
    this module never imports the layer above it."""

    @property
    def storage(self) -> Storage: ...

    @property
    def _execution_host(self) -> ExecutionHost:
        """What the run's executions use of the runtime."""
        ...

    def _spawn(self, execution: Execution) -> None:
        """Run ``execution`` in the runtime's nursery."""
        ...


#: bridge/_checks.py imports this name (admit_start does all of a start's checks).
_initial_state = initial_state


class Run:
    """One run of a workflow: start it, stream it, resume it, cancel it, restart it.

    Awaiting ``start``/``resume``/``restart`` waits for the execution to end; cancelling
    that wait does **not** cancel the run (it belongs to the runtime): use ``cancel()``.
    """

    def __init__(
        self, runtime: RunHost, workflow: WorkflowGraph, hub: RunHub, snapshot: RunSnapshot
    ) -> None:
        self._runtime = runtime
        self._workflow = workflow
        self._hub = hub
        self.run_id = snapshot.run_id
        self.resource_id = snapshot.resource_id
        self._snapshot = snapshot  # as stored when this Run was bound
        self._claimed = snapshot.status is not RunStatus.PENDING

    def __repr__(self) -> str:
        return f"<Run {self.run_id} of {self._workflow.id!r} ({self.status.value})>"

    @property
    def workflow_id(self) -> str:
        return self._workflow.id

    @property
    def status(self) -> RunStatus:
        """The run's status as this process knows it."""
        return self._hub.status

    @property
    def last_seq(self) -> int:
        """The seq of the newest chunk in this process's log of the run (0 before the
        first)."""
        return self._hub.log.next_seq - 1

    # --- start ------------------------------------------------------------------------------

    def _startable(self, input_data: Any, initial_state: Any, request_context: Any) -> Admitted:
        """The validated input, initial state and request context of a start, with what
        is stored for each; RunAlreadyStartedError when this run was started (or queued)
        already, ValidationError for bad values (not strict JSON included)."""
        if self._claimed or self._hub.execution is not None:
            raise RunAlreadyStartedError(f"run {self.run_id} already started")
        return admit_start(self._workflow, input_data, initial_state, request_context)

    async def _begin_start(
        self,
        *,
        input_data: Any,
        initial_state: Any,
        request_context: RequestContext | Mapping[str, Any] | None,
        tracing_options: TracingOptions | Mapping[str, Any] | None,
        per_step: bool,
        tracing_context: Span | Mapping[str, Any] | None = None,
    ) -> Execution:
        wf = self._workflow
        admitted = self._startable(input_data, initial_state, request_context)
        input_value, state, context = admitted.input, admitted.state, admitted.context
        tracing = with_parent_span(
            coerce_tracing_options(tracing_options), coerce_tracing_context(tracing_context)
        )
        self._claimed = True
        try:
            if wf.on_start is not None:
                info = StartInfo(
                    run_id=self.run_id,
                    workflow_id=wf.id,
                    resource_id=self.resource_id,
                    input_data=input_value,
                    state=state,
                    request_context=context,
                )
                await call_maybe_async(wf.on_start, info)
            # Claim from the snapshot this Run was bound with (a pending run has nothing
            # else in it); the compare-and-set tells whether it is still pending.
            snapshot = self._snapshot
            trace_id = tracing.trace_id or new_trace_id()
            claimed = attrs.evolve(
                snapshot,
                status=RunStatus.RUNNING,
                input=admitted.input_json,
                state=admitted.state_json,
                # on_start may have changed the context: store what it holds now.
                request_context=to_stored_json(dict(context), "Invalid request context:"),
                trace_id=trace_id,
                active_entry=0,
                active_input=admitted.input_json,
                updated_at=now_ms(),
            )
            # A claim changes no step record: changed_steps=() (the same below).
            if not await save_changed_steps(
                self._runtime.storage,
                claimed,
                (),
                expected_status=RunStatus.PENDING,
                changed_steps=(),
            ):
                if await self._runtime.storage.load_snapshot(self.run_id) is None:
                    raise SnapshotNotFoundError(wf.id, self.run_id)
                raise RunAlreadyStartedError(f"run {self.run_id} already started")
        except BaseException:
            self._claimed = False
            raise
        execution = Execution(
            runtime=self._runtime._execution_host,
            hub=self._hub,
            workflow=wf,
            base=claimed,
            kind="start",
            input=input_value,
            state=state,
            request_context=context,
            trace_id=trace_id,
            per_step=per_step,
            tracing=tracing,
        )
        execution.emit_workflow_start()
        self._runtime._spawn(execution)
        return execution

    async def start(
        self,
        *,
        input_data: Any = None,
        initial_state: Any = None,
        request_context: RequestContext | Mapping[str, Any] | None = None,
        tracing_options: TracingOptions | Mapping[str, Any] | None = None,
        tracing_context: Span | Mapping[str, Any] | None = None,
        per_step: bool = False,
        runtime_context: Any = None,
    ) -> WorkflowResult:
        """Start the run and wait until it suspends or ends.

        Raises ValidationError (bad input/state), RunAlreadyStartedError, or what
        ``on_start`` raised — all before anything runs. A step's failure is not raised: it
        is the result's ``error``.

        ``tracing_context`` (here and in stream/resume methods) is the span the run's root
        span becomes a child of, in its trace: a :class:`trioflow.tracing.Span` such as a
        step's ``ctx.tracing_context``, or Mastra's ``{"currentSpan": span}``. TypeError
        for anything else, ValueError when ``tracing_options`` names another trace; both
        before anything runs.
        """
        execution = await self._begin_start(
            input_data=input_data,
            initial_state=initial_state,
            request_context=deprecated_context(request_context, runtime_context),
            tracing_options=tracing_options,
            tracing_context=tracing_context,
            per_step=per_step,
        )
        return await _wait(execution)

    async def start_async(
        self,
        *,
        input_data: Any = None,
        initial_state: Any = None,
        request_context: RequestContext | Mapping[str, Any] | None = None,
    ) -> None:
        """Queue the run for any worker (``open_runtime(worker=True)`` on the same
        storage, in this process or another) and return at once. Input and state are
        validated now (ValidationError); the worker calls ``on_start`` when it starts the
        run. Needs a storage with a queue (:class:`trioflow.PostgresStorage`): TypeError
        otherwise. RunAlreadyStartedError when the run is not pending (or already queued).
        """
        storage = self._runtime.storage
        if not isinstance(storage, QueueStorage):
            raise TypeError(
                f"{type(self._runtime.storage).__name__} has no run queue: start_async() "
                "needs a storage that workers share, such as PostgresStorage"
            )
        admitted = self._startable(input_data, initial_state, request_context)
        queued = attrs.evolve(
            self._snapshot,
            input=admitted.input_json,
            state=admitted.state_json,
            request_context=admitted.context_json,
            updated_at=now_ms(),
        )
        if not await storage.enqueue_run(queued):
            raise RunAlreadyStartedError(f"run {self.run_id} already started or queued")
        self._claimed = True

    async def stream(
        self,
        *,
        input_data: Any = None,
        initial_state: Any = None,
        request_context: RequestContext | Mapping[str, Any] | None = None,
        tracing_options: TracingOptions | Mapping[str, Any] | None = None,
        tracing_context: Span | Mapping[str, Any] | None = None,
        per_step: bool = False,
        close_on_suspend: bool = True,
        runtime_context: Any = None,
    ) -> RunOutput:
        """Start the run and return its :class:`RunOutput` at once; the run progresses
        whether or not anyone reads."""
        execution = await self._begin_start(
            input_data=input_data,
            initial_state=initial_state,
            request_context=deprecated_context(request_context, runtime_context),
            tracing_options=tracing_options,
            tracing_context=tracing_context,
            per_step=per_step,
        )
        return RunOutput(self._hub, self.workflow_id, execution, close_on_suspend=close_on_suspend)

    async def stream_vnext(self, **kwargs: Any) -> RunOutput:
        """Deprecated alias of :meth:`stream`."""
        warnings.warn(
            "stream_vnext() is deprecated; use stream()", DeprecationWarning, stacklevel=2
        )
        return await self.stream(**kwargs)

    async def stream_legacy(
        self,
        *,
        input_data: Any = None,
        initial_state: Any = None,
        request_context: RequestContext | Mapping[str, Any] | None = None,
        tracing_options: TracingOptions | Mapping[str, Any] | None = None,
        tracing_context: Span | Mapping[str, Any] | None = None,
        runtime_context: Any = None,
    ) -> LegacyRunOutput:
        """Start the run with the v0 event format (see :class:`LegacyRunOutput`)."""
        execution = await self._begin_start(
            input_data=input_data,
            initial_state=initial_state,
            request_context=deprecated_context(request_context, runtime_context),
            tracing_options=tracing_options,
            tracing_context=tracing_context,
            per_step=False,
        )
        return LegacyRunOutput(RunOutput(self._hub, self.workflow_id, execution, close_on_suspend=False))

    # --- resume -------------------------------------------------------------------------------

    async def _begin_resume(
        self,
        *,
        resume_data: Any,
        step: Any,
        label: str | None,
        for_each_index: int | None,
        request_context: RequestContext | Mapping[str, Any] | None,
        tracing_options: TracingOptions | Mapping[str, Any] | None,
        tracing_context: Span | Mapping[str, Any] | None = None,
    ) -> Execution:
        wf = self._workflow
        wf.check_graph()
        storage = self._runtime.storage
        path = normalize_step(step)
        if for_each_index is not None and (
            isinstance(for_each_index, bool)
            or not isinstance(for_each_index, int)
            or for_each_index < 0
        ):
            raise ValueError(f"for_each_index must be an int >= 0, got {for_each_index!r}")
        caller_context = coerce_request_context(request_context)
        tracing = with_parent_span(
            coerce_tracing_options(tracing_options), coerce_tracing_context(tracing_context)
        )
        running = self._hub.execution
        if running is not None:
            if not running.suspended_once:
                if running.kind == "resume":
                    raise ResumeAlreadyClaimedError(self.run_id)
                raise NotSuspendedError()
            # A step of the execution running here suspended (a reader saw its chunk):
            # the suspension is resumable once that execution has stored it.
            await running.done.wait()
        snapshot = await storage.load_snapshot(self.run_id)
        if snapshot is None:
            raise SnapshotNotFoundError(wf.id, self.run_id)
        if snapshot.status is not RunStatus.SUSPENDED:
            if executing_a_resume(snapshot):
                raise ResumeAlreadyClaimedError(self.run_id)
            raise NotSuspendedError()
        trace_id = tracing.trace_id or snapshot.trace_id or new_trace_id()
        resumed = admit_resume(
            wf,
            snapshot,
            resume_data,
            path=path,
            label=label,
            for_each_index=for_each_index,
            caller_context=caller_context,
            trace_id=trace_id,
            now=now_ms(),
        )
        target, data, context, claimed = (
            resumed.target,
            resumed.data,
            resumed.context,
            resumed.claimed,
        )
        if not await save_changed_steps(
            storage, claimed, (), expected_status=RunStatus.SUSPENDED, changed_steps=()
        ):
            current = await storage.load_snapshot(self.run_id)
            if current is not None and current.status in (RunStatus.RUNNING, RunStatus.WAITING):
                raise ResumeAlreadyClaimedError(self.run_id)
            if current is None:
                raise SnapshotNotFoundError(wf.id, self.run_id)
            raise NotSuspendedError()
        return self._spawn_continuation(claimed, "resume", context, trace_id, target, data, tracing)

    def _spawn_continuation(
        self,
        claimed: RunSnapshot,
        kind: str,
        context: RequestContext,
        trace_id: str,
        target: ResumeTarget | None,
        data: Any,
        tracing: TracingOptions | None = None,
        *,
        token: str | None = None,
        restarted: bool = False,
    ) -> Execution:
        wf = self._workflow
        input_value = claimed.input
        if wf.validate_inputs and wf.input_schema is not None:
            try:
                input_value = structure(claimed.input, wf.input_schema)
            except Exception:
                input_value = claimed.input
        state: Any = claimed.state if claimed.state is not None else {}
        if wf.state_schema is not None:
            # A stored state that no longer fits the schema is handed over as stored.
            with contextlib.suppress(Exception):
                state = structure(state, wf.state_schema)
        execution = Execution(
            runtime=self._runtime._execution_host,
            hub=self._hub,
            workflow=wf,
            base=claimed,
            kind=kind,
            input=input_value,
            state=state,
            request_context=context,
            trace_id=trace_id,
            target=target,
            resume_data=data,
            tracing=tracing,
            resume_token=token,
            restarted=restarted,
        )
        self._claimed = True
        execution.emit_workflow_start()
        self._runtime._spawn(execution)
        return execution

    async def resume(
        self,
        *,
        resume_data: Any = None,
        step: Any = None,
        label: str | None = None,
        for_each_index: int | None = None,
        request_context: RequestContext | Mapping[str, Any] | None = None,
        tracing_options: TracingOptions | Mapping[str, Any] | None = None,
        tracing_context: Span | Mapping[str, Any] | None = None,
        runtime_context: Any = None,
    ) -> WorkflowResult:
        """Resume a suspended step and wait until the run suspends again or ends.

        The target is ``step`` (a Step, Workflow, id, dotted id or list), ``label``, or the
        single suspended path. Every error (NotSuspendedError, StepNotSuspendedError,
        MultipleSuspendedStepsError, ValidationError, ResumeAlreadyClaimedError,
        SnapshotNotFoundError) is raised before anything runs or is stored.
        """
        execution = await self._begin_resume(
            resume_data=resume_data,
            step=step,
            label=label,
            for_each_index=for_each_index,
            request_context=deprecated_context(request_context, runtime_context),
            tracing_options=tracing_options,
            tracing_context=tracing_context,
        )
        return await _wait(execution)

    async def resume_stream(
        self,
        *,
        resume_data: Any = None,
        step: Any = None,
        label: str | None = None,
        for_each_index: int | None = None,
        request_context: RequestContext | Mapping[str, Any] | None = None,
        tracing_options: TracingOptions | Mapping[str, Any] | None = None,
        tracing_context: Span | Mapping[str, Any] | None = None,
        runtime_context: Any = None,
    ) -> RunOutput:
        """Like :meth:`resume`, returning a new :class:`RunOutput` for the resumed
        execution (it closes when that execution suspends again or ends)."""
        execution = await self._begin_resume(
            resume_data=resume_data,
            step=step,
            label=label,
            for_each_index=for_each_index,
            request_context=deprecated_context(request_context, runtime_context),
            tracing_options=tracing_options,
            tracing_context=tracing_context,
        )
        return RunOutput(self._hub, self.workflow_id, execution, close_on_suspend=True)

    async def resume_stream_vnext(self, **kwargs: Any) -> RunOutput:
        """Deprecated alias of :meth:`resume_stream`."""
        warnings.warn(
            "resume_stream_vnext() is deprecated; use resume_stream()",
            DeprecationWarning,
            stacklevel=2,
        )
        return await self.resume_stream(**kwargs)

    # --- cancel / restart -------------------------------------------------------------------

    async def cancel(self) -> None:
        """Cancel the run.

        While it executes in this process, its cancel scope is cancelled: a step blocked in
        ``await trio.sleep(60)`` ends at once, and this call returns once the ``canceled``
        snapshot is written. A suspended (or pending) run is stored ``canceled``. A finished
        run is left unchanged.
        """
        hub = self._hub
        execution = hub.execution
        if execution is not None:
            execution.request_cancel("run.cancel()")
            if _inside(execution):
                # Called from a step of this very run: it is cancelled at its next
                # checkpoint, which this is.
                await trio.lowlevel.checkpoint()
                return
            await execution.done.wait()
            return
        await cancel_stored(self._runtime.storage, hub)

    async def _begin_restart(self) -> Execution | WorkflowResult:
        self._workflow.check_graph()
        storage = self._runtime.storage
        snapshot = await storage.load_snapshot(self.run_id)
        if snapshot is None:
            raise RunNotActiveError()
        if snapshot.status in (RunStatus.SUCCESS, RunStatus.FAILED, RunStatus.TRIPWIRE):
            return result_from_snapshot(snapshot)
        if snapshot.status not in (RunStatus.RUNNING, RunStatus.WAITING, RunStatus.PAUSED):
            raise RunNotActiveError()
        if self._hub.execution is not None:
            raise RunAlreadyStartedError(f"run {self.run_id} is executing in this process")
        claimed = attrs.evolve(snapshot, status=RunStatus.RUNNING, updated_at=now_ms())
        if not await save_changed_steps(
            storage, claimed, (), expected_status=snapshot.status, changed_steps=()
        ):
            raise RunNotActiveError()
        context = RequestContext(snapshot.request_context)
        trace_id = snapshot.trace_id or new_trace_id()
        await self._hub.log.sync_with_storage()
        if snapshot.resume is not None:
            # The process died while executing a resume: continue that resume.
            target, data = interrupted_resume(self._workflow, snapshot.resume)
            return self._spawn_continuation(
                claimed,
                "resume",
                context,
                trace_id,
                target,
                data,
                token=snapshot.resume.get("token"),
                restarted=True,
            )
        return self._spawn_continuation(claimed, "restart", context, trace_id, None, None)

    async def restart(self) -> WorkflowResult:
        """Continue a run whose execution died while ``running``/``waiting`` (or that
        ``per_step`` paused): steps that finished are not run again. A finished run's
        stored result is returned without executing; RunNotActiveError otherwise."""
        started = await self._begin_restart()
        if isinstance(started, WorkflowResult):
            return started
        return await _wait(started)

    # --- observing ----------------------------------------------------------------------------

    def observe_stream(self, *, from_seq: int = 1, follow: bool = True) -> Subscription:
        """The run's whole event log from ``from_seq``, then live.

        With ``follow=True`` it keeps following through suspensions until a terminal
        ``workflow-finish``; with ``follow=False`` it ends at the current end of the log.

        Following ends with an error instead of waiting for ever when this process's
        execution of the run dies without its ``workflow-finish`` (storage failing, an
        engine error) and none runs here now: once every chunk published here is read,
        iteration raises that execution's error (:class:`RuntimeClosedError` when it has
        none), as the :class:`RunOutput` of that execution does. Its unstored chunks never
        come; after a ``restart()`` a new subscription follows the run again.
        """
        hub = self._hub
        if hub.status in TERMINAL and hub.execution is None and from_seq >= hub.log.next_seq:
            # Past the end of a finished run: nothing will ever come.
            follow = False
        return Subscription(
            hub.log,
            from_seq=from_seq,
            ends_after=ends_at_terminal_finish,
            follow=follow,
            abandoned=hub.died_here,
        )


def _inside(execution: Execution) -> bool:
    """Whether the current task runs inside ``execution`` (a step calling run.cancel())."""
    return current_execution.get(None) is execution
