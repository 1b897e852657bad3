"""Run, RunOutput and LegacyRunOutput: the user-facing handles of a run."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ._admit import Admitted, admit_start, initial_state, node_at, normalize_step
from ._broadcast import Subscription, ends_at_any_finish, ends_at_terminal_finish
from ._context import RequestContext, coerce_request_context
from ._core._chunks import (
    Chunk,
    WorkflowCanceled,
    WorkflowFinish,
    WorkflowFinishPayload,
    WorkflowStart,
    WorkflowStepOutput,
    WorkflowStepResult,
    WorkflowStepStart,
    WorkflowStepSuspended,
    WorkflowStepWaiting,
)
from ._core._errors import (
    NotSuspendedError,
    ResumeAlreadyClaimedError,
    RunAlreadyStartedError,
    RunNotActiveError,
    RuntimeClosedError,
    SnapshotNotFoundError,
)
from ._core._model import RunSnapshot, Usage, WorkflowResult
from ._core._resume import (
    ResumeTarget,
    check_foreach_index,
    executing_a_resume,
    resolve_target,
)
from ._core._serde import structure, to_stored_json, to_wire, validate
from ._core._status import TERMINAL, RunStatus
from ._driver._execution import Execution, current_execution
from ._effects import call_maybe_async, new_trace_id, now_ms
from ._workflow import Workflow
from .storage._protocol import QueueStorage, save_changed_steps
from .tracing import (
    Span,
    TracingOptions,
    coerce_tracing_context,
    coerce_tracing_options,
    with_parent_span,
)

if TYPE_CHECKING:
    from ._runtime import RunHub, Runtime


@attrs.frozen(kw_only=True)
class StartInfo:
    """What ``on_start`` receives."""

    run_id: str
    workflow_id: str
    resource_id: str | None
    input_data: Any
    state: Any
    request_context: RequestContext

    def get_init_data(self) -> Any:
        return self.input_data


def _deprecated_context(
    request_context: Any, runtime_context: Any
) -> RequestContext | Mapping[str, Any] | None:
    if runtime_context is not None:
        warnings.warn(
            "runtime_context= is deprecated; use request_context=", DeprecationWarning, stacklevel=3
        )
        if request_context is None:
            return runtime_context  # type: ignore[no-any-return]
    return request_context  # type: ignore[no-any-return]


#: bridge/_checks.py imports this name (admit_start does all of a start's checks).
_initial_state = initial_state


class Run:
    """One run of a workflow: start it, stream it, resume it, cancel it, restart it.

    Awaiting ``start``/``resume``/``restart`` waits for the execution to end; cancelling
    that wait does **not** cancel the run (it belongs to the runtime): use ``cancel()``.
    """

    def __init__(self, runtime: Runtime, workflow: Workflow, hub: RunHub, snapshot: RunSnapshot):
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
            runtime=self._runtime,
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
        self._runtime.spawn(execution)
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
            request_context=_deprecated_context(request_context, runtime_context),
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
            request_context=_deprecated_context(request_context, runtime_context),
            tracing_options=tracing_options,
            tracing_context=tracing_context,
            per_step=per_step,
        )
        return RunOutput(self, execution, close_on_suspend=close_on_suspend)

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
            request_context=_deprecated_context(request_context, runtime_context),
            tracing_options=tracing_options,
            tracing_context=tracing_context,
            per_step=False,
        )
        return LegacyRunOutput(RunOutput(self, execution, close_on_suspend=False))

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
        target = resolve_target(
            step=path,
            label=label,
            for_each_index=for_each_index,
            suspended_paths=snapshot.suspended_paths,
            steps=snapshot.steps,
            resume_labels=snapshot.resume_labels,
        )
        check_foreach_index(target, snapshot.steps)
        node = node_at(wf, target.path)
        data = resume_data
        schema = getattr(node, "resume_schema", None)
        if schema is not None and wf.validate_inputs:
            data = validate(resume_data, schema, "Invalid resume data:")
        data_json = to_stored_json(data, "Invalid resume data:")
        context = RequestContext({**snapshot.request_context, **caller_context})
        to_stored_json(dict(context), "Invalid request context:")
        trace_id = tracing.trace_id or snapshot.trace_id or new_trace_id()
        claimed = attrs.evolve(
            snapshot,
            status=RunStatus.RUNNING,
            request_context=context.to_dict(),
            trace_id=trace_id,
            resume={
                "path": list(target.path),
                "data": data_json,
                "foreach_index": target.foreach_index,
            },
            updated_at=now_ms(),
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
            runtime=self._runtime,
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
        self._runtime.spawn(execution)
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
            request_context=_deprecated_context(request_context, runtime_context),
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
            request_context=_deprecated_context(request_context, runtime_context),
            tracing_options=tracing_options,
            tracing_context=tracing_context,
        )
        return RunOutput(self, execution, close_on_suspend=True)

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
        storage = self._runtime.storage
        for _ in range(10):
            snapshot = await storage.load_snapshot(self.run_id)
            if snapshot is None or snapshot.status in TERMINAL:
                return
            if hub.execution is not None:
                hub.execution.request_cancel("run.cancel()")
                await hub.execution.done.wait()
                return
            if snapshot.status in (RunStatus.RUNNING, RunStatus.WAITING):
                # Executing in another process (or dead): that process owns the log. Store
                # the cancel; its next write sees it and it ends the run canceled itself.
                canceled_here = attrs.evolve(
                    snapshot, status=RunStatus.CANCELED, updated_at=now_ms()
                )
                # Steps are left as stored: the owner may have stored more since the load.
                if await save_changed_steps(
                    storage,
                    canceled_here,
                    (),
                    expected_status=snapshot.status,
                    changed_steps=(),
                ):
                    hub.status = RunStatus.CANCELED
                    return
                continue
            async with hub.write_lock:
                log = hub.log
                await log.sync_with_storage()
                events: list[Chunk] = log.take_unflushed()
                canceled = WorkflowCanceled(run_id=self.run_id, seq=log.next_seq)
                finish = WorkflowFinish(
                    run_id=self.run_id,
                    seq=log.next_seq + 1,
                    payload=WorkflowFinishPayload(workflow_status=RunStatus.CANCELED.value),
                )
                updated = attrs.evolve(
                    snapshot,
                    status=RunStatus.CANCELED,
                    suspended_paths={},
                    last_seq=finish.seq,
                    updated_at=now_ms(),
                )
                ok = await save_changed_steps(
                    storage,
                    updated,
                    [*events, canceled, finish],
                    expected_status=snapshot.status,
                    changed_steps=(),
                )
                if ok:
                    log.publish_stored(canceled)
                    log.publish_stored(finish)
            if ok:
                from ._runtime import result_from_snapshot

                hub.ended_outside(result_from_snapshot(updated))
                return
            if events:
                # Nothing was written: the chunks we took still need storing.
                await storage.append_events(self.run_id, events)
                hub.log.mark_stored(events[-1].seq)
        raise RuntimeError(f"could not cancel run {self.run_id}: its status keeps changing")

    async def begin_restart(self) -> Execution | WorkflowResult:
        from ._runtime import result_from_snapshot

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
            pending = snapshot.resume
            target = ResumeTarget(
                path=list(pending["path"]), foreach_index=pending.get("foreach_index")
            )
            node = node_at(self._workflow, target.path)
            data = pending.get("data")
            schema = getattr(node, "resume_schema", None)
            if schema is not None and self._workflow.validate_inputs:
                data = validate(data, schema, "Invalid resume data:")
            return self._spawn_continuation(
                claimed,
                "resume",
                context,
                trace_id,
                target,
                data,
                token=pending.get("token"),
                restarted=True,
            )
        return self._spawn_continuation(claimed, "restart", context, trace_id, None, None)

    async def restart(self) -> WorkflowResult:
        """Continue a run whose execution died while ``running``/``waiting`` (or that
        ``per_step`` paused): steps that finished are not run again. A finished run's
        stored result is returned without executing; RunNotActiveError otherwise."""
        started = await self.begin_restart()
        if isinstance(started, WorkflowResult):
            return started
        return await _wait(started)

    # --- observing ----------------------------------------------------------------------------

    def observe_stream(self, *, from_seq: int = 1, follow: bool = True) -> Subscription:
        """The run's whole event log from ``from_seq``, then live.

        With ``follow=True`` it keeps following through suspensions until a terminal
        ``workflow-finish``; with ``follow=False`` it ends at the current end of the log.
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
        )


