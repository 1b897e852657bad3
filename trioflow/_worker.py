"""The worker loop: claim runnable runs from a shared storage and execute them here.

A worker (``open_runtime(worker=True)``) repeatedly claims, with ``FOR UPDATE SKIP
LOCKED``, runs of its registered workflows that need a process: queued ``pending`` runs
(``run.start_async()``/``runtime.enqueue()``) and ``running``/``waiting`` runs whose lease
lapsed (their process died). A queued run is started, a lapsed one restarted from its last
snapshot. It waits for a ``NOTIFY trioflow_queue`` or ``poll_interval`` between rounds,
and never executes more than ``capacity`` runs at once.
"""

from __future__ import annotations

import logging
from typing import Protocol

import attrs
import trio

from ._core._errors import LeaseLostError, TrioflowError
from ._core._model import RunSnapshot, SerializedError
from ._core._plan._run import ending_chunks
from ._core._plan._values import Outcome
from ._core._serde import dump_error, load_error
from ._core._status import RunStatus, StepStatus
from ._driver._execution import Execution
from ._effects import now_ms
from ._groups import is_fatal
from ._run import Run
from ._workflow import WorkflowGraph
from .storage import Storage
from .storage._protocol import (
    AttemptCountingStorage,
    ClaimedRun,
    LeasingStorage,
    QueueStorage,
    save_changed_steps,
)


class WorkerHost(Protocol):
    """What the claim loop uses of its runtime (the Runtime), declared here so that this
    module never imports the layer above it."""

    @property
    def storage(self) -> Storage: ...

    @property
    def workflows(self) -> dict[str, WorkflowGraph]: ...

    @property
    def max_attempts(self) -> int: ...

    @property
    def retry_delay(self) -> float: ...

    def ended_elsewhere(self, snapshot: RunSnapshot) -> None: ...

    def _bind_run(self, workflow: WorkflowGraph, snapshot: RunSnapshot) -> Run:
        """A Run of ``workflow`` bound to the stored ``snapshot`` (no storage call)."""
        ...

logger = logging.getLogger("trioflow.worker")


@attrs.frozen(kw_only=True)
class WorkerStatistics:
    """What a worker did so far."""

    active: int
    capacity: int
    started: int
    restarted: int
    failed_to_begin: int


