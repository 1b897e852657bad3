"""The run's writer to storage: batching, backpressure, compare-and-set (SPEC §0).

One :class:`RunWriter` per execution. Every write hands storage the snapshot (only the step
records changed since the last write, see ``StepJournal`` and ``Handout``) together with
every chunk published and not yet stored, in one call; the write is a compare-and-set on
the statuses an executing run has. Concurrent progress writes coalesce (batching); the
flusher stores chunks between snapshots when a step floods the log or a writer waits for
room (backpressure, ``EventLog.wait_for_room``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import trio

from ._broadcast import EventLog
from ._context import RequestContext
from ._core._chunks import Chunk
from ._core._handout import Handout
from ._core._journal import StepJournal
from ._core._model import RunSnapshot, Usage
from ._core._plan._level import LevelBook
from ._core._serde import to_jsonable
from ._core._status import RunStatus
from ._effects import now_ms
from .storage import Storage
from .storage._protocol import save_changed_steps

_NO_USAGE = Usage()
#: The stored statuses of a run while an execution owns it.
OWNED = (RunStatus.RUNNING, RunStatus.WAITING)


class WriterHub(Protocol):
    """What the writer uses of the run's in-process hub."""

    log: EventLog
    write_lock: trio.Lock
    status: RunStatus


class WriterSource(Protocol):
    """What the writer reads of the execution it writes for (the driver's Execution)."""

    # (Read-only members: an Execution's ``root`` is the driver's Level, a LevelBook.)
    @property
    def base(self) -> RunSnapshot: ...
    @property
    def root(self) -> LevelBook: ...
    @property
    def input_json(self) -> Any: ...
    @property
    def request_context(self) -> RequestContext: ...
    @property
    def trace_id(self) -> str: ...
    @property
    def span_id(self) -> str: ...
    @property
    def pending_resume(self) -> dict[str, Any] | None: ...
    @property
    def usage(self) -> Usage: ...

    def request_cancel(self, reason: str) -> None: ...


class RunWriter:
    """Writes one execution's snapshots and chunks (see the module docstring)."""

    def __init__(
        self,
        *,
        source: WriterSource,
        storage: Storage,
        hub: WriterHub,
        journal: StepJournal,
        live_records: dict[str, Callable[[], dict[str, Any]]],
        durable: bool,
    ) -> None:
        self.source = source
        self.storage = storage
        self.hub = hub
        self.log = hub.log
        self.journal = journal
        #: Progress records of nested workflows running now, rebuilt at every write.
        self.live_records = live_records
        self.durable = durable
        #: Hands each write the records and path without copying them (see _handout).
        self._handout = Handout()
        self._progress_writing = False
        self._progress_dirty = False

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
        source = self.source
        root = source.root
        base = source.base
        usage = source.usage
        steps, path = self._handout.take(self.journal, changed, root.execution_path)
        return RunSnapshot(
            run_id=base.run_id,
            workflow_id=base.workflow_id,
            resource_id=base.resource_id,
            status=status,
            input=source.input_json,
            state=to_jsonable(root.state),
            steps=steps,
            suspended_paths={k: list(v) for k, v in root.suspended_paths.items()},
            resume_labels=dict(root.resume_labels),
            request_context=source.request_context.to_dict(),
            trace_id=source.trace_id,
            span_id=source.span_id,
            result=final.get("result", base.result),
            error=final.get("error", base.error),
            tripwire=final.get("tripwire", base.tripwire),
            step_execution_path=path,
            active_entry=root.active_entry,
            active_input=to_jsonable(root.active_input),
            resume=source.pending_resume,
            last_seq=last_seq,
            usage=base.usage + usage if usage != _NO_USAGE else base.usage,
            created_at=base.created_at,
            updated_at=now_ms(),
        )

    async def persist(
        self,
        status: RunStatus,
        *,
        extra: list[Chunk] | None = None,
        expected: tuple[RunStatus, ...] | None = OWNED,
        **final: Any,
    ) -> bool:
        """Write the snapshot and every chunk not yet stored, in one storage call.

        The write is a compare-and-set on the statuses an executing run has: when another
        process canceled the run meanwhile, nothing is written, the chunks stay pending,
        the execution's scope is cancelled, and False is returned. Cancelling this call
        writes nothing (the chunks stay pending for the next write).
        """
        lock = self.hub.write_lock
        try:
            lock.acquire_nowait()  # the usual case: no flusher writing; the write below
        except trio.WouldBlock:  # is the checkpoint
            await lock.acquire()
        try:
            written = await self._write(status, extra, expected, final)
        finally:
            lock.release()
        if written:
            self.hub.status = status
        else:
            self.source.request_cancel("canceled by another process")
            # Inside the run's scope this raises Cancelled now, before another step starts.
            await trio.lowlevel.checkpoint()
        return written

    async def _write(
        self,
        status: RunStatus,
        extra: list[Chunk] | None,
        expected: tuple[RunStatus, ...] | None,
        final: dict[str, Any],
    ) -> bool:
        journal = self.journal
        log = self.log
        for key, record in self.live_records.items():
            journal[key] = record()
        taken = log.take_unflushed()
        events = [*taken, *extra] if extra else taken
        last_seq = events[-1].seq if events else log.flushed_through
        changed = journal.take_changed()
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
            log.untake(taken)
            journal.write_failed()
            raise
        if not written:
            log.untake(taken)
            journal.write_failed()
        elif taken:
            # Committed: only now may they leave memory (a subscriber behind the
            # window reads them from storage).
            log.mark_stored(taken[-1].seq)
        return written

    # A skipped write passes no checkpoint, on purpose: its callers (a settled branch or
    # foreach item) have just passed theirs, and one more would cost every parallel branch
    # a schedule point on a non-durable storage.
    async def persist_progress(self) -> None:
        """Durable storage only: store what finished inside the running entry (parallel
        branches, foreach iterations) so a crash re-runs only what was running. Concurrent
        callers coalesce: one write in flight, repeated while more progress arrived.
        Cancelling it cancels the write in flight (see :meth:`persist`)."""
        if not self.durable:
            return  # noqa: ASYNC910
        if self._progress_writing:
            self._progress_dirty = True
            return  # noqa: ASYNC910
        self._progress_writing = True
        try:
            while True:
                self._progress_dirty = False
                await self.persist(RunStatus.RUNNING)
                if not self._progress_dirty:
                    break
        finally:
            self._progress_writing = False

    async def flush_forever(self) -> None:
        """Write chunks out between snapshots when a step floods the log (or a writer
        waits for room: see ``EventLog.wait_for_room``). Runs until cancelled."""
        log = self.log
        while True:
            await log.wait_flush_wanted()
            async with self.hub.write_lock:
                events = log.take_unflushed()
                if events:
                    try:
                        await self.storage.append_events(log.run_id, events)
                    except (Exception, trio.Cancelled):
                        log.untake(events)
                        raise
                    log.mark_stored(events[-1].seq)