def _inside(execution: Execution) -> bool:
    """Whether the current task runs inside ``execution`` (a step calling run.cancel())."""
    return current_execution.get(None) is execution


async def _wait(execution: Execution) -> WorkflowResult:
    await execution.done.wait()
    if execution.result is not None:
        return execution.result
    if execution.failure is not None:
        raise execution.failure
    raise RuntimeClosedError(f"run {execution.run_id} did not finish")


class RunOutput:
    """What ``stream()``/``resume_stream()`` return.

    ``async for chunk in out`` replays from this stream's first chunk, then follows live,
    and ends after its ``workflow-finish``. Every iteration (and :meth:`full_stream`) is an
    independent subscriber. With ``close_on_suspend=False`` a suspension does not end the
    stream: a later resume of the same run feeds it, and :meth:`result` is the final
    outcome. The resume may happen in another process on the same durable storage: the
    stream and :meth:`result` then follow the stored log to the run's final
    ``workflow-finish`` (and the result is the one stored with it).
    """

    def __init__(self, run: Run, execution: Execution, *, close_on_suspend: bool) -> None:
        self._run = run
        self._hub = run._hub
        self._execution = execution
        self._start_seq = execution.log.next_seq - 1
        self.close_on_suspend = close_on_suspend
        self._subscriptions: list[Subscription] = []
        self._executions: list[Execution] = [execution]
        #: Where following the log for executions in other processes goes on from.
        self._scan_seq = self._start_seq
        #: The stored result when another process continued the run to its end.
        self._elsewhere: WorkflowResult | None = None
        self._usage_elsewhere = Usage()

    @property
    def run_id(self) -> str:
        return self._run.run_id

    @property
    def workflow_id(self) -> str:
        return self._run.workflow_id

    @property
    def trace_id(self) -> str:
        return self._execution.trace_id

    @property
    def status(self) -> RunStatus:
        """The run's current status."""
        return self._hub.status

    def full_stream(self) -> Subscription:
        """A new, independent subscriber over this stream's chunks."""
        if self.close_on_suspend:
            sub = Subscription(
                self._hub.log,
                from_seq=self._start_seq,
                ends_after=ends_at_any_finish,
                abandoned=self._abandoned,
            )
        else:
            first = self._start_seq

            def skip(chunk: Chunk) -> bool:
                if isinstance(chunk, WorkflowStart):
                    return chunk.seq != first
                return isinstance(chunk, WorkflowFinish) and (
                    chunk.payload.workflow_status == "suspended"
                )

            sub = Subscription(
                self._hub.log,
                from_seq=first,
                ends_after=_ends_unless_suspended,
                skip=skip,
                abandoned=self._abandoned,
            )
        self._subscriptions.append(sub)
        return sub

    def _abandoned(self) -> BaseException | None:
        """Why this stream can get no more chunks here: the execution feeding it (with
        ``close_on_suspend=False``, the run's latest one in this process) died without
        its ``workflow-finish``, as :meth:`result` reports it; else None."""
        execution = self._execution
        if not self.close_on_suspend and self._hub.latest is not None:
            execution = self._hub.latest
        if not execution.done.is_set() or execution.result is not None:
            return None
        if execution.failure is not None:
            return execution.failure
        return RuntimeClosedError(f"run {execution.run_id} did not finish")

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self.full_stream()

    async def _final_executions(self) -> list[Execution]:
        execution = self._executions[-1]
        while True:
            await execution.done.wait()
            if execution.result is None:
                if execution.failure is not None:
                    raise execution.failure
                raise RuntimeClosedError(f"run {execution.run_id} did not finish")
            if self.close_on_suspend or execution.result.status is not RunStatus.SUSPENDED:
                return list(self._executions)
            # Suspended, and this stream stays open: the run continues here or elsewhere.
            following = await self._next_execution(execution)
            if following is None:
                return list(self._executions)
            execution = following
            self._executions.append(execution)

    async def _next_execution(self, suspended: Execution) -> Execution | None:
        """The execution in this process that continues the run after ``suspended``; None
        when the run ends without one here: canceled while suspended, or continued to its
        end by another process (this follows the stored log until its final
        ``workflow-finish``; :attr:`_elsewhere` is then the stored result)."""
        hub = self._hub
        if self._elsewhere is not None:
            await trio.lowlevel.checkpoint()
            return None
        if hub.last_ended is suspended:
            self._scan_seq = max(self._scan_seq, hub.last_end_seq)
        async with Subscription(
            hub.log, from_seq=self._scan_seq, ends_after=_ends_unless_suspended
        ) as sub:
            while True:
                latest = hub.latest
                if latest is not None and latest is not suspended:
                    return latest
                if hub.external_result is not None and hub.status in TERMINAL:
                    return None
                try:
                    chunk = await sub.__anext__()
                except StopAsyncIteration:
                    break
                self._scan_seq = chunk.seq + 1
                if isinstance(chunk, WorkflowFinish):
                    # Written by an execution in another process (one here would be latest).
                    self._usage_elsewhere = self._usage_elsewhere + chunk.payload.usage
        latest = hub.latest
        if latest is not None and latest is not suspended:
            return latest
        if hub.external_result is None:
            self._elsewhere = await hub.load_stored_result()
        return None

    async def result(self) -> WorkflowResult:
        """The WorkflowResult of this stream (see the class docstring)."""
        executions = await self._final_executions()
        last = executions[-1]
        if self._elsewhere is not None:
            return self._elsewhere
        external = self._hub.external_result
        if (
            external is not None
            and last.result is not None
            and last.result.status is RunStatus.SUSPENDED
            and external.status in TERMINAL
        ):
            return external
        assert last.result is not None
        return last.result

    async def usage(self) -> Usage:
        """Token usage summed over this stream's executions (in another process too);
        resolves when it ends."""
        executions = await self._final_executions()
        total = self._usage_elsewhere
        for execution in executions:
            total = total + execution.usage
        return total

    async def aclose(self) -> None:
        """Detach every subscriber this output created."""
        for sub in self._subscriptions:
            sub.close()
        self._subscriptions.clear()
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> RunOutput:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _ends_unless_suspended(chunk: Chunk) -> bool:
    return isinstance(chunk, WorkflowFinish) and chunk.payload.workflow_status != "suspended"