class Worker:
    """The claim loop of one runtime (see the module docstring)."""

    def __init__(
        self, runtime: WorkerHost, storage: QueueStorage, *, capacity: int, poll_interval: float
    ) -> None:
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"worker_capacity must be an int >= 1, got {capacity!r}")
        if not isinstance(poll_interval, (int, float)) or poll_interval <= 0:
            raise ValueError(f"worker_poll_interval must be > 0 seconds, got {poll_interval!r}")
        self._runtime = runtime
        self._storage = storage
        self.capacity = capacity
        self.poll_interval = float(poll_interval)
        self._active = 0
        self._started = 0
        self._restarted = 0
        self._failed = 0
        self._freed = trio.Event()

    def statistics(self) -> WorkerStatistics:
        return WorkerStatistics(
            active=self._active,
            capacity=self.capacity,
            started=self._started,
            restarted=self._restarted,
            failed_to_begin=self._failed,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Claim and execute until cancelled. Executions run in the runtime's nursery, so
        they outlive a cancelled claim loop only as long as the runtime does."""
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                queued = trio.Event()
                unwatch = self._storage.watch_queue(queued)
                try:
                    claimed: list[ClaimedRun] = []
                    free = self.capacity - self._active
                    if free > 0:
                        workflows = list(self._runtime.workflows)
                        try:
                            claimed = await self._storage.claim_runnable(workflows, limit=free)
                        except TrioflowError as exc:
                            logger.warning("worker could not claim runs: %s", exc)
                    for item in claimed:
                        self._active += 1
                        nursery.start_soon(self._execute, item)
                    if claimed and len(claimed) == free:
                        continue  # more may be waiting
                    with trio.move_on_after(self.poll_interval):
                        if self._active >= self.capacity:
                            await self._freed.wait()
                        else:
                            await queued.wait()
                finally:
                    unwatch()

    async def _execute(self, item: ClaimedRun) -> None:
        run_id = item.snapshot.run_id
        try:
            if not item.queued and item.attempts >= self._runtime.max_attempts:
                # Its executions died max_attempts times (the last give-up could not be
                # written): end it failed without running any step again.
                error = load_error(item.last_error) or SerializedError(
                    message="its executions kept dying", name="RuntimeError"
                )
                await give_up(self._runtime, run_id, error, item.attempts)
                return
            execution = await self._begin(item.snapshot, queued=item.queued)
            if execution is not None:
                await execution.done.wait()
        finally:
            self._active -= 1
            self._freed.set()
            self._freed = trio.Event()
            logger.debug("worker finished with run %s", run_id)

    async def _begin(self, snapshot: RunSnapshot, *, queued: bool) -> Execution | None:
        await trio.lowlevel.checkpoint()
        runtime = self._runtime
        workflow = runtime.workflows.get(snapshot.workflow_id)
        try:
            if workflow is None:
                raise KeyError(f"workflow {snapshot.workflow_id!r} is not registered here")
            # The claim returned the stored snapshot: bind to it without loading it again.
            workflow.check_runnable()
            run = runtime._bind_run(workflow, snapshot)
            if queued:
                execution = await run._begin_start(
                    input_data=snapshot.input,
                    initial_state=snapshot.state,
                    request_context=snapshot.request_context,
                    tracing_options=None,
                    per_step=False,
                )
                self._started += 1
                return execution
            began = await run._begin_restart()
            self._restarted += 1
            return began if isinstance(began, Execution) else None
        except trio.Cancelled:
            raise
        except BaseException as exc:
            if is_fatal(exc):
                raise
            # The run cannot begin here (its input no longer validates, on_start raised,
            # even a BaseException subclass, another process took it): give it back; a
            # queued run leaves the queue so it is not claimed forever.
            logger.error("worker could not begin run %s: %r", snapshot.run_id, exc, exc_info=exc)
            with trio.CancelScope(shield=True):  # noqa: ASYNC912 - a storage call
                try:
                    if queued:
                        await self._storage.release_lease(snapshot.run_id, unqueue=True)
                    else:
                        # A restart that cannot begin would be claimed again at once.
                        await after_execution_died(runtime, snapshot.run_id, exc)
                except TrioflowError as release_exc:
                    logger.warning("could not release run %s: %s", snapshot.run_id, release_exc)
                finally:
                    # Counted once the run is given back: statistics() never reports a
                    # run as given up while storage still shows it claimed.
                    self._failed += 1
            return None


async def after_execution_died(runtime: WorkerHost, run_id: str, failure: BaseException) -> None:
    """An execution of ``run_id`` died of ``failure`` here with its run left executing.

    On a storage that counts attempts (PostgreSQL), the attempt is stored and the run is
    not claimed again before a backoff; after ``runtime.max_attempts`` the run ends
    ``failed`` with the error (:func:`give_up`). Otherwise its lease (if any) is released
    so a worker restarts it. Cancelling this call may leave the lease held until it
    expires."""
    storage = runtime.storage
    if not isinstance(storage, AttemptCountingStorage) or isinstance(failure, LeaseLostError):
        # A lost lease: another process continues the run; not this run's failure.
        if isinstance(storage, LeasingStorage):
            await storage.release_lease(run_id)
        else:
            await trio.lowlevel.checkpoint()
        return
    attempts = await storage.record_failed_attempt(
        run_id, dump_error(failure), retry_delay=runtime.retry_delay
    )
    if attempts >= runtime.max_attempts:
        await give_up(runtime, run_id, dump_error_as_serialized(failure), attempts)
    elif attempts:
        logger.warning(
            "run %s: execution died (attempt %d of %d): %r; retried after a backoff",
            run_id,
            attempts,
            runtime.max_attempts,
            failure,
        )


def dump_error_as_serialized(failure: BaseException) -> SerializedError:
    error: SerializedError = load_error(dump_error(failure))
    return error


async def give_up(runtime: WorkerHost, run_id: str, error: SerializedError, attempts: int) -> bool:
    """End a stored ``running``/``waiting`` run ``failed`` with ``error`` (and its finish
    chunk), without executing anything: its executions died ``attempts`` times. True when
    written (False: it is no longer executing, or storage refused). Cancelling it may
    leave the run as it was (the next claim gives up again)."""
    storage = runtime.storage
    snapshot = await storage.load_snapshot(run_id)
    if snapshot is None or snapshot.status not in (RunStatus.RUNNING, RunStatus.WAITING):
        return False
    error = SerializedError(
        message=f"{error.message} (the run's executions died {attempts} times; gave up)",
        name=error.name,
        extra=error.extra,
        cause=error.cause,
    )
    last = await storage.last_seq(run_id)
    (finish,) = ending_chunks(
        run_id, last + 1, RunStatus.FAILED, Outcome(StepStatus.FAILED, error=error), snapshot.usage
    )
    failed = attrs.evolve(
        snapshot,
        status=RunStatus.FAILED,
        error=error,
        resume=None,
        last_seq=finish.seq,
        updated_at=now_ms(),
    )
    # Steps stay as stored: only the run row and the finish chunk are written.
    written = await save_changed_steps(
        storage,
        failed,
        [finish],
        expected_status=(RunStatus.RUNNING, RunStatus.WAITING),
        changed_steps=(),
    )
    if written:
        logger.error("run %s: failed after %d attempts: %s", run_id, attempts, error.message)
        runtime.ended_elsewhere(failed)
    return bool(written)
