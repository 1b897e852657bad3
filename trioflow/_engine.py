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
import datetime as _dt
import inspect
import itertools
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ._context import RequestContext, StepContext
from ._core._chunks import (
    Chunk,
    StepProgressPayload,
    StepResultPayload,
    StepStartPayload,
    StepSuspendedPayload,
    StepWaitingPayload,
    WorkflowCanceled,
    WorkflowFinish,
    WorkflowFinishPayload,
    WorkflowPaused,
    WorkflowStart,
    WorkflowStartPayload,
    WorkflowStepProgress,
    WorkflowStepResult,
    WorkflowStepStart,
    WorkflowStepSuspended,
    WorkflowStepWaiting,
)
from ._core._errors import (
    LeaseLostError,
    NonRetryableError,
    NotJsonError,
    RuntimeClosedError,
    StepTimeoutError,
    TripwireError,
    ValidationError,
)
from ._core._graph import (
    BranchEntry,
    Const,
    Entry,
    ForeachEntry,
    FromContext,
    FromInit,
    FromStep,
    LoopEntry,
    MapEntry,
    ParallelEntry,
    SleepEntry,
    StepEntry,
    get_path,
)
from ._core._handout import Handout
from ._core._journal import StepJournal
from ._core._json import JsonValueError, plainly_json
from ._core._model import (
    ITERATION_COUNT,
    OLD_ITERATION_COUNT,
    RESUME_COUNT,
    ResumeLabel,
    RunSnapshot,
    SerializedError,
    StepResult,
    TripwireInfo,
    Usage,
    WorkflowResult,
    public_metadata,
    public_step_result,
)
from ._core._resume import ResumeTarget, full_suspended_paths, nested_header
from ._core._serde import (
    _describe,
    _safe_text,
    dump_error,
    load_error,
    serialize_error,
    to_jsonable,
    to_strict_jsonable,
    validate,
)
from ._core._status import RunStatus, StepStatus, combine_branch_statuses
from ._groups import is_cancellation, is_fatal, sole_exception, unwrap_groups
from ._workflow import Step, Workflow
from .storage._protocol import save_changed_steps
from .tracing import TracingOptions
from .tracing._spans import Span, current_span

if TYPE_CHECKING:
    from ._runtime import RunHub, Runtime

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
# ``member.value`` goes through enum's descriptor machinery: too slow for the step path.
_VALUE: dict[StepStatus, str] = {status: status.value for status in StepStatus}


def now_ms() -> int:
    return int(time.time() * 1000)


def new_trace_id() -> str:
    return secrets.token_hex(16)


def new_span_id() -> str:
    return secrets.token_hex(8)


