"""One subscription of the bridge client: the cursor that takes a run's chunks from the
connection (never blocking it) and hands them to the consumer in ``seq`` order, without a
gap or a duplicate, re-subscribing when it sees a gap, a ``lagged`` notice or a full
buffer."""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, Final, Protocol

import trio

from .._core._chunks import Chunk
from .._core._errors import TrioflowError
from . import _protocol as p
from ._decoded import recent

logger = logging.getLogger("trioflow.bridge")

#: Re-subscriptions from one ``seq`` that the server answers with a later one (the chunk
#: at that seq never arrives readable: e.g. not JSON) before the subscription fails.
MAX_GAP_RETRIES: Final = 3
#: A consumer reading buffered chunks gets a schedule point at least this often.
_SCHEDULE_EVERY: Final = 64

_CAUGHT_UP: Final = object()
_END: Final = object()


class BridgeError(TrioflowError):
    """An ``error`` the server answered (``code`` is one of the protocol's error codes,
    ``message`` its text: for ``validation``, the ValidationError text)."""

    def __init__(self, code: str, message: str, *, run_id: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.run_id = run_id


class BridgeConnectionError(BridgeError):
    """The connection could not be opened or was lost (``code`` is ``"connection"``). A
    request whose reply did not arrive raises it: it may or may not have been executed."""

    def __init__(
        self, message: str, *, code: str = "connection", close_code: int | None = None
    ) -> None:
        super().__init__(code, message)
        #: The websocket close code, when the connection was closed with one.
        self.close_code = close_code


class BridgeAuthError(BridgeConnectionError):
    """The server refused the token (HTTP 401); ``code`` is ``"unauthorized"``."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="unauthorized")


class ClientSide(Protocol):
    """What a subscription asks of its client (:class:`BridgeClient`)."""

    def _ensure_subscribed(self, sub: BridgeSubscription) -> None: ...

    def _remove(self, sub: BridgeSubscription, *, unsubscribe: bool) -> None: ...

    def _post(self, message: dict[str, Any]) -> None: ...

    def _on_room(self) -> None: ...


class BridgeSubscription:
    """An open subscription to one run: ``async for chunk in sub`` yields its chunks
    (``tf.from_wire`` of each wire chunk) from ``from_seq`` on, and ends after the run's
    terminal ``workflow-finish``. ``caught_up`` turns true once the chunks read so far reach
    the end of the log as it was when the subscription began; ``next_seq`` is the ``seq``
    after the last chunk read. Use ``async with`` (or ``aclose()``) to stop early."""

    def __init__(self, client: ClientSide, run_id: str, from_seq: int, buffer_size: int) -> None:
        self._client = client
        self._recent = recent()
        self.run_id = run_id
        self.next_seq = from_seq
        self.caught_up = False
        self._expected = from_seq  # the seq the next chunk accepted must have
        self._buffer: deque[Any] = deque()
        self._buffered = 0  # chunks in _buffer
        self._buffer_size = buffer_size
        self._wakeup = trio.Event()
        self._live_id: int | None = None  # id of the subscribe request on this connection
        self._active = False  # its reply arrived: accept its messages
        self._paused = False
        self._finished = False  # end, failure or aclose: nothing more arrives
        self._reads = 0
        self._gap_seq = 0  # the seq the last re-subscription after a gap asked for
        self._gap_retries = 0  # re-subscriptions in a row from _gap_seq

    def __repr__(self) -> str:
        return f"<BridgeSubscription {self.run_id} next_seq={self.next_seq}>"

    # --- consumer side -------------------------------------------------------------------

    def __aiter__(self) -> BridgeSubscription:
        return self

    async def __anext__(self) -> Chunk:
        while True:
            if self._buffer:
                item = self._buffer.popleft()
                if item is _CAUGHT_UP:
                    self.caught_up = True
                    continue
                if item is _END:
                    self._close()
                    await trio.lowlevel.checkpoint()
                    raise StopAsyncIteration
                if isinstance(item, BaseException):
                    self._close()
                    await trio.lowlevel.checkpoint()
                    raise item
                self._buffered -= 1
                if self._buffered == self._buffer_size // 2:
                    self._client._on_room()
                self.next_seq = item.seq + 1
                if self._paused and self._buffered <= self._buffer_size // 2:
                    self._paused = False
                    self._client._ensure_subscribed(self)
                self._reads += 1
                if self._reads % _SCHEDULE_EVERY:
                    await trio.lowlevel.checkpoint_if_cancelled()
                else:
                    await trio.lowlevel.checkpoint()
                return item  # type: ignore[no-any-return]
            if self._finished:
                await trio.lowlevel.checkpoint()
                raise StopAsyncIteration
            self._wakeup = trio.Event()
            await self._wakeup.wait()

    async def aclose(self) -> None:
        """Stop the subscription (tells the server; idempotent)."""
        self._close()
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> BridgeSubscription:
        await trio.lowlevel.checkpoint()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _close(self) -> None:
        if not self._finished:
            self._finished = True
            self._client._remove(self, unsubscribe=True)
        self._buffer.clear()
        self._buffered = 0
        self._wakeup.set()

    # --- connection side (called by the client's reader task; never blocks) ---------------

    def _push(self, item: Any) -> None:
        self._buffer.append(item)
        self._wakeup.set()

    def _fail(self, error: BaseException) -> None:
        if not self._finished:
            self._finished = True
            self._active = False
            self._live_id = None
            self._client._remove(self, unsubscribe=False)
            self._push(error)

    def _disconnected(self) -> None:
        self._live_id = None
        self._active = False

    def _on_reply(self, request_id: int, message: dict[str, Any]) -> None:
        if request_id != self._live_id or self._finished:
            return  # a reply to an older subscribe
        if message["type"] == "reply":
            self._active = True
        else:
            self._fail(
                BridgeError(
                    str(message.get("code")), str(message.get("message")), run_id=self.run_id
                )
            )

    @property
    def crowded(self) -> bool:
        """More than half of the buffer is unread (while the subscription is live)."""
        return self._active and self._buffered > self._buffer_size // 2

    def _on_message(self, message_type: str, message: dict[str, Any]) -> None:
        if not self._active:
            return  # before the reply of the current subscribe, or while paused
        if p.is_chunk_type(message_type):
            seq = message.get("seq")
            if isinstance(seq, bool) or not isinstance(seq, int) or seq < self._expected:
                return  # a duplicate (or garbage): never delivered twice
            if seq > self._expected:
                self._on_gap(seq)
                return
            if self._buffered >= self._buffer_size:
                self._pause()
                return
            try:
                chunk = self._recent.chunk(message)
            except Exception as exc:
                self._fail(BridgeError("bad-request", f"undecodable chunk {seq}: {exc}"))
                return
            self._expected = seq + 1
            self._gap_retries = 0
            self._buffered += 1
            self._push(chunk)
        elif message_type == "caught-up":
            self._push(_CAUGHT_UP)
        elif message_type == "end":
            end_seq = message.get("seq")
            if isinstance(end_seq, int) and end_seq >= self._expected:
                self._on_gap(end_seq)  # the end came, some chunks before it did not
                return
            self._active = False
            self._finished = True
            self._client._remove(self, unsubscribe=False)
            self._push(_END)
        elif message_type == "lagged":
            self._resubscribe()
        elif message_type == "error":
            self._fail(
                BridgeError(
                    str(message.get("code")), str(message.get("message")), run_id=self.run_id
                )
            )

    def _on_gap(self, seq: int) -> None:
        """A message after ``seq`` came before chunk ``_expected``: re-subscribe from
        there, a bounded number of times in a row for the same seq (a chunk the server
        sends unreadable every time must not make the client loop forever)."""
        missing = self._expected
        if missing == self._gap_seq:
            self._gap_retries += 1
        else:
            self._gap_seq, self._gap_retries = missing, 1
        if self._gap_retries > MAX_GAP_RETRIES:
            garbled = getattr(self._client, "last_malformed", None)
            detail = f"; the server sent a malformed message ({garbled})" if garbled else ""
            self._fail(
                BridgeError(
                    "bad-request",
                    f"run {self.run_id}: chunk seq {missing} never arrived readable after "
                    f"{MAX_GAP_RETRIES} re-subscriptions{detail}",
                    run_id=self.run_id,
                )
            )
            return
        logger.warning(
            "trioflow bridge client: run %s: got seq %d, expected %d; re-subscribing",
            self.run_id,
            seq,
            missing,
        )
        self._resubscribe()

    def _resubscribe(self) -> None:
        self._active = False
        self._live_id = None
        self._client._ensure_subscribed(self)

    def _pause(self) -> None:
        self._paused = True
        self._active = False
        self._live_id = None
        self._client._post(p.request_message("unsubscribe", None, runId=self.run_id))