@attrs.frozen
class LegacyEvent:
    """An event of the v0 stream format: ``type`` and a ``payload`` dict.

    Keys are Mastra's camelCase (``stepCallId``, ``startedAt``, ...) and there is no
    ``stepName`` (Mastra 1.71 ``streamLegacy``: tests/fixtures/mastra_1_71/legacy.json).
    """

    type: str
    payload: dict[str, Any]


# Mastra agent chunks (see _agent.AgentChunks) that the legacy stream reports as tool-call
# events; the end of a call's input carries no args, the tool-call chunk after it does.
_TOOL_TYPES = {
    "tool-call-input-streaming-start": ("tool-call-streaming-start",),
    "tool-call-delta": ("tool-call-delta",),
    "tool-call": ("tool-call-streaming-finish", "tool-call"),
}


def legacy_events(chunk: Chunk, run_id: str) -> list[LegacyEvent]:
    """The v0 events one chunk maps to (possibly none)."""
    if isinstance(chunk, WorkflowStart):
        return [LegacyEvent("start", {"runId": run_id})]
    if isinstance(chunk, WorkflowFinish):
        return [LegacyEvent("finish", {"runId": run_id})]
    if isinstance(chunk, WorkflowStepStart):
        return [LegacyEvent("step-start", _payload_dict(chunk))]
    if isinstance(chunk, WorkflowStepResult):
        finish: dict[str, Any] = {"id": chunk.payload.id}
        if chunk.payload.step_call_id is not None:
            finish["stepCallId"] = chunk.payload.step_call_id
        finish["metadata"] = {}
        return [
            LegacyEvent("step-result", _payload_dict(chunk)),
            LegacyEvent("step-finish", finish),
        ]
    if isinstance(chunk, WorkflowStepSuspended):
        return [LegacyEvent("step-suspended", _payload_dict(chunk))]
    if isinstance(chunk, WorkflowStepWaiting):
        return [LegacyEvent("step-waiting", _payload_dict(chunk))]
    if isinstance(chunk, WorkflowStepOutput):
        return _legacy_tool_events(chunk.payload.output)
    return []


