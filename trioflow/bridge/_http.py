"""Plain HTTP next to the websocket endpoint, on the same port: the web viewer's files.

One TCP listener serves both. :func:`serve_connection` reads each request head itself (the
bytes stay available), parses it with h11 (the sans-IO HTTP/1.1 library wsproto already
uses) and then either

- answers a ``GET``/``HEAD`` of a viewer file (``/``, ``/app.js``, ...) with h11, keeping
  the connection alive for the next request, or
- hands a websocket upgrade request to ``on_upgrade`` as a :class:`ReplayStream` that
  replays the bytes already read, so trio-websocket's ``wrap_server_stream`` (wsproto)
  parses the handshake as if it had read them itself.

Same port rather than a second one: one URL to print and open, and the page's origin is
the websocket's origin, so the default ``allowed_origins`` is simply "the viewer's own
origin" and a strict ``connect-src 'self'`` content security policy fits.

The files are static (no templating, no data): they are served to anyone who can reach
the port; every run and every operation still needs a token on the websocket.
"""

from __future__ import annotations

import logging
import mimetypes
from collections.abc import Awaitable, Callable
from functools import partial
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Final

import attrs
import h11
import trio

logger = logging.getLogger("trioflow.bridge")

#: Largest request head accepted (bytes); a larger one gets 431.
MAX_HEAD: Final = 16 * 1024
#: Seconds a client may take to send a request head (also: keep-alive idle time).
HEAD_TIMEOUT: Final = 10.0
#: The package directory of the viewer's files.
WEB_PACKAGE: Final = "trioflow.bridge"
WEB_DIR: Final = "_web"

#: Sent with every viewer file: the page may only talk to its own origin (its websocket
#: included), runs no inline script and cannot be framed; the token in the fragment never
#: goes to another site in a Referer.
SECURITY_HEADERS: Final[tuple[tuple[bytes, bytes], ...]] = (
    (
        b"Content-Security-Policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"Referrer-Policy", b"no-referrer"),
    (b"Cache-Control", b"no-cache"),
)

_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".png": "image/png",
    ".ico": "image/x-icon",
}


@attrs.frozen
class RequestHead:
    """A parsed request line and headers (names lower-cased by h11)."""

    method: bytes
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    raw: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def path(self) -> str:
        return self.target.split(b"?", 1)[0].decode("latin-1")

    @property
    def is_websocket(self) -> bool:
        upgrade = self.header(b"upgrade") or b""
        return self.method == b"GET" and b"websocket" in upgrade.lower()


@attrs.frozen
class StaticFile:
    body: bytes
    content_type: str


class StaticSite:
    """The viewer's files, read once from the package (or any directory): ``/`` is
    ``index.html``; only plain file names directly in the directory are served."""

    def __init__(self, root: Traversable | None = None) -> None:
        self._root = root if root is not None else resources.files(WEB_PACKAGE) / WEB_DIR
        self._files: dict[str, StaticFile] = {}
        for entry in self._root.iterdir():
            name = entry.name
            if not entry.is_file() or name.startswith((".", "_")):
                continue
            suffix = name[name.rfind(".") :] if "." in name else ""
            content_type = _TYPES.get(suffix) or (
                mimetypes.guess_type(name)[0] or "application/octet-stream"
            )
            self._files["/" + name] = StaticFile(entry.read_bytes(), content_type)
        if "/index.html" in self._files:
            self._files["/"] = self._files["/index.html"]

    @property
    def paths(self) -> frozenset[str]:
        return frozenset(self._files)

    def get(self, path: str) -> StaticFile | None:
        return self._files.get(path)


class ReplayStream(trio.abc.Stream):
    """``inner`` with ``prefix`` put back in front of what it receives."""

    def __init__(self, prefix: bytes, inner: trio.abc.Stream) -> None:
        self._prefix = prefix
        self._inner = inner

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            await trio.lowlevel.checkpoint()
            size = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        return await self._inner.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        self._prefix = b""
        await self._inner.aclose()


class _HeadError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


UpgradeHandler = Callable[[trio.abc.Stream, RequestHead], Awaitable[None]]


async def _read_head(stream: trio.abc.Stream, buffer: bytearray) -> bytes | None:
    """Receive until ``buffer`` holds a whole request head; return it (removed from the
    buffer), None when the client closed first."""
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end + 4 > MAX_HEAD:
            raise _HeadError(431, "request head too large")
        if end >= 0:
            head = bytes(buffer[: end + 4])
            del buffer[: end + 4]
            await trio.lowlevel.checkpoint()  # a pipelined head may be buffered already
            return head
        if len(buffer) > MAX_HEAD:
            raise _HeadError(431, "request head too large")
        data = await stream.receive_some(65536)
        if not data:
            if buffer.strip():
                raise _HeadError(400, "incomplete request head")
            return None
        buffer += data


