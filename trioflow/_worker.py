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
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from ._core._model import RunSnapshot
from ._engine import Execution
from ._errors import TrioflowError
from ._groups import is_fatal

if TYPE_CHECKING:
    from ._runtime import Runtime
    from .storage.postgres import ClaimedRun

logger = logging.getLogger("trioflow.worker")


class QueueStorage(Protocol):
    """What a storage offers workers (PostgresStorage does)."""

    async def claim_runnable(self, workflow_ids: Any, *, limit: int) -> list[ClaimedRun]: ...

    async def release_lease(self, run_id: str, *, unqueue: bool = False) -> None: ...

    def watch_queue(self, event: trio.Event) -> Any: ...


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
        self, runtime: Runtime, storage: QueueStorage, *, capacity: int, poll_interval: float
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
            run = await runtime.create_run(workflow, run_id=snapshot.run_id)
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
            began = await run.begin_restart()
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
            self._failed += 1
            logger.error("worker could not begin run %s: %r", snapshot.run_id, exc, exc_info=exc)
            with trio.CancelScope(shield=True):  # noqa: ASYNC912 - a storage call
                try:
                    await self._storage.release_lease(snapshot.run_id, unqueue=queued)
                except TrioflowError as release_exc:
                    logger.warning("could not release run %s: %s", snapshot.run_id, release_exc)
            return None
