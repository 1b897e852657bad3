"""The bridge server's socket stream: writes go to a bounded buffer that one flusher task
sends, so a burst of websocket frames leaves in one system call."""

from __future__ import annotations

from typing import Final

import trio

#: Seconds a closing handshake may take (shielded: also when the server is cancelled).
CLOSE_GRACE: Final = 1.0
#: A corked stream writes once this many bytes are buffered, or when two scheduling turns
#: in a row added nothing to its buffer.
COALESCE_BYTES: Final = 64 * 1024
#: Turns of growth after which the flusher waits TRICKLE_DELAY seconds between looks.
TRICKLE_TURNS: Final = 16
TRICKLE_DELAY: Final = 0.002


class CorkedStream(trio.abc.Stream):
    """A socket stream whose writes only append to a buffer that one flusher task writes
    out: a burst of small websocket frames leaves in one ``send`` system call instead of
    one each (on loopback a ``send`` costs far more than framing a message).

    The buffer is the connection's send queue: :meth:`send_all` (what trio-websocket
    calls) waits while more than ``high_water`` bytes are buffered, as the bare socket
    would while the peer is slow; :meth:`append` never waits (the caller checks
    :meth:`full` first, or adds a small notice on purpose). Run :meth:`flusher` next to
    the websocket's reader task.
    """

    def __init__(self, inner: trio.abc.Stream, *, high_water: int) -> None:
        self._inner = inner
        self._buffer = bytearray()
        self._high_water = high_water
        self._ready = trio.Event()
        self._drained = trio.lowlevel.ParkingLot()
        self._broken: BaseException | None = None
        self._closed = False
        self._flushing = False  # the flusher task runs
        self._writing = False  # the flusher is writing (what it took is not sent yet)

    def __len__(self) -> int:
        return len(self._buffer)

    def full(self) -> bool:
        return len(self._buffer) > self._high_water

    def append(self, data: bytes) -> None:
        """Add bytes to send (never waits); BrokenResourceError once the socket broke."""
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        if self._broken is not None:
            raise trio.BrokenResourceError("the peer is gone") from self._broken
        self._buffer += data
        self._ready.set()

    async def wait_not_full(self) -> None:
        """Wait until the buffer is at or below its high-water mark (or the socket broke,
        so that the next :meth:`append` raises)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while len(self._buffer) > self._high_water and self._broken is None:
            await self._drained.park()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.append(bytes(data))
        await self.wait_not_full()

    async def flush(self) -> None:
        """Wait until everything appended so far is handed to the socket (or the flusher
        stopped)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while (
            (self._buffer or self._writing)
            and self._broken is None
            and not self._closed
            and self._flushing
        ):
            await self._drained.park()

    async def flusher(self) -> None:  # noqa: ASYNC910
        """Write the buffer out whenever it is not empty (until cancelled or the socket
        breaks)."""
        self._flushing = True
        try:
            while self._broken is None:
                await self._write_some()
        finally:
            self._flushing = False
            self._drained.unpark_all()

    async def _write_some(self) -> None:  # noqa: ASYNC910 - send_all checkpoints
        while not self._buffer:
            self._ready = trio.Event()
            await self._ready.wait()
        # Coalesce: while the other tasks keep adding frames, give them turns before
        # writing (up to COALESCE_BYTES); write once two turns in a row added nothing (a
        # chunk takes a turn to go from the run to a subscription's pump). A burst leaves
        # in one system call, at the price of a schedule point per turn.
        # A steady trickle (a live run: a frame or so per turn for TRICKLE_TURNS turns in
        # a row) is written every TRICKLE_DELAY instead: the flusher then takes a turn per
        # delay, not one per frame.
        size = len(self._buffer)
        idle_turns = 0
        turns = 0
        while size < COALESCE_BYTES and idle_turns < 2:
            turns += 1
            if turns > TRICKLE_TURNS:
                await trio.sleep(TRICKLE_DELAY)
            else:
                await trio.lowlevel.checkpoint()
            grown = len(self._buffer)
            idle_turns = idle_turns + 1 if grown == size else 0
            size = grown
        data = bytes(self._buffer)
        self._buffer.clear()
        self._writing = True
        try:
            await self._inner.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._broken = exc
            self._buffer.clear()
        finally:
            self._writing = False
            self._drained.unpark_all()

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        """Write what is buffered (the websocket's close frame, typically: briefly, also
        when cancelled), then close the socket."""
        if self._flushing and not self._closed and self._broken is None:
            with trio.move_on_after(CLOSE_GRACE, shield=True):
                await self.flush()
        self._closed = True
        self._buffer.clear()
        self._drained.unpark_all()
        await self._inner.aclose()
