"""The runtime: owns the nursery every execution runs in, the storage, and the per-run hubs."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import uuid
import weakref
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, cast

import trio

from ._admit import admit_start, check_run_ids, row_count, unstorable_id
from ._broadcast import EventLog
from ._core._errors import (
    NoRuntimeError,
    RunAlreadyStartedError,
    RunNotActiveError,
    SnapshotNotFoundError,
    StorageError,
)
from ._core._json import id_text_problem
from ._core._model import RunInfo, RunSnapshot, RunState, WorkflowResult
from ._core._status import RunStatus
from ._driver._execution import SHIELDED_WRITE_GRACE, Execution
from ._effects import call_maybe_async, now_ms
from ._groups import is_fatal, unwrap_groups
from ._hub import RunHub as RunHub
from ._hub import result_from_snapshot as result_from_snapshot
from ._run import Run
from ._worker import Worker, after_execution_died
from ._workflow import WorkflowGraph
from .storage import MemoryStorage, Storage
from .storage._protocol import LeasingStorage, QueueStorage
from .tracing._guard import GuardedTracer

#: What ``isinstance(x, Storage)`` asks of a storage (named in the error when it fails).
_STORAGE_MEMBERS = frozenset(
    {"durable", *(name for name in vars(Storage) if not name.startswith("_"))}
)

logger = logging.getLogger("trioflow")

_current_runtime: contextvars.ContextVar[Runtime] = contextvars.ContextVar("trioflow_runtime")


def current_runtime() -> Runtime:
    """The innermost open runtime; NoRuntimeError outside ``open_runtime()``."""
    try:
        return _current_runtime.get()
    except LookupError:
        raise NoRuntimeError(
            "no trioflow runtime is open: create runs inside `async with tf.open_runtime():`"
        ) from None


class _ExecutionHost:
    """The Runtime as its executions see it (the driver's ExecutionHost protocol): the
    lifecycle callbacks stay a private method of the Runtime."""

    __slots__ = ("_runtime",)

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    @property
    def storage(self) -> Storage:
        return self._runtime.storage

    @property
    def tracer(self) -> Any:
        return self._runtime.tracer

    def finishing_scope(self) -> contextlib.AbstractContextManager[trio.CancelScope]:
        return self._runtime.finishing_scope()

    async def run_callbacks(self, workflow: WorkflowGraph, result: WorkflowResult) -> None:
        await self._runtime._run_callbacks(workflow, result)


class Runtime:
    """Owns the nursery every execution runs in. Get one from :func:`open_runtime`."""

    def __init__(self, storage: Storage, tracer: Any, nursery: trio.Nursery) -> None:
        self.storage = storage
        self.tracer: Any = None if tracer is None else GuardedTracer(tracer)
        self._nursery = nursery
        self._workflows: dict[str, WorkflowGraph] = {}
        self._hubs: weakref.WeakValueDictionary[str, RunHub] = weakref.WeakValueDictionary()
        #: The claim loop, when this runtime is a worker (``open_runtime(worker=True)``).
        self.worker: Worker | None = None
        #: Executions of a run that may die of an error before it ends ``failed``, and the
        #: first backoff (PostgreSQL: see ``open_runtime``).
        self.max_attempts = 5
        self.retry_delay = 1.0
        #: When the runtime began closing (trio time): the deadline of final writes.
        self._closing_deadline: float | None = None
        self._finishing: set[trio.CancelScope] = set()
        self._execution_host = _ExecutionHost(self)

    # --- closing --------------------------------------------------------------------------

    @contextmanager
    def finishing_scope(self) -> Iterator[trio.CancelScope]:
        """A shielded scope for an execution's final write: no deadline while the runtime
        is open (a slow storage delays the result, nothing is lost), at most
        ``SHIELDED_WRITE_GRACE`` seconds once it is closing."""
        with trio.CancelScope(shield=True) as scope:
            if self._closing_deadline is not None:
                scope.deadline = self._closing_deadline
            self._finishing.add(scope)
            try:
                yield scope
            finally:
                self._finishing.discard(scope)

    def begin_closing(self) -> None:
        """Final writes under way (and any that start now) get ``SHIELDED_WRITE_GRACE``."""
        if self._closing_deadline is None:
            self._closing_deadline = trio.current_time() + SHIELDED_WRITE_GRACE
        for scope in self._finishing:
            scope.deadline = min(scope.deadline, self._closing_deadline)

    # --- workflows ------------------------------------------------------------------------

    def register(self, workflow: WorkflowGraph) -> None:
        """Make ``workflow`` findable by id (for the bridge and the CLI); commits it."""
        if not isinstance(workflow, WorkflowGraph):
            raise TypeError(f"expected a Workflow, got {workflow!r}")
        existing = self._workflows.get(workflow.id)
        if existing is not None and existing is not workflow:
            raise ValueError(f"another workflow with id {workflow.id!r} is registered")
        workflow.commit()
        self._workflows[workflow.id] = workflow

    def get_workflow(self, workflow_id: str) -> WorkflowGraph:
        """The registered workflow with that id (KeyError if unknown)."""
        try:
            return self._workflows[workflow_id]
        except KeyError:
            raise KeyError(f"no workflow registered with id {workflow_id!r}") from None

    @property
    def workflows(self) -> dict[str, WorkflowGraph]:
        return dict(self._workflows)

    # --- runs ---------------------------------------------------------------------------------

    async def create_run(
        self,
        workflow: WorkflowGraph | str,
        *,
        run_id: str | None = None,
        resource_id: str | None = None,
    ) -> Run:
        """A Run of ``workflow`` (a WorkflowGraph, or the id of a registered one).

        With the id of a stored run, the Run is bound to it; otherwise a ``pending`` run is
        stored.
        """
        wf = self.get_workflow(workflow) if isinstance(workflow, str) else workflow
        if not isinstance(wf, WorkflowGraph):
            raise TypeError(f"expected a Workflow or a workflow id, got {workflow!r}")
        wf.check_runnable()
        check_run_ids(run_id, resource_id)
        # A fresh id cannot be stored yet: insert without looking first.
        snapshot = None if run_id is None else await self.storage.load_snapshot(run_id)
        if snapshot is None:
            created = now_ms()
            snapshot = RunSnapshot(
                run_id=run_id if run_id is not None else str(uuid.uuid4()),
                workflow_id=wf.id,
                resource_id=resource_id,
                status=RunStatus.PENDING,
                created_at=created,
                updated_at=created,
            )
            if not await self.storage.create_run(snapshot):
                stored = await self.storage.load_snapshot(snapshot.run_id)
                if stored is None:
                    raise SnapshotNotFoundError(wf.id, snapshot.run_id)
                snapshot = stored
        if snapshot.workflow_id != wf.id:
            raise ValueError(
                f"run {snapshot.run_id} belongs to workflow {snapshot.workflow_id!r}, not {wf.id!r}"
            )
        # Every path above awaited storage (a fresh id is inserted, a given one looked up).
        return self._bind_run(wf, snapshot)  # noqa: ASYNC910

    def _bind_run(self, workflow: WorkflowGraph, snapshot: RunSnapshot) -> Run:
        """A Run of ``workflow`` bound to the stored ``snapshot`` (a worker's claim returns
        it: no second load)."""
        return Run(self, workflow, self._hub_for(snapshot), snapshot)

    def _hub_for(self, snapshot: RunSnapshot) -> RunHub:
        """The in-process hub of a stored run (made on first use: its log continues after
        the snapshot's ``last_seq``; executions resync with storage before publishing)."""
        hub = self._hubs.get(snapshot.run_id)
        if hub is None:
            log = EventLog(snapshot.run_id, self.storage, next_seq=snapshot.last_seq + 1)
            hub = RunHub(snapshot.run_id, log, snapshot.status)
            log.owner = hub
            self._hubs[snapshot.run_id] = hub
        return hub

    def _stop_execution(self, run_id: str, reason: str) -> None:
        """Storage says this process must stop executing ``run_id``: canceled by another
        process, or the lease on it was lost (another process continues it)."""
        hub = self._hubs.get(run_id)
        execution = hub.execution if hub is not None else None
        storage = self.storage
        forget = storage.forget_lost_lease if isinstance(storage, LeasingStorage) else None
        if execution is None:
            if reason == "lease-lost" and forget is not None:
                forget(run_id)
            return
        logger.warning("run %s: stopping its execution here (%s)", run_id, reason)
        execution.request_cancel(
            "canceled by another process" if reason == "canceled" else "lease lost"
        )
        if reason == "lease-lost" and forget is not None:

            async def forget_when_done() -> None:
                await execution.done.wait()
                forget(run_id)

            self._nursery.start_soon(forget_when_done)

    async def enqueue(
        self,
        workflow: WorkflowGraph | str,
        *,
        input_data: Any = None,
        initial_state: Any = None,
        request_context: Any = None,
        run_id: str | None = None,
        resource_id: str | None = None,
    ) -> str:
        """Create a run and queue it for any worker (see :meth:`Run.start_async`).
        Returns its id. Raises what ``create_run`` and ``start_async`` raise, before
        anything is stored. Cancelling it may leave the run stored ``pending`` (a given
        ``run_id``) or queued."""
        if run_id is None:
            # A fresh id cannot be stored yet: the queue's insert is the only write.
            return await self._enqueue_fresh(
                workflow, input_data, initial_state, request_context, resource_id
            )
        run = await self.create_run(workflow, run_id=run_id, resource_id=resource_id)
        await run.start_async(
            input_data=input_data, initial_state=initial_state, request_context=request_context
        )
        return run.run_id

    async def _enqueue_fresh(
        self,
        workflow: WorkflowGraph | str,
        input_data: Any,
        initial_state: Any,
        request_context: Any,
        resource_id: str | None,
    ) -> str:
        wf = self.get_workflow(workflow) if isinstance(workflow, str) else workflow
        if not isinstance(wf, WorkflowGraph):
            raise TypeError(f"expected a Workflow or a workflow id, got {workflow!r}")
        check_run_ids(None, resource_id)
        storage = self.storage
        if not isinstance(storage, QueueStorage):
            raise TypeError(
                f"{type(storage).__name__} has no run queue: start_async() "
                "needs a storage that workers share, such as PostgresStorage"
            )
        admitted = admit_start(wf, input_data, initial_state, request_context)
        created = now_ms()
        snapshot = RunSnapshot(
            run_id=str(uuid.uuid4()),
            workflow_id=wf.id,
            resource_id=resource_id,
            status=RunStatus.PENDING,
            input=admitted.input_json,
            state=admitted.state_json,
            request_context=admitted.context_json,
            created_at=created,
            updated_at=created,
        )
        if not await storage.enqueue_run(snapshot):
            raise RunAlreadyStartedError(f"run {snapshot.run_id} already started or queued")
        return snapshot.run_id

    def _spawn(self, execution: Execution) -> None:
        """Run ``execution`` in this runtime's nursery (what RunHost asks)."""
        execution.hub.execution_started(execution)
        self._nursery.start_soon(self._execute, execution, name=f"trioflow run {execution.run_id}")

    async def _execute(self, execution: Execution) -> None:
        await execution.run()
        if execution.failure is not None and execution.result is None:
            # The execution died (storage failing, an engine bug) with its run left
            # running: give up its lease, so a worker restarts it instead of it staying
            # owned by this live process forever; on PostgreSQL the attempt is counted,
            # retried after a backoff, and the run fails after max_attempts.
            with trio.CancelScope(shield=True):  # noqa: ASYNC912 - a storage call
                try:
                    await after_execution_died(self, execution.run_id, execution.failure)
                except Exception as exc:
                    logger.warning("run %s: could not release its lease: %s", execution.run_id, exc)

    def ended_elsewhere(self, snapshot: RunSnapshot) -> None:
        """A run ended without an execution here (given up by a worker): its hub, if
        this process has one, learns the result."""
        hub = self._hubs.get(snapshot.run_id)
        if hub is not None:
            hub.ended_outside(result_from_snapshot(snapshot))

    async def list_runs(
        self,
        *,
        workflow_id: str | None = None,
        status: RunStatus | str | None = None,
        resource_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[RunInfo]:
        """Stored runs, newest first, filtered by every given field.

        ``limit`` and ``offset`` are ints >= 0 (else ValueError); past every stored run
        the list is empty, however large the offset. A filter id that no backend can
        store (a lone surrogate, NUL) matches no run.
        """
        if status is not None:
            status = RunStatus(status)
        limit = row_count("limit", limit)
        offset = row_count("offset", offset)
        for name, value in (("workflow_id", workflow_id), ("resource_id", resource_id)):
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a str or None, got {value!r}")
        if any(v is not None and id_text_problem(v) for v in (workflow_id, resource_id)):
            await trio.lowlevel.checkpoint()
            return []
        return await self.storage.list_runs(
            workflow_id=workflow_id,
            status=status,
            resource_id=resource_id,
            limit=limit,
            offset=offset,
        )

    async def get_run_state(self, run_id: str) -> RunState:
        """Everything stored about a run; SnapshotNotFoundError when there is none."""
        snapshot = await self._load_by_id(run_id)
        if snapshot is None:
            raise SnapshotNotFoundError(None, run_id)
        result = result_from_snapshot(snapshot)
        return RunState(
            run_id=snapshot.run_id,
            workflow_id=snapshot.workflow_id,
            resource_id=snapshot.resource_id,
            status=snapshot.status,
            input=snapshot.input,
            state=snapshot.state,
            steps=result.steps,
            all_steps=result.all_steps,
            suspended=result.suspended,
            result=snapshot.result,
            error=snapshot.error,
            created_at=snapshot.created_at,
            updated_at=snapshot.updated_at,
        )

    async def delete_run(self, run_id: str) -> bool:
        """Delete a stored run and its event log. True when it existed."""
        hub = self._hubs.get(run_id)
        if hub is not None and hub.execution is not None:
            raise RuntimeError(f"run {run_id} is executing; cancel it before deleting it")
        if unstorable_id(run_id):
            await trio.lowlevel.checkpoint()
            return False
        return await self.storage.delete_run(run_id)

    async def _load_by_id(self, run_id: str) -> RunSnapshot | None:
        """The stored snapshot of ``run_id``; None also for an id no backend can store
        (every backend answers alike, none is asked to encode it)."""
        if unstorable_id(run_id):
            await trio.lowlevel.checkpoint()
            return None
        return await self.storage.load_snapshot(run_id)

    async def _run_callbacks(  # noqa: ASYNC910 - internal
        self, workflow: WorkflowGraph, result: WorkflowResult
    ) -> None:
        """``on_finish`` after every execution, ``on_error`` for failed/tripwire runs.
        Their exceptions are logged and swallowed."""
        callbacks = [workflow.on_finish]
        if result.status in (RunStatus.FAILED, RunStatus.TRIPWIRE):
            callbacks.append(workflow.on_error)
        for callback in callbacks:
            if callback is None:
                continue
            try:
                await call_maybe_async(callback, result)
            except trio.Cancelled:
                raise
            except BaseException as exc:
                if is_fatal(exc):
                    raise
                logger.error("workflow %r: lifecycle callback raised", workflow.id, exc_info=exc)

    async def restart_active_runs(self) -> list[str]:
        """Restart every stored ``running``/``waiting`` run of a registered workflow
        (in the background). Returns their ids."""
        restarted: list[str] = []
        for status in (RunStatus.RUNNING, RunStatus.WAITING):
            offset = 0
            while True:
                page = await self.storage.list_runs(status=status, limit=500, offset=offset)
                if not page:
                    break
                offset += len(page)
                for info in page:
                    workflow = self._workflows.get(info.workflow_id)
                    if workflow is None:
                        logger.warning(
                            "run %s of unregistered workflow %r left as is",
                            info.run_id,
                            info.workflow_id,
                        )
                        continue
                    if await self._restart_stored(workflow, info.run_id):
                        restarted.append(info.run_id)
        return restarted

    async def _restart_stored(self, workflow: WorkflowGraph, run_id: str) -> bool:
        """Restart one stored run in the background; False when it is not ours to
        restart, or its stored record cannot be read (logged: one damaged run must not
        keep the others from restarting, nor the runtime from opening)."""
        try:
            run = await self.create_run(workflow, run_id=run_id)
            await run._begin_restart()
        except (RunNotActiveError, RunAlreadyStartedError):
            # Finished meanwhile, or executing in a live process that holds its lease
            # (PostgreSQL): not ours to restart.
            restarted = False
        except StorageError as exc:
            logger.error("run %s left as is: it could not be restarted: %s", run_id, exc)
            restarted = False
        else:
            restarted = True
        await trio.lowlevel.checkpoint()
        return restarted


@asynccontextmanager
async def open_runtime(
    *,
    storage: Storage | None = None,
    workflows: Iterable[WorkflowGraph] = (),
    restart_active_runs: bool = False,
    tracer: Any = None,
    worker: bool = False,
    worker_capacity: int = 64,
    worker_poll_interval: float = 1.0,
    worker_max_attempts: int = 5,
    worker_retry_delay: float = 1.0,
) -> AsyncIterator[Runtime]:
    """Open a runtime: the nursery every run executes in.

    Leaving the block stops the runtime: executions still running are cancelled with their
    last snapshot left ``running``, so ``restart()`` (or ``restart_active_runs=True`` at
    the next boot, or any worker on a shared storage) continues them. A storage passed in
    stays open (its owner closes it); the default MemoryStorage is discarded.

    With a storage that coordinates processes (PostgresStorage), the runtime also listens
    for its notifications and keeps the leases of the runs it executes; leaving the block
    releases them. ``worker=True`` makes this runtime a worker: it claims queued runs and
    runs whose process died, of the workflows registered here, and executes at most
    ``worker_capacity`` at once (see ``docs/scaling.md``).

    On such a storage, an execution that dies of an error (not a step's failure: storage
    failing, an engine bug) counts as a failed attempt, stored with the run: no worker
    claims the run again for ``worker_retry_delay`` seconds, doubled at every attempt (at
    most 300 s), and after ``worker_max_attempts`` attempts the run ends ``failed`` with
    the error instead of running again.
    """
    if (
        isinstance(worker_max_attempts, bool)
        or not isinstance(worker_max_attempts, int)
        or (worker_max_attempts < 1)
    ):
        raise ValueError(f"worker_max_attempts must be an int >= 1, got {worker_max_attempts!r}")
    if (
        isinstance(worker_retry_delay, bool)
        or not isinstance(worker_retry_delay, int | float)
        or not worker_retry_delay >= 0
        or worker_retry_delay == float("inf")
    ):
        raise ValueError(
            f"worker_retry_delay must be a finite number of seconds >= 0, got {worker_retry_delay!r}"
        )
    owned = storage is None
    store: Storage = MemoryStorage() if storage is None else storage
    if not isinstance(cast(object, store), Storage):  # the annotation is no guarantee
        missing = sorted(name for name in _STORAGE_MEMBERS if not hasattr(store, name))
        raise TypeError(
            f"storage must implement trioflow.storage.Storage; {type(store).__name__} "
            f"lacks {', '.join(missing)}"
        )
    serve = store.serve if isinstance(store, LeasingStorage) else None
    if worker and not isinstance(store, QueueStorage):
        raise TypeError(
            f"worker=True needs a storage with a run queue (PostgresStorage), "
            f"not {type(store).__name__}"
        )
    try:
        # The user sees the exception their block raised, not the nursery's group.
        with unwrap_groups() as guard:
            async with trio.open_nursery() as nursery:
                runtime = Runtime(store, tracer, nursery)
                runtime.max_attempts = worker_max_attempts
                runtime.retry_delay = float(worker_retry_delay)
                for workflow in workflows:
                    runtime.register(workflow)
                token = _current_runtime.set(runtime)
                try:
                    if serve is not None:
                        await nursery.start(serve, runtime._stop_execution)
                    if restart_active_runs:
                        await runtime.restart_active_runs()
                    if worker:
                        assert isinstance(store, QueueStorage)
                        runtime.worker = Worker(
                            runtime,
                            store,
                            capacity=worker_capacity,
                            poll_interval=worker_poll_interval,
                        )
                        await nursery.start(runtime.worker.run)
                    try:
                        yield runtime
                    except BaseException as exc:
                        guard.user_error = exc
                        raise
                finally:
                    _current_runtime.reset(token)
                    runtime.begin_closing()
                    nursery.cancel_scope.cancel(reason="trioflow runtime closed")
    finally:
        if isinstance(store, LeasingStorage):
            with trio.CancelScope(shield=True):
                try:
                    await store.release_leases()
                except Exception as exc:  # the leases expire anyway
                    logger.warning("could not release the runs' leases: %s", exc)
        if owned:
            with trio.CancelScope(shield=True):
                await store.aclose()
