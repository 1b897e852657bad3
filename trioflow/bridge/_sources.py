"""Where a bridge subscription's chunks come from, and what subscriptions share: the
framed chunks (one encoding per chunk however many subscribers read it) and how far each
run's log is in durable storage."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from functools import partial
from typing import Any, Final

import attrs
import trio

from .._broadcast import Subscription, ends_at_terminal_finish, wait_stored_growth
from .._core._chunks import Chunk
from .._core._serde import to_wire
from .._core._status import TERMINAL
from .._run import Run
from . import _protocol as p

#: Bounds (seconds) of the polling that waits for chunks to reach durable storage, and
#: of the polling that follows the stored log of a run this server cannot execute.
POLL_MIN: Final = 0.005
POLL_MAX: Final = 0.25
#: Chunks read from storage at once when following a stored log.
STORAGE_PAGE: Final = 512
#: Framed chunks kept for the next subscriber of the same run (one encoding per chunk).
FRAME_CACHE_SIZE: Final = 8192
FRAME_CACHE_BYTES: Final = 16 * 1024 * 1024


@attrs.define(eq=False)
class Source:
    """Where a subscription's chunks come from."""

    chunks: AsyncIterator[Chunk] | None  # None: a finished run with nothing after from_seq
    end_seq: int  # the log's end when the subscription began (for ``caught-up``)
    gate: bool  # send a chunk only once it is in durable storage
    #: The run executing here whose log ``chunks`` follows (None: a stored log, or no
    #: chunks): such a subscription may join the run's shared live feed.
    run: Run | None = None


class FrameCache:
    """The framed wire chunk of recent chunks: many subscribers of one run share one
    encoding. Bounded in entries and in bytes."""

    def __init__(self, size: int = FRAME_CACHE_SIZE, max_bytes: int = FRAME_CACHE_BYTES) -> None:
        self._size = size
        self._max_bytes = max_bytes
        self._bytes = 0
        self._entries: dict[tuple[str, int], tuple[Chunk, bytes]] = {}

    def frame(self, chunk: Chunk) -> bytes:
        key = (chunk.run_id, chunk.seq)
        hit = self._entries.get(key)
        if hit is not None and hit[0] is chunk:
            return hit[1]
        data = p.text_frame(p.encode(to_wire(chunk)))  # ValueError: not strict JSON
        if hit is not None:
            self._bytes -= len(hit[1])
        self._entries[key] = (chunk, data)
        self._bytes += len(data)
        while self._entries and (len(self._entries) > self._size or self._bytes > self._max_bytes):
            oldest = next(iter(self._entries))
            self._bytes -= len(self._entries.pop(oldest)[1])
        return data