def _legacy_tool_events(output: Any) -> list[LegacyEvent]:
    if not isinstance(output, dict) or output.get("from") != "AGENT":
        return []
    types = _TOOL_TYPES.get(str(output.get("type")))
    payload = output.get("payload")
    if types is None or not isinstance(payload, dict):
        return []
    body = {
        "name": payload.get("toolName"),
        "args": payload.get("args"),
        "toolCallId": payload.get("toolCallId"),
        "argsTextDelta": payload.get("argsTextDelta"),
    }
    body = {k: v for k, v in body.items() if v is not None}
    return [LegacyEvent(t, dict(body)) for t in types]


def _payload_dict(chunk: Chunk) -> dict[str, Any]:
    # The wire payload (camelCase field names, None fields left out, user data untouched)
    # minus the stepName copy that only the v1 stream adds.
    payload = dict(to_wire(chunk).get("payload", {}))
    payload.pop("stepName", None)
    return payload


class _LegacyEvents:
    def __init__(self, sub: Subscription, run_id: str) -> None:
        self._sub = sub
        self._run_id = run_id
        self._pending: list[LegacyEvent] = []

    def __aiter__(self) -> _LegacyEvents:
        return self

    async def __anext__(self) -> LegacyEvent:
        while not self._pending:
            chunk = await self._sub.__anext__()
            self._pending = legacy_events(chunk, self._run_id)
        return self._pending.pop(0)  # noqa: ASYNC910 - the subscription checkpoints

    async def aclose(self) -> None:
        await self._sub.aclose()


class LegacyRunOutput:
    """What ``stream_legacy()`` returns: ``stream`` (v0 events), ``get_workflow_state()``
    and ``trace_id``. The stream stays open across a suspension (a resume adds no second
    ``start``) and closes after the final ``finish``."""

    def __init__(self, output: RunOutput) -> None:
        self._output = output

    @property
    def trace_id(self) -> str:
        return self._output.trace_id

    @property
    def stream(self) -> AsyncIterator[LegacyEvent]:
        """A new iterator over the v0 events (from this stream's start)."""
        return _LegacyEvents(self._output.full_stream(), self._output.run_id)

    async def get_workflow_state(self) -> WorkflowResult:
        return await self._output.result()