async def call_maybe_async(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a sync or async user function."""
    value = fn(*args)
    if inspect.isawaitable(value):
        value = await value
    return value


# --- stored step results ---------------------------------------------------------------


def dump_step_result(result: StepResult) -> dict[str, Any]:
    out: dict[str, Any] = {"status": _VALUE[result.status]}
    for name in (
        "output",
        "payload",
        "suspend_payload",
        "suspend_output",
        "resume_payload",
        "metadata",
    ):
        value = getattr(result, name)
        if value is not None:
            out[name] = to_jsonable(value)
    for name in ("started_at", "ended_at", "suspended_at", "resumed_at"):
        value = getattr(result, name)
        if value is not None:
            out[name] = value
    if result.error is not None:
        out["error"] = dump_error(result.error)
    if result.retry_count:
        out["retry_count"] = result.retry_count
    return out


def load_step_result(data: dict[str, Any]) -> StepResult:
    return StepResult(
        status=StepStatus(data["status"]),
        output=data.get("output"),
        payload=data.get("payload"),
        started_at=data.get("started_at"),
        ended_at=data.get("ended_at"),
        error=load_error(data.get("error")),
        suspend_payload=data.get("suspend_payload"),
        suspend_output=data.get("suspend_output"),
        suspended_at=data.get("suspended_at"),
        resume_payload=data.get("resume_payload"),
        resumed_at=data.get("resumed_at"),
        metadata=data.get("metadata"),
        retry_count=data.get("retry_count") or 0,
    )


def all_step_results(
    steps: dict[str, StepResult], stored: dict[str, dict[str, Any]]
) -> dict[str, StepResult]:
    """``WorkflowResult.all_steps``: the public ``steps`` (top level, already loaded) and
    every other settled step of the stored run by its qualified key (``nested.inner``,
    ``nested[2].inner``), with foreach items as ``step[i]``. Engine records (``@...``) and
    items still in flight are left out."""
    out = dict(steps)
    for key, data in stored.items():
        if key not in steps:
            if key.rpartition(".")[2].startswith("@"):
                continue
            out[key] = public_step_result(load_step_result(data))
        metadata = data.get("metadata")
        if metadata and "foreach" in metadata:
            outcomes = (metadata.get("foreach") or {}).get("outcomes") or []
            for i, record in enumerate(outcomes):
                if record and record.get("status") not in (None, "running"):
                    out[f"{key}[{i}]"] = _item_result(record)
    return out


class AllSteps(Mapping[str, StepResult]):
    """``WorkflowResult.all_steps`` of an execution: a read-only mapping built from the
    stored records when first read (most callers never read it; building it for every
    run would cost the step path a share of its time)."""

    __slots__ = ("_built", "_steps", "_stored")

    def __init__(self, steps: dict[str, StepResult], stored: dict[str, dict[str, Any]]) -> None:
        self._steps = steps
        self._stored = dict(stored)
        self._built: dict[str, StepResult] | None = None

    def _all(self) -> dict[str, StepResult]:
        if self._built is None:
            self._built = all_step_results(self._steps, self._stored)
        return self._built

    def __getitem__(self, key: str) -> StepResult:
        return self._all()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def __repr__(self) -> str:
        return repr(self._all())


def _item_result(record: dict[str, Any]) -> StepResult:
    """A foreach item's stored record as a StepResult (an item that bailed succeeded)."""
    status = record["status"]
    return StepResult(
        status=_S.SUCCESS if status == "bailed" else StepStatus(status),
        output=record.get("output"),
        payload=record.get("payload"),
        error=load_error(record.get("error")),
        suspend_payload=record.get("suspend_payload"),
        metadata=public_metadata(record.get("metadata")),
        retry_count=record.get("retry_count") or 0,
    )


# --- outcomes ------------------------------------------------------------------------------


@attrs.define
class Outcome:
    """How an entry (or a whole level) ended."""

    status: StepStatus
    output: Any = None
    error: BaseException | SerializedError | None = None
    tripwire: TripwireInfo | None = None


@attrs.define
class StepRun:
    """What running one node produced, beyond its StepResult."""

    result: StepResult
    bailed: bool = False
    labels: list[_Label] = attrs.field(factory=list)
    tripwire: TripwireInfo | None = None


@attrs.frozen
class Announced:
    """A node's call id and start time, fixed when its start chunk was published. A
    resumed node keeps the start time of its first execution (as Mastra 1.71 reports it)
    and is resumed at ``resumed_at``."""

    call_id: str
    started_at: int
    resumed_at: int | None = None


@attrs.frozen
class NodeResume:
    """Resuming one node: the resume data, the path below it (nested workflows), the
    stored result of the node, and (foreach) which iteration(s)."""

    data: Any
    tail: list[str]
    stored: dict[str, Any] | None
    foreach_index: int | None = None
    #: A restart continuing a nested workflow from its stored header (no resume data).
    restarting: bool = False


def outcome_of(run: StepRun) -> Outcome:
    result = run.result
    if run.bailed:
        return Outcome(_S.BAILED, output=result.output)
    if result.status is _S.FAILED and run.tripwire is not None:
        return Outcome(_S.TRIPWIRE, error=result.error, tripwire=run.tripwire)
    return Outcome(result.status, output=result.output, error=result.error)


def merge_state(state: Any, update: Any, schema: Any) -> Any:
    """Shallow-merge ``update`` into ``state`` (dicts, or instances of ``schema``)."""
    if update is None:
        return state
    if schema is not None and attrs.has(schema):
        if isinstance(update, schema):
            return update
        if isinstance(update, dict):
            current = to_jsonable(state) if state is not None else {}
            return validate({**current, **update}, schema, "Invalid state:")
        raise TypeError(f"set_state() expects a dict or a {schema.__name__}, got {update!r}")
    if isinstance(update, dict):
        base = state if isinstance(state, dict) else {}
        return {**base, **update}
    if attrs.has(type(update)):
        base = state if isinstance(state, dict) else {}
        return {**base, **to_jsonable(update)}
    raise TypeError(f"set_state() expects a dict, got {update!r}")


# --- one workflow graph --------------------------------------------------------------------


class Level:
    """Executes one workflow graph (top level, or a nested workflow used as a step)."""

    def __init__(
        self,
        execution: Execution,
        workflow: Workflow,
        *,
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
        self.key_prefix = key_prefix
        #: This level's part of its steps' idempotency keys: ``key_prefix`` with the loop
        #: iteration of every enclosing nested workflow (``body#2.``).
        self.key_scope = key_scope
        self.chunk_prefix = chunk_prefix
        self.input = input
        self.state = state
        self.is_root = is_root
        self.results: dict[str, StepResult] = {}
        self.suspended_paths: dict[str, list[int]] = {}
        self.resume_labels: dict[str, ResumeLabel] = {}
        self.execution_path: list[str] = []
        self._seen: set[str] = set()
        self.active_entry: int | None = 0
        self.active_input: Any = input
        #: Called after each entry of a nested level succeeds (durable progress records).
        self.on_entry_done: Callable[[], Awaitable[None]] | None = None
        if header is not None:
            self.load_header(header)

    # --- bookkeeping ----------------------------------------------------------------------

    def load_header(self, header: dict[str, Any]) -> None:
        self.suspended_paths = {
            k: list(v) for k, v in (header.get("suspended_paths") or {}).items()
        }
        self.resume_labels = {
            k: ResumeLabel(path=list(v["path"]), foreach_index=v.get("foreach_index"))
            for k, v in (header.get("resume_labels") or {}).items()
        }
        self.execution_path = list(header.get("execution_path") or [])
        self._seen = set(self.execution_path)
        self.active_entry = header.get("active_entry")
        self.active_input = header.get("active_input")
        prefix = self.key_prefix
        for key, stored in self.execution.stored.items():
            if key.startswith(prefix):
                rest = key[len(prefix) :]
                if "." not in rest and "[" not in rest and not rest.startswith("@"):
                    self.results[rest] = load_step_result(stored)

    def header(self) -> dict[str, Any]:
        """This level's bookkeeping as stored in its parent step's metadata."""
        return {
            "input": to_jsonable(self.input),
            "state": to_jsonable(self.state),
            "suspended_paths": {k: list(v) for k, v in self.suspended_paths.items()},
            "suspended": self.full_suspended_paths(),
            "resume_labels": {
                k: {"path": v.path, "foreach_index": v.foreach_index}
                for k, v in self.resume_labels.items()
            },
            "execution_path": list(self.execution_path),
            "active_entry": self.active_entry,
            "active_input": to_jsonable(self.active_input),
        }

    def full_suspended_paths(self) -> list[list[str]]:
        stored = {
            k: self.execution.stored.get(self.key_prefix + k, {}) for k in self.suspended_paths
        }
        return full_suspended_paths(self.suspended_paths, stored)

    def suspend_payloads(self) -> dict[str, Any]:
        """``{"step": payload, "nested.inner": payload}`` for every suspended path."""
        out: dict[str, Any] = {}
        for path in self.full_suspended_paths():
            key = self.key_prefix + ".".join(path)
            stored = self.execution.stored.get(key)
            result = self.results.get(path[0])
            if stored is not None:
                out[".".join(path)] = stored.get("suspend_payload")
            elif result is not None:
                out[".".join(path)] = result.suspend_payload
        return out

    def step_output(self, step_id: str) -> Any:
        result = self.results.get(step_id)
        if result is None or result.status is not _S.SUCCESS:
            return None
        return result.output

    def chunk_id(self, node_id: str) -> str:
        return self.chunk_prefix + node_id

    def settle(self, node_id: str, run: StepRun, entry_path: list[int]) -> None:
        """Record a node's result at this level (sync: atomic under trio's scheduling)."""
        result = run.result
        self.results[node_id] = result
        self.execution.stored[self.key_prefix + node_id] = dump_step_result(result)
        if node_id not in self._seen:
            self._seen.add(node_id)
            self.execution_path.append(node_id)
        for name in [k for k, v in self.resume_labels.items() if v.path[:1] == [node_id]]:
            del self.resume_labels[name]
        if result.status is _S.SUSPENDED:
            self.execution.suspended_once = True
            self.suspended_paths[node_id] = entry_path
            for label in run.labels:
                self.resume_labels[label.name] = ResumeLabel(
                    path=[node_id, *label.path], foreach_index=label.foreach_index
                )
        else:
            self.suspended_paths.pop(node_id, None)

    def apply_state(self, update: Any, schema: Any) -> None:
        self.state = merge_state(
            self.state, update, schema if schema is not None else self.workflow.state_schema
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
            status=_VALUE[result.status],
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
        if isinstance(entry, StepEntry):
            node = entry.node
            resume = self.node_resume(node.id, target)
            if restart and resume is None:
                resume = self.restart_resume(node.id)
            run = await self.run_node(node, value, resume=resume, chunk_id=self.chunk_id(node.id))
            self.settle(node.id, run, [idx])
            return outcome_of(run)
        if isinstance(entry, MapEntry):
            return await self.run_map(idx, entry, value)
        kind, name = _entry_span(entry)
        with self.execution.span(kind, name) as span:
            if isinstance(entry, ParallelEntry):
                outcome = await self.run_block(
                    idx,
                    list(entry.nodes),
                    value,
                    target,
                    fail_fast=entry.fail_fast,
                    restart=restart,
                )
            elif isinstance(entry, BranchEntry):
                outcome = await self.run_branch(idx, entry, value, target, restart=restart)
            elif isinstance(entry, LoopEntry):
                outcome = await self.run_loop(idx, entry, value, target, restart=restart)
            elif isinstance(entry, ForeachEntry):
                outcome = await self.run_foreach(idx, entry, value, target, restart=restart)
            else:
                outcome = await self.run_sleep(idx, entry, value)
            if span is not None:
                span.status = outcome.status.value
            return outcome

    def node_resume(self, node_id: str, target: ResumeTarget | None) -> NodeResume | None:
        if target is None or not target.path or target.path[0] != node_id:
            return None
        return NodeResume(
            data=self.execution.resume_data,
            tail=target.path[1:],
            stored=self.execution.stored.get(self.key_prefix + node_id),
            foreach_index=target.foreach_index,
        )

    def restart_resume(self, node_id: str) -> NodeResume | None:
        """On restart, a nested workflow continues from its own stored header."""
        stored = self.execution.stored.get(self.key_prefix + node_id)
        if stored is None or nested_header(stored) is None:
            return None
        return NodeResume(data=None, tail=[], stored=stored, restarting=True)

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

    def idempotency_key(
        self, node_id: str, foreach_index: int | None, iteration: int, resumes: int
    ) -> str:
        """``ctx.idempotency_key``: the run, then the step's path with, at every depth, the
        foreach index, the loop iteration and the resume count (each only when it applies):
        ``run-1/digest[2].fetch``, ``run-1/poll#3``, ``run-1/approve@1``. Built only from
        what the stored run records, so a restart re-running the step builds it again."""
        key = f"{self.execution.run_id}/{self.key_scope}{node_id}"
        if foreach_index is not None:
            key += f"[{foreach_index}]"
        if iteration:
            key += f"#{iteration}"
        if resumes:
            key += f"@{resumes}"
        return key

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
        announced = Announced(self.execution.next_call_id(), *_start_times(resume))
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
        if announced is None:
            # Here, not in run_step/run_nested: an interrupted node's result keeps its start.
            announced = self.announce(node, value, resume, chunk_id, emit=emit, iteration=iteration)
        try:
            with self.execution.span("workflow_step", "workflow step: '{}'", chunk_id) as span:
                run = await self._run_node(
                    node,
                    value,
                    resume=resume,
                    chunk_id=chunk_id,
                    emit=emit,
                    iteration=iteration,
                    foreach_index=foreach_index,
                    announced=announced,
                )
                if resume is not None and not resume.restarting and foreach_index is None:
                    # The resumed node has consumed the resume: from the next write on, a
                    # restart after a crash must not apply it again. (Foreach items are
                    # tracked one by one: see run_foreach.)
                    self.execution.pending_resume = None
                if span is not None:
                    span.status = run.result.status.value
                    if run.result.error is not None:
                        span.error = str(run.result.error)
                return run
        except trio.Cancelled:
            if record and not self.execution.interrupted_resume(resume):
                # A nested workflow's progress record stays: a restart continues it.
                prior = self.execution.stored.get(self.key_prefix + node.id)
                canceled = _canceled_result(value, announced, resume, prior, iteration)
                self.settle(node.id, StepRun(result=canceled), [])
            raise

    async def _run_node(
        self,
        node: Step | Workflow,
        value: Any,
        *,
        resume: NodeResume | None,
        chunk_id: str,
        emit: bool,
        iteration: int,
        foreach_index: int | None,
        announced: Announced | None,
    ) -> StepRun:
        if isinstance(node, Workflow):
            return await self.run_nested(
                node,
                value,
                resume=resume,
                chunk_id=chunk_id,
                emit=emit,
                foreach_index=foreach_index,
                announced=announced,
                iteration=iteration,
            )
        return await self.run_step(
            node,
            value,
            resume=resume,
            chunk_id=chunk_id,
            emit=emit,
            iteration=iteration,
            announced=announced,
            foreach_index=foreach_index,
        )

    async def run_step(
        self,
        node: Step,
        value: Any,
        *,
        resume: NodeResume | None,
        chunk_id: str,
        emit: bool,
        iteration: int,
        announced: Announced | None = None,
        foreach_index: int | None = None,
    ) -> StepRun:
        if announced is None:
            announced = self.announce(node, value, resume, chunk_id, emit=emit, iteration=iteration)
        emit = emit and self.emits
        call_id = announced.call_id
        metadata = {ITERATION_COUNT: iteration} if iteration else None
        resume_data = None
        suspend_data = None
        resumes = 0
        if resume is not None:
            stored = resume.stored or {}
            if "payload" in stored:
                value = stored["payload"]
            suspend_data = stored.get("suspend_payload")
            resume_data = resume.data
            resumes = _resume_count(stored) + 1
            metadata = {**(metadata or {}), RESUME_COUNT: resumes}
        key_args = (node.id, foreach_index, iteration, resumes)
        attempt = 0
        base: dict[str, Any] = {
            "payload": value,
            "started_at": announced.started_at,
            "metadata": metadata,
            "resume_payload": resume_data if resume is not None else None,
            "resumed_at": announced.resumed_at,
        }

        def settle(result: StepResult, run: StepRun | None = None) -> StepRun:
            if emit:
                self.emit_settled(chunk_id, result, call_id)
            return run if run is not None else StepRun(result=result)

        def failed(error: BaseException, tripwire: TripwireInfo | None = None) -> StepRun:
            result = StepResult(
                status=_S.FAILED, error=error, ended_at=now_ms(), retry_count=attempt, **base
            )
            return settle(result, StepRun(result=result, tripwire=tripwire))

        step_input = value
        if node.input_schema is not None and self.workflow.validate_inputs:
            try:
                step_input = validate(value, node.input_schema, "Invalid step input:")
            except ValidationError as exc:
                return failed(exc)
        if resume is not None and node.resume_schema is not None and self.workflow.validate_inputs:
            try:
                resume_data = validate(resume_data, node.resume_schema, "Invalid resume data:")
            except ValidationError as exc:
                return failed(exc)

        retries = node.retries if node.retries is not None else self.workflow.retry_config.attempts
        delay = self.workflow.retry_config.delay
        while True:
            ctx = StepContext(
                self,
                step_id=node.id,
                step_name=chunk_id,
                input_data=step_input,
                state=self.state,
                resume_data=resume_data,
                suspend_data=suspend_data,
                retry_count=attempt,
                iteration_count=iteration,
                suspend_schema=node.suspend_schema,
                state_schema=node.state_schema,
                key_args=key_args,
            )
            try:
                output = await _call_with_timeout(node, ctx)
            except trio.Cancelled:
                if emit:
                    self._emit_canceled(chunk_id, call_id, base)
                raise
            except TripwireError as exc:
                info = TripwireInfo(
                    reason=_safe_text(str(exc.reason)),
                    retry=bool(exc.retry),
                    metadata=_tripwire_metadata(exc.metadata),
                    step_id=node.id,
                )
                return failed(exc, info)
            except NonRetryableError as exc:
                return failed(exc)
            except Exception as exc:
                if attempt < retries:
                    attempt += 1
                    if delay > 0:
                        await trio.sleep(delay)
                    continue
                return failed(exc)
            except BaseException as exc:
                if is_fatal(exc):
                    if is_cancellation(exc) and emit:
                        # The step's own nursery was cancelled: a group of Cancelled.
                        self._emit_canceled(chunk_id, call_id, base)
                    raise
                # SystemExit, GeneratorExit, any BaseException subclass: this step's
                # failure (not retried), never the runtime's end.
                return failed(exc)
            break

        ended_at = now_ms()
        if ctx._new_state is not None or ctx._suspended or ctx._bailed or not plainly_json(output):
            not_json = _not_json_produced(ctx, output)
            if not_json is not None:
                return failed(not_json)
        try:
            if ctx._new_state is not None:
                self.apply_state(ctx._new_state, node.state_schema)
        except (TypeError, ValidationError) as exc:
            return failed(exc)
        if ctx._suspended:
            result = StepResult(
                status=_S.SUSPENDED,
                suspend_payload=ctx._suspend_payload,
                suspend_output=output,
                suspended_at=ended_at,
                retry_count=attempt,
                **base,
            )
            run = StepRun(result=result, labels=[_Label(n, []) for n in ctx._resume_labels])
            return settle(result, run)
        if ctx._bailed:
            result = StepResult(
                status=_S.SUCCESS,
                output=ctx._bail_value,
                ended_at=ended_at,
                retry_count=attempt,
                **base,
            )
            return settle(result, StepRun(result=result, bailed=True))
        result = StepResult(
            status=_S.SUCCESS, output=output, ended_at=ended_at, retry_count=attempt, **base
        )
        return settle(result)

    def _emit_canceled(self, chunk_id: str, call_id: str | None, base: dict[str, Any]) -> None:
        result = StepResult(status=_S.CANCELED, ended_at=now_ms(), **base)
        self.emit_settled(chunk_id, result, call_id)

    async def run_nested(
        self,
        node: Workflow,
        value: Any,
        *,
        resume: NodeResume | None,
        chunk_id: str,
        emit: bool,
        foreach_index: int | None,
        announced: Announced | None = None,
        iteration: int = 0,
    ) -> StepRun:
        execution = self.execution
        if announced is None:
            announced = self.announce(node, value, resume, chunk_id, emit=emit)
        emit = emit and self.emits
        call_id = announced.call_id
        started_at = announced.started_at
        index = f"[{foreach_index}]" if foreach_index is not None else ""
        key_prefix = f"{self.key_prefix}{node.id}{index}."
        loop = f"#{iteration}" if iteration else ""
        key_scope = f"{self.key_scope}{node.id}{index}{loop}."
        stored = resume.stored if resume is not None else None
        header = nested_header(stored)
        if header is not None and stored is not None and "payload" in stored:
            value = stored["payload"]
        base: dict[str, Any] = {
            "payload": value,
            "started_at": started_at,
            "resume_payload": resume.data if resume is not None and header is not None else None,
            "resumed_at": announced.resumed_at if header is not None else None,
        }

        def finish(result: StepResult, run: StepRun) -> StepRun:
            if emit:
                self.emit_settled(chunk_id, result, call_id)
            return run

        if header is not None:
            sub = Level(
                execution,
                node,
                key_prefix=key_prefix,
                chunk_prefix=chunk_id + ".",
                input=header.get("input"),
                state=header.get("state"),
                is_root=False,
                header=header,
                key_scope=key_scope,
            )
            # The nested run continues with the parent's current state merged over its own.
            sub.state = (
                merge_state(sub.state, self.state, None)
                if isinstance(self.state, dict)
                else sub.state
            )
            inner_target: ResumeTarget | None = None
            start = sub.active_entry if sub.active_entry is not None else len(node.entries)
            tail = list(resume.tail) if resume is not None else []
            if resume is not None and not tail and not resume.restarting:
                # Resumed without a path below this workflow (a foreach item): its first
                # suspended inner path.
                paths = sub.full_suspended_paths()
                tail = paths[0] if paths else []
            if resume is not None and tail:
                inner_target = ResumeTarget(path=tail, foreach_index=resume.foreach_index)
                start = sub.suspended_paths[tail[0]][0]
        else:
            nested_input = value
            if node.input_schema is not None and node.validate_inputs:
                try:
                    nested_input = validate(value, node.input_schema, "Invalid step input:")
                except ValidationError as exc:
                    result = StepResult(status=_S.FAILED, error=exc, ended_at=now_ms(), **base)
                    return finish(result, StepRun(result=result))
            # A fresh run (e.g. the next iteration of a loop) replaces what an earlier run
            # of this workflow recorded under the same keys.
            for key in [k for k in execution.stored if k.startswith(key_prefix)]:
                del execution.stored[key]
            sub = Level(
                execution,
                node,
                key_prefix=key_prefix,
                chunk_prefix=chunk_id + ".",
                input=nested_input,
                state=self.state,
                is_root=False,
                key_scope=key_scope,
            )
            inner_target = None
            start = 0
        record_key = self.key_prefix + node.id
        if foreach_index is None and execution.durable:
            payload_json = to_jsonable(value)

            def progress_record() -> dict[str, Any]:
                # Durable storage: every write while this workflow runs stores where it is
                # (its header: state, position), so a crash re-runs only its unfinished
                # entry and a restart continues it.
                metadata: dict[str, Any] = {"nested": sub.header()}
                if iteration:
                    metadata[ITERATION_COUNT] = iteration
                return {
                    "status": "running",
                    "payload": payload_json,
                    "started_at": started_at,
                    "metadata": metadata,
                }

            execution.live_records[record_key] = progress_record
            sub.on_entry_done = execution.persist_progress
        try:
            outcome = await sub.run(
                start,
                sub.active_input if header is not None else sub.input,
                inner_target,
                restart=header is not None and inner_target is None,
            )
        except trio.Cancelled:
            if emit:
                canceled = StepResult(status=_S.CANCELED, ended_at=now_ms(), **base)
                self.emit_settled(chunk_id, canceled, call_id)
            raise
        finally:
            refresh = execution.live_records.pop(record_key, None)
            if refresh is not None:
                # The last progress record stays until the step's own result replaces it
                # (an interrupted execution keeps it, for restart).
                execution.stored[record_key] = refresh()

        ended_at = now_ms()
        metadata: dict[str, Any] = {"nested": sub.header()}
        if iteration:
            metadata[ITERATION_COUNT] = iteration
        if outcome.status in (_S.SUCCESS, _S.SUSPENDED):
            self.apply_state(sub.state, None)
        if outcome.status is _S.SUCCESS:
            result = StepResult(
                status=_S.SUCCESS,
                output=outcome.output,
                ended_at=ended_at,
                metadata=metadata,
                **base,
            )
            return finish(result, StepRun(result=result))
        if outcome.status is _S.SUSPENDED:
            paths = sub.full_suspended_paths()
            payloads = sub.suspend_payloads()
            first = payloads.get(".".join(paths[0])) if paths else None
            result = StepResult(
                status=_S.SUSPENDED,
                suspend_payload=first,
                suspended_at=ended_at,
                metadata=metadata,
                **base,
            )
            labels = [
                _Label(name, label.path, label.foreach_index)
                for name, label in sub.resume_labels.items()
            ]
            return finish(result, StepRun(result=result, labels=labels))
        status = _S.FAILED if outcome.status is _S.TRIPWIRE else outcome.status
        result = StepResult(
            status=status, error=outcome.error, ended_at=ended_at, metadata=metadata, **base
        )
        return finish(result, StepRun(result=result, tripwire=outcome.tripwire))

    # --- parallel / branch ---------------------------------------------------------------

    async def run_block(
        self,
        idx: int,
        nodes: list[Any],
        value: Any,
        target: ResumeTarget | None,
        *,
        fail_fast: bool,
        restart: bool,
        considered: list[int] | None = None,
    ) -> Outcome:
        """Run ``nodes`` concurrently (a parallel entry, or the chosen arms of a branch)."""
        positions = considered if considered is not None else list(range(len(nodes)))
        runs: dict[int, StepRun] = {}
        failures: list[int] = []
        to_run: list[tuple[int, NodeResume | None]] = []
        if target is not None:
            for b in positions:
                resume = self.node_resume(nodes[b].id, target)
                if resume is not None:
                    to_run.append((b, resume))
        elif restart:
            for b in positions:
                previous = self.results.get(nodes[b].id)
                if previous is None or previous.status is not _S.SUCCESS:
                    to_run.append((b, self.restart_resume(nodes[b].id)))
        else:
            to_run = [(b, None) for b in positions]

        scopes: dict[int, trio.CancelScope] = {}

        async def branch(b: int, resume: NodeResume | None, announced: Announced | None) -> None:
            node = nodes[b]
            if announced is None:
                announced = self.announce(node, value, resume, self.chunk_id(node.id))
            with trio.CancelScope() as scope:
                scopes[b] = scope
                run = await self.run_node(
                    node,
                    value,
                    resume=resume,
                    chunk_id=self.chunk_id(node.id),
                    announced=announced,
                )
                runs[b] = run
                self.settle(node.id, run, [idx, b])
                if len(to_run) > 1:
                    await self.execution.persist_progress()
                if run.result.status is _S.FAILED:
                    failures.append(b)
                    if fail_fast:
                        for other, other_scope in scopes.items():
                            if other != b:
                                other_scope.cancel(reason=f"fail_fast: {node.id} failed")
            if scope.cancelled_caught:
                canceled = StepResult(
                    status=_S.CANCELED,
                    payload=value,
                    started_at=announced.started_at,
                    ended_at=now_ms(),
                )
                runs[b] = StepRun(result=canceled)
                self.settle(node.id, runs[b], [idx, b])

        if len(to_run) == 1:
            await branch(*to_run[0], None)
        else:
            announced = [
                self.announce(nodes[b], value, resume, self.chunk_id(nodes[b].id))
                for b, resume in to_run
            ]
            # A cancelled nursery raises a group of Cancelled: unwrapped, so that the
            # ``except trio.Cancelled`` of an enclosing nested workflow settles it.
            with unwrap_groups():
                async with trio.open_nursery() as nursery:
                    for (b, resume), note in zip(to_run, announced, strict=True):
                        nursery.start_soon(branch, b, resume, note)

        statuses: list[StepStatus] = []
        output: dict[str, Any] = {}
        tripwire: TripwireInfo | None = None
        for b in positions:
            node = nodes[b]
            run_b = runs.get(b)
            result = run_b.result if run_b is not None else self.results.get(node.id)
            if result is None:
                continue
            if run_b is not None and run_b.tripwire is not None:
                tripwire = tripwire or run_b.tripwire
            statuses.append(result.status)
            if result.status is _S.SUCCESS:
                output[node.id] = result.output
        status = combine_branch_statuses(statuses, canceled=False)
        if status is _S.FAILED:
            if failures:
                # All branches have settled: the lowest failing branch is reported, so the
                # outcome does not depend on which task trio finished first.
                first_failed = runs[min(failures)].result
            else:
                first_failed = next(
                    r for n in nodes if (r := self.results.get(n.id)) and r.status is _S.FAILED
                )
            if tripwire is not None:
                return Outcome(_S.TRIPWIRE, error=first_failed.error, tripwire=tripwire)
            return Outcome(_S.FAILED, error=first_failed.error)
        if status is _S.SUCCESS:
            bail = next((r for r in runs.values() if r.bailed), None)
            if bail is not None:
                return Outcome(_S.BAILED, output=bail.result.output)
        return Outcome(status, output=output if status is _S.SUCCESS else None)

    async def run_branch(
        self,
        idx: int,
        entry: BranchEntry,
        value: Any,
        target: ResumeTarget | None,
        *,
        restart: bool,
    ) -> Outcome:
        nodes = list(entry.nodes)
        record_key = f"{self.key_prefix}@branch{idx}"
        chosen_before = (self.execution.stored.get(record_key) or {}).get("metadata", {})
        if target is not None or (restart and chosen_before):
            # Conditions are not evaluated again: the arms chosen then (or, without that
            # record, the arms that ran) are the branch.
            ran = chosen_before.get("chosen") or [
                b for b, node in enumerate(nodes) if node.id in self.results
            ]
            return await self.run_block(
                idx, nodes, value, target, fail_fast=False, restart=restart, considered=ran
            )
        truth = [False] * len(nodes)

        async def evaluate(b: int) -> None:
            ctx = self.make_context(
                nodes[b].id, self.chunk_id(nodes[b].id), value, is_condition=True
            )
            try:
                truth[b] = bool(await call_maybe_async(entry.conditions[b], ctx))
            except trio.Cancelled:
                raise
            except BaseException as exc:
                if is_fatal(exc):
                    raise
                logger.warning(
                    "branch condition for %r raised; treated as false",
                    nodes[b].id,
                    exc_info=True,
                )
                truth[b] = False

        if len(nodes) == 1:
            await evaluate(0)
        else:
            with unwrap_groups():
                async with trio.open_nursery() as nursery:
                    for b in range(len(nodes)):
                        nursery.start_soon(evaluate, b)
        chosen = [b for b in range(len(nodes)) if truth[b]]
        # Stored with the next snapshot: a restart runs the arms chosen now, it does not
        # evaluate the conditions again (engine records are keyed "@...", never step ids).
        self.execution.stored[record_key] = {"status": "success", "metadata": {"chosen": chosen}}
        if not chosen:
            return Outcome(_S.SUCCESS, output={})
        return await self.run_block(
            idx, nodes, value, None, fail_fast=False, restart=False, considered=chosen
        )

    # --- loops -------------------------------------------------------------------------------

    async def run_loop(
        self,
        idx: int,
        entry: LoopEntry,
        value: Any,
        target: ResumeTarget | None,
        *,
        restart: bool,
    ) -> Outcome:
        node = entry.node
        iteration = 1
        resume = self.node_resume(node.id, target)
        previous = self.results.get(node.id)
        if (resume is not None or restart) and previous is not None:
            meta = previous.metadata or {}
            # Runs stored before the count was named iterationCount spell it iteration_count.
            iteration = int(meta.get(ITERATION_COUNT) or meta.get(OLD_ITERATION_COUNT) or 1)
            if previous.payload is not None:
                value = previous.payload
            if restart and resume is None:
                resume = self.restart_resume(node.id)
        while True:
            run = await self.run_node(
                node, value, resume=resume, chunk_id=self.chunk_id(node.id), iteration=iteration
            )
            resume = None
            if not (run.result.metadata or {}).get(ITERATION_COUNT):
                # Nested workflows record no iteration: the loop needs it to continue
                # counting across a resume.
                run = attrs.evolve(
                    run,
                    result=attrs.evolve(
                        run.result,
                        metadata={**(run.result.metadata or {}), ITERATION_COUNT: iteration},
                    ),
                )
            self.settle(node.id, run, [idx])
            outcome = outcome_of(run)
            if outcome.status is not _S.SUCCESS:
                return outcome
            value = outcome.output
            ctx = self.make_context(
                node.id, self.chunk_id(node.id), value, iteration=iteration, is_condition=True
            )
            try:
                verdict = bool(await call_maybe_async(entry.condition, ctx))
            except trio.Cancelled:
                raise
            except BaseException as exc:
                if is_fatal(exc):
                    raise
                return Outcome(_S.FAILED, error=exc)
            again = verdict if entry.kind == "dowhile" else not verdict
            if not again:
                return Outcome(_S.SUCCESS, output=value)
            iteration += 1

    # --- foreach -------------------------------------------------------------------------------

    async def run_foreach(
        self,
        idx: int,
        entry: ForeachEntry,
        value: Any,
        target: ResumeTarget | None,
        *,
        restart: bool,
    ) -> Outcome:
        node = entry.node
        chunk_id = self.chunk_id(node.id)
        execution = self.execution
        emit = self.emits
        resume = self.node_resume(node.id, target)
        stored = (
            execution.stored.get(self.key_prefix + node.id)
            if (resume is not None or restart)
            else None
        )
        if stored is not None and "payload" in stored:
            value = stored["payload"]
        started_at, resumed_at = _start_times(resume, stored)
        if not isinstance(value, list):
            error = TypeError(f"foreach expects a list, got {_type_name(value)}")
            result = StepResult(
                status=_S.FAILED,
                payload=value,
                error=error,
                started_at=started_at,
                ended_at=now_ms(),
            )
            if emit:
                self.emit_start(
                    chunk_id, call_id=None, payload=value, started_at=started_at, resume=None
                )
                self.emit_settled(chunk_id, result, None)
            self.settle(node.id, StepRun(result=result), [idx])
            return Outcome(_S.FAILED, error=error)

        items = value
        total = len(items)
        previous: list[dict[str, Any] | None] = [None] * total
        if stored is not None:
            saved = ((stored.get("metadata") or {}).get("foreach") or {}).get("outcomes") or []
            previous[: len(saved)] = saved[:total]
        outcomes: list[dict[str, Any] | None] = list(previous)
        outputs: list[Any] = [p.get("output") if p else None for p in previous]
        suspended_payloads: dict[int, Any] = {}
        runs: dict[int, StepRun] = {}

        plan: list[tuple[int, NodeResume | None]] = []
        stored_bail = next(
            (i for i, p in enumerate(previous) if p and p.get("status") == "bailed"), None
        )
        # A restart continues the foreach where it was: if an item had already suspended or
        # failed, it had stopped taking new items, and still does (a resume starts them).
        stopped = any(
            p
            and p.get("status") in ("suspended", "failed")
            # A plain restart: any such item had stopped the foreach. A replayed resume:
            # one that suspended or failed during that very resume had.
            and (resume is None or p.get("resumed") == execution.resume_token)
            for p in previous
        )
        for i in range(total):
            prev = previous[i]
            if prev and prev.get("status") == "running":
                # In flight when the execution stopped: it runs again (at least once), as a
                # resume again if it was being resumed.
                prev = prev.get("prior")
                if not (prev and prev.get("status") == "suspended" and resume is not None):
                    plan.append((i, None))
                    continue
            status = prev.get("status") if prev else None
            if status == "success" or stored_bail is not None:
                continue
            if (
                status == "suspended"
                and prev is not None
                and prev.get("resumed") is not None
                and prev.get("resumed") == execution.resume_token
            ):
                # Suspended during this very resume (before a crash): it stays suspended.
                suspended_payloads[i] = prev.get("suspend_payload")
                continue
            settled_here = prev is not None and (
                resume is None or prev.get("resumed") == execution.resume_token
            )
            if (status is None and stopped) or (status == "failed" and settled_here):
                continue
            if status == "suspended":
                if resume is not None and resume.foreach_index in (None, i):
                    plan.append(
                        (
                            i,
                            NodeResume(
                                data=resume.data,
                                tail=resume.tail,
                                stored=prev,
                                foreach_index=None,
                            ),
                        )
                    )
                else:
                    suspended_payloads[i] = prev.get("suspend_payload") if prev else None
                continue
            plan.append((i, None))

        if emit:
            self.emit_start(
                chunk_id,
                call_id=None,
                payload=items,
                started_at=started_at,
                resume=resume,
                resumed_at=resumed_at,
            )
        completed = 0
        stop = False
        first_failure: int | None = None
        bailed: int | None = None

        def progress(i: int, status: str, output: Any = None) -> None:
            if not emit:
                return
            body = StepProgressPayload(
                id=chunk_id,
                step_name=chunk_id,
                completed_count=completed,
                total_count=total,
                current_index=i,
                iteration_status=status,
                iteration_output=to_jsonable(output) if status == "success" else None,
            )
            self.publish(WorkflowStepProgress, body)

        async def iterate(i: int, item_resume: NodeResume | None) -> None:
            nonlocal completed, stop, first_failure, bailed
            run = await self.run_node(
                node,
                items[i],
                resume=item_resume,
                chunk_id=chunk_id,
                emit=False,
                foreach_index=i,
                record=False,
            )
            runs[i] = run
            result = run.result
            record: dict[str, Any] = {"status": _VALUE[result.status]}
            if execution.resume_token is not None:
                # Settled during this resume (resumed, or started fresh by it): a replay of
                # the same resume after a crash leaves this record as it is.
                record["resumed"] = execution.resume_token
            if result.metadata:
                record["metadata"] = to_jsonable(result.metadata)
            if result.payload is not None:
                record["payload"] = to_jsonable(result.payload)
            if result.retry_count:
                record["retry_count"] = result.retry_count
            if run.bailed:
                bailed = i if bailed is None else min(bailed, i)
                stop = True
                completed += 1
                record["status"] = "bailed"
                record["output"] = to_jsonable(result.output)
                progress(i, "failed")
            elif result.status is _S.SUCCESS:
                completed += 1
                outputs[i] = result.output
                record["output"] = to_jsonable(result.output)
                progress(i, "success", result.output)
            elif result.status is _S.SUSPENDED:
                stop = True
                suspended_payloads[i] = result.suspend_payload
                record["suspend_payload"] = to_jsonable(result.suspend_payload)
                if run.labels:
                    record["labels"] = [lab.name for lab in run.labels]
                progress(i, "suspended")
            else:
                completed += 1
                stop = True
                if result.error is not None:
                    record["error"] = dump_error(result.error)
                # Every item in flight settles before the outcome is decided: report the
                # failure with the lowest index, not whichever trio happened to finish first.
                if first_failure is None or i < first_failure:
                    first_failure = i
                progress(i, "failed")
            outcomes[i] = record
            if execution.durable:
                execution.stored[self.key_prefix + node.id] = {
                    "status": "running",
                    "payload": items_json,
                    "started_at": started_at,
                    "metadata": {"foreach": {"outcomes": list(outcomes)}},
                }
                await execution.persist_progress()

        items_json = to_jsonable(items) if execution.durable else None
        pending = iter(plan)
        log = execution.log

        async def worker() -> None:
            # A sliding window without a task per item: each of `concurrency` workers takes
            # the next item as soon as its current one settles (taking is synchronous).
            for done, (i, item_resume) in enumerate(pending, start=1):
                if stop:
                    return
                # Recorded with the next progress write: a restart re-runs items that were
                # in flight, and does not start the ones that were never taken.
                outcomes[i] = {"status": "running", "prior": outcomes[i]}
                await iterate(i, item_resume)
                # Items whose steps never checkpoint must not make the run uncancellable
                # (a cancel point per item) nor starve other tasks (a schedule point every
                # few items: a full checkpoint per item would double the cost of an item).
                # Each item adds a progress chunk: past the bound of chunks waiting for
                # storage (SPEC §3.0), the next item waits until storage commits some.
                if not log.has_room():
                    await log.wait_for_room()
                elif done % 32:
                    await trio.lowlevel.checkpoint_if_cancelled()
                else:
                    await trio.lowlevel.checkpoint()

        workers = min(entry.concurrency, len(plan))
        try:
            if workers == 1:
                await worker()
            elif workers > 1:
                # A cancelled nursery raises a group of Cancelled: unwrapped, so that
                # the ``except trio.Cancelled`` below settles the foreach.
                with unwrap_groups():
                    async with trio.open_nursery() as nursery:
                        for _ in range(workers):
                            nursery.start_soon(worker)
        except trio.Cancelled:
            # Keep the outcomes: if the runtime (not the user) interrupted the run, a restart
            # continues with the items that finished.
            canceled = StepResult(
                status=_S.CANCELED,
                payload=items,
                started_at=started_at,
                ended_at=now_ms(),
                metadata={"foreach": {"outcomes": list(outcomes)}},
            )
            if emit:
                self.emit_settled(chunk_id, canceled, None)
            self.settle(node.id, StepRun(result=canceled), [idx])
            if execution.interrupted_resume(resume):
                # The runtime stopped during this resume: the foreach stays suspended, and
                # restart() replays the resume on the items it had not finished.
                self.suspended_paths[node.id] = [idx]
            raise

        if resume is None or execution.resume_token is not None:
            # A restart (or a replayed resume) of a foreach whose item had failed: the lowest
            # failed item, recorded or new, is the outcome.
            recorded = next(
                (
                    i
                    for i, p in enumerate(previous)
                    if p
                    and p.get("status") == "failed"
                    and (resume is None or p.get("resumed") == execution.resume_token)
                ),
                None,
            )
            if recorded is not None and (first_failure is None or recorded < first_failure):
                first_failure = recorded
                runs[recorded] = StepRun(
                    result=StepResult(
                        status=_S.FAILED,
                        error=load_error((previous[recorded] or {}).get("error"))
                        or RuntimeError(f"foreach item {recorded} failed before a restart"),
                    )
                )
        if stored_bail is not None and bailed is None:
            bailed = stored_bail
            bail_record = previous[stored_bail] or {}
            runs[stored_bail] = StepRun(
                result=StepResult(status=_S.SUCCESS, output=bail_record.get("output")),
                bailed=True,
            )
        ended_at = now_ms()
        metadata = {"foreach": {"outcomes": outcomes}}
        base: dict[str, Any] = {
            "payload": items,
            "started_at": started_at,
            "metadata": metadata,
            "resume_payload": resume.data if resume is not None else None,
            "resumed_at": resumed_at,
        }
        if first_failure is not None:
            failed_result = runs[first_failure].result
            result = StepResult(
                status=_S.FAILED, error=failed_result.error, ended_at=ended_at, **base
            )
            if emit:
                self.emit_settled(chunk_id, result, None)
            tripwire = runs[first_failure].tripwire
            self.settle(node.id, StepRun(result=result, tripwire=tripwire), [idx])
            if tripwire is not None:
                return Outcome(_S.TRIPWIRE, error=failed_result.error, tripwire=tripwire)
            return Outcome(_S.FAILED, error=failed_result.error)
        if bailed is not None:
            bail_value = runs[bailed].result.output
            result = StepResult(status=_S.SUCCESS, output=bail_value, ended_at=ended_at, **base)
            if emit:
                self.emit_settled(chunk_id, result, None)
            self.settle(node.id, StepRun(result=result), [idx])
            return Outcome(_S.BAILED, output=bail_value)
        if suspended_payloads:
            first = min(suspended_payloads)
            result = StepResult(
                status=_S.SUSPENDED,
                suspend_payload=suspended_payloads[first],
                suspended_at=ended_at,
                **base,
            )
            if emit:
                self.emit_settled(chunk_id, result, None)
            labels: list[_Label] = []
            for i, record in enumerate(outcomes):
                if record and record.get("status") == "suspended":
                    labels.extend(_Label(name, [], i) for name in record.get("labels") or [])
            self.settle(node.id, StepRun(result=result, labels=labels), [idx])
            return Outcome(_S.SUSPENDED)
        result = StepResult(status=_S.SUCCESS, output=outputs, ended_at=ended_at, **base)
        if emit:
            self.emit_settled(chunk_id, result, None)
        self.settle(node.id, StepRun(result=result), [idx])
        return Outcome(_S.SUCCESS, output=outputs)

    # --- map / sleep ---------------------------------------------------------------------

    def resolve_source(self, source: Any) -> Any:
        if isinstance(source, Const):
            return source.value
        if isinstance(source, FromInit):
            return get_path(self.input, source.path)
        if isinstance(source, FromContext):
            return get_path(self.execution.request_context.to_dict(), source.path)
        if isinstance(source, FromStep):
            result = self.results.get(source.step_id)
            if result is None or result.status is not _S.SUCCESS:
                raise KeyError(f"step {source.step_id!r} has no successful output to map from")
            return get_path(result.output, source.path)
        raise TypeError(f"unknown map source {source!r}")

    async def run_map(self, idx: int, entry: MapEntry, value: Any) -> Outcome:
        chunk_id = self.chunk_id(entry.id)
        emit = self.emits
        started_at = now_ms()
        # Mastra 1.71's map chunks carry a stepCallId (its sleep chunks do not).
        call_id = self.execution.next_call_id()
        if emit:
            self.emit_start(
                chunk_id, call_id=call_id, payload=value, started_at=started_at, resume=None
            )
        try:
            if entry.fn is not None:
                ctx = self.make_context(entry.id, chunk_id, value)
                output = await call_maybe_async(entry.fn, ctx)
            else:
                await trio.lowlevel.checkpoint()
                output = {k: self.resolve_source(s) for k, s in (entry.mapping or {}).items()}
            not_json = _not_json("Step output", output)
            if not_json is not None:
                raise not_json
        except trio.Cancelled:
            self._settle_canceled(idx, entry.id, chunk_id, value, started_at, call_id)
            raise
        except BaseException as exc:
            if is_fatal(exc):
                if is_cancellation(exc):
                    self._settle_canceled(idx, entry.id, chunk_id, value, started_at, call_id)
                raise
            result = StepResult(
                status=_S.FAILED, payload=value, error=exc, started_at=started_at, ended_at=now_ms()
            )
        else:
            result = StepResult(
                status=_S.SUCCESS,
                payload=value,
                output=output,
                started_at=started_at,
                ended_at=now_ms(),
            )
        if emit:
            self.emit_settled(chunk_id, result, call_id)
        run = StepRun(result=result)
        self.settle(entry.id, run, [idx])
        return outcome_of(run)

    def _settle_canceled(
        self,
        idx: int,
        entry_id: str,
        chunk_id: str,
        value: Any,
        started_at: int,
        call_id: str | None = None,
    ) -> None:
        """A map or sleep entry interrupted by cancellation: its ``canceled`` result."""
        canceled = StepResult(
            status=_S.CANCELED, payload=value, started_at=started_at, ended_at=now_ms()
        )
        if self.emits:
            self.emit_settled(chunk_id, canceled, call_id)
        self.settle(entry_id, StepRun(result=canceled), [idx])

    async def run_sleep(self, idx: int, entry: SleepEntry, value: Any) -> Outcome:
        chunk_id = self.chunk_id(entry.id)
        emit = self.emits
        started_at = now_ms()
        try:
            seconds = await self.sleep_seconds(entry, value, chunk_id)
        except trio.Cancelled:
            raise
        except BaseException as exc:
            if is_fatal(exc):
                raise
            result = StepResult(
                status=_S.FAILED, payload=value, error=exc, started_at=started_at, ended_at=now_ms()
            )
            if emit:
                self.emit_settled(chunk_id, result, None)
            self.settle(entry.id, StepRun(result=result), [idx])
            return Outcome(_S.FAILED, error=exc)
        if emit:
            waiting = StepWaitingPayload(
                id=chunk_id, step_name=chunk_id, payload=to_jsonable(value), started_at=started_at
            )
            self.publish(WorkflowStepWaiting, waiting)
        if self.is_root:
            await self.execution.persist(RunStatus.WAITING)
        try:
            await trio.sleep(seconds)
        except trio.Cancelled:
            self._settle_canceled(idx, entry.id, chunk_id, value, started_at)
            raise
        result = StepResult(
            status=_S.SUCCESS, payload=value, output=value, started_at=started_at, ended_at=now_ms()
        )
        if emit:
            self.emit_settled(chunk_id, result, None)
        self.settle(entry.id, StepRun(result=result), [idx])
        return Outcome(_S.SUCCESS, output=value)

    async def sleep_seconds(self, entry: SleepEntry, value: Any, chunk_id: str) -> float:
        if entry.until is not None:
            when = entry.until
            if callable(when):
                when = await call_maybe_async(when, self.make_context(entry.id, chunk_id, value))
            if not isinstance(when, _dt.datetime) or when.tzinfo is None:
                raise ValueError(f"sleep_until needs an aware datetime, got {when!r}")
            return max(0.0, (when - _dt.datetime.now(_dt.UTC)).total_seconds())
        seconds = entry.seconds
        if callable(seconds):
            seconds = await call_maybe_async(seconds, self.make_context(entry.id, chunk_id, value))
        if isinstance(seconds, _dt.timedelta):
            seconds = seconds.total_seconds()
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not (seconds >= 0 and math.isfinite(seconds))
        ):
            raise ValueError(f"sleep needs a finite number of seconds >= 0, got {seconds!r}")
        return float(seconds)


def _start_times(
    resume: NodeResume | None, stored: dict[str, Any] | None = None
) -> tuple[int, int | None]:
    """``(started_at, resumed_at)`` of a node starting now: a resumed node keeps the start
    time of its first execution (Mastra 1.71 reports both), and is resumed now."""
    now = now_ms()
    if resume is None:
        return now, None
    source = stored if stored is not None else resume.stored
    first = (source or {}).get("started_at")
    return (first if isinstance(first, int) else now), now


def _canceled_result(
    value: Any,
    announced: Announced,
    resume: NodeResume | None,
    prior: dict[str, Any] | None,
    iteration: int,
) -> StepResult:
    """The result of a node interrupted by cancellation: its start (and resume) as its
    ``workflow-step-result`` chunk reports them. A nested workflow's progress record stays
    (its metadata): a restart continues it."""
    if nested_header(prior):
        metadata = (prior or {}).get("metadata")
    else:
        metadata = {ITERATION_COUNT: iteration} if iteration else None
        if resume is not None and _resume_count(prior):
            # A restart replaying this resume counts from the resumes before it, so the
            # step gets the same idempotency key again.
            metadata = {**(metadata or {}), RESUME_COUNT: _resume_count(prior)}
    return StepResult(
        status=_S.CANCELED,
        payload=value,
        started_at=announced.started_at,
        ended_at=now_ms(),
        resume_payload=resume.data if resume is not None else None,
        resumed_at=announced.resumed_at,
        metadata=metadata,
    )


def _resume_count(stored: dict[str, Any] | None) -> int:
    """How many resumes a stored step result (or foreach item record) has had."""
    count = ((stored or {}).get("metadata") or {}).get(RESUME_COUNT)
    return count if type(count) is int else 0


def _tripwire_metadata(metadata: Any) -> dict[str, Any] | None:
    """A TripwireError's metadata as stored and sent: strict JSON values as they are, any
    other value as its repr (as an error's attributes are), never a failure of its own."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        return {"value": _describe(metadata)}
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        try:
            out[_safe_text(str(key))] = to_strict_jsonable(value)
        except Exception:
            out[_safe_text(str(key))] = _describe(value)
    return out


class _Label:
    """A resume label found below a level: its name, the path below, the iteration."""

    __slots__ = ("foreach_index", "name", "path")

    def __init__(self, name: str, path: list[str], foreach_index: int | None = None) -> None:
        self.name = name
        self.path = path
        self.foreach_index = foreach_index


def _entry_span(entry: Entry) -> tuple[str, str]:
    if isinstance(entry, ParallelEntry):
        return "workflow_parallel", "parallel: " + ", ".join(entry.ids)
    if isinstance(entry, BranchEntry):
        return "workflow_conditional", "branch: " + ", ".join(entry.ids)
    if isinstance(entry, LoopEntry):
        return "workflow_loop", f"{entry.kind}: {entry.node.id}"
    if isinstance(entry, ForeachEntry):
        return "workflow_loop", f"foreach: {entry.node.id}"
    if isinstance(entry, SleepEntry):
        return "workflow_sleep", f"sleep: {entry.id}"
    return "workflow_step", entry.ids[0]


def _not_json(what: str, value: Any) -> NotJsonError | None:
    """The error for a value that cannot be stored (not strict JSON), or None."""
    if plainly_json(value):
        return None
    try:
        to_strict_jsonable(value)
    except JsonValueError as exc:
        return NotJsonError(what, exc.path, exc.reason)
    return None


def _not_json_produced(ctx: StepContext, output: Any) -> NotJsonError | None:
    """What a step produced that cannot be stored: the step fails with it (SPEC §0)."""
    if ctx._new_state is None and not ctx._suspended and not ctx._bailed:
        # The step path: a plain output, checked without building anything.
        return _not_json("Step output", output)
    checks: list[tuple[str, Any]] = []
    if ctx._new_state is not None:
        checks.append(("State update", ctx._new_state))
    if ctx._suspended:
        checks.append(("Suspend payload", ctx._suspend_payload))
        checks.append(("Step output", output))
    elif ctx._bailed:
        checks.append(("Bail value", ctx._bail_value))
    else:
        checks.append(("Step output", output))
    for what, value in checks:
        problem = _not_json(what, value)
        if problem is not None:
            return problem
    return None


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    return {dict: "dict", list: "list", str: "str", int: "int", float: "float"}.get(
        type(value), type(value).__name__
    )


async def _call_with_timeout(node: Step, ctx: StepContext) -> Any:
    """Run one attempt; a timeout becomes StepTimeoutError (also when the step swallowed
    the cancellation, which voids trio's own TooSlowError)."""
    if node.timeout is None:
        return await node.execute(ctx)
    scope = trio.CancelScope(deadline=trio.current_time() + node.timeout)
    try:
        with scope:
            output = await node.execute(ctx)
    except Exception as exc:
        if scope.cancel_called:
            raise StepTimeoutError(node.id, node.timeout) from exc
        raise
    if scope.cancel_called:
        raise StepTimeoutError(node.id, node.timeout)
    return output


# --- one execution of a run -------------------------------------------------------------


class Execution:
    """One start, resume or restart of a run. Created by the Run, executed as a task in the
    runtime's nursery."""

    def __init__(
        self,
        *,
        runtime: Runtime,
        hub: RunHub,
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
        status = _run_status(outcome)
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
        status = _run_status(outcome)
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


def _run_status(outcome: Outcome) -> RunStatus:
    status = outcome.status
    if status is _S.BAILED:
        return RunStatus.SUCCESS
    if status is _S.TRIPWIRE:
        return RunStatus.TRIPWIRE
    if status is _S.FAILED and outcome.tripwire is not None:
        return RunStatus.TRIPWIRE
    return RunStatus(status.value)
