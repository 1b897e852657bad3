"""The bridge client's websocket: wsproto (the sans-IO library trio-websocket is built on)
for the opening handshake and for the frames the client sends, and a batching frame
reader of its own for what the server sends.

Why not trio-websocket's connection: it parses each incoming frame with wsproto (about
20 µs a frame here) in its own reader task and hands every message over a memory channel
(a task switch per message), which capped one client near 20,000 chunks/s. The bridge's
server sends small unfragmented, unmasked text frames, many per TCP read: this reader
parses every complete frame of a read at once (a few hundred nanoseconds each) and hands
the batch to the caller's task. It still speaks the whole of RFC 6455 a client must:
fragmented and binary messages, ping (answered with pong), close (answered), and it
refuses what a server may not send (masked frames, reserved bits, bad UTF-8: close 1002
or 1007; a message over ``max_message_size``: close 1009).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Final, NoReturn

import attrs
import trio
import wsproto
import wsproto.events as wse
from wsproto.frame_protocol import CloseReason as _Codes

#: Bytes asked of the socket per read: a batch of a few hundred chunks, well inside a
#: subscription's buffer (``buffer_size``, 1024 by default), so that its consumer drains
#: one batch before the next comes.
RECEIVE_SIZE: Final = 64 * 1024


@attrs.frozen
class CloseReason:
    """Why a connection closed: the close frame's ``code`` (1005: none given) and
    ``reason`` text, ``name`` the code's RFC 6455 name."""

    code: int
    reason: str | None = None

    @property
    def name(self) -> str:
        try:
            return _Codes(self.code).name
        except ValueError:
            return "PRIVATE_CODE" if 4000 <= self.code <= 4999 else "UNKNOWN_CODE"


class WebSocketClosed(Exception):
    """The connection is closed (``reason``: how)."""

    def __init__(self, reason: CloseReason) -> None:
        super().__init__(f"the connection closed ({reason.code} {reason.name})")
        self.reason = reason


class HandshakeRefused(Exception):
    """The server answered the upgrade request with an HTTP status (e.g. 401, 403)."""

    def __init__(self, status_code: int) -> None:
        super().__init__(f"the server refused the websocket upgrade (HTTP {status_code})")
        self.status_code = status_code