class StoredMarks:
    """How far each run's log is in durable storage, shared by all subscriptions of the
    server: one storage query at a time per run, however many subscribers wait."""

    def __init__(self, storage: Any) -> None:
        self._storage = storage
        self._marks: dict[str, int] = {}
        self._locks: dict[str, trio.Lock] = {}
        self._users: dict[str, int] = {}

    def acquire(self, run_id: str) -> None:
        self._users[run_id] = self._users.get(run_id, 0) + 1

    def release(self, run_id: str) -> None:
        left = self._users.get(run_id, 1) - 1
        if left > 0:
            self._users[run_id] = left
        else:
            self._users.pop(run_id, None)
            self._marks.pop(run_id, None)
            self._locks.pop(run_id, None)

    async def wait(self, run_id: str, seq: int, run: Run | None = None) -> int:
        """Return once chunk ``seq`` of ``run_id`` is in storage; the stored mark. (The
        engine stores a durable run's chunks within tens of milliseconds.) Raises
        :class:`ExecutionDied` when ``run``'s execution here died first: its chunks that
        were not stored never will be (a restart re-uses their ``seq``)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        mark = self._marks.get(run_id, 0)
        if mark >= seq:
            return mark
        lock = self._locks.setdefault(run_id, trio.Lock())
        async with lock:
            delay = POLL_MIN
            while (mark := self._marks.get(run_id, 0)) < seq:
                last = await self._storage.last_seq(run_id)
                if last > mark:
                    self._marks[run_id] = mark = last
                if mark >= seq:
                    break
                died = None if run is None else died_here(run)
                if died is not None:
                    raise died
                await trio.sleep(delay)
                delay = min(POLL_MAX, delay * 2)
        return mark


class StoredChunks:
    """Follows the stored log of a run that is not executing here (its workflow is not
    registered on this server, or its execution here died: another process may restart
    it): pages from storage, polling while nothing new comes."""

    def __init__(self, storage: Any, run_id: str, from_seq: int) -> None:
        self._storage = storage
        self._run_id = run_id
        self._next = from_seq
        self._batch: deque[Chunk] = deque()
        self._done = False

    def __aiter__(self) -> StoredChunks:
        return self

    async def __anext__(self) -> Chunk:
        delay = POLL_MIN
        while True:
            if self._batch:
                await trio.lowlevel.checkpoint_if_cancelled()
                chunk = self._batch.popleft()
                self._next = chunk.seq + 1
                if ends_at_terminal_finish(chunk):
                    self._done = True
                    self._batch.clear()
                return chunk
            if self._done:
                await trio.lowlevel.checkpoint()
                raise StopAsyncIteration
            page = await self._storage.read_events(
                self._run_id, from_seq=self._next, limit=STORAGE_PAGE
            )
            if page:
                self._batch.extend(page)
                delay = POLL_MIN
                continue
            await wait_stored_growth(self._storage, self._run_id, trio.Event(), delay)
            delay = min(POLL_MAX, delay * 2)


class ExecutionDied(Exception):
    """The run's latest execution in this process ended without its ``workflow-finish``
    (its storage failed, an engine error): no more chunks come through this process
    until the run is restarted."""

    def __init__(self, run_id: str, failure: BaseException | None) -> None:
        cause = "stopped" if failure is None else f"{type(failure).__name__}: {failure}"
        super().__init__(
            f"run {run_id}: its execution in this server died before its workflow-finish "
            f"({cause})"
        )
        self.failure = failure


def died_here(run: Run) -> ExecutionDied | None:
    """Why ``run`` gets no more chunks here: its latest execution in this process died
    without its ``workflow-finish`` and none runs now (None: not so)."""
    hub = run._hub
    if hub.died_here() is None or hub.latest is None:
        return None
    return ExecutionDied(run.run_id, hub.latest.failure)


def follow_run(run: Run, from_seq: int) -> Subscription:
    """``run.observe_stream(from_seq=from_seq, follow=True)``, except that it raises
    :class:`ExecutionDied` (once everything published is read) instead of waiting for
    ever when the run's execution here dies without its ``workflow-finish``: the log's
    waiters are woken then, and ask ``abandoned``, as a ``RunOutput``'s stream does."""
    hub = run._hub
    log = hub.log
    past_end = hub.status in TERMINAL and hub.execution is None and from_seq >= log.next_seq
    return Subscription(
        log,
        from_seq=from_seq,
        ends_after=ends_at_terminal_finish,
        follow=not past_end,
        abandoned=partial(died_here, run),
    )


def log_end(run: Run) -> int:
    """The highest ``seq`` in this process's log of the run (chunks not stored yet
    included)."""
    last = getattr(run, "last_seq", None)  # the public accessor proposed for Run
    if isinstance(last, int):
        return last
    try:
        return int(run._hub.log.next_seq) - 1
    except AttributeError:  # pragma: no cover - engine internals moved
        return 0


def close_chunks(source: Source) -> None:
    """Detach a subscription's cursor (synchronous: ``Subscription.close``)."""
    close = getattr(source.chunks, "close", None)
    if close is not None:
        close()