def _parse_head(raw: bytes) -> tuple[RequestHead, h11.Connection, bool]:
    """The head, its h11 connection (ready to send the response) and whether the request
    ends with its head (no body)."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    conn.receive_data(raw)
    try:
        event = conn.next_event()
        if not isinstance(event, h11.Request):
            raise _HeadError(400, "malformed request head")
        following = conn.next_event()
        bodyless = isinstance(following, h11.EndOfMessage) or following is h11.PAUSED
    except h11.RemoteProtocolError as exc:
        raise _HeadError(400, f"malformed request: {exc}") from None
    head = RequestHead(
        method=bytes(event.method),
        target=bytes(event.target),
        headers=tuple((bytes(k), bytes(v)) for k, v in event.headers),
        raw=raw,
    )
    return head, conn, bodyless


def _error_response(status: int, reason: str) -> bytes:
    """A complete ``Connection: close`` response for a request h11 could not parse."""
    body = _plain(reason)
    return (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
}


async def _respond(
    stream: trio.abc.Stream,
    conn: h11.Connection,
    status: int,
    body: bytes,
    content_type: str,
    *,
    head_only: bool = False,
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    headers = [
        (b"Content-Type", content_type.encode()),
        (b"Content-Length", str(len(body)).encode()),
        *extra,
    ]
    reason = _REASONS.get(status, "").encode()
    data = conn.send(h11.Response(status_code=status, headers=headers, reason=reason))
    if not head_only and body:
        data += conn.send(h11.Data(data=body))
    data += conn.send(h11.EndOfMessage())
    await stream.send_all(data)


def _plain(text: str) -> bytes:
    return (text + "\n").encode()


async def _answer(
    stream: trio.abc.Stream, conn: h11.Connection, head: RequestHead, site: StaticSite | None
) -> None:
    if head.method not in (b"GET", b"HEAD"):
        await _respond(
            stream,
            conn,
            405,
            _plain("only GET and HEAD"),
            "text/plain; charset=utf-8",
            extra=((b"Allow", b"GET, HEAD"),),
        )
        return
    found = site.get(head.path) if site is not None else None
    if found is None:
        await _respond(
            stream,
            conn,
            404,
            _plain("not found"),
            "text/plain; charset=utf-8",
            head_only=head.method == b"HEAD",  # h11 refuses a body after a HEAD response
        )
        return
    await _respond(
        stream,
        conn,
        200,
        found.body,
        found.content_type,
        head_only=head.method == b"HEAD",
        extra=SECURITY_HEADERS,
    )


#: Upgrade-request headers wsproto decodes as ASCII (``Host`` as IDNA); a value it cannot
#: decode raises inside trio-websocket's handshake instead of getting a response.
_ASCII_UPGRADE_HEADERS: Final = (
    b"connection",
    b"sec-websocket-extensions",
    b"sec-websocket-protocol",
)


def _undecodable_upgrade(head: RequestHead) -> str | None:
    """Why wsproto could not decode this upgrade request (None: it can)."""
    for name, value in head.headers:
        try:
            if name in _ASCII_UPGRADE_HEADERS:
                value.decode("ascii")
            elif name == b"host":
                value.decode("idna")
        except UnicodeError:
            return f"the {name.decode()} header of a websocket upgrade must be ASCII"
    return None


async def serve_connection(
    stream: trio.abc.Stream,
    site: StaticSite | None,
    on_upgrade: UpgradeHandler | None,
    *,
    head_timeout: float = HEAD_TIMEOUT,
) -> None:
    """Serve one TCP connection: viewer files over HTTP/1.1 (keep-alive) until the
    client closes, stays idle ``head_timeout`` seconds (sending nothing, or reading no
    response), or sends a websocket upgrade, which
    goes to ``on_upgrade(ReplayStream, head)`` (404 without one). With ``site=None`` (the
    viewer turned off) every plain request gets 404. A request with a body,
    or a malformed head, is answered (400, 405, 431) and the connection closed.

    Does not close ``stream`` (the caller's listener does). Cancelling it abandons the
    connection where it is.
    """
    buffer = bytearray()
    while True:
        raw: bytes | None = None
        try:
            with trio.move_on_after(head_timeout):
                raw = await _read_head(stream, buffer)
            if raw is None:
                return  # closed, or idle for head_timeout
            head, conn, bodyless = _parse_head(raw)
        except _HeadError as exc:
            await stream.send_all(_error_response(exc.status, exc.reason))
            return
        if head.is_websocket:
            problem = _undecodable_upgrade(head)
            if problem is not None:
                await stream.send_all(_error_response(400, problem))
                return
            if on_upgrade is None:
                await _respond(stream, conn, 404, _plain("no websocket here"), "text/plain")
                return
            await on_upgrade(ReplayStream(head.raw + bytes(buffer), stream), head)
            return
        # A client that does not read its response is as idle as one that sends nothing.
        with trio.move_on_after(head_timeout) as sending:
            await _answer(stream, conn, head, site)
        if sending.cancelled_caught:
            return
        if not bodyless or conn.our_state is not h11.DONE:
            return  # a body we do not read, or "Connection: close"


async def serve(
    site: StaticSite,
    on_upgrade: UpgradeHandler | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    head_timeout: float = HEAD_TIMEOUT,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``host:port`` and :func:`serve_connection` every connection until
    cancelled; ``task_status.started(bound_port)``. (The bridge server has its own
    listener and calls :func:`serve_connection`; this is for tests and embedding.)"""
    listeners = await trio.open_tcp_listeners(port, host=host)
    listeners = listeners[:1]
    bound: int = listeners[0].socket.getsockname()[1]

    async def handle(stream: trio.SocketStream) -> None:  # noqa: ASYNC910
        try:
            await serve_connection(stream, site, on_upgrade, head_timeout=head_timeout)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            logger.exception("trioflow viewer: connection failed")

    async with trio.open_nursery() as nursery:
        await nursery.start(partial(trio.serve_listeners, handle, listeners))
        task_status.started(bound)
