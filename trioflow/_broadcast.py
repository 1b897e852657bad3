"""The per-run event log and its subscriptions.

Publishing is synchronous (``publish`` assigns the next ``seq`` and appends without a
checkpoint), so the order of the log is exactly the order in which the engine produced the
chunks: never the order in which trio happened to wake tasks. Nothing ever waits for a
subscriber: a subscription is only a cursor. The log keeps a bounded window of recent stored
chunks in memory, plus every chunk whose storage write has not committed yet (waiting for a
write, or in one); a subscriber that falls behind the window re-reads older chunks from
storage, so it never loses one and never sees one twice. The chunks waiting for storage are
bounded (:data:`MAX_UNSTORED_CHUNKS`, :data:`MAX_UNSTORED_BYTES`): ``writer.write`` waits
for room (:meth:`EventLog.wait_for_room`) while they are at the bound.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ._core._chunks import Chunk, DataChunk, WorkflowFinish
from ._core._errors import StorageError
from .storage._protocol import EventWatchingStorage

if TYPE_CHECKING:
    from .storage import Storage

#: Chunks kept in memory after they are stored, for subscribers that are close behind.
DEFAULT_WINDOW = 4096
#: Chunks not yet handed to storage that make the log ask its flusher to write them out.
FLUSH_THRESHOLD = 1024
#: The most chunks a run holds in memory while they wait for storage (not yet written, or
#: in a write that has not committed). At the bound, ``writer.write``/``writer.custom`` wait
#: until storage commits; chunks the engine publishes itself (a few per step) are never
#: held back, so the bound can be passed by those few.
MAX_UNSTORED_CHUNKS = 8192
#: The most bytes (estimated: :data:`CHUNK_OVERHEAD` per chunk plus the JSON size of the
#: data a step writes) a run holds in memory while they wait for storage; as
#: :data:`MAX_UNSTORED_CHUNKS`, whichever is reached first.
MAX_UNSTORED_BYTES = 16 * 1024 * 1024
#: The bytes counted for every chunk besides the data a step wrote into it: the chunk and
#: payload objects (and what the engine puts in its own chunks).
CHUNK_OVERHEAD = 256
#: Chunks read from storage at once by a lagging subscriber.
STORAGE_PAGE = 512
#: Polling interval bounds (seconds) when following a run executing in another process.
#: Durable storage: a chunk published mid-step is stored within this delay (chunks
#: published meanwhile go in the same write), so another process following the run sees it.
FLUSH_LINGER = 0.02
POLL_MIN = 0.01
POLL_MAX = 0.5


@attrs.frozen(kw_only=True)
class EventLogStatistics:
    """A snapshot of an :class:`EventLog`'s bookkeeping.

    ``unflushed`` counts the chunks not yet committed to storage (not yet handed to a
    write, or in a write in flight); ``unstored_bytes`` is their estimated size.
    """

    next_seq: int
    first_in_memory: int
    in_memory: int
    unflushed: int
    subscriptions: int
    storage_reads: int
    unstored_bytes: int = 0
    in_flight: int = 0


def data_size(value: Any) -> int:
    """The estimated size in bytes of a strict-JSON ``value`` (counted toward
    :data:`MAX_UNSTORED_BYTES`). Scalars are sized without serializing."""
    kind = type(value)
    if kind is str:
        return len(value) + 2
    if kind is int or kind is float or kind is bool or value is None:
        return 8
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


class EventLog:
    """The event log of one run: sequence numbers, an in-memory window, wake-ups.

    Three positions split the log: every ``seq`` below ``_stored_seq`` is committed in
    storage; ``[_stored_seq, _taken_seq)`` is in a storage write in flight;
    ``[_taken_seq, next_seq)`` waits for a write. Only committed chunks may leave memory.
    """

    def __init__(
        self,
        run_id: str,
        storage: Storage,
        *,
        next_seq: int = 1,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        self.run_id = run_id
        self.storage = storage
        self.next_seq = next_seq
        self._window = window
        self._buffer: deque[Chunk] = deque()
        self._first_seq = next_seq  # seq of _buffer[0]
        self._stored_seq = next_seq  # every seq below this is committed in storage
        self._taken_seq = next_seq  # every seq below this was handed to a write
        self._untaken_bytes = 0  # estimated size of [_taken_seq, next_seq)
        self._in_flight_bytes = 0  # estimated size of [_stored_seq, _taken_seq)
        self._wakeup: trio.Event | None = None
        # Bumped by interrupt_waiters(): a waiter that sees it change returns to re-check.
        self._interrupts = 0
        self._flush_wanted: trio.Event | None = None
        self._room: trio.Event | None = None
        self._subscriptions = 0
        self._storage_reads = 0
        # Durable storage: flush soon after the first unstored chunk, not after 1024.
        self._flush_at = 1 if storage.durable else FLUSH_THRESHOLD
        #: The in-process hub this log belongs to (kept alive by its subscriptions).
        self.owner: Any = None

    # --- writing --------------------------------------------------------------------------

    def publish(self, chunk: Chunk, *, size: int = 0) -> Chunk:
        """Append ``chunk`` (whose ``seq`` must be :attr:`next_seq`). Synchronous.

        ``size`` is the estimated size of the data a step put in it (:func:`data_size`);
        it counts toward :data:`MAX_UNSTORED_BYTES`, plus :data:`CHUNK_OVERHEAD`.
        """
        if chunk.seq != self.next_seq:
            raise ValueError(f"chunk seq {chunk.seq} != next seq {self.next_seq}")
        self._buffer.append(chunk)
        self.next_seq += 1
        self._untaken_bytes += CHUNK_OVERHEAD + size
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None
        if self._flush_wanted is not None and self._flush_due():
            self._flush_wanted.set()
        return chunk

    def _flush_due(self) -> bool:
        untaken = self.next_seq - self._taken_seq
        return untaken >= self._flush_at or (untaken > 0 and not self.has_room())

    def has_room(self) -> bool:
        """Whether the chunks waiting for storage are below the bound (see
        :data:`MAX_UNSTORED_CHUNKS` and :data:`MAX_UNSTORED_BYTES`)."""
        return (
            self.next_seq - self._stored_seq < MAX_UNSTORED_CHUNKS
            and self._untaken_bytes + self._in_flight_bytes < MAX_UNSTORED_BYTES
        )

    async def wait_for_room(self) -> None:
        """Block while the chunks waiting for storage are at the bound (until a storage
        write commits enough of them); a checkpoint either way.

        Cancelling it cancels only the wait: the chunks already published stay in the log.
        """
        if self.has_room():
            await trio.lowlevel.checkpoint()
            return
        while True:
            if self._flush_wanted is not None:
                self._flush_wanted.set()
            if self._room is None:
                self._room = trio.Event()
            await self._room.wait()
            if self.has_room():
                return

    @property
    def flushed_through(self) -> int:
        """The highest ``seq`` handed to storage."""
        return self._taken_seq - 1

    def publish_stored(self, chunk: Chunk) -> Chunk:
        """Append a chunk that the caller already wrote to storage, together with every
        chunk it took before (under the run's write lock)."""
        all_taken = self._taken_seq == self.next_seq
        self.publish(chunk)
        if all_taken:
            self._taken_seq = self.next_seq
            self._untaken_bytes = 0
            self.mark_stored(chunk.seq)
        return chunk

    def publish_data(self, type: str, data: Any, *, size: int = 0) -> Chunk:
        return self.publish(
            DataChunk(type=type, run_id=self.run_id, seq=self.next_seq, data=data), size=size
        )

    def take_unflushed(self) -> list[Chunk]:
        """Chunks not yet handed to storage, oldest first. They stay in memory, in flight,
        until :meth:`mark_stored` (the write committed) or :meth:`untake` (it did not); the
        caller writes them under the run's write lock."""
        start = self._taken_seq - self._first_seq
        if start >= len(self._buffer):
            return []
        pending = [self._buffer[i] for i in range(start, len(self._buffer))]
        self._taken_seq = self.next_seq
        self._in_flight_bytes += self._untaken_bytes
        self._untaken_bytes = 0
        return pending

    def mark_stored(self, last_seq: int) -> None:
        """Storage committed every chunk through ``last_seq``: they may leave memory (past
        the window), and writers waiting for room wake up."""
        if last_seq < self._stored_seq:
            return
        if last_seq >= self._taken_seq:
            raise RuntimeError(
                f"run {self.run_id}: mark_stored({last_seq}) of chunks never taken "
                f"(taken through {self._taken_seq - 1})"
            )
        self._stored_seq = last_seq + 1
        if self._stored_seq == self._taken_seq:
            self._in_flight_bytes = 0
        self._trim()
        if self._room is not None and self.has_room():
            self._room.set()
            self._room = None

    def untake(self, taken: list[Chunk]) -> None:
        """Give back chunks from :meth:`take_unflushed` whose write was refused or failed:
        they wait for a write again (callers hold the run's write lock, so nothing was
        taken in between)."""
        if taken:
            if taken[0].seq != self._stored_seq or taken[-1].seq != self._taken_seq - 1:
                raise RuntimeError(
                    f"run {self.run_id}: untake() of seq {taken[0].seq}..{taken[-1].seq}, "
                    f"but the write in flight holds {self._stored_seq}..{self._taken_seq - 1}"
                )
            self._taken_seq = taken[0].seq
            self._untaken_bytes += self._in_flight_bytes
            self._in_flight_bytes = 0

    def _trim(self) -> None:
        keep_from = min(self._stored_seq, self.next_seq - self._window)
        while self._buffer and self._first_seq < keep_from:
            self._buffer.popleft()
            self._first_seq += 1

    async def wait_flush_wanted(self) -> None:
        """Block until enough unpersisted chunks piled up to be worth a write (or a
        writer waits for room)."""
        if not self._flush_due():
            self._flush_wanted = trio.Event()
            await self._flush_wanted.wait()
            self._flush_wanted = None
        if (
            self.next_seq - self._taken_seq < FLUSH_THRESHOLD
            and self._flush_at < FLUSH_THRESHOLD
            and self.has_room()
        ):
            # Linger: what the step publishes meanwhile goes in the same write (and a
            # snapshot written meanwhile takes these chunks, leaving nothing to flush).
            await trio.sleep(FLUSH_LINGER)
        else:
            await trio.lowlevel.checkpoint()

    # --- reading --------------------------------------------------------------------------

    async def wait_for_more(self, seq: int) -> None:  # noqa: ASYNC910 - internal
        """Block until a chunk with ``seq`` or later exists (no checkpoint when it does).

        While no execution of the run is publishing in this process and the storage is
        durable (another process may be executing it), poll the stored log: every
        ``POLL_MIN`` seconds at first, backing off to ``POLL_MAX`` while nothing new comes.
        """
        interval = POLL_MIN
        interrupts = self._interrupts
        while self.next_seq <= seq and self._interrupts == interrupts:
            if self._wakeup is None or self._wakeup.is_set():
                self._wakeup = trio.Event()
            if not self._may_poll():
                await self._wakeup.wait()
                continue
            await wait_stored_growth(self.storage, self.run_id, self._wakeup, interval)
            if self.next_seq <= seq and self._interrupts == interrupts and self._may_poll():
                found = await self.mirror_stored()
                interval = POLL_MIN if found else min(POLL_MAX, interval * 2)

    def interrupt_waiters(self) -> None:
        """Make every :meth:`wait_for_more` under way return, chunk or not, so its caller
        re-checks whether to go on waiting (the execution that was to publish the next
        chunks died)."""
        self._interrupts += 1
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    def _may_poll(self) -> bool:
        owner = self.owner
        executing = owner is not None and getattr(owner, "execution", None) is not None
        return not executing and self.storage.durable

    async def mirror_stored(self, *, only_while_idle: bool = True) -> bool:
        """Append the chunks storage holds after our end of the log (written by another
        process). True if there were any."""
        stored = await self.storage.read_events(
            self.run_id, from_seq=self.next_seq, limit=STORAGE_PAGE
        )
        added = False
        for chunk in stored:
            if chunk.seq != self.next_seq or (only_while_idle and not self._may_poll()):
                break
            self.publish_stored(chunk)
            added = True
        return added

    async def sync_with_storage(  # noqa: ASYNC910 - internal
        self, known_last: int | None = None
    ) -> None:
        """Before this process publishes for the run again: continue after the last
        stored ``seq`` (another process may have appended since this log was made).
        ``known_last`` (from a snapshot just claimed) saves asking storage."""
        last = known_last if known_last is not None else await self.storage.last_seq(self.run_id)
        while last >= self.next_seq:
            if not await self.mirror_stored(only_while_idle=False):
                # Unreadable (deleted meanwhile?): restart the window after them.
                self._buffer.clear()
                self.next_seq = self._first_seq = self._stored_seq = self._taken_seq = last + 1
                self._untaken_bytes = self._in_flight_bytes = 0

    async def read(self, seq: int) -> list[Chunk]:
        """Chunks from ``seq`` on that exist now (possibly several), read from memory or,
        when they left the window, from storage. Empty when ``seq`` is not there yet.
        Internal: reading from memory is not a checkpoint (callers checkpoint)."""
        if seq >= self.next_seq:
            return []  # noqa: ASYNC910
        if seq >= self._first_seq:
            start = seq - self._first_seq
            end = min(len(self._buffer), start + STORAGE_PAGE)
            return [self._buffer[i] for i in range(start, end)]  # noqa: ASYNC910
        self._storage_reads += 1
        limit = min(STORAGE_PAGE, self._first_seq - seq)
        stored = list(await self.storage.read_events(self.run_id, from_seq=seq, limit=limit))
        if not stored or stored[0].seq != seq:
            # Only committed chunks leave memory: storage must hold this one.
            found = f"seq {stored[0].seq}" if stored else "nothing"
            raise StorageError(
                f"run {self.run_id}: the stored event log has {found} at seq {seq}, though "
                f"every chunk before seq {self._first_seq} was committed to it "
                "(was the run deleted meanwhile?)"
            )
        return stored

    async def catch_up_with_storage(self) -> bool:
        """While no execution of the run is publishing in this process and storage is
        durable, append what storage holds after our end of the log (another process
        executed the run, or was interrupted). True if there was anything."""
        if not self._may_poll():
            await trio.lowlevel.checkpoint()
            return False
        return await self.mirror_stored()

    def subscribe(
        self,
        *,
        from_seq: int = 1,
        ends_after: Callable[[Chunk], bool] | None = None,
        follow: bool = True,
    ) -> Subscription:
        return Subscription(self, from_seq=from_seq, ends_after=ends_after, follow=follow)

    def statistics(self) -> EventLogStatistics:
        return EventLogStatistics(
            next_seq=self.next_seq,
            first_in_memory=self._first_seq,
            in_memory=len(self._buffer),
            unflushed=self.next_seq - self._stored_seq,
            subscriptions=self._subscriptions,
            storage_reads=self._storage_reads,
            unstored_bytes=self._untaken_bytes + self._in_flight_bytes,
            in_flight=self._taken_seq - self._stored_seq,
        )


async def wait_stored_growth(
    storage: Storage, run_id: str, event: trio.Event, poll_interval: float
) -> None:
    """Wait until ``event`` is set, at most ``poll_interval`` seconds (then the caller
    polls storage). A storage that notifies (PostgreSQL's LISTEN/NOTIFY, ``watch_events``)
    sets it as soon as the run's stored log grows in another process."""
    unwatch = (
        storage.watch_events(run_id, event) if isinstance(storage, EventWatchingStorage) else None
    )
    try:
        with trio.move_on_after(poll_interval):
            await event.wait()
    finally:
        if unwatch is not None:
            unwatch()


def ends_at_terminal_finish(chunk: Chunk) -> bool:
    """A ``workflow-finish`` whose status is final (not suspended or paused)."""
    return isinstance(chunk, WorkflowFinish) and chunk.payload.workflow_status not in (
        "suspended",
        "paused",
    )


def ends_at_any_finish(chunk: Chunk) -> bool:
    return isinstance(chunk, WorkflowFinish)


class Subscription:
    """A cursor into a run's log: an async iterable of chunks.

    Iteration replays from ``from_seq`` and then follows live chunks. It ends after the
    chunk for which ``ends_after`` is true, or (``follow=False``) when it reaches the end of
    the log. Each ``__anext__`` is a cancel point, and a schedule point at least once per
    batch of chunks read together. Cancelling a receive loses nothing: the cursor only
    moves when a chunk is returned. ``aclose()`` (or ``async with``) detaches.

    ``abandoned`` (following only) is asked whenever the subscriber has read everything
    published and would wait: an exception it returns ends the iteration, raised (the
    stream of an execution that died, of a storage error say, before its finish).
    """

    def __init__(
        self,
        log: EventLog,
        *,
        from_seq: int = 1,
        ends_after: Callable[[Chunk], bool] | None = None,
        follow: bool = True,
        skip: Callable[[Chunk], bool] | None = None,
        abandoned: Callable[[], BaseException | None] | None = None,
    ) -> None:
        if from_seq < 1:
            raise ValueError(f"from_seq must be >= 1, got {from_seq}")
        self._log = log
        self.next_seq = from_seq
        self._ends_after = ends_after
        self._follow = follow
        self._skip = skip
        self._abandoned = abandoned
        self._batch: deque[Chunk] = deque()
        self._done = False
        log._subscriptions += 1

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self

    async def __anext__(self) -> Chunk:
        while True:
            chunk = await self._next_raw()
            if chunk is None:
                raise StopAsyncIteration
            if self._skip is None or not self._skip(chunk):
                return chunk

    async def _next_raw(self) -> Chunk | None:
        if self._done:
            await trio.lowlevel.checkpoint()
            return None
        if self._batch:
            # Items of a batch already read: a cancel point, not a schedule point (a
            # schedule point per batch keeps many subscribers fair at a fraction of the
            # cost of one per chunk).
            await trio.lowlevel.checkpoint_if_cancelled()
        else:
            log = self._log
            batch = await log.read(self.next_seq)
            if batch:
                await trio.lowlevel.checkpoint()
            # Never pop an empty batch: wait (or, not following, catch up with storage)
            # until a read returns chunks. Inline: this is the path of every live chunk.
            while not batch:
                if self._follow:
                    self._raise_if_abandoned()
                    await log.wait_for_more(self.next_seq)
                elif not await log.catch_up_with_storage():
                    # The end of the log as storage holds it (another process may have
                    # executed the run: catch_up_with_storage read what it stored).
                    self.close()
                    return None
                batch = await log.read(self.next_seq)
            self._batch.extend(batch)
        chunk = self._batch.popleft()
        self.next_seq = chunk.seq + 1
        if self._ends_after is not None and self._ends_after(chunk):
            self.close()
        return chunk  # noqa: ASYNC910

    def _raise_if_abandoned(self) -> None:
        # Every chunk published is read by now: what the dead execution left is delivered.
        failure = self._abandoned() if self._abandoned is not None else None
        if failure is not None:
            self.close()
            raise failure

    def close(self) -> None:
        """Detach (synchronous, idempotent)."""
        if not self._done:
            self._done = True
            self._batch.clear()
            self._log._subscriptions -= 1

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