class _Fail(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


async def open_client_websocket(
    stream: trio.abc.Stream,
    host_header: str,
    resource: str,
    *,
    subprotocols: Sequence[str] = (),
    extra_headers: Sequence[tuple[bytes, bytes]] = (),
    max_message_size: int,
) -> ClientWebSocket:
    """Do the opening handshake on ``stream``; HandshakeRefused (the HTTP status) or
    WebSocketClosed (the stream ended first). Cancelling it leaves ``stream`` to the
    caller, half-open."""
    conn = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    request = wse.Request(
        host=host_header,
        target=resource,
        subprotocols=list(subprotocols),
        extra_headers=list(extra_headers),
    )
    await stream.send_all(conn.send(request))
    while True:
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            raise WebSocketClosed(CloseReason(1006, "the server closed during the handshake"))
        conn.receive_data(bytes(data))
        early: list[wse.Event] = []
        accepted: wse.AcceptConnection | None = None
        for event in conn.events():
            if isinstance(event, wse.RejectConnection | wse.RejectData):
                status = event.status_code if isinstance(event, wse.RejectConnection) else 0
                raise HandshakeRefused(status or 400)
            if isinstance(event, wse.AcceptConnection):
                accepted = event
            elif accepted is not None:
                early.append(event)
        if accepted is not None:
            ws = ClientWebSocket(stream, conn, accepted.subprotocol, max_message_size)
            ws._take_early(early)
            return ws


class ClientWebSocket:
    """An open client websocket: :meth:`receive_batch` from one task, :meth:`send_message`
    from any."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        conn: wsproto.WSConnection,
        subprotocol: str | None,
        max_message_size: int,
    ) -> None:
        self._stream = stream
        self._conn = conn
        self.subprotocol = subprotocol
        self._max = max_message_size
        self._buffer = bytearray()
        self._fragments: list[bytes] = []
        self._fragment_text = True
        self._fragment_size = 0
        self._send_lock = trio.StrictFIFOLock()
        self._early: list[str | bytes] = []
        self._to_answer: list[wse.Event] = []
        #: A frame a server may not send, met after the messages of the last batch.
        self._failure: _Fail | None = None
        #: Set once the connection is closed (by either side).
        self.closed: CloseReason | None = None

    def _take_early(self, events: list[wse.Event]) -> None:
        """Events wsproto parsed from bytes that came with the handshake's response."""
        for event in events:
            if isinstance(event, wse.TextMessage | wse.BytesMessage):
                data = event.data  # whole messages only: wsproto reassembles them
                self._early.append(data if isinstance(data, str) else bytes(data))
            elif isinstance(event, wse.CloseConnection):
                self.closed = CloseReason(event.code, event.reason or None)
            elif isinstance(event, wse.Ping):
                self._to_answer.append(event.response())

    # --- sending -----------------------------------------------------------------------

    async def _send(self, data: bytes) -> None:
        async with self._send_lock:
            await self._stream.send_all(data)

    async def send_message(self, message: str) -> None:
        """Send a text message (WebSocketClosed once the connection is closed)."""
        if self.closed is not None:
            raise WebSocketClosed(self.closed)
        await self._send(self._conn.send(wse.TextMessage(data=message)))

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None:
        """Send a close frame (once; the caller then closes the stream)."""
        await trio.lowlevel.checkpoint()
        if self.closed is not None:
            return
        self.closed = CloseReason(code, reason)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._send(self._conn.send(wse.CloseConnection(code=code, reason=reason)))

    # --- receiving ---------------------------------------------------------------------

    async def receive_batch(self) -> list[str | bytes]:
        """Every whole message of the next read from the socket (at least one), in order.
        WebSocketClosed when the server closed (its close is answered) or the stream
        ended; a frame a server may not send closes the connection (1002, 1007, 1009)
        and raises WebSocketClosed with that code."""
        if self._failure is not None:
            # the messages before the offending frame went out in the last batch
            await self._close_for(self._failure)
        if self._early:
            batch, self._early = self._early, []
            await trio.lowlevel.checkpoint()
            return batch
        while True:
            for answer in self._to_answer:
                await self._send(self._conn.send(answer))
            self._to_answer.clear()
            if self.closed is not None:
                raise WebSocketClosed(self.closed)
            data = await self._stream.receive_some(RECEIVE_SIZE)
            if not data:
                self.closed = CloseReason(1006, "the connection dropped")
                raise WebSocketClosed(self.closed)
            self._buffer += data
            batch, failure = self._parse()
            if not batch and failure is not None:
                await self._close_for(failure)
            if batch:
                for answer in self._to_answer:
                    await self._send(self._conn.send(answer))
                self._to_answer.clear()
                return batch

    async def _close_for(self, failure: _Fail) -> NoReturn:
        await self.aclose(failure.code, failure.reason)
        raise WebSocketClosed(CloseReason(failure.code, failure.reason))

    def _parse(self) -> tuple[list[str | bytes], _Fail | None]:
        """Take every complete frame out of the buffer: the whole messages among them
        (control frames are handled here). A frame a server may not send ends the
        parse: it is kept in ``_failure``, after the messages before it."""
        buf = self._buffer
        end = len(buf)
        pos = 0
        out: list[str | bytes] = []
        try:
            while self.closed is None:
                found = _frame_at(buf, pos, end, self._max)
                if found is None:
                    break
                first, head, size = found
                payload = bytes(buf[pos + head : pos + head + size])
                pos += head + size
                message = self._message(first, payload)
                if message is not None:
                    out.append(message)
        except _Fail as fail:
            self._failure = fail
        del buf[:pos]
        return out, self._failure

    def _message(self, first: int, payload: bytes) -> str | bytes | None:
        opcode = first & 0x0F
        fin = bool(first & 0x80)
        if opcode == 0x1 and fin and not self._fragments:
            if len(payload) > self._max:
                raise _Fail(1009, f"a message over max_message_size ({self._max})")
            return _text(payload)
        if opcode in (0x0, 0x1, 0x2):
            return self._fragment(opcode, fin, payload)
        self._control(opcode, fin, payload)
        return None

    def _fragment(self, opcode: int, fin: bool, payload: bytes) -> str | bytes | None:
        if opcode == 0x0 and not self._fragments:
            raise _Fail(1002, "a continuation frame without a message")
        if opcode != 0x0 and self._fragments:
            raise _Fail(1002, "a new message inside a fragmented one")
        if opcode != 0x0:
            self._fragment_text = opcode == 0x1
            self._fragment_size = 0
        self._fragment_size += len(payload)
        if self._fragment_size > self._max:
            raise _Fail(1009, f"a message over max_message_size ({self._max})")
        self._fragments.append(payload)
        if not fin:
            return None
        whole = b"".join(self._fragments)
        self._fragments = []
        return _text(whole) if self._fragment_text else whole

    def _control(self, opcode: int, fin: bool, payload: bytes) -> None:
        if not fin or len(payload) > 125:
            raise _Fail(1002, "a fragmented or oversized control frame")
        if opcode == 0x9:
            self._to_answer.append(wse.Pong(payload=payload))
        elif opcode == 0x8:
            code, reason = 1005, None
            if len(payload) >= 2:
                code = int.from_bytes(payload[:2], "big")
                reason = _text(payload[2:]) or None
            self.closed = CloseReason(code, reason)
            self._to_answer.append(wse.CloseConnection(code=code if code != 1005 else 1000))
        elif opcode != 0xA:
            raise _Fail(1002, f"unknown opcode {opcode:#x}")


def _frame_at(buf: bytearray, pos: int, end: int, limit: int) -> tuple[int, int, int] | None:
    """(first byte, header size, payload size) of the frame at ``pos``, None when it is not
    all in ``buf`` yet; _Fail for a header a server may not send."""
    if end - pos < 2:
        return None
    first, second = buf[pos], buf[pos + 1]
    if first & 0x70 or second & 0x80:
        raise _Fail(1002, "a reserved bit or a mask in a server frame")
    size = second & 0x7F
    head = 2
    if size == 126:
        if end - pos < 4:
            return None
        size, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
    elif size == 127:
        if end - pos < 10:
            return None
        size, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
    if size > limit + 125:
        raise _Fail(1009, f"a frame of {size} bytes (max_message_size {limit})")
    if end - pos < head + size:
        return None
    return first, head, size


def _text(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise _Fail(1007, "a text message that is not UTF-8") from None
