"""The storage protocol every backend implements (Memory, SQLite, later PostgreSQL).

A backend holds, per run, one snapshot (:class:`RunSnapshot`) and the append-only event
log keyed by ``(run_id, seq)``. Writes that change a run's status go through
:meth:`Storage.save_snapshot` with ``expected_status``: a compare-and-set, which is how
exactly one resume wins a suspension, also across processes. A snapshot and the chunks
that describe it are written in one transaction.

Optional capabilities are ``runtime_checkable`` protocols, asked with ``isinstance``
(PostgresStorage has them all): :class:`EventWatchingStorage` (a notification when a run's
stored log grows in another process), :class:`LeasingStorage` (leases on executing runs,
kept alive by ``serve``), :class:`QueueStorage` (a run queue for workers, with leases), and
:class:`AttemptCountingStorage` (``record_failed_attempt(run_id, error, *, retry_delay)
-> int``, which counts an execution that died of an error, stores the error, releases the
lease and keeps workers off the run for a doubling backoff; the runtime fails the run
after ``open_runtime(worker_max_attempts=...)`` such attempts). Whether a storage is
durable is not a capability but a value every storage states: ``Storage.durable``.

On Python 3.11 ``isinstance`` with these protocols looks attributes up with ``hasattr``, so
a wrapper forwarding through ``__getattr__`` (``trioflow.testing.ClockGuardStorage``) has
the capabilities of what it wraps; from Python 3.12 it looks them up statically and such a
wrapper must define the methods it forwards.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs

from .._core._chunks import Chunk
from .._core._model import RunInfo, RunSnapshot
from .._core._status import RunStatus

if TYPE_CHECKING:
    import trio


@runtime_checkable
class Storage(Protocol):
    #: Whether what is written survives the process. The engine writes a snapshot after
    #: every top-level entry only to durable storage (so a killed process loses at most the
    #: entry that was running); non-durable storage gets the snapshots that matter in
    #: process: claims, waiting, suspension, the end, and an interrupted execution.
    durable: bool

    async def create_run(self, snapshot: RunSnapshot) -> bool:
        """Insert ``snapshot`` unless a run with its id exists. True when inserted."""
        ...

    async def load_snapshot(self, run_id: str) -> RunSnapshot | None:
        """The stored snapshot, or None."""
        ...

    async def save_snapshot(
        self,
        snapshot: RunSnapshot,
        events: Sequence[Chunk] = (),
        *,
        expected_status: RunStatus | Sequence[RunStatus] | None = None,
        changed_steps: Collection[str] | None = None,
    ) -> bool:
        """Replace the run's snapshot and append ``events``, atomically.

        With ``expected_status``, only when the stored status is (one of) it; otherwise
        nothing is written and the result is False. Without a stored run: False.

        ``changed_steps`` (None: all of them) names the keys of ``snapshot.steps`` that
        changed since the run's last successful write: a durable backend stores only
        those step records (a named key no longer in ``snapshot.steps`` is deleted) and
        keeps the others as stored, so a write costs the same however many steps settled
        before it. The caller promises that every other key is stored with the value it
        has in ``snapshot``. What ``load_snapshot`` returns afterwards is ``snapshot``
        either way, its steps in the dict's order: a stored key keeps its place, new keys
        follow in the order ``changed_steps`` lists them (a ``set``: the snapshot's
        order, at the cost of a pass over every step); a key deleted and added again
        between two writes needs a whole write (None) to move to the end. With
        ``changed_steps``, the caller also promises that the stored
        ``step_execution_path`` is a prefix of ``snapshot.step_execution_path`` (an
        execution only appends to it): a backend may store only the new entries. A
        backend may ignore all this and store every step (MemoryStorage keeps the
        snapshot whole, and checks only the named records).

        A backend reads ``snapshot`` and may keep it, but never changes it (nor its
        ``steps`` dict or ``step_execution_path`` list): the engine brings a step dict
        nobody refers to any more up to date for a later write instead of copying it.
        """
        ...

    async def append_events(self, run_id: str, events: Sequence[Chunk]) -> None:
        """Append chunks (consecutive ``seq``) to the run's log."""
        ...

    async def read_events(
        self, run_id: str, *, from_seq: int = 1, limit: int | None = None
    ) -> Sequence[Chunk]:
        """Chunks with ``seq >= from_seq``, in order, at most ``limit``."""
        ...

    async def last_seq(self, run_id: str) -> int:
        """The highest stored ``seq`` of the run (0 when none)."""
        ...

    async def list_runs(
        self,
        *,
        workflow_id: str | None = None,
        status: RunStatus | None = None,
        resource_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[RunInfo]:
        """Runs matching every given filter, newest first."""
        ...

    async def delete_run(self, run_id: str) -> bool:
        """Remove the snapshot and the log. True when something was deleted."""
        ...

    async def aclose(self) -> None:
        """Release resources; the storage is unusable afterwards."""
        ...


_ACCEPTS_CHANGED_STEPS: dict[Any, bool] = {}


def _accepts_changed_steps(save: Callable[..., Any]) -> bool:
    func = getattr(save, "__func__", save)
    try:
        return _ACCEPTS_CHANGED_STEPS[func]
    except (KeyError, TypeError):
        pass
    try:
        parameter = inspect.signature(save).parameters.get("changed_steps")
    except (TypeError, ValueError):
        parameter = None
    accepts = parameter is not None and parameter.kind in (
        inspect.Parameter.KEYWORD_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )
    with contextlib.suppress(TypeError):
        _ACCEPTS_CHANGED_STEPS[func] = accepts
    return accepts


async def save_changed_steps(
    storage: Storage,
    snapshot: RunSnapshot,
    events: Sequence[Chunk],
    *,
    expected_status: RunStatus | Sequence[RunStatus] | None,
    changed_steps: Collection[str] | None,
) -> bool:
    """``storage.save_snapshot`` with ``changed_steps`` when its ``save_snapshot`` takes
    that keyword (a storage written before it existed, or a wrapper that does not pass it
    on, stores every step instead). Cancelling it is cancelling ``save_snapshot``."""
    save = storage.save_snapshot
    if changed_steps is not None and _accepts_changed_steps(save):
        return await save(
            snapshot, events, expected_status=expected_status, changed_steps=changed_steps
        )
    return await save(snapshot, events, expected_status=expected_status)


@attrs.frozen(kw_only=True)
class ClaimedRun:
    """A runnable run a worker claimed from a :class:`QueueStorage` (its lease is held by
    this storage)."""

    snapshot: RunSnapshot
    queued: bool
    fencing_token: int
    #: Executions of the run that died of an error so far (stored, across processes).
    attempts: int = 0
    #: The error the last of them died of (a serialized error as JSON), if any.
    last_error: Any = None


@runtime_checkable
class EventWatchingStorage(Protocol):
    """Tells a waiting reader at once when a run's stored log grows in another process
    (PostgreSQL's LISTEN/NOTIFY); other storages are polled."""

    def watch_events(self, run_id: str, event: trio.Event) -> Callable[[], None]:
        """Set ``event`` at the next notification that the run's log grew. Returns a
        function that withdraws the request."""
        ...


@runtime_checkable
class LeasingStorage(Protocol):
    """Holds a lease on each run this process executes, so that another process takes
    the run over when this one dies (and a late write of the old owner is refused)."""

    def forget_lost_lease(self, run_id: str) -> None:
        """The execution that lost the run's lease has ended: writes for it may resume."""
        ...

    async def release_lease(self, run_id: str, *, unqueue: bool = False) -> None:
        """Give up this storage's lease on a run. Cancelling it may leave the lease held
        until it expires."""
        ...

    async def release_leases(self) -> None:
        """Give up every lease this storage holds (a runtime closing)."""
        ...

    async def serve(
        self,
        on_stop: Callable[[str, str], None],
        *,
        task_status: trio.TaskStatus[None] = ...,
    ) -> None:
        """Keep the leases alive (and listen for notifications) until cancelled;
        ``on_stop(run_id, reason)`` for a run whose execution here must stop."""
        ...


@runtime_checkable
class QueueStorage(LeasingStorage, Protocol):
    """A run queue shared by workers: queued runs, and executing runs whose lease lapsed,
    are claimed by exactly one worker."""

    async def enqueue_run(self, snapshot: RunSnapshot) -> bool:
        """Store a pending run for any worker to start. True when queued."""
        ...

    async def claim_runnable(self, workflow_ids: Iterable[str], *, limit: int) -> list[ClaimedRun]:
        """Claim (take the lease of) up to ``limit`` runnable runs of these workflows."""
        ...

    def watch_queue(self, event: trio.Event) -> Callable[[], None]:
        """Set ``event`` at the next notification that a run was queued."""
        ...


@runtime_checkable
class AttemptCountingStorage(Protocol):
    """Counts the executions of a run that died of an error, across processes."""

    async def record_failed_attempt(self, run_id: str, error: Any, *, retry_delay: float) -> int:
        """Count a failed execution, store ``error``, release the lease, keep workers off
        the run for a backoff. Returns the stored number of failed attempts (0 when this
        storage held no lease: nothing was written)."""
        ...
